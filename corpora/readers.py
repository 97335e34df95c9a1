"""One reader per input format (TSV, CSV, JSONL, Parquet) behind one interface.

The pipeline plans, for each input file, its read tasks (``tasks``): byte ranges of a large
plain TSV or JSONL file, groups of row groups of a Parquet file, or the whole file (compressed
files, and CSV, whose quoted fields may hold newlines, cannot be cut at arbitrary bytes). A
worker then reads one task (``read``) into ``Row``s and ``Rejection``s. Nothing here imports
Beam: the same code reads for the pipeline, the tests and the benchmarks.

Byte ranges follow the rule of Beam's text source: a task ``[start, end)`` owns every line that
starts at a byte ``start <= b < end``; a task that does not start the file skips the line it
starts inside of. Line numbers are counted from the task's first line (the file's own line
numbers when the task starts the file); ``TaskCounts.lines`` lets the pipeline turn them into
the file's line numbers afterwards.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
from collections import deque
from dataclasses import dataclass
from typing import IO, Any, Iterator, Mapping, Sequence

import spanwise_io
from schemas.columns import ColumnMap, ColumnSpec, resolve_columns
from schemas.rows import (
    LABELLED_SPLITS,
    MULTI_LABEL_FLAG_HINT,
    REPEATED_HEADER_DETAIL,
    Reason,
    Rejection,
    Row,
    cut_raw,
    split_label_cell,
)
from schemas.tsv import UTF8_BOM, is_header_again, parse_line, strip_line_ending, tsv_layout

__all__ = [
    "DamagedFileError",
    "FORMATS",
    "EXTENSIONS",
    "InputFile",
    "class_label_names",
    "ReadTask",
    "TaskCounts",
    "format_of",
    "inspect_file",
    "plan_tasks",
    "read_task",
]

FORMATS = ("tsv", "csv", "jsonl", "parquet")
EXTENSIONS = {".tsv": "tsv", ".tab": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl",
              ".parquet": "parquet", ".pq": "parquet"}
# How many of a JSONL file's first lines may be tried to find an object whose keys name the columns.
_JSONL_PROBE_LINES = 100


class DamagedFileError(ValueError):
    """A compressed input file that is cut short or corrupt: the job stops, naming the file, the
    damage and how many of its rows were read before it (reading on would lose rows unseen).

    ``_tagged_with_step`` tells Beam not to add its step to the message nor log a traceback
    (as ``beam_pipelines.transforms.CorpusError``).
    """

    _tagged_with_step = True


def _damaged(path: str, compression: str | None, error: BaseException, where: str) -> DamagedFileError | None:
    """The ``DamagedFileError`` of a decompressor's error (None: the error is not about the data)."""
    kind = spanwise_io.damage(error) if compression else None
    if kind is None:
        return None
    return DamagedFileError(
        f"{path}: the {compression} file is damaged: {kind}, {where}; nothing was published. "
        "Replace it with a good copy (or leave it out) and run again"
    )


@dataclass(frozen=True)
class InputFile:
    """One input file of a split, as planned before the job starts.

    ``index`` is its place in the split's file list (the order that decides which of two rows
    with one ID is kept); ``name`` is its path relative to the split's common folder (derived
    IDs and messages); ``row_groups`` holds each Parquet row group's ``(rows, bytes)``;
    ``label_names`` the names of integer labels (``--label_names``, or a Parquet file's Hugging
    Face ``ClassLabel``), by index. ``label_separator`` is None when a row has one label, and
    the separator of a text cell's labels when rows hold label sets (``--multi_label``,
    ``--label_separator``).
    """

    split: str
    index: int
    path: str
    name: str
    format: str
    compression: str | None
    size: int
    layout: ColumnMap
    has_header: bool = False
    row_groups: tuple[tuple[int, int], ...] = ()
    label_names: tuple[str, ...] = ()
    label_separator: str | None = None

    @property
    def multi_label(self) -> bool:
        """Whether a row's label cell holds a set of labels (``--multi_label``)."""
        return self.label_separator is not None

    @property
    def labelled(self) -> bool:
        return self.split in LABELLED_SPLITS

    @property
    def splittable(self) -> bool:
        """Whether byte ranges of the file can be read apart (plain TSV and JSONL)."""
        return self.compression is None and self.format in ("tsv", "jsonl")


