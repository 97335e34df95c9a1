"""Tests of the input readers (``corpora.readers``) and the column rules (``schemas.columns``),
without Beam: each format's rows, rejections and places (line, byte offset, Parquet row), the
errors that stop a job before it starts, and byte-range reading of large plain files.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beam_pipelines.records import LineIndex
from corpora.readers import ReadTask, TaskCounts, format_of, inspect_file, plan_tasks, read_task
from schemas.columns import ColumnSpec, resolve_columns
from schemas.rows import Reason, Rejection, Row


def _inspect(path, split="train", fmt=None, spec=ColumnSpec(), index=0):
    return inspect_file(split, index, str(path), os.path.basename(str(path)), os.path.getsize(path),
                        fmt or format_of(str(path), None), spec)


def _read(path, split="train", fmt=None, spec=ColumnSpec(), range_bytes=1 << 30):
    """Rows and rejections of a whole file (every task, in order) and the summed counts."""
    file = _inspect(path, split, fmt, spec)
    items, counts = [], TaskCounts()
    for task in plan_tasks(file, range_bytes):
        items.extend(read_task(task, counts))
    return items, counts


def _reasons(items):
    return [(r.line, r.reason) for r in items if isinstance(r, Rejection)]


def _rows(items):
    return [r for r in items if isinstance(r, Row)]


# --------------------------------------------------------------------------- formats by extension


@pytest.mark.parametrize(
    ("name", "expected"),
    [("a.tsv", "tsv"), ("a.TSV.gz", "tsv"), ("dir.v2/train-00001.csv.bz2", "csv"), ("x.jsonl.zst", "jsonl"),
     ("x.ndjson", "jsonl"), ("gs://b/c/part.parquet", "parquet"), ("t.tab", "tsv")],
)
def test_format_from_the_extension(name, expected):
    assert format_of(name, None) == expected


def test_unknown_extension_names_the_flag():
    with pytest.raises(ValueError, match=r"train\.txt: cannot tell the format .*'\.txt'.*--input_format tsv\|csv\|jsonl\|parquet"):
        format_of("data/train.txt", None)
    assert format_of("data/train.txt", "tsv") == "tsv"


# --------------------------------------------------------------------------- columns


def test_resolve_columns_defaults_and_flags():
    layout = resolve_columns(["doc_id", "Text", "Label", "extra"], ColumnSpec(), file="f", labelled=True)
    assert (layout.id, layout.text, layout.label, layout.text_b) == ("doc_id", "Text", "Label", None)
    layout = resolve_columns(["k", "body", "stars"], ColumnSpec(id="k", text="body", label="stars"), file="f", labelled=True)
    assert (layout.id, layout.text, layout.label) == ("k", "body", "stars")
    no_id = resolve_columns(["text", "label"], ColumnSpec(), file="f", labelled=True)
    assert no_id.id is None  # IDs derived from file and line
    unlabelled = resolve_columns(["id", "text"], ColumnSpec(), file="f", labelled=False)
    assert unlabelled.label is None  # a test split may have no labels


@pytest.mark.parametrize(
    ("columns", "spec", "labelled", "message"),
    [
        (["id", "body", "label"], ColumnSpec(), True, r"f\.csv: no text column; its columns are 'id', 'body', 'label'; name it with --text_column"),
        (["id", "text"], ColumnSpec(), True, r"f\.csv: no label column; its columns are 'id', 'text'; name it with --label_column"),
        (["id", "text", "label"], ColumnSpec(id="uuid"), True, r"f\.csv: no column 'uuid' \(--id_column\); its columns are 'id', 'text', 'label'"),
        (["id", "text", "label", "category"], ColumnSpec(), True, r"columns 'label', 'category' could each be the label column; say which with --label_column"),
        (["id", "text", "text_a", "label"], ColumnSpec(), True, r"columns 'text', 'text_a' could each be the text column"),
        (["id", "text", "label"], ColumnSpec(text="label"), True, r"column 'label' cannot be both the label and the text column"),
    ],
)
def test_column_errors_name_the_file_the_columns_and_the_flag(columns, spec, labelled, message):
    with pytest.raises(ValueError, match=message):
        resolve_columns(columns, spec, file="f.csv", labelled=labelled)


# --------------------------------------------------------------------------- TSV with a header


def test_tsv_header_reorders_the_columns(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("text_a\tid\tlabel\talpha\nthe first text\td1\tpos\tx\nonly two\td2\n", encoding="utf-8")
    items, counts = _read(path)
    (row,) = _rows(items)
    assert (row.id, row.text_a, row.label, row.alpha, row.line, row.offset) == ("d1", "the first text", "pos", "x", 2, 22)
    assert _reasons(items) == [(3, Reason.WRONG_FIELD_COUNT)]
    assert (counts.lines, counts.headers) == (3, 1)


def test_tsv_header_without_id_gives_rows_to_derive_ids_for(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("label\ttext\npos\tone\nneg\ttwo\n", encoding="utf-8")
    file = _inspect(path)
    assert file.layout.id is None and file.has_header
    rows = _rows(_read(path)[0])
    assert [(r.id, r.label, r.text_a, r.line) for r in rows] == [("", "pos", "one", 2), ("", "neg", "two", 3)]


# --------------------------------------------------------------------------- CSV


def _csv_bytes(rows, newline="\r\n") -> bytes:
    buffer = io.StringIO(newline="")
    csv.writer(buffer, lineterminator=newline).writerows(rows)
    return buffer.getvalue().encode("utf-8")


def test_csv_quoting_tabs_newlines_and_quotes_stay_in_their_field(tmp_path):
    text = 'a "quoted" word,\twith a tab\nand a second line'
    path = tmp_path / "train.csv"
    path.write_bytes(_csv_bytes([["id", "text", "label"], ["c1", text, "pos"], ["c2", "plain", "neg"]]))
    items, counts = _read(path)
    rows = _rows(items)
    assert [(r.id, r.text_a, r.label, r.line) for r in rows] == [("c1", text, "pos", 2), ("c2", "plain", "neg", 4)]
    assert rows[1].offset == len(_csv_bytes([["id", "text", "label"], ["c1", text, "pos"]]))
    assert (counts.lines, counts.headers) == (3, 1)  # records, not physical lines


def test_csv_bad_records_are_rejected_and_reading_goes_on(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(
        b'id,text,label\n'
        b'c1,"fine, really",pos\n'
        b'c2,"bad"quote,neg\n'
        b'c3,two,fields,too many\n'
        b'\n'
        b'c4,caf\xe9,pos\n'
        b',no id,pos\n'
        b'c5,,neg\n'
        b'c6,last,neg\n'
        b'c7,"never closed,pos\n'
    )
    items, counts = _read(path)
    assert [r.id for r in _rows(items)] == ["c1", "c6"]
    assert _reasons(items) == [
        (3, Reason.INVALID_CSV), (4, Reason.WRONG_FIELD_COUNT), (5, Reason.WRONG_FIELD_COUNT),
        (6, Reason.INVALID_UTF8), (7, Reason.EMPTY_ID), (8, Reason.EMPTY_TEXT_A), (10, Reason.INVALID_CSV),
    ]
    assert counts.lines - counts.headers == 9  # every record is read once: 2 written + 7 rejected
    rejected = {r.line: r for r in items if isinstance(r, Rejection)}
    assert rejected[10].raw == 'c7,"never closed,pos' and "unexpected end of data" in rejected[10].detail
    assert rejected[6].raw == "c4,caf\\xe9,pos"


def test_csv_needs_a_header_naming_the_columns(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("d1,some text,pos\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"train\.csv: no text column; its columns are 'd1', 'some text', 'pos'"):
        _inspect(path)


# --------------------------------------------------------------------------- JSONL


def test_jsonl_missing_keys_wrong_types_and_bad_lines(tmp_path):
    lines = [
        {"id": 1, "text": "integer ids are fine", "label": 3},
        {"id": "j2", "text": "no label here"},
        {"id": "j3", "label": "pos"},
        {"id": "j4", "text": ["not", "a", "string"], "label": "pos"},
        {"id": True, "text": "a bool is no id", "label": "pos"},
        {"id": "j6", "text": "float label", "label": 1.5},
        {"id": "j7", "text": "   ", "label": "pos"},
        {"id": None, "text": "null id", "label": "pos"},
        {"id": "j9", "text": "second text", "label": "neg", "text_b": "the pair", "extra": {"x": 1}},
    ]
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines) + b"{not json\n\n[1, 2]\n"
    path = tmp_path / "train.jsonl"
    path.write_bytes(data)
    items, counts = _read(path)
    assert [(r.id, r.label, r.text_a, r.text_b) for r in _rows(items)] == [
        ("1", "3", "integer ids are fine", ""), ("j9", "neg", "second text", "the pair"),
    ]
    assert _reasons(items) == [
        (2, Reason.MISSING_FIELD), (3, Reason.MISSING_FIELD), (4, Reason.WRONG_TYPE), (5, Reason.WRONG_TYPE),
        (6, Reason.WRONG_TYPE), (7, Reason.EMPTY_TEXT_A), (8, Reason.EMPTY_ID), (10, Reason.INVALID_JSON),
        (11, Reason.INVALID_JSON), (12, Reason.INVALID_JSON),
    ]
    details = {r.line: r.detail for r in items if isinstance(r, Rejection)}
    assert details[2] == "no 'label' (label column)" and details[4].startswith("'text' (text column) holds a list")
    assert counts.lines == 12


def test_jsonl_test_rows_without_a_label_are_unlabelled(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_text('{"id": "a", "text": "x"}\n{"id": "b", "text": "y", "label": "pos"}\n{"id": "c", "text": "z", "label": null}\n')
    assert _inspect(path, split="test").layout.label == "label"
    assert [(r.id, r.label) for r in _rows(_read(path, split="test")[0])] == [("a", ""), ("b", "pos"), ("c", "")]
    unlabelled = tmp_path / "unlabelled.jsonl"
    unlabelled.write_text('{"id": "a", "text": "x"}\n')
    assert _inspect(unlabelled, split="test").layout.label is None  # no label key at all: fine for test
    with pytest.raises(ValueError, match="no label column"):
        _inspect(unlabelled, split="dev")


def test_jsonl_keys_come_from_the_first_objects(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('\n# a comment line\n{"doc": "x", "body": "y", "y": 1}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"train\.jsonl: no text column; its columns are 'doc', 'body', 'y'"):
        _inspect(path)
    spec = ColumnSpec(id="doc", text="body", label="y")
    assert [(r.id, r.text_a, r.label) for r in _rows(_read(path, spec=spec)[0])] == [("x", "y", "1")]
    later = tmp_path / "pairs.jsonl"  # a key the first object lacks is still a column
    later.write_text('{"id": "a", "text": "x", "label": 1}\n{"id": "b", "text": "y", "label": 2, "text_b": "z"}\n')
    assert [(r.id, r.text_b) for r in _rows(_read(later)[0])] == [("a", ""), ("b", "z")]


# --------------------------------------------------------------------------- Parquet


def test_parquet_rows_by_row_group_with_their_row_index(tmp_path):
    path = tmp_path / "train.parquet"
    table = pa.table({
        "id": [f"p{i}" for i in range(10)],
        "text": [f"text {i}" if i != 4 else None for i in range(10)],
        "label": pa.array([i % 3 for i in range(10)], type=pa.int64()),
    })
    pq.write_table(table, path, row_group_size=3)
    file = _inspect(path)
    assert len(file.row_groups) == 4
    tasks = plan_tasks(file, 1)  # one task per row group
    assert [t.row_groups for t in tasks] == [(0,), (1,), (2,), (3,)]
    items, counts = [], TaskCounts()
    for task in reversed(tasks):  # tasks are independent of each other
        items.extend(read_task(task, counts))
    rows = sorted(_rows(items), key=lambda r: r.offset)
    assert [(r.id, r.offset, r.label, r.line) for r in rows][:4] == [("p0", 0, "0", 0), ("p1", 1, "1", 0), ("p2", 2, "2", 0), ("p3", 3, "0", 0)]
    (rejection,) = [r for r in items if isinstance(r, Rejection)]
    assert (rejection.offset, rejection.reason, rejection.line) == (4, Reason.EMPTY_TEXT_A, None)
    assert json.loads(rejection.raw) == {"id": "p4", "text": None, "label": 1}
    assert counts.lines == 10


def test_parquet_column_types_are_checked_before_any_work(tmp_path):
    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"id": ["a"], "text": [1.5], "label": ["pos"]}), path)
    with pytest.raises(ValueError, match=r"train\.parquet: column 'text': a text column must hold strings, it holds double"):
        _inspect(path)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ValueError, match=r"bad\.parquet: not a readable Parquet file"):
        _inspect(bad)


# --------------------------------------------------------------------------- compression


@pytest.mark.parametrize("suffix, compress", [(".gz", gzip.compress), (".bz2", bz2.compress),
                                              (".zst", lambda b: zstandard.ZstdCompressor().compress(b))])
def test_compressed_files_read_like_plain_ones(tmp_path, suffix, compress):
    data = b"\xef\xbb\xbfid\talpha\tlabel\ttext_a\r\nd1\ta\tpos\tone\r\nd2\ta\tneg\ttwo\n"
    plain, packed = tmp_path / "train.tsv", tmp_path / f"train.tsv{suffix}"
    plain.write_bytes(data)
    packed.write_bytes(compress(data))
    assert _inspect(packed).compression == {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}[suffix]
    assert len(plan_tasks(_inspect(packed), 8)) == 1  # a compressed file is read whole
    got, want = _read(packed, range_bytes=8), _read(plain)
    assert [(r.id, r.label, r.text_a, r.line, r.offset) for r in _rows(got[0])] == [
        (r.id, r.label, r.text_a, r.line, r.offset) for r in _rows(want[0])
    ] == [("d1", "pos", "one", 2, 26), ("d2", "neg", "two", 3, 40)]


# --------------------------------------------------------------------------- byte ranges


line_strategy = st.one_of(
    st.builds(lambda i, w: f"d{i}\ta\tpos\t{'word ' * w}".encode(), st.integers(0, 10**6), st.integers(1, 30)),
    st.sampled_from([b"", b"\r", b"bad line", b"x\ty", "caf\u00e9\t\u6771\u4eac".encode()]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(line_strategy, min_size=1, max_size=40), endings=st.lists(st.sampled_from([b"\n", b"\r\n"]), min_size=40, max_size=40),
       range_bytes=st.integers(1, 300), bom=st.booleans(), last_newline=st.booleans(), fmt=st.sampled_from(["tsv", "jsonl"]))
def test_byte_ranges_read_every_line_once_with_its_line_number(tmp_path, lines, endings, range_bytes, bom, last_newline, fmt):
    """Cut anywhere, the ranges of a file give the same rows and rejections as one whole read,
    each line once, and ``LineIndex`` turns their task-relative lines into the file's."""
    if fmt == "jsonl":
        lines = [json.dumps({"id": line.decode("utf-8", "replace")[:6], "text": line.decode("utf-8", "replace") or " ",
                             "label": "pos"}).encode() if i % 3 != 1 else line for i, line in enumerate(lines)]
    data = (b"\xef\xbb\xbf" if bom else b"") + b"".join(line + end for line, end in zip(lines, endings))
    if not last_newline:
        data = data[: -len(endings[len(lines) - 1])]
    path = tmp_path / f"corpus.{fmt}"
    path.write_bytes(data)
    file = inspect_file("test", 3, str(path), path.name, len(data), fmt, ColumnSpec())
    whole_counts = TaskCounts()
    whole = list(read_task(ReadTask(file), whole_counts))
    tasks = plan_tasks(file, range_bytes)
    assert len(tasks) == (1 if len(data) <= range_bytes else -(-len(data) // range_bytes))
    counted, parts = [], []
    for task in tasks:
        counts = TaskCounts()
        items = list(read_task(task, counts))
        counted.append(("test", 3, task.start, counts.lines))
        parts.append((task, items))
    index = LineIndex(counted)
    resolved = []
    for task, items in parts:
        for item in items:
            line = index.line("test", 3, task.start, item.line)
            resolved.append((line, item.offset, item.reason if isinstance(item, Rejection) else item.id))
    assert resolved == [(item.line, item.offset, item.reason if isinstance(item, Rejection) else item.id) for item in whole]
    assert sum(lines for *_, lines in counted) == whole_counts.lines


# --------------------------------------------------------------------------- what a new user hit (issue 22)


def _damaged(data: bytes, suffix: str, how: str) -> bytes:
    """``data`` compressed, then cut short (``cut``) or with 50 bytes flipped in the middle (``corrupt``)."""
    packed = {".gz": gzip.compress, ".bz2": bz2.compress,  # zstd with a checksum, as the zstd command writes it
              ".zst": lambda b: zstandard.ZstdCompressor(write_checksum=True).compress(b)}[suffix](data)
    middle = len(packed) // 2
    if how == "cut":
        return packed[:middle]
    return packed[:middle] + bytes(b ^ 0x55 for b in packed[middle:middle + 50]) + packed[middle + 50:]


def _jsonl_lines(count: int) -> bytes:
    """JSON lines of random numbers: they compress to many blocks, as real text does."""
    import random

    rng = random.Random(0)
    return b"".join(json.dumps({"id": f"d{i}", "text": " ".join(str(rng.random()) for _ in range(12)), "label": "pos"}
                               ).encode() + b"\n" for i in range(count))


@pytest.mark.parametrize("suffix, compression", [(".gz", "gzip"), (".bz2", "bz2"), (".zst", "zstd")])
@pytest.mark.parametrize("how, kind", [("cut", "cut short"), ("corrupt", "corrupt data")])
def test_a_damaged_compressed_file_stops_naming_the_file_the_damage_and_the_rows_read(tmp_path, suffix, compression,
                                                                                     how, kind):
    from corpora.readers import DamagedFileError

    path = tmp_path / f"train.jsonl{suffix}"
    path.write_bytes(_damaged(_jsonl_lines(8000), suffix, how))  # bz2: more than one 900 kB block
    file = _inspect(path)  # the first lines are fine
    counts = TaskCounts()
    rows = 0
    with pytest.raises(DamagedFileError) as error:
        for item in read_task(plan_tasks(file, 1 << 30)[0], counts):
            rows += 1  # a row or a rejected one: both were read
    message = str(error.value)
    assert message.startswith(f"{path}: the {compression} file is damaged: {kind}")
    assert f"after {rows} rows; nothing was published" in message and 0 < rows < 8000
    assert isinstance(error.value, ValueError)


def test_a_small_damaged_file_stops_while_planning(tmp_path):
    from corpora.readers import DamagedFileError

    packed = gzip.compress(_jsonl_lines(3))
    path = tmp_path / "train.jsonl.gz"
    path.write_bytes(packed[:-8] + b"\0" * 8)  # a wrong CRC and length
    with pytest.raises(DamagedFileError, match=r"train\.jsonl\.gz: the gzip file is damaged: corrupt data \(CRC check "
                                               r"failed .*\), in its first lines"):
        _inspect(path)


@pytest.mark.parametrize("encoding, name", [("utf-16", "UTF-16"), ("utf-16-be", "UTF-16"), ("utf-32", "UTF-32")])
@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_a_utf16_file_is_named_as_such(tmp_path, encoding, name, fmt):
    path = tmp_path / f"train.{fmt}"
    text = {"csv": "id,text,label\n1,hello,pos\n", "tsv": "id\ttext\tlabel\n1\thello\tpos\n",
            "jsonl": '{"id": 1, "text": "hello", "label": "pos"}\n'}[fmt]
    path.write_bytes(("\ufeff" if encoding == "utf-16-be" else "").encode(encoding) + text.encode(encoding))
    with pytest.raises(ValueError, match=rf"train\.{fmt}: the file is {name} \(byte-order mark\); convert it to UTF-8"):
        _inspect(path)


@pytest.mark.parametrize("fmt, sep", [("csv", ","), ("tsv", "\t")])
def test_a_header_repeated_inside_a_file_is_rejected_with_its_own_reason(tmp_path, fmt, sep):
    header = sep.join(["id", "text", "label"]) + "\n"
    body = lambda first: "".join(sep.join([f"d{i}", f"text {i}", "pos"]) + "\n" for i in range(first, first + 2))  # noqa: E731
    path = tmp_path / f"train.{fmt}"
    path.write_text(header + body(0) + header + body(2) + " " + header, encoding="utf-8")  # as `cat a b c` makes it
    items, counts = _read(path)
    assert [r.id for r in _rows(items)] == ["d0", "d1", "d2", "d3"]
    assert _reasons(items) == [(4, Reason.REPEATED_HEADER), (7, Reason.REPEATED_HEADER)]
    assert {r.detail for r in items if isinstance(r, Rejection)} == {
        "the header line again, inside the file (files joined with cat?); it is not a row"}
    assert counts.lines - counts.headers == 6


def test_a_json_null_line_is_called_null(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"id": "a", "text": "x", "label": "pos"}\nnull\n[1]\n"text"\n3\ntrue\n', encoding="utf-8")
    details = [r.detail for r in _read(path)[0] if isinstance(r, Rejection)]
    assert details == ["JSON null, not an object", "a JSON array, not an object", "a JSON string, not an object",
                       "a JSON number, not an object", "JSON true, not an object"]


def _hf_parquet(path, labels, names, sequence=False):
    """A corpus as ``datasets.Dataset.to_parquet()`` writes it: integer labels, the names in the metadata."""
    import datasets

    label = datasets.ClassLabel(names=list(names))
    features = datasets.Features({"id": datasets.Value("string"), "text": datasets.Value("string"),
                                  "label": datasets.Sequence(label) if sequence else label})
    values = [[v] for v in labels] if sequence else list(labels)
    datasets.Dataset.from_dict({"id": [f"h{i}" for i in range(len(labels))], "text": [f"text {i}" for i in range(len(labels))],
                                "label": values}, features=features).to_parquet(str(path))


@pytest.mark.parametrize("sequence", [False, True])
def test_class_label_names_of_a_hugging_face_parquet_file_name_its_labels(tmp_path, sequence):
    path = tmp_path / "train.parquet"
    _hf_parquet(path, [2, 0, 1], ["tech", "business", "sport"], sequence)
    assert _inspect(path).label_names == ("tech", "business", "sport")
    assert [r.label for r in _rows(_read(path)[0])] == ["sport", "tech", "business"]


def test_label_names_name_integer_labels_of_any_format(tmp_path):
    from corpora.inputs import parse_label_names

    names = parse_label_names("tech,business,sport")
    (tmp_path / "names.txt").write_text("tech\nbusiness\nsport\n", encoding="utf-8")
    assert parse_label_names(str(tmp_path / "names.txt")) == names == ("tech", "business", "sport")
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 7}\n{"text": "c", "label": "sport"}\n')
    file = inspect_file("train", 0, str(jsonl), "train.jsonl", jsonl.stat().st_size, "jsonl", ColumnSpec(), names)
    items = list(read_task(plan_tasks(file, 1 << 30)[0], TaskCounts()))
    assert [r.label for r in _rows(items)] == ["business", "sport"]
    (rejection,) = [r for r in items if isinstance(r, Rejection)]
    assert (rejection.line, rejection.reason, rejection.detail) == (
        2, Reason.UNNAMED_LABEL, "label 7 has no name: the label names are 3 (0..2)")
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("text,label\na,0\n", encoding="utf-8")
    file = inspect_file("train", 0, str(csv_path), "train.csv", csv_path.stat().st_size, "csv", ColumnSpec(), names)
    assert [r.label for r in _rows(list(read_task(plan_tasks(file, 1 << 30)[0], TaskCounts())))] == ["tech"]
    # without names, integers stay the labels
    assert [r.label for r in _rows(_read(csv_path)[0])] == ["0"]


def test_label_names_mistakes_are_named(tmp_path):
    from corpora.inputs import parse_label_names

    with pytest.raises(ValueError, match="--label_names a,,b: every name must be non-empty"):
        parse_label_names("a,,b")
    with pytest.raises(ValueError, match="--label_names a,b,a: 'a' given more than once"):
        parse_label_names("a,b,a")
    with pytest.raises(ValueError, match="the name '1' is an integer that is not its own index"):
        parse_label_names("1,2")
    path = tmp_path / "train.parquet"
    _hf_parquet(path, [0], ["tech", "business"])
    with pytest.raises(ValueError, match=r"its Hugging Face metadata names the labels of column 'label' tech, business, "
                                         r"but --label_names says business, tech"):
        inspect_file("train", 0, str(path), "train.parquet", path.stat().st_size, "parquet", ColumnSpec(), ("business", "tech"))
