"""Untrusted files and secrets (design.md section 8, issue "Hardening").

Models, tokenizers, checkpoints and corpora come from places the user does not control (the hub,
a shared bucket, a colleague's run). What holds, and is checked here:

* Loading never unpickles arbitrary objects: weights are safetensors, the trainer state is read
  with ``torch.load(weights_only=True)``; a ``state.pt`` or ``pytorch_model.bin`` carrying a
  pickle that would run code is refused and the code does not run (a marker it would create stays
  absent).
* No source file of ours calls an unsafe loader (``pickle.load``, ``torch.load`` without
  ``weights_only=True``, ``yaml.load`` without a safe loader, ``eval``/``exec``), nor passes
  ``trust_remote_code=True``.
* A model directory with custom code (``auto_map``) is refused unless ``--trust_remote_code``
  is given, and its code does not run.
* Planted secrets (a webhook URL, a service-account key file, a hub token in the environment)
  appear in none of a run's outputs: logs, run_config.json, eval results, checkpoints, the saved
  model, TensorBoard event files, predictions.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trainer_helpers import (  # noqa: F401 (fixtures)
    REPO_ROOT, prep, run_task_subprocess, subprocess_env, task_argv, tiny_model,
)

OUR_PACKAGES = ("tokenization", "schemas", "spanwise_io", "beam_pipelines", "trainer", "bench", "bin")


class _RunsCode:
    """Unpickling this creates the directory ``path``: proof that the pickle ran code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def _malicious_pickle(path: Path, marker: Path) -> None:
    with open(path, "wb") as handle:
        pickle.dump({"step": 1, "payload": _RunsCode(str(marker))}, handle)


# --------------------------------------------------------------------------- pickles


def test_a_checkpoint_state_that_would_run_code_is_refused(prep, tiny_model, tmp_path):  # noqa: F811
    """Resuming from a checkpoint whose state.pt was replaced by a code-running pickle."""
    out = tmp_path / "run"
    first = run_task_subprocess(task_argv(prep["data_dir"], tiny_model, str(out), "--max_steps", "2", "--save_steps", "2"))
    assert first.returncode == 0, first.stderr[-3000:]
    (checkpoint,) = sorted((out / "checkpoints").glob("checkpoint-*"))
    marker = tmp_path / "PWNED"
    _malicious_pickle(checkpoint / "state.pt", marker)

    again = run_task_subprocess(task_argv(prep["data_dir"], tiny_model, str(out), "--max_steps", "4", "--save_steps", "2"))
    assert again.returncode == 2, again.stderr[-3000:]
    assert f"error: {checkpoint}/state.pt: cannot load the trainer state (UnpicklingError" in again.stderr
    assert not marker.exists()


def test_a_pickled_model_file_that_would_run_code_is_refused(tiny_model, prep, tmp_path):  # noqa: F811
    """A model directory holding pytorch_model.bin (a pickle) instead of safetensors."""
    from trainer import task

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    (model / "model.safetensors").unlink()
    marker = tmp_path / "PWNED"
    _malicious_pickle(model / "pytorch_model.bin", marker)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(model))}: refusing its pickled weights \(pytorch_model\.bin\).*Weights only load failed"):
        task.run(task_argv(prep["data_dir"], str(model), str(tmp_path / "out"), "--max_steps", "1"))
    assert not marker.exists()


