"""Beam pipelines: TSV corpora -> pre-tokenized Parquet shards (and corpus converters)."""
