"""Training on preprocessed shards: the loop (``task``), its plan and resume decisions, what it counts (``meters``) and tracks (``tracking``), the shard stream, checkpoints, stopping, distributed set-up, TensorBoard and cloud hooks; plus ``trainer.predict``.

May import ``modeling``, ``corpora``, ``tokenization``, ``schemas`` and ``spanwise_io``; never
``beam_pipelines`` (``python -c "import trainer.predict"`` loads no Apache Beam).
"""
