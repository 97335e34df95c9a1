"""Coverage-guided fuzzing (atheris / libFuzzer) of the TSV reader: ``iter_lines`` and ``parse_line``.

Not a pytest module (its name does not start with ``test_``); ``tests/test_fuzz_tsv.py`` runs it
for a bounded number of inputs. Run it by hand with libFuzzer's flags, e.g.::

    .venv/bin/python tests/fuzz_atheris_tsv.py -max_total_time=60
    .venv/bin/python tests/fuzz_atheris_tsv.py -runs=20000 -seed=1
    .venv/bin/python tests/fuzz_atheris_tsv.py crash-<sha1>      # replay a finding

Each input is a whole file (bytes, LF/CRLF, a BOM or not) plus a few choices (split, decode
mode, a prefix that reaches deeper states: BOM, header, the start of a row). Invariants,
checked on every input; a violation raises ``AssertionError`` and libFuzzer saves the input:

* ``iter_lines`` never raises, numbers its lines 1..n, and gives exactly the lines of an
  independent model of the format (BOM dropped, only LF ends a line, one CR before it goes);
* ``parse_line`` never raises and returns a ``Row`` or a ``Rejection``;
* a rejection has a known reason, a detail, a bounded ``raw`` text and one-line JSON that reads
  back to the same values; ``invalid_utf8`` is the reason exactly when strict decoding fails;
* a row comes from a line with 4 or 5 fields; its fields hold no tab, LF, and the ID is
  stripped and non-empty, TEXT_A is not blank, a train/dev row has a label; a rejection made
  from it later (``Rejection.of_row``) carries the line as read, cut like any raw text.
"""

from __future__ import annotations

import io
import json
import sys

import atheris
from tsv_model import BOM, model_lines  # (imports nothing of ours: schemas.tsv is instrumented below)

with atheris.instrument_imports():
    from schemas.rows import LABELLED_SPLITS, MAX_RAW_CHARS, SPLITS, Reason, Rejection, Row
    from schemas.tsv import iter_lines, parse_line

REASONS = frozenset(value for name, value in vars(Reason).items() if name.isupper())
RAW_LIMIT = MAX_RAW_CHARS + 40  # MAX_RAW_CHARS and the "...[N chars]" suffix
PREFIXES = (b"", BOM, b"id\talpha\tlabel\ttext_a\n", BOM + b"ID\tx\tLABEL\n", b"d1\ta\tpos\t", b"d1\ta\t\t")


def check(condition: bool, message: str) -> None:
    """Raise ``AssertionError`` (a finding for libFuzzer) when ``condition`` is false.

    Explicit rather than ``assert``, so that ``python -O`` cannot turn the checks off.
    """
    if not condition:
        raise AssertionError(message)


def cut(text: str) -> str:
    """A raw text as rejections carry it: at most MAX_RAW_CHARS characters and the full length."""
    return text if len(text) <= MAX_RAW_CHARS else f"{text[:MAX_RAW_CHARS]}...[{len(text)} chars]"


def check_parsed(result: object, split: str, line: int, raw: bytes, decode_errors: str) -> None:
    """The invariants of one ``parse_line`` result."""
    try:
        raw.decode("utf-8")
        decodable = True
    except UnicodeDecodeError:
        decodable = False
    check(isinstance(result, (Row, Rejection)), f"unexpected result type {type(result)!r}")
    check(result.split == split and result.line == line, f"wrong split or line in {result!r}")
    is_invalid_utf8 = isinstance(result, Rejection) and result.reason == Reason.INVALID_UTF8
    check(is_invalid_utf8 == (not decodable and decode_errors == "strict"), f"invalid_utf8 mismatch: {result!r}")
    if isinstance(result, Rejection):
        check(result.reason in REASONS, f"unknown reason {result.reason!r}")
        check(bool(result.detail), "a rejection without detail")
        check(isinstance(result.raw, str) and len(result.raw) <= RAW_LIMIT, f"raw text of {len(result.raw)} chars")
        text = result.to_json()
        check(len(text.splitlines()) == 1 and "\n" not in text, "rejection JSON is not one line")
        check(json.loads(text) == result.to_dict(), "rejection JSON does not read back")
        return
    fields = raw.decode("utf-8", errors=decode_errors).split("\t")
    check(len(fields) in (4, 5), f"a row from a line of {len(fields)} fields")
    values = (result.id, result.alpha, result.label, result.text_a, result.text_b)
    check(not any("\t" in value or "\n" in value for value in values), f"tab or LF inside a field: {result!r}")
    check(bool(result.id) and result.id == result.id.strip(), f"bad ID {result.id!r}")
    check(result.label == result.label.strip(), f"label not stripped: {result.label!r}")
    check(bool(result.text_a.strip()), "blank TEXT_A accepted")
    check(bool(result.label) or split not in LABELLED_SPLITS, f"{split} row without a label")
    check(result.text_a == fields[3] and result.text_b == (fields[4] if len(fields) == 5 else ""), "texts changed")
    later = Rejection.of_row(result, Reason.DUPLICATE_ID, "a later rejection")
    check(later.raw == cut("\t".join(fields)), f"of_row raw {later.raw!r} is not the line as read")


def fuzz_one_input(data: bytes) -> None:
    """One fuzz input: a file (with a chosen prefix) read line by line, each line parsed."""
    provider = atheris.FuzzedDataProvider(data)
    split = SPLITS[provider.ConsumeIntInRange(0, len(SPLITS) - 1)]
    decode_errors = "replace" if provider.ConsumeBool() else "strict"
    prefix = PREFIXES[provider.ConsumeIntInRange(0, len(PREFIXES) - 1)]
    content = prefix + provider.ConsumeBytes(provider.remaining_bytes())

    lines = list(iter_lines(io.BytesIO(content)))
    check([number for number, _ in lines] == list(range(1, len(lines) + 1)), "line numbers are not 1..n")
    check([raw for _, raw in lines] == model_lines(content), "iter_lines differs from the model")
    for number, raw in lines:
        check(b"\n" not in raw, f"LF inside line {number}")
        check_parsed(parse_line(split, "f.tsv", number, raw, decode_errors), split, number, raw, decode_errors)
    # the whole input as one line, anywhere in a file
    raw = content.replace(b"\n", b"")
    for number in (1, 2):
        check_parsed(parse_line(split, "f.tsv", number, raw, decode_errors), split, number, raw, decode_errors)


def main(argv: list[str]) -> None:
    atheris.Setup(argv, fuzz_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
