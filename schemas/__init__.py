"""File formats: the input TSV rows and columns, the Parquet shard schema and the manifest.

The bottom of the house with ``spanwise_io``: every package may import it; it imports no other
package of spanwise but ``spanwise_io``.
"""
