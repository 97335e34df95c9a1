"""Classification metrics from a confusion matrix: multi-class, not binary-only as in 2020.

Written here (about 40 lines of numpy) rather than adding scikit-learn and SciPy to the image
for four formulas; tests check them against hand-computed values.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["confusion_matrix", "classification_metrics", "METRIC_NAMES"]

METRIC_NAMES = ("accuracy", "macro_f1", "mcc", "loss")


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
