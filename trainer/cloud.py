"""What the trainer reads from and reports to Vertex AI.

- Hyperparameter tuning: each evaluation's chosen metric is reported the way Vertex AI's tuning
  service reads it, the ``cloudml-hypertune`` convention: JSON lines in
  ``$CLOUD_ML_HP_METRIC_FILE`` (default ``/tmp/hypertune/output.metrics``), the newest 100 kept,
  each ``{"timestamp", "trial", "<tag>": "<value>", "global_step": "<step>"}``. Written here (30
  lines) rather than depending on the unmaintained package for one file format.
- Notifications: a JSON summary posted to a webhook whose URL comes from an environment variable
  (Slack incoming-webhook compatible ``text``). The URL is never logged, and a failing webhook
  never fails the run.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import time
import urllib.error
import urllib.request
from typing import Any, Mapping

__all__ = ["HypertuneReporter", "is_tuning_trial", "notify_webhook", "run_summary"]

log = logging.getLogger(__name__)
HP_METRIC_FILE_ENV = "CLOUD_ML_HP_METRIC_FILE"
HP_TRIAL_ENV = "CLOUD_ML_TRIAL_ID"
HP_DEFAULT_METRIC_FILE = "/tmp/hypertune/output.metrics"
HP_MAX_ENTRIES = 100


def is_tuning_trial() -> bool:
    """True inside a Vertex AI hyperparameter tuning trial."""
    return bool(os.environ.get(HP_TRIAL_ENV) or os.environ.get(HP_METRIC_FILE_ENV))


class HypertuneReporter:
    """Appends metric records for the tuning service (cloudml-hypertune file format)."""

    def __init__(self, metric_tag: str) -> None:
        self.metric_tag = metric_tag
        self.path = os.environ.get(HP_METRIC_FILE_ENV, HP_DEFAULT_METRIC_FILE)
        self.trial = os.environ.get(HP_TRIAL_ENV, "0")
        self.records: collections.deque[dict[str, Any]] = collections.deque(maxlen=HP_MAX_ENTRIES)

    def report(self, value: float, global_step: int) -> None:
        self.records.append(
            {"timestamp": time.time(), "trial": str(self.trial), self.metric_tag: str(float(value)), "global_step": str(int(global_step))}
        )
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            for record in self.records:
                handle.write(json.dumps(record, sort_keys=True) + "\n")
        os.replace(tmp, self.path)


# what a notification reports, where the evaluation has it (one label, or label sets)
_METRICS = ("accuracy", "micro_f1", "macro_f1", "mcc", "exact_match", "loss")


def run_summary(task_name: str, status: str, output_dir: str, metrics: Mapping[str, Any] | None, error: str | None = None) -> dict[str, Any]:
    """The notification payload: Slack-compatible ``text`` plus structured fields."""
    parts = [f"spanwise run '{task_name}' {status}"]
    if metrics:
        parts.append(", ".join(f"{k} {metrics[k]:.4f}" for k in _METRICS if k in metrics))
    if error:
        parts.append(f"error: {error}")
    parts.append(f"output: {output_dir}")
    return {
        "text": " | ".join(parts),
        "task_name": task_name,
        "status": status,
        "output_dir": output_dir,
        "metrics": {k: metrics[k] for k in (*_METRICS, "step") if metrics and k in metrics},
        "error": error,
    }


def notify_webhook(env_name: str | None, payload: Mapping[str, Any], timeout: float = 10.0) -> bool:
    """POST ``payload`` as JSON to the URL in ``$env_name``; never raises, never logs the URL."""
    if not env_name:
        return False
    url = os.environ.get(env_name)
    if not url:
        log.warning("notification skipped: environment variable %s is not set", env_name)
        return False
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode("utf-8"), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
        return True
    except urllib.error.HTTPError as error:
        log.warning("notification to the webhook in $%s failed: HTTP %s", env_name, error.code)
    except Exception as error:  # a notification must never fail the run
        log.warning("notification to the webhook in $%s failed: %s", env_name, type(error).__name__)
    return False
