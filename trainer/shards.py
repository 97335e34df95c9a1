"""Which shards a run reads, checked before its first step: row-group units, their limits, and what is wrong with a bad one.

``scan_split`` lists a split's folder and reads every shard's Parquet footer (no data pages):
a missing, empty, non-Parquet, truncated or foreign file, row counts that disagree with
manifest.json, and labels or token ids out of range (from the footer's column statistics) are
a ValueError naming the file and the problem, or with ``skip_bad_shards`` a skipped, counted
shard (``ShardProblem``). What it returns, ``Unit``s (one Parquet row group each), is what the
shard stream (``trainer.data``) reads, epoch after epoch.
"""

from __future__ import annotations

import logging
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import pyarrow.parquet as pq

import spanwise_io
from schemas.shard import LEGACY_TYPES, MULTI_LABEL_SHARD_SCHEMA, SHARD_SCHEMA

__all__ = [
    "Unit",
    "ShardProblem",
    "DataLimits",
    "SplitScan",
    "scan_split",
    "check_shard",
    "list_units",
    "take_first",
    "has_labels",
    "describe_error",
    "SHARD_COLUMNS",
    "shard_columns",
]

log = logging.getLogger("trainer.data")

# the columns a shard must have (and the shard stream reads); label sets: ``labels`` for ``label``
SHARD_COLUMNS = ["id", "label", "input_ids_a", "input_ids_b"]


def shard_columns(multi_label: bool) -> list[str]:
    """``SHARD_COLUMNS``, with the ``labels`` column of a multi-label corpus instead of ``label``."""
    return ["id", "labels", "input_ids_a", "input_ids_b"] if multi_label else list(SHARD_COLUMNS)
_PARQUET_MAGIC = b"PAR1"
_REMOTE_CHECK_THREADS = 16


@dataclass(frozen=True)
class Unit:
    """One row group of one shard file.

    Attributes:
        path, row_group: where it is.
        num_rows: the rows the row group holds.
        take: read only its first ``take`` rows (``--max_train_samples`` and friends); None: all.
        label_max: the largest label in its footer statistics (-1: no labelled row; None: unknown).
    """

    path: str
    row_group: int
    num_rows: int
    take: int | None = field(default=None, compare=False)
    label_max: int | None = field(default=None, compare=False)

    @property
    def rows(self) -> int:
        """The rows of this unit that are read."""
        return self.num_rows if self.take is None else min(self.take, self.num_rows)


def take_first(units: Sequence[Unit], count: int | None) -> list[Unit]:
    """The units holding the first ``count`` documents of a split (in manifest order); all for None."""
    if count is None:
        return list(units)
    out: list[Unit] = []
    left = int(count)
    for unit in units:
        if left <= 0:
            break
        out.append(Unit(unit.path, unit.row_group, unit.num_rows, take=min(unit.rows, left), label_max=unit.label_max))
        left -= out[-1].rows
    return out


def has_labels(units: Sequence[Unit]) -> bool:
    """Whether the units may hold a labelled document (by their footer statistics)."""
    return any(unit.rows > 0 and (unit.label_max is None or unit.label_max >= 0) for unit in units)


class ShardProblem(ValueError):
    """A shard (or one row group of it) that cannot be used, and why, in plain words."""

    def __init__(self, path: str, problem: str, row_group: int | None = None, rows: int | None = None) -> None:
        self.path, self.problem, self.row_group, self.rows = path, problem, row_group, rows
        where = path if row_group is None else f"{path}, row group {row_group}"
        super().__init__(f"{where}: {problem}")

    def __reduce__(self) -> tuple[Any, ...]:
        # pickled with its fields (the default would call __init__ with the message only): it
        # travels from rank 0 to the others in the shard check's broadcast
        return (type(self), (self.path, self.problem, self.row_group, self.rows))

    def to_dict(self) -> dict[str, Any]:
        """The problem as JSON for ``eval_results.json`` / ``run_config.json``."""
        record: dict[str, Any] = {"path": self.path, "problem": self.problem, "rows": self.rows}
        if self.row_group is not None:
            record["row_group"] = self.row_group
        return record


