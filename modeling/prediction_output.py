"""Predictions as written, and the tally of how they went.

One record format for every prediction path: JSONL ``{"id", "label", "probabilities": {name: p}}``
(probabilities rounded to 6 decimals), or for a ``.tsv`` path a header ``id  label  p_<name>...``
and one row per document. ``Tally`` counts documents, rejections and, where the input carries
labels, the confusion matrix from which accuracy and macro-F1 are computed. ``format_summary``
turns a prediction run's summary into the few lines a person reads at its end.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Any, Mapping, Sequence

import numpy as np
import torch

from modeling.metrics import classification_metrics

__all__ = ["prediction_record", "PredictionWriter", "Tally", "softmax", "format_summary"]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of the float32 logits, as ``torch.softmax`` computes it (the probabilities
    every prediction path has always written)."""
    logits = np.asarray(logits, dtype=np.float32)
    if logits.size == 0:
        return logits
    return torch.softmax(torch.from_numpy(logits), dim=1).numpy()


def prediction_record(doc_id: str, probabilities: Sequence[float], label_names: Sequence[str]) -> dict[str, Any]:
    """``{"id", "label", "probabilities"}`` of one document (the label of the largest probability)."""
    best = int(np.argmax(probabilities))
    return {
        "id": doc_id,
        "label": label_names[best],
        "probabilities": {name: round(float(p), 6) for name, p in zip(label_names, probabilities)},
    }


class PredictionWriter:
    """Appends predictions to an open binary file: JSONL, or TSV (header first) when ``tsv``."""

    def __init__(self, handle: IO[bytes], label_names: Sequence[str], tsv: bool) -> None:
        self.handle, self.label_names, self.tsv = handle, list(label_names), tsv
        if tsv:
            header = ["id", "label", *(f"p_{name}" for name in self.label_names)]
            handle.write(("\t".join(header) + "\n").encode("utf-8"))

    def write(self, doc_ids: Sequence[str], logits: np.ndarray) -> np.ndarray:
        """Write one line per document; return the predicted label indices."""
        probabilities = softmax(logits)
        predicted = probabilities.argmax(axis=1) if len(doc_ids) else np.zeros(0, dtype=np.int64)
        lines = []
        for doc_id, index, row in zip(doc_ids, predicted, probabilities):
            if self.tsv:
                lines.append("\t".join([doc_id, self.label_names[index], *(f"{p:.6f}" for p in row)]))
            else:
                lines.append(json.dumps(prediction_record(doc_id, row, self.label_names)))
        if lines:
            self.handle.write(("\n".join(lines) + "\n").encode("utf-8"))
        return predicted


@dataclass
class Tally:
    """What a prediction run read, predicted and rejected; the confusion matrix of labelled rows.

    ``unknown_labels`` counts rows whose label is not one of the model's (predicted, not scored).
    """

    label_names: list[str]
    predicted: int = 0
    views: int = 0
    unknown_labels: int = 0
    rejected: Counter = field(default_factory=Counter)
    confusion: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.confusion is None:
            self.confusion = np.zeros((len(self.label_names), len(self.label_names)), dtype=np.int64)
        self._index = {name: i for i, name in enumerate(self.label_names)}

    def add(self, labels: Sequence[str], predicted: Sequence[int], views: int) -> None:
        """Count a batch of predicted documents; ``labels``: their labels as read ("" = none)."""
        self.predicted += len(predicted)
        self.views += int(views)
        for label, guess in zip(labels, predicted):
            if not label:
                continue
            truth = self._index.get(label)
            if truth is None:
                self.unknown_labels += 1
            else:
                self.confusion[truth, int(guess)] += 1  # type: ignore[index]

    def merge(self, other: "Tally") -> "Tally":
        self.predicted += other.predicted
        self.views += other.views
        self.unknown_labels += other.unknown_labels
        self.rejected.update(other.rejected)
        self.confusion = self.confusion + other.confusion  # type: ignore[operator]
        return self

    def summary(self) -> dict[str, Any]:
        """Counts and, when some rows carried a known label, accuracy, macro-F1 and the confusion matrix."""
        out: dict[str, Any] = {
            "documents": self.predicted,
            "views": self.views,
            "rejected": sum(self.rejected.values()),
            "rejected_by_reason": dict(sorted(self.rejected.items())),
        }
        labelled = int(self.confusion.sum())  # type: ignore[union-attr]
        out["labelled"] = labelled
        out["unknown_labels"] = self.unknown_labels
        if labelled:
            metrics = classification_metrics(self.confusion, self.label_names)  # type: ignore[arg-type]
            out.update({key: metrics[key] for key in ("accuracy", "macro_f1", "mcc", "confusion_matrix")})
            out["label_names"] = list(self.label_names)
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
    if "accuracy" in summary:
        labelled = f"{summary['labelled']:,} labelled: " if "labelled" in summary else ""
        metrics = [f"accuracy {summary['accuracy']:.4f}"]
        metrics += [f"{name} {summary[key]:.4f}" for key, name in (("macro_f1", "macro-F1"), ("mcc", "MCC")) if key in summary]
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
