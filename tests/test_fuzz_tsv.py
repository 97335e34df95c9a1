"""Property (fuzz) tests of the TSV row reader: ``schemas.tsv.parse_line`` and ``iter_lines``.

Arbitrary bytes (NUL, CR, tabs, a BOM, invalid UTF-8, very long lines) must never make the
parser raise: every line is a ``Row`` or a ``Rejection`` with a known reason and a bounded raw
text (a header is the reader's business, decided from the file's first line).

The number of examples comes from a Hypothesis profile chosen by ``SPANWISE_FUZZ_PROFILE``:
``ci`` (default, fast) or ``long``::

    SPANWISE_FUZZ_PROFILE=long .venv/bin/python -m pytest -q tests/test_fuzz_tsv.py tests/test_fuzz_pipeline.py
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.columns import ColumnSpec
from schemas.rows import LABELLED_SPLITS, MAX_RAW_CHARS, SPLITS, Reason, Rejection, Row
from schemas.tsv import is_header, iter_lines, parse_line, tsv_layout

settings.register_profile(
    "ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.register_profile("long", max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PROFILE = os.environ.get("SPANWISE_FUZZ_PROFILE", "ci")
settings.load_profile(PROFILE)

REASONS = {value for name, value in vars(Reason).items() if name.isupper()}
# the longest raw text a Rejection may carry: MAX_RAW_CHARS and the "...[N chars]" suffix
RAW_LIMIT = MAX_RAW_CHARS + 40

# Bytes that matter to the format, mixed with arbitrary ones.
_SPECIAL = [b"\t", b"\r", b"\x00", b"\xef\xbb\xbf", b"\xff", b"\xc3", b"\xc3\xa9", b"\xed\xa0\x80",
            b" ", b"id", b"label", b"a", b"\xe2\x80\xa8", b"\x85", b"\xf0\x9f\x99\x82"]
line_bytes = st.one_of(
    st.binary(max_size=200),
    st.lists(st.one_of(st.sampled_from(_SPECIAL), st.binary(max_size=8)), max_size=40).map(b"".join),
)
# Lines as the reader gives them: no LF inside.
raw_lines = line_bytes.map(lambda b: b.replace(b"\n", b""))


def check_result(result, split: str, line: int, raw: bytes) -> None:
    """The invariants of one parse_line result."""
    assert isinstance(result, (Row, Rejection)), type(result)
    assert result.split == split and result.line == line
    if isinstance(result, Rejection):
        assert result.reason in REASONS
        assert result.detail
        assert isinstance(result.raw, str) and len(result.raw) <= RAW_LIMIT
        result.to_json()  # serializable, whatever the bytes were
        return
    # a row: fields come from a decodable line with 4 or 5 fields and the required values
    assert len(raw.split(b"\t")) in (4, 5)
    assert result.id and result.id == result.id.strip()
    assert result.text_a.strip()
    assert "\t" not in result.id + result.alpha + result.label + result.text_a + result.text_b
    if split in LABELLED_SPLITS:
        assert result.label


@given(raw=raw_lines, split=st.sampled_from(SPLITS), line=st.integers(1, 3), decode=st.sampled_from(["strict", "replace"]))
def test_parse_line_never_raises(raw, split, line, decode):
    result = parse_line(split, "f.tsv", line, raw, decode)
    check_result(result, split, line, raw)
    if decode == "replace" and isinstance(result, Rejection):
        assert result.reason != Reason.INVALID_UTF8


@given(raw=raw_lines)
def test_invalid_utf8_is_the_reason_exactly_when_undecodable(raw):
    try:
        raw.decode("utf-8")
        decodable = True
    except UnicodeDecodeError:
        decodable = False
    result = parse_line("train", "f.tsv", 2, raw)
    assert (isinstance(result, Rejection) and result.reason == Reason.INVALID_UTF8) == (not decodable)


fields = st.text(alphabet=st.characters(blacklist_characters="\t\n", blacklist_categories=("Cs",)), max_size=20)


@given(values=st.lists(fields, min_size=0, max_size=7), split=st.sampled_from(SPLITS))
def test_field_count_decides(values, split):
    raw = "\t".join(values).encode("utf-8")
    result = parse_line(split, "f.tsv", 2, raw)
    count = len(raw.decode("utf-8").split("\t"))
    if count not in (4, 5):
        assert isinstance(result, Rejection) and result.reason == Reason.WRONG_FIELD_COUNT
    else:
        check_result(result, split, 2, raw)
        if isinstance(result, Row):
            assert result.id == values[0].strip() and result.label == values[2].strip()
            assert result.text_a == values[3] and result.text_b == (values[4] if count == 5 else "")


def cut(text: str) -> str:
    return text if len(text) <= MAX_RAW_CHARS else f"{text[:MAX_RAW_CHARS]}...[{len(text)} chars]"


@given(values=st.lists(fields, min_size=4, max_size=5), pad=st.sampled_from(["", " ", "  \u3000"]),
       long_text=st.sampled_from([0, MAX_RAW_CHARS, 3 * MAX_RAW_CHARS]))
def test_later_rejection_carries_the_line_as_read(values, pad, long_text):
    """Rejection.of_row (duplicate ID, unseen label, no tokens) keeps spaces, an empty 5th field, the length."""
    empty_fifth = [""] if len(values) == 5 else []
    values = [pad + values[0] + "x" + pad, values[1], pad + values[2] + "y" + pad, values[3] + "t" + "z" * long_text]
    line = "\t".join(values + empty_fifth)
    row = parse_line("dev", "f.tsv", 2, line.encode("utf-8"))
    assert isinstance(row, Row)
    rejection = Rejection.of_row(row, Reason.DUPLICATE_ID, "ID already used")
    assert rejection.raw == cut(line) and rejection.line == 2 and rejection.reason == Reason.DUPLICATE_ID


def test_later_rejection_raw_for_plain_rows_costs_nothing():
    """A row that its fields give back keeps no copy of its line (rows travel through Beam)."""
    row = parse_line("dev", "f.tsv", 2, b"d1\ta\tpos\ttext\tpair")
    assert isinstance(row, Row) and row.raw == ""
    assert Rejection.of_row(row, Reason.UNSEEN_LABEL, "x").raw == "d1\ta\tpos\ttext\tpair"
    padded = parse_line("dev", "f.tsv", 2, b" d1 \ta\t pos\ttext\t")
    assert padded == Row("dev", "f.tsv", 2, "d1", "a", "pos", "text", "")  # raw takes no part in ==
    assert Rejection.of_row(padded, Reason.UNSEEN_LABEL, "x").raw == " d1 \ta\t pos\ttext\t"


@given(label=st.text(alphabet="ab c", min_size=1, max_size=10).filter(lambda s: s.strip()))
def test_labels_with_spaces_are_kept_inner(label):
    row = parse_line("train", "f.tsv", 2, f"id1\tx\t{label}\tsome text".encode())
    assert isinstance(row, Row) and row.label == label.strip()


@given(lines=st.lists(raw_lines, max_size=20), bom=st.booleans(), crlf=st.lists(st.booleans(), max_size=20),
       final_newline=st.booleans())
def test_iter_lines_numbers_every_line_and_strips_endings(lines, bom, crlf, final_newline):
    endings = [b"\r\n" if (crlf[i] if i < len(crlf) else False) else b"\n" for i in range(len(lines))]
    data = (b"\xef\xbb\xbf" if bom else b"") + b"".join(line + end for line, end in zip(lines, endings))
    truncated = bool(lines and lines[-1] and not final_newline)  # last line without its ending
    if truncated:
        data = data[: -len(endings[-1])]
    got = list(iter_lines(io.BytesIO(data)))
    # a BOM is not content: a file that is only a BOM has no line, like an empty file
    expected_count = 0 if data in (b"", b"\xef\xbb\xbf") else len(lines)
    assert [n for n, _ in got] == list(range(1, expected_count + 1))
    for (number, raw), original in zip(got, lines):
        assert b"\n" not in raw
        expected = original
        if number == 1 and bom is False and original.startswith(b"\xef\xbb\xbf"):
            expected = original[3:]  # a BOM at the very start of the file is always dropped
        if expected.endswith(b"\r") and (endings[number - 1] == b"\n" or (number == len(lines) and truncated)):
            # a line ending in CR before LF reads like a CRLF line
            expected = expected[:-1]
        assert raw == expected
        check_result(parse_line("dev", "f.tsv", number, raw), "dev", number, raw)


def test_bom_then_header_is_a_header():
    (number, raw), = list(iter_lines(io.BytesIO(b"\xef\xbb\xbfid\talpha\tlabel\ttext_a\r\n")))
    assert is_header(raw.decode().split("\t"))
    assert tsv_layout(raw, ColumnSpec(), file="f.tsv", labelled=True)[1]


_COLUMN_NAMES = st.permutations(["id", "label", "text", "alpha", "text_b", "extra"])


@given(names=_COLUMN_NAMES, values=st.lists(fields.filter(lambda v: v.strip()), min_size=6, max_size=6),
       split=st.sampled_from(SPLITS))
def test_a_header_in_any_order_maps_each_field_to_its_column(names, values, split):
    """Whatever the order of the header, each role reads the field under its own name."""
    layout, has_header = tsv_layout("\t".join(names).encode(), ColumnSpec(), file="f.tsv", labelled=True)
    assert has_header
    row = parse_line(split, "f.tsv", 2, "\t".join(values).encode("utf-8"), layout=layout)
    by_name = dict(zip(names, values))
    assert isinstance(row, Row), row
    assert (row.id, row.label, row.text_a, row.text_b, row.alpha) == (
        by_name["id"].strip(), by_name["label"].strip(), by_name["text"], by_name["text_b"], by_name["alpha"],
    )


def test_a_header_like_line_is_a_row_to_parse_line():
    result = parse_line("train", "f.tsv", 2, b"id\talpha\tlabel\ttext_a")
    assert isinstance(result, Row)  # an ordinary row whose ID is "id": never silently dropped


@pytest.mark.parametrize("shape", ["good_row", "no_tabs", "many_tabs", "invalid_utf8_at_end", "nul"])
def test_ten_megabyte_line(shape):
    big = 10 * 1024 * 1024
    raw = {
        "good_row": b"id1\tx\tpos\t" + b"word " * (big // 5),
        "no_tabs": b"a" * big,
        "many_tabs": b"\t" * big,
        "invalid_utf8_at_end": b"id1\tx\tpos\t" + b"a" * big + b"\xff",
        "nul": b"id1\tx\tpos\t" + b"\x00" * big,
    }[shape]
    start = time.perf_counter()
    result = parse_line("train", "f.tsv", 2, raw)
    elapsed = time.perf_counter() - start
    check_result(result, "train", 2, raw)
    assert elapsed < 5, elapsed
    if shape in ("good_row", "nul"):
        assert isinstance(result, Row) and len(result.text_a) >= big
    else:
        assert isinstance(result, Rejection)
        assert len(result.raw) <= RAW_LIMIT and result.raw.endswith(" chars]")


# --- a BOM alone, blank lines ----------------------------------------------------------------


@pytest.mark.parametrize(
    "data, lines",
    [
        (b"", []),
        (b"\xef\xbb\xbf", []),  # a BOM alone: an empty file, not one blank line
        (b"\n", [(1, b"")]),
        (b"\xef\xbb\xbf\n", [(1, b"")]),  # as the same file without its BOM: one blank line
        (b"\xef\xbb\xbf\r\n", [(1, b"")]),
        (b"\xef\xbb\xbf\xef\xbb\xbf", [(1, b"\xef\xbb\xbf")]),  # only the first BOM is dropped
        (b"\xef\xbb\xbfd1\ta\tpos\tx", [(1, b"d1\ta\tpos\tx")]),
        (b"\xef\xbb\xbf\nd1\ta\tpos\tx\n\n", [(1, b""), (2, b"d1\ta\tpos\tx"), (3, b"")]),
    ],
    ids=["empty", "bom", "newline", "bom_newline", "bom_crlf", "two_boms", "bom_row_no_newline", "bom_blank_lines"],
)
def test_bom_only_file_has_no_lines_and_blank_lines_count(data, lines):
    assert list(iter_lines(io.BytesIO(data))) == lines
    for number, raw in lines:
        result = parse_line("train", "f.tsv", number, raw)
        if raw in (b"", b"\xef\xbb\xbf"):  # a blank line (or a stray BOM) is read and rejected
            assert isinstance(result, Rejection) and result.reason == Reason.WRONG_FIELD_COUNT
            assert result.detail.endswith("got 1")
        else:
            assert isinstance(result, Row)


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\x85", "\x1c", "\x0b", "\r"])
def test_rejection_json_is_one_line_for_every_line_splitter(char):
    """str.splitlines() must see one JSON object per line of rejected/*.jsonl."""
    rejection = parse_line("train", "f.tsv", 2, f"d1{char}\tx\tpos".encode())
    assert isinstance(rejection, Rejection) and rejection.reason == Reason.WRONG_FIELD_COUNT
    text = rejection.to_json()
    assert text.splitlines() == [text] and char not in text
    assert json.loads(text)["raw"] == f"d1{char}\tx\tpos"
    assert "\u03b1" in parse_line("train", "f.tsv", 2, "\u03b1".encode()).to_json()  # other text stays UTF-8


# --- the atheris harness, bounded ---------------------------------------------------------------

ATHERIS_HARNESS = Path(__file__).with_name("fuzz_atheris_tsv.py")
ATHERIS_RUNS = 20_000 if PROFILE == "ci" else 200_000  # ~2,000 runs/s here


@pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None,
    reason="atheris is not installed (requirements-dev.txt: a wheel for Linux x86_64, Python >= 3.11)",
)
def test_atheris_harness_bounded_run(tmp_path):
    """The coverage-guided harness runs ATHERIS_RUNS inputs without a finding."""
    repo_root = ATHERIS_HARNESS.parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo_root))
    command = [
        sys.executable, str(ATHERIS_HARNESS), f"-runs={ATHERIS_RUNS}", "-seed=1", "-max_len=4096",
        f"-artifact_prefix={tmp_path}/",
    ]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, timeout=1800)
    log = done.stderr.decode("utf-8", errors="replace")
    assert done.returncode == 0, log[-4000:]
    assert re.search(rf"^Done {ATHERIS_RUNS} runs in \d+ second", log, re.MULTILINE), log[-2000:]
    assert not list(tmp_path.glob("crash-*")) and not list(tmp_path.glob("timeout-*"))
