"""Evaluation and prediction: deterministic views of each document, logits pooled per document.

Shared by the trainer (``evaluate``) and ``trainer.predict``. Each rank scores its own slice of
the split (no padding, every document once) and the slices are gathered on every rank.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist

from trainer.data import DataLimits, ShardProblem, Unit, eval_plan, iter_documents
from trainer.features import Example, FeatureBuilder, collate
from trainer.metrics import classification_metrics, confusion_matrix

__all__ = ["score_documents", "evaluate_split", "parse_views"]


def parse_views(value: str | int) -> int | str:
    """``--eval_views`` as an int or ``"chunks"``."""
    return "chunks" if str(value) == "chunks" else int(value)


def _batches(
    documents: Iterator[tuple[str, int, np.ndarray, np.ndarray]], features: FeatureBuilder, views: int | str, batch_size: int
) -> Iterator[tuple[list[Example], list[int]]]:
    """Model-input batches of at most ``batch_size`` views; ``owners`` index the document of each."""
    pending: list[Example] = []
    owners: list[int] = []
    for doc_index, (doc_id, label, ids_a, ids_b) in enumerate(documents):
        for example in features.eval_examples(doc_id, label, ids_a, ids_b, views):
            pending.append(example)
            owners.append(doc_index)
            if len(pending) == batch_size:
                yield pending, owners
                pending, owners = [], []
    if pending:
        yield pending, owners


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
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Doc ids, labels and mean-pooled logits of every document of the split (all ranks).

    A row group that cannot be read raises ValueError naming the file and row group or, when
    ``skipped`` is a list, its documents are left out and the problem is appended to it (this
    rank's problems only). ``limits`` bounds the labels and token ids read.
    """
    plan = eval_plan(units, batch_size=batch_size, rank=rank, world_size=world_size)
    doc_ids: list[str] = []
    labels: list[int] = []
    sums: list[np.ndarray] = []
    counts: list[int] = []

    def documents() -> Iterator[tuple[str, int, np.ndarray, np.ndarray]]:
        for doc_id, label, ids_a, ids_b in iter_documents(plan, limits=limits, skipped=skipped):
            doc_ids.append(doc_id)
            labels.append(label)
            yield doc_id, label, ids_a, ids_b

    was_training = model.training
    model.eval()
    for examples, owners in _batches(documents(), features, views, batch_size):
        batch = collate(examples, pad_token_id)
        inputs = {key: batch[key].to(device) for key in ("input_ids", "attention_mask", "token_type_ids")}
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(**inputs).logits.float().cpu().numpy()
        for owner, row in zip(owners, logits):
            while len(sums) <= owner:
                sums.append(np.zeros_like(row, dtype=np.float64))
                counts.append(0)
            sums[owner] += row
            counts[owner] += 1
    model.train(was_training)
    pooled = np.stack([s / c for s, c in zip(sums, counts)]) if sums else np.zeros((0, 0))
    result = (doc_ids, np.asarray(labels, dtype=np.int64), pooled)
    if world_size > 1:
        gathered: list[Any] = [None] * world_size
        dist.all_gather_object(gathered, result)
        ids = [doc for part in gathered for doc in part[0]]
        parts = [part for part in gathered if len(part[0])]
        result = (ids, np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts]))
    return result


def evaluate_split(
    model: torch.nn.Module,
    units: Sequence[Unit],
    features: FeatureBuilder,
    label_names: Sequence[str],
    **kwargs: Any,
) -> dict[str, Any]:
    """Loss, accuracy, macro-F1, MCC, per-class precision/recall and confusion matrix."""
    _, labels, logits = score_documents(model, units, features, **kwargs)
    labelled = labels >= 0
    if not labelled.any():
        raise ValueError("the evaluation split has no labelled documents")
    logits_t = torch.from_numpy(logits[labelled])
    labels_t = torch.from_numpy(labels[labelled])
    loss = float(torch.nn.functional.cross_entropy(logits_t, labels_t))
    predictions = logits_t.argmax(dim=1).numpy()
    metrics = classification_metrics(confusion_matrix(labels_t.numpy(), predictions, len(label_names)), label_names)
    metrics["loss"] = loss
    return metrics
