"""Streaming the shards: deterministic, resumable epochs that never hold the corpus in memory.

The unit of work is a Parquet row group (about 1,000 documents). For each epoch:

1. the units are permuted with ``(seed, epoch)``; their rows, in that order, form the epoch's
   stream of ``N`` rows (only the cumulative row counts of the units are kept: memory grows
   with the number of row groups, not documents);
2. rank ``r`` of ``W`` takes rows ``[r * P, (r + 1) * P)`` with ``P = ceil(N / W)``, wrapping
   around to the start for the few padding rows of the last ranks (as torch's
   DistributedSampler does), so every rank yields the same number of batches and DDP never
   waits on a rank that ran dry; evaluation does not pad;
3. the rank's rows are cut into windows of ``shuffle_buffer`` rows (a multiple of the batch
   size); each window's rows are permuted with ``(seed, epoch, rank, window)`` and cut into
   batches. That is the bounded shuffle buffer: one window is in memory per worker;
4. DataLoader worker ``w`` of ``K`` builds batches ``start + w, start + w + K, ...``; the
   DataLoader's round-robin then returns batches in plan order whatever ``K`` is.

The order is a pure function of (seed, epoch, rank, world size, batch size, buffer), so a
resumed run restarts at batch ``start`` of its epoch and sees exactly the samples the
interrupted run would have seen, with no read of the skipped ones.
"""

from __future__ import annotations

import math
import signal
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

import spanwise_io
from schemas.shard import SHARD_SCHEMA
from trainer.features import FeatureBuilder, collate

__all__ = ["Unit", "list_units", "EpochPlan", "ShardStream", "read_rows", "eval_plan", "iter_documents", "worker_init_threads"]

_COLUMNS = ["id", "label", "input_ids_a", "input_ids_b"]


@dataclass(frozen=True)
class Unit:
    """One row group of one shard file."""

    path: str
    row_group: int
    num_rows: int


def list_units(data_dir: str, manifest: Mapping[str, Any], split: str) -> list[Unit]:
    """The row groups of ``split``, checked against the manifest and the shard schema.

    Reads only the Parquet footers. Raises ValueError naming the file for a missing shard, a
    file that is not Parquet, a foreign schema or row counts that disagree with the manifest.
    """
    if split not in manifest["splits"]:
        raise ValueError(f"{data_dir}: the manifest has no split {split!r} (it has {', '.join(manifest['splits'])})")
    units: list[Unit] = []
    for entry in manifest["splits"][split]["files"]:
        path = spanwise_io.join(data_dir, entry["name"])
        if not spanwise_io.exists(path):
            raise ValueError(f"{path}: shard listed in the manifest is missing")
        try:
            with spanwise_io.open_read(path) as handle:
                metadata = pq.ParquetFile(handle).metadata
                schema = metadata.schema.to_arrow_schema()
        except Exception as error:  # pyarrow raises several types for corrupt files
            raise ValueError(f"{path}: not a readable Parquet shard ({type(error).__name__}: {error})") from error
        missing = [field.name for field in SHARD_SCHEMA if field.name in _COLUMNS and schema.get_field_index(field.name) < 0]
        wrong = [
            name for name in _COLUMNS if name not in missing and schema.field(name).type != SHARD_SCHEMA.field(name).type
        ]
        if missing or wrong:
            raise ValueError(f"{path}: not a spanwise shard: missing columns {missing}, wrong types {wrong}")
        if metadata.num_rows != entry["rows"]:
            raise ValueError(f"{path}: holds {metadata.num_rows} rows but the manifest says {entry['rows']}")
        units.extend(
            Unit(path, group, metadata.row_group(group).num_rows)
            for group in range(metadata.num_row_groups)
            if metadata.row_group(group).num_rows > 0
        )
    return units


