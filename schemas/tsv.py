"""The TSV input format: lines, the header that names columns, and the row parser.

Without a header a TSV file has the GLUE layout of the seed format,
``ID, ALPHA_COL, LABEL, TEXT_A[, TEXT_B]`` (4 or 5 fields, no quoting). When line 1 names
columns (``looks_like_header``), the header decides which field is which, and every row must
have as many fields as the header. Only ``\\n`` ends a line, one ``\\r`` before it is dropped,
and a UTF-8 byte-order mark at the start of the file is not content.
"""

from __future__ import annotations

from typing import IO, Iterator

from schemas.columns import GLUE_LAYOUT, ColumnMap, ColumnSpec, looks_like_header, resolve_columns
from schemas.rows import LABELLED_SPLITS, REPEATED_HEADER_DETAIL, Reason, Rejection, Row, cut_raw, split_label_cell

__all__ = [
    "UTF8_BOM",
    "iter_lines",
    "strip_line_ending",
    "is_header",
    "tsv_layout",
    "is_header_again",
    "parse_line",
]

UTF8_BOM = b"\xef\xbb\xbf"


def strip_line_ending(raw: bytes) -> bytes:
    """A line without its ``\\n`` and one ``\\r`` before it."""
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    return raw


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
        if number == 1 and raw.startswith(UTF8_BOM):
            raw = raw[len(UTF8_BOM) :]
            if not raw:  # the BOM was the whole file: no line at all
                return
        yield number, strip_line_ending(raw)


def is_header(fields: list[str], spec: ColumnSpec = ColumnSpec()) -> bool:
    """True for a first line that names columns, such as ``id  alpha  label  text_a  text_b``."""
    return looks_like_header(fields, spec)


def tsv_layout(first_line: bytes, spec: ColumnSpec, *, file: str, labelled: bool) -> tuple[ColumnMap, bool]:
    """A TSV file's layout from its first line (BOM and line ending removed): ``(layout, has_header)``.

    Raises:
        ValueError: line 1 is a header that does not give the columns asked for, or the user
            named columns (``--text_column``...) of a file without a header.
    """
    fields = first_line.decode("utf-8", errors="replace").split("\t") if first_line else []
    if fields and is_header(fields, spec):
        return resolve_columns([f.replace("\ufeff", "").strip() for f in fields], spec, file=file, labelled=labelled), True
    if spec.given():
        flags = ", ".join(f"--{role}_column" if role != "text_b" else "--text_b_column" for role in spec.given())
        raise ValueError(
            f"{file} has no header (line 1 is a row of the GLUE layout ID, ALPHA_COL, LABEL, TEXT_A[, TEXT_B]), "
            f"so {flags} cannot name its columns; add a header line or drop the flag"
        )
    return GLUE_LAYOUT, False


def is_header_again(fields: list[str], layout: ColumnMap) -> bool:
    """Whether a line after line 1 repeats the header of a file that has one (files joined with
    ``cat``): read as a row, it would add a label named after the label column."""
    return [f.replace("\ufeff", "").strip() for f in fields] == list(layout.columns)


def _field_count_ok(count: int, layout: ColumnMap) -> bool:
    """The GLUE layout has 4 or 5 fields; a header's layout as many as the header, where a last
    TEXT_B column may be left out and a GLUE-shaped header (ID, ALPHA, LABEL, TEXT_A) admits it."""
    if layout.positional:
        return count in (4, 5)
    columns = len(layout.columns)
    if count == columns:
        return True
    if count == columns - 1 and layout.text_b is not None and layout.index("text_b") == columns - 1:
        return True
    return count == 5 and columns == 4 and layout.text_b is None and (
        layout.index("id"), layout.index("label"), layout.index("text")) == (0, 2, 3)


def _expected_fields(layout: ColumnMap) -> str:
    if layout.positional:
        return "4 or 5 tab-separated fields (ID, ALPHA_COL, LABEL, TEXT_A[, TEXT_B])"
    return f"{len(layout.columns)} tab-separated fields, as the header ({', '.join(layout.columns)})"


def parse_line(
    split: str,
    file: str,
    line: int,
    raw: bytes,
    decode_errors: str = "strict",
    layout: ColumnMap = GLUE_LAYOUT,
    offset: int = 0,
    label_separator: str | None = None,
) -> Row | Rejection:
    """Parse one raw data line (not a header).

    Args:
        split: ``train``, ``dev`` or ``test``.
        file: the file's path, for messages.
        line: 1-based line number.
        raw: the line's bytes without its ending.
        decode_errors: ``strict`` rejects undecodable bytes; ``replace`` substitutes U+FFFD.
        layout: the file's columns (``tsv_layout``); the GLUE layout by default.
        offset: the line's byte offset in the file.
        label_separator: None reads LABEL as one label (a separator in it is part of the label);
            a string (``--multi_label``) reads it as a set split on it (``schemas.rows.
            split_label_cell``). An empty LABEL is then the empty set in train and dev, where
            every row is labelled, and an unlabelled row in test.

    Returns:
        A ``Row`` or a ``Rejection``.
    """
    try:
        text = raw.decode("utf-8", errors=decode_errors)
    except UnicodeDecodeError as error:
        return Rejection(
            split, file, line, Reason.INVALID_UTF8,
            f"bytes {error.start}-{error.end} are not valid UTF-8 ({error.reason})",
            cut_raw(raw.decode("utf-8", errors="backslashreplace")), offset,
        )
    fields = text.split("\t")
    count = len(fields)
    if not _field_count_ok(count, layout):
        return Rejection(
            split, file, line, Reason.WRONG_FIELD_COUNT,
            f"expected {_expected_fields(layout)}, got {count}", cut_raw(text), offset,
        )
    if not layout.positional and count == len(layout.columns) and is_header_again(fields, layout):
        return Rejection(split, file, line, Reason.REPEATED_HEADER, REPEATED_HEADER_DETAIL, cut_raw(text), offset)
    at_id, at_label, at_text, at_text_b, at_alpha = layout.positions
    row_id = fields[at_id].strip() if at_id is not None else ""
    label = fields[at_label].strip() if at_label is not None else ""
    if at_text_b is not None:
        text_b = fields[at_text_b] if at_text_b < count else ""
    else:  # the optional 5th field of a GLUE-shaped 4-column header
        text_b = fields[4] if count > len(layout.columns) else ""
    # Rebuilt from the fields, the line would lose outer spaces, an empty 5th field, or the order.
    rebuilds = layout.positional and row_id == fields[0] and label == fields[2] and (count == 4 or fields[4] != "")
    labels = None
    if label_separator is not None and (label or split in LABELLED_SPLITS):
        labels = split_label_cell(label, label_separator)
    row = Row(
        split=split, file=file, line=line, id=row_id, alpha=fields[at_alpha] if at_alpha is not None else "",
        label=label, text_a=fields[at_text], text_b=text_b, raw="" if rebuilds else cut_raw(text), offset=offset,
        labels=labels,
    )
    # Rejections here carry the line as read, not one rebuilt from the stripped fields.
    if layout.id is not None and not row.id:
        return Rejection(split, file, line, Reason.EMPTY_ID, "ID is empty", cut_raw(text), offset)
    if not row.text_a.strip():
        return Rejection(split, file, line, Reason.EMPTY_TEXT_A, "TEXT_A is empty", cut_raw(text), offset)
    if not row.label and split in LABELLED_SPLITS and label_separator is None:
        return Rejection(
            split, file, line, Reason.MISSING_LABEL, f"LABEL is empty; every {split} row needs one", cut_raw(text), offset
        )
    return row
