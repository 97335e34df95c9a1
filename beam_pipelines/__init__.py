"""Apache Beam pipelines: corpora -> pre-tokenized Parquet shards (``preprocess``), raw documents -> predictions (``predict``), and the corpus converters (``datasets``).

The top of the house: may import every other package; none imports this one.
"""
