"""What the training loop counts between log lines and per epoch: the loss and the padding.

Kept out of ``trainer.task`` so that the loop only calls ``add`` and ``read``: the loss is summed
on the device (one host sync per log line), and the padding counts of an epoch are summed over
all ranks once, at the epoch's end, into the entry that ``train_results.json`` keeps.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch

__all__ = ["LossMeter", "PaddingMeter"]


class LossMeter:
    """The training loss of the steps since the last log line, summed on the device (no sync per batch)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.loss = torch.zeros((), device=self.device)
        self.steps, self.samples, self.start = 0, 0, time.perf_counter()

    def add_batch(self, loss: torch.Tensor, samples: int) -> None:
        self.loss += loss
        self.samples += samples

    def read(self) -> tuple[float, float]:
        """(mean loss per step, samples per second) of the window; the one host sync of a log step."""
        loss = float(self.loss.item()) / max(self.steps, 1)
        rate = self.samples / max(time.perf_counter() - self.start, 1e-9)
        self.reset()
        return loss, rate


class PaddingMeter:
    """Real and padded tokens of the training batches: the padding fraction (issue 21).

    ``padded`` counts rows x padded length of each batch (what the model computes on), ``real``
    the tokens that are not padding; the fraction is ``1 - real / padded``. Counted per logging
    interval (this rank's batches) and per epoch (all ranks, summed at the epoch's end); the
    epoch's counts are in the checkpoint, so a resumed run reports what an uninterrupted one does.
    """

    def __init__(self) -> None:
        self.interval = [0, 0]  # real, padded
        self.epoch = [0, 0, 0, 0]  # real, padded, documents, batches

    def add(self, batch: dict[str, Any]) -> None:
        real, padded = int(batch.get("real_tokens", 0)), int(batch.get("padded_tokens", 0))
        self.interval[0] += real
        self.interval[1] += padded
        self.epoch[0] += real
        self.epoch[1] += padded
        self.epoch[2] += len(batch["doc_ids"])
        self.epoch[3] += 1

    @staticmethod
    def fraction(real: int, padded: int) -> float:
        return 1.0 - real / padded if padded else 0.0

    def read_interval(self) -> float:
        value = self.fraction(*self.interval)
        self.interval = [0, 0]
        return value

    def epoch_started(self) -> bool:
        """Whether a batch was counted since the last ``end_epoch`` (a run stopped inside an epoch)."""
        return self.epoch[3] > 0

    def end_epoch(self, epoch: int, step: int, *, partial: bool = False,
                  sum_ranks: Callable[[list[int]], list[int]] | None = None) -> dict[str, Any]:
        """The epoch's ``train_results.json`` entry, and a fresh count for the next epoch.

        ``sum_ranks`` sums the four counts over the ranks (an all-reduce) under DDP; every rank
        must call it at the same point.
        """
        counts = list(self.epoch)
        if sum_ranks is not None:
            counts = sum_ranks(counts)
        real, padded, documents, batches = counts
        entry: dict[str, Any] = {"epoch": epoch, "step": step, "batches": batches, "documents": documents,
                                 "real_tokens": real, "padded_tokens": padded,
                                 "padding_fraction": round(self.fraction(real, padded), 6)}
        if partial:
            entry["partial"] = True
        self.epoch = [0, 0, 0, 0]
        return entry
