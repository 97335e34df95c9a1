"""The preprocessing steps as Beam DoFns and CombineFns: read, parse, dedupe, label, tokenize, count.

The elements are batches of rows from reading to writing: Beam's per-element work (encoding,
stage boundaries) then costs per batch, not per document (measured in bench/preprocess.py).
Each bad row leaves through the ``rejected`` tagged output as a ``schemas.tsv.Rejection``; the
main outputs carry only good rows.

Resource guards: a text longer than ``max_doc_chars`` characters is cut to its head and tail when
read (``cap_chars``), before it travels or reaches the tokenizer; one tokenizer call gets at most
``MAX_CHARS_PER_TOKENIZER_CALL`` characters; and the train label set is bounded
(``check_label_count``) with a ``CorpusError`` that reaches the user as it was written.
"""

from __future__ import annotations

import dataclasses
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
    "cap_chars",
    "CharCappedRow",
    "CorpusError",
    "check_label_count",
    "MAX_CHARS_PER_TOKENIZER_CALL",
]

REJECTED = "rejected"
COUNTS = "counts"
STATS = "stats"
# Content-token budgets of max_seq_length 128, 256 and 512 with [CLS] ... [SEP].
LENGTH_THRESHOLDS = (126, 254, 510)
# Characters of text given to one tokenizer call at most. A batch of long texts is tokenized in
# several calls below this, so that a batch of 64 texts of --max_doc_chars each does not need
# 64 times the memory of one (measured: ~0.7 GB per million tokens while the fast tokenizer
# works, so ~0.3-0.4 GB for 2M characters of English). Ordinary batches (64 x a few thousand
# characters) stay one call.
MAX_CHARS_PER_TOKENIZER_CALL = 2_000_000
# How far from a cut point ``cap_chars`` looks for whitespace, so that it does not split a word.
_CUT_WHITESPACE_WINDOW = 100
# Example labels a too-many-labels error shows, and how many characters of each.
_EXAMPLE_LABELS = 5
_EXAMPLE_LABEL_CHARS = 40
_QUANTILES = {"p1": 0.01, "p5": 0.05, "p10": 0.10, "p25": 0.25, "p50": 0.50, "p75": 0.75, "p90": 0.90, "p95": 0.95, "p99": 0.99}


class CorpusError(ValueError):
    """The corpus cannot be preprocessed as given; raised inside the pipeline, for the user to read.

    Its message is complete (what was found, the bound, the flag to change). Beam's DoFnRunner
    adds " [while running '<step>']" to an exception raised in a DoFn and logs its traceback,
    unless the exception says it was already tagged with its step (``_tagged_with_step``):
    this class says so, so the DirectRunner raises it unchanged and without a traceback in the
    log. Where the runner only passes on the worker's traceback as text (Dataflow, the
    DirectRunner's multi_processing mode), ``preprocess`` finds this class's line in it.
    """

    _tagged_with_step = True


@dataclasses.dataclass(frozen=True)
class CharCappedRow(TsvRow):
    """A row whose TEXT_A or TEXT_B was cut by ``cap_chars`` when read (counted in the manifest)."""


def cap_chars(text: str, max_doc_chars: int) -> str:
    """Bound a pathological text before tokenizing: keep its first and last halves of ``max_doc_chars``.

    The same head-and-tail rule as ``cap_tokens``, in characters, so that the tokenizer never
    sees more than ``max_doc_chars`` characters of one text. The cuts move back (head) or
    forward (tail) to whitespace within ``_CUT_WHITESPACE_WINDOW`` characters, so no word is
    split when the text has spaces, and head and tail are joined by one space (counted in the
    budget), so the last word of the head does not merge with the first word of the tail.

    Args:
        text: one TEXT_A or TEXT_B.
        max_doc_chars: the most characters to keep; 0 keeps every text whole.

    Returns:
        ``text`` itself when it is short enough, else a string of at most ``max_doc_chars``
        characters: ``head + " " + tail``.
    """
    if max_doc_chars <= 0 or len(text) <= max_doc_chars:
        return text
    head_end = max_doc_chars // 2
    tail_start = len(text) - (max_doc_chars - head_end - 1)  # one character for the joining space
    for position in range(head_end, max(head_end - _CUT_WHITESPACE_WINDOW, 0) - 1, -1):
        if text[position].isspace():  # text[:position] ends a word
            head_end = position
            break
    for position in range(tail_start - 1, min(tail_start - 1 + _CUT_WHITESPACE_WINDOW, len(text) - 1) + 1):
        if text[position].isspace():  # text[position + 1:] starts a word
            tail_start = position + 1
            break
    return text[:head_end] + " " + text[tail_start:]