@dataclass(frozen=True)
class ReadTask:
    """A part of one file that one worker reads: bytes ``[start, end)`` (``end`` None: to the
    end of the file) or, for Parquet, the row groups ``row_groups``."""

    file: InputFile
    start: int = 0
    end: int | None = None
    row_groups: tuple[int, ...] = ()


@dataclass
class TaskCounts:
    """What one task read: ``lines`` started in it (a Parquet row counts as one), ``headers``."""

    lines: int = 0
    headers: int = 0


def format_of(path: str, given: str | None) -> str:
    """The format of ``path``: ``given`` (``--input_format``) or its extension (before ``.gz`` etc.)."""
    if given:
        return given
    name = str(path).rstrip("/").lower()
    compression = spanwise_io.compression_of(name)
    if compression:
        name = name[: name.rfind(".")]
    dot = name.rfind(".")
    extension = name[dot:] if dot > name.rfind("/") else ""
    if extension in EXTENSIONS:
        return EXTENSIONS[extension]
    known = ", ".join(sorted(EXTENSIONS))
    raise ValueError(
        f"{path}: cannot tell the format from the extension {extension or '(none)'!r} (known: {known}, "
        f"optionally followed by {', '.join(spanwise_io.COMPRESSIONS)}); pass --input_format {'|'.join(FORMATS)}"
    )


# --------------------------------------------------------------------------- planning


def inspect_file(
    split: str, index: int, path: str, name: str, size: int, fmt: str, spec: ColumnSpec,
    label_names: Sequence[str] = (), label_separator: str | None = None,
) -> InputFile:
    """Read what is needed to plan a file: its header, first object or Parquet schema.

    ``label_names`` (``--label_names``) name integer labels; without them, a Parquet file's
    Hugging Face metadata may (``ClassLabel`` names). ``label_separator`` (``--multi_label``)
    makes each label cell a set of labels (``InputFile.label_separator``).

    Raises:
        ValueError: the columns asked for are not there (``schemas.columns.resolve_columns``),
            a Parquet column has a type that cannot be read as asked, a compressed Parquet file,
            ``label_names`` that differ from the names in the file's metadata, or a text file
            in UTF-16 or UTF-32. ``DamagedFileError``: a compressed file that cannot be read.
    """
    compression = spanwise_io.compression_of(path)
    labelled = split in LABELLED_SPLITS
    if fmt == "parquet":
        if compression:
            raise ValueError(f"{path}: a Parquet file compresses its own pages; give it without {compression} compression")
        file = _inspect_parquet(split, index, path, name, size, spec, labelled, tuple(label_names))
        return dataclasses.replace(file, label_separator=label_separator)
    try:
        layout, has_header = _text_layout(path, compression, fmt, spec, labelled)
    except Exception as error:  # noqa: BLE001 (each decompressor has its own error types)
        damaged = _damaged(path, compression, error, "in its first lines")
        if damaged is None:
            raise
        raise damaged from None
    return InputFile(split, index, path, name, fmt, compression, size, layout, has_header, (), tuple(label_names),
                     label_separator)


def _first_line(handle: IO[bytes]) -> bytes:
    line = handle.readline()
    if line.startswith(UTF8_BOM):
        line = line[len(UTF8_BOM):]
    return strip_line_ending(line)


# Byte-order marks of the encodings that are not UTF-8 (the longer UTF-32 marks first).
_OTHER_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe", "UTF-16"),
               (b"\xfe\xff", "UTF-16"))


def _check_utf8(path: str, handle: IO[bytes]) -> None:
    """Stop at a file that starts with a UTF-16 or UTF-32 byte-order mark: read as UTF-8, its
    header would be unreadable and every row invalid.

    Raises:
        ValueError: naming the file, its encoding and how to convert it.
    """
    peek = getattr(handle, "peek", None)
    if peek is not None:
        head = peek(4)[:4]
    elif handle.seekable():
        head = handle.read(4)
        handle.seek(0)
    else:
        return
    for bom, encoding in _OTHER_BOMS:
        if head.startswith(bom):
            raise ValueError(
                f"{path}: the file is {encoding} (byte-order mark); convert it to UTF-8, e.g. "
                f"iconv -f {encoding} -t UTF-8 IN > OUT, or save it as UTF-8"
            )


