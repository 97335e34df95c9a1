"""The Parquet shard format: one Arrow schema imported by the writer (pipeline) and the readers.

One row per document. Token ids are stored WITHOUT special tokens; ``num_tokens_a`` and
``num_tokens_b`` are the lengths before any cap or preprocess-time sequence function, so the
trainer and the statistics know how long the document really was.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

import pyarrow as pa

__all__ = [
    "SHARD_SCHEMA",
    "ROW_GROUP_SIZE",
    "COMPRESSION",
    "shard_name",
    "parse_shard_name",
    "records_to_table",
    "table_to_ipc",
    "table_from_ipc",
]

SHARD_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("label", pa.int32(), nullable=False),  # -1 = unlabelled
        pa.field("input_ids_a", pa.list_(pa.int32()), nullable=False),
        pa.field("input_ids_b", pa.list_(pa.int32()), nullable=False),
        pa.field("num_tokens_a", pa.int32(), nullable=False),
        pa.field("num_tokens_b", pa.int32(), nullable=False),
        pa.field("alpha", pa.string(), nullable=False),  # ALPHA_COL, kept for provenance
    ]
)
ROW_GROUP_SIZE = 1000
COMPRESSION = "zstd"
_SHARD_RE = re.compile(r"^(?P<split>[a-z]+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.parquet$")


def shard_name(split: str, index: int, count: int) -> str:
    """``<split>-SSSSS-of-NNNNN.parquet``."""
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} out of range for {count} shards")
    return f"{split}-{index:05d}-of-{count:05d}.parquet"


def parse_shard_name(name: str) -> tuple[str, int, int]:
    """Inverse of ``shard_name``: ``(split, index, count)``."""
    match = _SHARD_RE.match(name)
    if not match:
        raise ValueError(f"{name!r} is not a shard name like train-00000-of-00004.parquet")
    return match["split"], int(match["index"]), int(match["count"])


def records_to_table(records: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Build a shard table from record dicts with the fields of ``SHARD_SCHEMA``."""
    columns: dict[str, list[Any]] = {field.name: [] for field in SHARD_SCHEMA}
    for record in records:
        for name, values in columns.items():
            values.append(record[name])
    return pa.table(columns, schema=SHARD_SCHEMA)


def table_to_ipc(table: pa.Table) -> bytes:
    """A shard table as Arrow IPC stream bytes (how batches of records travel between workers)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def table_from_ipc(data: bytes) -> pa.Table:
    """Inverse of ``table_to_ipc``."""
    return pa.ipc.open_stream(data).read_all()
