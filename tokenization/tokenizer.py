"""Loading a fast tokenizer from a local dir, a ``gs://`` dir or a hub name, and its identity.

The identity goes into the manifest so the trainer can refuse shards made with another
tokenizer. Its ``fingerprint`` hashes the tokenizer's canonical serialization (vocabulary,
normalizer, pre-tokenizer, model) with the run-time truncation/padding settings removed, so a
local copy, a bucket copy and a hub download of the same tokenizer agree.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from typing import Any

import spanwise_io

__all__ = ["load_tokenizer", "tokenizer_identity", "tokenize_batch", "TOKENIZER_FILES"]

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "added_tokens.json",
)


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> Any:
    """Load a Hugging Face fast tokenizer.

    Args:
        name_or_path: a local directory, a ``gs://`` directory (copied once to a local cache),
            or a hub model name (needs a network).
        trust_remote_code: passed to ``AutoTokenizer``; off unless the user asks.

    Raises:
        ValueError: if the tokenizer cannot be loaded or is not a fast tokenizer.
    """
    from transformers import AutoTokenizer  # heavy import, kept out of module import time

    source = spanwise_io.copy_dir_to_local(name_or_path) if spanwise_io.is_remote(name_or_path) else name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, use_fast=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot load a tokenizer from {name_or_path!r}: {error}") from error
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"tokenizer {name_or_path!r} is not a fast (Rust) tokenizer; spanwise needs one")
    return tokenizer


def _canonical_json(tokenizer: Any) -> str:
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spec.pop("truncation", None)
    spec.pop("padding", None)
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


def tokenizer_identity(tokenizer: Any, name_or_path: str) -> dict[str, Any]:
    """What identifies a tokenizer: name, class, vocab size, hashes, special tokens."""
    files: dict[str, str] = {}
    local_dir = tokenizer.name_or_path if os.path.isdir(str(tokenizer.name_or_path)) else None
    if local_dir:
        for name in TOKENIZER_FILES:
            path = os.path.join(local_dir, name)
            if os.path.isfile(path):
                with open(path, "rb") as handle:
                    files[name] = hashlib.sha256(handle.read()).hexdigest()
    return {
        "name_or_path": name_or_path,
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "fingerprint": hashlib.sha256(_canonical_json(tokenizer).encode("utf-8")).hexdigest(),
        "files_sha256": files,
        "special_tokens": dict(sorted(tokenizer.special_tokens_map.items())),
        "num_special_tokens_single": int(tokenizer.num_special_tokens_to_add(pair=False)),
        "num_special_tokens_pair": int(tokenizer.num_special_tokens_to_add(pair=True)),
        "model_max_length": int(min(tokenizer.model_max_length, 2**31 - 1)),
    }


def _plain_backend(tokenizer: Any) -> Any:
    """A private copy of the tokenizer's Rust backend with truncation and padding off (cached).

    A hub tokenizer.json may carry a truncation setting (MiniLM's says 128): the copy never
    truncates, and the tokenizer's own backend, which transformers reconfigures per call, is
    left alone.
    """
    backend = getattr(tokenizer, "_spanwise_plain_backend", None)
    if backend is None:
        backend = copy.deepcopy(tokenizer.backend_tokenizer)
        backend.no_truncation()
        backend.no_padding()
        tokenizer._spanwise_plain_backend = backend
    return backend


def tokenize_batch(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text: no special tokens, no truncation, one batched call.

    Calls the Rust backend's ``encode_batch_fast`` (no character offsets): the same ids as
    ``tokenizer(texts, add_special_tokens=False, truncation=False)`` for 15-25% less CPU
    (measured on 20 Newsgroups with MiniLM's tokenizer), since the pipeline needs ids only.
    """
    if not texts:
        return []
    return [encoding.ids for encoding in _plain_backend(tokenizer).encode_batch_fast(texts, add_special_tokens=False)]