def _text_layout(path: str, compression: str | None, fmt: str, spec: ColumnSpec, labelled: bool) -> tuple[ColumnMap, bool]:
    with spanwise_io.open_decompressed(path, compression) as handle:
        _check_utf8(path, handle)
        if fmt == "tsv":
            return tsv_layout(_first_line(handle), spec, file=path, labelled=labelled)
        if fmt == "csv":
            header = next(_csv_records(handle, "strict"), None)
            if header is None:  # an empty file: no rows to read, nothing to map
                return _EMPTY_LAYOUT, False
            if isinstance(header.fields, Exception) or header.undecodable:
                raise ValueError(f"{path}: cannot read the CSV header on line 1: {header.fields or 'invalid UTF-8'}")
            return resolve_columns([f.replace("\ufeff", "").strip() for f in header.fields], spec,
                                   file=path, labelled=labelled), True
        keys = _jsonl_keys(handle)
        if keys is None:
            return _EMPTY_LAYOUT, False
        return resolve_columns(keys, spec, file=path, labelled=labelled), False


# A file without rows: no columns to map, and none needed.
_EMPTY_LAYOUT = ColumnMap(columns=(), id=None, label=None, text="")


def _jsonl_keys(handle: IO[bytes]) -> list[str] | None:
    """The keys of the JSON objects among the first lines, in first-seen order (None: an empty file).

    The union, so that an optional key (a second text) that the first object lacks is found.
    """
    seen_line = False
    keys: dict[str, None] = {}
    for number, raw in enumerate(handle, start=1):
        if number > _JSONL_PROBE_LINES:
            break
        raw = strip_line_ending(raw[len(UTF8_BOM):] if number == 1 and raw.startswith(UTF8_BOM) else raw)
        if not raw.strip():
            continue
        seen_line = True
        try:
            value = json.loads(raw)
        except ValueError:
            continue
        if isinstance(value, dict):
            keys.update(dict.fromkeys(value))
    if keys:
        return list(keys)
    if not seen_line:
        return None
    raise ValueError(
        f"{getattr(handle, 'name', 'the file')}: none of its first {_JSONL_PROBE_LINES} lines is a JSON object, "
        "so their keys cannot name the columns; is it JSON Lines (one object per line)?"
    )


def _parquet_type_problem(arrow_type: Any, role: str) -> str | None:
    """Why a Parquet column's type cannot be ``role`` (None: it can)."""
    import pyarrow as pa

    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if role == "label" and (pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)):
        arrow_type = arrow_type.value_type  # a Sequence of ClassLabel: one label per row is read from it
    is_text = pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
    is_int = pa.types.is_integer(arrow_type)
    if role in ("text", "text_b", "alpha") and not is_text:
        return f"a {role} column must hold strings, it holds {arrow_type}"
    if role in ("id", "label") and not (is_text or is_int):
        return f"an {role} column must hold strings or integers, it holds {arrow_type}"
    return None


def class_label_names(metadata: Mapping[bytes, bytes] | None, column: str | None) -> tuple[str, ...]:
    """The names of a column's Hugging Face ``ClassLabel`` (or ``Sequence``/``List`` of one), from the
    ``huggingface`` schema metadata ``datasets.Dataset.to_parquet()`` writes; () if there are none."""
    if not metadata or column is None or b"huggingface" not in metadata:
        return ()
    try:
        feature = json.loads(metadata[b"huggingface"])["info"]["features"][column]
    except (ValueError, KeyError, TypeError):
        return ()
    if isinstance(feature, list) and len(feature) == 1:  # the old spelling of a Sequence
        feature = feature[0]
    if isinstance(feature, dict) and feature.get("_type") in ("Sequence", "List", "LargeList"):
        feature = feature.get("feature")
    if isinstance(feature, dict) and feature.get("_type") == "ClassLabel" and isinstance(feature.get("names"), list):
        return tuple(str(name) for name in feature["names"])
    return ()