@dataclass(frozen=True)
class DataLimits:
    """What the stored values of a split may be.

    Attributes:
        num_labels: labels must be < this (the size of the manifest's label map); None: unchecked.
        allow_unlabelled: whether label -1 (no label) is allowed; a training split has none.
        vocab_size: token ids must be < this (the tokenizer's vocabulary); None: unchecked.
        multi_label: the shards hold label sets (a ``labels`` list column, null = no label), as
            the manifest's ``problem_type`` says.
    """

    num_labels: int | None = None
    allow_unlabelled: bool = True
    vocab_size: int | None = None
    multi_label: bool = False

    @property
    def label_column(self) -> str:
        return "labels" if self.multi_label else "label"

    @property
    def columns(self) -> list[str]:
        return shard_columns(self.multi_label)

    def check_label_sets(self, low: int | None, high: int | None, unlabelled: int) -> str | None:
        """The problem with label sets whose indices range over ``low..high`` (None: all sets
        empty), ``unlabelled`` of them null, or None."""
        if unlabelled and not self.allow_unlabelled:
            return f"{unlabelled} documents without a label set (null), which a training split cannot have"
        if low is not None and low < 0:
            return f"label index {low} is out of range (label sets hold indices 0..N-1)"
        if high is not None and self.num_labels is not None and high >= self.num_labels:
            return (
                f"label {high} is out of range for the label_map of manifest.json "
                f"({self.num_labels} labels, indices 0..{self.num_labels - 1})"
            )
        return None

    def check_labels(self, low: int, high: int) -> str | None:
        """The problem with labels ranging over ``low..high``, or None."""
        if self.num_labels is not None and high >= self.num_labels:
            return (
                f"label {high} is out of range for the label_map of manifest.json "
                f"({self.num_labels} labels, indices 0..{self.num_labels - 1})"
            )
        floor = -1 if self.allow_unlabelled else 0
        if low < floor:
            if low == -1:
                return "label -1 (no label) found, which a training split cannot have"
            return f"label {low} is out of range (labels are 0..N-1, or -1 for no label)"
        return None

    def check_token_ids(self, column: str, low: int, high: int) -> str | None:
        """The problem with token ids of ``column`` ranging over ``low..high``, or None."""
        if low < 0:
            return f"column {column!r} has a negative token id ({low})"
        if self.vocab_size is not None and high >= self.vocab_size:
            return f"column {column!r} has token id {high}, beyond the tokenizer's vocabulary of {self.vocab_size}"
        return None


@dataclass
class SplitScan:
    """The result of checking the shards of one split before training.

    Attributes:
        split: the split's name.
        units: the row groups of the good shards, in manifest order.
        skipped: the bad shards that were skipped (only with ``skip_bad_shards``).
        unlisted: Parquet files of this split in the folder that manifest.json does not list
            (ignored, with a warning).
    """

    split: str
    units: list[Unit]
    skipped: list[ShardProblem] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)


def _leaf_stats(metadata: Any, group: int, leaf: str) -> Any:
    """Statistics of the column chunk whose path starts with ``leaf`` (``input_ids_a.list.element``)."""
    row_group = metadata.row_group(group)
    for index in range(row_group.num_columns):
        column = row_group.column(index)
        if column.path_in_schema == leaf or column.path_in_schema.startswith(leaf + "."):
            return column.statistics
    return None


