"""TensorBoard logging that also works when the log directory is in ``gs://``.

TensorBoard's fsspec file layer writes an event file by ``append``; gcsfs cannot append and
overwrites instead, so on GCS only the last chunk of events would survive (measured: 1 of 50
scalars). For a remote directory the events are therefore written to a local temporary
directory and uploaded whole at each ``sync()`` (evaluations, checkpoints, the end of the run).

A resumed run writes into the same directory (one TensorBoard run) with ``purge_step``: the
events after its checkpoint that the interrupted run had logged are dropped by TensorBoard, so
every step is shown once.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

import spanwise_io

__all__ = ["TensorBoardLogger", "NullLogger"]


class TensorBoardLogger:
    """A ``SummaryWriter`` for a local or ``gs://`` directory; call ``sync()`` to publish."""

    def __init__(self, log_dir: str, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = log_dir
        self._local = tempfile.mkdtemp(prefix="spanwise-tensorboard-") if spanwise_io.is_remote(log_dir) else None
        self.writer = SummaryWriter(self._local or log_dir, purge_step=purge_step)

    def __getattr__(self, name: str) -> Any:  # add_scalar, add_text, add_hparams, ...
        return getattr(self.writer, name)

    def sync(self) -> None:
        self.writer.flush()
        if self._local is not None:
            spanwise_io.upload_dir(self._local, self.log_dir)

    def close(self) -> None:
        self.writer.close()
        if self._local is not None:
            spanwise_io.upload_dir(self._local, self.log_dir)
            shutil.rmtree(self._local, ignore_errors=True)
            self._local = None


class NullLogger:
    """``--report_to none``: the logger's interface, writing nothing."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None
