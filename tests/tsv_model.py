"""An independent model of how a TSV file is cut into lines, for the fuzz tests
(``test_fuzz_pipeline.py``) and the atheris harness (``fuzz_atheris_tsv.py``).

It imports nothing of ours on purpose: the harness must import ``schemas.tsv`` itself, under
atheris' instrumentation.
"""

from __future__ import annotations

__all__ = ["BOM", "model_lines"]

BOM = b"\xef\xbb\xbf"


def model_lines(data: bytes) -> list[bytes]:
    """A file's lines: a leading BOM is not content, only LF ends a line, one CR before it goes."""
    if data.startswith(BOM):
        data = data[len(BOM):]
    if not data:
        return []
    pieces = data.split(b"\n")
    if pieces[-1] == b"":  # the last line had its ending: no line after it
        pieces.pop()
    return [piece[:-1] if piece.endswith(b"\r") else piece for piece in pieces]