def _inspect_parquet(
    split: str, index: int, path: str, name: str, size: int, spec: ColumnSpec, labelled: bool,
    label_names: tuple[str, ...] = (),
) -> InputFile:
    import pyarrow.parquet as pq

    with spanwise_io.open_read(path) as handle:
        try:
            parquet = pq.ParquetFile(handle)
        except Exception as error:  # noqa: BLE001 (pyarrow's errors say what is wrong)
            raise ValueError(f"{path}: not a readable Parquet file: {error}") from error
        schema = parquet.schema_arrow
        metadata = parquet.metadata
        row_groups = tuple(
            (metadata.row_group(i).num_rows, metadata.row_group(i).total_byte_size) for i in range(metadata.num_row_groups)
        )
    layout = resolve_columns(schema.names, spec, file=path, labelled=labelled)
    for role, column in layout.describe().items():
        if column is None:
            continue
        problem = _parquet_type_problem(schema.field(column).type, role)
        if problem:
            raise ValueError(f"{path}: column {column!r}: {problem}")
    stored = class_label_names(schema.metadata, layout.label)
    if label_names and stored and tuple(label_names) != stored:
        raise ValueError(
            f"{path}: its Hugging Face metadata names the labels of column {layout.label!r} {', '.join(stored)}, "
            f"but --label_names says {', '.join(label_names)}; drop --label_names to use the file's names"
        )
    return InputFile(split, index, path, name, "parquet", None, size, layout, False, row_groups, label_names or stored)


def plan_tasks(file: InputFile, range_bytes: int) -> list[ReadTask]:
    """Cut a file into read tasks of about ``range_bytes`` (bytes, or Parquet row-group bytes)."""
    if file.format == "parquet":
        tasks: list[ReadTask] = []
        group: list[int] = []
        group_bytes = 0
        for index, (_, nbytes) in enumerate(file.row_groups):
            if group and group_bytes + nbytes > range_bytes:
                tasks.append(ReadTask(file, row_groups=tuple(group)))
                group, group_bytes = [], 0
            group.append(index)
            group_bytes += nbytes
        if group or not tasks:
            tasks.append(ReadTask(file, row_groups=tuple(group)))
        return tasks
    if not file.splittable or file.size <= range_bytes:
        return [ReadTask(file)]
    starts = range(0, file.size, range_bytes)
    return [ReadTask(file, start, min(start + range_bytes, file.size)) for start in starts]


# --------------------------------------------------------------------------- reading


def read_task(task: ReadTask, counts: TaskCounts, decode_errors: str = "strict") -> Iterator[Row | Rejection]:
    """The rows and rejections of one task, in file order; ``counts`` is filled as it goes.

    Never raises for a bad row. Raises ``DamagedFileError`` (a ``ValueError``) for a compressed
    file that is cut short or corrupt, and ``ValueError`` when the file no longer matches what
    was planned (its header changed since).
    """
    file = task.file
    if file.label_names:
        for item in _read_task(task, counts, decode_errors):
            if isinstance(item, Row) and (item.labels if file.multi_label else item.label):
                item = _named_set(item, file) if file.multi_label else _named(item, file)
            yield item
    else:
        yield from _read_task(task, counts, decode_errors)


def _name_of(label: str, names: tuple[str, ...]) -> str | None:
    """An integer label's name (None: an index without one); any other label as it is."""
    if not label.isdigit() or label in names:
        return label
    index = int(label)
    return names[index] if index < len(names) else None


def _unnamed_detail(label: str, names: tuple[str, ...]) -> str:
    return f"label {int(label)} has no name: the label names are {len(names)} (0..{len(names) - 1})"


def _named(row: Row, file: InputFile) -> Row | Rejection:
    """A row whose integer label is given its name (``file.label_names``); an index without a
    name is rejected. A label that is not an integer stays as it is."""
    name = _name_of(row.label, file.label_names)
    if name is None:
        return Rejection.of_row(row, Reason.UNNAMED_LABEL, _unnamed_detail(row.label, file.label_names))
    return row if name == row.label else dataclasses.replace(row, label=name)


def _named_set(row: Row, file: InputFile) -> Row | Rejection:
    """``_named`` for each label of a row's label set (``--multi_label``)."""
    assert row.labels is not None
    named = [_name_of(label, file.label_names) for label in row.labels]
    if None in named:
        label = row.labels[named.index(None)]
        return Rejection.of_row(row, Reason.UNNAMED_LABEL, _unnamed_detail(label, file.label_names))
    labels = tuple(sorted(set(named)))  # type: ignore[arg-type] (no None left)
    return row if labels == row.labels else dataclasses.replace(row, labels=labels)


