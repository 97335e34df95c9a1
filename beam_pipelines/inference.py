"""The batch-prediction steps as Beam DoFns, CombineFns and a RunInference model handler.

They wrap the one prediction path of ``modeling.classifier`` (tokenize as preprocessing, the
model's views with the deterministic draws of evaluation, length-sorted batches, the mean of a
document's view logits), so the pipeline predicts what ``trainer.predict`` and
``Classifier.predict`` predict:

* ``ViewsFn``: a batch of read rows -> ``(document key, view)`` pairs, the views of the batch
  sorted by length so that RunInference's batches (consecutive elements) pad little; rows whose
  text gives no tokens -> ``rejected``. The tokenizer is loaded once per worker (``setup``).
* ``ViewModelHandler``: Beam's ``ModelHandler`` for those views: the model is loaded once per
  worker process and shared by its threads (RunInference's default), on the GPU when there is
  one, its weights cast to bf16/fp16 with ``--bf16``/``--fp16``; batches of ``--batch_size`` views
  or, with ``--max_tokens_per_batch``, sized by RunInference's own batching by the views' tokens
  (``view_tokens``); a batch is sorted by length and padded to its longest view.
* ``PoolLogitsFn``: the mean (or max, the model's ``--pooling``) of a document's view logits,
  combined per document key wherever its views were scored.
* ``KeepFirstIdFn``: of the rows that share an ID, the first (file order, then place in the
  file) is kept and the others are rejected (``duplicate_id``), as preprocessing does.
* For a whole-document model (``--pooling attention|transformer``) the handler returns each
  window's state instead of logits; ``CollectStatesFn`` gathers a document's states in the order
  of its windows (each view carries its position in the document), and ``ApplyHeadFn`` runs the
  model's head (loaded alone, once per worker) on them.
* ``TallyFn``: counts and the confusion matrix (label sets: per-label counts) of the documents that carry a label.

A document's key is a ``DocKey``: unique per row, so two rows with one ID are scored apart
until ``KeepFirstIdFn`` meets them, and it carries what the output (and a rejection) needs, so
no join is needed.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterable, Iterator, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from beam_pipelines.transforms import REJECTED, TaskKey
from modeling.features import Example
from modeling.label_space import LabelSpace
from modeling.prediction_output import Tally
from schemas.rows import Reason, Rejection, Row, describe_place
from spanwise_io.progress import SharedCounts

__all__ = ["DocKey", "ViewKey", "ViewsFn", "ViewModelHandler", "PoolLogitsFn", "CollectStatesFn", "ApplyHeadFn",
           "KeepFirstIdFn", "TallyFn", "to_record", "view_tokens"]



def _not_beams_resource_warning(record: logging.LogRecord) -> bool:
    """A log filter for a false alarm of Beam 2.77's RunInference: it imports ``resource`` in one
    ``try`` with its ``ModelManager``, which needs scipy, so without scipy it says "Resource module
    is not available for current platform" (twice a run) on Linux, where it is. Only that line goes."""
    return not record.getMessage().startswith("Resource module is not available for current platform")


logging.getLogger().addFilter(_not_beams_resource_warning)  # Beam logs it on the root logger

# (id, label as read, file index, offset, line in its read task, the task's first byte, the row as read)
DocKey = tuple[str, str, int, int, int, int, str]
ViewKey = tuple[DocKey, int]  # (document, the view's position among the document's views)


def view_tokens(element: tuple[ViewKey, Example]) -> int:
    """A keyed view's length in tokens (for batching by size)."""
    return len(element[1].input_ids)


class ViewsFn(beam.DoFn):
    """``(task key, rows)`` -> ``((document key, position), view)`` per view, sorted by length; no tokens -> rejected."""

    def __init__(self, model_dir: str, views: int | str, file_names: dict[int, str], progress_dir: str | None = None):
        self._model_dir = model_dir
        self._views = views
        self._file_names = dict(file_names)
        self._documents: Any = None
        self._progress = SharedCounts(progress_dir) if progress_dir else None  # views made, for the launcher

    def setup(self) -> None:
        from modeling.classifier import DocumentViews, TrainedView, local_model_path
        from tokenization.tokenizer import load_tokenizer

        local = local_model_path(self._model_dir)
        self._documents = DocumentViews(load_tokenizer(local), TrainedView.read(local))

    def process(self, element: tuple[TaskKey, Sequence[Row]]) -> Iterator[Any]:
        (_, file_index, range_start), rows = element
        name = self._file_names[file_index]
        keyed: list[tuple[ViewKey, Example]] = []
        for index, ids_a, ids_b in self._documents.token_ids([r.text_a for r in rows], [r.text_b for r in rows]):
            row = rows[index]
            if not len(ids_a):
                rejection = Rejection.of_row(row, Reason.NO_TOKENS, "TEXT_A gives no tokens with this tokenizer")
                yield beam.pvalue.TaggedOutput(
                    REJECTED, dataclasses.replace(rejection, file_index=file_index, range_start=range_start)
                )
                continue
            doc_id = row.id or f"{name}:{row.line or row.offset}"  # (files without IDs are read whole)
            label = row.labels if self._documents.view.label_space.multi_label else row.label  # (a tuple, or None)
            key: DocKey = (doc_id, label, file_index, row.offset, row.line, range_start, row.line_as_read())
            for position, view in enumerate(self._documents.views(doc_id, ids_a, ids_b, self._views)):
                keyed.append(((key, position), view))
        keyed.sort(key=view_tokens)
        if self._progress is not None:  # all of the batch's views at once: they are yielded as scored
            self._progress.add(views=len(keyed))
        yield from keyed


