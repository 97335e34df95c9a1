"""Deterministic outputs committed by one small write: Parquet shards, rejected rows, the manifest.

Every run writes into its own folder, ``<output_dir>/run-<UTC time>-<id>/``: the shards
``<split>-SSSSS-of-NNNNN.parquet`` (written in parallel, one worker per shard, each file
atomically) and ``rejected/<split>-SSSSS-of-NNNNN.jsonl``. Nothing is moved afterwards: the run
becomes visible when ``manifest.json``, which names its files, is written at the top of
``output_dir`` (one atomic write, the commit point). Until then the previous run's manifest and
files are untouched, whatever happens to this one (a failure, ``--overwrite``, Ctrl-C); after
it, the previous run's folder is deleted.

A shard holds the records whose ID hashes to it, so the rows of one ID meet there whatever
file they were read from: ``WriteShardFn`` keeps the first by (file, position) and rejects the
others, naming both places, maps the labels (a dev/test label unseen in train is rejected),
derives the IDs of a corpus without ID column from file and line, sorts by ID and writes.
The same input therefore gives byte-identical shards whatever the runner's bundling.

With ``--multi_label`` (``problem_type`` ``multi_label_classification``) a shard has the
``labels`` column (``schemas.shard.MULTI_LABEL_SHARD_SCHEMA``): each row's label indices,
sorted and distinct (``[]``: an empty set; null: unlabelled); a row with a label unseen in
train is rejected (``unseen_label``), as a single label is. Each shard also counts its rows'
labels (``LABEL_STATS``), for the manifest's ``label_counts`` and label-set statistics.
"""

from __future__ import annotations

import datetime as _dt
import io
import logging
import uuid
from collections import Counter, defaultdict
from typing import Any, Hashable, Iterable, Iterator, Mapping, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

import spanwise_io
from beam_pipelines.records import LineIndex, rejections_from_table, rejections_to_table
from beam_pipelines.transforms import REJECTED, CorpusError, signal_point
from schemas.manifest import SCHEMA_VERSION, write_manifest
from schemas.rows import LABELLED_SPLITS, Reason, Rejection, describe_place
from schemas.shard import COMPRESSION, MULTI_LABEL, ROW_GROUP_SIZE, SINGLE_LABEL, shard_name, shard_schema
from tokenization.rng import stable_hash64

__all__ = [
    "REJECTED_DIR",
    "RUN_PREFIX",
    "STATS",
    "LABEL_STATS",
    "LabelStats",
    "merge_label_stats",
    "new_run_name",
    "parquet_bytes",
    "FileInfo",
    "keep_first_of_each_id",
    "WriteShardFn",
    "BatchRejectionsFn",
    "WriteRejectedFn",
    "FinalizeFn",
]

_LOG = logging.getLogger(__name__)

REJECTED_DIR = "rejected"
RUN_PREFIX = "run-"
STATS = "stats"
# The tagged output of label-set counts (multi-label only).
LABEL_STATS = "label_stats"
# Rejections per table a bundle sends on at most.
_REJECTIONS_PER_TABLE = 4096

# (split, file index) -> (path, name relative to the split's folder, format): for messages and derived IDs.
FileInfo = Mapping[tuple[str, int], tuple[str, str, str]]


