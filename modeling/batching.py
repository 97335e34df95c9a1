"""The host side of prediction: batches by length or by tokens, and an ordered pool of worker processes.

On a GPU, prediction is bound by the host (issue 21): tokenizing, building views and collating
on one core while the device waits. Two pieces here, shared by ``trainer.predict --input_files``
and the Python API (``modeling.classifier.Classifier``):

* ``plan_batches``: a chunk's views sorted by length and cut into batches of ``batch_size``
  views, or (``max_tokens``) of as many views as fit in that many padded tokens (rows times the
  longest), so that short views fill large batches and long ones small batches of one size in
  memory.
* ``ordered_map``: ``prepare(payload)`` of each job run by ``workers`` processes (forked, so a
  worker inherits the tokenizer without pickling it), a few jobs ahead of the consumer, the
  results given back in the jobs' order. With 0 workers it runs in this process. What a job
  gives does not depend on the number of workers, so neither do the predictions.

Nothing here imports the data or model code.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np

__all__ = ["plan_batches", "check_token_budget", "ordered_map", "JOBS_AHEAD_PER_WORKER"]

# Jobs handed to the pool ahead of the one consumed, per worker: enough that a worker always has
# the next one queued while the consumer scores, few enough to bound memory (a job's views).
JOBS_AHEAD_PER_WORKER = 2

Job = TypeVar("Job")
Result = TypeVar("Result")


def check_token_budget(max_tokens: int | None, max_seq_length: int, name: str = "--max_tokens_per_batch") -> None:
    """A token budget must hold the longest view (``max_seq_length`` tokens): else a view fits no batch.

    Raises:
        ValueError: naming ``name`` (the flag or parameter) and the least value that works.
    """
    if max_tokens is None:
        return
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, (int, np.integer)) or max_tokens < max_seq_length:
        raise ValueError(f"{name} must be an integer of at least the model's max_seq_length ({max_seq_length}), so "
                         f"that its longest view fits in a batch; got {max_tokens!r}")


def plan_batches(lengths: Sequence[int], batch_size: int, max_tokens: int | None = None) -> list[np.ndarray]:
    """Views (their ``lengths`` in tokens) in batches: indices into ``lengths``, shortest views first.

    Without ``max_tokens``: ``batch_size`` views a batch. With it: each batch takes views while
    its padded size (its views times its longest, which is the last taken) stays within
    ``max_tokens``; ``batch_size`` is then not used. A view longer than ``max_tokens`` goes alone
    (``check_token_budget`` refuses such a budget first). Sorting is stable, so equal lengths keep
    their order.
    """
    order = np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")
    if max_tokens is None:
        return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    batches: list[np.ndarray] = []
    start = 0
    sorted_lengths = np.asarray(lengths, dtype=np.int64)[order]
    for end in range(1, len(order) + 1):
        if end - start > 1 and (end - start) * int(sorted_lengths[end - 1]) > max_tokens:
            batches.append(order[start : end - 1])
            start = end - 1
    if start < len(order):
        batches.append(order[start:])
    return batches


# --------------------------------------------------------------------------- the worker pool
_WORKER_STATE: dict[str, Any] = {}


def _start_worker(state: Any) -> None:
    """A worker process: one torch thread, no tokenizer threads, deaf to Ctrl-C (the parent stops it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the workers are the parallelism
    torch = sys.modules.get("torch")  # (inherited from the parent; not imported for nothing)
    if torch is not None:
        torch.set_num_threads(1)
    _WORKER_STATE["state"] = state


def _run_in_worker(prepare: Callable[[Any, Any], Any], payload: Any) -> Any:
    return prepare(_WORKER_STATE["state"], payload)


def ordered_map(
    prepare: Callable[[Any, Any], Result],
    state: Any,
    jobs: Iterable[Job],
    payload: Callable[[Job], Any],
    workers: int = 0,
) -> Iterator[tuple[Job, Result]]:
    """``(job, prepare(state, payload(job)))`` for each job, in the jobs' order.

    Args:
        prepare: a module-level function (workers receive it by reference): ``state`` is what
            every job shares (a tokenizer and the model's views), ``payload`` a job's own data.
        state: given to every worker once, when it starts (inherited by the fork, not pickled).
        jobs: read lazily: at most ``JOBS_AHEAD_PER_WORKER * workers`` of them are waiting or
            being prepared while the consumer handles one, so memory does not grow with the input.
        payload: the part of a job that a worker needs (it is pickled to the worker); the rest of
            the job stays here.
        workers: worker processes; 0: prepare each job here, when it is consumed.

    Raises:
        ValueError: ``workers`` < 0. An exception of ``prepare`` is raised here, when its job is reached.
    """
    if workers < 0:
        raise ValueError(f"--dataloader_num_workers must be >= 0, got {workers}")
    if workers == 0:
        for job in jobs:
            yield job, prepare(state, payload(job))
        return
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_start_worker, initargs=(state,))
    pending: deque[tuple[Job, Future]] = deque()
    try:
        for job in jobs:
            pending.append((job, pool.submit(_run_in_worker, prepare, payload(job))))
            while len(pending) > JOBS_AHEAD_PER_WORKER * workers:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
