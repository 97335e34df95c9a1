"""The Parquet shard format: one Arrow schema imported by the writer (pipeline) and the readers.

One row per document. Token ids are stored WITHOUT special tokens; ``num_tokens_a`` and
``num_tokens_b`` are the lengths before any cap or preprocess-time sequence function, so the
trainer and the statistics know how long the document really was.

The label names travel with the shards, in the Parquet schema's metadata (``shard_schema``):
under ``huggingface`` as the ``datasets`` features (``datasets.load_dataset("parquet", ...)``
gives a ``ClassLabel`` with the names; -1, unlabelled, is its "no label"), and under
``spanwise`` as ``{"label_names": [...], "problem_type": ...}`` for any other reader (pandas,
DuckDB, pyarrow).

A multi-label corpus (``problem_type`` ``multi_label_classification``) has a ``labels`` column
instead of ``label``: the document's label indices, sorted and distinct (``[]``: a document with
no label, which is a valid answer; null: unlabelled, as -1 is for one label), a ``datasets``
``Sequence(ClassLabel(names))`` in the metadata (``MULTI_LABEL_SHARD_SCHEMA``).
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable, Mapping, Sequence

import pyarrow as pa

__all__ = [
    "SHARD_SCHEMA",
    "MULTI_LABEL_SHARD_SCHEMA",
    "SINGLE_LABEL",
    "MULTI_LABEL",
    "PROBLEM_TYPES",
    "LEGACY_TYPES",
    "shard_schema",
    "label_names_of",
    "label_column_of",
    "ROW_GROUP_SIZE",
    "COMPRESSION",
    "shard_name",
    "parse_shard_name",
    "records_to_table",
]

# Nullable fields and an int64 label: exactly the Arrow types of the ``datasets`` features in
# the metadata (``ClassLabel`` is int64), which ``datasets`` requires before it uses them. No
# value is ever null. Shards written before the label names held int32 labels
# (``LEGACY_TYPES``): readers accept both.
SHARD_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("label", pa.int64()),  # -1 = unlabelled
        pa.field("input_ids_a", pa.list_(pa.int32())),
        pa.field("input_ids_b", pa.list_(pa.int32())),
        pa.field("num_tokens_a", pa.int32()),
        pa.field("num_tokens_b", pa.int32()),
        pa.field("alpha", pa.string()),  # ALPHA_COL, kept for provenance
    ]
)
# The same columns for label sets: ``labels`` replaces ``label`` (null = unlabelled).
MULTI_LABEL_SHARD_SCHEMA = pa.schema(
    [pa.field("labels", pa.list_(pa.int64())) if field.name == "label" else field for field in SHARD_SCHEMA]
)
# transformers' names for the two kinds of label (``PretrainedConfig.problem_type``).
SINGLE_LABEL = "single_label_classification"
MULTI_LABEL = "multi_label_classification"
PROBLEM_TYPES = (SINGLE_LABEL, MULTI_LABEL)
LEGACY_TYPES = {"label": (pa.int32(),)}
ROW_GROUP_SIZE = 1000
_HF_KEY = b"huggingface"
_OUR_KEY = b"spanwise"
# The datasets features of the columns other than the label (datasets' own Features.to_dict()).
_HF_VALUE_FEATURES: dict[str, Any] = {
    "id": {"dtype": "string", "_type": "Value"},
    "input_ids_a": {"feature": {"dtype": "int32", "_type": "Value"}, "_type": "List"},
    "input_ids_b": {"feature": {"dtype": "int32", "_type": "Value"}, "_type": "List"},
    "num_tokens_a": {"dtype": "int32", "_type": "Value"},
    "num_tokens_b": {"dtype": "int32", "_type": "Value"},
    "alpha": {"dtype": "string", "_type": "Value"},
}
COMPRESSION = "zstd"
_SHARD_RE = re.compile(r"^(?P<split>[a-z]+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.parquet$")


def shard_schema(label_names: Sequence[str], problem_type: str = SINGLE_LABEL) -> pa.Schema:
    """The shard schema of ``problem_type``, with the label names (index order) in its metadata."""
    if problem_type not in PROBLEM_TYPES:
        raise ValueError(f"problem_type must be one of {', '.join(PROBLEM_TYPES)}, got {problem_type!r}")
    class_label = {"names": list(label_names), "_type": "ClassLabel"}
    schema = SHARD_SCHEMA if problem_type == SINGLE_LABEL else MULTI_LABEL_SHARD_SCHEMA
    features = {
        field.name: class_label if field.name == "label"
        else {"feature": class_label, "_type": "List"} if field.name == "labels"
        else _HF_VALUE_FEATURES[field.name]
        for field in schema
    }
    return schema.with_metadata({
        _HF_KEY: json.dumps({"info": {"features": features}}),
        _OUR_KEY: json.dumps({"label_names": list(label_names), "problem_type": problem_type}),
    })


def label_names_of(schema: pa.Schema) -> list[str] | None:
    """The label names a shard's schema carries (None: a shard written without them)."""
    value = (schema.metadata or {}).get(_OUR_KEY)
    return None if value is None else list(json.loads(value)["label_names"])


def label_column_of(schema: pa.Schema) -> str:
    """``label`` (one label per document) or ``labels`` (a label set), by the columns present."""
    return "labels" if "labels" in schema.names else "label"


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


def records_to_table(records: Iterable[Mapping[str, Any]], problem_type: str = SINGLE_LABEL) -> pa.Table:
    """Build a shard table from record dicts with the fields of ``SHARD_SCHEMA`` (or of
    ``MULTI_LABEL_SHARD_SCHEMA``: ``labels`` instead of ``label``)."""
    schema = SHARD_SCHEMA if problem_type == SINGLE_LABEL else MULTI_LABEL_SHARD_SCHEMA
    columns: dict[str, list[Any]] = {field.name: [] for field in schema}
    for record in records:
        for name, values in columns.items():
            values.append(record[name])
    return pa.table(columns, schema=schema)