def new_run_name(now: _dt.datetime | None = None) -> str:
    """``run-20261129T183000Z-1a2b3c4d``: sorts by start time, unique."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return f"{RUN_PREFIX}{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def parquet_bytes(table: pa.Table) -> bytes:
    """A table as Parquet bytes: zstd, row groups of ``ROW_GROUP_SIZE`` rows.

    Dictionary encoding only for ALPHA (a few distinct values): on token ids (tens of thousands
    of distinct values) and unique IDs, pyarrow's default dictionary pages made 20 Newsgroups
    shards 2.5x larger (11.6 MiB instead of 4.7 for 34k documents) and took 35% more CPU.
    """
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression=COMPRESSION, row_group_size=ROW_GROUP_SIZE, use_dictionary=["alpha"])
    return buffer.getvalue()


def _row_groups(data: bytes) -> int:
    """The row groups Parquet bytes really hold (an empty table is still written as 1 group)."""
    return pq.read_metadata(io.BytesIO(data)).num_row_groups


def _label_names(label_map: Mapping[str, int]) -> list[str]:
    return [label for label, _ in sorted(label_map.items(), key=lambda item: item[1])]


def keep_first_of_each_id(
    ids: Sequence[str], order_keys: Sequence[tuple], labels: Sequence[str], label_map: Mapping[str, int], labelled: bool,
    label_sets: Sequence[Sequence[str] | None] | None = None,
) -> tuple[list[int], list[Any], list[tuple[int, str, int]]]:
    """Which rows of a shard are written: the first row of each ID (by ``order_keys``: file,
    position), if its label is a train label (or empty in an unlabelled split).

    With ``label_sets`` (``--multi_label``: each row's label set, None for an unlabelled row;
    ``labels`` is then not read), a row is written if every label of its set is a train label
    (an empty set is a valid answer), or if it is unlabelled in an unlabelled split.

    Returns:
        ``(kept rows, their label indices, rejections)``: rows in ID order; a label index is
        -1 for an unlabelled row, or with ``label_sets`` a sorted list of distinct indices (None:
        unlabelled); a rejection is ``(row, reason, row whose ID it repeats or -1)``.
    """
    order = sorted(range(len(ids)), key=lambda i: (ids[i], order_keys[i]))
    kept: list[int] = []
    label_ids: list[Any] = []
    rejected: list[tuple[int, str, int]] = []
    first = -1
    for i in order:
        if first >= 0 and ids[i] == ids[first]:
            rejected.append((i, Reason.DUPLICATE_ID, first))
            continue
        first = i
        if label_sets is not None:
            label_set = label_sets[i]
            if label_set is None and labelled:
                rejected.append((i, Reason.MISSING_LABEL, -1))  # (the readers reject these first)
            elif label_set is None or all(label in label_map for label in label_set):
                kept.append(i)
                label_ids.append(None if label_set is None else sorted({label_map[label] for label in label_set}))
            else:
                rejected.append((i, Reason.UNSEEN_LABEL, -1))
            continue
        label = labels[i]
        if label in label_map or (not label and not labelled):
            kept.append(i)
            label_ids.append(label_map[label] if label else -1)
        else:
            rejected.append((i, Reason.UNSEEN_LABEL, -1))
    return kept, label_ids, rejected


# A shard's label-set counts: documents per label index, documents per set size, unlabelled documents.
LabelStats = tuple[Counter, Counter, int]


def _label_stats(label_ids: Sequence[Sequence[int] | None]) -> LabelStats:
    """The ``LabelStats`` of the label index lists of a shard's written rows."""
    per_label: Counter = Counter()
    sizes: Counter = Counter()
    unlabelled = 0
    for indices in label_ids:
        if indices is None:
            unlabelled += 1
            continue
        per_label.update(indices)
        sizes[len(indices)] += 1
    return per_label, sizes, unlabelled


def merge_label_stats(stats: Iterable[LabelStats]) -> LabelStats:
    """The sum of shards' ``LabelStats`` (``beam.CombinePerKey``: associative and commutative,
    so the manifest does not depend on the order shards finish)."""
    per_label: Counter = Counter()
    sizes: Counter = Counter()
    unlabelled = 0
    for shard_labels, shard_sizes, shard_unlabelled in stats:
        per_label.update(shard_labels)
        sizes.update(shard_sizes)
        unlabelled += shard_unlabelled
    return per_label, sizes, unlabelled


def _unseen_detail(label_set: Sequence[str], label_map: Mapping[str, int]) -> str:
    """Why a label set is rejected: the labels of it that train lacks, by name."""
    unseen = [label for label in label_set if label not in label_map]
    named = ", ".join(repr(label) for label in unseen)
    return (f"label{'s' if len(unseen) > 1 else ''} {named} of the set [{', '.join(repr(label) for label in label_set)}] "
            f"{'do' if len(unseen) > 1 else 'does'} not occur in train ({len(label_map)} labels)")


