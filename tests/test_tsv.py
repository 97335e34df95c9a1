"""Tests of the TSV row parser (design.md section 2): ``ID, ALPHA_COL, LABEL, TEXT_A[, TEXT_B]``."""

from __future__ import annotations

import io
import json

import pytest

from schemas.tsv import (
    LABELLED_SPLITS,
    MAX_RAW_CHARS,
    Reason,
    Rejection,
    TsvRow,
    is_header,
    iter_lines,
    parse_line,
)


def parse(raw: bytes, split: str = "train", line: int = 2, decode_errors: str = "strict"):
    return parse_line(split, f"{split}.tsv", line, raw, decode_errors)


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
    assert row == TsvRow(
        split="train", file="train.tsv", line=7, id="d1", alpha="a", label="positive", text_a="A fine film.", text_b=""
    )


def test_row_with_text_b():
    row = parse("q-9\tx\t1\tWhat is it?\tIt is a caf\u00e9.".encode("utf-8"), split="dev")
    assert isinstance(row, TsvRow)
    assert (row.split, row.id, row.alpha, row.label, row.text_a, row.text_b) == (
        "dev", "q-9", "x", "1", "What is it?", "It is a caf\u00e9."
    )


def test_row_with_empty_text_b_field():
    row = parse(b"d1\ta\t0\ttext\t")
    assert isinstance(row, TsvRow)
    assert (row.text_a, row.text_b) == ("text", "")


def test_row_keeps_text_and_alpha_verbatim_but_strips_id_and_label():
    row = parse(b" d1 \t a \t pos \t  spaced text  \t b ")
    assert isinstance(row, TsvRow)
    assert (row.id, row.alpha, row.label, row.text_a, row.text_b) == ("d1", " a ", "pos", "  spaced text  ", " b ")


def test_empty_alpha_is_fine():
    row = parse(b"d1\t\tpos\ttext")
    assert isinstance(row, TsvRow) and row.alpha == ""


# --- header -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [b"id\talpha\tlabel\ttext_a", b"id\talpha\tlabel\ttext_a\ttext_b", b"ID\tALPHA_COL\tLABEL\tTEXT_A\tTEXT_B", b"guid\tx\tclass\tsentence"],
)
def test_header_on_line_1_is_skipped(header):
    assert parse(header, line=1) is None
    assert is_header(header.decode().split("\t"))


def test_header_only_on_line_1():
    row = parse(b"id\talpha\tlabel\ttext_a", line=2)
    assert isinstance(row, TsvRow)  # a data row that happens to look like a header
    assert (row.id, row.label, row.text_a) == ("id", "label", "text_a")


def test_data_row_on_line_1_is_not_a_header():
    row = parse(b"d1\ta\tpositive\ttext", line=1)
    assert isinstance(row, TsvRow) and row.line == 1
    assert not is_header(["d1", "a", "positive", "text"])
    assert not is_header(["id", "alpha"])
    assert not is_header(["id", "alpha", "positive", "text"])


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
    assert isinstance(row, TsvRow) and row.label == "" and row.split == "test"
    labelled = parse(b"d2\ta\tneg\ttext", split="test")
    assert isinstance(labelled, TsvRow) and labelled.label == "neg"


def test_invalid_utf8_strict():
    raw = b"d1\ta\tpos\tcaf\xe9 au lait"
    rejection = assert_rejected(parse(raw), Reason.INVALID_UTF8)
    assert "UTF-8" in rejection.detail and "12" in rejection.detail  # the byte offset
    assert rejection.raw == "d1\ta\tpos\tcaf\\xe9 au lait"
    assert parse(raw, decode_errors="strict") == rejection  # strict is the default


def test_invalid_utf8_replace():
    row = parse(b"d1\ta\tpos\tcaf\xe9 au lait\t\xff\xfe", decode_errors="replace")
    assert isinstance(row, TsvRow)
    assert row.text_a == "caf\ufffd au lait"
    assert row.text_b == "\ufffd\ufffd"


def test_invalid_utf8_in_id_under_replace():
    row = parse(b"\xff\ta\tpos\ttext", decode_errors="replace")
    assert isinstance(row, TsvRow) and row.id == "\ufffd"


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
    assert isinstance(row, TsvRow)
    assert row.text_b == "text b"


def test_only_newline_ends_a_line():
    text = "d1\ta\tpos\tone\rtwo\x0bthree\x0cfour\x1cfive\u0085six\u2028seven\u2029eight"
    data = text.encode("utf-8") + b"\n"
    ((number, raw),) = lines_of(data)
    row = parse(raw, line=number)
    assert isinstance(row, TsvRow)
    assert row.text_a == "one\rtwo\x0bthree\x0cfour\x1cfive\u0085six\u2028seven\u2029eight"


def test_blank_lines_keep_their_numbers():
    assert lines_of(b"a\n\nb\n") == [(1, b"a"), (2, b""), (3, b"b")]
    assert_rejected(parse(b"", line=2), Reason.WRONG_FIELD_COUNT)


def test_bom_is_dropped_before_header_detection():
    data = b"\xef\xbb\xbfid\talpha\tlabel\ttext_a\r\nd1\ta\tpos\ttext\r\n"
    lines = lines_of(data)
    assert lines[0] == (1, b"id\talpha\tlabel\ttext_a")
    assert parse(lines[0][1], line=1) is None
    assert isinstance(parse(lines[1][1], line=2), TsvRow)


def test_bom_is_dropped_from_a_first_data_row():
    ((number, raw),) = lines_of(b"\xef\xbb\xbfd1\ta\tpos\ttext\n")
    row = parse(raw, line=number)
    assert isinstance(row, TsvRow) and row.id == "d1"


def test_bom_only_at_the_start_of_the_file():
    lines = lines_of(b"d1\ta\tpos\tx\n\xef\xbb\xbfd2\ta\tpos\ty\n")
    assert lines[1] == (2, b"\xef\xbb\xbfd2\ta\tpos\ty")


def test_whole_file_accounting():
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
    results = [parse_line("dev", "dev.tsv", n, raw) for n, raw in iter_lines(io.BytesIO(data))]
    assert results[0] is None
    assert [r.id for r in results if isinstance(r, TsvRow)] == ["d1", "d2"]
    assert [(r.line, r.reason) for r in results if isinstance(r, Rejection)] == [
        (4, "empty_id"), (5, "wrong_field_count"), (6, "missing_label"), (7, "invalid_utf8"), (8, "empty_text_a"),
    ]