def _read_task(task: ReadTask, counts: TaskCounts, decode_errors: str) -> Iterator[Row | Rejection]:
    file = task.file
    if file.format == "parquet":
        yield from _read_parquet(task, counts)
        return
    try:
        if file.format == "csv":
            yield from _read_csv(task, counts, decode_errors)
        else:
            parse = _tsv_parser(file, decode_errors) if file.format == "tsv" else _jsonl_parser(file, decode_errors)
            for line, offset, raw in _lines(task, counts):
                yield parse(line, offset, raw)
    except Exception as error:  # noqa: BLE001 (each decompressor has its own error types)
        rows = counts.lines - counts.headers
        damaged = _damaged(file.path, file.compression, error, f"after {rows} row{'s' if rows != 1 else ''}")
        if damaged is None:
            raise
        raise damaged from None


def _lines(task: ReadTask, counts: TaskCounts) -> Iterator[tuple[int, int, bytes]]:
    """``(line number in the task, byte offset, raw bytes without the ending)`` of the task's lines."""
    file = task.file
    with spanwise_io.open_decompressed(file.path, file.compression) as handle:
        position = 0
        if task.start > 0:
            handle.seek(task.start - 1)
            position = task.start - 1 + len(handle.readline())  # the line the range starts inside of is not ours
        number = 0
        for raw in handle:
            if task.end is not None and position >= task.end:
                break
            offset = position
            position += len(raw)
            number += 1
            if offset == 0 and raw.startswith(UTF8_BOM):
                raw = raw[len(UTF8_BOM):]
                if not raw:  # a file holding only a BOM has no line
                    number -= 1
                    continue
            counts.lines += 1
            if offset == 0 and file.has_header:
                counts.headers += 1
                continue
            yield number, offset, strip_line_ending(raw)


def _tsv_parser(file: InputFile, decode_errors: str):  # noqa: ANN202 (a closure)
    def parse(line: int, offset: int, raw: bytes) -> Row | Rejection:
        return parse_line(file.split, file.path, line, raw, decode_errors, file.layout, offset, file.label_separator)

    return parse


def _jsonl_parser(file: InputFile, decode_errors: str):  # noqa: ANN202 (a closure)
    split, path = file.split, file.path

    def parse(line: int, offset: int, raw: bytes) -> Row | Rejection:
        def reject(reason: str, detail: str, text: str) -> Rejection:
            return Rejection(split, path, line, reason, detail, cut_raw(text), offset)

        try:
            text = raw.decode("utf-8", errors=decode_errors)
        except UnicodeDecodeError as error:
            return reject(Reason.INVALID_UTF8, f"bytes {error.start}-{error.end} are not valid UTF-8 ({error.reason})",
                          raw.decode("utf-8", errors="backslashreplace"))
        if not text.strip():
            return reject(Reason.INVALID_JSON, "a blank line is not a JSON object", text)
        try:
            value = json.loads(text)
        except ValueError as error:
            return reject(Reason.INVALID_JSON, f"not valid JSON: {error}", text)
        if not isinstance(value, dict):
            return reject(Reason.INVALID_JSON, f"{_json_kind(value)}, not an object", text)
        return _row_from_values(value, file, line, offset, cut_raw(text))

    return parse


def _json_kind(value: Any) -> str:
    """What a JSON value is, in JSON's words (``JSON null``, ``a JSON array``...), for messages."""
    if value is None or isinstance(value, bool):
        return f"JSON {json.dumps(value)}"
    kinds = {list: "array", str: "string", int: "number", float: "number"}
    return f"a JSON {kinds.get(type(value), type(value).__name__)}"


