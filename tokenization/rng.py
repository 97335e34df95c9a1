"""Reproducible per-document random generators.

A draw depends only on (seed, epoch, document id, stream), never on the worker, rank, shard,
batch position or process start method. A resumed run therefore draws the same spans, and every
epoch draws new ones.
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["EVAL_EPOCH", "stable_hash64", "doc_rng"]

# Evaluation and prediction draw with this fixed epoch so they are deterministic and never
# coincide with a training epoch (SeedSequence entropy must be non-negative).
EVAL_EPOCH = 2**31 - 1


def stable_hash64(doc_id: str) -> int:
    """A 64-bit hash of ``doc_id`` that is the same in every process and Python version.

    Python's ``hash`` is salted per process, so it cannot be used here.
    """
    if not isinstance(doc_id, str):
        raise ValueError(f"document id must be a str, got {type(doc_id).__name__}")
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def doc_rng(seed: int, epoch: int, doc_id: str, stream: int = 0) -> np.random.Generator:
    """The generator for one document in one epoch.

    Args:
        seed: the run's seed (non-negative).
        epoch: the training epoch, or ``EVAL_EPOCH`` for evaluation and prediction.
        doc_id: the document's ID as written in the TSV.
        stream: separates independent draws for the same document (e.g. evaluation views).
    """
    for name, value in (("seed", seed), ("epoch", epoch), ("stream", stream)):
        if int(value) < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    return np.random.default_rng([int(seed), int(epoch), stable_hash64(doc_id), int(stream)])
