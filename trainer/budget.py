"""Training batches by token budget (``--max_tokens_per_batch``, issue 21).

A fixed number of documents per batch makes a batch of short documents cheap and one of long
documents expensive, and with dynamic padding part of every batch is pad tokens. Here a batch
takes documents, in the epoch's order, while ``rows x padded length <= max_tokens`` (rows: the
views of its documents, or the packed rows with ``--pack_views``; padded length: the longest
row, rounded up to ``--pad_to_multiple_of``).

What keeps the data order exact (the same with 0 or N DataLoader workers, and a resumed run
equal to an uninterrupted one) is that the cut is a pure function of the plan and of the rows'
lengths, computed before any worker starts:

* ``RowCosts``: the input length of every view of every training row (``FeatureBuilder.
  train_view_lengths``: the length depends on the stored lengths only, even for the random seq
  functions), read once at set-up from the shards' offsets. Memory: about 16 bytes per document
  (as fairseq keeps its ``sizes`` array); this is the one thing here that grows with the corpus.
* ``TokenBudgetPlan``: the rank's rows of the epoch (``trainer.data.EpochPlan``: the same unit
  permutation, rank split and wrap-around padding) are cut into windows of ``--shuffle_buffer``
  rows, each shuffled with ``(seed, epoch, rank, window)``; with ``--group_by_length`` sorted by
  length, longest first; then cut greedily into batches that keep the budget (with grouping, the
  window's batches are then shuffled). Batches never cross a window. The number of batches of
  every window is counted when the plan is made (in the main process), so batch ``b`` is found
  without reading what precedes it: DataLoader worker ``w`` of ``K`` builds batches ``w, w + K,
  ...`` as with fixed batches, and a resumed run starts at batch ``next_batch`` directly.

Ranks: each rank's rows have other lengths, so each cuts its share into its own number of
batches. DDP needs the same number on every rank: ``trainer.plan.RunPlan`` gathers the counts
and every rank runs the largest, a rank that ran out yielding empty batches (a zero-loss step on
a dummy document, as for a batch whose row groups were skipped). The schedule's step count is
exact: the counts of the epochs the run trains are computed at set-up (``RunPlan.plan_training``).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["RowCosts", "TokenBudgetPlan", "cut_batches"]


def _round_up(length: int, multiple: int | None) -> int:
    return -(-int(length) // multiple) * multiple if multiple else int(length)


class RowCosts:
    """The view lengths of every row of ``units`` (special tokens included).

    Args:
        units: the training units, in the order the plans are made with.
        lengths_of_unit: ``unit -> (stored tokens of TEXT_A, of TEXT_B)`` per row; it may raise
            ``ShardProblem`` (a row group that cannot be read), which ``on_problem`` decides about.
        view_lengths: ``(len_a, len_b) -> [input length of each view]``.
        on_problem: called with the problem of an unreadable row group; raise to stop, return to
            give its rows no views (their documents are then skipped by the reader, too).
    """

    def __init__(self, units: Sequence[Any], lengths_of_unit: Callable[[Any], tuple[np.ndarray, np.ndarray]],
                 view_lengths: Callable[[int, int], list[int]], on_problem: Callable[[Exception], None]) -> None:
        from trainer.shards import ShardProblem

        unit_rows = [0]
        view_arrays: list[np.ndarray] = []  # per unit (Python lists never hold more than one unit)
        count_arrays: list[np.ndarray] = []
        memo: dict[tuple[int, int], list[int]] = {}
        for unit in units:
            try:
                len_a, len_b = lengths_of_unit(unit)
                unit_views, unit_counts = [], []
                for key in zip(len_a.tolist(), len_b.tolist()):
                    if key not in memo:
                        if len(memo) >= 100_000:  # distinct (len_a, len_b) pairs: bounded
                            memo.clear()
                        memo[key] = view_lengths(*key)
                    unit_views += memo[key]
                    unit_counts.append(len(memo[key]))
            except ShardProblem as problem:
                on_problem(problem)  # (raises unless skipping): its rows get no views, as the reader skips them
                unit_views, unit_counts = [], [0] * int(unit.rows)
            view_arrays.append(np.asarray(unit_views, dtype=np.int32))
            count_arrays.append(np.asarray(unit_counts, dtype=np.int64))
            unit_rows.append(unit_rows[-1] + len(unit_counts))
        self.unit_offsets = np.asarray(unit_rows, dtype=np.int64)
        self.view_lengths = np.concatenate(view_arrays) if view_arrays else np.zeros(0, dtype=np.int32)
        counts = np.concatenate(count_arrays) if count_arrays else np.zeros(0, dtype=np.int64)
        self.row_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        counts = np.diff(self.row_offsets)
        self.longest = np.zeros(len(counts), dtype=np.int32)
        nonempty = counts > 0
        if nonempty.any():
            self.longest[nonempty] = np.maximum.reduceat(self.view_lengths, self.row_offsets[:-1][nonempty])

    def rows_of(self, plan: Any, positions: np.ndarray) -> np.ndarray:
        """Row indices (into this table) of stream positions of ``plan`` (vectorised ``plan.locate``)."""
        positions = np.asarray(positions, dtype=np.int64)
        slots = np.searchsorted(plan.cumulative, positions, side="right") - 1
        units = plan.order[slots]
        return self.unit_offsets[units] + positions - plan.cumulative[slots]

    def views_of(self, row: int) -> np.ndarray:
        return self.view_lengths[self.row_offsets[row] : self.row_offsets[row + 1]]


def cut_batches(costs: RowCosts, rows: np.ndarray, max_tokens: int, pad_to_multiple_of: int | None = None,
                pack_capacity: int | None = None) -> list[int]:
    """Sizes (in documents) of the consecutive batches ``rows`` is cut into, greedily: a document
    joins the current batch when the batch then still keeps ``max_tokens``, else starts the next.
    A document over the budget on its own is a batch alone (``--max_tokens_per_batch`` is checked
    to be at least the largest such document, so it does not happen in training)."""
    sizes: list[int] = []
    count = 0
    if pack_capacity:
        fills: list[int] = []
        for row in rows.tolist():
            lengths = costs.views_of(row).tolist()
            trial = _first_fit_into(list(fills), lengths, pack_capacity)
            if count and len(trial) * _round_up(max(trial, default=0), pad_to_multiple_of) > max_tokens:
                sizes.append(count)
                count, trial = 0, _first_fit_into([], lengths, pack_capacity)
            fills = trial
            count += 1
    else:
        views = np.diff(costs.row_offsets)[rows].tolist()
        longest = costs.longest[rows].tolist()
        batch_rows = batch_longest = 0
        for n, length in zip(views, longest):
            new_rows, new_longest = batch_rows + n, max(batch_longest, length)
            if count and new_rows * _round_up(new_longest, pad_to_multiple_of) > max_tokens:
                sizes.append(count)
                count, new_rows, new_longest = 0, n, length
            batch_rows, batch_longest = new_rows, new_longest
            count += 1
    if count:
        sizes.append(count)
    return sizes


def _first_fit_into(fills: list[int], lengths: Sequence[int], capacity: int) -> list[int]:
    """Row fills after adding ``lengths`` first-fit, as ``modeling.packing.first_fit`` places them
    (incrementally: the cut tries each document on the batch so far; a test checks the two agree)."""
    for length in lengths:
        for index, fill in enumerate(fills):
            if fill + length <= capacity:
                fills[index] += length
                break
        else:
            fills.append(length)
    return fills


class TokenBudgetPlan:
    """The batches of one epoch for one rank under a token budget (see the module's docstring).

    Args:
        plan: the epoch's ``EpochPlan`` made with ``batch_size=1`` and ``group_by_length=False``
            (its window is then ``--shuffle_buffer`` rows, shuffled as for fixed batches).
        costs: the view lengths of ``plan.units``' rows.
        max_tokens: the budget (rows x padded length) of a batch.
        group_by_length: sort each window by length before cutting, then shuffle its batches.
        counts: the per-window batch counts, when already known (the main process counted them).
        num_batches: the batches every rank yields (DDP: the largest count of any rank); batches
            past this rank's own are empty.
    """

    def __init__(self, plan: Any, costs: RowCosts, *, max_tokens: int, pad_to_multiple_of: int | None = None,
                 pack_capacity: int | None = None, group_by_length: bool = False, counts: np.ndarray | None = None,
                 num_batches: int | None = None) -> None:
        self.base = plan
        self.costs = costs
        self.max_tokens = int(max_tokens)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.pack_capacity = pack_capacity
        self.sort_by_length = bool(group_by_length)
        self.group_by_length = False  # ShardStream: the lengths are ours, no length_of needed
        self.window = plan.window
        self.epoch, self.rank, self.seed = plan.epoch, plan.rank, plan.seed
        self.num_windows = math.ceil(plan.num_rows / self.window) if plan.num_rows else 0
        if counts is None:
            counts = np.asarray([len(self._window_sizes(w)[1]) for w in range(self.num_windows)], dtype=np.int64)
        self.counts = np.asarray(counts, dtype=np.int64)
        self.first = np.concatenate([[0], np.cumsum(self.counts)])
        self.own_batches = int(self.first[-1])
        self.num_batches = max(self.own_batches, int(num_batches or 0))

    def _window_sizes(self, window_index: int) -> tuple[np.ndarray, list[int]]:
        positions = self.base.window_rows(window_index)
        rows = self.costs.rows_of(self.base, positions)
        if self.sort_by_length:
            order = np.argsort(-self.costs.longest[rows].astype(np.int64), kind="stable")
            positions, rows = positions[order], rows[order]
        return positions, cut_batches(self.costs, rows, self.max_tokens, self.pad_to_multiple_of, self.pack_capacity)

    def window_batches(self, window_index: int) -> list[np.ndarray]:
        """The stream positions of each batch of one window, in batch order."""
        positions, sizes = self._window_sizes(window_index)
        bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        batches = [positions[bounds[i] : bounds[i + 1]] for i in range(len(sizes))]
        if self.sort_by_length and self.base.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch, self.rank, window_index, 0x70C])
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def window_of(self, batch_index: int) -> int:
        """The window of a batch (an empty padding batch: one past the last)."""
        if batch_index >= self.own_batches:
            return self.num_windows
        return int(np.searchsorted(self.first, batch_index, side="right") - 1)

    def batch_positions(self, batch_index: int, window_cache: dict[int, Any] | None = None,
                        length_of: Any = None) -> np.ndarray:
        """Stream positions of one batch (empty for a padding batch past this rank's own)."""
        if not 0 <= batch_index < self.num_batches:
            raise ValueError(f"batch {batch_index} out of range (epoch has {self.num_batches})")
        window = self.window_of(batch_index)
        if window == self.num_windows:
            return np.zeros(0, dtype=np.int64)
        if window_cache is not None and window in window_cache:
            batches = window_cache[window]
        else:
            batches = self.window_batches(window)
            if window_cache is not None:
                window_cache.clear()
                window_cache[window] = batches
        return batches[batch_index - int(self.first[window])]

    def locate(self, positions: np.ndarray) -> list[tuple[Any, int]]:
        return self.base.locate(positions)

    @property
    def cumulative(self) -> np.ndarray:
        return self.base.cumulative