def _check_footer(path: str, metadata: Any, file_size: int, entry: Mapping[str, Any], limits: DataLimits) -> str | None:
    """The problem found in a shard's Parquet metadata (schema, counts, value ranges), or None."""
    schema = metadata.schema.to_arrow_schema()
    expected = MULTI_LABEL_SHARD_SCHEMA if limits.multi_label else SHARD_SCHEMA
    missing = [name for name in limits.columns if schema.get_field_index(name) < 0]
    wrong = [
        f"column {name!r} is {schema.field(name).type}, expected {expected.field(name).type}"
        for name in limits.columns
        if name not in missing
        and schema.field(name).type != expected.field(name).type
        and schema.field(name).type not in LEGACY_TYPES.get(name, ())
    ]
    if missing or wrong:
        what = ([f"missing column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}"] if missing else []) + wrong
        kind = " (manifest.json says the corpus has label sets, problem_type multi_label_classification)" if (
            limits.multi_label and "labels" in missing) else ""
        return f"foreign schema, not a spanwise shard{kind}: {'; '.join(what)} (it has columns {', '.join(schema.names)})"
    if metadata.num_rows != entry["rows"]:
        return f"holds {metadata.num_rows} rows but manifest.json says {entry['rows']}"
    if "row_groups" in entry and metadata.num_row_groups != entry["row_groups"]:
        return f"has {metadata.num_row_groups} row groups but manifest.json says {entry['row_groups']}"
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        for index in range(row_group.num_columns):
            column = row_group.column(index)
            begin = column.dictionary_page_offset or column.data_page_offset
            if begin + column.total_compressed_size > file_size:
                return (
                    f"row group {group}, column {column.path_in_schema!r} ends at byte "
                    f"{begin + column.total_compressed_size}, past the end of the {file_size}-byte file (truncated or spliced)"
                )
        if row_group.num_rows == 0:
            continue
        for name in ("id",) if limits.multi_label else ("id", "label"):
            stats = _leaf_stats(metadata, group, name)
            if stats is not None and stats.null_count:
                return f"row group {group}: column {name!r} has {stats.null_count} empty (null) values"
        stats = _leaf_stats(metadata, group, limits.label_column)
        if stats is not None and stats.has_min_max:
            low, high = int(stats.min), int(stats.max)
            # a label set's null count mixes unlabelled and empty sets: checked when the rows are read
            problem = limits.check_label_sets(low, high, 0) if limits.multi_label else limits.check_labels(low, high)
            if problem:
                return f"row group {group}: {problem}"
        for name in ("input_ids_a", "input_ids_b"):
            stats = _leaf_stats(metadata, group, name)
            if stats is not None and stats.has_min_max:
                problem = limits.check_token_ids(name, int(stats.min), int(stats.max))
                if problem:
                    return f"row group {group}: {problem}"
    return None


def check_shard(path: str, entry: Mapping[str, Any], limits: DataLimits = DataLimits(), listed: bool | None = None) -> list[Unit]:
    """Check one shard from its Parquet footer (a few KB read, no data page); return its row groups.

    Args:
        path: the shard's full path or URL.
        entry: its entry in manifest.json (``name``, ``rows``, optional ``row_groups``).
        limits: allowed label and token id ranges, checked against the footer's column statistics.
        listed: whether the folder listing holds the file (None: ask the filesystem).

    Raises:
        ShardProblem: the file is missing, empty, not Parquet, truncated, of a foreign schema,
            disagrees with the manifest, or its statistics show out-of-range values.
    """
    rows = entry.get("rows")
    if not (spanwise_io.exists(path) if listed is None else listed):
        raise ShardProblem(path, "listed in manifest.json but missing", rows=rows)
    try:
        with spanwise_io.open_read(path) as handle:
            handle.seek(0, 2)
            file_size = handle.tell()
            if file_size == 0:
                raise ShardProblem(path, "empty file (0 bytes), not a Parquet shard", rows=rows)
            handle.seek(0)
            head = handle.read(16)
            if not head.startswith(_PARQUET_MAGIC):
                raise ShardProblem(path, f"not a Parquet file: it starts with {head!r}, not with PAR1", rows=rows)
            handle.seek(max(file_size - 4, 0))
            if file_size < 12 or handle.read(4) != _PARQUET_MAGIC:
                raise ShardProblem(
                    path,
                    f"truncated Parquet file: it starts like Parquet but has no footer ({file_size} bytes; "
                    "an interrupted copy or write?)",
                    rows=rows,
                )
            handle.seek(0)
            metadata = pq.ParquetFile(handle).metadata
    except ShardProblem:
        raise
    except Exception as error:  # pyarrow and fsspec raise several types for corrupt or unreadable files
        raise ShardProblem(path, f"unreadable Parquet footer ({describe_error(error)})", rows=rows) from error
    problem = _check_footer(path, metadata, file_size, entry, limits)
    if problem:
        raise ShardProblem(path, problem, rows=rows)
    units = []
    for group in range(metadata.num_row_groups):
        rows = metadata.row_group(group).num_rows
        if rows > 0:
            stats = None if limits.multi_label else _leaf_stats(metadata, group, "label")
            label_max = int(stats.max) if stats is not None and stats.has_min_max else None
            units.append(Unit(path, group, rows, label_max=label_max))
    return units


def describe_error(error: BaseException) -> str:
    """``Type: message`` on one line of printable text (pyarrow's messages hold newlines and raw bytes)."""
    text = "".join(char if char.isprintable() else " " for char in str(error))
    return f"{type(error).__name__}: {' '.join(text.split())[:300]}"


