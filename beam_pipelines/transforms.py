"""The preprocessing steps that read and tokenize, as Beam DoFns and CombineFns.

Read and tokenize are fused on one worker per read task (a byte range, a file, or some Parquet
row groups): rows never cross a shuffle as text, and tokenizing starts with the first rows of
the first task, whatever the size of the split. The elements are batches of rows: Beam's
per-element work is paid per batch, not per document (bench/preprocess.py).

A tokenized batch leaves as one Arrow table per shard it touches (``records.RECORD_SCHEMA``),
keyed by ``(split, shard, shards)``: a record's shard is ``stable_hash64(id) % shards``, so the
rows of one ID, wherever they were read, meet in one shard, where ``sinks.WriteShardFn``
keeps the first. Each bad row leaves through the ``rejected`` tagged output as a
``schemas.rows.Rejection``.

Resource guards: a text longer than ``max_doc_chars`` characters is cut to its head and tail
before it reaches the tokenizer (``cap_chars``); one tokenizer call gets at most
``MAX_CHARS_PER_TOKENIZER_CALL`` characters; the train label set is bounded
(``check_label_count``) with a ``CorpusError`` that reaches the user as it was written.

Test hook: ``SPANWISE_TEST_SIGNAL_AT="<KILL|INT>:<point>"`` makes the process send itself
SIGKILL or SIGINT (Ctrl-C) at ``tokenize`` (after the first tokenized batch) or ``write_shard``
(after the first shard file is written); ``tests/test_inputs.py`` checks that the previous
output survives a job killed or interrupted there.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
from collections import Counter
from typing import Any, Iterable, Iterator, Mapping, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa

# Imported here, in the main thread, before Beam starts worker threads: transformers' lazy
# module imports are not thread-safe.
import transformers  # noqa: F401
from transformers import AutoTokenizer  # noqa: F401

from beam_pipelines.records import RECORD_SCHEMA
from corpora.read_progress import TaskProgress
from corpora.readers import DamagedFileError, ReadTask, TaskCounts, read_task
from schemas.rows import Reason, Rejection, Row
from spanwise_io.progress import SharedCounts
from tokenization.documents import MAX_CHARS_PER_TOKENIZER_CALL, cap_chars, cap_tokens, tokenize_texts
from tokenization.rng import stable_hash64
from tokenization.seq_len import SeqLenConfig, apply_seq_len
from tokenization.tokenizer import load_tokenizer

__all__ = [
    "REJECTED",
    "COUNTS",
    "LENGTH_THRESHOLDS",
    "ReadTaskFn",
    "train_labels",
    "build_label_map",
    "TokenizeFn",
    "shard_of",
    "LengthStatsFn",
    "cap_tokens",
    "cap_chars",
    "CorpusError",
    "check_label_count",
    "MAX_CHARS_PER_TOKENIZER_CALL",
    "READ_BATCH_ROWS",
    "SIGNAL_AT_ENV",
    "signal_point",
]

REJECTED = "rejected"
COUNTS = "counts"
# Content-token budgets of max_seq_length 128, 256 and 512 with [CLS] ... [SEP].
LENGTH_THRESHOLDS = (126, 254, 510)
# Rows per element leaving a read task: one Arrow table per shard per this many rows.
READ_BATCH_ROWS = 1024
# ... or fewer, once their texts add up to this many characters (bounds an element's size).
_READ_BATCH_CHARS = 8_000_000
# Example labels a too-many-labels error shows, and how many characters of each.
_EXAMPLE_LABELS = 5
_EXAMPLE_LABEL_CHARS = 40
_QUANTILES = {"p1": 0.01, "p5": 0.05, "p10": 0.10, "p25": 0.25, "p50": 0.50, "p75": 0.75, "p90": 0.90, "p95": 0.95, "p99": 0.99}


# Test hook (see the module docstring).
SIGNAL_AT_ENV = "SPANWISE_TEST_SIGNAL_AT"


def signal_point(point: str) -> None:
    """Send this process the signal ``SPANWISE_TEST_SIGNAL_AT`` names for ``point``, if any (tests only)."""
    wanted = os.environ.get(SIGNAL_AT_ENV, "")
    if wanted.endswith(f":{point}"):
        os.kill(os.getpid(), signal.SIGKILL if wanted.startswith("KILL:") else signal.SIGINT)


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


TaskKey = tuple[str, int, int]  # (split, file index, first byte of the task)


class ReadTaskFn(beam.DoFn):
    """One read task -> batches of parsed rows; bad rows -> ``rejected``; one count per task.

    The main output is ``(task key, rows)`` with at most ``READ_BATCH_ROWS`` rows; the ``counts``
    output is ``(task key, {"lines", "headers"})`` (lines started in the task, header lines),
    from which the pipeline checks read = written + rejected and numbers the lines of later
    byte ranges of a file.

    With ``progress_dir`` (a folder on the launching machine: local runners only), the documents
    and input bytes read are counted there for the launcher's progress (``spanwise_io.progress``).
    """

    def __init__(self, decode_errors: str = "strict", progress_dir: str | None = None):
        self._decode_errors = decode_errors
        self._progress = SharedCounts(progress_dir) if progress_dir else None

    def process(self, task: ReadTask) -> Iterator[Any]:
        file = task.file
        key: TaskKey = (file.split, file.index, task.start)
        counts = TaskCounts()
        batch: list[Row] = []
        chars = rejected = 0
        progress = TaskProgress(task, self._progress.add) if self._progress else None
        for item in self._read(task, counts):
            if isinstance(item, Rejection):
                rejected += 1
                yield beam.pvalue.TaggedOutput(
                    REJECTED, dataclasses.replace(item, file_index=file.index, range_start=task.start)
                )
                continue
            batch.append(item)
            chars += len(item.text_a) + len(item.text_b)
            if len(batch) >= READ_BATCH_ROWS or chars >= _READ_BATCH_CHARS:
                if progress:
                    progress.advance(len(batch) + rejected, batch[-1].offset)
                    rejected = 0
                yield key, batch
                batch, chars = [], 0
        if progress:  # the task is read: its exact counts, before its last batch goes downstream
            progress.finish(counts)
        if batch:
            yield key, batch
        yield beam.pvalue.TaggedOutput(COUNTS, (key, {"lines": counts.lines, "headers": counts.headers}))

    def _read(self, task: ReadTask, counts: TaskCounts) -> Iterator[Row | Rejection]:
        """``read_task``, with a damaged compressed file as a ``CorpusError``: the job stops with
        its one-line message on every runner (``preprocess`` finds it in a remote traceback too)."""
        try:
            yield from read_task(task, counts, self._decode_errors)
        except DamagedFileError as error:
            raise CorpusError(str(error)) from None


def train_labels(element: tuple[TaskKey, Sequence[Row]]) -> list[str]:
    """The distinct labels of a batch of train rows (none for other splits); with label sets
    (``Row.labels``, ``--multi_label``), every label of every set."""
    (split, _, _), rows = element
    if split != "train":
        return []
    return sorted({label for row in rows for label in (row.labels if row.labels is not None else (row.label,))})


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
        "is the label column (--label_column; the 3rd field of the GLUE layout ID, ALPHA_COL, LABEL, TEXT_A[, TEXT_B]) "
        "the one holding the labels? If the corpus really has that many classes, raise --max_labels"
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


def shard_of(row_id: str, file_index: int, offset: int, shards: int) -> int:
    """A record's shard: ``stable_hash64(id) % shards``; for a row without ID, of its place."""
    return stable_hash64(row_id if row_id else f"\x00{file_index}:{offset}") % shards