class ViewModelHandler(ModelHandler[Example, PredictionResult, Any]):
    """RunInference's handler of our views: load the saved classifier, score a batch of views.

    Args:
        model_dir: the model folder (local or ``gs://``).
        batch_size: views per forward pass: RunInference's batches are of this many views (fixed:
            Beam's default would start at 1 and grow them by timing, many small batches).
        device: ``auto`` (the GPU when there is one), ``cpu`` or ``cuda``.
        bf16, fp16: cast the weights (``modeling.scoring.inference_dtype``), not autocast.
        large_model: one copy of the model per worker machine, shared by its processes
            (Beam's ``share_model_across_processes``) instead of one per process.
        max_tokens: instead of ``batch_size``: batches of this many tokens, summed over their
            views (``element_size_fn=view_tokens``); ``ViewsFn`` emits views sorted by length, and a
            batch whose views times its longest exceed it is scored in parts that do not.
    """

    def __init__(self, model_dir: str, batch_size: int, device: str = "auto", bf16: bool = False, fp16: bool = False,
                 large_model: bool = False, max_tokens: int | None = None):
        if max_tokens is None:
            super().__init__(min_batch_size=batch_size, max_batch_size=batch_size, large_model=large_model)
        else:
            # Beam 2.77's ModelHandler takes max_batch_weight, but RunInference passes it on to BatchElements,
            # which refuses it (TypeError). BatchElements counts min/max_batch_size in element_size_fn's units:
            # the same budget, in tokens.
            super().__init__(min_batch_size=max_tokens, max_batch_size=max_tokens, element_size_fn=view_tokens,
                             large_model=large_model)
        self._model_dir = model_dir
        self._device_name = device
        self._bf16, self._fp16 = bf16, fp16
        self._max_tokens = max_tokens
        self._pad_token_id: int | None = None

    def load_model(self) -> Any:
        from modeling.classifier import load_scoring_model, local_model_path, pick_device
        from modeling.scoring import inference_dtype
        from tokenization.tokenizer import load_tokenizer

        local = local_model_path(self._model_dir)
        tokenizer = load_tokenizer(local)
        device = pick_device(self._device_name)
        model = load_scoring_model(local, device, inference_dtype(self._bf16, self._fp16, device))
        model.spanwise_pad_token_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        return model

    def run_inference(self, batch: Sequence[Example], model: Any, inference_args: dict[str, Any] | None = None
                      ) -> Iterable[PredictionResult]:
        from modeling.scoring import score_views

        device = next(model.parameters()).device
        logits = score_views(model, batch, device=device, pad_token_id=model.spanwise_pad_token_id,
                             batch_size=len(batch), max_tokens=self._max_tokens)
        return [PredictionResult(None, row) for row in logits]

    def get_num_bytes(self, batch: Sequence[Example]) -> int:
        return sum(16 * len(example.input_ids) for example in batch)  # ids and type ids, int64

    def get_metrics_namespace(self) -> str:
        return "spanwise_predict"


class PoolLogitsFn(beam.CombineFn):
    """A document's view logits -> ``(pooled logits, views)``: their mean, or per class their
    maximum (``pooling``, the model's ``--pooling``), as ``modeling.scoring.pool_views``."""

    def __init__(self, pooling: str = "mean"):
        if pooling not in ("mean", "max"):
            raise ValueError(f"pooling must be mean or max, got {pooling!r}")
        self._max = pooling == "max"

    def create_accumulator(self) -> tuple[np.ndarray | None, int]:
        return None, 0

    def _join(self, total: np.ndarray | None, part: np.ndarray) -> np.ndarray:
        if total is None:
            return part.copy()
        return np.maximum(total, part) if self._max else total + part

    def add_input(self, accumulator: tuple[np.ndarray | None, int], scored: tuple[int, np.ndarray]) -> tuple[np.ndarray, int]:
        total, count = accumulator
        return self._join(total, np.asarray(scored[1], dtype=np.float64)), count + 1

    def merge_accumulators(self, accumulators: Iterable[tuple[np.ndarray | None, int]]) -> tuple[np.ndarray | None, int]:
        total: np.ndarray | None = None
        count = 0
        for part, n in accumulators:
            if part is not None:
                total = self._join(total, part)
            count += n
        return total, count

    def extract_output(self, accumulator: tuple[np.ndarray | None, int]) -> tuple[np.ndarray, int]:
        total, count = accumulator
        if total is None:
            raise ValueError("a document has no scored view")
        return (total if self._max else total / count).astype(np.float32), count