def _row_from_values(values: dict[str, Any], file: InputFile, line: int, offset: int, raw: str) -> Row | Rejection:
    """A row from a JSON object, a CSV record or a Parquet row: the values of the layout's columns, checked.

    Read with ``--multi_label`` (``file.multi_label``), the label cell is a set (``_label_set``).
    """
    layout = file.layout

    def reject(reason: str, detail: str) -> Rejection:
        return Rejection(file.split, file.path, line or None, reason, detail, raw, offset)

    def get(role: str, required: bool, kinds: tuple[type, ...]) -> str | Rejection:
        column = getattr(layout, role)
        if column is None:
            return ""
        if column not in values:
            if required:
                return reject(Reason.MISSING_FIELD, f"no {column!r} ({role} column)")
            return ""
        value = values[column]
        if role == "label" and isinstance(value, list):  # a Sequence of ClassLabel: one label per row
            if len(value) != 1:
                return reject(Reason.WRONG_TYPE, f"{column!r} ({role} column) holds {len(value)} labels; "
                                                 f"a document has one label here ({MULTI_LABEL_FLAG_HINT})")
            value = value[0]
        if value is None:
            return ""
        if isinstance(value, bool) or not isinstance(value, kinds):
            return reject(Reason.WRONG_TYPE, f"{column!r} ({role} column) holds a {type(value).__name__}: {str(value)[:80]!r}")
        return str(value)

    labelled = file.labelled
    row_id = get("id", True, (str, int))
    text_a = get("text", True, (str,))
    labels: tuple[str, ...] | None | Rejection = None
    label: str | Rejection = ""
    if file.multi_label:  # the set is in ``labels``; ``label`` shows it as text
        labels = _label_set(values, file, reject)
        if isinstance(labels, tuple):
            label = str(file.label_separator).join(labels)
    else:
        label = get("label", labelled, (str, int))
    text_b = get("text_b", False, (str,))
    alpha = get("alpha", False, (str,))
    for value in (row_id, text_a, labels, label, text_b, alpha):
        if isinstance(value, Rejection):
            return value
    assert isinstance(row_id, str) and isinstance(label, str)  # (for the type checker)
    row_id, label = row_id.strip(), label.strip()
    if layout.id is not None and not row_id:
        return reject(Reason.EMPTY_ID, "ID is empty")
    if not str(text_a).strip():
        return reject(Reason.EMPTY_TEXT_A, "the text is empty")
    if file.multi_label and labels is None and labelled:
        return reject(Reason.MISSING_LABEL, f"the label set is null; every {file.split} row needs one "
                                            "(an empty list for a document without labels)")
    if not file.multi_label and not label and labelled:
        return reject(Reason.MISSING_LABEL, f"the label is empty; every {file.split} row needs one")
    return Row(file.split, file.path, line, row_id, str(alpha), label, str(text_a), str(text_b), raw, offset,
               labels)  # type: ignore[arg-type] (not a Rejection here)


def _label_set(values: dict[str, Any], file: InputFile, reject: Any) -> tuple[str, ...] | None | Rejection:
    """The label set of a JSON object, CSV record or Parquet row read with ``--multi_label``.

    A list (JSON array, Parquet list column) is the set, ``[]`` the empty set, in every split;
    its items are strings or integers. A string (a CSV cell, a JSON string, a Parquet string
    column) is split on the separator (``split_label_cell``): empty, it is the empty set in train
    and dev and an unlabelled row in test, as an empty TSV cell. An integer is a set of one.
    None (null, a missing key or column) is an unlabelled row: the caller rejects it in train
    and dev. A missing key of a labelled split is ``missing_field``, as without ``--multi_label``.
    """
    column = file.layout.label
    if column is None:
        return None
    if column not in values:
        return reject(Reason.MISSING_FIELD, f"no {column!r} (label column)") if file.labelled else None
    value = values[column]
    if value is None:
        return None
    if isinstance(value, list):
        for item in value:
            if isinstance(item, bool) or not isinstance(item, (str, int)):
                return reject(Reason.WRONG_TYPE, f"{column!r} (label column) holds a list with a {type(item).__name__} "
                                                 f"item: {str(item)[:80]!r}; the labels of a set are strings or integers")
        return tuple(sorted({str(item).strip() for item in value} - {""}))
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return reject(Reason.WRONG_TYPE, f"{column!r} (label column) holds a {type(value).__name__}: {str(value)[:80]!r}; "
                                         "a label set is a list, a string or an integer")
    if isinstance(value, int):
        return (str(value),)
    if not value.strip() and not file.labelled:
        return None
    return split_label_cell(value, file.label_separator or "")


# --------------------------------------------------------------------------- CSV


@dataclass
class _CsvRecord:
    """One CSV record: its fields (or the csv module's error), first line, offset and text as read."""

    fields: list[str] | Exception
    line: int
    offset: int
    text: str
    undecodable: UnicodeDecodeError | None = None