def _cap_row_chars(row: TsvRow, max_doc_chars: int) -> TsvRow:
    """``row`` with TEXT_A and TEXT_B each bounded by ``cap_chars``; a ``CharCappedRow`` if one was cut."""
    text_a, text_b = cap_chars(row.text_a, max_doc_chars), cap_chars(row.text_b, max_doc_chars)
    if text_a is row.text_a and text_b is row.text_b:
        return row
    fields = {field.name: getattr(row, field.name) for field in dataclasses.fields(TsvRow)}
    # the line as read, before the cut, for a rejection decided later (duplicate ID, no tokens...)
    return CharCappedRow(**{**fields, "text_a": text_a, "text_b": text_b, "raw": row.line_as_read()})


class ReadParseFn(beam.DoFn):
    """One input file -> batches of unique, parsed rows; bad rows -> ``rejected``; one count.

    A whole file is read by one worker so that line numbers are exact and duplicate IDs are
    found while reading (only the IDs seen so far are kept, not the rows). The elements that
    leave are batches of ``batch_size`` rows, not rows: Beam's per-element cost is paid once
    per batch, and a Reshuffle after this step spreads the batches over workers again.
    A text longer than ``max_doc_chars`` is cut here (``cap_chars``), so the whole of it never
    travels further. The ``counts`` output is one ``(split, {"lines", "headers", "rows"})`` per
    file.
    """

    def __init__(self, batch_size: int, decode_errors: str = "strict", max_doc_chars: int = 0):
        """Configure the reader.

        Args:
            batch_size: rows per output batch.
            decode_errors: ``strict`` or ``replace`` (see ``schemas.tsv.parse_line``).
            max_doc_chars: bound per TEXT_A / TEXT_B in characters; 0 = no bound.
        """
        self._batch_size = batch_size
        self._decode_errors = decode_errors
        self._max_doc_chars = max_doc_chars

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
                    batch.append(_cap_row_chars(parsed, self._max_doc_chars))
                    if len(batch) == self._batch_size:
                        yield batch
                        batch = []
        if batch:
            yield batch
        yield beam.pvalue.TaggedOutput(COUNTS, (split, {"lines": lines, "headers": headers, "rows": len(first_line)}))


def check_label_count(found: int, max_labels: int, smallest: Sequence[str]) -> None:
    """Fail fast when train has more distinct labels than ``max_labels``.

    Args:
        found: the number of distinct train labels.
        max_labels: the bound (``--max_labels``).
        smallest: some of the labels (the pipeline passes the smallest few), shown as examples.

    Raises:
        CorpusError: ``found > max_labels``; the message names the count, the bound, the flag
            and a few labels, cut to a readable length.
    """
    if found <= max_labels:
        return
    examples = ", ".join(
        repr(label if len(label) <= _EXAMPLE_LABEL_CHARS else label[:_EXAMPLE_LABEL_CHARS] + "...")
        for label in sorted(smallest)[:_EXAMPLE_LABELS]
    )
    raise CorpusError(
        f"train has {found} distinct labels, more than --max_labels {max_labels} (e.g. {examples}); "
        "is the LABEL column (the 3rd: ID, ALPHA_COL, LABEL, TEXT_A[, TEXT_B]) the one holding the labels? "
        "If the corpus really has that many classes, raise --max_labels"
    )