class CollectStatesFn(beam.CombineFn):
    """A document's ``(position, window state)`` pairs -> its states in window order, ``(windows, hidden)``."""

    def create_accumulator(self) -> list[tuple[int, np.ndarray]]:
        return []

    def add_input(self, accumulator: list[tuple[int, np.ndarray]], scored: tuple[int, np.ndarray]) -> list[tuple[int, np.ndarray]]:
        accumulator.append((int(scored[0]), np.asarray(scored[1], dtype=np.float32)))
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[list[tuple[int, np.ndarray]]]) -> list[tuple[int, np.ndarray]]:
        return [pair for part in accumulators for pair in part]

    def extract_output(self, accumulator: list[tuple[int, np.ndarray]]) -> np.ndarray:
        if not accumulator:
            raise ValueError("a document has no scored view")
        return np.stack([state for _, state in sorted(accumulator, key=lambda pair: pair[0])])


class ApplyHeadFn(beam.DoFn):
    """``(document key, window states)`` -> ``(document key, (logits, views))`` by the model's head.

    The head alone is loaded (``modeling.classifier.load_window_head``), once per worker, on the CPU:
    it is small next to the encoder, and a document's windows are few.
    """

    def __init__(self, model_dir: str, bf16: bool = False):
        self._model_dir = model_dir
        self._bf16 = bf16
        self._head: Any = None

    def setup(self) -> None:
        import torch

        from modeling.classifier import load_window_head

        self._head = load_window_head(self._model_dir)
        if self._bf16:  # as the encoder's weights (ViewModelHandler), cast once
            self._head = self._head.to(torch.bfloat16)

    def process(self, element: tuple[DocKey, np.ndarray]) -> Iterator[tuple[DocKey, tuple[np.ndarray, int]]]:
        from modeling.scoring import head_logits

        key, states = element
        logits = head_logits(self._head, states, [0] * len(states), 1)
        yield key, (logits[0], len(states))


def to_record(element: tuple[DocKey, tuple[np.ndarray, int]], label_space: LabelSpace) -> dict[str, Any]:
    """A pooled document -> its output record (``id``, ``label`` or ``labels``, ``probabilities``, ``views``)."""
    (doc_id, *_), (logits, views) = element
    record = label_space.record(doc_id, label_space.probabilities(logits[None, :])[0])
    record["views"] = views
    return record


class KeepFirstIdFn(beam.DoFn):
    """``(id, [(document key, pooled)...])`` -> the first row's ``(document key, pooled)``; each later
    row of that ID -> ``rejected`` (``duplicate_id``, naming where the kept one is).

    "First" is preprocessing's order: the file's place in ``--input_files``, then the row's place
    in the file. Side input: every read task's counts, to give the kept row's line in its file.
    """

    def __init__(self, split: str, paths: dict[int, str]):
        self._split = split
        self._paths = dict(paths)

    def process(self, element: tuple[str, Iterable[tuple[DocKey, Any]]], task_counts: Any) -> Iterator[Any]:
        doc_id, documents = element
        ordered = sorted(documents, key=lambda document: (document[0][2], document[0][3]))
        yield ordered[0]
        if len(ordered) == 1:
            return
        from beam_pipelines.records import LineIndex

        _, _, file_index, offset, line, range_start, _ = ordered[0][0]
        where = describe_place(self._paths[file_index],
                               LineIndex.of(task_counts).line(self._split, file_index, range_start, line), offset)
        for (_, _, file_index, offset, line, range_start, raw), _ in ordered[1:]:
            yield beam.pvalue.TaggedOutput(REJECTED, Rejection(
                self._split, self._paths[file_index], line or None, Reason.DUPLICATE_ID,
                f"ID {doc_id!r} already used at {where}; the first is kept", raw, offset, file_index, range_start,
            ))


class TallyFn(beam.CombineFn):
    """Pooled documents -> a ``modeling.prediction_output.Tally`` (counts and confusion matrix)."""

    def __init__(self, label_space: LabelSpace):
        self._label_space = label_space

    def create_accumulator(self) -> Tally:
        return Tally(self._label_space)

    def add_input(self, tally: Tally, element: tuple[DocKey, tuple[np.ndarray, int]]) -> Tally:
        (_, label, *_), (logits, views) = element
        space = self._label_space
        tally.add([label], space.decide(space.probabilities(logits[None, :])), views)
        return tally

    def merge_accumulators(self, tallies: Iterable[Tally]) -> Tally:
        out = Tally(self._label_space)
        for tally in tallies:
            out.merge(tally)
        return out

    def extract_output(self, tally: Tally) -> Tally:
        return tally
