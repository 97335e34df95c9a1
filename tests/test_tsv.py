"""Tests of the TSV row parser (design.md section 2): the GLUE layout ``ID, ALPHA_COL, LABEL,
TEXT_A[, TEXT_B]``, or columns named by a header on line 1."""

from __future__ import annotations

import io
import json

import pytest

from schemas.columns import GLUE_LAYOUT, ColumnSpec
from schemas.rows import LABELLED_SPLITS, MAX_RAW_CHARS, Reason, Rejection, Row
from schemas.tsv import is_header, iter_lines, parse_line, tsv_layout


def parse(raw: bytes, split: str = "train", line: int = 2, decode_errors: str = "strict", layout=GLUE_LAYOUT):
    return parse_line(split, f"{split}.tsv", line, raw, decode_errors, layout)


def lines_of(data: bytes) -> list[tuple[int, bytes]]:
    return list(iter_lines(io.BytesIO(data)))


def assert_rejected(result, reason: str, line: int = 2, split: str = "train") -> Rejection:
    assert isinstance(result, Rejection), result
    assert result.reason == reason
    assert (result.split, result.file, result.line) == (split, f"{split}.tsv", line)
    assert result.detail
    return result


# --- good rows ------------------------------------------------------------------------------


def test_row_without_text_b():
    row = parse(b"d1\ta\tpositive\tA fine film.", line=7)
    assert row == Row(
        split="train", file="train.tsv", line=7, id="d1", alpha="a", label="positive", text_a="A fine film.", text_b=""
    )


def test_row_with_text_b():
    row = parse("q-9\tx\t1\tWhat is it?\tIt is a caf\u00e9.".encode("utf-8"), split="dev")
    assert isinstance(row, Row)
    assert (row.split, row.id, row.alpha, row.label, row.text_a, row.text_b) == (
        "dev", "q-9", "x", "1", "What is it?", "It is a caf\u00e9."
    )


def test_row_with_empty_text_b_field():
    row = parse(b"d1\ta\t0\ttext\t")
    assert isinstance(row, Row)
    assert (row.text_a, row.text_b) == ("text", "")


def test_row_keeps_text_and_alpha_verbatim_but_strips_id_and_label():
    row = parse(b" d1 \t a \t pos \t  spaced text  \t b ")
    assert isinstance(row, Row)
    assert (row.id, row.alpha, row.label, row.text_a, row.text_b) == ("d1", " a ", "pos", "  spaced text  ", " b ")


def test_empty_alpha_is_fine():
    row = parse(b"d1\t\tpos\ttext")
    assert isinstance(row, Row) and row.alpha == ""


# --- header -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [b"id\talpha\tlabel\ttext_a", b"id\talpha\tlabel\ttext_a\ttext_b", b"ID\tALPHA_COL\tLABEL\tTEXT_A\tTEXT_B", b"guid\tx\tclass\tsentence"],
)
def test_glue_shaped_headers_map_to_the_glue_columns(header):
    assert is_header(header.decode().split("\t"))
    layout, has_header = tsv_layout(header, ColumnSpec(), file="train.tsv", labelled=True)
    assert has_header and (layout.index("id"), layout.index("label"), layout.index("text")) == (0, 2, 3)
    row = parse(b"d1\ta\tpos\tsome text", layout=layout)
    assert isinstance(row, Row) and (row.id, row.label, row.text_a) == ("d1", "pos", "some text")


def test_header_decides_which_column_is_which():
    """The header of the issue: id, text_a, label, alpha (the GLUE layout would train on 'alpha')."""
    layout, has_header = tsv_layout(b"id\ttext_a\tlabel\talpha", ColumnSpec(), file="train.tsv", labelled=True)
    assert has_header
    row = parse(b"d1\tthe real text\tpos\tx", layout=layout)
    assert isinstance(row, Row)
    assert (row.id, row.text_a, row.label, row.alpha) == ("d1", "the real text", "pos", "x")
    wrong = parse(b"d1\tthe real text\tpos", layout=layout)
    assert isinstance(wrong, Rejection) and wrong.reason == Reason.WRONG_FIELD_COUNT
    assert "as the header (id, text_a, label, alpha)" in wrong.detail