class _LineFeed:
    """Feeds a file's decoded lines to ``csv.reader`` and remembers where each record began."""

    def __init__(self, handle: IO[bytes], decode_errors: str):
        self._lines = iter(handle)
        self._decode_errors = decode_errors
        self.position = 0
        self.pending: deque[tuple[int, str]] = deque()  # (offset, text) of the lines of the record being read
        self.undecodable: UnicodeDecodeError | None = None
        self._first = True

    def __iter__(self) -> "_LineFeed":
        return self

    def __next__(self) -> str:
        raw = next(self._lines)
        offset = self.position
        self.position += len(raw)
        if self._first:
            self._first = False
            if raw.startswith(UTF8_BOM):
                raw = raw[len(UTF8_BOM):]
        try:
            text = raw.decode("utf-8", errors=self._decode_errors)
        except UnicodeDecodeError as error:
            self.undecodable = self.undecodable or error
            text = raw.decode("utf-8", errors="backslashreplace")
        self.pending.append((offset, text))
        return text

    def take(self) -> tuple[int, str, UnicodeDecodeError | None]:
        """The offset and text of the record just read; forget them."""
        offset = self.pending[0][0] if self.pending else self.position
        text = "".join(text for _, text in self.pending)
        undecodable = self.undecodable
        self.pending.clear()
        self.undecodable = None
        return offset, text, undecodable


def _csv_records(handle: IO[bytes], decode_errors: str) -> Iterator[_CsvRecord]:
    """A CSV file's records (RFC 4180: quoted fields may hold commas, quotes, tabs and newlines)."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # the default 128 KiB would reject long documents
    feed = _LineFeed(handle, decode_errors)
    reader = csv.reader(feed, dialect="excel", strict=True)
    line_seen = 0
    while True:
        try:
            fields: list[str] | Exception = next(reader)
        except StopIteration:
            if not feed.pending:
                return
            fields = csv.Error("unexpected end of data")
        except csv.Error as error:
            fields = error
        first_line = line_seen + 1
        line_seen = reader.line_num
        offset, text, undecodable = feed.take()
        if isinstance(fields, Exception) and not text:
            return
        text = text[:-1] if text.endswith("\n") else text
        yield _CsvRecord(fields, first_line, offset, text[:-1] if text.endswith("\r") else text, undecodable)
        if isinstance(fields, Exception) and str(fields) == "unexpected end of data":
            return


def _read_csv(task: ReadTask, counts: TaskCounts, decode_errors: str) -> Iterator[Row | Rejection]:
    file = task.file
    layout = file.layout
    with spanwise_io.open_decompressed(file.path, file.compression) as handle:
        for record in _csv_records(handle, decode_errors):
            counts.lines += 1
            if record.line == 1 and file.has_header:
                counts.headers += 1
                continue

            def reject(reason: str, detail: str, record: _CsvRecord = record) -> Rejection:
                return Rejection(file.split, file.path, record.line, reason, detail, cut_raw(record.text), record.offset)

            if record.undecodable is not None:
                error = record.undecodable
                yield reject(Reason.INVALID_UTF8, f"bytes {error.start}-{error.end} of a line are not valid UTF-8 ({error.reason})")
            elif isinstance(record.fields, Exception):
                yield reject(Reason.INVALID_CSV, f"not valid CSV: {record.fields}")
            elif len(record.fields) != len(layout.columns):
                yield reject(
                    Reason.WRONG_FIELD_COUNT,
                    f"expected {len(layout.columns)} comma-separated fields, as the header ({', '.join(layout.columns)}), "
                    f"got {len(record.fields)}",
                )
            elif is_header_again(record.fields, layout):
                yield reject(Reason.REPEATED_HEADER, REPEATED_HEADER_DETAIL)
            else:
                values = dict(zip(layout.columns, record.fields))
                yield _row_from_values(values, file, record.line, record.offset, cut_raw(record.text))


# --------------------------------------------------------------------------- Parquet


def _read_parquet(task: ReadTask, counts: TaskCounts, batch_rows: int = 1024) -> Iterator[Row | Rejection]:
    import pyarrow.parquet as pq

    file = task.file
    columns = [column for column in file.layout.describe().values() if column is not None]
    if not task.row_groups:
        return
    with spanwise_io.open_read(file.path) as handle:
        parquet = pq.ParquetFile(handle)
        for index in task.row_groups:
            row = sum(rows for rows, _ in file.row_groups[:index])
            for batch in parquet.iter_batches(batch_size=batch_rows, row_groups=[index], columns=columns):
                values = batch.to_pydict()
                for i in range(batch.num_rows):
                    counts.lines += 1
                    record = {column: values[column][i] for column in columns}
                    raw = cut_raw(json.dumps(record, ensure_ascii=False, default=str))
                    yield _row_from_values(record, file, 0, row, raw)
                    row += 1