def test_custom_model_code_needs_trust_remote_code_and_does_not_run_without_it(tiny_model, prep, tmp_path):  # noqa: F811
    from trainer import task
    from trainer.args import parse_args

    assert parse_args(task_argv(prep["data_dir"], tiny_model, str(tmp_path / "x"))).trust_remote_code is False
    model = tmp_path / "remote"
    shutil.copytree(tiny_model, model)
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="spanwise-evil", auto_map={
        "AutoConfig": "modeling_evil.EvilConfig", "AutoModelForSequenceClassification": "modeling_evil.EvilModel",
    })
    (model / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "PWNED"
    (model / "modeling_evil.py").write_text(
        f"import os\nos.mkdir({str(marker)!r})\n"
        "from transformers import BertConfig as EvilConfig, BertForSequenceClassification as EvilModel\n"
    )
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        task.run(task_argv(prep["data_dir"], str(model), str(tmp_path / "out"), "--max_steps", "1"))
    assert not marker.exists()


# --------------------------------------------------------------------------- our sources


def _our_python_files() -> list[Path]:
    files = [REPO_ROOT / "setup.py"]
    for package in OUR_PACKAGES:
        files += sorted((REPO_ROOT / package).rglob("*.py"))
    assert len(files) > 20
    return files


def _call_name(node: ast.Call) -> str:
    parts = []
    func = node.func
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    # a method of an expression (``model.to(d).eval()``) is not a module-level function
    parts.append(func.id if isinstance(func, ast.Name) else "<expression>")
    return ".".join(reversed(parts))


def unsafe_calls(source: str) -> list[str]:
    """Calls of unsafe loaders in ``source``: ``name (line N)`` for each."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = _call_name(node)
        keywords = {k.arg: k.value for k in node.keywords}
        constant = lambda key: getattr(keywords.get(key), "value", None)  # noqa: E731
        if name in ("pickle.load", "pickle.loads", "cloudpickle.load", "cloudpickle.loads", "dill.load", "dill.loads",
                    "marshal.loads", "eval", "exec", "torch.jit.load", "numpy.load", "np.load") and not (
            name in ("numpy.load", "np.load") and constant("allow_pickle") is False
        ):
            found.append(f"{name} (line {node.lineno})")
        elif name == "torch.load" and constant("weights_only") is not True:
            found.append(f"torch.load without weights_only=True (line {node.lineno})")
        elif name == "yaml.load" and "Safe" not in ast.dump(keywords.get("Loader", ast.Constant(None))):
            found.append(f"yaml.load without a safe loader (line {node.lineno})")
        elif constant("trust_remote_code") is True:
            found.append(f"{name} with trust_remote_code=True (line {node.lineno})")
    return found


def test_the_scanner_finds_what_it_looks_for():
    source = (
        "import pickle, torch, yaml\n"
        "pickle.loads(b'')\n"
        "torch.load(f)\n"
        "torch.load(f, weights_only=False)\n"
        "torch.load(f, weights_only=True)\n"
        "yaml.load(s)\n"
        "yaml.load(s, Loader=yaml.SafeLoader)\n"
        "AutoModel.from_pretrained(p, trust_remote_code=True)\n"
        "AutoModel.from_pretrained(p, trust_remote_code=flag)\n"
        "eval('1')\n"
        "model.to(device).eval()\n"
    )
    assert unsafe_calls(source) == [
        "pickle.loads (line 2)",
        "torch.load without weights_only=True (line 3)",
        "torch.load without weights_only=True (line 4)",
        "yaml.load without a safe loader (line 6)",
        "AutoModel.from_pretrained with trust_remote_code=True (line 8)",
        "eval (line 10)",
    ]


def test_our_code_calls_no_unsafe_loader():
    findings = {
        str(path.relative_to(REPO_ROOT)): calls
        for path in _our_python_files()
        if (calls := unsafe_calls(path.read_text(encoding="utf-8")))
    }
    assert findings == {}
    # and every torch.load we have is there on purpose (the trainer state, the optimizer state)
    uses = [p for p in _our_python_files() if "torch.load(" in p.read_text(encoding="utf-8")]
    assert uses and all(p.parent.name == "trainer" for p in uses)


# --------------------------------------------------------------------------- secrets


def _all_bytes_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_planted_secrets_reach_no_output(prep, tiny_model, tmp_path):  # noqa: F811
    """A run with every output on (checkpoints, TensorBoard, eval, predictions, webhook) and
    secrets in its environment: none of them is written anywhere or printed."""
    hook_secret = "HOOKs3cr3t-2b8e41"
    key_secret = "-----BEGIN PRIVATE KEY-----KEYs3cr3t-77af02"
    token_secret = "hf_TOKENs3cr3t9c1d"
    key_file = tmp_path / "sa.json"
    key_file.write_text(json.dumps({"type": "service_account", "private_key": key_secret, "client_email": "x@y.iam"}))
    out = tmp_path / "out"
    argv = task_argv(
        prep["data_dir"], tiny_model, str(out), "--max_steps", "4", "--save_steps", "2", "--eval_strategy", "steps",
        "--eval_steps", "2", "--notify_webhook_env", "SPANWISE_SECRET_HOOK",
        "--sample_trace_file", str(out / "trace.jsonl"),
    )
    env = dict(
        SPANWISE_SECRET_HOOK=f"http://127.0.0.1:9/services/{hook_secret}",  # nothing listens: the post fails, logged
        GOOGLE_APPLICATION_CREDENTIALS=str(key_file),
        HF_TOKEN=token_secret,
    )
    result = run_task_subprocess(argv, **env)
    assert result.returncode == 0, result.stderr[-3000:]
    predict = subprocess.run(
        [sys.executable, "-m", "trainer.predict", "--model_dir", str(out), "--data_dir", prep["data_dir"],
         "--split", "test", "--output", str(out / "predictions.jsonl"), "--use_cpu"],
        cwd=REPO_ROOT, env=subprocess_env(**env), capture_output=True, text=True, timeout=120,
    )
    assert predict.returncode == 0, predict.stderr[-3000:]
    outputs = _all_bytes_under(out)
    assert {"run_config.json", "eval_results.json", "predictions.jsonl", "trace.jsonl"} <= set(outputs)
    assert any(name.startswith("checkpoints/checkpoint-") for name in outputs)
    assert any("tfevents" in name for name in outputs), sorted(outputs)
    printed = result.stdout + result.stderr + predict.stdout + predict.stderr
    assert "notification to the webhook in $SPANWISE_SECRET_HOOK failed" in printed  # the failed post was reported...
    for secret in (hook_secret, key_secret, token_secret, "KEYs3cr3t", "TOKENs3cr3t"):
        leaks = [name for name, data in outputs.items() if secret.encode() in data]
        assert leaks == [], f"{secret} in {leaks}"
        assert secret not in printed  # ...without its URL
    # the run records where the URL comes from, not the URL
    config = json.loads(outputs["run_config.json"])
    assert config["args"]["notify_webhook_env"] == "SPANWISE_SECRET_HOOK"
    assert not re.search(r"https?://127\.0\.0\.1:9", outputs["run_config.json"].decode())
