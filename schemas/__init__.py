"""File formats: the input TSV rows, the Parquet shard schema and the manifest."""
