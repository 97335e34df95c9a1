"""Sequence-length functions: which tokens of a long document the model sees.

Every function has the signature ``f(ids, budget, params, rng) -> ids'`` with
``len(ids') <= budget``. A document that already fits (``len(ids) <= budget``) comes back
unchanged and no randomness is used. The functions are pure numpy so that the Beam pipeline,
the trainer and the predictor share this one implementation (design.md section 3).

``budget`` counts content tokens only: the special tokens ([CLS], [SEP], ...) are budgeted by
``SeqLenConfig`` from the tokenizer's ``num_special_tokens_to_add``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

__all__ = [
    "SEQ_LEN_FUNCS",
    "DETERMINISTIC_FUNCS",
    "SeqLenConfig",
    "SeqLenFunc",
    "head",
    "tail",
    "ht",
    "rs",
    "rso",
    "rsd",
    "validate_seq_config",
    "apply_seq_len",
]

Ids = Sequence[int] | np.ndarray
SeqLenFunc = Callable[[Ids, int, Sequence[int], np.random.Generator | None], Ids]


def _as_array(ids: Ids) -> np.ndarray:
    return ids if isinstance(ids, np.ndarray) else np.asarray(ids, dtype=np.int64)


def head(ids: Ids, budget: int, params: Sequence[int] = (), rng: np.random.Generator | None = None) -> Ids:
    """The first ``min(N, budget)`` tokens (N = ``params[0]``, default the budget)."""
    if len(ids) <= budget:
        return ids
    n = min(params[0], budget) if params else budget
    return _as_array(ids)[:n]


def tail(ids: Ids, budget: int, params: Sequence[int] = (), rng: np.random.Generator | None = None) -> Ids:
    """The last ``min(N, budget)`` tokens (N = ``params[0]``, default the budget)."""
    if len(ids) <= budget:
        return ids
    n = min(params[0], budget) if params else budget
    arr = _as_array(ids)
    return arr[len(arr) - n :]


def ht(ids: Ids, budget: int, params: Sequence[int], rng: np.random.Generator | None = None) -> Ids:
    """Head + tail (Sun et al. 2019): ``ids[:head_len] + ids[-tail_len:]``.

    ``head_len + tail_len <= budget`` is checked up front by ``validate_seq_config``. Where a
    smaller budget is imposed at run time (the A side of a TEXT_A/TEXT_B pair), both parts are
    scaled down in proportion so the result still fits.
    """
    if len(ids) <= budget:
        return ids
    head_len, tail_len = int(params[0]), int(params[1])
    if head_len + tail_len > budget:
        head_len = (head_len * budget) // (head_len + tail_len)
        tail_len = budget - head_len
    arr = _as_array(ids)
    return np.concatenate([arr[:head_len], arr[len(arr) - tail_len :]])


def rs(ids: Ids, budget: int, params: Sequence[int], rng: np.random.Generator) -> Ids:
    """Random non-overlapping spans, kept in document order.

    The document is cut into consecutive chunks of ``span_len`` (the last may be shorter);
    chunks are drawn uniformly without replacement until their total reaches the budget, put
    back in document order, and the result is trimmed to exactly the budget.
    """
    n = len(ids)
    if n <= budget:
        return ids
    span = int(params[0])
    arr = _as_array(ids)
    num_chunks = math.ceil(n / span)
    order = rng.permutation(num_chunks)
    lengths = np.minimum(span, n - order * span)
    taken = int(np.searchsorted(np.cumsum(lengths), budget)) + 1
    chosen = np.sort(order[:taken])
    positions = (chosen[:, None] * span + np.arange(span)[None, :]).ravel()
    positions = positions[positions < n][:budget]
    return arr[positions]


def rso(ids: Ids, budget: int, params: Sequence[int], rng: np.random.Generator) -> Ids:
    """Random spans that may overlap, in document order of their starts.

    ``ceil(budget / span_len)`` starts are drawn uniformly from ``[0, n - span_len]`` (not
    chunk-aligned); spans are concatenated by increasing start (ties in draw order) and the
    result is trimmed to exactly the budget.
    """
    n = len(ids)
    if n <= budget:
        return ids
    span = min(int(params[0]), n)
    arr = _as_array(ids)
    count = math.ceil(budget / span)
    starts = rng.integers(0, n - span + 1, size=count)
    starts = starts[np.argsort(starts, kind="stable")]
    positions = (starts[:, None] + np.arange(span)[None, :]).ravel()[:budget]
    return arr[positions]


def rsd(ids: Ids, budget: int, params: Sequence[int], rng: np.random.Generator) -> Ids:
    """Random spans deleted from the sequence as they are drawn, output in draw order.

    Each draw picks a start uniformly in the remaining sequence, takes ``span_len`` tokens (or
    what is left of the budget), and deletes them, so no position is used twice. A later span
    may bridge a gap left by an earlier deletion: the documented word-order trade-off.
    """
    n = len(ids)
    if n <= budget:
        return ids
    span = int(params[0])
    positions = _rsd_positions_short(n, budget, span, rng) if n <= _RSD_LONG else _rsd_positions_long(n, budget, span, rng)
    return _as_array(ids)[positions]


# Above this length rsd tracks the deleted positions instead of rebuilding the remaining ones
# (the cost of a draw then depends on the budget, not the document length); below it, the
# direct version is faster. Both make the same draws and give the same output.
_RSD_LONG = 8192


def _rsd_positions_short(n: int, budget: int, span: int, rng: np.random.Generator) -> np.ndarray:
    remaining = np.arange(n)
    pieces: list[np.ndarray] = []
    need = budget
    while need > 0:
        take = min(span, need)
        start = int(rng.integers(0, len(remaining) - take + 1))
        pieces.append(remaining[start : start + take])
        remaining = np.concatenate([remaining[:start], remaining[start + take :]])
        need -= take
    return np.concatenate(pieces)


def _rsd_positions_long(n: int, budget: int, span: int, rng: np.random.Generator) -> np.ndarray:
    deleted = np.empty(0, dtype=np.int64)  # original positions taken so far, sorted
    pieces: list[np.ndarray] = []
    need = budget
    while need > 0:
        take = min(span, need)
        start = int(rng.integers(0, n - len(deleted) - take + 1))
        wanted = np.arange(start, start + take)  # indices into the remaining sequence
        # remaining index r is original position r + (number of deleted positions before it);
        # with deleted sorted, that number is searchsorted(deleted - arange, r, "right")
        shift = np.searchsorted(deleted - np.arange(len(deleted)), wanted, side="right")
        taken = wanted + shift
        pieces.append(taken)
        deleted = np.union1d(deleted, taken)
        need -= take
    return np.concatenate(pieces)


SEQ_LEN_FUNCS: Mapping[str, SeqLenFunc] = {
    "head": head,
    "tail": tail,
    "ht": ht,
    "rs": rs,
    "rso": rso,
    "rsd": rsd,
}

# Functions that use no randomness: the only ones that may be applied once at preprocess time.
DETERMINISTIC_FUNCS = frozenset({"head", "tail", "ht"})

# name -> (minimum, maximum) number of parameters
_PARAM_COUNTS = {"head": (0, 1), "tail": (0, 1), "ht": (2, 2), "rs": (1, 1), "rso": (1, 1), "rsd": (1, 1)}
_PARAM_HELP = {
    "head": "optional N (first N tokens)",
    "tail": "optional N (last N tokens)",
    "ht": "head_len tail_len, e.g. 128 382",
    "rs": "span_len, e.g. 16",
    "rso": "span_len, e.g. 16",
    "rsd": "span_len, e.g. 16",
}


class _Tokenizer(Protocol):
    def num_special_tokens_to_add(self, pair: bool = False) -> int: ...


@dataclass(frozen=True)
class SeqLenConfig:
    """A validated sequence-length configuration with its content budgets.

    Attributes:
        name: key of ``SEQ_LEN_FUNCS``.
        params: the function's integer parameters.
        max_seq_length: the model input length, special tokens included.
        budget_single: content tokens for ``[CLS] A [SEP]``.
        budget_pair: content tokens for ``[CLS] A [SEP] B [SEP]``.
    """

    name: str
    params: tuple[int, ...]
    max_seq_length: int
    budget_single: int
    budget_pair: int

    @property
    def func(self) -> SeqLenFunc:
        return SEQ_LEN_FUNCS[self.name]

    @property
    def is_random(self) -> bool:
        return self.name not in DETERMINISTIC_FUNCS

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "params": list(self.params),
            "max_seq_length": self.max_seq_length,
            "budget_single": self.budget_single,
            "budget_pair": self.budget_pair,
        }


def validate_seq_config(
    name: str, params: Sequence[int | str] | None, max_seq_length: int, tokenizer: _Tokenizer
) -> SeqLenConfig:
    """Check a sequence-length configuration before any work is done.

    Args:
        name: one of ``SEQ_LEN_FUNCS``.
        params: the values of ``--seq_func_params`` (ints, or strings of ints).
        max_seq_length: model input length including special tokens.
        tokenizer: anything with ``num_special_tokens_to_add(pair)`` (a Hugging Face tokenizer).

    Raises:
        ValueError: with a message saying which value is wrong and what is expected.
    """
    if name not in SEQ_LEN_FUNCS:
        raise ValueError(f"unknown --seq_len_func {name!r}; choose one of {', '.join(SEQ_LEN_FUNCS)}")
    raw = list(params or [])
    try:
        # int(16.5) would silently give 16: only ints and strings of ints are accepted.
        if any(isinstance(p, bool) or not isinstance(p, (int, np.integer, str)) for p in raw):
            raise TypeError
        values = tuple(int(p) for p in raw)
    except (TypeError, ValueError):
        raise ValueError(f"--seq_func_params for {name!r} must be integers ({_PARAM_HELP[name]}), got {raw}") from None
    low, high = _PARAM_COUNTS[name]
    if not low <= len(values) <= high:
        expected = str(low) if low == high else f"{low} to {high}"
        raise ValueError(
            f"--seq_len_func {name} takes {expected} parameter(s) ({_PARAM_HELP[name]}), got {len(values)}: {list(values)}"
        )
    if int(max_seq_length) != max_seq_length or max_seq_length <= 0:
        raise ValueError(f"--max_seq_length must be a positive integer, got {max_seq_length}")
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and 0 < model_max < 1_000_000 and max_seq_length > model_max:
        raise ValueError(f"--max_seq_length {max_seq_length} exceeds the tokenizer's model_max_length {model_max}")
    budget_single = int(max_seq_length) - int(tokenizer.num_special_tokens_to_add(pair=False))
    budget_pair = int(max_seq_length) - int(tokenizer.num_special_tokens_to_add(pair=True))
    if budget_pair < 2:
        raise ValueError(
            f"--max_seq_length {max_seq_length} leaves {budget_pair} content tokens after the special tokens; it is too small"
        )
    if name == "ht":
        head_len, tail_len = values
        if head_len < 0 or tail_len < 0 or head_len + tail_len == 0:
            raise ValueError(f"ht needs head_len >= 0 and tail_len >= 0, not both 0; got {head_len} {tail_len}")
        if head_len + tail_len > budget_single:
            raise ValueError(
                f"ht {head_len} {tail_len} needs {head_len + tail_len} content tokens but --max_seq_length "
                f"{max_seq_length} leaves {budget_single} after {max_seq_length - budget_single} special tokens; "
                f"use head_len + tail_len <= {budget_single} (e.g. ht 128 {budget_single - 128})"
            )
    elif values:
        if values[0] < 1:
            raise ValueError(f"--seq_func_params for {name} must be >= 1, got {values[0]}")
        if name in ("rs", "rso", "rsd") and values[0] > budget_single:
            raise ValueError(
                f"{name} span_len {values[0]} is larger than the content budget {budget_single} of "
                f"--max_seq_length {max_seq_length}"
            )
    return SeqLenConfig(name, values, int(max_seq_length), budget_single, budget_pair)


def apply_seq_len(
    ids_a: Ids, ids_b: Ids | None, config: SeqLenConfig, rng: np.random.Generator | None
) -> tuple[Ids, Ids]:
    """Apply ``config`` to one example, with the TEXT_B budget rule of design.md section 3.

    Without TEXT_B the function gets the single-sequence budget. With TEXT_B, B keeps its head
    ``B[:b_keep]`` with ``b_keep = min(len(B), max(budget - len(A), budget // 2))`` and the
    function gets A with ``budget - b_keep``.

    Returns:
        ``(ids_a', ids_b')``; ``ids_b'`` is empty when there is no TEXT_B.
    """
    if ids_b is None or len(ids_b) == 0:
        return config.func(ids_a, config.budget_single, config.params, rng), ids_b if ids_b is not None else []
    budget = config.budget_pair
    b_keep = min(len(ids_b), max(budget - len(ids_a), budget // 2))
    kept_b = ids_b if b_keep == len(ids_b) else ids_b[:b_keep]
    return config.func(ids_a, budget - b_keep, config.params, rng), kept_b
