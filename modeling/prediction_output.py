"""Predictions as written, and the tally of how they went.

One record format for every prediction path: JSONL ``{"id", "label", "probabilities": {name: p}}``
(probabilities rounded to 6 decimals; a multi-label model writes ``"labels": [...]``, the labels
at or above its threshold, instead of ``"label"``), or for a ``.tsv`` path a header
``id  label  p_<name>...`` (``labels``, joined with ``|``) and one row per document. ``Tally``
counts documents, rejections and, where the input carries labels, the confusion matrix (or the
per-label counts of label sets) from which accuracy and macro-F1 (micro-F1, macro-F1 and
exact match) are computed. ``format_summary``
turns a prediction run's summary into the few lines a person reads at its end.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Any, Mapping, Sequence

import numpy as np
import torch

from modeling.label_space import LabelSpace
from modeling.metrics import classification_metrics, label_set_counts, multi_label_metrics

__all__ = ["prediction_record", "PredictionWriter", "Tally", "softmax", "format_summary"]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of the float32 logits, as ``torch.softmax`` computes it (the probabilities
    every prediction path has always written)."""
    logits = np.asarray(logits, dtype=np.float32)
    if logits.size == 0:
        return logits
    return torch.softmax(torch.from_numpy(logits), dim=1).numpy()


def prediction_record(doc_id: str, probabilities: Sequence[float], label_space: LabelSpace) -> dict[str, Any]:
    """``{"id", "label", "probabilities"}`` of one document (the label of the largest probability),
    or ``{"id", "labels", "probabilities"}`` for label sets (``LabelSpace.record``)."""
    return label_space.record(doc_id, probabilities)


class PredictionWriter:
    """Appends predictions to an open binary file: JSONL, or TSV (header first) when ``tsv``."""

    def __init__(self, handle: IO[bytes], label_space: LabelSpace, tsv: bool) -> None:
        self.handle, self.label_space, self.tsv = handle, label_space, tsv
        if tsv:
            header = ["id", "labels" if label_space.multi_label else "label", *(f"p_{name}" for name in label_space.names)]
            handle.write(("\t".join(header) + "\n").encode("utf-8"))

    def write(self, doc_ids: Sequence[str], logits: np.ndarray) -> np.ndarray:
        """Write one line per document; return the decisions (``LabelSpace.decide``: label indices,
        or a bool row per document of label sets)."""
        probabilities = self.label_space.probabilities(logits)
        predicted = self.label_space.decide(probabilities)
        lines = []
        for doc_id, decision, row in zip(doc_ids, predicted, probabilities):
            if self.tsv:
                lines.append("\t".join([doc_id, self.label_space.tsv_label(decision), *(f"{p:.6f}" for p in row)]))
            else:
                lines.append(json.dumps(self.label_space.record(doc_id, row)))
        if lines:
            self.handle.write(("\n".join(lines) + "\n").encode("utf-8"))
        return predicted


