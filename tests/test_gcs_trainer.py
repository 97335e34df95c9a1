"""The trainer and predictor with every location in ``gs://`` on the GCS emulator.

Shards and manifest are uploaded to the bucket, the pretrained model is read from it, and the
model, checkpoints, TensorBoard logs, eval results and predictions are written to it. The run
is then compared with the same run on local paths: the weights must be identical.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

import spanwise_io
from gcs_emulator import GcsEmulator, gcs_emulator_fixtures
from trainer_helpers import load_safetensors, prep, task_argv, tiny_model  # noqa: F401 (fixtures)

gcs_emulator_server, gcs = gcs_emulator_fixtures()


@pytest.fixture(autouse=True)
def _private_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def _train(argv: list[str]) -> dict:
    from trainer import task

    return task.run(argv)


def test_train_evaluate_predict_all_in_gcs(gcs: GcsEmulator, prep, tiny_model, tmp_path):  # noqa: F811
    data_url, model_url, out_url = gcs.url("prep"), gcs.url("pretrained"), gcs.url("runs", "topics")
    spanwise_io.upload_dir(prep["data_dir"], data_url)
    spanwise_io.upload_dir(tiny_model, model_url)
    extra = ["--max_steps", "8", "--save_steps", "4", "--seq_len_func", "rs", "--seq_func_params", "8",
             "--eval_strategy", "steps", "--eval_steps", "8"]

    remote = _train(task_argv(data_url, model_url, out_url, *extra))
    local_out = str(tmp_path / "local")
    local = _train(task_argv(prep["data_dir"], tiny_model, local_out, *extra))

    names = set(spanwise_io.listdir(out_url))
    assert {"config.json", "model.safetensors", "tokenizer.json", "run_config.json", "eval_results.json",
            "preprocess_manifest.json", "checkpoints", "runs"} <= names
    checkpoints = spanwise_io.listdir(spanwise_io.join(out_url, "checkpoints"))
    assert checkpoints == ["checkpoint-00000004", "checkpoint-00000008"]
    # every logged step reaches the bucket (TensorBoard's own gs:// writer would keep only the last chunk)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(spanwise_io.copy_dir_to_local(spanwise_io.join(out_url, "runs", "topics")))
    events.Reload()
    assert [event.step for event in events.Scalars("train/loss")] == list(range(1, 9))
    assert [event.step for event in events.Scalars("eval/accuracy")] == [8]

    # the same run on local paths gives the same weights and metrics
    remote_weights = spanwise_io.copy_dir_to_local(out_url)
    a = load_safetensors(os.path.join(remote_weights, "model.safetensors"))
    b = load_safetensors(os.path.join(local_out, "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert remote["final"]["confusion_matrix"] == local["final"]["confusion_matrix"]
    stored = json.loads(spanwise_io.read_bytes(spanwise_io.join(out_url, "eval_results.json")))
    assert stored["final"]["accuracy"] == remote["final"]["accuracy"]

    # a resumed run in gs:// continues from the newest checkpoint there (nothing left to do)
    again = _train(task_argv(data_url, model_url, out_url, *extra))
    assert again == {} or again["final"]["step"] == 8

    from trainer import predict

    summary = predict.predict(["--model_dir", out_url, "--data_dir", data_url, "--split", "test",
                               "--output", gcs.url("preds", "test.jsonl"), "--use_cpu"])
    lines = spanwise_io.read_bytes(gcs.url("preds", "test.jsonl")).decode().splitlines()
    assert len(lines) == summary["documents"] == len(prep["rows"]["test"])
    assert {json.loads(line)["id"] for line in lines} == {row[0] for row in prep["rows"]["test"]}