def build_label_map(labels: Sequence[str], max_labels: int | None = None, found: int | None = None) -> dict[str, int]:
    """Index the distinct train labels: numeric order when all are integers, else sorted.

    Args:
        labels: the train labels (repeats allowed); in the pipeline, the smallest
            ``max_labels + 1`` distinct ones, so that this list stays bounded.
        max_labels: the bound on distinct labels (``--max_labels``); None = no bound.
        found: the number of distinct train labels when ``labels`` holds only some of them.

    Raises:
        CorpusError: more distinct labels than ``max_labels``.
    """
    distinct = set(labels)
    if max_labels is not None:
        check_label_count(len(distinct) if found is None else found, max_labels, sorted(distinct)[:_EXAMPLE_LABELS])
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
    then TEXT_A and TEXT_B are tokenized with one batched call each (several when the batch has
    more than ``MAX_CHARS_PER_TOKENIZER_CALL`` characters; the tokens are capped right after
    each call). The ``stats`` output is one ``(split, (length histogram, documents capped at
    max_doc_tokens, documents cut at max_doc_chars))`` per batch. The tokenizer is loaded once
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
        by_shard: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
        histogram: Counter = Counter()
        capped_documents = 0
        cut_documents = 0
        for start, end in _char_bounded_groups(rows, MAX_CHARS_PER_TOKENIZER_CALL):
            group = rows[start:end]
            ids_a = tokenize_batch(self._tokenizer, [row.text_a for row in group])
            with_b = [i for i, row in enumerate(group) if row.text_b]
            ids_b: dict[int, list[int]] = dict(zip(with_b, tokenize_batch(self._tokenizer, [group[i].text_b for i in with_b])))
            for index, (row, label_id) in enumerate(zip(group, labels[start:end])):
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
                cut_documents += isinstance(row, CharCappedRow)
            del ids_a, ids_b  # the uncapped ids of this group: free them before the next call
        for key, records in by_shard.items():
            yield key, table_to_ipc(records_to_table(records))
        yield beam.pvalue.TaggedOutput(STATS, (rows[0].split, (histogram, capped_documents, cut_documents)))


def _char_bounded_groups(rows: Sequence[TsvRow], max_chars: int) -> Iterator[tuple[int, int]]:
    """Consecutive ``(start, end)`` ranges of ``rows`` whose TEXT_A (and TEXT_B) characters add up
    to at most ``max_chars`` each; a range holds at least one row whatever its length."""
    start = 0
    chars_a = chars_b = 0
    for index, row in enumerate(rows):
        if index > start and (chars_a + len(row.text_a) > max_chars or chars_b + len(row.text_b) > max_chars):
            yield start, index
            start, chars_a, chars_b = index, 0, 0
        chars_a += len(row.text_a)
        chars_b += len(row.text_b)
    if start < len(rows):
        yield start, len(rows)


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

    def create_accumulator(self) -> tuple[Counter, int, int]:
        return Counter(), 0, 0

    def add_input(self, accumulator: tuple[Counter, int, int], element: tuple[Counter, int, int]) -> tuple[Counter, int, int]:
        """``element``: the histogram, token-capped and character-cut counts of one batch."""
        histogram, capped, cut = accumulator
        batch_histogram, batch_capped, batch_cut = element
        histogram.update(batch_histogram)
        return histogram, capped + int(batch_capped), cut + int(batch_cut)

    def merge_accumulators(self, accumulators: Iterable[tuple[Counter, int, int]]) -> tuple[Counter, int, int]:
        total: Counter = Counter()
        capped = cut = 0
        for histogram, batch_capped, batch_cut in accumulators:
            total.update(histogram)
            capped += batch_capped
            cut += batch_cut
        return total, capped, cut

    def extract_output(self, accumulator: tuple[Counter, int, int]) -> dict[str, Any]:
        histogram, capped, cut = accumulator
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
            # documents whose TEXT_A or TEXT_B was cut to --max_doc_chars before tokenizing: their
            # lengths above are those of the cut text (the true length was never computed)
            "capped_at_max_doc_chars": cut,
        }
