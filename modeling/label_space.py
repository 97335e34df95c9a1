"""What a model's outputs mean: one class per document, or a set of classes.

A ``LabelSpace`` is the one place that knows the difference between the two problem types that
transformers names in ``PretrainedConfig.problem_type``:

- ``single_label_classification``: a softmax over the labels, cross-entropy, the predicted label
  is the most probable one (targets: label indices, -1 = unlabelled);
- ``multi_label_classification``: a sigmoid per label, ``BCEWithLogitsLoss``, the predicted set
  is every label whose probability reaches the decision threshold (targets: a 0/1 row per
  document, a row of -1 = unlabelled; an all-zero row is a document with no label).

The trainer's loss, evaluation, every prediction path (trainer.predict, the Python API, the Beam
pipeline) and the records they write go through it, so that they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from schemas.rows import DEFAULT_LABEL_SEPARATOR
from schemas.shard import MULTI_LABEL, PROBLEM_TYPES, SINGLE_LABEL

__all__ = ["LabelSpace", "DEFAULT_THRESHOLD", "labelled_rows", "label_tensor", "multi_hot", "input_label_separator"]

DEFAULT_THRESHOLD = 0.5


def multi_hot(indices: Sequence[int] | None, num_labels: int) -> np.ndarray:
    """A document's label set as a 0/1 int8 row (``None``, unlabelled: a row of -1)."""
    row = np.full(num_labels, -1 if indices is None else 0, dtype=np.int8)
    if indices is not None:
        row[np.asarray(list(indices), dtype=np.int64)] = 1
    return row


def labelled_rows(targets: np.ndarray) -> np.ndarray:
    """Which documents carry a label: index >= 0, or a 0/1 row (not the -1 row of "unlabelled")."""
    targets = np.asarray(targets)
    if targets.ndim == 1:
        return targets >= 0
    return (targets >= 0).all(axis=1) if targets.shape[1] else np.ones(len(targets), dtype=bool)


def label_tensor(labels: Sequence[Any]) -> torch.Tensor:
    """The ``labels`` tensor of a batch: label indices (long), or 0/1 rows (float, for the BCE loss)."""
    if len(labels) and isinstance(labels[0], np.ndarray):
        return torch.from_numpy(np.stack(labels).astype(np.float32))
    return torch.as_tensor([int(label) for label in labels], dtype=torch.long)


@dataclass(frozen=True)
class LabelSpace:
    """The labels of a model and how its logits become probabilities, decisions and a loss.

    Attributes:
        names: the labels, in the order of the logits.
        problem_type: ``single_label_classification`` or ``multi_label_classification``.
        threshold: (multi-label) a label is predicted when its probability is >= this.
    """

    names: tuple[str, ...]
    problem_type: str = SINGLE_LABEL
    threshold: float = DEFAULT_THRESHOLD

    def __post_init__(self) -> None:
        if self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"problem_type must be one of {', '.join(PROBLEM_TYPES)}, got {self.problem_type!r}")
        if not 0.0 < float(self.threshold) < 1.0:
            raise ValueError(f"--threshold must be between 0 and 1 (exclusive), got {self.threshold}")
        object.__setattr__(self, "names", tuple(self.names))

    @property
    def multi_label(self) -> bool:
        return self.problem_type == MULTI_LABEL

    def with_threshold(self, threshold: float | None) -> "LabelSpace":
        """The same labels with another decision threshold (None: this one)."""
        return self if threshold is None else LabelSpace(self.names, self.problem_type, float(threshold))

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Float32 probabilities of ``[documents, labels]`` logits: softmax rows, or a sigmoid per label."""
        logits = np.asarray(logits, dtype=np.float32)
        if logits.size == 0:
            return np.zeros((len(logits), len(self.names)), dtype=np.float32)
        tensor = torch.from_numpy(logits)
        return (torch.sigmoid(tensor) if self.multi_label else torch.softmax(tensor, dim=1)).numpy()

    def decide(self, probabilities: np.ndarray) -> np.ndarray:
        """The predictions: label indices ``[documents]``, or a bool ``[documents, labels]`` set per document."""
        probabilities = np.asarray(probabilities)
        if self.multi_label:
            return probabilities >= self.threshold
        return probabilities.argmax(axis=1) if len(probabilities) else np.zeros(0, dtype=np.int64)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over documents, or mean binary cross-entropy over documents x labels
        (what ``BertForSequenceClassification`` computes for each problem type)."""
        logits = logits if logits.dtype == torch.float64 else logits.float()  # half-precision logits: the loss in fp32
        if self.multi_label:
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))
        return torch.nn.functional.cross_entropy(logits, targets)

    def chosen(self, decision: Any) -> list[str]:
        """The label names of one document's decision (one index, or a bool row)."""
        if self.multi_label:
            return [name for name, on in zip(self.names, decision) if on]
        return [self.names[int(decision)]]

    def record(self, doc_id: str, probabilities: Sequence[float]) -> dict[str, Any]:
        """One document's prediction as written (JSON Lines): ``{"id", "label", "probabilities"}``, or for
        label sets ``{"id", "labels": [names at or above the threshold], "probabilities"}``."""
        rounded = {name: round(float(p), 6) for name, p in zip(self.names, probabilities)}
        decision = self.decide(np.asarray(probabilities)[None, :])[0]
        if self.multi_label:
            return {"id": doc_id, "labels": self.chosen(decision), "probabilities": rounded}
        return {"id": doc_id, "label": self.names[int(decision)], "probabilities": rounded}

    def tsv_label(self, decision: Any) -> str:
        """The ``label`` (or ``labels``, joined with ``|``) cell of a TSV prediction row."""
        return "|".join(self.chosen(decision))

    def to_dict(self) -> dict[str, Any]:
        return {"label_names": list(self.names), "problem_type": self.problem_type, "threshold": self.threshold}


def input_label_separator(space: LabelSpace, given: str | None, model_dir: str) -> str | None:
    """How prediction reads the label cells of raw input: as sets split on ``given`` (default
    ``|``, preprocessing's ``--multi_label`` default) for a multi-label model; one label per cell
    (None) otherwise.

    Raises:
        ValueError: ``--label_separator`` for a model of one label per document, or an empty one.
    """
    if not space.multi_label:
        if given is not None:
            raise ValueError(f"--label_separator: {model_dir} predicts one label per document, not label sets; drop it")
        return None
    if given is not None and (not given or any(c in given for c in "\t\r\n")):
        raise ValueError(f"--label_separator {given!r}: give a non-empty separator without tab or line break, e.g. '|'")
    return DEFAULT_LABEL_SEPARATOR if given is None else given
