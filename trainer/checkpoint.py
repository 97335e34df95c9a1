"""Checkpoints that survive preemption, local or in ``gs://``.

A checkpoint is a directory ``checkpoint-<step>/`` holding ``model.safetensors`` (weights, never
pickled), ``state.pt`` (optimizer, scheduler, grad scaler, RNG states and the exact data
position; plain tensors and numbers, loaded with ``torch.load(weights_only=True)``) and, written
last, ``COMPLETE``. A directory without ``COMPLETE`` is an interrupted write: it is ignored and
later removed, so a kill at any moment leaves the previous checkpoint usable. Every file is
itself written atomically (temp name, then rename) by ``spanwise_io``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import tempfile
from typing import Any

import safetensors.torch
import torch

import spanwise_io

__all__ = ["save_checkpoint", "latest_checkpoint", "load_checkpoint", "prune_checkpoints", "list_checkpoints"]

log = logging.getLogger(__name__)
_NAME = re.compile(r"^checkpoint-(\d+)$")
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
COMPLETE_FILE = "COMPLETE"


def _name(step: int) -> str:
    return f"checkpoint-{step:08d}"


def list_checkpoints(checkpoint_dir: str, complete_only: bool = True) -> list[tuple[int, str]]:
    """``(step, path)`` of the checkpoints under ``checkpoint_dir``, oldest first."""
    if not spanwise_io.isdir(checkpoint_dir):
        return []
    found = []
    for name in spanwise_io.listdir(checkpoint_dir):
        match = _NAME.match(name)
        if not match:
            continue
        path = spanwise_io.join(checkpoint_dir, name)
        if complete_only and not spanwise_io.exists(spanwise_io.join(path, COMPLETE_FILE)):
            continue
        found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(checkpoint_dir: str) -> str | None:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(checkpoint_dir)
    return found[-1][1] if found else None


def save_checkpoint(checkpoint_dir: str, step: int, model: torch.nn.Module, state: dict[str, Any], keep: int) -> str:
    """Write checkpoint ``step`` (model weights + ``state``), then keep the ``keep`` newest."""
    path = spanwise_io.join(checkpoint_dir, _name(step))
    spanwise_io.makedirs(path)
    marker = spanwise_io.join(path, COMPLETE_FILE)
    if spanwise_io.exists(marker):
        spanwise_io.remove(marker)
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, MODEL_FILE)
        safetensors.torch.save_model(model, local)
        with open(local, "rb") as handle:
            spanwise_io.write_bytes(spanwise_io.join(path, MODEL_FILE), handle.read())
    buffer = io.BytesIO()
    torch.save(state, buffer)
    spanwise_io.write_bytes(spanwise_io.join(path, STATE_FILE), buffer.getvalue())
    spanwise_io.write_bytes(marker, json.dumps({"step": step}).encode("utf-8"))
    prune_checkpoints(checkpoint_dir, keep)
    return path


def load_checkpoint(path: str, model: torch.nn.Module) -> dict[str, Any]:
    """Load the weights into ``model`` and return the state dict (no arbitrary unpickling)."""
    if not spanwise_io.exists(spanwise_io.join(path, COMPLETE_FILE)):
        raise ValueError(f"{path}: checkpoint is incomplete (no {COMPLETE_FILE}); it was interrupted while written")
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, MODEL_FILE)
        with open(local, "wb") as handle:
            handle.write(spanwise_io.read_bytes(spanwise_io.join(path, MODEL_FILE)))
        missing, unexpected = safetensors.torch.load_model(model, local, strict=True)
    try:
        state = torch.load(io.BytesIO(spanwise_io.read_bytes(spanwise_io.join(path, STATE_FILE))), weights_only=True)
    except Exception as error:
        raise ValueError(f"{path}/{STATE_FILE}: cannot load the trainer state ({type(error).__name__}: {error})") from error
    return state


def prune_checkpoints(checkpoint_dir: str, keep: int) -> None:
    """Remove all but the ``keep`` newest complete checkpoints, and interrupted ones older than them."""
    complete = list_checkpoints(checkpoint_dir)
    newest_kept = complete[-keep:] if keep > 0 else complete
    oldest_kept_step = newest_kept[0][0] if newest_kept else None
    for step, path in list_checkpoints(checkpoint_dir, complete_only=False):
        if (step, path) in newest_kept:
            continue
        if oldest_kept_step is not None and step > oldest_kept_step:
            continue  # a newer write in progress (or a newer incomplete one): leave it
        log.info("removing old checkpoint %s", path)
        spanwise_io.remove_tree(path)
