"""Checkpoints that survive preemption, local or in ``gs://``.

A checkpoint is a directory ``checkpoint-<step>/`` holding ``model.safetensors`` (weights, never
pickled), ``state.pt`` (optimizer, scheduler, grad scaler, RNG states and the exact data
position; plain tensors and numbers, loaded with ``torch.load(weights_only=True)``) and, written
last, ``COMPLETE``. Every file is itself written atomically (temp name, then rename) by
``spanwise_io``. The rules that make a kill at any moment (SIGKILL included) leave the previous
checkpoint usable, on local disks and on GCS alike (where there is no atomic directory rename):

* A directory without ``COMPLETE`` is an interrupted write: ``list_checkpoints`` /
  ``latest_checkpoint`` ignore it and ``load_checkpoint`` refuses it. There is one writer per
  checkpoint directory (the main rank), so any such directory that a save finds is dead: a save
  of the same step first deletes it and writes afresh (no leftovers of the killed write, such as
  a temp file, end up in the new checkpoint), and ``prune_checkpoints`` deletes those older than
  the newest complete checkpoint.
* A complete directory is never written again. Saving a step that already has a complete
  checkpoint (a run resumed from an older checkpoint with ``--resume_from_checkpoint PATH``)
  writes a new revision ``checkpoint-<step>-<n>/`` beside it; the newest complete revision of a
  step wins, and the older revision is deleted by the prune once the new one is complete.
* ``prune_checkpoints`` runs only after ``COMPLETE`` of the new checkpoint is written, and never
  deletes the newest complete checkpoint. It deletes ``COMPLETE`` of a checkpoint before its
  other files, so a kill in the middle of a prune leaves an ignored partial directory, never a
  "complete" one with files missing.

Test hook (tests only; unset in any real run, where it costs one environment lookup per save):
``SPANWISE_TEST_KILL_IN_CHECKPOINT_WRITE="<step>:<stage>"`` makes ``save_checkpoint`` of that
step SIGKILL its own process at ``stage``: ``start`` (directory made, nothing written),
``model`` (after ``model.safetensors``), ``state`` (after ``state.pt``, before ``COMPLETE``) or
``complete`` (after ``COMPLETE``, before the prune). ``tests/test_preemption.py`` uses it to
check that a kill in the middle of a write leaves a usable previous checkpoint.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import tempfile
from typing import Any, Collection, NamedTuple

import safetensors.torch
import torch

import spanwise_io

__all__ = [
    "save_checkpoint",
    "latest_checkpoint",
    "load_checkpoint",
    "prune_checkpoints",
    "list_checkpoints",
    "read_state",
    "load_weights",
    "checkpoint_of_step",
    "KILL_IN_WRITE_ENV",
    "KILL_STAGES",
]

log = logging.getLogger(__name__)
_NAME = re.compile(r"^checkpoint-(\d+)(?:-(\d+))?$")
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
COMPLETE_FILE = "COMPLETE"
# Test hook (see the module docstring): "<step>:<stage>" -> SIGKILL this process at that point.
KILL_IN_WRITE_ENV = "SPANWISE_TEST_KILL_IN_CHECKPOINT_WRITE"
KILL_STAGES = ("start", "model", "state", "complete")


class _Entry(NamedTuple):
    """One ``checkpoint-*`` directory: sorts by step, then revision."""

    step: int
    revision: int
    path: str
    complete: bool


def _name(step: int, revision: int = 0) -> str:
    return f"checkpoint-{step:08d}" if revision == 0 else f"checkpoint-{step:08d}-{revision}"


def _scan(checkpoint_dir: str, complete_only: bool) -> list[_Entry]:
    """The ``checkpoint-*`` directories under ``checkpoint_dir``, oldest (step, revision) first."""
    if not spanwise_io.isdir(checkpoint_dir):
        return []
    found = []
    for name in spanwise_io.listdir(checkpoint_dir):
        match = _NAME.match(name)
        if not match:
            continue
        path = spanwise_io.join(checkpoint_dir, name)
        complete = spanwise_io.exists(spanwise_io.join(path, COMPLETE_FILE))
        if complete_only and not complete:
            continue
        found.append(_Entry(int(match.group(1)), int(match.group(2) or 0), path, complete))
    return sorted(found)


def list_checkpoints(checkpoint_dir: str, complete_only: bool = True) -> list[tuple[int, str]]:
    """``(step, path)`` of the checkpoints under ``checkpoint_dir``, oldest first.

    Args:
        checkpoint_dir: local path or ``gs://`` URL holding ``checkpoint-*`` directories.
        complete_only: leave out interrupted writes (directories without ``COMPLETE``).

    Returns:
        The checkpoints sorted by step, revisions of one step oldest first (the last of a step
        is its current one).
    """
    return [(entry.step, entry.path) for entry in _scan(checkpoint_dir, complete_only)]


def latest_checkpoint(checkpoint_dir: str) -> str | None:
    """The newest complete checkpoint (highest step, then revision), or None."""
    found = _scan(checkpoint_dir, complete_only=True)
    return found[-1].path if found else None


def _kill_point(step: int, stage: str) -> None:
    """The test hook: SIGKILL this process if ``KILL_IN_WRITE_ENV`` names ``step`` and ``stage``."""
    target = os.environ.get(KILL_IN_WRITE_ENV)
    if not target:
        return
    target_step, _, target_stage = target.partition(":")
    if not target_step.strip().isdigit() or target_stage not in KILL_STAGES:
        raise ValueError(f"{KILL_IN_WRITE_ENV}={target!r}: expected '<step>:<stage>', stage one of {', '.join(KILL_STAGES)}")
    if int(target_step) == step and target_stage == stage:
        log.warning("%s=%s: killing this process (SIGKILL) in the write of checkpoint %d", KILL_IN_WRITE_ENV, target, step)
        logging.shutdown()  # flush the log handlers: nothing runs after SIGKILL
        os.kill(os.getpid(), signal.SIGKILL)


def save_checkpoint(
    checkpoint_dir: str, step: int, model: torch.nn.Module, state: dict[str, Any], keep: int, protect: Collection[int] = ()
) -> str:
    """Write checkpoint ``step`` (model weights + ``state``), then keep the ``keep`` newest.

    Args:
        checkpoint_dir: local path or ``gs://`` URL of the checkpoints.
        step: the optimizer step the checkpoint is taken after.
        model: the module whose ``state_dict`` is saved as safetensors.
        state: plain tensors, numbers and strings (``torch.load(weights_only=True)`` must read it).
        keep: how many complete checkpoints to keep (<= 0: all).
        protect: steps whose checkpoints are kept as well (the best one, for ``--load_best_model_at_end``).

    Returns:
        The path of the new, complete checkpoint.
    """
    same_step = [entry for entry in _scan(checkpoint_dir, complete_only=False) if entry.step == step]
    for entry in same_step:
        if not entry.complete:  # a killed write of this step (one writer, so nobody is writing it)
            log.info("removing interrupted checkpoint %s before writing it again", entry.path)
            spanwise_io.remove_tree(entry.path)
    complete_revisions = [entry.revision for entry in same_step if entry.complete]
    revision = max(complete_revisions) + 1 if complete_revisions else 0
    path = spanwise_io.join(checkpoint_dir, _name(step, revision))
    spanwise_io.makedirs(path)
    _kill_point(step, "start")
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, MODEL_FILE)
        safetensors.torch.save_model(model, local)
        with open(local, "rb") as handle:
            spanwise_io.write_bytes(spanwise_io.join(path, MODEL_FILE), handle.read())
    _kill_point(step, "model")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    spanwise_io.write_bytes(spanwise_io.join(path, STATE_FILE), buffer.getvalue())
    _kill_point(step, "state")
    spanwise_io.write_bytes(spanwise_io.join(path, COMPLETE_FILE), json.dumps({"step": step}).encode("utf-8"))
    _kill_point(step, "complete")
    prune_checkpoints(checkpoint_dir, keep, protect)
    return path


def load_checkpoint(path: str, model: torch.nn.Module) -> dict[str, Any]:
    """Load the weights into ``model`` and return the state dict (no arbitrary unpickling)."""
    state = read_state(path)
    load_weights(path, model)
    return state


def read_state(path: str) -> dict[str, Any]:
    """The trainer state of a complete checkpoint (plain tensors and numbers: no arbitrary unpickling)."""
    if not spanwise_io.exists(spanwise_io.join(path, COMPLETE_FILE)):
        raise ValueError(f"{path}: checkpoint is incomplete (no {COMPLETE_FILE}); it was interrupted while written")
    try:
        return torch.load(io.BytesIO(spanwise_io.read_bytes(spanwise_io.join(path, STATE_FILE))), weights_only=True)
    except Exception as error:
        raise ValueError(f"{path}/{STATE_FILE}: cannot load the trainer state ({type(error).__name__}: {error})") from error


def load_weights(path: str, model: torch.nn.Module) -> None:
    """Load a checkpoint's safetensors weights into ``model`` (every tensor must match)."""
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, MODEL_FILE)
        with open(local, "wb") as handle:
            handle.write(spanwise_io.read_bytes(spanwise_io.join(path, MODEL_FILE)))
        safetensors.torch.load_model(model, local, strict=True)


