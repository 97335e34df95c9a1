"""What every input reader produces: parsed rows, rejected rows and the reasons for rejecting.

Whatever the format (TSV, CSV, JSONL, Parquet), a reader never raises for a bad row: it gives
a ``Rejection`` with a reason code, a human-readable detail, where the row was (file, line,
byte offset or Parquet row index) and the row as read (cut to a bounded size), so that
read = written + rejected always holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SPLITS",
    "REQUIRED_SPLITS",
    "LABELLED_SPLITS",
    "MAX_RAW_CHARS",
    "Reason",
    "Row",
    "Rejection",
    "cut_raw",
    "describe_place",
    "REPEATED_HEADER_DETAIL",
    "DEFAULT_LABEL_SEPARATOR",
    "split_label_cell",
    "MULTI_LABEL_FLAG_HINT",
]

SPLITS = ("train", "dev", "test")
REQUIRED_SPLITS = ("train", "dev")
# Splits whose rows must carry a label; test rows may leave it empty (stored as -1).
LABELLED_SPLITS = ("train", "dev")
MAX_RAW_CHARS = 1000
# What separates the labels of a set in a text cell (TSV, CSV, a string in JSON or Parquet)
# with --multi_label (--label_separator).
DEFAULT_LABEL_SEPARATOR = "|"
# How a rejection of a label set read without --multi_label ends: the flag that reads it.
MULTI_LABEL_FLAG_HINT = "pass --multi_label to read a cell as a set of labels"
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
    # JSONL, CSV and Parquet inputs
    INVALID_JSON = "invalid_json"
    INVALID_CSV = "invalid_csv"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    # a TSV or CSV line equal to the file's header, after line 1 (files joined with cat)
    REPEATED_HEADER = "repeated_header"
    # an integer label beyond the label names given (--label_names, a Parquet file's ClassLabel)
    UNNAMED_LABEL = "unnamed_label"


def cut_raw(text: str) -> str:
    """A row as read, cut at ``MAX_RAW_CHARS`` characters, saying how long it was."""
    return text if len(text) <= MAX_RAW_CHARS else text[:MAX_RAW_CHARS] + f"...[{len(text)} chars]"


REPEATED_HEADER_DETAIL = "the header line again, inside the file (files joined with cat?); it is not a row"


def split_label_cell(text: str, separator: str) -> tuple[str, ...]:
    """The label set a text cell holds (``--multi_label``): split on ``separator``, each label
    stripped, empty pieces dropped (``a||b``, a trailing ``|``, a blank cell: none names a label),
    each label once, sorted (the set, not the order it was written in)."""
    return tuple(sorted({piece.strip() for piece in text.split(separator)} - {""}))


def describe_place(file: str, line: int | None, offset: int) -> str:
    """Where a row is, for messages: ``train.tsv:17`` or ``part.parquet row 41``."""
    return f"{file}:{line}" if line else f"{file} row {offset}"


@dataclass(frozen=True)
class Row:
    """One well-formed input row, with where it came from.

    ``line`` is the 1-based line where the row starts, counted from the first line its read
    task read: the file's own line number when the task starts at the top of the file (always,
    except for the byte ranges of a large plain file, whose line numbers the pipeline resolves
    when it writes). It is 0 for Parquet rows, which have a row index (``offset``) instead.
    ``offset`` is the byte offset of the row's first byte in the (decompressed) file, or the
    Parquet row index. An empty ``id`` means the corpus has no ID column: the pipeline derives
    one from the file and line (or row) when it writes the row.

    ``raw`` is the row as read, cut like a rejection's raw text, for a rejection decided later
    (duplicate ID, unseen label, no tokens). TSV rows keep it only where the fields cannot give
    it back (``line_as_read``); rows of the other formats always keep it. It takes no part in
    comparisons.

    ``labels`` is the row's label set when the corpus is read with ``--multi_label``: distinct,
    stripped, sorted labels (``()``: a document with no label, a valid answer), or None for an
    unlabelled row (test only). Read without ``--multi_label`` it is always None and ``label``
    is the label ("" unlabelled). With it, ``label`` keeps the label cell as text (a TSV field,
    for ``line_as_read``), and only ``labels`` counts.
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
    offset: int = field(default=0, compare=False)
    labels: tuple[str, ...] | None = None

    def line_as_read(self) -> str:
        """The row as read (cut at ``MAX_RAW_CHARS``), for the dead-letter output."""
        if self.raw:
            return self.raw
        fields = [self.id, self.alpha, self.label, self.text_a] + ([self.text_b] if self.text_b else [])
        return cut_raw("\t".join(fields))


@dataclass(frozen=True)
class Rejection:
    """A row that was not written, and why.

    ``line`` and ``offset`` mean what they mean in ``Row``; ``line`` is None for Parquet rows
    and for a line the pipeline could not place. ``file_index`` and ``range_start`` (the read
    task's first byte) are the pipeline's own bookkeeping, used to turn a task-relative line
    into the file's line number; they are not written out.
    """

    split: str
    file: str
    line: int | None
    reason: str
    detail: str
    raw: str
    offset: int = 0
    file_index: int = field(default=0, compare=False, repr=False)
    range_start: int = field(default=0, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "file": self.file,
            "line": self.line,
            "offset": self.offset,
            "reason": self.reason,
            "detail": self.detail,
            "raw": self.raw,
        }

    def to_json(self) -> str:
        """One JSON object on one line, for a ``.jsonl`` file; text is written as UTF-8.

        The three non-ASCII characters that line-splitting readers (Python's
        ``str.splitlines``, older JavaScript) take for line breaks are escaped, so that any
        reader sees exactly one object per line; JSON readers decode them to the same text.
        """
        text = json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True)
        return text.translate(_JSON_LINE_BREAK_ESCAPES)

    @staticmethod
    def of_row(row: Row, reason: str, detail: str) -> "Rejection":
        """The rejection of a parsed row, carrying the row as read (``row.raw``, else rebuilt)."""
        return Rejection(row.split, row.file, row.line or None, reason, detail, row.line_as_read(), row.offset)
