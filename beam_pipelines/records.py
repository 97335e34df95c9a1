"""The tables that travel between the pipeline's steps: tokenized records and rejected rows.

A tokenized record still carries what the step that writes its shard needs and the shard does
not keep: the label as text, or the label set as a list of texts with ``--multi_label`` (mapped
once the whole train split has been read), where the row
was (to keep the first of two rows with one ID, name both, and derive IDs), the row as read
(for a rejection decided there) and whether ``--max_doc_chars`` cut it. Both travel as Arrow
tables, a batch of rows at a time, through ``beam_pipelines.shuffle.GroupTablesByKey``.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import pyarrow as pa

from schemas.rows import Rejection

__all__ = [
    "RECORD_SCHEMA",
    "REJECTION_SCHEMA",
    "LineIndex",
    "rejections_to_table",
    "rejections_from_table",
]

RECORD_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),  # null: no ID column, derived when the shard is written
        pa.field("label", pa.string()),
        # --multi_label: the label set (null: unlabelled); always null without it
        pa.field("labels", pa.list_(pa.string())),
        pa.field("input_ids_a", pa.list_(pa.int32())),
        pa.field("input_ids_b", pa.list_(pa.int32())),
        pa.field("num_tokens_a", pa.int32()),
        pa.field("num_tokens_b", pa.int32()),
        pa.field("alpha", pa.string()),
        pa.field("file_index", pa.int32()),
        pa.field("range_start", pa.int64()),
        pa.field("line", pa.int32()),  # counted from the read task's first line; 0 = Parquet
        pa.field("offset", pa.int64()),
        pa.field("raw", pa.string()),
        pa.field("char_cut", pa.bool_()),
    ]
)

REJECTION_SCHEMA = pa.schema(
    [
        pa.field("file", pa.string()),
        pa.field("file_index", pa.int32()),
        pa.field("range_start", pa.int64()),
        pa.field("line", pa.int32()),  # null: none (Parquet)
        pa.field("offset", pa.int64()),
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string()),
        pa.field("raw", pa.string()),
    ]
)


def rejections_to_table(rejections: Iterable[Rejection]) -> pa.Table:
    columns: dict[str, list[Any]] = {name: [] for name in REJECTION_SCHEMA.names}
    for r in rejections:
        columns["file"].append(r.file)
        columns["file_index"].append(r.file_index)
        columns["range_start"].append(r.range_start)
        columns["line"].append(r.line)
        columns["offset"].append(r.offset)
        columns["reason"].append(r.reason)
        columns["detail"].append(r.detail)
        columns["raw"].append(r.raw)
    return pa.table(columns, schema=REJECTION_SCHEMA)


def rejections_from_table(split: str, table: pa.Table) -> list[Rejection]:
    return [
        Rejection(split, row["file"], row["line"], row["reason"], row["detail"], row["raw"], row["offset"],
                  row["file_index"], row["range_start"])
        for row in table.to_pylist()
    ]


class LineIndex:
    """Turns a line counted from a read task's start into the file's line number.

    Built from every task's ``(split, file_index, range_start, lines)``: the lines of a file's
    earlier tasks are added to a line of a later one. Tasks that start their file need nothing.
    """

    def __init__(self, task_lines: Iterable[tuple[str, int, int, int]]):
        by_file: dict[tuple[str, int], list[tuple[int, int]]] = {}
        for split, file_index, start, lines in task_lines:
            by_file.setdefault((split, file_index), []).append((start, lines))
        self._before: dict[tuple[str, int, int], int] = {}
        for (split, file_index), tasks in by_file.items():
            total = 0
            for start, lines in sorted(tasks):
                self._before[(split, file_index, start)] = total
                total += lines

    def line(self, split: str, file_index: int, range_start: int, line: int | None) -> int | None:
        """The file's line number (None stays None: Parquet rows have none)."""
        if not line:
            return None
        if range_start == 0:
            return line
        return self._before[(split, file_index, range_start)] + line

    @staticmethod
    def of(counts: Mapping[tuple[str, int, int], Mapping[str, int]]) -> "LineIndex":
        return LineIndex((split, index, start, c["lines"]) for (split, index, start), c in counts.items())
