"""Classification metrics: multi-class from a confusion matrix (not binary-only as in 2020), and
multi-label from per-label counts (micro-F1, macro-F1, exact-match accuracy, the best threshold).

Written here (about 100 lines of numpy) rather than adding scikit-learn and SciPy to the image
for a few formulas; tests check them against hand-computed values and scikit-learn's.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = [
    "confusion_matrix",
    "classification_metrics",
    "METRIC_NAMES",
    "MULTI_LABEL_METRIC_NAMES",
    "label_set_counts",
    "multi_label_metrics",
    "best_threshold",
    "THRESHOLD_GRID",
]

METRIC_NAMES = ("accuracy", "macro_f1", "mcc", "loss")
# What an evaluation of label sets reports (--metric_for_best_model takes any of them).
MULTI_LABEL_METRIC_NAMES = ("micro_f1", "macro_f1", "exact_match", "loss")
# The decision thresholds searched for the best micro-F1 on dev: 0.01, 0.02, ..., 0.99.
THRESHOLD_GRID = np.round(np.arange(1, 100) / 100.0, 2)


def confusion_matrix(labels: Sequence[int], predictions: Sequence[int], num_labels: int) -> np.ndarray:
    """``matrix[true, predicted]`` counts."""
    matrix = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return matrix


def classification_metrics(matrix: np.ndarray, label_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, multi-class MCC (Gorodkin's R_K), per-class precision/recall/F1."""
    matrix = np.asarray(matrix, dtype=np.float64)
    total = matrix.sum()
    true_positive = np.diag(matrix)
    predicted = matrix.sum(axis=0)
    actual = matrix.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, true_positive / predicted, 0.0)
        recall = np.where(actual > 0, true_positive / actual, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    correct = true_positive.sum()
    covariance = correct * total - float(np.dot(predicted, actual))
    denominator = np.sqrt(total**2 - float(np.dot(predicted, predicted))) * np.sqrt(total**2 - float(np.dot(actual, actual)))
    present = (actual > 0) | (predicted > 0)  # as scikit-learn: labels seen in truth or predictions
    return {
        "accuracy": float(correct / total) if total else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "mcc": float(covariance / denominator) if denominator > 0 else 0.0,
        "num_examples": int(total),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(actual[i])}
            for i, name in enumerate(label_names)
        },
        "confusion_matrix": matrix.astype(np.int64).tolist(),
    }


def label_set_counts(targets: np.ndarray, predictions: np.ndarray) -> dict[str, np.ndarray | int]:
    """Per-label true positives, false positives and false negatives, and exact matches, of 0/1
    ``targets`` and ``predictions`` ``[documents, labels]``: what the metrics need, summable
    across batches and workers (the prediction pipelines add them up)."""
    targets = np.asarray(targets, dtype=bool)
    predictions = np.asarray(predictions, dtype=bool)
    return {
        "true_positive": (targets & predictions).sum(axis=0).astype(np.int64),
        "false_positive": (~targets & predictions).sum(axis=0).astype(np.int64),
        "false_negative": (targets & ~predictions).sum(axis=0).astype(np.int64),
        "support": targets.sum(axis=0).astype(np.int64),
        "exact": int((targets == predictions).all(axis=1).sum()),
        "documents": int(len(targets)),
    }


def multi_label_metrics(counts: dict[str, Any], label_names: Sequence[str]) -> dict[str, Any]:
    """Micro-F1, macro-F1 (the mean over every label, 0 for a label never true nor predicted, as
    scikit-learn's ``f1_score`` on indicator arrays), exact-match (subset) accuracy, micro
    precision and recall, and per-label precision/recall/F1/support, from ``label_set_counts``."""
    tp = np.asarray(counts["true_positive"], dtype=np.float64)
    fp = np.asarray(counts["false_positive"], dtype=np.float64)
    fn = np.asarray(counts["false_negative"], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
    all_tp, all_fp, all_fn = tp.sum(), fp.sum(), fn.sum()
    documents = int(counts["documents"])
    # no label true and none predicted anywhere: F1 is 0/0, and 0 as scikit-learn's default (zero_division)
    # gives it (exact match, the share of right sets, is then 1)
    found = 2 * all_tp + all_fp + all_fn
    return {
        "micro_f1": float(2 * all_tp / found) if found else 0.0,
        "macro_f1": float(f1.mean()) if len(f1) else 0.0,
        "exact_match": float(counts["exact"] / documents) if documents else 0.0,
        "micro_precision": float(all_tp / (all_tp + all_fp)) if all_tp + all_fp > 0 else 0.0,
        "micro_recall": float(all_tp / (all_tp + all_fn)) if all_tp + all_fn > 0 else 0.0,
        "num_examples": documents,
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(counts["support"][i])}
            for i, name in enumerate(label_names)
        },
    }


def best_threshold(targets: np.ndarray, probabilities: np.ndarray, grid: np.ndarray = THRESHOLD_GRID) -> tuple[float, float]:
    """The decision threshold of ``grid`` with the highest micro-F1 on these documents, and that
    micro-F1 (ties: the threshold nearest 0.5, then the lower)."""
    targets = np.asarray(targets, dtype=bool)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    best = (-1.0, 0.0, 0.5)
    positives = targets.sum()
    for threshold in grid:
        predicted = probabilities >= threshold
        tp = float((predicted & targets).sum())
        denominator = float(predicted.sum()) + float(positives)
        score = 2 * tp / denominator if denominator > 0 else 0.0
        key = (score, -abs(float(threshold) - 0.5), -float(threshold))
        if key > (best[0], -abs(best[2] - 0.5), -best[2]):
            best = (score, 0.0, float(threshold))
    return best[2], max(best[0], 0.0)