class EpochPlan:
    """Which rows of which units rank ``rank`` sees in one epoch, in which batches."""

    def __init__(
        self,
        units: Sequence[Unit],
        *,
        batch_size: int,
        seed: int,
        epoch: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        shuffle_buffer: int = 4096,
        pad: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world size {world_size}")
        self.units = list(units)
        self.batch_size = int(batch_size)
        self.seed, self.epoch, self.rank, self.shuffle = int(seed), int(epoch), int(rank), bool(shuffle)
        order = np.arange(len(self.units))
        if shuffle:
            order = np.random.default_rng([self.seed, self.epoch, 0x5EED]).permutation(len(self.units))
        self.order = order
        sizes = np.array([self.units[i].num_rows for i in order], dtype=np.int64)
        self.cumulative = np.concatenate([[0], np.cumsum(sizes)])
        self.total_rows = int(self.cumulative[-1])
        per_rank = math.ceil(self.total_rows / world_size)
        self.start = rank * per_rank
        # padding rows (positions >= total_rows) wrap around to the start of the epoch
        self.stop = self.start + per_rank if pad else max(self.start, min(self.start + per_rank, self.total_rows))
        self.window = max(self.batch_size, (int(shuffle_buffer) // self.batch_size) * self.batch_size)

    @property
    def num_rows(self) -> int:
        return self.stop - self.start

    @property
    def num_batches(self) -> int:
        return math.ceil(self.num_rows / self.batch_size)

    def window_rows(self, window_index: int) -> np.ndarray:
        """Stream positions (modulo the epoch length) of one window, in shuffled order."""
        begin = self.start + window_index * self.window
        end = min(begin + self.window, self.stop)
        positions = np.arange(begin, end, dtype=np.int64) % max(self.total_rows, 1)
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch, self.rank, window_index, 0xB0F])
            positions = positions[rng.permutation(len(positions))]
        return positions

    def batch_positions(self, batch_index: int, window_cache: dict[int, np.ndarray] | None = None) -> np.ndarray:
        """Stream positions of one batch."""
        if not 0 <= batch_index < self.num_batches:
            raise ValueError(f"batch {batch_index} out of range (epoch has {self.num_batches})")
        per_window = self.window // self.batch_size
        window_index, offset = divmod(batch_index, per_window)
        if window_cache is not None and window_index in window_cache:
            rows = window_cache[window_index]
        else:
            rows = self.window_rows(window_index)
            if window_cache is not None:
                window_cache.clear()
                window_cache[window_index] = rows
        return rows[offset * self.batch_size : (offset + 1) * self.batch_size]

    def locate(self, positions: np.ndarray) -> list[tuple[Unit, int]]:
        """(unit, row within its row group) of each stream position."""
        slots = np.searchsorted(self.cumulative, positions, side="right") - 1
        return [(self.units[self.order[slot]], int(pos - self.cumulative[slot])) for slot, pos in zip(slots, positions)]


class _RowGroupReader:
    """Reads row groups and keeps them decoded until ``clear`` (called at each new window).

    A window of ``shuffle_buffer`` consecutive stream rows spans few row groups, so memory is
    about one window plus the two row groups at its edges.
    """

    def __init__(self, capacity: int | None = None) -> None:
        self.capacity = capacity
        self.cache: dict[tuple[str, int], dict[str, Any]] = {}
        self.files: dict[str, pq.ParquetFile] = {}

    def get(self, unit: Unit) -> dict[str, Any]:
        key = (unit.path, unit.row_group)
        if key not in self.cache:
            if self.capacity is not None and len(self.cache) >= self.capacity:
                self.cache.pop(next(iter(self.cache)))
            self.cache[key] = self._read(unit)
        return self.cache[key]

    def _read(self, unit: Unit) -> dict[str, Any]:
        parquet = self.files.get(unit.path)
        if parquet is None:
            if len(self.files) >= 16:
                self.files.pop(next(iter(self.files))).close()
            parquet = pq.ParquetFile(spanwise_io.open_read(unit.path))
            self.files[unit.path] = parquet
        try:
            table = parquet.read_row_group(unit.row_group, columns=_COLUMNS)
        except Exception as error:
            raise ValueError(f"{unit.path}: cannot read row group {unit.row_group} ({type(error).__name__}: {error})") from error
        columns: dict[str, Any] = {"id": table.column("id").to_pylist(), "label": table.column("label").to_numpy()}
        for name in ("input_ids_a", "input_ids_b"):
            array = table.column(name).combine_chunks()
            columns[name] = (array.values.to_numpy(zero_copy_only=False), array.offsets.to_numpy())
        return columns

    def clear(self) -> None:
        self.cache.clear()

    def row(self, unit: Unit, index: int) -> tuple[str, int, np.ndarray, np.ndarray]:
        columns = self.get(unit)
        out = []
        for name in ("input_ids_a", "input_ids_b"):
            values, offsets = columns[name]
            out.append(values[offsets[index] : offsets[index + 1]])
        return columns["id"][index], int(columns["label"][index]), out[0], out[1]


def read_rows(plan: EpochPlan, positions: np.ndarray, reader: _RowGroupReader | None = None) -> list[tuple[str, int, np.ndarray, np.ndarray]]:
    """The stored rows at ``positions``: ``(id, label, ids_a, ids_b)``."""
    reader = reader or _RowGroupReader()
    return [reader.row(unit, index) for unit, index in plan.locate(positions)]


class ShardStream(IterableDataset):
    """Batches of one epoch for one rank, built in DataLoader workers (or in-process).

    Set the epoch and the first batch with ``set_epoch`` before iterating; with
    ``persistent_workers=False`` the DataLoader hands a fresh copy to its workers each epoch.
    """

    def __init__(
        self,
        units: Sequence[Unit],
        features: FeatureBuilder,
        *,
        batch_size: int,
        seed: int,
        pad_token_id: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int = 4096,
        pad_to_multiple_of: int | None = None,
    ) -> None:
        super().__init__()
        self.units = list(units)
        self.features = features
        self.batch_size = batch_size
        self.seed = seed
        self.pad_token_id = pad_token_id
        self.rank, self.world_size = rank, world_size
        self.shuffle_buffer = shuffle_buffer
        self.pad_to_multiple_of = pad_to_multiple_of
        self.epoch = 0
        self.start_batch = 0

    def plan(self, epoch: int | None = None) -> EpochPlan:
        return EpochPlan(
            self.units,
            batch_size=self.batch_size,
            seed=self.seed,
            epoch=self.epoch if epoch is None else epoch,
            rank=self.rank,
            world_size=self.world_size,
            shuffle=True,
            shuffle_buffer=self.shuffle_buffer,
            pad=True,
        )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def __len__(self) -> int:
        return max(self.plan().num_batches - self.start_batch, 0)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        plan = self.plan()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        reader = _RowGroupReader()
        windows: dict[int, np.ndarray] = {}
        per_window = plan.window // plan.batch_size
        for batch_index in range(self.start_batch + worker, plan.num_batches, workers):
            if batch_index // per_window not in windows:
                reader.clear()
            rows = read_rows(plan, plan.batch_positions(batch_index, windows), reader)
            examples = [self.features.train_example(doc_id, label, a, b, self.epoch) for doc_id, label, a, b in rows]
            batch = collate(examples, self.pad_token_id, self.pad_to_multiple_of)
            batch["batch_index"] = batch_index
            yield batch


def eval_plan(units: Sequence[Unit], *, batch_size: int, rank: int = 0, world_size: int = 1) -> EpochPlan:
    """Every row exactly once across ranks, in file order (no padding, no shuffling)."""
    return EpochPlan(units, batch_size=batch_size, seed=0, epoch=0, rank=rank, world_size=world_size, shuffle=False, pad=False)


def iter_documents(plan: EpochPlan, chunk_rows: int = 1024) -> Iterator[tuple[str, int, np.ndarray, np.ndarray]]:
    """The rows of a (non-shuffled) plan in order, reading row groups one at a time."""
    reader = _RowGroupReader(capacity=2)
    for begin in range(plan.start, plan.stop, chunk_rows):
        positions = np.arange(begin, min(begin + chunk_rows, plan.stop), dtype=np.int64)
        yield from read_rows(plan, positions, reader)


def worker_init_threads(_: int) -> None:
    """DataLoader workers: one intra-op thread each, so workers do not fight the main process.

    Workers also ignore SIGTERM. A preemption signals the whole process group (torchrun forwards
    SIGTERM with ``killpg``; a VM shutdown signals every process): a worker killed by it makes
    the main process raise "DataLoader worker ... killed by signal" before it could finish its
    step and write the preemption checkpoint. The main process stops its workers itself when it
    drops the loader, and a worker whose parent died exits on its own (DataLoader watchdog).
    """
    torch.set_num_threads(1)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
