"""Which input column is the ID, the label, the text and the second text: found by name.

A corpus names its columns in a header (TSV, CSV), in its objects' keys (JSONL) or in its
schema (Parquet). The user names them with ``--id_column --label_column --text_column
--text_b_column``; without those flags a few common names are tried (``DEFAULT_NAMES``).
Anything that would make a job train on the wrong column (a column asked for that is not
there, two columns that could both be the label, a header on a file that has none) is a
``ValueError`` before any work, naming the file, the columns found and the flag to use.

A TSV file without a header keeps the GLUE layout of the seed format:
``ID, ALPHA_COL, LABEL, TEXT_A[, TEXT_B]`` (``GLUE_LAYOUT``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

__all__ = [
    "ROLES",
    "DEFAULT_NAMES",
    "ColumnSpec",
    "ColumnMap",
    "GLUE_LAYOUT",
    "resolve_columns",
    "looks_like_header",
]

# The roles a column can play; "alpha" is the seed format's throwaway column, kept for provenance.
ROLES = ("id", "label", "text", "text_b", "alpha")
_FLAGS = {"id": "--id_column", "label": "--label_column", "text": "--text_column", "text_b": "--text_b_column"}
# Names tried, in this order, for a role the user did not name (compared without case or outer spaces).
DEFAULT_NAMES: dict[str, tuple[str, ...]] = {
    "id": ("id", "idx", "guid", "doc_id"),
    "label": ("label", "labels", "class", "category", "target"),
    "text": ("text", "text_a", "sentence", "sentence1"),
    "text_b": ("text_b", "sentence2"),
    "alpha": ("alpha", "alpha_col"),
}
# What a column name in a header looks like: short, no sentence punctuation.
_NAME_RE = re.compile(r"^[#\w][\w .#-]{0,63}$")


def _norm(name: str) -> str:
    return name.replace("\ufeff", "").strip().lower()


@dataclass(frozen=True)
class ColumnSpec:
    """The column names the user gave (None: try ``DEFAULT_NAMES``)."""

    id: str | None = None
    label: str | None = None
    text: str | None = None
    text_b: str | None = None

    def given(self) -> dict[str, str]:
        """The roles the user named, with their names."""
        return {role: name for role in ("id", "label", "text", "text_b") if (name := getattr(self, role))}

    def known_names(self) -> set[str]:
        """Every name that marks a line as a header: the given names and the defaults (normalized)."""
        names = {_norm(name) for name in self.given().values()}
        for candidates in DEFAULT_NAMES.values():
            names.update(candidates)
        return names


@dataclass(frozen=True)
class ColumnMap:
    """Where each role is in one file's columns.

    ``columns`` are the names found (header fields, JSON keys, Parquet fields); a role maps to
    one of them or to None (no ID: IDs are derived; no label: an unlabelled test split; no
    TEXT_B or ALPHA). ``positional`` marks the headerless GLUE layout of TSV.
    """

    columns: tuple[str, ...]
    id: str | None
    label: str | None
    text: str
    text_b: str | None = None
    alpha: str | None = None
    positional: bool = False
    _index: dict[str, int] = field(default_factory=dict, compare=False, repr=False)
    # the field position of each of ROLES (id, label, text, text_b, alpha), None where absent
    positions: tuple[int | None, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        index = {}
        for position, name in enumerate(self.columns):
            index.setdefault(name, position)
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "positions", tuple(index.get(getattr(self, role)) for role in ROLES))

    def index(self, role: str) -> int | None:
        """The position of ``role``'s column (TSV and CSV fields), or None if it has none."""
        name = getattr(self, role)
        return None if name is None else self._index[name]

    def describe(self) -> dict[str, str | None]:
        """For the manifest: role -> column name."""
        return {role: getattr(self, role) for role in ROLES}


# The seed format: ID, ALPHA_COL, LABEL, TEXT_A[, TEXT_B], no header.
GLUE_LAYOUT = ColumnMap(
    columns=("ID", "ALPHA_COL", "LABEL", "TEXT_A", "TEXT_B"),
    id="ID",
    label="LABEL",
    text="TEXT_A",
    text_b="TEXT_B",
    alpha="ALPHA_COL",
    positional=True,
)


def looks_like_header(fields: Sequence[str], spec: ColumnSpec) -> bool:
    """True when a TSV file's first line names columns rather than holding a row.

    It must have at least two fields that look like column names, and at least two of them
    must be names of roles (the defaults or the user's): a data row (an ID, a label, a text)
    does not, while ``id  alpha  label  text_a`` and ``text  stars`` with ``--label_column
    stars`` do.
    """
    names = [_norm(f) for f in fields]
    if len(names) < 2 or not all(_NAME_RE.match(f.replace("\ufeff", "").strip()) for f in fields if f.strip()):
        return False
    known = spec.known_names()
    return sum(1 for name in names if name in known) >= 2


def resolve_columns(columns: Sequence[str], spec: ColumnSpec, *, file: str, labelled: bool) -> ColumnMap:
    """Map the roles onto ``columns`` (a header's fields, JSON keys, a Parquet schema's names).

    Args:
        columns: the names found, in file order.
        spec: the names the user gave.
        file: the file, for messages.
        labelled: the split needs labels (train, dev): a missing label column is an error.

    Raises:
        ValueError: a named column is not there; no text column; no label column in a
            labelled split; two columns could both play one role; a name occurs twice.
    """
    found = tuple(str(c) for c in columns)
    normalized: dict[str, list[str]] = {}
    for name in found:
        normalized.setdefault(_norm(name), []).append(name)
    shown = ", ".join(repr(c) for c in found) or "none"

    def pick(role: str) -> str | None:
        given = getattr(spec, role, None)
        if given is not None:
            if given in found:
                return given
            matches = normalized.get(_norm(given), [])
            if len(matches) == 1:
                return matches[0]
            raise ValueError(
                f"{file}: no column {given!r} ({_FLAGS[role]}); its columns are {shown}"
            )
        hits = [name for candidate in DEFAULT_NAMES[role] for name in normalized.get(candidate, [])]
        if len(hits) > 1:
            flag = _FLAGS.get(role, "the column flags")
            raise ValueError(
                f"{file}: columns {', '.join(repr(h) for h in hits)} could each be the {role} column; say which with {flag}"
            )
        return hits[0] if hits else None

    picked = {role: pick(role) for role in ROLES}
    if picked["text"] is None:
        raise ValueError(
            f"{file}: no text column; its columns are {shown}; name it with --text_column "
            f"(tried {', '.join(DEFAULT_NAMES['text'])})"
        )
    if picked["label"] is None and labelled:
        raise ValueError(
            f"{file}: no label column; its columns are {shown}; name it with --label_column "
            f"(tried {', '.join(DEFAULT_NAMES['label'])})"
        )
    roles_of: dict[str, list[str]] = {}
    for role, name in picked.items():
        if name is not None:
            roles_of.setdefault(name, []).append(role)
    for name, roles in roles_of.items():
        if len(roles) > 1:
            raise ValueError(f"{file}: column {name!r} cannot be both the {' and the '.join(roles)} column")
        if found.count(name) > 1:
            raise ValueError(f"{file}: the header names {name!r} more than once; its columns are {shown}")
    return ColumnMap(columns=found, **picked)