class TokenizeFn(beam.DoFn):
    """A batch of rows -> one ``records.RECORD_SCHEMA`` table per shard, keyed ``(split, shard, shards)``.

    TEXT_A and TEXT_B are cut at ``max_doc_chars`` characters, tokenized with one batched call
    per ``tokenize_batch_size`` texts (fewer when they exceed ``MAX_CHARS_PER_TOKENIZER_CALL``
    characters), capped at ``max_doc_tokens`` right after each call, and given the
    preprocess-time sequence function if any. A row whose TEXT_A gives no token is rejected
    (``no_tokens``). Labels (and label sets) stay text here: they are mapped where the shard is
    written, once the label map of the whole train split is known, so that tokenizing need not
    wait for it.
    The tokenizer is loaded once per worker in ``setup``.
    """

    def __init__(
        self,
        tokenizer: str,
        max_doc_tokens: int,
        shard_counts: Mapping[str, int],
        seq_config: SeqLenConfig | None = None,
        max_doc_chars: int = 0,
        tokenize_batch_size: int = 64,
    ):
        self._tokenizer_name = tokenizer
        self._max_doc_tokens = max_doc_tokens
        self._shard_counts = dict(shard_counts)
        self._seq_config = seq_config
        self._max_doc_chars = max_doc_chars
        self._tokenize_batch_size = tokenize_batch_size
        self._tokenizer: Any = None

    def setup(self) -> None:
        self._tokenizer = load_tokenizer(self._tokenizer_name)

    def process(self, element: tuple[TaskKey, Sequence[Row]]) -> Iterator[Any]:
        (split, file_index, range_start), rows = element
        shards = self._shard_counts[split]
        kept: list[Row] = []
        ids_a: list[Sequence[int]] = []  # capped (and given the preprocess-time function)
        ids_b: list[Sequence[int]] = []
        lengths_a: list[int] = []  # uncapped
        lengths_b: list[int] = []
        char_cut: list[bool] = []
        for row, a, b, cut in self._tokenized(rows):
            if not a:
                yield beam.pvalue.TaggedOutput(REJECTED, dataclasses.replace(
                    Rejection.of_row(row, Reason.NO_TOKENS, "TEXT_A gives no tokens with this tokenizer"),
                    file_index=file_index, range_start=range_start,
                ))
                continue
            lengths_a.append(len(a))
            lengths_b.append(len(b))
            a, b = cap_tokens(a, self._max_doc_tokens), cap_tokens(b, self._max_doc_tokens)
            if self._seq_config is not None:
                a, b = apply_seq_len(a, b, self._seq_config, rng=None)
            kept.append(row)
            ids_a.append(a)
            ids_b.append(b)
            char_cut.append(cut)
        if not kept:
            return
        signal_point("tokenize")
        count = len(kept)
        table = pa.table(
            {
                "id": [row.id or None for row in kept],
                "label": [row.label for row in kept],
                "labels": [None if row.labels is None else list(row.labels) for row in kept],
                "input_ids_a": ids_a,
                "input_ids_b": ids_b,
                "num_tokens_a": lengths_a,
                "num_tokens_b": lengths_b,
                "alpha": [row.alpha for row in kept],
                "file_index": np.full(count, file_index, dtype=np.int32),
                "range_start": np.full(count, range_start, dtype=np.int64),
                "line": [row.line for row in kept],
                "offset": [row.offset for row in kept],
                "raw": [row.line_as_read() for row in kept],
                "char_cut": char_cut,
            },
            schema=RECORD_SCHEMA,
        )
        keys = np.fromiter((shard_of(row.id, file_index, row.offset, shards) for row in kept), dtype=np.int64, count=count)
        if (keys == keys[0]).all():
            yield (split, int(keys[0]), shards), table
            return
        order = np.argsort(keys, kind="stable")
        table, keys = table.take(pa.array(order)), keys[order]
        bounds = np.flatnonzero(np.diff(keys)) + 1
        for start, end in zip(np.concatenate(([0], bounds)), np.concatenate((bounds, [len(keys)]))):
            yield (split, int(keys[start]), shards), table.slice(int(start), int(end - start))

    def _tokenized(self, rows: Sequence[Row]) -> Iterator[tuple[Row, Sequence[int], Sequence[int], bool]]:
        """``(row, TEXT_A ids, TEXT_B ids, cut at max_doc_chars)``, uncapped (``tokenize_texts``)."""
        texts = tokenize_texts(self._tokenizer, [row.text_a for row in rows], [row.text_b for row in rows],
                               max_doc_chars=self._max_doc_chars, batch_size=self._tokenize_batch_size)
        for index, a, b, cut in texts:
            yield rows[index], a, b, cut


class LengthStatsFn(beam.CombineFn):
    """Exact length statistics from a histogram of lengths.

    The accumulator is a Counter of length -> documents, so merging is a sum and the result does
    not depend on bundle order (deterministic manifest), and quantiles are exact.
    """

    def create_accumulator(self) -> tuple[Counter, int, int]:
        return Counter(), 0, 0

    def add_input(self, accumulator: tuple[Counter, int, int], element: tuple[Counter, int, int]) -> tuple[Counter, int, int]:
        """``element``: the histogram, token-capped and character-cut counts of one shard."""
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