@dataclass
class Tally:
    """What a prediction run read, predicted and rejected; the confusion matrix of labelled rows
    (label sets: per-label true/false positives and false negatives, and exact matches).

    ``unknown_labels`` counts rows with a label that is not one of the model's (predicted, not scored).
    """

    label_space: LabelSpace
    predicted: int = 0
    views: int = 0
    unknown_labels: int = 0
    rejected: Counter = field(default_factory=Counter)
    confusion: np.ndarray | None = None
    set_counts: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        size = len(self.label_space.names)
        if self.confusion is None and not self.label_space.multi_label:
            self.confusion = np.zeros((size, size), dtype=np.int64)
        if self.set_counts is None and self.label_space.multi_label:
            self.set_counts = label_set_counts(np.zeros((0, size), dtype=bool), np.zeros((0, size), dtype=bool))
        self._index = {name: i for i, name in enumerate(self.label_space.names)}

    @property
    def label_names(self) -> list[str]:
        return list(self.label_space.names)

    def add(self, labels: Sequence[Any], predicted: np.ndarray, views: int) -> None:
        """Count a batch of predicted documents.

        Args:
            labels: their labels as read: a label ("" = none), or for label sets a sequence of
                labels (None = none; an empty sequence is a document with no label).
            predicted: ``LabelSpace.decide``'s decisions.
            views: the views scored for them.
        """
        self.predicted += len(predicted)
        self.views += int(views)
        if self.label_space.multi_label:
            self._add_sets(labels, predicted)
            return
        for label, guess in zip(labels, predicted):
            if not label:
                continue
            truth = self._index.get(label)
            if truth is None:
                self.unknown_labels += 1
            else:
                self.confusion[truth, int(guess)] += 1  # type: ignore[index]

    def _add_sets(self, labels: Sequence[Any], predicted: np.ndarray) -> None:
        rows, guesses = [], []
        for label_set, guess in zip(labels, predicted):
            if label_set is None:
                continue
            indices = [self._index.get(label) for label in label_set]
            if any(index is None for index in indices):
                self.unknown_labels += 1
                continue
            row = np.zeros(len(self._index), dtype=bool)
            row[indices] = True
            rows.append(row)
            guesses.append(np.asarray(guess, dtype=bool))
        if rows:
            self._merge_counts(label_set_counts(np.stack(rows), np.stack(guesses)))

    def _merge_counts(self, counts: dict[str, Any]) -> None:
        self.set_counts = {key: self.set_counts[key] + value for key, value in counts.items()}  # type: ignore[index]

    def merge(self, other: "Tally") -> "Tally":
        self.predicted += other.predicted
        self.views += other.views
        self.unknown_labels += other.unknown_labels
        self.rejected.update(other.rejected)
        if self.label_space.multi_label:
            self._merge_counts(other.set_counts)  # type: ignore[arg-type]
        else:
            self.confusion = self.confusion + other.confusion  # type: ignore[operator]
        return self

    def summary(self) -> dict[str, Any]:
        """Counts and, when some rows carried a known label, accuracy, macro-F1 and the confusion
        matrix (label sets: micro-F1, macro-F1, exact match and the threshold)."""
        out: dict[str, Any] = {
            "documents": self.predicted,
            "views": self.views,
            "rejected": sum(self.rejected.values()),
            "rejected_by_reason": dict(sorted(self.rejected.items())),
        }
        if self.label_space.multi_label:
            labelled = int(self.set_counts["documents"])  # type: ignore[index]
        else:
            labelled = int(self.confusion.sum())  # type: ignore[union-attr]
        out["labelled"] = labelled
        out["unknown_labels"] = self.unknown_labels
        if labelled and self.label_space.multi_label:
            metrics = multi_label_metrics(self.set_counts, self.label_space.names)  # type: ignore[arg-type]
            out.update({key: metrics[key] for key in ("micro_f1", "macro_f1", "exact_match")})
            out["threshold"] = self.label_space.threshold
            out["label_names"] = self.label_names
        elif labelled:
            metrics = classification_metrics(self.confusion, self.label_space.names)  # type: ignore[arg-type]
            out.update({key: metrics[key] for key in ("accuracy", "macro_f1", "mcc", "confusion_matrix")})
            out["label_names"] = self.label_names
        return out


def format_summary(summary: Mapping[str, Any]) -> str:
    """The end of a prediction run for a person: counts, metrics where labelled, where the outputs are.

    ``summary`` is what ``trainer.predict`` or ``beam_pipelines.predict`` wrote to its summary
    file; every key is optional but ``documents``. For example::

        read 1,000 documents: 998 predicted, 2 rejected (no_tokens 1, wrong_field_count 1)
        998 labelled: accuracy 0.8734, macro-F1 0.8690, MCC 0.8660
        predictions: out/predictions.jsonl
        rejected rows: out/predictions.rejected.jsonl
        summary: out/predictions.summary.json
    """
    counts = f"{summary['documents']:,} predicted"
    if "rejected" in summary:
        counts += f", {summary['rejected']:,} rejected"
        reasons = summary.get("rejected_by_reason") or {}
        if reasons:
            counts += " (" + ", ".join(f"{reason} {count:,}" for reason, count in sorted(reasons.items())) + ")"
    lines = [f"read {summary['read']:,} documents: {counts}" if "read" in summary else counts]
    if summary.get("skipped"):
        skipped = summary["skipped"]
        lines.append(f"skipped (--skip_bad_shards): {skipped.get('files', 0)} shard files, "
                     f"{skipped.get('row_groups', 0)} row groups")
    if "accuracy" in summary or "micro_f1" in summary:
        labelled = f"{summary['labelled']:,} labelled: " if "labelled" in summary else ""
        names = (("accuracy", "accuracy"), ("micro_f1", "micro-F1"), ("macro_f1", "macro-F1"), ("mcc", "MCC"),
                 ("exact_match", "exact match"))
        metrics = [f"{name} {summary[key]:.4f}" for key, name in names if key in summary]
        if "threshold" in summary:
            metrics.append(f"at threshold {summary['threshold']:g}")
        lines.append(labelled + ", ".join(metrics))
    if summary.get("unknown_labels"):
        lines.append(f"{summary['unknown_labels']:,} documents have a label the model does not know (predicted, not scored)")
    files = summary.get("files") or {}
    predictions = files.get("predictions") or ([summary["output"]] if summary.get("output") else [])
    if len(predictions) == 1:
        lines.append(f"predictions: {predictions[0]}")
    elif predictions:
        lines.append(f"predictions: {len(predictions)} files, {predictions[0]} ...")
    rejected = files.get("rejected") if "files" in summary else (
        [summary["rejected_output"]] if summary.get("rejected") and summary.get("rejected_output") else [])
    if rejected:
        lines.append(f"rejected rows: {', '.join(rejected)}")
    if summary.get("summary_output"):
        lines.append(f"summary: {summary['summary_output']}")
    return "\n".join(lines)
