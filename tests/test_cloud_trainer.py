"""The trainer inside Vertex AI: AIP_* locations, CLUSTER_SPEC, tuning metrics, webhooks.

The webhook is a real HTTP server on 127.0.0.1; the tuning metrics file is read back in the
cloudml-hypertune format that Vertex AI's tuning service reads.
"""

from __future__ import annotations

import http.server
import json
import os
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from trainer.distributed import env_from_cluster_spec
from trainer_helpers import prep, task_argv, tiny_model  # noqa: F401 (fixtures)

SECRET = "T0KEN-s3cr3t-9f8e7d"


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []
    status = 200

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append({"path": self.path, "json": json.loads(body)})
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[type[_Hook]]:
    handler = type("Hook", (_Hook,), {"received": [], "status": 200})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.url = f"http://127.0.0.1:{server.server_address[1]}/services/{SECRET}"
    yield handler
    server.shutdown()
    server.server_close()


def _run(argv: list[str]) -> dict:
    from trainer import task

    return task.run(argv)


def _all_text_under(root: Path) -> str:
    chunks = []
    for path in root.rglob("*"):
        if path.is_file():
            chunks.append(path.read_bytes().decode("latin-1"))
    return "\n".join(chunks)


def test_aip_environment_sets_model_checkpoint_and_log_dirs(prep, tiny_model, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("AIP_MODEL_DIR", str(tmp_path / "aip" / "model"))
    monkeypatch.setenv("AIP_CHECKPOINT_DIR", str(tmp_path / "aip" / "checkpoints"))
    monkeypatch.setenv("AIP_TENSORBOARD_LOG_DIR", str(tmp_path / "aip" / "logs"))
    argv = [a for a in task_argv(prep["data_dir"], tiny_model, "unused", "--max_steps", "2") ]
    i = argv.index("--output_dir")
    del argv[i : i + 2]  # no --output_dir: AIP_MODEL_DIR is the default
    _run(argv + ["--logging_dir", str(tmp_path / "ignored")])  # AIP_TENSORBOARD_LOG_DIR wins over the flag
    assert (tmp_path / "aip" / "model" / "config.json").is_file()
    assert (tmp_path / "aip" / "checkpoints" / "checkpoint-00000002" / "COMPLETE").is_file()
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "aip" / "logs").iterdir())
    assert not (tmp_path / "ignored").exists()
    assert not (tmp_path / "aip" / "model" / "checkpoints").exists()


def test_cluster_spec_gives_ranks_in_pool_order():
    spec = {
        "cluster": {"workerpool0": ["chief:2222"], "workerpool1": ["w0:2222", "w1:2222"], "workerpool2": ["rs:2222"]},
        "environment": "cloud",
        "task": {"type": "workerpool1", "index": 1},
    }
    assert env_from_cluster_spec(json.dumps(spec)) == {
        "MASTER_ADDR": "chief", "MASTER_PORT": "2222", "WORLD_SIZE": "3", "RANK": "2",
    }
    spec["task"] = {"type": "workerpool0", "index": 0}
    assert env_from_cluster_spec(json.dumps(spec))["RANK"] == "0"
    with pytest.raises(ValueError, match="CLUSTER_SPEC"):
        env_from_cluster_spec('{"cluster": {}}')


def test_tuning_trial_reports_the_metric_per_evaluation(prep, tiny_model, tmp_path, monkeypatch):  # noqa: F811
    metric_file = tmp_path / "hypertune" / "output.metrics"
    monkeypatch.setenv("CLOUD_ML_HP_METRIC_FILE", str(metric_file))
    monkeypatch.setenv("CLOUD_ML_TRIAL_ID", "7")
    results = _run(task_argv(prep["data_dir"], tiny_model, str(tmp_path / "out"), "--max_steps", "4",
                             "--eval_strategy", "steps", "--eval_steps", "2", "--hypertune_metric_tag", "dev_macro_f1"))
    records = [json.loads(line) for line in metric_file.read_text().splitlines()]
    assert [r["global_step"] for r in records] == ["2", "4"]
    assert all(r["trial"] == "7" and set(r) == {"timestamp", "trial", "dev_macro_f1", "global_step"} for r in records)
    assert [float(r["dev_macro_f1"]) for r in records] == [h["macro_f1"] for h in results["history"]]


