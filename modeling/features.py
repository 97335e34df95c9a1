"""From stored token ids to model inputs: sequence-length function, special tokens, padding.

Transformers 5 tokenizers no longer expose ``build_inputs_with_special_tokens``, so the layout of
special tokens (``[CLS] A [SEP]`` / ``[CLS] A [SEP] B [SEP]`` for BERT, ``<s> A </s></s> B </s>``
for RoBERTa, ...) is read off the tokenizer once, by encoding a probe with and without special
tokens, and checked on a second probe. Per sample the work is then list concatenation only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence, Union

import numpy as np
import torch

from modeling.label_space import label_tensor
from modeling.pooling import select_windows
from tokenization.rng import EVAL_EPOCH, doc_rng
from tokenization.seq_len import SeqLenConfig, apply_seq_len

__all__ = ["SpecialTokenTemplate", "FeatureBuilder", "Example", "collate", "parse_views", "EVAL_VIEWS_CHUNKS"]

EVAL_VIEWS_CHUNKS = "chunks"


def parse_views(value: str | int) -> int | str:
    """Views of a document (``--eval_views``, ``--train_views``, the API's ``views``): a positive
    int or ``"chunks"``.

    Raises:
        ValueError: anything else.
    """
    text = str(value).strip()
    if text == EVAL_VIEWS_CHUNKS:
        return EVAL_VIEWS_CHUNKS
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise ValueError(f"views must be a positive integer or 'chunks', got {value!r}")


@dataclass(frozen=True)
class SpecialTokenTemplate:
    """Where a tokenizer puts its special tokens around one or two segments."""

    single: tuple[tuple[int, ...], tuple[int, ...]]  # (prefix, suffix)
    pair: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]  # (prefix, middle, suffix)
    # token_type_ids of (prefix+A+middle) and (B+suffix) in the pair layout
    type_a: int
    type_b: int

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> "SpecialTokenTemplate":
        """Read the layout off ``tokenizer`` and verify it on a second probe."""
        template = cls._probe(tokenizer, "hello", "world")
        for text_a, text_b in (("the quick brown fox", "jumps over it"), ("a", "b c d e")):
            a, b = (tokenizer(t, add_special_tokens=False)["input_ids"] for t in (text_a, text_b))
            expected = tokenizer(text_a, text_b, truncation=False, return_token_type_ids=True)
            ids, types = template.build(a, b)
            if ids != list(expected["input_ids"]) or types != list(expected.get("token_type_ids", types)):
                raise ValueError(
                    f"cannot derive the special-token layout of tokenizer {type(tokenizer).__name__}: "
                    f"probe {text_a!r}/{text_b!r} gives {list(expected['input_ids'])}, template {ids}"
                )
        return template

    @classmethod
    def _probe(cls, tokenizer: Any, text_a: str, text_b: str) -> "SpecialTokenTemplate":
        a = tokenizer(text_a, add_special_tokens=False)["input_ids"]
        b = tokenizer(text_b, add_special_tokens=False)["input_ids"]
        single = tokenizer(text_a, truncation=False)["input_ids"]
        pair_encoding = tokenizer(text_a, text_b, truncation=False, return_token_type_ids=True)
        pair = pair_encoding["input_ids"]
        i = _find(single, a)
        j = _find(pair, a)
        k = _find(pair, b, start=j + len(a))
        types = pair_encoding.get("token_type_ids") or [0] * len(pair)
        return cls(
            single=(tuple(single[:i]), tuple(single[i + len(a) :])),
            pair=(tuple(pair[:j]), tuple(pair[j + len(a) : k]), tuple(pair[k + len(b) :])),
            type_a=int(types[j]),
            type_b=int(types[k]),
        )

    def build(self, ids_a: Sequence[int], ids_b: Sequence[int]) -> tuple[list[int], list[int]]:
        """``input_ids`` and ``token_type_ids`` of one example."""
        if len(ids_b) == 0:
            prefix, suffix = self.single
            ids = [*prefix, *ids_a, *suffix]
            return ids, [self.type_a] * len(ids)
        prefix, middle, suffix = self.pair
        first = [*prefix, *ids_a, *middle]
        second = [*ids_b, *suffix]
        return first + second, [self.type_a] * len(first) + [self.type_b] * len(second)


def _find(haystack: Sequence[int], needle: Sequence[int], start: int = 0) -> int:
    for i in range(start, len(haystack) - len(needle) + 1):
        if list(haystack[i : i + len(needle)]) == list(needle):
            return i
    raise ValueError(f"cannot find {list(needle)} in {list(haystack)} while probing the tokenizer's special tokens")


# A document's label: a label index (-1: unlabelled), or for label sets a 0/1 int8 row over the
# labels (a row of -1: unlabelled), see ``modeling.label_space``.
Label = Union[int, np.ndarray]


def _label(label: Label) -> Label:
    return label if isinstance(label, np.ndarray) else int(label)


@dataclass
class Example:
    """One model input of document ``doc_id`` (several evaluation views may share a document)."""

    doc_id: str
    label: Label
    input_ids: list[int]
    token_type_ids: list[int]


class FeatureBuilder:
    """Turns a stored document into one or several model inputs.

    Training draws with ``epoch`` (new spans each epoch for rs/rso/rsd), or always with epoch 0
    when ``fixed_spans`` (the 2020 tool drew spans once); evaluation and prediction use
    ``EVAL_EPOCH`` and, with views, one rng stream per view. ``max_chunks`` caps the consecutive
    windows of a ``chunks`` view set (training and evaluation alike; None: all of them).
    """

    def __init__(self, config: SeqLenConfig, template: SpecialTokenTemplate, seed: int, fixed_spans: bool = False,
                 max_chunks: int | None = None) -> None:
        self.config = config
        self.template = template
        self.seed = int(seed)
        self.fixed_spans = bool(fixed_spans)
        self.max_chunks = max_chunks

    def _too_long(self, ids_a: Sequence[int], ids_b: Sequence[int]) -> bool:
        budget = self.config.budget_pair if len(ids_b) else self.config.budget_single
        return len(ids_a) + len(ids_b) > budget

    def train_example(self, doc_id: str, label: Label, ids_a: Sequence[int], ids_b: Sequence[int], epoch: int) -> Example:
        draw_epoch = 0 if self.fixed_spans else epoch
        rng = doc_rng(self.seed, draw_epoch, doc_id) if self.config.is_random and self._too_long(ids_a, ids_b) else None
        a, b = apply_seq_len(ids_a, ids_b, self.config, rng)
        ids, types = self.template.build(_to_list(a), _to_list(b))
        return Example(doc_id, _label(label), ids, types)

    def train_views(
        self, doc_id: str, label: Label, ids_a: Sequence[int], ids_b: Sequence[int], epoch: int, views: int | str
    ) -> list[Example]:
        """The views of one training document for ``--train_views`` (pooled into one prediction).

        A document that fits the budget gives exactly one view (itself). Otherwise ``"chunks"``
        gives its consecutive windows (at most ``max_chunks``, see ``pooling.select_windows``)
        and K gives K draws of a random function, view k drawn with
        ``doc_rng(seed, epoch, id, stream=k)`` (view 0 is the draw of ``train_example``), so
        each epoch re-draws and a resumed run draws the same. A deterministic function gives
        one view (K copies of it would only repeat it).
        """
        if views == 1 or not self._too_long(ids_a, ids_b):
            return [self.train_example(doc_id, label, ids_a, ids_b, epoch)]
        if views == EVAL_VIEWS_CHUNKS:
            return [self._build(doc_id, label, a, b) for a, b in self._chunks(ids_a, ids_b)]
        if not self.config.is_random:
            return [self.train_example(doc_id, label, ids_a, ids_b, epoch)]
        draw_epoch = 0 if self.fixed_spans else epoch
        return [
            self._build(doc_id, label, *apply_seq_len(ids_a, ids_b, self.config, doc_rng(self.seed, draw_epoch, doc_id, stream)))
            for stream in range(int(views))
        ]

    def eval_examples(
        self, doc_id: str, label: Label, ids_a: Sequence[int], ids_b: Sequence[int], views: int | str = 1
    ) -> list[Example]:
        """The views of one document for evaluation (deterministic).

        Args:
            views: 1 (the seq function once), K > 1 (K draws of a random seq function; a
                deterministic one gives the same view K times, so it is evaluated once), or
                ``"chunks"`` (consecutive windows of the budget covering all of TEXT_A; at most
                ``max_chunks`` of them, evenly spaced, when it is set).
        """
        if not self._too_long(ids_a, ids_b):
            ids, types = self.template.build(_to_list(ids_a), _to_list(ids_b))
            return [Example(doc_id, _label(label), ids, types)]
        if views == EVAL_VIEWS_CHUNKS:
            return [self._build(doc_id, label, a, b) for a, b in self._chunks(ids_a, ids_b)]
        count = int(views) if self.config.is_random else 1
        out = []
        for stream in range(count):
            rng = doc_rng(self.seed, EVAL_EPOCH, doc_id, stream) if self.config.is_random else None
            a, b = apply_seq_len(ids_a, ids_b, self.config, rng)
            out.append(self._build(doc_id, label, a, b))
        return out

    def train_view_lengths(self, len_a: int, len_b: int, views: int | str = 1) -> list[int]:
        """The input lengths (special tokens included) of the views ``train_views`` builds for a
        document of ``len_a`` + ``len_b`` stored tokens, without building them.

        Token-budget batching (``--max_tokens_per_batch``) and packing (``--pack_views``) cut an
        epoch into batches before its rows are read in a DataLoader worker; every seq function
        gives a length that depends on the lengths only (the random ones take exactly the budget),
        so the cut is a pure function of the stored lengths. ``tests`` check it against the views.
        """
        if views == 1 or not self._too_long(range(len_a), range(len_b)):
            return [self._input_length(len_a, len_b)]
        if views == EVAL_VIEWS_CHUNKS:
            if len_b:
                budget = self.config.budget_pair
                b_keep = min(len_b, max(budget - len_a, budget // 2))
                budget_a = max(budget - b_keep, 1)
            else:
                b_keep, budget_a = 0, max(self.config.budget_single, 1)
            starts = range(0, len_a, budget_a)
            return [self._specials(b_keep) + min(budget_a, len_a - starts[i]) + b_keep
                    for i in select_windows(len(starts), self.max_chunks)]
        count = int(views) if self.config.is_random else 1
        return [self._input_length(len_a, len_b)] * count

    def _specials(self, len_b: int) -> int:
        prefix, middle, suffix = self.template.pair
        return len(prefix) + len(middle) + len(suffix) if len_b else sum(len(part) for part in self.template.single)

    def _input_length(self, len_a: int, len_b: int) -> int:
        """Length of ``build(*apply_seq_len(a, b))`` from the lengths alone (see ``seq_len``: a
        function returns a fitting input unchanged, else ``min(N, budget)`` for head/tail with N,
        ``min(head + tail, budget)`` for ht, and exactly the budget otherwise)."""
        if len_b:
            budget = self.config.budget_pair
            b_keep = min(len_b, max(budget - len_a, budget // 2))
            budget_a = budget - b_keep
        else:
            b_keep, budget_a = 0, self.config.budget_single
        out_a = len_a
        if len_a > budget_a:
            params = self.config.params
            if self.config.name in ("head", "tail") and params:
                out_a = min(params[0], budget_a)
            elif self.config.name == "ht":
                out_a = min(params[0] + params[1], budget_a)
            else:
                out_a = budget_a
        return self._specials(b_keep) + out_a + b_keep

    def _build(self, doc_id: str, label: Label, a: Sequence[int], b: Sequence[int]) -> Example:
        ids, types = self.template.build(_to_list(a), _to_list(b))
        return Example(doc_id, _label(label), ids, types)

    def _chunks(self, ids_a: Sequence[int], ids_b: Sequence[int]) -> list[tuple[Sequence[int], Sequence[int]]]:
        if len(ids_b):
            budget = self.config.budget_pair
            b_keep = min(len(ids_b), max(budget - len(ids_a), budget // 2))
            kept_b, budget_a = ids_b[:b_keep], budget - b_keep
        else:
            kept_b, budget_a = ids_b, self.config.budget_single
        budget_a = max(budget_a, 1)
        starts = range(0, len(ids_a), budget_a)
        return [(ids_a[starts[i] : starts[i] + budget_a], kept_b) for i in select_windows(len(starts), self.max_chunks)]


def _to_list(ids: Sequence[int] | np.ndarray) -> list[int]:
    return ids.tolist() if isinstance(ids, np.ndarray) else list(ids)


def collate(examples: Sequence[Example], pad_token_id: int, pad_to_multiple_of: int | None = None) -> dict[str, Any]:
    """Dynamic padding: pad to the longest input of the batch (optionally to a multiple of 8).

    Rows are copied into preallocated numpy arrays and shared with torch: per-row
    ``torch.as_tensor(list)`` was most of the loader's time (bench/loader.py).
    """
    if not examples:
        raise ValueError("cannot collate an empty batch")
    length = max(len(example.input_ids) for example in examples)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = np.full((len(examples), length), int(pad_token_id), dtype=np.int64)
    token_type_ids = np.zeros((len(examples), length), dtype=np.int64)
    attention_mask = np.zeros((len(examples), length), dtype=np.int64)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = example.input_ids
        token_type_ids[row, :n] = example.token_type_ids
        attention_mask[row, :n] = 1
    return {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(attention_mask),
        "token_type_ids": torch.from_numpy(token_type_ids),
        "labels": label_tensor([example.label for example in examples]),
        "doc_ids": [example.doc_id for example in examples],
    }
