"""Tokenizer loading and the sequence-length functions shared by the pipeline, the trainer and prediction.

Pure functions of token ids (numpy only); imports ``spanwise_io`` alone, and is imported by
``modeling``, ``trainer`` and ``beam_pipelines``.
"""

from tokenization.rng import EVAL_EPOCH, doc_rng, stable_hash64
from tokenization.seq_len import (
    DETERMINISTIC_FUNCS,
    SEQ_LEN_FUNCS,
    SeqLenConfig,
    apply_seq_len,
    validate_seq_config,
)

__all__ = [
    "EVAL_EPOCH",
    "doc_rng",
    "stable_hash64",
    "DETERMINISTIC_FUNCS",
    "SEQ_LEN_FUNCS",
    "SeqLenConfig",
    "apply_seq_len",
    "validate_seq_config",
]