class WriteShardFn(beam.DoFn):
    """One shard's records -> its Parquet file in the run folder; emit what the manifest needs.

    Side inputs: the label map and every read task's counts (to number lines). Outputs: the
    shard's ``{"split", "name", "rows", "row_groups"}``; ``rejected`` (duplicate IDs, unseen
    labels); ``stats``: ``(split, (length histogram, documents capped at max_doc_tokens,
    documents cut at max_doc_chars))``; with ``problem_type`` ``multi_label_classification``,
    ``label_stats``: ``(split, LabelStats)``.
    """

    def __init__(self, output_dir: str, run_name: str, files: FileInfo, max_doc_tokens: int,
                 problem_type: str = SINGLE_LABEL):
        self._output_dir = output_dir
        self._run_name = run_name
        self._files = dict(files)
        self._max_doc_tokens = max_doc_tokens
        self._problem_type = problem_type

    def process(
        self,
        element: tuple[tuple[str, int, int], pa.Table],
        label_map: Mapping[str, int],
        task_counts: Mapping[tuple[str, int, int], Mapping[str, int]],
    ) -> Iterator[Any]:
        (split, index, count), table = element
        places = {name: table.column(name).to_pylist() for name in ("id", "file_index", "range_start", "line", "offset")}
        lines = LineIndex.of(task_counts)
        line_of = [lines.line(split, f, s, n) for f, s, n in zip(places["file_index"], places["range_start"], places["line"])]
        ids = [
            row_id if row_id is not None else f"{self._files[(split, f)][1]}:{line or offset}"
            for row_id, f, line, offset in zip(places["id"], places["file_index"], line_of, places["offset"])
        ]
        multi_label = self._problem_type == MULTI_LABEL
        label_sets = table.column("labels").to_pylist() if multi_label else None
        kept, label_ids, rejected = keep_first_of_each_id(
            ids, list(zip(places["file_index"], places["offset"])), table.column("label").to_pylist(), label_map,
            split in LABELLED_SPLITS, label_sets,
        )
        for i, reason, first in rejected:
            path = self._files[(split, places["file_index"][i])][0]
            if reason == Reason.DUPLICATE_ID:
                where = describe_place(self._files[(split, places["file_index"][first])][0], line_of[first], places["offset"][first])
                detail = f"ID {ids[i]!r} already used at {where}; the first is kept"
            elif reason == Reason.MISSING_LABEL:
                detail = f"the label set is null; every {split} row needs one"
            elif label_sets is not None:
                detail = _unseen_detail(label_sets[i], label_map)
            else:
                detail = f"label {table.column('label')[i].as_py()!r} does not occur in train ({len(label_map)} labels)"
            yield beam.pvalue.TaggedOutput(REJECTED, Rejection(
                split, path, line_of[i], reason, detail, table.column("raw")[i].as_py(), places["offset"][i],
                places["file_index"][i], 0,
            ))
        picked = pa.array(kept, type=pa.int64())
        label_column = (
            {"labels": pa.array(label_ids, type=pa.list_(pa.int64()))} if multi_label
            else {"label": pa.array(label_ids, type=pa.int64())}
        )
        out = pa.table(
            {
                "id": pa.array([ids[i] for i in kept], type=pa.string()),
                **label_column,
                **{name: table.column(name).take(picked)
                   for name in ("input_ids_a", "input_ids_b", "num_tokens_a", "num_tokens_b", "alpha")},
            },
            schema=shard_schema(_label_names(label_map), self._problem_type),
        )
        name = shard_name(split, index, count)
        data = parquet_bytes(out)
        spanwise_io.write_bytes(spanwise_io.join(self._output_dir, self._run_name, name), data)
        signal_point("write_shard")
        stats = self._stats(out, table.column("char_cut").take(picked))
        info = {"split": split, "name": f"{self._run_name}/{name}", "rows": out.num_rows, "row_groups": _row_groups(data)}
        del out, data
        pa.default_memory_pool().release_unused()  # hand this shard's buffers back before the next one
        yield beam.pvalue.TaggedOutput(STATS, (split, stats))
        if multi_label:
            yield beam.pvalue.TaggedOutput(LABEL_STATS, (split, _label_stats(label_ids)))
        yield info

    def _stats(self, out: pa.Table, char_cut: pa.ChunkedArray) -> tuple[Counter, int, int]:
        """The written rows' length histogram, how many were capped at max_doc_tokens, how many cut at max_doc_chars."""
        tokens_a = out.column("num_tokens_a").to_numpy()
        tokens_b = out.column("num_tokens_b").to_numpy()
        capped = int(np.count_nonzero((tokens_a > self._max_doc_tokens) | (tokens_b > self._max_doc_tokens)))
        cut = int(np.count_nonzero(char_cut.to_numpy(zero_copy_only=False))) if len(char_cut) else 0
        return Counter((tokens_a + tokens_b).tolist()), capped, cut


class BatchRejectionsFn(beam.DoFn):
    """Rejections -> ``((split, bucket, buckets), table)``, a bundle's rejections at a time.

    A rejection's bucket is a hash of where it was, so the rejected rows of a split are written
    by as many workers as it has buckets (its shard count), each file in a stable order.
    """

    def __init__(self, bucket_counts: Mapping[str, int]):
        self._bucket_counts = dict(bucket_counts)
        self._buffer: dict[Hashable, list[Rejection]] = defaultdict(list)

    def start_bundle(self) -> None:
        self._buffer = defaultdict(list)

    def process(self, rejection: Rejection) -> Iterator[tuple[Hashable, pa.Table]]:
        buckets = self._bucket_counts[rejection.split]
        key = (rejection.split, stable_hash64(f"{rejection.file_index}:{rejection.offset}") % buckets, buckets)
        self._buffer[key].append(rejection)
        if len(self._buffer[key]) >= _REJECTIONS_PER_TABLE:
            yield key, rejections_to_table(self._buffer.pop(key))

    def finish_bundle(self) -> Iterator[WindowedValue]:
        for key, rejections in self._buffer.items():
            yield WindowedValue((key, rejections_to_table(rejections)), MIN_TIMESTAMP, [GlobalWindow()])
        self._buffer = defaultdict(list)


