"""Tests of the sequence-length functions, their configuration and the per-document rng.

Specification: design.md section 3. The random functions are checked three ways: against small
reference implementations written from the documented algorithms (same numpy rng, same draws),
against pinned outputs (a resumed run or another version must draw the same spans), and by
structural properties over many hypothesis-generated inputs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenization.rng import EVAL_EPOCH, doc_rng, stable_hash64
from tokenization.seq_len import (
    DETERMINISTIC_FUNCS,
    SEQ_LEN_FUNCS,
    SeqLenConfig,
    apply_seq_len,
    head,
    ht,
    rs,
    rsd,
    rso,
    tail,
    validate_seq_config,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
RANDOM_FUNCS = ("rs", "rso", "rsd")
ALL_FUNCS = ("head", "tail", "ht", "rs", "rso", "rsd")
# Token ids are offset from positions so that a position can never be mistaken for a token.
OFFSET = 1000
PROPERTY_SETTINGS = settings(max_examples=200, deadline=None)


def as_list(ids) -> list[int]:
    return [int(x) for x in ids]


def params_for(name: str, span: int, budget: int) -> tuple[int, ...]:
    """Valid parameters of ``name`` for tests that run every function."""
    if name == "ht":
        return (budget // 3, budget - budget // 3)
    if name in RANDOM_FUNCS:
        return (span,)
    return ()


# ---------------------------------------------------------------------------------------------
# Reference implementations, written from design.md section 3 with plain Python lists.
# They make the same numpy draws as the documented algorithms so outputs can be compared exactly.
# ---------------------------------------------------------------------------------------------


def ref_rs(ids, budget, span, rng):
    n = len(ids)
    if n <= budget:
        return list(ids)
    chunks = [list(range(start, min(start + span, n))) for start in range(0, n, span)]
    order = rng.permutation(len(chunks))  # uniform draws without replacement
    chosen, total = [], 0
    for chunk in order:
        chosen.append(int(chunk))
        total += len(chunks[chunk])
        if total >= budget:
            break
    positions = [p for chunk in sorted(chosen) for p in chunks[chunk]][:budget]
    return [ids[p] for p in positions]


def ref_rso(ids, budget, span, rng):
    n = len(ids)
    if n <= budget:
        return list(ids)
    span = min(span, n)
    count = math.ceil(budget / span)
    starts = [int(s) for s in rng.integers(0, n - span + 1, size=count)]  # uniform in [0, n - span]
    by_start = sorted(range(count), key=lambda i: (starts[i], i))
    positions = [starts[i] + j for i in by_start for j in range(span)][:budget]
    return [ids[p] for p in positions]


def ref_rsd(ids, budget, span, rng):
    n = len(ids)
    if n <= budget:
        return list(ids)
    remaining = list(range(n))
    positions: list[int] = []
    while len(positions) < budget:
        take = min(span, budget - len(positions))
        start = int(rng.integers(0, len(remaining) - take + 1))
        positions += remaining[start : start + take]
        del remaining[start : start + take]
    return [ids[p] for p in positions]


REFERENCES = {"rs": ref_rs, "rso": ref_rso, "rsd": ref_rsd}


# ---------------------------------------------------------------------------------------------
# Deterministic functions on hand-made inputs
# ---------------------------------------------------------------------------------------------


def test_registry_names():
    assert set(SEQ_LEN_FUNCS) == set(ALL_FUNCS)
    assert DETERMINISTIC_FUNCS == {"head", "tail", "ht"}
    assert SEQ_LEN_FUNCS["head"] is head and SEQ_LEN_FUNCS["rsd"] is rsd


def test_head_exact():
    ids = [10, 11, 12, 13, 14, 15, 16, 17, 18, 19]
    assert as_list(head(ids, 4, (), None)) == [10, 11, 12, 13]
    assert as_list(head(ids, 4, (2,), None)) == [10, 11]
    assert as_list(head(ids, 4, (9,), None)) == [10, 11, 12, 13]  # min(N, budget)


def test_tail_exact():
    ids = [10, 11, 12, 13, 14, 15, 16, 17, 18, 19]
    assert as_list(tail(ids, 4, (), None)) == [16, 17, 18, 19]
    assert as_list(tail(ids, 4, (3,), None)) == [17, 18, 19]
    assert as_list(tail(ids, 4, (9,), None)) == [16, 17, 18, 19]


def test_ht_exact():
    ids = list(range(100, 120))
    assert as_list(ht(ids, 6, (2, 3), None)) == [100, 101, 117, 118, 119]
    assert as_list(ht(ids, 5, (2, 3), None)) == [100, 101, 117, 118, 119]
    # A zero tail must give no tail (ids[-0:] would be the whole document).
    assert as_list(ht(ids, 5, (4, 0), None)) == [100, 101, 102, 103]
    assert as_list(ht(ids, 5, (0, 4), None)) == [116, 117, 118, 119]


def test_ht_128_382_on_2000_tokens():
    ids = list(range(2000))
    out = as_list(ht(ids, 510, (128, 382), None))
    assert len(out) == 510  # not 127 + 381 as in the 2020 code
    assert out == list(range(0, 128)) + list(range(1618, 2000))


def test_ht_through_config(minilm_tokenizer):
    config = validate_seq_config("ht", ["128", "382"], 512, minilm_tokenizer)
    out_a, out_b = apply_seq_len(list(range(2000)), None, config, None)
    assert as_list(out_a) == list(range(0, 128)) + list(range(1618, 2000))
    assert list(out_b) == []


def test_ht_scales_down_under_a_smaller_run_time_budget():
    # The A side of a pair gets less than the configured head_len + tail_len; the result still fits.
    out = as_list(ht(list(range(2000)), 254, (128, 382), None))
    assert len(out) == 254
    head_len = 128 * 254 // 510
    assert out == list(range(head_len)) + list(range(2000 - (254 - head_len), 2000))


@pytest.mark.parametrize("name", ALL_FUNCS)
def test_accepts_numpy_int32_and_lists_alike(name):
    ids = np.arange(OFFSET, OFFSET + 300, dtype=np.int32)
    params = params_for(name, 7, 50)
    from_array = SEQ_LEN_FUNCS[name](ids, 50, params, np.random.default_rng(5))
    from_list = SEQ_LEN_FUNCS[name](ids.tolist(), 50, params, np.random.default_rng(5))
    assert as_list(from_array) == as_list(from_list)
    assert len(from_list) == 50


# ---------------------------------------------------------------------------------------------
# Random functions: pinned outputs and the reference implementations
# ---------------------------------------------------------------------------------------------

PINNED_DEFAULT_RNG_0 = {
    "rs": [6, 7, 8, 9, 10, 11, 12],
    "rso": [9, 10, 11, 11, 12, 13, 15],
    "rsd": [15, 16, 17, 9, 10, 11, 7],
}
PINNED_DOC_RNG = {
    "rs": [0, 1, 2, 3, 4, 5, 9],
    "rso": [1, 2, 3, 5, 6, 7, 7],
    "rsd": [5, 6, 7, 1, 2, 3, 11],
}


@pytest.mark.parametrize("name", RANDOM_FUNCS)
def test_random_functions_pinned(name):
    """20 tokens, budget 7, spans of 3: outputs must not change between versions."""
    ids = list(range(20))
    assert as_list(SEQ_LEN_FUNCS[name](ids, 7, (3,), np.random.default_rng(0))) == PINNED_DEFAULT_RNG_0[name]
    assert as_list(SEQ_LEN_FUNCS[name](ids, 7, (3,), doc_rng(13, 2, "doc-7"))) == PINNED_DOC_RNG[name]
    # and the references agree with the pins
    assert REFERENCES[name](ids, 7, 3, np.random.default_rng(0)) == PINNED_DEFAULT_RNG_0[name]


def test_pinned_outputs_have_the_documented_shape():
    # rs: chunks [6..8] [9..11] [12..14] in document order, the last trimmed to the budget
    assert PINNED_DEFAULT_RNG_0["rs"] == [6, 7, 8] + [9, 10, 11] + [12]
    # rso: starts 9, 11, 15 (not multiples of 3, overlapping at 11), by start, trimmed
    assert PINNED_DEFAULT_RNG_0["rso"] == [9, 10, 11] + [11, 12, 13] + [15]
    # rsd: in draw order, not document order, the last span shortened to what the budget needs
    assert PINNED_DEFAULT_RNG_0["rsd"] == [15, 16, 17] + [9, 10, 11] + [7]


@pytest.mark.parametrize("name", RANDOM_FUNCS)
@pytest.mark.parametrize(
    "n, budget, span",
    [(20, 7, 3), (23, 10, 4), (100, 30, 7), (101, 100, 16), (5000, 126, 8), (40, 5, 16), (12, 11, 12)],
)
def test_random_functions_match_reference(name, n, budget, span):
    ids = list(range(OFFSET, OFFSET + n))
    for seed in range(5):
        got = as_list(SEQ_LEN_FUNCS[name](ids, budget, (span,), np.random.default_rng(seed)))
        assert got == REFERENCES[name](ids, budget, span, np.random.default_rng(seed))


def test_rs_ragged_last_chunk_does_not_crash():
    # 2020 code crashed when the document length was not a multiple of span_len.
    ids = list(range(OFFSET, OFFSET + 23))
    for seed in range(50):
        out = as_list(rs(ids, 20, (5,), np.random.default_rng(seed)))
        assert len(out) == 20
        assert out == sorted(set(out))


def test_rso_spans_start_off_the_chunk_grid_and_may_overlap():
    off_grid = overlapping = 0
    for seed in range(30):
        out = np.asarray(as_list(rso(list(range(30)), 29, (10,), np.random.default_rng(seed))))
        starts = out[::10]
        off_grid += int(np.any(starts % 10 != 0))
        overlapping += int(len(set(out.tolist())) < len(out))
    assert off_grid > 0
    assert overlapping > 0


def test_rsd_draw_order_and_bridged_gaps():
    unsorted = bridged = 0
    for seed in range(50):
        out = as_list(rsd(list(range(40)), 30, (10,), np.random.default_rng(seed)))
        assert len(set(out)) == 30
        unsorted += int(out != sorted(out))
        blocks = [out[i : i + 10] for i in range(0, 30, 10)]
        bridged += int(any(block != list(range(block[0], block[0] + 10)) for block in blocks))
    assert unsorted > 0  # output is in DRAW order, not document order
    assert bridged > 0  # a later span may bridge a gap left by an earlier deletion


# ---------------------------------------------------------------------------------------------
# Short documents come back unchanged, without randomness
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_FUNCS)
@pytest.mark.parametrize("n", [0, 1, 9, 10])
def test_short_documents_unchanged_and_no_randomness(name, n):
    budget = 10
    ids = list(range(OFFSET, OFFSET + n))
    rng = np.random.default_rng(123)
    state = rng.bit_generator.state
    out = SEQ_LEN_FUNCS[name](ids, budget, params_for(name, 4, budget), rng)
    assert as_list(out) == ids
    assert rng.bit_generator.state == state
    # and no generator is needed at all
    assert as_list(SEQ_LEN_FUNCS[name](ids, budget, params_for(name, 4, budget), None)) == ids


# ---------------------------------------------------------------------------------------------
# Property tests
# ---------------------------------------------------------------------------------------------

docs = st.fixed_dictionaries(
    {
        "n": st.integers(0, 400),
        "budget": st.integers(1, 160),
        "span": st.integers(1, 48),  # may exceed the budget: apply_seq_len can shrink A's budget
        "seed": st.integers(0, 2**32 - 1),
    }
)


def run(name, doc, params=None):
    ids = list(range(OFFSET, OFFSET + doc["n"]))
    if params is None:
        params = params_for(name, doc["span"], doc["budget"])
    out = as_list(SEQ_LEN_FUNCS[name](ids, doc["budget"], params, np.random.default_rng(doc["seed"])))
    positions = [t - OFFSET for t in out]
    assert all(0 <= p < doc["n"] for p in positions), "every output token comes from the input"
    assert len(out) <= doc["budget"]
    if doc["n"] <= doc["budget"]:
        assert out == ids
    return positions


@PROPERTY_SETTINGS
@given(doc=docs, head_n=st.integers(1, 200))
def test_property_head_tail(doc, head_n):
    n, budget = doc["n"], doc["budget"]
    assert run("head", doc, ()) == list(range(min(n, budget)))
    assert run("tail", doc, ()) == list(range(n - min(n, budget), n))
    expected = min(head_n, budget) if n > budget else n
    assert run("head", doc, (head_n,)) == list(range(expected))
    assert run("tail", doc, (head_n,)) == list(range(n - expected, n))


@PROPERTY_SETTINGS
@given(doc=docs, split=st.floats(0, 1), fill=st.floats(0, 1))
def test_property_ht(doc, split, fill):
    n, budget = doc["n"], doc["budget"]
    total = max(1, round(fill * budget))
    head_len = round(split * total)
    tail_len = total - head_len
    positions = run("ht", doc, (head_len, tail_len))
    if n > budget:
        assert positions == list(range(head_len)) + list(range(n - tail_len, n))
        assert len(positions) == head_len + tail_len


@PROPERTY_SETTINGS
@given(doc=docs)
def test_property_rs(doc):
    n, budget, span = doc["n"], doc["budget"], doc["span"]
    positions = run("rs", doc)
    assert len(positions) == min(n, budget)
    assert positions == sorted(set(positions)), "document order, no position used twice"
    if n > budget:
        chunks = sorted({p // span for p in positions})
        covered = [p for c in chunks for p in range(c * span, min((c + 1) * span, n))]
        # a union of whole chunks, only the last (in document order) possibly trimmed
        assert positions == covered[: len(positions)]
        assert len(covered) - len(positions) < span
        assert positions[-1] // span == chunks[-1]
    assert positions == [t - OFFSET for t in ref_rs(list(range(OFFSET, OFFSET + n)), budget, span, np.random.default_rng(doc["seed"]))]


@PROPERTY_SETTINGS
@given(doc=docs)
def test_property_rso(doc):
    n, budget, span = doc["n"], doc["budget"], doc["span"]
    positions = run("rso", doc)
    assert len(positions) == min(n, budget)
    if n > budget:
        width = min(span, n)
        blocks = [positions[i : i + width] for i in range(0, len(positions), width)]
        assert len(blocks) == math.ceil(budget / width)
        starts = [block[0] for block in blocks]
        assert starts == sorted(starts), "spans in document order of their starts"
        for block in blocks:
            assert 0 <= block[0] <= n - width
            assert block == list(range(block[0], block[0] + len(block))), "a span is contiguous"
        assert all(len(block) == width for block in blocks[:-1])
    assert positions == [t - OFFSET for t in ref_rso(list(range(OFFSET, OFFSET + n)), budget, span, np.random.default_rng(doc["seed"]))]


@PROPERTY_SETTINGS
@given(doc=docs)
def test_property_rsd(doc):
    n, budget, span = doc["n"], doc["budget"], doc["span"]
    positions = run("rsd", doc)
    assert len(positions) == min(n, budget)
    assert len(set(positions)) == len(positions), "rsd never reuses a position"
    if n > budget:
        blocks = [positions[i : i + span] for i in range(0, budget, span)]
        for block in blocks:
            assert block == sorted(block)  # a span is taken left to right from the remaining sequence
        assert all(len(block) == span for block in blocks[:-1])
    assert positions == [t - OFFSET for t in ref_rsd(list(range(OFFSET, OFFSET + n)), budget, span, np.random.default_rng(doc["seed"]))]


@PROPERTY_SETTINGS
@given(doc=docs, values=st.lists(st.integers(0, 5), min_size=0, max_size=300))
def test_property_output_is_a_sub_multiset_of_the_input(doc, values):
    """With repeated token values: rs/rsd/head/tail/ht take each input position at most once."""
    from collections import Counter

    budget = doc["budget"]
    for name in ALL_FUNCS:
        params = params_for(name, doc["span"], budget)
        out = as_list(SEQ_LEN_FUNCS[name](values, budget, params, np.random.default_rng(doc["seed"])))
        assert len(out) <= budget
        assert set(out) <= set(values)
        if name != "rso":
            assert not Counter(out) - Counter(values)


# ---------------------------------------------------------------------------------------------
# validate_seq_config, SeqLenConfig and budgets
# ---------------------------------------------------------------------------------------------


def test_minilm_is_bert_like(minilm_tokenizer):
    assert minilm_tokenizer.num_special_tokens_to_add(pair=False) == 2
    assert minilm_tokenizer.num_special_tokens_to_add(pair=True) == 3
    assert minilm_tokenizer.model_max_length == 512


@pytest.mark.parametrize(
    "name, params, max_seq_length, budget_single, budget_pair",
    [
        ("ht", [128, 382], 512, 510, 509),
        ("head", [], 128, 126, 125),
        ("head", None, 128, 126, 125),
        ("tail", ["64"], 256, 254, 253),
        ("rs", [16], 512, 510, 509),
        ("rso", ["8"], 128, 126, 125),
        ("rsd", [510], 512, 510, 509),
        ("rs", [1], 5, 3, 2),
    ],
)
def test_validate_ok_and_budgets(minilm_tokenizer, name, params, max_seq_length, budget_single, budget_pair):
    config = validate_seq_config(name, params, max_seq_length, minilm_tokenizer)
    assert config == SeqLenConfig(name, tuple(int(p) for p in params or []), max_seq_length, budget_single, budget_pair)
    assert all(type(p) is int for p in config.params)


class _RobertaLikeSpecials:
    """A tokenizer with <s> A </s> and <s> A </s></s> B </s>: 2 and 4 special tokens."""

    model_max_length = 514

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return 4 if pair else 2


def test_budgets_come_from_the_tokenizer_not_a_constant():
    config = validate_seq_config("rs", [16], 514, _RobertaLikeSpecials())
    assert (config.budget_single, config.budget_pair) == (512, 510)


@pytest.mark.parametrize(
    "name, params, max_seq_length, fragments",
    [
        ("random", [16], 512, ["unknown", "'random'", "head", "rsd"]),
        ("HT", [128, 382], 512, ["unknown", "'HT'"]),
        ("ht", [128], 512, ["ht", "takes 2", "got 1"]),
        ("ht", [1, 2, 3], 512, ["ht", "takes 2", "got 3"]),
        ("rs", [], 512, ["rs", "takes 1", "got 0"]),
        ("rso", [8, 8], 512, ["rso", "takes 1", "got 2"]),
        ("head", [1, 2], 512, ["head", "0 to 1", "got 2"]),
        ("rs", ["sixteen"], 512, ["integers", "sixteen"]),
        ("ht", ["128", "3.5"], 512, ["integers", "3.5"]),
        ("rsd", [16.5], 512, ["integers", "16.5"]),
        ("rs", [16], 513, ["513", "model_max_length 512"]),
        ("rs", [16], 0, ["max_seq_length", "positive"]),
        ("ht", [128, 383], 512, ["ht 128 383", "511", "510", "head_len + tail_len <= 510"]),
        ("ht", [511, 0], 512, ["511", "510"]),
        ("ht", [-1, 100], 512, ["head_len >= 0"]),
        ("ht", [0, 0], 512, ["not both 0"]),
        ("rs", [0], 512, ["rs", ">= 1", "0"]),
        ("rso", [-3], 512, ["rso", ">= 1"]),
        ("rsd", [511], 512, ["rsd", "511", "budget 510"]),
        ("rs", [127], 128, ["127", "126"]),
        ("head", [0], 512, ["head", ">= 1"]),
        ("rs", [1], 4, ["4", "too small"]),
    ],
)
def test_validate_errors(minilm_tokenizer, name, params, max_seq_length, fragments):
    with pytest.raises(ValueError) as info:
        validate_seq_config(name, params, max_seq_length, minilm_tokenizer)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_seq_len_config_behaviour(minilm_tokenizer):
    config = validate_seq_config("rso", [16], 128, minilm_tokenizer)
    assert config.func is rso
    assert config.is_random
    assert not validate_seq_config("ht", [28, 98], 128, minilm_tokenizer).is_random
    assert [validate_seq_config(n, params_for(n, 4, 126), 128, minilm_tokenizer).is_random for n in ALL_FUNCS] == [
        False, False, False, True, True, True,
    ]
    assert config.to_dict() == {"name": "rso", "params": [16], "max_seq_length": 128, "budget_single": 126, "budget_pair": 125}
    assert json.loads(json.dumps(config.to_dict())) == config.to_dict()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.name = "rs"  # type: ignore[misc]
    assert hash(config) == hash(validate_seq_config("rso", ["16"], 128, minilm_tokenizer))


# ---------------------------------------------------------------------------------------------
# apply_seq_len and the TEXT_B budget rule
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def head_20(minilm_tokenizer):
    """head, max_seq_length 20: single budget 18, pair budget 17."""
    return validate_seq_config("head", [], 20, minilm_tokenizer)


def test_apply_without_text_b_uses_the_single_budget(head_20):
    a = list(range(100))
    out_a, out_b = apply_seq_len(a, None, head_20, None)
    assert as_list(out_a) == list(range(18)) and list(out_b) == []
    out_a, out_b = apply_seq_len(a, [], head_20, None)  # an empty TEXT_B is no TEXT_B
    assert as_list(out_a) == list(range(18)) and list(out_b) == []


@pytest.mark.parametrize(
    "len_a, len_b, a_kept, b_kept",
    [
        (5, 4, 5, 4),  # both fit: unchanged
        (5, 30, 5, 12),  # b_keep = min(30, max(17 - 5, 8)) = 12; A fits its budget 5
        (100, 100, 9, 8),  # b_keep = max(17 - 100, 17 // 2) = 8; A gets 9
        (100, 3, 14, 3),  # B short: b_keep = 3; A gets 14
        (12, 12, 9, 8),  # b_keep = max(5, 8) = 8; A gets 9 of its 12
        (17, 1, 16, 1),
        (0, 40, 0, 17),
    ],
)
def test_apply_with_text_b(head_20, len_a, len_b, a_kept, b_kept):
    a = list(range(len_a))
    b = list(range(500, 500 + len_b))
    out_a, out_b = apply_seq_len(a, b, head_20, None)
    assert as_list(out_a) == a[:a_kept]
    assert as_list(out_b) == b[:b_kept]  # B keeps its head


@PROPERTY_SETTINGS
@given(
    len_a=st.integers(0, 300),
    len_b=st.integers(0, 300),
    name=st.sampled_from(ALL_FUNCS),
    max_seq_length=st.integers(5, 160),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_apply_with_text_b(minilm_tokenizer, len_a, len_b, name, max_seq_length, seed):
    budget_single = max_seq_length - 2
    config = validate_seq_config(name, params_for(name, min(8, budget_single), budget_single), max_seq_length, minilm_tokenizer)
    a = list(range(OFFSET, OFFSET + len_a))
    b = list(range(OFFSET + 1000, OFFSET + 1000 + len_b))
    out_a, out_b = apply_seq_len(a, b, config, np.random.default_rng(seed))
    out_a, out_b = as_list(out_a), as_list(out_b)
    if len_b == 0:
        assert len(out_a) <= config.budget_single
        assert out_b == []
        return
    budget = config.budget_pair
    b_keep = min(len_b, max(budget - len_a, budget // 2))
    assert out_b == b[:b_keep]
    a_budget = budget - b_keep
    expected_a = as_list(config.func(a, a_budget, config.params, np.random.default_rng(seed)))
    assert out_a == expected_a
    assert len(out_a) + len(out_b) <= budget
    if len_a + len_b <= budget:
        assert (out_a, out_b) == (a, b)
    if name not in ("ht",) and len_a > a_budget:
        assert len(out_a) + len(out_b) == budget  # functions other than ht fill the whole budget


# ---------------------------------------------------------------------------------------------
# Reproducibility: doc_rng
# ---------------------------------------------------------------------------------------------

LONG_IDS = list(range(5000))
DOC_ID = "doc-é-17"


def _draw_all(seed: int, epoch: int, doc_id: str, stream: int = 0) -> dict[str, list[int]]:
    return {
        name: as_list(SEQ_LEN_FUNCS[name](LONG_IDS, 126, (8,), doc_rng(seed, epoch, doc_id, stream)))
        for name in RANDOM_FUNCS
    }


def test_same_draw_in_another_process():
    code = (
        "import json\n"
        "from tokenization.rng import doc_rng, stable_hash64\n"
        "from tokenization.seq_len import SEQ_LEN_FUNCS\n"
        "ids = list(range(5000))\n"
        "out = {name: [int(x) for x in SEQ_LEN_FUNCS[name](ids, 126, (8,), doc_rng(42, 3, %r))]\n"
        "       for name in ('rs', 'rso', 'rsd')}\n"
        "out['hash'] = stable_hash64(%r)\n"
        "print(json.dumps(out))\n"
    ) % (DOC_ID, DOC_ID)
    env = {**os.environ, "PYTHONHASHSEED": "987654", "PYTHONPATH": str(REPO_ROOT), "PYTHONIOENCODING": "utf-8"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    other = json.loads(result.stdout)
    here = _draw_all(42, 3, DOC_ID)
    assert other.pop("hash") == stable_hash64(DOC_ID)
    assert other == here
    for name in RANDOM_FUNCS:
        assert len(here[name]) == 126


def test_same_inputs_same_draw_in_process():
    assert _draw_all(7, 0, "a") == _draw_all(7, 0, "a")
    assert _draw_all(7, EVAL_EPOCH, "a") == _draw_all(7, EVAL_EPOCH, "a")


@pytest.mark.parametrize(
    "changed",
    [dict(epoch=1), dict(seed=8), dict(doc_id="b"), dict(stream=1), dict(epoch=EVAL_EPOCH)],
)
def test_a_different_key_gives_a_different_draw(changed):
    base = dict(seed=7, epoch=0, doc_id="a", stream=0)
    first = _draw_all(**base)
    second = _draw_all(**{**base, **changed})
    for name in RANDOM_FUNCS:
        assert first[name] != second[name], (name, changed)


def test_stable_hash64():
    import hashlib

    assert stable_hash64("doc-1") == int.from_bytes(hashlib.blake2b(b"doc-1", digest_size=8).digest(), "little")
    assert stable_hash64("doc-1") != stable_hash64("doc-2")
    assert 0 <= stable_hash64("") < 2**64
    with pytest.raises(ValueError, match="must be a str"):
        stable_hash64(17)  # type: ignore[arg-type]


@pytest.mark.parametrize("args", [(-1, 0, "a"), (0, -1, "a"), (0, 0, "a", -1)])
def test_doc_rng_rejects_negative_keys(args):
    with pytest.raises(ValueError, match="must be >= 0"):
        doc_rng(*args)


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(min_value=2, max_value=12_000),
    budget=st.integers(min_value=1, max_value=510),
    span=st.integers(min_value=1, max_value=64),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_rsd_long_document_path_makes_the_same_draws_as_the_direct_one(n, budget, span, seed):
    """rsd switches to tracking deleted positions for long documents: same output, other cost."""
    from tokenization.seq_len import _rsd_positions_long, _rsd_positions_short

    budget = min(budget, n - 1) or 1
    span = min(span, budget)
    short = _rsd_positions_short(n, budget, span, np.random.default_rng(seed))
    long = _rsd_positions_long(n, budget, span, np.random.default_rng(seed))
    assert np.array_equal(short, long)
    assert len(set(long.tolist())) == budget  # no position used twice
