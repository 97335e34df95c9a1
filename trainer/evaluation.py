"""Evaluation and prediction: deterministic views of each document, logits pooled per document.

Shared by the trainer (``evaluate``) and ``trainer.predict``. Each rank scores its own slice of
the split (no padding, every document once) and the slices are gathered on every rank.

The views are built in DataLoader workers (``--dataloader_num_workers``): a rank's slice is cut
into blocks of documents, worker ``w`` of ``K`` takes blocks ``w, w + K, ...`` and cuts each
block's views into batches. The batches depend on the blocks only, so the logits do not depend
on the number of workers. The logits stay on the device, summed per document with
``index_add_``, and come to the host once, at the end. A head over the windows
(``--pooling attention|transformer``) needs all of a document's windows in one forward: its
batches end at document boundaries (up to ``batch_size`` windows, or one document's windows
when it alone has more), and the model's document logits are written to their rows.
"""

from __future__ import annotations

import io
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from modeling.batching import plan_batches
from modeling.features import Example, FeatureBuilder, collate, parse_views
from modeling.label_space import LabelSpace, labelled_rows
from modeling.metrics import best_threshold, classification_metrics, confusion_matrix, label_set_counts, multi_label_metrics
from modeling.pooling import (
    add_to_pool_,
    batch_inputs,
    finish_pool,
    keeps_documents_whole,
    model_input_names,
    new_pool,
    pooled_forward,
)
from modeling.prediction_output import PredictionWriter
from trainer.data import EpochPlan, _RowGroupReader, eval_plan, raise_batch_error, read_rows_at, start_loader, worker_init_threads
from trainer.shards import DataLimits, ShardProblem, Unit

__all__ = ["score_documents", "evaluate_split", "label_metrics", "parse_views", "render_predictions", "EvalStream", "BLOCK_BATCHES"]

BLOCK_BATCHES = 8  # documents per block: this many batches' worth