class WriteRejectedFn(beam.DoFn):
    """One bucket of a split's rejected rows -> ``rejected/<split>-SSSSS-of-NNNNN.jsonl`` in the run
    folder (``run_name``; empty: ``output_dir`` itself), in file order; emit ``{"split", "name",
    "rows", "by_reason"}``."""

    def __init__(self, output_dir: str, run_name: str):
        self._output_dir = output_dir
        self._run_name = run_name

    def process(
        self,
        element: tuple[tuple[str, int, int], pa.Table],
        task_counts: Mapping[tuple[str, int, int], Mapping[str, int]],
    ) -> Iterator[dict[str, Any]]:
        (split, bucket, buckets), table = element
        lines = LineIndex.of(task_counts)
        rejections = [
            Rejection(r.split, r.file, lines.line(split, r.file_index, r.range_start, r.line), r.reason, r.detail,
                      r.raw, r.offset, r.file_index)
            for r in rejections_from_table(split, table)
        ]
        rejections.sort(key=lambda r: (r.file_index, r.offset, r.reason, r.detail))
        name = f"{REJECTED_DIR}/{split}-{bucket:05d}-of-{buckets:05d}.jsonl"
        data = "".join(r.to_json() + "\n" for r in rejections).encode("utf-8")
        folder = spanwise_io.join(self._output_dir, self._run_name) if self._run_name else self._output_dir
        spanwise_io.write_bytes(spanwise_io.join(folder, name), data)
        yield {
            "split": split,
            "name": f"{self._run_name}/{name}" if self._run_name else name,
            "rows": len(rejections),
            "by_reason": dict(Counter(r.reason for r in rejections)),
        }


