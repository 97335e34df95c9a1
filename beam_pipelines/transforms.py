"""The preprocessing steps as Beam DoFns and CombineFns: read, parse, dedupe, label, tokenize, count.

The elements are batches of rows from reading to writing: Beam's per-element work (encoding,
stage boundaries) then costs per batch, not per document (measured in bench/preprocess.py).
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
from schemas.shard import records_to_table, table_to_ipc
from tokenization.rng import stable_hash64
from tokenization.seq_len import SeqLenConfig, apply_seq_len
from tokenization.tokenizer import load_tokenizer, tokenize_batch

__all__ = [
    "REJECTED",
    "COUNTS",
    "STATS",
    "LENGTH_THRESHOLDS",
    "ReadParseFn",
    "build_label_map",
    "TokenizeBatchFn",
    "shard_count",
    "LengthStatsFn",
    "cap_tokens",
]

REJECTED = "rejected"
COUNTS = "counts"
STATS = "stats"
# Content-token budgets of max_seq_length 128, 256 and 512 with [CLS] ... [SEP].
LENGTH_THRESHOLDS = (126, 254, 510)
_QUANTILES = {"p1": 0.01, "p5": 0.05, "p10": 0.10, "p25": 0.25, "p50": 0.50, "p75": 0.75, "p90": 0.90, "p95": 0.95, "p99": 0.99}


class ReadParseFn(beam.DoFn):
    """One input file -> batches of unique, parsed rows; bad rows -> ``rejected``; one count.

    A whole file is read by one worker so that line numbers are exact and duplicate IDs are
    found while reading (only the IDs seen so far are kept, not the rows). The elements that
    leave are batches of ``batch_size`` rows, not rows: Beam's per-element cost is paid once
    per batch, and a Reshuffle after this step spreads the batches over workers again.
    The ``counts`` output is one ``(split, {"lines", "headers", "rows"})`` per file.
    """

    def __init__(self, batch_size: int, decode_errors: str = "strict"):
        self._batch_size = batch_size
        self._decode_errors = decode_errors

    def process(self, split_and_path: tuple[str, str]) -> Iterator[Any]:
        split, path = split_and_path
        first_line: dict[str, int] = {}
        batch: list[TsvRow] = []
        lines = headers = 0
        with spanwise_io.open_read(path) as handle:
            for number, raw in iter_lines(handle):
                lines += 1
                parsed = parse_line(split, path, number, raw, self._decode_errors)
                if parsed is None:
                    headers += 1
                elif isinstance(parsed, Rejection):
                    yield beam.pvalue.TaggedOutput(REJECTED, parsed)
                elif parsed.id in first_line:
                    detail = f"ID {parsed.id!r} already used at {path}:{first_line[parsed.id]}; the first is kept"
                    yield beam.pvalue.TaggedOutput(REJECTED, Rejection.of_row(parsed, Reason.DUPLICATE_ID, detail))
                else:
                    first_line[parsed.id] = number
                    batch.append(parsed)
                    if len(batch) == self._batch_size:
                        yield batch
                        batch = []
        if batch:
            yield batch
        yield beam.pvalue.TaggedOutput(COUNTS, (split, {"lines": lines, "headers": headers, "rows": len(first_line)}))


def build_label_map(labels: Sequence[str]) -> dict[str, int]:
    """Index the distinct train labels: numeric order when all are integers, else sorted."""
    distinct = set(labels)
    try:
        ordered = sorted(distinct, key=lambda label: (int(label), label))
    except ValueError:
        ordered = sorted(distinct)
    return {label: index for index, label in enumerate(ordered)}


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
    """A batch of rows -> shard records, grouped by shard: ``((split, index, count), arrow_ipc_bytes)``.

    The records of a batch travel to their shard as one Arrow table in IPC bytes: Beam encodes
    one opaque value per batch instead of pickling two token arrays per document.

    Labels are mapped first (a dev/test label unseen in train is rejected, and not tokenized),
    then TEXT_A and TEXT_B are tokenized with one batched call each. The ``stats`` output is one
    ``(split, (length histogram, capped documents))`` per batch. The tokenizer is loaded once
    per worker in ``setup``; the shard of a record is ``stable_hash64(id) % count``, with
    ``count`` from the number of unique rows of its split (the ``counts`` side input).
    """

    def __init__(
        self,
        tokenizer: str,
        max_doc_tokens: int,
        seq_config: SeqLenConfig | None = None,
        num_shards: int = 0,
        rows_per_shard: int = 10_000,
    ):
        self._tokenizer_name = tokenizer
        self._max_doc_tokens = max_doc_tokens
        self._seq_config = seq_config
        self._num_shards = num_shards
        self._rows_per_shard = rows_per_shard
        self._tokenizer: Any = None

    def setup(self) -> None:
        self._tokenizer = load_tokenizer(self._tokenizer_name)

    def process(self, batch: Sequence[TsvRow], label_map: Mapping[str, int], counts: Mapping[str, Mapping[str, int]]) -> Iterator[Any]:
        rows: list[TsvRow] = []
        labels: list[int] = []
        for row in batch:
            if not row.label and row.split not in LABELLED_SPLITS:
                rows.append(row)
                labels.append(-1)
            elif row.label in label_map:
                rows.append(row)
                labels.append(label_map[row.label])
            else:
                detail = f"label {row.label!r} does not occur in train ({len(label_map)} labels)"
                yield beam.pvalue.TaggedOutput(REJECTED, Rejection.of_row(row, Reason.UNSEEN_LABEL, detail))
        if not rows:
            return
        ids_a = tokenize_batch(self._tokenizer, [row.text_a for row in rows])
        with_b = [i for i, row in enumerate(rows) if row.text_b]
        ids_b: dict[int, list[int]] = dict(zip(with_b, tokenize_batch(self._tokenizer, [rows[i].text_b for i in with_b])))
        by_shard: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
        histogram: Counter = Counter()
        capped_documents = 0
        for index, (row, label_id) in enumerate(zip(rows, labels)):
            a = ids_a[index]
            b = ids_b.get(index, [])
            if not a:
                yield beam.pvalue.TaggedOutput(
                    REJECTED, Rejection.of_row(row, Reason.NO_TOKENS, "TEXT_A gives no tokens with this tokenizer")
                )
                continue
            capped = len(a) > self._max_doc_tokens or len(b) > self._max_doc_tokens
            kept_a, kept_b = cap_tokens(a, self._max_doc_tokens), cap_tokens(b, self._max_doc_tokens)
            if self._seq_config is not None:
                kept_a, kept_b = apply_seq_len(kept_a, kept_b, self._seq_config, rng=None)
            count = shard_count(counts[row.split]["rows"], self._num_shards, self._rows_per_shard)
            key = (row.split, stable_hash64(row.id) % count, count)
            by_shard.setdefault(key, []).append(
                {
                    "id": row.id,
                    "label": label_id,
                    "input_ids_a": np.asarray(kept_a, dtype=np.int32),
                    "input_ids_b": np.asarray(kept_b, dtype=np.int32),
                    "num_tokens_a": len(a),
                    "num_tokens_b": len(b),
                    "alpha": row.alpha,
                }
            )
            histogram[len(a) + len(b)] += 1
            capped_documents += capped
        for key, records in by_shard.items():
            yield key, table_to_ipc(records_to_table(records))
        yield beam.pvalue.TaggedOutput(STATS, (rows[0].split, (histogram, capped_documents)))


def shard_count(records: int, num_shards: int, rows_per_shard: int) -> int:
    """``num_shards`` when set, else enough shards of ``rows_per_shard`` rows (at least one)."""
    if num_shards > 0:
        return num_shards
    return max(1, math.ceil(records / rows_per_shard))


class LengthStatsFn(beam.CombineFn):
    """Exact length statistics from a histogram of lengths.

    The accumulator is a Counter of length -> documents, so merging is a sum and the result does
    not depend on bundle order (deterministic manifest), and quantiles are exact.
    """

    def create_accumulator(self) -> tuple[Counter, int]:
        return Counter(), 0

    def add_input(self, accumulator: tuple[Counter, int], element: tuple[Counter, int]) -> tuple[Counter, int]:
        """``element``: the histogram and capped count of one batch."""
        histogram, capped = accumulator
        batch_histogram, batch_capped = element
        histogram.update(batch_histogram)
        return histogram, capped + int(batch_capped)

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