class EvalStream(IterableDataset):
    """Batches of the views of one rank's documents; ``owners`` index each view's document.

    Every batch carries ``docs``: ``(index, doc id, label)`` of the documents whose first view
    is in it (a block whose row groups were all skipped yields a batch of ``docs`` only).
    A row group that cannot be read ends the stream with ``{"error": message}`` (see
    ``raise_batch_error``) or, with ``skip_bad_row_groups``, is left out and listed under
    ``bad_row_groups``. With ``whole_documents`` no document's views are split between batches.
    """

    def __init__(
        self,
        plan: EpochPlan,
        features: FeatureBuilder,
        *,
        views: int | str,
        batch_size: int,
        pad_token_id: int,
        limits: DataLimits | None = None,
        skip_bad_row_groups: bool = False,
        whole_documents: bool = False,
        max_tokens: int | None = None,
    ) -> None:
        super().__init__()
        self.plan, self.features, self.views = plan, features, views
        self.batch_size, self.pad_token_id = batch_size, pad_token_id
        self.limits, self.skip_bad_row_groups = limits, skip_bad_row_groups
        self.whole_documents = whole_documents
        self.max_tokens = max_tokens
        self.block_rows = batch_size * BLOCK_BATCHES

    @property
    def num_blocks(self) -> int:
        return -(-self.plan.num_rows // self.block_rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        reader = _RowGroupReader(capacity=2, limits=self.limits)
        for block in range(worker, self.num_blocks, workers):
            begin = self.plan.start + block * self.block_rows
            positions = np.arange(begin, min(begin + self.block_rows, self.plan.stop), dtype=np.int64)
            skipped: list[ShardProblem] | None = [] if self.skip_bad_row_groups else None
            try:
                rows = read_rows_at(self.plan, positions, reader, skipped)
            except ShardProblem as problem:
                yield {"error": str(problem)}
                return
            batches = list(self._batches(rows))
            if skipped:
                batches[0]["bad_row_groups"] = [problem.to_dict() for problem in skipped]
            yield from batches

    def _batches(self, rows: list[tuple[int, tuple[str, int, np.ndarray, np.ndarray]]]) -> Iterator[dict[str, Any]]:
        if self.max_tokens is not None:
            yield from self._token_batches(rows)
            return
        pending: list[Example] = []
        owners: list[int] = []
        docs: list[tuple[int, str, int]] = []
        for position, (doc_id, label, ids_a, ids_b) in rows:
            index = position - self.plan.start
            examples = self.features.eval_examples(doc_id, label, ids_a, ids_b, self.views)
            if self.whole_documents and pending and len(pending) + len(examples) > self.batch_size:
                yield self._batch(pending, owners, docs)
                pending, owners, docs = [], [], []
            docs.append((index, doc_id, label))
            for example in examples:
                pending.append(example)
                owners.append(index)
                if len(pending) >= self.batch_size and not self.whole_documents:
                    yield self._batch(pending, owners, docs)
                    pending, owners, docs = [], [], []
        if pending or docs or not rows:
            yield self._batch(pending, owners, docs)

    def _token_batches(self, rows: list[tuple[int, tuple[str, int, np.ndarray, np.ndarray]]]) -> Iterator[dict[str, Any]]:
        """``max_tokens``: the block's views sorted by length, in batches of at most that many padded
        tokens (``modeling.batching.plan_batches``); the block's documents listed in its first batch.
        With ``whole_documents``, documents in their order, a batch ending before the document that
        would take it over the budget (a document alone over it gets a batch of its own)."""
        docs: list[tuple[int, str, int]] = []
        per_document: list[list[Example]] = []
        for position, (doc_id, label, ids_a, ids_b) in rows:
            docs.append((position - self.plan.start, doc_id, int(label)))
            per_document.append(self.features.eval_examples(doc_id, label, ids_a, ids_b, self.views))
        if not self.whole_documents:
            examples = [example for views in per_document for example in views]
            owners = [doc[0] for doc, views in zip(docs, per_document) for _ in views]
            batches = plan_batches([len(example.input_ids) for example in examples], self.batch_size, self.max_tokens)
            for number, picked in enumerate(batches):
                yield self._batch([examples[i] for i in picked], [owners[i] for i in picked], docs if number == 0 else [])
            if not batches:
                yield self._batch([], [], docs)
            return
        pending: list[Example] = []
        owners = []
        listed: list[tuple[int, str, int]] = []
        longest = 0
        for doc, views in zip(docs, per_document):
            own = max(len(example.input_ids) for example in views)
            if pending and (len(pending) + len(views)) * max(longest, own) > self.max_tokens:
                yield self._batch(pending, owners, listed)
                pending, owners, listed, longest = [], [], [], 0
            listed.append(doc)
            pending.extend(views)
            owners.extend([doc[0]] * len(views))
            longest = max(longest, own)
        if pending or listed or not rows:
            yield self._batch(pending, owners, listed)

    def _batch(self, examples: list[Example], owners: list[int], docs: list[tuple[int, str, int]]) -> dict[str, Any]:
        batch: dict[str, Any] = collate(examples, self.pad_token_id) if examples else {}
        batch["owners"] = torch.as_tensor(owners, dtype=torch.long)
        batch["docs"] = docs
        return batch


@torch.no_grad()
def score_documents(
    model: torch.nn.Module,
    units: Sequence[Unit],
    features: FeatureBuilder,
    *,
    views: int | str,
    batch_size: int,
    device: torch.device,
    pad_token_id: int,
    autocast_dtype: torch.dtype | None = None,
    rank: int = 0,
    world_size: int = 1,
    limits: DataLimits | None = None,
    skipped: list[ShardProblem] | None = None,
    num_workers: int = 0,
    pooling: str = "mean",
    progress: Callable[[int], None] | None = None,
    max_tokens: int | None = None,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Doc ids, labels and pooled logits (``pooling``: mean or max of its views', or the model's
    head over them: attention, transformer) of every document of the split (all ranks).

    A row group that cannot be read raises ValueError naming the file and row group or, when
    ``skipped`` is a list, its documents are left out and the problem is appended to it (this
    rank's problems only). ``limits`` bounds the labels
    and token ids read; ``num_workers`` DataLoader workers build the views. ``progress`` is told
    how many more documents each batch starts to score (``trainer.predict``'s progress).
    ``max_tokens``: batches of that many padded tokens instead of ``batch_size`` views
    (``trainer.predict --max_tokens_per_batch``; ``EvalStream._token_batches``).
    """
    plan = eval_plan(units, batch_size=batch_size, rank=rank, world_size=world_size)
    whole = keeps_documents_whole(pooling)
    stream = EvalStream(
        plan, features, views=views, batch_size=batch_size, pad_token_id=pad_token_id, limits=limits,
        skip_bad_row_groups=skipped is not None, whole_documents=whole, max_tokens=max_tokens,
    )
    loader = DataLoader(
        stream, batch_size=None, num_workers=num_workers,
        worker_init_fn=worker_init_threads if num_workers else None,
        pin_memory=device.type == "cuda", prefetch_factor=4 if num_workers else None,
    )
    num_docs = plan.num_rows
    doc_ids: list[str | None] = [None] * num_docs
    labels: list[Any] = [-1] * num_docs
    sums: torch.Tensor | None = None
    counts = torch.zeros(num_docs, device=device)
    seen_problems: set[tuple[str, int]] = set()
    was_training = model.training
    input_names = model_input_names(model)
    model.eval()
    try:
        for batch in start_loader(loader) if num_workers else iter(loader):
            raise_batch_error(batch, "; a run with --skip_bad_shards skips it" if skipped is None else "")
            for problem in batch.get("bad_row_groups", ()):
                key = (problem["path"], problem["row_group"])
                if skipped is not None and key not in seen_problems:
                    seen_problems.add(key)
                    skipped.append(ShardProblem(problem["path"], problem["problem"], problem.get("row_group"), problem["rows"]))
            for index, doc_id, label in batch["docs"]:
                doc_ids[index], labels[index] = doc_id, label
            if progress is not None and batch["docs"]:
                progress(len(batch["docs"]))
            if "input_ids" not in batch:
                continue
            inputs = batch_inputs(batch, input_names, device)
            if whole:  # the model pools each document's windows (all of them in this batch)
                rows, local = torch.unique(batch["owners"], return_inverse=True)  # on the host: no sync
                rows = rows.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    logits = pooled_forward(model, inputs, local.to(device, non_blocking=True), len(rows), pooling)
                if sums is None:
                    sums = torch.zeros((num_docs, logits.shape[1]), device=device)
                sums[rows] = logits
                counts.index_add_(0, batch["owners"].to(device, non_blocking=True),
                                  torch.ones(len(batch["owners"]), device=device))
                continue
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                logits = model(**inputs).logits.float()
            if sums is None:
                sums = new_pool(num_docs, logits.shape[1], pooling, device)
            owners = batch["owners"].to(device, non_blocking=True)
            add_to_pool_(sums, owners, logits, pooling)
            counts.index_add_(0, owners, torch.ones_like(owners, dtype=counts.dtype))
    finally:
        model.train(was_training)
    present = [index for index, doc_id in enumerate(doc_ids) if doc_id is not None]
    if sums is not None and present:
        pooled = (sums if whole else finish_pool(sums, counts, pooling)).cpu().numpy()[present]  # the one transfer to the host
    else:
        pooled = np.zeros((0, 0), dtype=np.float32)
    result = ([doc_ids[i] for i in present], _label_array([labels[i] for i in present]), pooled)
    if world_size > 1:
        gathered: list[Any] = [None] * world_size
        dist.all_gather_object(gathered, result)
        ids = [doc for part in gathered for doc in part[0]]
        parts = [part for part in gathered if len(part[0])]
        result = (ids, np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts]))
    return result


def _label_array(labels: Sequence[Any]) -> np.ndarray:
    """Documents' labels as one array: indices ``[documents]``, or 0/1 rows ``[documents, labels]``."""
    if labels and isinstance(labels[0], np.ndarray):
        return np.stack(labels)
    return np.asarray(labels, dtype=np.int64)


def evaluate_split(
    model: torch.nn.Module,
    units: Sequence[Unit],
    features: FeatureBuilder,
    label_space: LabelSpace,
    **kwargs: Any,
) -> dict[str, Any]:
    """The metrics of the split's labelled documents (``label_metrics``)."""
    _, labels, logits = score_documents(model, units, features, **kwargs)
    return label_metrics(label_space, labels, logits)


def label_metrics(label_space: LabelSpace, labels: np.ndarray, logits: np.ndarray) -> dict[str, Any]:
    """Loss and metrics of the labelled documents among ``labels`` and their pooled ``logits``.

    One label: accuracy, macro-F1, MCC, per-class precision/recall and the confusion matrix.
    Label sets: micro-F1, macro-F1 and exact-match accuracy at the label space's threshold,
    per-label precision/recall, and the threshold that maximises micro-F1 here
    (``best_threshold``, with ``micro_f1_at_best_threshold``).

    Raises:
        ValueError: no document is labelled.
    """
    labelled = labelled_rows(labels)
    if not labelled.any():
        raise ValueError("the evaluation split has no labelled documents")
    logits_t = torch.from_numpy(np.asarray(logits[labelled], dtype=np.float64))
    targets = labels[labelled]
    loss = float(label_space.loss(logits_t, torch.from_numpy(targets)))
    probabilities = label_space.probabilities(logits[labelled])
    if label_space.multi_label:
        predicted = label_space.decide(probabilities)
        metrics = multi_label_metrics(label_set_counts(targets, predicted), label_space.names)
        metrics["threshold"] = label_space.threshold
        metrics["best_threshold"], metrics["micro_f1_at_best_threshold"] = best_threshold(targets, probabilities)
    else:
        predictions = logits_t.argmax(dim=1).numpy()
        metrics = classification_metrics(confusion_matrix(targets, predictions, len(label_space.names)), label_space.names)
    metrics["loss"] = loss
    return metrics


def render_predictions(path: str, doc_ids: Sequence[str], logits: np.ndarray, label_space: LabelSpace) -> bytes:
    """Predictions as TSV (``id``, ``label``, one probability column per label) for a ``.tsv`` path,
    else JSONL (``id``, ``label`` or ``labels``, ``probabilities``): ``modeling.prediction_output``'s format."""
    out = io.BytesIO()
    PredictionWriter(out, label_space, tsv=path.endswith(".tsv")).write(doc_ids, np.asarray(logits))
    return out.getvalue()