def test_no_header_is_the_glue_layout():
    assert tsv_layout(b"d1\ta\tpositive\ttext", ColumnSpec(), file="t.tsv", labelled=True) == (GLUE_LAYOUT, False)
    assert not is_header(["d1", "a", "positive", "text"])
    assert not is_header(["12", "a", "label", "some words, with punctuation!"])  # a text is no column name


def test_a_line_naming_two_known_columns_is_a_header():
    assert is_header(["id", "alpha", "positive", "text"])  # (then: no label column -> an error, not a wrong column)
    with pytest.raises(ValueError, match=r"train\.tsv: no label column; its columns are 'id', 'alpha', 'positive', 'text'"):
        tsv_layout(b"id\talpha\tpositive\ttext", ColumnSpec(), file="train.tsv", labelled=True)
    assert is_header(["review", "stars"], ColumnSpec(text="review", label="stars"))
    assert not is_header(["review", "stars"])


def test_column_flags_need_a_header():
    with pytest.raises(ValueError, match=r"t\.tsv has no header .*--text_column cannot name its columns"):
        tsv_layout(b"d1\ta\tpos\ttext", ColumnSpec(text="body"), file="t.tsv", labelled=True)


def test_parse_line_parses_any_line_as_a_row():
    row = parse(b"id\talpha\tlabel\ttext_a", line=1)
    assert isinstance(row, Row)  # header handling is the reader's, from the whole file's first line
    assert (row.id, row.label, row.text_a) == ("id", "label", "text_a")


# --- rejections ---------------------------------------------------------------------------


def test_reason_codes_are_stable_strings():
    assert (
        Reason.WRONG_FIELD_COUNT, Reason.EMPTY_ID, Reason.EMPTY_TEXT_A, Reason.MISSING_LABEL,
        Reason.INVALID_UTF8, Reason.DUPLICATE_ID, Reason.UNSEEN_LABEL,
    ) == (
        "wrong_field_count", "empty_id", "empty_text_a", "missing_label",
        "invalid_utf8", "duplicate_id", "unseen_label",
    )


@pytest.mark.parametrize(
    "raw, count",
    [(b"", 1), (b"d1 a pos text", 1), (b"d1\ta\tpos", 3), (b"d1\ta\tpos\ttext\tb\textra", 6), (b"\t\t\t\t\t\t", 7)],
)
def test_wrong_field_count(raw, count):
    rejection = assert_rejected(parse(raw), Reason.WRONG_FIELD_COUNT)
    assert f"got {count}" in rejection.detail
    assert rejection.raw == raw.decode()


@pytest.mark.parametrize("raw", [b"\ta\tpos\ttext", b"   \ta\tpos\ttext"])
def test_empty_id(raw):
    rejection = assert_rejected(parse(raw, line=3), Reason.EMPTY_ID, line=3)
    assert rejection.raw == raw.decode()  # the raw line, not one rebuilt from stripped fields


@pytest.mark.parametrize("raw", [b"d1\ta\tpos\t", b"d1\ta\tpos\t   ", b"d1\ta\tpos\t\tonly text b"])
def test_empty_text_a(raw):
    rejection = assert_rejected(parse(raw), Reason.EMPTY_TEXT_A)
    assert rejection.raw == raw.decode()


@pytest.mark.parametrize("split", LABELLED_SPLITS)
@pytest.mark.parametrize("raw", [b"d1\ta\t\ttext", b"d1\ta\t  \ttext\t"])
def test_missing_label_in_train_and_dev(split, raw):
    rejection = assert_rejected(parse(raw, split=split), Reason.MISSING_LABEL, split=split)
    assert split in rejection.detail
    assert rejection.raw == raw.decode()


def test_labelled_splits():
    assert set(LABELLED_SPLITS) == {"train", "dev"}


