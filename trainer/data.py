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

With ``--max_tokens_per_batch`` (``trainer.budget.TokenBudgetPlan``) step 3 cuts each window by
tokens instead of rows, from view lengths read once at set-up; the per-window batch counts are
made in the main process, so steps 4 and the resume at batch ``start`` are unchanged.

Bad data is found as early as it can be. ``trainer.shards.scan_split`` (before the first step) lists the folder
and reads every shard's Parquet footer: a missing, empty, non-Parquet, truncated or foreign file,
row counts that disagree with manifest.json and labels or token ids out of range (from the
footer's column statistics) are a ValueError naming the file and the problem, or with
``skip_bad_shards`` a skipped, counted shard. Corruption inside a data page shows only when the
row group is decoded: ``_RowGroupReader`` raises ``ShardProblem`` naming the file and the row
group (a DataLoader worker hands it to the main process inside a batch, see
``raise_batch_error``), or its rows are left out and it is reported with the batch. Skipping
never changes the plan, so every rank still yields the same number of batches.
"""

from __future__ import annotations

import logging
import math
import signal
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

import spanwise_io
from modeling.features import FeatureBuilder, collate
from modeling.label_space import label_tensor
from modeling.packing import collate_packed
from trainer.budget import RowCosts, TokenBudgetPlan
from trainer.shards import DataLimits, ShardProblem, Unit, describe_error

__all__ = [
    "EpochPlan",
    "ShardStream",
    "read_rows",
    "read_rows_at",
    "row_lengths",
    "raise_batch_error",
    "eval_plan",
    "iter_documents",
    "worker_init_threads",
    "start_loader",
    "padding_counts",
]

log = logging.getLogger("trainer.data")

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # what DataLoader workers ignore: the main process decides

LengthFn = Callable[[np.ndarray], np.ndarray]


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
        group_by_length: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world size {world_size}")
        self.units = list(units)
        self.batch_size = int(batch_size)
        self.seed, self.epoch, self.rank, self.shuffle = int(seed), int(epoch), int(rank), bool(shuffle)
        self.group_by_length = bool(group_by_length)
        order = np.arange(len(self.units))
        if shuffle:
            order = np.random.default_rng([self.seed, self.epoch, 0x5EED]).permutation(len(self.units))
        self.order = order
        sizes = np.array([self.units[i].rows for i in order], dtype=np.int64)
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

    def window_rows(self, window_index: int, length_of: LengthFn | None = None) -> np.ndarray:
        """Stream positions (modulo the epoch length) of one window, in shuffled order.

        With ``group_by_length`` (``length_of`` gives the lengths of positions), the shuffled rows
        are sorted by length, longest first (ties keep the shuffled order), cut into batches, and
        the whole batches are shuffled; a last partial batch stays last. Every batch then holds
        documents of similar length, and the order is still a pure function of the plan.
        """
        begin = self.start + window_index * self.window
        end = min(begin + self.window, self.stop)
        positions = np.arange(begin, end, dtype=np.int64) % max(self.total_rows, 1)
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch, self.rank, window_index, 0xB0F])
            positions = positions[rng.permutation(len(positions))]
        if self.group_by_length:
            if length_of is None:
                raise ValueError("a group_by_length plan needs the lengths of its rows (length_of)")
            positions = positions[np.argsort(-np.asarray(length_of(positions), dtype=np.int64), kind="stable")]
            full = len(positions) // self.batch_size
            rng = np.random.default_rng([self.seed, self.epoch, self.rank, window_index, 0x1E9])
            batches = [positions[b * self.batch_size : (b + 1) * self.batch_size] for b in rng.permutation(full)]
            positions = np.concatenate([*batches, positions[full * self.batch_size :]])
        return positions

    def window_of(self, batch_index: int) -> int:
        """The shuffle window a batch is cut from."""
        return batch_index // (self.window // self.batch_size)

    def batch_positions(
        self, batch_index: int, window_cache: dict[int, np.ndarray] | None = None, length_of: LengthFn | None = None
    ) -> np.ndarray:
        """Stream positions of one batch (``length_of``: see ``window_rows``)."""
        if not 0 <= batch_index < self.num_batches:
            raise ValueError(f"batch {batch_index} out of range (epoch has {self.num_batches})")
        per_window = self.window // self.batch_size
        window_index, offset = divmod(batch_index, per_window)
        if window_cache is not None and window_index in window_cache:
            rows = window_cache[window_index]
        else:
            rows = self.window_rows(window_index, length_of)
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
    about one window plus the two row groups at its edges. A row group that cannot be decoded
    (corruption the footer check could not see) raises ``ShardProblem`` naming the file and the
    row group; ``failed`` remembers it, so a skipping caller does not read it again.
    """

    def __init__(self, capacity: int | None = None, limits: DataLimits | None = None) -> None:
        self.capacity = capacity
        self.limits = limits or DataLimits()
        self.cache: dict[tuple[str, int], dict[str, Any]] = {}
        self.files: dict[str, pq.ParquetFile] = {}
        self.failed: dict[tuple[str, int], ShardProblem] = {}

    def get(self, unit: Unit) -> dict[str, Any]:
        key = (unit.path, unit.row_group)
        if key in self.failed:
            raise self.failed[key]
        if key not in self.cache:
            if self.capacity is not None and len(self.cache) >= self.capacity:
                self.cache.pop(next(iter(self.cache)))
            try:
                self.cache[key] = self._read(unit)
            except ShardProblem as problem:
                self.failed[key] = problem
                raise
        return self.cache[key]

    def _read(self, unit: Unit) -> dict[str, Any]:
        try:
            parquet = self.files.get(unit.path)
            if parquet is None:
                if len(self.files) >= 16:
                    self.files.pop(next(iter(self.files))).close()
                parquet = pq.ParquetFile(spanwise_io.open_read(unit.path))
                self.files[unit.path] = parquet
            table = parquet.read_row_group(unit.row_group, columns=self.limits.columns)
            columns: dict[str, Any] = {"id": table.column("id").to_pylist()}
            if self.limits.multi_label:
                columns["label"], columns["label_range"] = self._label_sets(table.column("labels"))
            else:
                columns["label"] = table.column("label").to_numpy()
            for name in ("input_ids_a", "input_ids_b"):
                array = table.column(name).combine_chunks()
                columns[name] = (array.values.to_numpy(zero_copy_only=False), array.offsets.to_numpy())
        except Exception as error:  # pyarrow raises several types for corrupt pages
            raise ShardProblem(
                unit.path, f"cannot be decoded, the file is corrupt ({describe_error(error)})", unit.row_group, unit.num_rows
            ) from error
        problem = self._check_values(table, columns, unit)
        if problem:
            raise ShardProblem(unit.path, problem, unit.row_group, unit.num_rows)
        return columns

    def _check_values(self, table: Any, columns: Mapping[str, Any], unit: Unit) -> str | None:
        """What is wrong with decoded values (corruption that left the pages decodable), or None."""
        if table.num_rows != unit.num_rows:
            return f"decodes to {table.num_rows} rows, the footer says {unit.num_rows}"
        for name in self.limits.columns:
            if name != "labels" and table.column(name).null_count:  # a null label set: unlabelled
                return f"column {name!r} has {table.column(name).null_count} empty (null) values"
        labels = columns["label"]
        if self.limits.multi_label:
            low, high = columns["label_range"]
            problem = self.limits.check_label_sets(low, high, table.column("labels").null_count)
            if problem:
                return problem
        elif len(labels):
            problem = self.limits.check_labels(int(labels.min()), int(labels.max()))
            if problem:
                return problem
        for name in ("input_ids_a", "input_ids_b"):
            values = columns[name][0]
            if len(values):
                problem = self.limits.check_token_ids(name, int(values.min()), int(values.max()))
                if problem:
                    return problem
        return None

    def clear(self) -> None:
        self.cache.clear()

    def length(self, unit: Unit, index: int) -> int:
        """Stored tokens (TEXT_A + TEXT_B) of one row."""
        columns = self.get(unit)
        return sum(int(offsets[index + 1] - offsets[index]) for _, offsets in (columns["input_ids_a"], columns["input_ids_b"]))

    def row(self, unit: Unit, index: int) -> tuple[str, int, np.ndarray, np.ndarray]:
        columns = self.get(unit)
        out = []
        for name in ("input_ids_a", "input_ids_b"):
            values, offsets = columns[name]
            out.append(values[offsets[index] : offsets[index + 1]])
        label = columns["label"][index]
        return columns["id"][index], label if self.limits.multi_label else int(label), out[0], out[1]

    def _label_sets(self, column: Any) -> tuple[np.ndarray, tuple[int | None, int | None]]:
        """A ``labels`` column as 0/1 int8 rows over the labels (a null set, unlabelled: a row of -1),
        and the range of the indices it holds (None, None: every set empty), to check them."""
        array = column.combine_chunks()
        values = array.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
        offsets = array.offsets.to_numpy()
        if len(values) == 0:
            low = high = None
        else:
            low, high = int(values.min()), int(values.max())
        width = self.limits.num_labels if self.limits.num_labels is not None else (high + 1 if high is not None else 0)
        rows = np.zeros((len(array), width), dtype=np.int8)
        if len(values) and (low < 0 or high >= width):
            return rows, (low, high)  # refused by the check; not placed
        owners = np.repeat(np.arange(len(array)), np.diff(offsets))
        rows[owners, values] = 1
        if array.null_count:
            rows[np.asarray(array.is_null())] = -1
        return rows, (low, high)


def read_rows(
    plan: EpochPlan,
    positions: np.ndarray,
    reader: _RowGroupReader | None = None,
    skipped: list[ShardProblem] | None = None,
) -> list[tuple[str, int, np.ndarray, np.ndarray]]:
    """The stored rows at ``positions``: ``(id, label, ids_a, ids_b)``.

    Args:
        plan: the epoch's plan.
        positions: stream positions to read.
        reader: a reader whose decoded row groups are reused between calls.
        skipped: None to raise ``ShardProblem`` on a row group that cannot be read; a list to
            leave its rows out instead, appending the problem the first time it is met.
    """
    return [row for _, row in read_rows_at(plan, positions, reader, skipped)]


def read_rows_at(
    plan: EpochPlan,
    positions: np.ndarray,
    reader: _RowGroupReader | None = None,
    skipped: list[ShardProblem] | None = None,
) -> list[tuple[int, tuple[str, int, np.ndarray, np.ndarray]]]:
    """``read_rows``, each row with its stream position (rows of skipped row groups are left out)."""
    reader = reader or _RowGroupReader()
    rows = []
    for position, (unit, index) in zip(positions, plan.locate(positions)):
        try:
            rows.append((int(position), reader.row(unit, index)))
        except ShardProblem as problem:
            _skip_or_raise(problem, skipped)
    return rows


def _skip_or_raise(problem: ShardProblem, skipped: list[ShardProblem] | None) -> None:
    """Note a bad row group once in ``skipped`` (skipping its rows), or raise when not skipping."""
    if skipped is None:
        raise problem
    if all(problem is not known for known in skipped):
        skipped.append(problem)


def row_lengths(
    plan: EpochPlan, positions: np.ndarray, reader: _RowGroupReader, cap: int, skipped: list[ShardProblem] | None = None
) -> np.ndarray:
    """Stored tokens of the rows at ``positions``, capped at ``cap`` (0 for rows of a skipped row group)."""
    lengths = np.zeros(len(positions), dtype=np.int64)
    for i, (unit, index) in enumerate(plan.locate(positions)):
        try:
            lengths[i] = min(reader.length(unit, index), cap)
        except ShardProblem as problem:
            _skip_or_raise(problem, skipped)
    return lengths


def raise_batch_error(batch: Mapping[str, Any], hint: str = "") -> None:
    """Raise, in the main process, the error a DataLoader worker put in a batch.

    ``ShardStream`` does not raise in a worker (torch would wrap the message in a worker
    traceback): it yields ``{"error": message}`` and stops, and the consumer calls this.

    Args:
        batch: a batch from ``ShardStream``.
        hint: appended to the message (e.g. what flag would skip the problem).

    Raises:
        ValueError: the batch carries an error.
    """
    if "error" in batch:
        raise ValueError(batch["error"] + hint)


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
        limits: DataLimits | None = None,
        skip_bad_row_groups: bool = False,
        group_by_length: bool = False,
        views: int | str = 1,
        max_tokens_per_batch: int | None = None,
        pack_capacity: int | None = None,
    ) -> None:
        super().__init__()
        self.views = views  # --train_views: 1, K or "chunks" (see pooled_batch)
        # --max_tokens_per_batch: batches by tokens (trainer.budget), their cut counted per epoch in the
        # main process (layouts) before the workers start; epoch_batches: the count every rank runs (DDP)
        self.max_tokens_per_batch = max_tokens_per_batch
        self.pack_capacity = pack_capacity  # --pack_views: views packed into rows of this many tokens
        self.costs: RowCosts | None = None
        self.layouts: dict[int, np.ndarray] = {}
        self.epoch_batches: dict[int, int] = {}
        self.cost_problems: list[ShardProblem] = []
        self.group_by_length = group_by_length
        self.limits = limits
        self.skip_bad_row_groups = skip_bad_row_groups
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

    def plan(self, epoch: int | None = None) -> EpochPlan | TokenBudgetPlan:
        """The epoch's plan: fixed batches, or with ``max_tokens_per_batch`` the token-budget cut."""
        epoch = self.epoch if epoch is None else int(epoch)
        budget = self.max_tokens_per_batch is not None
        plan = EpochPlan(
            self.units,
            batch_size=1 if budget else self.batch_size,
            seed=self.seed,
            epoch=epoch,
            rank=self.rank,
            world_size=self.world_size,
            shuffle=True,
            shuffle_buffer=self.shuffle_buffer,
            pad=True,
            group_by_length=self.group_by_length and not budget,
        )
        if not budget:
            return plan
        budget_plan = TokenBudgetPlan(
            plan, self.row_costs(), max_tokens=int(self.max_tokens_per_batch), pad_to_multiple_of=self.pad_to_multiple_of,
            pack_capacity=self.pack_capacity, group_by_length=self.group_by_length, counts=self.layouts.get(epoch),
            num_batches=self.epoch_batches.get(epoch),
        )
        self.layouts[epoch] = budget_plan.counts
        return budget_plan

    def row_costs(self) -> RowCosts:
        """The view lengths of every training row (read once, in the process that first asks: the
        trainer's main process, before any DataLoader worker is started)."""
        if self.costs is None:
            reader = _RowGroupReader(capacity=2, limits=self.limits)

            def lengths_of(unit: Unit) -> tuple[np.ndarray, np.ndarray]:
                columns = reader.get(unit)
                return np.diff(columns["input_ids_a"][1]), np.diff(columns["input_ids_b"][1])

            def on_problem(problem: Exception) -> None:
                if not self.skip_bad_row_groups:
                    raise problem
                self.cost_problems.append(problem)  # type: ignore[arg-type]

            self.costs = RowCosts(
                self.units, lengths_of, lambda a, b: self.features.train_view_lengths(a, b, self.views), on_problem
            )
        return self.costs

    def batch_rows(
        self,
        plan: EpochPlan,
        batch_index: int,
        reader: _RowGroupReader,
        windows: dict[int, np.ndarray],
        skipped: list[ShardProblem] | None = None,
    ) -> list[tuple[str, int, np.ndarray, np.ndarray]]:
        """The stored rows of one batch (``windows`` caches the current window's positions)."""
        length_of = None
        if plan.group_by_length:
            cap = self.features.config.max_seq_length

            def length_of(positions: np.ndarray) -> np.ndarray:
                return row_lengths(plan, positions, reader, cap, skipped)

        return read_rows(plan, plan.batch_positions(batch_index, windows, length_of), reader, skipped)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def __len__(self) -> int:
        return max(self.plan().num_batches - self.start_batch, 0)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Batches with ``batch_index``; a row group that cannot be read ends the stream with a
        ``{"error": message}`` batch (see ``raise_batch_error``) or, with ``skip_bad_row_groups``,
        its rows are left out and the batch lists it under ``bad_row_groups`` (a batch can then
        be empty: ``doc_ids == []`` and no tensors)."""
        plan = self.plan()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        reader = _RowGroupReader(limits=self.limits)
        windows: dict[int, Any] = {}
        for batch_index in range(self.start_batch + worker, plan.num_batches, workers):
            if plan.window_of(batch_index) not in windows:
                reader.clear()
            skipped: list[ShardProblem] | None = [] if self.skip_bad_row_groups else None
            try:
                rows = self.batch_rows(plan, batch_index, reader, windows, skipped)
            except ShardProblem as problem:
                yield {"batch_index": batch_index, "error": str(problem)}
                return
            if self.views == 1:
                examples = [self.features.train_example(doc_id, label, a, b, self.epoch) for doc_id, label, a, b in rows]
                batch = self.collate_examples(examples) if examples else {"doc_ids": []}
            else:
                batch = self.pooled_batch(rows)
            if batch["doc_ids"]:
                batch.update(padding_counts(batch))
            batch["batch_index"] = batch_index
            if skipped:
                batch["bad_row_groups"] = [problem.to_dict() for problem in skipped]
            yield batch


    def pooled_batch(self, rows: Sequence[tuple[str, int, np.ndarray, np.ndarray]]) -> dict[str, Any]:
        """The views of a batch's documents as one flat batch (``--train_views K|chunks``).

        ``doc_ids`` and ``labels`` are per document (as in a one-view batch: the trace, the loss
        and the samples/s count documents); the tensors are per view, and ``owners`` gives each
        view's document (its index in ``doc_ids``). A document gives at most K views (or
        ``--max_chunks`` windows), so a batch holds at most batch size x that many windows.
        """
        examples, owners = [], []
        for index, (doc_id, label, a, b) in enumerate(rows):
            views = self.features.train_views(doc_id, label, a, b, self.epoch, self.views)
            examples += views
            owners += [index] * len(views)
        if not examples:
            return {"doc_ids": []}
        batch = self.collate_examples(examples)
        batch["doc_ids"] = [doc_id for doc_id, _, _, _ in rows]
        batch["labels"] = label_tensor([label for _, label, _, _ in rows])
        batch["owners"] = torch.as_tensor(owners, dtype=torch.long)
        return batch


    def collate_examples(self, examples: Sequence[Any]) -> dict[str, Any]:
        """Dynamic padding, or with ``pack_capacity`` the views packed into rows (``--pack_views``)."""
        if self.pack_capacity:
            return collate_packed(examples, self.pad_token_id, self.pack_capacity, self.pad_to_multiple_of)
        return collate(examples, self.pad_token_id, self.pad_to_multiple_of)


def padding_counts(batch: Mapping[str, Any]) -> dict[str, int]:
    """``real_tokens`` and ``padded_tokens`` (rows x padded length) of a collated batch: the
    padding fraction of training is ``1 - real / padded`` over the batches (issue 21)."""
    mask = batch["attention_mask"]
    return {"real_tokens": int(mask.sum()), "padded_tokens": int(mask.numel())}


def eval_plan(units: Sequence[Unit], *, batch_size: int, rank: int = 0, world_size: int = 1) -> EpochPlan:
    """Every row exactly once across ranks, in file order (no padding, no shuffling)."""
    return EpochPlan(units, batch_size=batch_size, seed=0, epoch=0, rank=rank, world_size=world_size, shuffle=False, pad=False)


def iter_documents(
    plan: EpochPlan,
    chunk_rows: int = 1024,
    *,
    limits: DataLimits | None = None,
    skipped: list[ShardProblem] | None = None,
) -> Iterator[tuple[str, int, np.ndarray, np.ndarray]]:
    """The rows of a (non-shuffled) plan in order, reading row groups one at a time.

    A row group that cannot be read raises ``ShardProblem`` (a ValueError naming the file and
    row group) or, when ``skipped`` is a list, is left out and recorded there.
    """
    reader = _RowGroupReader(capacity=2, limits=limits)
    for begin in range(plan.start, plan.stop, chunk_rows):
        positions = np.arange(begin, min(begin + chunk_rows, plan.stop), dtype=np.int64)
        yield from read_rows(plan, positions, reader, skipped)


def worker_init_threads(_: int) -> None:
    """DataLoader workers: one intra-op thread each, so workers do not fight the main process.

    Workers also ignore SIGTERM and SIGINT. A preemption signals the whole process group
    (torchrun forwards SIGTERM with ``killpg``; a VM shutdown signals every process), and so does
    Ctrl-C in a terminal: a worker killed by it makes the main process raise "DataLoader worker
    ... killed by signal" (or exited unexpectedly) before it could finish its step and write the
    checkpoint. The main process stops its workers itself when it drops the loader, and a worker
    whose parent died exits on its own (DataLoader watchdog).
    """
    torch.set_num_threads(1)
    for signum in _STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)  # (also discards one pending since the fork)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, set(_STOP_SIGNALS))  # blocked by start_loader


def start_loader(loader: Any) -> Iterator[Any]:
    """``iter(loader)`` with SIGTERM and SIGINT blocked while its worker processes start.

    torch's worker installs a SIGTERM handler of its own (which re-raises the signal) before
    ``worker_init_threads`` makes it ignore SIGTERM: a preemption signal landing in between
    killed the worker, and with it the run, without a checkpoint (SIGINT likewise, by the
    trainer's handler the fork copies). Blocked, the signal waits in the worker until it is
    ignored there (and discarded), and in the main process until the mask is restored here, when
    the trainer's own handler takes it.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, set(_STOP_SIGNALS))
    try:
        return iter(loader)  # forks the workers, which inherit the mask
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
