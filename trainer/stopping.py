"""Stopping a run on request: SIGTERM (preemption) and Ctrl-C (SIGINT) end with a checkpoint.

The first signal only sets a flag; the loop finishes its optimizer step, writes a checkpoint and
leaves with ``Stopped`` (exit 143 for SIGTERM, 130 for Ctrl-C, as a shell reports them), so the
same command resumes exactly. A second Ctrl-C stops at once (``KeyboardInterrupt``), leaving the
previous checkpoint as the one to resume from; so does a Ctrl-C outside the training loop (set-up,
the final save), where there is no step to finish.

With several processes every rank must stop after the same step. The ranks agree through an
all-reduce of their flags on a gloo (CPU) group that is started at one step and read at the next,
so deciding costs neither a device sync nor a wait per step: a stop is acted on one step after
the signal, by every rank at once.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["Stopped", "StopSignals", "EXIT_CODES"]

log = logging.getLogger("trainer")

# what a shell reports for a process killed by the signal: 128 + its number
EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}
_NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C"}
_CODES = {0: None, 1: signal.SIGTERM, 2: signal.SIGINT}  # all-reduced with MAX: Ctrl-C wins over SIGTERM


class Stopped(Exception):
    """A stop was requested (SIGTERM, Ctrl-C); the checkpoint of the last step is written.

    Attributes:
        exit_code: 143 for SIGTERM, 130 for Ctrl-C.
    """

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class StopSignals:
    """SIGTERM and SIGINT handlers for one run, and the agreement of the ranks on stopping."""

    def __init__(self) -> None:
        self.requested: signal.Signals | None = None
        self.armed = False  # True while training: before and after it, Ctrl-C has nothing to save and stops at once
        self._previous: dict[int, Any] = {}
        self._group: Any = None
        self._buffer: torch.Tensor | None = None
        self._pending: Any = None

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        self.finish()

    def _handle(self, signum: int, frame: Any) -> None:
        signum = signal.Signals(signum)
        if signum == signal.SIGINT and (self.requested == signal.SIGINT or not self.armed):
            raise KeyboardInterrupt  # a second Ctrl-C, or one outside training: at once
        if self.requested is None or signum == signal.SIGINT:
            self.requested = signum
        if signum == signal.SIGINT:
            log.warning("Ctrl-C: stopping after this step with a checkpoint (Ctrl-C again stops at once, without one)")
        else:
            log.warning("SIGTERM: checkpointing after the current step, then exiting")

    def use_group(self, distributed: bool) -> None:
        """Under DDP, a gloo group of all ranks for the flags (NCCL groups need a device sync to read)."""
        if distributed:
            self._group = dist.new_group(backend="gloo")

    def agreed(self) -> signal.Signals | None:
        """The signal every rank stops for after this step, or None; call once per step on every rank."""
        if self._group is None:
            return self.requested
        decided = None
        if self._pending is not None:
            self._pending.wait()  # started a step ago: long done, nothing to wait for in practice
            decided = _CODES[int(self._buffer.item())]  # a CPU tensor: no device sync
        code = {None: 0, signal.SIGTERM: 1, signal.SIGINT: 2}[self.requested]
        self._buffer = torch.tensor([code], dtype=torch.int32)
        self._pending = dist.all_reduce(self._buffer, op=dist.ReduceOp.MAX, group=self._group, async_op=True)
        return decided

    def finish(self) -> None:
        """Complete the exchange in flight (every rank calls this once training ends)."""
        if self._pending is not None:
            self._pending.wait()
            self._pending = None

    @staticmethod
    def stopped(signum: signal.Signals, step: int, checkpoint: str | None) -> Stopped:
        where = f"checkpoint {checkpoint}" if checkpoint else "checkpoint saved"
        return Stopped(f"stopped by {_NAMES[signum]} after step {step}; {where}", EXIT_CODES[signum])