def test_test_split_may_have_no_label():
    row = parse(b"d1\ta\t\ttext", split="test")
    assert isinstance(row, Row) and row.label == "" and row.split == "test"
    labelled = parse(b"d2\ta\tneg\ttext", split="test")
    assert isinstance(labelled, Row) and labelled.label == "neg"


def test_invalid_utf8_strict():
    raw = b"d1\ta\tpos\tcaf\xe9 au lait"
    rejection = assert_rejected(parse(raw), Reason.INVALID_UTF8)
    assert "UTF-8" in rejection.detail and "12" in rejection.detail  # the byte offset
    assert rejection.raw == "d1\ta\tpos\tcaf\\xe9 au lait"
    assert parse(raw, decode_errors="strict") == rejection  # strict is the default


def test_invalid_utf8_replace():
    row = parse(b"d1\ta\tpos\tcaf\xe9 au lait\t\xff\xfe", decode_errors="replace")
    assert isinstance(row, Row)
    assert row.text_a == "caf\ufffd au lait"
    assert row.text_b == "\ufffd\ufffd"


def test_invalid_utf8_in_id_under_replace():
    row = parse(b"\xff\ta\tpos\ttext", decode_errors="replace")
    assert isinstance(row, Row) and row.id == "\ufffd"


# --- raw cut to a bounded size, JSON --------------------------------------------------------


def _assert_cut(raw_field: str, original: str) -> None:
    assert len(original) > MAX_RAW_CHARS
    assert raw_field.startswith(original[:MAX_RAW_CHARS])
    assert raw_field != original
    assert len(raw_field) <= MAX_RAW_CHARS + 40
    assert str(len(original)) in raw_field[MAX_RAW_CHARS:]  # says how long the line was


def test_long_raw_lines_are_cut():
    long_text = "word " * 2000
    for raw in (
        f"d1\ta\tpos\t{long_text}\tb\textra".encode(),  # wrong field count
        f"\ta\tpos\t{long_text}".encode(),  # empty id
        f"d1\ta\t\t{long_text}".encode(),  # missing label
    ):
        rejection = parse(raw)
        assert isinstance(rejection, Rejection)
        _assert_cut(rejection.raw, raw.decode())
        assert json.loads(rejection.to_json())["raw"] == rejection.raw
    raw = b"d1\ta\tpos\t" + b"\xe9" * 3000
    rejection = assert_rejected(parse(raw), Reason.INVALID_UTF8)
    _assert_cut(rejection.raw, raw.decode("utf-8", errors="backslashreplace"))


def test_short_raw_is_kept_whole():
    raw = "d1\ta\tpos\t" + "x" * (MAX_RAW_CHARS - 20) + "\tb\tc"
    rejection = parse(raw.encode())
    assert isinstance(rejection, Rejection) and rejection.raw == raw


def test_rejection_json():
    rejection = parse("d1\t\u03b1\tpos\ttext\tb\tc".encode(), line=42)
    decoded = json.loads(rejection.to_json())
    assert decoded == {
        "split": "train",
        "file": "train.tsv",
        "line": 42,
        "offset": 0,
        "reason": "wrong_field_count",
        "detail": rejection.detail,
        "raw": "d1\t\u03b1\tpos\ttext\tb\tc",
    }
    assert "\u03b1" in rejection.to_json()  # written as UTF-8, not escaped
    assert "\n" not in rejection.to_json()  # one JSON object per line of a .jsonl file


def test_rejection_of_row_for_pipeline_reasons():
    row = parse(b"d1\ta\tpos\ttext\tpair")
    rejection = Rejection.of_row(row, Reason.DUPLICATE_ID, "ID 'd1' already used")
    assert (rejection.split, rejection.file, rejection.line, rejection.reason) == ("train", "train.tsv", 2, "duplicate_id")
    assert rejection.raw == "d1\ta\tpos\ttext\tpair"


# --- iter_lines: line endings and BOM -------------------------------------------------------