def test_no_tuning_file_outside_a_trial(prep, tiny_model, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.delenv("CLOUD_ML_HP_METRIC_FILE", raising=False)
    monkeypatch.delenv("CLOUD_ML_TRIAL_ID", raising=False)
    from trainer.cloud import is_tuning_trial

    assert not is_tuning_trial()


def test_webhook_gets_a_summary_and_the_secret_url_is_nowhere(prep, tiny_model, tmp_path, monkeypatch, webhook, caplog):  # noqa: F811
    monkeypatch.setenv("SPANWISE_TEST_HOOK", webhook.url)
    out = tmp_path / "out"
    caplog.set_level("DEBUG")
    results = _run(task_argv(prep["data_dir"], tiny_model, str(out), "--max_steps", "3", "--eval_strategy", "steps",
                             "--eval_steps", "3", "--notify_webhook_env", "SPANWISE_TEST_HOOK"))
    assert len(webhook.received) == 1
    payload = webhook.received[0]["json"]
    assert webhook.received[0]["path"] == f"/services/{SECRET}"
    assert payload["status"] == "finished" and payload["task_name"] == "topics"
    assert payload["output_dir"] == str(out)
    assert payload["metrics"]["accuracy"] == results["final"]["accuracy"]
    assert "topics" in payload["text"] and "accuracy" in payload["text"] and str(out) in payload["text"]
    # the URL (and its secret) never reaches the outputs, the copied config, TensorBoard or the logs
    assert SECRET not in _all_text_under(out)
    assert SECRET not in caplog.text
    assert "SPANWISE_TEST_HOOK" in json.loads((out / "run_config.json").read_text())["args"]["notify_webhook_env"]


def test_webhook_reports_a_crash_and_a_failing_webhook_never_fails_the_run(prep, tiny_model, tmp_path, monkeypatch, webhook, caplog):  # noqa: F811
    monkeypatch.setenv("SPANWISE_TEST_HOOK", webhook.url)
    monkeypatch.setenv("SPANWISE_TEST_FAIL_AFTER_STEP", "1")
    with pytest.raises(RuntimeError, match="injected failure"):
        _run(task_argv(prep["data_dir"], tiny_model, str(tmp_path / "crash"), "--max_steps", "3",
                       "--notify_webhook_env", "SPANWISE_TEST_HOOK"))
    assert webhook.received[-1]["json"]["status"] == "failed"
    assert "RuntimeError" in webhook.received[-1]["json"]["error"]
    monkeypatch.delenv("SPANWISE_TEST_FAIL_AFTER_STEP")

    webhook.status = 500  # the webhook answers 500: the run still succeeds
    caplog.set_level("WARNING")
    _run(task_argv(prep["data_dir"], tiny_model, str(tmp_path / "ok500"), "--max_steps", "2",
                   "--notify_webhook_env", "SPANWISE_TEST_HOOK"))
    assert "HTTP 500" in caplog.text and SECRET not in caplog.text
    monkeypatch.setenv("SPANWISE_TEST_HOOK", "http://127.0.0.1:9/unreachable")  # nothing listens on port 9
    _run(task_argv(prep["data_dir"], tiny_model, str(tmp_path / "refused"), "--max_steps", "2",
                   "--notify_webhook_env", "SPANWISE_TEST_HOOK"))
    assert (tmp_path / "refused" / "model.safetensors").is_file()


def test_webhook_url_on_the_command_line_is_refused(prep, tiny_model, tmp_path, webhook):  # noqa: F811
    with pytest.raises(ValueError, match="NAME of an environment variable"):
        _run(task_argv(prep["data_dir"], tiny_model, str(tmp_path / "o"), "--notify_webhook_env", webhook.url))