def checkpoint_of_step(checkpoint_dir: str, step: int) -> str | None:
    """The current (newest complete revision) checkpoint of ``step``, or None."""
    found = [entry.path for entry in _scan(checkpoint_dir, complete_only=True) if entry.step == step]
    return found[-1] if found else None


def prune_checkpoints(checkpoint_dir: str, keep: int, protect: Collection[int] = ()) -> None:
    """Delete what is no longer needed; never the newest complete checkpoint, nor one of ``protect``.

    Deleted: complete checkpoints beyond the ``keep`` newest steps (none when ``keep <= 0``) that
    are not of a step in ``protect``, older revisions of a step that has a newer complete revision, and interrupted writes (no
    ``COMPLETE``) of a step older than the newest complete checkpoint. An interrupted write of a
    newer step is left (ignored): the resumed run writes that step again, which replaces it.
    """
    entries = _scan(checkpoint_dir, complete_only=False)
    current: dict[int, _Entry] = {}
    for entry in entries:  # oldest revision first: the last complete one of a step stays
        if entry.complete:
            current[entry.step] = entry
    steps = sorted(current)
    kept = {current[step] for step in (steps[-keep:] if keep > 0 else steps)}
    kept |= {current[step] for step in protect if step in current}
    newest_step = steps[-1] if steps else None
    for entry in entries:
        if entry in kept:
            continue
        if not entry.complete and (newest_step is None or entry.step >= newest_step):
            continue
        log.info("removing %s checkpoint %s", "old" if entry.complete else "interrupted", entry.path)
        _remove_checkpoint(entry.path)


def _remove_checkpoint(path: str) -> None:
    """Delete a checkpoint directory, ``COMPLETE`` first: a kill midway leaves an ignored partial one."""
    spanwise_io.remove(spanwise_io.join(path, COMPLETE_FILE))
    spanwise_io.remove_tree(path)