def test_iter_lines_lf_crlf_and_no_final_newline():
    data = b"id\talpha\tlabel\ttext_a\r\nd1\ta\tpos\tone\r\nd2\ta\tneg\ttwo\nd3\ta\tpos\tthree"
    assert lines_of(data) == [
        (1, b"id\talpha\tlabel\ttext_a"),
        (2, b"d1\ta\tpos\tone"),
        (3, b"d2\ta\tneg\ttwo"),
        (4, b"d3\ta\tpos\tthree"),
    ]


def test_crlf_row_parses_without_carriage_return():
    ((number, raw),) = lines_of(b"d1\ta\tpos\ttext a\ttext b\r\n")
    row = parse(raw, line=number)
    assert isinstance(row, Row)
    assert row.text_b == "text b"


def test_only_newline_ends_a_line():
    text = "d1\ta\tpos\tone\rtwo\x0bthree\x0cfour\x1cfive\u0085six\u2028seven\u2029eight"
    data = text.encode("utf-8") + b"\n"
    ((number, raw),) = lines_of(data)
    row = parse(raw, line=number)
    assert isinstance(row, Row)
    assert row.text_a == "one\rtwo\x0bthree\x0cfour\x1cfive\u0085six\u2028seven\u2029eight"


def test_blank_lines_keep_their_numbers():
    assert lines_of(b"a\n\nb\n") == [(1, b"a"), (2, b""), (3, b"b")]
    assert_rejected(parse(b"", line=2), Reason.WRONG_FIELD_COUNT)


def test_bom_is_dropped_before_header_detection():
    data = b"\xef\xbb\xbfid\talpha\tlabel\ttext_a\r\nd1\ta\tpos\ttext\r\n"
    lines = lines_of(data)
    assert lines[0] == (1, b"id\talpha\tlabel\ttext_a")
    assert tsv_layout(lines[0][1], ColumnSpec(), file="t.tsv", labelled=True)[1]  # a header
    assert isinstance(parse(lines[1][1], line=2), Row)


def test_bom_is_dropped_from_a_first_data_row():
    ((number, raw),) = lines_of(b"\xef\xbb\xbfd1\ta\tpos\ttext\n")
    row = parse(raw, line=number)
    assert isinstance(row, Row) and row.id == "d1"


def test_bom_only_at_the_start_of_the_file():
    lines = lines_of(b"d1\ta\tpos\tx\n\xef\xbb\xbfd2\ta\tpos\ty\n")
    assert lines[1] == (2, b"\xef\xbb\xbfd2\ta\tpos\ty")


def _read_whole_file(tmp_path, data: bytes, split: str = "dev"):
    """Every row and rejection of a file, as the pipeline's reader gives them, and its counts."""
    from corpora.readers import TaskCounts, inspect_file, plan_tasks, read_task

    path = tmp_path / f"{split}.tsv"
    path.write_bytes(data)
    file = inspect_file(split, 0, str(path), path.name, len(data), "tsv", ColumnSpec())
    counts = TaskCounts()
    (task,) = plan_tasks(file, 1 << 20)
    return list(read_task(task, counts)), counts


def test_whole_file_accounting(tmp_path):
    """Every line is a header, a row or a rejection, each with its own line number."""
    data = (
        b"\xef\xbb\xbfid\talpha\tlabel\ttext_a\ttext_b\r\n"
        b"d1\ta\tpos\tgood\r\n"
        b"d2\ta\tneg\tgood\tpair\r\n"
        b"\ta\tpos\tno id\r\n"
        b"d4\ta\tpos\r\n"
        b"d5\ta\t\tno label\r\n"
        b"d6\ta\tpos\t\xc3\x28\r\n"
        b"d7\ta\tpos\t  \n"
    )
    results, counts = _read_whole_file(tmp_path, data)
    assert (counts.lines, counts.headers) == (8, 1)
    assert [r.id for r in results if isinstance(r, Row)] == ["d1", "d2"]
    assert [(r.line, r.reason) for r in results if isinstance(r, Rejection)] == [
        (4, "empty_id"), (5, "wrong_field_count"), (6, "missing_label"), (7, "invalid_utf8"), (8, "empty_text_a"),
    ]
