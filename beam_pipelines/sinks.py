"""Deterministic, atomic outputs: Parquet shards, rejected-row JSONL, and the manifest.

Beam's own file sinks assign records to shards by bundle, so two runs over the same input give
different shards. Here a record's shard is ``stable_hash64(id) % num_shards``, rows are sorted by
ID inside a shard, and files are written to a temporary folder first and moved into place by a
single finalize step (the same temp-then-finalize protocol as Beam's sinks); the manifest is
written last, so its presence means the output is complete.
"""

from __future__ import annotations

import datetime as _dt
import io
from typing import Any, Iterable, Iterator, Mapping, Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq

import spanwise_io
from beam_pipelines.transforms import CorpusError
from schemas.manifest import SCHEMA_VERSION, write_manifest
from schemas.shard import COMPRESSION, ROW_GROUP_SIZE, SHARD_SCHEMA, shard_name, table_from_ipc
from schemas.tsv import Rejection

__all__ = [
    "REJECTED_DIR",
    "WriteShardFn",
    "WriteRejectedFn",
    "FinalizeFn",
    "parquet_bytes",
]

REJECTED_DIR = "rejected"


def parquet_bytes(table: pa.Table) -> bytes:
    """A table as Parquet bytes: zstd, row groups of ``ROW_GROUP_SIZE`` rows."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression=COMPRESSION, row_group_size=ROW_GROUP_SIZE)
    return buffer.getvalue()


def _row_groups(data: bytes) -> int:
    """The row groups Parquet bytes really hold (an empty table is still written as 1 group)."""
    return pq.read_metadata(io.BytesIO(data)).num_row_groups


class WriteShardFn(beam.DoFn):
    """Write one shard, rows sorted by ID, to the temp folder; emit what finalize needs."""

    def __init__(self, temp_dir: str):
        self._temp_dir = temp_dir

    def process(self, element: tuple[tuple[str, int, int], Iterable[bytes]]) -> Iterator[dict[str, Any]]:
        """``element``: the shard key and the Arrow IPC tables that batches sent to it."""
        (split, index, count), tables = element
        parts = [table_from_ipc(data) for data in tables]
        table = pa.concat_tables(parts) if parts else SHARD_SCHEMA.empty_table()
        table = table.sort_by("id")
        name = shard_name(split, index, count)
        data = parquet_bytes(table)
        spanwise_io.write_bytes(spanwise_io.join(self._temp_dir, name), data)
        yield {
            "split": split,
            "name": name,
            "rows": table.num_rows,
            "row_groups": _row_groups(data),
        }


class WriteRejectedFn(beam.DoFn):
    """Write one split's rejected rows, sorted by (file, line), as JSONL to the temp folder."""

    def __init__(self, temp_dir: str):
        self._temp_dir = temp_dir

    def process(self, element: tuple[str, Iterable[Rejection]]) -> Iterator[dict[str, Any]]:
        split, rejections = element
        ordered = sorted(rejections, key=lambda r: (r.file, r.line, r.reason))
        name = f"{split}-00000-of-00001.jsonl"
        data = "".join(r.to_json() + "\n" for r in ordered).encode("utf-8")
        spanwise_io.write_bytes(spanwise_io.join(self._temp_dir, REJECTED_DIR, name), data)
        yield {"split": split, "name": f"{REJECTED_DIR}/{name}", "rows": len(ordered)}


class FinalizeFn(beam.DoFn):
    """Runs once: move temp files into place, add empty shards, check counts, write the manifest."""

    def __init__(self, output_dir: str, temp_dir: str, manifest_base: Mapping[str, Any], splits: Mapping[str, str]):
        self._output_dir = output_dir
        self._temp_dir = temp_dir
        self._manifest_base = dict(manifest_base)
        self._splits = dict(splits)

    def _fail_no_train_rows(self, rejected_files: Sequence[dict]) -> None:
        """Publish only the rejected rows (where the message points, so the user can see why), then raise."""
        for rejected_file in rejected_files:
            self._move(rejected_file["name"])
        spanwise_io.remove_tree(self._temp_dir)
        raise CorpusError(
            f"no valid rows in {self._splits['train']}: nothing to train on (see {REJECTED_DIR}/train-*.jsonl)"
        )

    def process(
        self,
        _: Any,
        shards: list[dict],
        rejected_files: list[dict],
        label_map: Mapping[str, int],
        counts: Mapping[str, Mapping[str, int]],
        rejected_counts: Mapping[tuple[str, str], int],
        stats: Mapping[str, dict],
    ) -> Iterator[dict[str, Any]]:
        """Publish the job's output, or raise.

        Raises:
            CorpusError: train has no valid rows (its rejected rows are published, to say why).
            RuntimeError: rows or shards were lost on the way (a bug, not a corpus problem).
        """
        if not label_map:
            self._fail_no_train_rows(rejected_files)
        split_infos: dict[str, dict[str, Any]] = {}
        for split, input_path in self._splits.items():
            files = sorted((s for s in shards if s["split"] == split), key=lambda s: s["name"])
            count = int(files[0]["name"].split("-of-")[1][:5]) if files else 1
            present = {s["name"] for s in files}
            for index in range(count):
                name = shard_name(split, index, count)
                if name not in present:  # a shard that no ID hashed to: still written, with 0 rows
                    data = parquet_bytes(SHARD_SCHEMA.empty_table())
                    spanwise_io.write_bytes(spanwise_io.join(self._temp_dir, name), data)
                    files.append({"split": split, "name": name, "rows": 0, "row_groups": _row_groups(data)})
            files.sort(key=lambda s: s["name"])
            reasons = {reason: n for (s, reason), n in sorted(rejected_counts.items()) if s == split}
            records = sum(f["rows"] for f in files)
            rejected = sum(reasons.values())
            lines, headers = counts[split]["lines"], counts[split]["headers"]
            read = lines - headers
            if read != records + rejected:
                raise RuntimeError(f"lost rows in {split}: read {read} != written {records} + rejected {rejected}")
            split_infos[split] = {
                "input": input_path,
                "read": read,
                "header_lines": headers,
                "records": records,
                "rejected": rejected,
                "rejected_by_reason": reasons,
                "rejected_file": next((r["name"] for r in rejected_files if r["split"] == split), None),
                "files": [{"name": f["name"], "rows": f["rows"], "row_groups": f["row_groups"]} for f in files],
                "stats": stats.get(split, {"documents": 0}),
            }
        if split_infos["train"]["records"] == 0:  # every labelled train row gave no tokens
            self._fail_no_train_rows(rejected_files)
        for info in split_infos.values():
            for f in info["files"]:
                self._move(f["name"])
            if info["rejected_file"]:
                self._move(info["rejected_file"])
        manifest = {
            **self._manifest_base,
            "schema_version": SCHEMA_VERSION,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "label_map": dict(label_map),
            "splits": split_infos,
        }
        write_manifest(self._output_dir, manifest)
        spanwise_io.remove_tree(self._temp_dir)
        yield manifest

    def _move(self, name: str) -> None:
        source = spanwise_io.join(self._temp_dir, name)
        target = spanwise_io.join(self._output_dir, name)
        if spanwise_io.exists(source):  # a retried finalize may already have moved it
            spanwise_io.rename(source, target)
        elif not spanwise_io.exists(target):
            raise RuntimeError(f"{source} is missing: a shard was lost before finalize")
