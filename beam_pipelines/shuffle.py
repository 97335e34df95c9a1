"""Bring Arrow tables with the same key together: through the runner's shuffle, or through disk.

``GroupTablesByKey`` turns ``(key, pyarrow.Table)`` elements into one ``(key, table)`` per key,
the tables of a key concatenated. Two ways, one result:

* ``spill_dir=None``: a ``GroupByKey`` of the tables as Arrow IPC bytes. On Dataflow the
  shuffle service holds them, not a worker; use this on distributed runners.
* ``spill_dir=DIR`` (a local folder: the local runners only): each bundle writes its tables to
  Arrow IPC files under DIR (one file per ``flush_bytes`` of data, every key of the bundle in
  it, one record batch per key), and only
  ``(key, file, batch)`` references go through the ``GroupByKey``. The local runner's
  ``GroupByKey`` (the FnApiRunner's ``GroupingBuffer``) keeps everything it groups in memory
  until the next stage starts; with the references only, memory no longer grows with the
  corpus. Spill files are read back memory-mapped. A retried bundle writes new files under new
  names; only the references of the bundle that committed are read.

The files are left for the caller to delete with its temporary folder.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from typing import Any, Hashable, Iterable, Iterator

import apache_beam as beam
import pyarrow as pa
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

import spanwise_io

__all__ = ["GroupTablesByKey", "DEFAULT_FLUSH_BYTES", "table_to_ipc", "table_from_ipc"]

DEFAULT_FLUSH_BYTES = 64 << 20


def table_to_ipc(table: pa.Table) -> bytes:
    """A table as Arrow IPC stream bytes (how tables travel through a shuffle)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def table_from_ipc(data: bytes) -> pa.Table:
    """Inverse of ``table_to_ipc``."""
    return pa.ipc.open_stream(data).read_all()


def _concat(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    return pa.concat_tables(tables) if tables else schema.empty_table()


class _SpillFn(beam.DoFn):
    """Buffer a bundle's tables by key; write them to a spill file every ``flush_bytes`` and at
    the end of the bundle; emit one ``(key, (path, batch index))`` per key and file."""

    def __init__(self, spill_dir: str, flush_bytes: int, schema: pa.Schema):
        self._spill_dir = spill_dir
        self._flush_bytes = flush_bytes
        self._schema = schema
        self._buffer: dict[Hashable, list[pa.Table]] = defaultdict(list)
        self._bytes = 0

    def start_bundle(self) -> None:
        self._buffer = defaultdict(list)
        self._bytes = 0

    def process(self, element: tuple[Hashable, pa.Table]) -> Iterator[tuple[Hashable, tuple[str, int]]]:
        key, table = element
        self._buffer[key].append(table)
        self._bytes += table.nbytes
        if self._bytes >= self._flush_bytes:
            yield from self._flush()

    def finish_bundle(self) -> Iterator[WindowedValue]:
        for element in self._flush():
            yield WindowedValue(element, MIN_TIMESTAMP, [GlobalWindow()])

    def _flush(self) -> Iterator[tuple[Hashable, tuple[str, int]]]:
        if not self._buffer:
            return
        path = spanwise_io.join(self._spill_dir, f"{uuid.uuid4().hex}.arrow")
        keys = sorted(self._buffer, key=repr)
        spanwise_io.makedirs(self._spill_dir)
        with spanwise_io.atomic_write(path) as handle, pa.ipc.new_file(handle, self._schema) as writer:
            for key in keys:
                writer.write_table(_concat(self._buffer[key], self._schema).combine_chunks())
        batch = 0
        refs = []
        for key in keys:
            refs.append((key, (path, batch)))
            batch += 1
        self._buffer = defaultdict(list)
        self._bytes = 0
        pa.default_memory_pool().release_unused()  # the spilled tables' buffers go back to the system
        yield from refs


def _read_spilled(element: tuple[Hashable, Iterable[tuple[str, int]]], schema: pa.Schema) -> tuple[Hashable, pa.Table]:
    """The tables a key's references point to, concatenated (files in name order: deterministic)."""
    key, refs = element
    tables = []
    for path, batch in sorted(refs):
        reader = pa.ipc.open_file(pa.memory_map(path, "r"))
        tables.append(pa.Table.from_batches([reader.get_batch(batch)], schema=schema))
    return key, _concat(tables, schema)


def _from_ipc_parts(element: tuple[Hashable, Iterable[bytes]], schema: pa.Schema) -> tuple[Hashable, pa.Table]:
    key, parts = element
    return key, _concat([table_from_ipc(data) for data in parts], schema)


class GroupTablesByKey(beam.PTransform):
    """``(key, table)`` -> ``(key, all of that key's tables concatenated)``; see the module docstring.

    Args:
        schema: the schema every table has.
        spill_dir: a folder for spill files (local runner), or None to use the runner's shuffle.
        flush_bytes: spill every this many bytes of buffered tables (bounds a worker's buffer).
    """

    def __init__(self, schema: pa.Schema, spill_dir: str | None = None, flush_bytes: int = DEFAULT_FLUSH_BYTES):
        super().__init__()
        self._schema = schema
        self._spill_dir = spill_dir
        self._flush_bytes = flush_bytes

    def expand(self, tables: Any) -> Any:
        if self._spill_dir is None:
            return (
                tables
                | "ToIpc" >> beam.MapTuple(lambda key, table: (key, table_to_ipc(table)))
                | "Group" >> beam.GroupByKey()
                | "FromIpc" >> beam.Map(_from_ipc_parts, schema=self._schema)
            )
        return (
            tables
            | "Spill" >> beam.ParDo(_SpillFn(self._spill_dir, self._flush_bytes, self._schema))
            | "GroupRefs" >> beam.GroupByKey()
            | "ReadSpilled" >> beam.Map(_read_spilled, schema=self._schema)
        )
