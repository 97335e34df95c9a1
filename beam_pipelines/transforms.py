"""The preprocessing steps as Beam DoFns and CombineFns: read, parse, dedupe, label, tokenize, count.

Each bad row leaves through the ``rejected`` tagged output as a ``schemas.tsv.Rejection``; the
main outputs carry only good rows.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Iterable, Iterator, Mapping, Sequence

import apache_beam as beam
import numpy as np

# Imported here, in the main thread, before Beam starts worker threads: transformers' lazy
# module imports are not thread-safe.
import transformers  # noqa: F401
from transformers import AutoTokenizer  # noqa: F401

import spanwise_io
from schemas.tsv import LABELLED_SPLITS, Reason, Rejection, TsvRow, iter_lines, parse_line
from tokenization.seq_len import SeqLenConfig, apply_seq_len
from tokenization.tokenizer import load_tokenizer, tokenize_batch

__all__ = [
    "REJECTED",
    "HEADER",
    "LENGTH_THRESHOLDS",
    "read_numbered_lines",
    "ParseRowFn",
    "KeepFirstIdFn",
    "build_label_map",
    "ApplyLabelMapFn",
    "TokenizeBatchFn",
    "LengthStatsFn",
    "cap_tokens",
]

REJECTED = "rejected"
HEADER = "header"
# Content-token budgets of max_seq_length 128, 256 and 512 with [CLS] ... [SEP].
LENGTH_THRESHOLDS = (126, 254, 510)
_QUANTILES = {"p1": 0.01, "p5": 0.05, "p10": 0.10, "p25": 0.25, "p50": 0.50, "p75": 0.75, "p90": 0.90, "p95": 0.95, "p99": 0.99}


def read_numbered_lines(split_and_path: tuple[str, str]) -> Iterator[tuple[str, str, int, bytes]]:
    """Yield ``(split, path, line_number, raw_bytes)`` for every line of one input file.

    A whole file is read by one worker so that line numbers are exact; the GroupByKey that
    follows (duplicate IDs) spreads the rows over workers again.
    """
    split, path = split_and_path
    with spanwise_io.open_read(path) as handle:
        for number, raw in iter_lines(handle):
            yield split, path, number, raw


class ParseRowFn(beam.DoFn):
    """Raw line -> ``TsvRow``; bad lines -> ``rejected``; a header line -> ``header``."""

    def __init__(self, decode_errors: str = "strict"):
        self._decode_errors = decode_errors

    def process(self, element: tuple[str, str, int, bytes]) -> Iterator[Any]:
        split, path, number, raw = element
        parsed = parse_line(split, path, number, raw, self._decode_errors)
        if parsed is None:
            yield beam.pvalue.TaggedOutput(HEADER, split)
        elif isinstance(parsed, Rejection):
            yield beam.pvalue.TaggedOutput(REJECTED, parsed)
        else:
            yield parsed


class KeepFirstIdFn(beam.DoFn):
    """Of rows sharing an ID within a split, keep the first (by file, line); reject the rest."""

    def process(self, element: tuple[tuple[str, str], Iterable[TsvRow]]) -> Iterator[Any]:
        _, rows = element
        ordered = sorted(rows, key=lambda row: (row.file, row.line))
        first = ordered[0]
        yield first
        for row in ordered[1:]:
            yield beam.pvalue.TaggedOutput(
                REJECTED,
                Rejection.of_row(
                    row, Reason.DUPLICATE_ID, f"ID {row.id!r} already used at {first.file}:{first.line}; the first is kept"
                ),
            )


def build_label_map(labels: Sequence[str]) -> dict[str, int]:
    """Index the distinct train labels: numeric order when all are integers, else sorted."""
    distinct = set(labels)
    try:
        ordered = sorted(distinct, key=lambda label: (int(label), label))
    except ValueError:
        ordered = sorted(distinct)
    return {label: index for index, label in enumerate(ordered)}


class ApplyLabelMapFn(beam.DoFn):
    """``TsvRow`` -> ``(row, label_id)``; a dev/test label unseen in train is rejected."""

    def process(self, row: TsvRow, label_map: Mapping[str, int]) -> Iterator[Any]:
        if not row.label and row.split not in LABELLED_SPLITS:
            yield row, -1
        elif row.label in label_map:
            yield row, label_map[row.label]
        else:
            yield beam.pvalue.TaggedOutput(
                REJECTED,
                Rejection.of_row(
                    row, Reason.UNSEEN_LABEL, f"label {row.label!r} does not occur in train ({len(label_map)} labels)"
                ),
            )


def cap_tokens(ids: Sequence[int], max_doc_tokens: int) -> Sequence[int]:
    """Bound a pathological document: keep its first half and last half of ``max_doc_tokens``.

    Keeping both ends means ``head``, ``tail`` and ``ht`` still see the true head and tail for
    any budget up to ``max_doc_tokens / 2``.
    """
    if len(ids) <= max_doc_tokens:
        return ids
    keep_head = max_doc_tokens // 2
    keep_tail = max_doc_tokens - keep_head
    return list(ids[:keep_head]) + list(ids[len(ids) - keep_tail :])


class TokenizeBatchFn(beam.DoFn):
    """A batch of ``(row, label_id)`` -> shard records, with one batched tokenizer call per side.

    The tokenizer is loaded once per worker in ``setup``.
    """

    def __init__(self, tokenizer: str, max_doc_tokens: int, seq_config: SeqLenConfig | None = None):
        self._tokenizer_name = tokenizer
        self._max_doc_tokens = max_doc_tokens
        self._seq_config = seq_config
        self._tokenizer: Any = None

    def setup(self) -> None:
        self._tokenizer = load_tokenizer(self._tokenizer_name)

    def process(self, batch: Sequence[tuple[TsvRow, int]]) -> Iterator[Any]:
        rows = [row for row, _ in batch]
        ids_a = tokenize_batch(self._tokenizer, [row.text_a for row in rows])
        with_b = [i for i, row in enumerate(rows) if row.text_b]
        ids_b: dict[int, list[int]] = dict(zip(with_b, tokenize_batch(self._tokenizer, [rows[i].text_b for i in with_b])))
        for index, (row, label_id) in enumerate(batch):
            a = ids_a[index]
            b = ids_b.get(index, [])
            if not a:
                yield beam.pvalue.TaggedOutput(
                    REJECTED, Rejection.of_row(row, Reason.NO_TOKENS, "TEXT_A gives no tokens with this tokenizer")
                )
                continue
            capped_a, capped_b = cap_tokens(a, self._max_doc_tokens), cap_tokens(b, self._max_doc_tokens)
            if self._seq_config is not None:
                capped_a, capped_b = apply_seq_len(capped_a, capped_b, self._seq_config, rng=None)
            yield {
                "split": row.split,
                "id": row.id,
                "label": label_id,
                "input_ids_a": np.asarray(capped_a, dtype=np.int32),
                "input_ids_b": np.asarray(capped_b, dtype=np.int32),
                "num_tokens_a": len(a),
                "num_tokens_b": len(b),
                "alpha": row.alpha,
                "capped": len(a) > self._max_doc_tokens or len(b) > self._max_doc_tokens,
            }


class LengthStatsFn(beam.CombineFn):
    """Exact length statistics from a histogram of lengths.

    The accumulator is a Counter of length -> documents, so merging is a sum and the result does
    not depend on bundle order (deterministic manifest), and quantiles are exact.
    """

    def create_accumulator(self) -> tuple[Counter, int]:
        return Counter(), 0

    def add_input(self, accumulator: tuple[Counter, int], element: tuple[int, bool]) -> tuple[Counter, int]:
        histogram, capped = accumulator
        length, was_capped = element
        histogram[length] += 1
        return histogram, capped + int(was_capped)

    def merge_accumulators(self, accumulators: Iterable[tuple[Counter, int]]) -> tuple[Counter, int]:
        total: Counter = Counter()
        capped = 0
        for histogram, count in accumulators:
            total.update(histogram)
            capped += count
        return total, capped

    def extract_output(self, accumulator: tuple[Counter, int]) -> dict[str, Any]:
        histogram, capped = accumulator
        count = sum(histogram.values())
        if count == 0:
            return {"documents": 0}
        lengths = sorted(histogram)
        cumulative = np.cumsum([histogram[length] for length in lengths])
        quantiles = {
            name: int(lengths[int(np.searchsorted(cumulative, max(1, math.ceil(q * count))))])
            for name, q in _QUANTILES.items()
        }
        total_tokens = sum(length * n for length, n in histogram.items())
        return {
            "documents": count,
            "total_tokens": int(total_tokens),
            "mean": round(total_tokens / count, 2),
            "min": int(lengths[0]),
            "max": int(lengths[-1]),
            "quantiles": quantiles,
            "fraction_longer_than": {
                str(t): round(sum(n for length, n in histogram.items() if length > t) / count, 6)
                for t in LENGTH_THRESHOLDS
            },
            "capped_at_max_doc_tokens": capped,
        }
