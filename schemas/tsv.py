"""The input TSV format: ``ID, ALPHA_COL, LABEL, TEXT_A[, TEXT_B]`` and its row parser.

The parser never raises for a bad row: it returns a ``Rejection`` with a reason code, a
human-readable detail, the file, the line number and the raw line (cut to a bounded size), so
that read = written + rejected always holds.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import IO, Iterator

__all__ = [
    "SPLITS",
    "REQUIRED_SPLITS",
    "LABELLED_SPLITS",
    "MAX_RAW_CHARS",
    "Reason",
    "TsvRow",
    "Rejection",
    "iter_lines",
    "is_header",
    "parse_line",
]

SPLITS = ("train", "dev", "test")
REQUIRED_SPLITS = ("train", "dev")
# Splits whose rows must carry a label; test rows may leave LABEL empty (stored as -1).
LABELLED_SPLITS = ("train", "dev")
MAX_RAW_CHARS = 1000
_UTF8_BOM = b"\xef\xbb\xbf"
_HEADER_ID = {"id", "guid", "index", "idx", "doc_id", "#id"}
_HEADER_LABEL = {"label", "labels", "class", "category", "target", "y"}
# Not escaped by json.dumps(ensure_ascii=False) (it escapes only the C0 controls), yet line
# breaks to str.splitlines and to JavaScript before ES2019; they can only occur inside strings.
_JSON_LINE_BREAK_ESCAPES = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


class Reason:
    """Reason codes of rejected rows (stable strings: they are counted in the manifest)."""

    WRONG_FIELD_COUNT = "wrong_field_count"
    EMPTY_ID = "empty_id"
    EMPTY_TEXT_A = "empty_text_a"
    MISSING_LABEL = "missing_label"
    INVALID_UTF8 = "invalid_utf8"
    DUPLICATE_ID = "duplicate_id"
    UNSEEN_LABEL = "unseen_label"
    NO_TOKENS = "no_tokens"


@dataclass(frozen=True)
class TsvRow:
    """One well-formed input row, with where it came from.

    ``raw`` is the line as read, cut like a rejection's raw text, for a rejection decided later
    (duplicate ID, unseen label, no tokens). It is kept only where the fields cannot give it
    back: spaces around ID or LABEL, an empty 5th field, or a text that a later step cut
    (``--max_doc_chars``, which sets it from ``line_as_read`` before cutting). It takes no part
    in comparisons.
    """

    split: str
    file: str
    line: int
    id: str
    alpha: str
    label: str
    text_a: str
    text_b: str
    raw: str = field(default="", compare=False, repr=False)

    def line_as_read(self) -> str:
        """The line as read (cut at ``MAX_RAW_CHARS``), for the dead-letter output."""
        if self.raw:
            return self.raw
        fields = [self.id, self.alpha, self.label, self.text_a] + ([self.text_b] if self.text_b else [])
        return _cut("\t".join(fields))


@dataclass(frozen=True)
class Rejection:
    """A row that was not written, and why."""

    split: str
    file: str
    line: int
    reason: str
    detail: str
    raw: str

    def to_json(self) -> str:
        """One JSON object on one line, for a ``.jsonl`` file; text is written as UTF-8.

        The three non-ASCII characters that line-splitting readers (Python's
        ``str.splitlines``, older JavaScript) take for line breaks are escaped, so that any
        reader sees exactly one object per line; JSON readers decode them to the same text.
        """
        text = json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)
        return text.translate(_JSON_LINE_BREAK_ESCAPES)

    @staticmethod
    def of_row(row: TsvRow, reason: str, detail: str) -> "Rejection":
        """The rejection of a parsed row, carrying the line as read (``row.raw``, else rebuilt)."""
        return Rejection(row.split, row.file, row.line, reason, detail, row.line_as_read())


def _cut(text: str) -> str:
    return text if len(text) <= MAX_RAW_CHARS else text[:MAX_RAW_CHARS] + f"...[{len(text)} chars]"


def iter_lines(handle: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line_number, raw_bytes)`` from 1, without the line ending (LF or CRLF).

    Only ``\\n`` ends a line (not the other characters ``str.splitlines`` treats as breaks), and
    a UTF-8 byte-order mark at the start of the file is dropped before the file is cut into
    lines: it is an encoding mark, not content. A file holding only a BOM is therefore an empty
    file (no lines), and a BOM followed by a line ending is one blank line, exactly as the same
    file without its BOM (blank lines are lines: ``parse_line`` rejects them as
    ``wrong_field_count``, so that every line is accounted for).
    """
    for number, raw in enumerate(handle, start=1):
        if number == 1 and raw.startswith(_UTF8_BOM):
            raw = raw[len(_UTF8_BOM) :]
            if not raw:  # the BOM was the whole file: no line at all
                return
        if raw.endswith(b"\n"):
            raw = raw[:-1]
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        yield number, raw


def is_header(fields: list[str]) -> bool:
    """True for a header row such as ``id  alpha  label  text_a  text_b``."""
    return (
        len(fields) >= 3
        and fields[0].strip().lower() in _HEADER_ID
        and fields[2].strip().lower() in _HEADER_LABEL
    )


def parse_line(
    split: str, file: str, line: int, raw: bytes, decode_errors: str = "strict"
) -> TsvRow | Rejection | None:
    """Parse one raw line.

    Args:
        split: ``train``, ``dev`` or ``test``.
        file: the file's path, for messages.
        line: 1-based line number.
        raw: the line's bytes without its ending.
        decode_errors: ``strict`` rejects undecodable bytes; ``replace`` substitutes U+FFFD.

    Returns:
        A ``TsvRow``, a ``Rejection``, or None when line 1 is a header.
    """
    try:
        text = raw.decode("utf-8", errors=decode_errors)
    except UnicodeDecodeError as error:
        return Rejection(
            split, file, line, Reason.INVALID_UTF8,
            f"bytes {error.start}-{error.end} are not valid UTF-8 ({error.reason})",
            _cut(raw.decode("utf-8", errors="backslashreplace")),
        )
    fields = text.split("\t")
    if line == 1 and is_header(fields):
        return None
    if len(fields) not in (4, 5):
        return Rejection(
            split, file, line, Reason.WRONG_FIELD_COUNT,
            f"expected 4 or 5 tab-separated fields (ID, ALPHA_COL, LABEL, TEXT_A[, TEXT_B]), got {len(fields)}",
            _cut(text),
        )
    row_id, label = fields[0].strip(), fields[2].strip()
    # Rebuilt from the fields, the line would lose outer spaces and an empty 5th field.
    rebuilds = row_id == fields[0] and label == fields[2] and (len(fields) == 4 or fields[4] != "")
    row = TsvRow(
        split=split,
        file=file,
        line=line,
        id=row_id,
        alpha=fields[1],
        label=label,
        text_a=fields[3],
        text_b=fields[4] if len(fields) == 5 else "",
        raw="" if rebuilds else _cut(text),
    )
    # Rejections here carry the line as read, not one rebuilt from the stripped fields.
    if not row.id:
        return Rejection(split, file, line, Reason.EMPTY_ID, "ID is empty", _cut(text))
    if not row.text_a.strip():
        return Rejection(split, file, line, Reason.EMPTY_TEXT_A, "TEXT_A is empty", _cut(text))
    if not row.label and split in LABELLED_SPLITS:
        return Rejection(
            split, file, line, Reason.MISSING_LABEL, f"LABEL is empty; every {split} row needs one", _cut(text)
        )
    return row
