"""The evaluations of a run, its best one, and early stopping (HF's EarlyStoppingCallback rule).

Kept apart from the loop so that ``Trainer.evaluate`` only scores and logs, and so that the
part of a checkpoint that resumes these decisions is one ``state()`` / ``load_state()`` pair.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Mapping

__all__ = ["EvalTracker"]

log = logging.getLogger("trainer")


class EvalTracker:
    """Every evaluation's metrics, the best value of ``--metric_for_best_model`` and where it was.

    Attributes:
        history: the metrics of each evaluation, in order (each with ``step`` and ``epoch``).
        best_metric, best_step: the best value so far and the optimizer step it was measured at.
        evals_without_improvement: evaluations since the last improvement (``--early_stopping_threshold``).
        stopped_early: ``--early_stopping_patience`` evaluations passed without improvement.
    """

    def __init__(self, metric: str, *, patience: int | None, threshold: float, load_best_at_end: bool) -> None:
        self.metric, self.patience, self.threshold, self.load_best_at_end = metric, patience, threshold, load_best_at_end
        self.history: list[dict[str, Any]] = []
        self.best_metric: float | None = None
        self.best_step: int | None = None
        self.evals_without_improvement = 0
        self.stopped_early = False

    def add(self, metrics: dict[str, Any], *, may_stop: bool, announce: bool) -> float:
        """Record one evaluation (``metrics["step"]`` set); returns the value of the tracked metric.

        ``may_stop``: whether early stopping applies (training, and steps are left to take);
        ``announce``: log the decision (main rank).
        """
        self.history.append(metrics)
        value = metrics[self.metric]
        lower = self.metric == "loss"
        if self.best_metric is None or (value < self.best_metric if lower else value > self.best_metric):
            improved = self.best_metric is None or abs(value - self.best_metric) > self.threshold
            self.best_metric, self.best_step = value, metrics["step"]
        else:
            improved = False
        self.evals_without_improvement = 0 if improved else self.evals_without_improvement + 1
        if may_stop and self.patience is not None and self.evals_without_improvement >= self.patience:
            if not self.stopped_early and announce:
                log.info("early stopping after step %d: %d evaluations without improvement of %s (best %.4f at step %d)",
                         metrics["step"], self.evals_without_improvement, self.metric, self.best_metric, self.best_step)
            self.stopped_early = True
        return value

    def evaluated_at(self, step: int) -> bool:
        return any(entry["step"] == step for entry in self.history)

    def new_best_at(self, step: int) -> bool:
        """Whether the evaluation just made, at ``step``, is the best so far."""
        return self.best_step == step and bool(self.history) and self.history[-1]["step"] == step

    def final(self) -> dict[str, Any] | None:
        """The evaluation of the saved model: the best one with ``--load_best_model_at_end``, else the last."""
        if not self.history:
            return None
        if self.load_best_at_end and self.best_step is not None:
            for entry in reversed(self.history):
                if entry["step"] == self.best_step:
                    return entry
        return self.history[-1]

    def results(self, data_problems: Mapping[str, Any]) -> dict[str, Any]:
        """``eval_results.json``."""
        return {
            "metric_for_best_model": self.metric,
            "best_metric": self.best_metric,
            "best_step": self.best_step,
            "final": self.final(),
            "history": self.history,
            "stopped_early": self.stopped_early,
            "data_problems": dict(data_problems),
        }

    def state(self) -> dict[str, Any]:
        """The part of a checkpoint that resumes these decisions."""
        return {
            "best_metric": self.best_metric,
            "best_step": self.best_step,
            "evals_without_improvement": self.evals_without_improvement,
            "stopped_early": self.stopped_early,
            "eval_history": json.dumps(self.history),
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.best_metric, self.best_step = state["best_metric"], state["best_step"]
        self.evals_without_improvement = int(state.get("evals_without_improvement", 0))
        self.stopped_early = bool(state.get("stopped_early", False))
        self.history = json.loads(state["eval_history"])