def _format_problems(split: str, problems: Sequence[ShardProblem], hint: str) -> str:
    if len(problems) == 1:
        return f"{problems[0]}; {hint}"
    lines = "\n".join(f"  {problem}" for problem in problems)
    return f"{len(problems)} bad shards in split {split!r}; {hint}:\n{lines}"


def scan_split(
    data_dir: str,
    manifest: Mapping[str, Any],
    split: str,
    *,
    limits: DataLimits = DataLimits(),
    skip_bad_shards: bool = False,
) -> SplitScan:
    """Check every shard of ``split`` before any training step: one listing plus the Parquet footers.

    The result depends only on the files, so every rank that scans the same folder gets the
    same units (the trainer still scans on rank 0 only and broadcasts the result).

    Args:
        data_dir: the folder of manifest.json and the shards (local or gs://).
        manifest: the validated manifest.
        split: e.g. ``train``.
        limits: allowed label and token id ranges.
        skip_bad_shards: skip bad shards (reported in ``SplitScan.skipped``) instead of failing.

    Raises:
        ValueError: the split is not in the manifest; a shard is bad (without
            ``skip_bad_shards``: every bad shard is named with its problem); or every shard of
            the split is bad (even with ``skip_bad_shards``).
    """
    if split not in manifest["splits"]:
        raise ValueError(f"{data_dir}: the manifest has no split {split!r} (it has {', '.join(manifest['splits'])})")
    entries = manifest["splits"][split]["files"]
    listed_names = {entry["name"] for entry in entries}
    # the shards are in the manifest's folder or in the run folder it names (one listing each)
    folders = sorted({posixpath.dirname(entry["name"]) for entry in entries})
    present: set[str] | None = set()
    for folder in folders:
        try:
            names = spanwise_io.listdir(spanwise_io.join(data_dir, folder) if folder else data_dir)
        except Exception as error:  # a folder we cannot list: fall back to one existence check per file
            log.warning("%s: cannot list the folder (%s: %s); checking each shard on its own", data_dir, type(error).__name__, error)
            present = None
            break
        present.update(posixpath.join(folder, name) if folder else name for name in names)
    all_listed = {entry["name"] for info in manifest["splits"].values() for entry in info["files"]}
    unlisted = sorted(
        spanwise_io.join(data_dir, name)
        for name in (present or ())
        if posixpath.basename(name).startswith(f"{split}-") and name.endswith(".parquet") and name not in all_listed
    )
    for path in unlisted:
        log.warning("%s: not listed in manifest.json; ignored (split %r has %d listed shards)", path, split, len(listed_names))

    def check(entry: Mapping[str, Any]) -> list[Unit] | ShardProblem:
        path = spanwise_io.join(data_dir, entry["name"])
        try:
            return check_shard(path, entry, limits, listed=None if present is None else entry["name"] in present)
        except ShardProblem as problem:
            return problem

    if spanwise_io.is_remote(data_dir) and len(entries) > 1:
        with ThreadPoolExecutor(max_workers=min(_REMOTE_CHECK_THREADS, len(entries))) as pool:
            results = list(pool.map(check, entries))  # in manifest order
    else:
        results = [check(entry) for entry in entries]
    problems = [result for result in results if isinstance(result, ShardProblem)]
    units = [unit for result in results if not isinstance(result, ShardProblem) for unit in result]
    if problems and not skip_bad_shards:
        them = "them" if len(problems) > 1 else "it"
        raise ValueError(_format_problems(split, problems, f"re-run beam_pipelines.preprocess, or pass --skip_bad_shards to skip {them}"))
    if problems and len(problems) == len(entries):
        raise ValueError(_format_problems(split, problems, f"every shard of split {split!r} is bad, nothing left to read"))
    return SplitScan(split, units, problems, unlisted)


def list_units(data_dir: str, manifest: Mapping[str, Any], split: str, limits: DataLimits = DataLimits()) -> list[Unit]:
    """The row groups of ``split``, checked against the manifest and the shard schema.

    Reads only the listing and the Parquet footers. Raises ValueError naming the file and the
    problem for a missing shard, a file that is not Parquet or is truncated, a foreign schema,
    counts that disagree with the manifest or out-of-range labels or token ids (see
    ``scan_split``, which can also skip bad shards).
    """
    return scan_split(data_dir, manifest, split, limits=limits).units