class FinalizeFn(beam.DoFn):
    """Runs once: check the counts, write missing empty shards, commit the manifest, delete the old run."""

    def __init__(
        self,
        output_dir: str,
        run_name: str,
        manifest_base: Mapping[str, Any],
        shard_counts: Mapping[str, int],
        train_files: Sequence[str],
        split_inputs: Mapping[str, Mapping[str, Any]],
        previous: Sequence[str] = (),
        problem_type: str = SINGLE_LABEL,
    ):
        """Configure the commit.

        Args:
            output_dir: where ``manifest.json`` goes.
            run_name: this run's folder under ``output_dir``.
            manifest_base: the manifest's fields known before the run (options, tokenizer, inputs).
            shard_counts: shards per split.
            train_files: the train inputs, for the message when no train row is valid.
            split_inputs: per split, what the manifest says of its input (patterns, derived IDs).
            previous: what to delete once committed: the previous run's folder or files
                (names relative to ``output_dir``).
            problem_type: ``multi_label_classification`` (``--multi_label``) writes it in the
                manifest with ``label_counts`` and each split's label-set counts; the default,
                one label per document, leaves the manifest as it was before label sets.
        """
        self._output_dir = output_dir
        self._run_name = run_name
        self._manifest_base = dict(manifest_base)
        self._shard_counts = dict(shard_counts)
        self._train_files = list(train_files)
        self._split_inputs = {split: dict(info) for split, info in split_inputs.items()}
        self._previous = list(previous)
        self._problem_type = problem_type

    def _fail_no_train_rows(self, rejected_files: Sequence[dict]) -> None:
        """Keep this run's rejected rows (where the message points, so the user can see why), delete the rest."""
        run_dir = spanwise_io.join(self._output_dir, self._run_name)
        rejected_train = any(r["split"] == "train" for r in rejected_files)
        for name in spanwise_io.listdir(run_dir) if spanwise_io.exists(run_dir) else []:
            if name != REJECTED_DIR or not rejected_train:
                spanwise_io.remove_tree(spanwise_io.join(run_dir, name))
        shown = ", ".join(self._train_files[:3]) + (f" and {len(self._train_files) - 3} more" if len(self._train_files) > 3 else "")
        if rejected_train:
            why = f"see {spanwise_io.join(run_dir, REJECTED_DIR)}/train-*.jsonl"
        else:
            spanwise_io.remove_tree(run_dir)
            why = "it holds no data rows (empty, or a header only)"
        raise CorpusError(f"no valid rows in {shown}: nothing to train on ({why})")

    @staticmethod
    def _label_set_info(label_stats: LabelStats | None, label_map: Mapping[str, int]) -> dict[str, Any]:
        """A split's label-set counts for the manifest: documents per label (every label of the
        map, 0 included), per set size, with the empty set, and unlabelled."""
        per_label, sizes, unlabelled = label_stats or (Counter(), Counter(), 0)
        return {
            "label_counts": {label: int(per_label.get(index, 0)) for label, index in label_map.items()},
            "label_set_sizes": {str(size): int(sizes[size]) for size in sorted(sizes)},
            "empty_label_sets": int(sizes.get(0, 0)),
            "unlabelled": int(unlabelled),
        }

    def process(
        self,
        _: Any,
        shards: list[dict],
        rejected_files: list[dict],
        label_map: Mapping[str, int],
        counts: Mapping[tuple[str, int, int], Mapping[str, int]],
        stats: Mapping[str, dict],
        label_stats: Mapping[str, LabelStats] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Commit the job's output, or raise.

        ``label_stats``: per split, the ``LabelStats`` of its written rows (multi-label only).

        Raises:
            CorpusError: train has no valid rows (its rejected rows are kept, to say why), or
                (multi-label) every train label set is empty.
            RuntimeError: rows or shards were lost on the way (a bug, not a corpus problem).
        """
        multi_label = self._problem_type == MULTI_LABEL
        label_stats = label_stats or {}
        if not label_map:
            train_written = sum(s["rows"] for s in shards if s["split"] == "train")
            if multi_label and train_written:
                spanwise_io.remove_tree(spanwise_io.join(self._output_dir, self._run_name))
                raise CorpusError(
                    f"every train document ({train_written}) has an empty label set: no label to learn. Is the label "
                    "column (--label_column) the one holding the labels, and --label_separator what separates them?"
                )
            self._fail_no_train_rows(rejected_files)
        split_infos: dict[str, dict[str, Any]] = {}
        for split, count in self._shard_counts.items():
            files = [s for s in shards if s["split"] == split]
            present = {s["name"] for s in files}
            for index in range(count):
                name = f"{self._run_name}/{shard_name(split, index, count)}"
                if name not in present:  # a shard that no ID hashed to: still written, with 0 rows
                    data = parquet_bytes(shard_schema(_label_names(label_map), self._problem_type).empty_table())
                    spanwise_io.write_bytes(spanwise_io.join(self._output_dir, name), data)
                    files.append({"split": split, "name": name, "rows": 0, "row_groups": _row_groups(data)})
            files.sort(key=lambda s: s["name"])
            rejected_here = sorted((r for r in rejected_files if r["split"] == split), key=lambda r: r["name"])
            reasons: Counter = Counter()
            for info in rejected_here:
                reasons.update(info["by_reason"])
            records = sum(f["rows"] for f in files)
            rejected = sum(reasons.values())
            tasks = [c for (s, _, _), c in counts.items() if s == split]
            lines, headers = sum(c["lines"] for c in tasks), sum(c["headers"] for c in tasks)
            read = lines - headers
            if read != records + rejected:
                raise RuntimeError(f"lost rows in {split}: read {read} != written {records} + rejected {rejected}")
            split_infos[split] = {
                **self._split_inputs.get(split, {}),
                "read": read,
                "header_lines": headers,
                "records": records,
                "rejected": rejected,
                "rejected_by_reason": dict(sorted(reasons.items())),
                "rejected_files": [r["name"] for r in rejected_here],
                "files": [{"name": f["name"], "rows": f["rows"], "row_groups": f["row_groups"]} for f in files],
                "stats": stats.get(split, {"documents": 0}),
            }
            if multi_label:
                split_infos[split].update(self._label_set_info(label_stats.get(split), label_map))
        if split_infos["train"]["records"] == 0:  # every labelled train row gave no tokens
            self._fail_no_train_rows(rejected_files)
        manifest = {
            **self._manifest_base,
            "schema_version": SCHEMA_VERSION,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "run": self._run_name,
            "label_map": dict(label_map),
            "splits": split_infos,
        }
        if multi_label:
            manifest["problem_type"] = MULTI_LABEL
            manifest["label_counts"] = split_infos["train"]["label_counts"]
        write_manifest(self._output_dir, manifest)  # the commit
        for name in self._previous:
            try:
                spanwise_io.remove_tree(spanwise_io.join(self._output_dir, name))
            except Exception as error:  # noqa: BLE001 (committed already: a leftover is harmless)
                _LOG.warning("could not delete %s of an earlier run: %s", name, error)
        yield manifest
