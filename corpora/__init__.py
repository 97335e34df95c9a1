"""Labelled corpora as users have them: the readers of TSV, CSV, JSONL and Parquet files and the planning of which files make a split.

Engine-neutral: nothing here imports Apache Beam or torch. The Beam pipelines
(``beam_pipelines``), ``trainer.predict`` and the tests read input through this package; it
imports only ``schemas``, ``spanwise_io`` and the standard library (pyarrow for Parquet).
"""
