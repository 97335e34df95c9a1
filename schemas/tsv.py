"""The input TSV format: ``ID, ALPHA_COL, LABEL, TEXT_A[, TEXT_B]`` and its row parser.

The parser never raises for a bad row: it returns a ``Rejection`` with a reason code, a
human-readable detail, the file, the line number and the raw line (cut to a bounded size), so
that read = written + rejected always holds.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
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
    """One well-formed input row, with where it came from."""

    split: str
    file: str
    line: int
    id: str
    alpha: str
    label: str
    text_a: str
    text_b: str


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
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)

    @staticmethod
    def of_row(row: TsvRow, reason: str, detail: str) -> "Rejection":
        fields = [row.id, row.alpha, row.label, row.text_a] + ([row.text_b] if row.text_b else [])
        return Rejection(row.split, row.file, row.line, reason, detail, _cut("\t".join(fields)))


def _cut(text: str) -> str:
    return text if len(text) <= MAX_RAW_CHARS else text[:MAX_RAW_CHARS] + f"...[{len(text)} chars]"


def iter_lines(handle: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line_number, raw_bytes)`` from 1, without the line ending (LF or CRLF).

    Only ``\\n`` ends a line (not the other characters ``str.splitlines`` treats as breaks), and
    a UTF-8 byte-order mark at the start of the file is dropped.
    """
    for number, raw in enumerate(handle, start=1):
        if number == 1 and raw.startswith(_UTF8_BOM):
            raw = raw[len(_UTF8_BOM) :]
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
    row = TsvRow(
        split=split,
        file=file,
        line=line,
        id=fields[0].strip(),
        alpha=fields[1],
        label=fields[2].strip(),
        text_a=fields[3],
        text_b=fields[4] if len(fields) == 5 else "",
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
