"""Tests of the trainer (design.md sections 3 and 5) on shards made by the real pipeline.

One synthetic topic corpus (3 labels, each label's words plus shared ones, several documents of
300-2,000 tokens) goes through ``beam_pipelines.preprocess`` once per module; a tiny random BERT
(hidden 32, 2 layers) beside the MiniLM tokenizer learns it in a few dozen steps. The tests
check, with exact comparisons where the design promises exactness:

* training lowers the loss, the saved model reloads and gives the trained model's logits;
* an interrupted run (SIGTERM, Ctrl-C, or an exception) resumed with the same command equals an
  uninterrupted one: same batches of sample ids, bit-identical final weights, and one TensorBoard
  run with every step once; a second Ctrl-C stops at once;
* ``--group_by_length``: batches of similar length, the same with 0, 1 or 2 DataLoader workers,
  resumed exactly; evaluation gives the same logits with and without DataLoader workers;
* rs/rso/rsd draw new spans every epoch, reproducibly, whatever the DataLoader workers;
* the sample order does not depend on the workers, and a resumed epoch is the tail of the full one;
* ranks see disjoint samples whose union is the epoch, with equal batch counts (unit and a real
  2-process gloo run);
* shards of another tokenizer or schema version are refused with a message saying what differs;
* the metrics against hand-computed values; ``trainer.predict`` output.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from trainer_helpers import (  # noqa: F401  (prep and tiny_model are fixtures)
    FAIL_ENV,
    LABELS,
    REPO_ROOT,
    load_safetensors,
    prep,
    read_trace,
    run_task_subprocess,
    subprocess_env,
    task_argv,
    tiny_model,
    trace_by_key,
    train_in_process,
)
from trainer_helpers import (
    signal_group_after_batches as _signal_group_after_batches,
)

MAX_SEQ = 64  # task_argv's --max_seq_length
SPAN = 8


# --------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def tokenizer():
    from tokenization.tokenizer import load_tokenizer
    from trainer_helpers import minilm_dir

    return load_tokenizer(minilm_dir())


def _stream(prep, tokenizer, seq_func="rs", seed=42, units=None, rank=0, world_size=1, batch_size=8, shuffle_buffer=4096,
            group_by_length=False):
    from modeling.features import FeatureBuilder, SpecialTokenTemplate
    from schemas.manifest import read_manifest
    from tokenization.seq_len import validate_seq_config
    from trainer.data import ShardStream
    from trainer.shards import list_units

    if units is None:
        units = list_units(prep["data_dir"], read_manifest(prep["data_dir"]), "train")
    config = validate_seq_config(seq_func, [SPAN], MAX_SEQ, tokenizer)
    features = FeatureBuilder(config, SpecialTokenTemplate.from_tokenizer(tokenizer), seed)
    return ShardStream(
        units, features, batch_size=batch_size, seed=seed, pad_token_id=tokenizer.pad_token_id,
        rank=rank, world_size=world_size, shuffle_buffer=shuffle_buffer, group_by_length=group_by_length,
    )


def _epoch_batches(stream, epoch, workers=0, start_batch=0):
    """The batches of one epoch through a real DataLoader, as the trainer builds it."""
    from trainer.data import worker_init_threads

    stream.set_epoch(epoch, start_batch)
    loader = DataLoader(
        stream, batch_size=None, num_workers=workers,
        worker_init_fn=worker_init_threads if workers else None,
        generator=torch.Generator().manual_seed(0),
    )
    return list(loader)


def _inputs_by_doc(batches):
    """doc id -> its unpadded input_ids in these batches."""
    out = {}
    for batch in batches:
        for row, doc_id in enumerate(batch["doc_ids"]):
            length = int(batch["attention_mask"][row].sum())
            assert doc_id not in out, f"{doc_id} twice in one epoch"
            out[doc_id] = batch["input_ids"][row, :length].tolist()
    return out


def _order(batches):
    return [(batch["batch_index"], list(batch["doc_ids"])) for batch in batches]


def _doc_lengths(prep):
    """Stored content tokens per training document (from the shards)."""
    import pyarrow.parquet as pq

    lengths = {}
    for entry in prep["manifest"]["splits"]["train"]["files"]:
        table = pq.read_table(os.path.join(prep["data_dir"], entry["name"]), columns=["id", "num_tokens_a"])
        lengths.update(zip(table.column("id").to_pylist(), table.column("num_tokens_a").to_pylist()))
    return lengths


def _train_ids(prep, split="train"):
    return {row[0] for row in prep["rows"][split]}


def _assert_same_weights(path_a, path_b):
    a, b = load_safetensors(path_a), load_safetensors(path_b)
    assert sorted(a) == sorted(b)
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"tensors differ: {different[:5]} (of {len(different)})"


# --------------------------------------------------------------------------- corpus sanity
def test_corpus_has_long_documents_and_three_labels(prep):
    manifest = prep["manifest"]
    assert sorted(manifest["label_map"]) == sorted(LABELS)
    assert {split: info["records"] for split, info in manifest["splits"].items()} == {"train": 90, "dev": 30, "test": 30}
    lengths = _doc_lengths(prep)
    long_docs = [n for n in lengths.values() if n > MAX_SEQ - 2]
    assert len(long_docs) >= 10 and max(lengths.values()) >= 2000 and min(long_docs) >= 300
    assert len(manifest["splits"]["train"]["files"]) >= 4  # several units to permute and split


# --------------------------------------------------------------------------- train, save, reload
@pytest.fixture(scope="module")
def trained(prep, tiny_model, tmp_path_factory):
    """An in-process run: 6 epochs of rs 8 at lr 1e-2 (72 steps), evaluated each epoch."""
    out = tmp_path_factory.mktemp("trained") / "model"
    argv = task_argv(
        prep["data_dir"], tiny_model, out,
        "--seq_len_func", "rs", "--seq_func_params", str(SPAN),
        "--num_train_epochs", "6", "--learning_rate", "1e-2",
    )
    return {"trainer": train_in_process(argv), "output_dir": str(out)}


def test_training_loss_falls(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = os.path.join(trained["output_dir"], "runs", "topics")
    accumulator = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    accumulator.Reload()
    events = accumulator.Scalars("train/loss")
    steps = [event.step for event in events]
    losses = [event.value for event in events]
    assert steps == list(range(1, 73))  # --logging_steps 1, 6 epochs x 12 batches
    first, last = float(np.mean(losses[:6])), float(np.mean(losses[-6:]))
    assert first > 1.0  # about ln 3 for a random 3-way classifier
    assert last < 0.5 * first and last < first - 0.5, (first, last)
    results = json.loads(Path(trained["output_dir"], "eval_results.json").read_text())
    assert len(results["history"]) == 6  # once per epoch
    assert results["final"]["accuracy"] >= 0.8 and results["final"]["loss"] < results["history"][0]["loss"]


def test_saved_model_reloads_with_same_logits_and_labels(trained, prep):
    from transformers import AutoModelForSequenceClassification

    from trainer.shards import list_units
    from trainer.evaluation import score_documents

    trainer = trained["trainer"]
    output_dir = trained["output_dir"]
    reloaded = AutoModelForSequenceClassification.from_pretrained(output_dir)
    label_map = prep["manifest"]["label_map"]
    assert reloaded.config.label2id == label_map
    assert reloaded.config.id2label == {index: name for name, index in label_map.items()}
    assert reloaded.config.num_labels == 3
    for name in ("config.json", "model.safetensors", "tokenizer.json", "run_config.json", "preprocess_manifest.json"):
        assert os.path.exists(os.path.join(output_dir, name)), name
    run_config = json.loads(Path(output_dir, "run_config.json").read_text())
    assert run_config["seq_len"]["name"] == "rs" and run_config["label_names"] == trainer.label_names

    trained_state = trainer.model.state_dict()
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, trained_state[name]), name
    units = list_units(prep["data_dir"], trainer.manifest, "dev")
    kwargs = dict(views=1, batch_size=16, device=torch.device("cpu"), pad_token_id=trainer.pad_token_id)
    ids_a, _, logits_trained = score_documents(trainer.model, units, trainer.features, **kwargs)
    ids_b, _, logits_reloaded = score_documents(reloaded, units, trainer.features, **kwargs)
    assert ids_a == ids_b and len(ids_a) == 30
    np.testing.assert_array_equal(logits_trained, logits_reloaded)


# --------------------------------------------------------------------------- predict
def _predict(trained, prep, tmp_path, name, *extra):
    from trainer import predict

    output = tmp_path / name
    argv = ["--model_dir", trained["output_dir"], "--data_dir", prep["data_dir"], "--split", "test",
            "--output", str(output), "--use_cpu", *extra]
    assert predict.main(argv) == 0
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    return output, {row["id"]: row for row in rows}, len(rows)


def test_predict_one_row_per_document_deterministic_and_views(trained, prep, tokenizer, tmp_path):
    from trainer.shards import list_units
    from trainer.evaluation import score_documents

    test_ids = _train_ids(prep, "test")
    labels = {row[0]: row[2] for row in prep["rows"]["test"]}
    out1, rows, count = _predict(trained, prep, tmp_path, "p1.jsonl", "--eval_views", "1")
    assert count == 30 and set(rows) == test_ids
    for row in rows.values():
        probabilities = row["probabilities"]
        assert sorted(probabilities) == sorted(LABELS)
        assert math.isclose(sum(probabilities.values()), 1.0, abs_tol=1e-5)
        assert row["label"] == max(probabilities, key=probabilities.get)
    accuracy = np.mean([rows[doc]["label"] == labels[doc] for doc in test_ids])
    assert accuracy >= 0.8  # the trained model learned the topics

    # the same probabilities as the in-memory trained model with its own feature builder
    trainer = trained["trainer"]
    doc_ids, _, logits = score_documents(
        trainer.model, list_units(prep["data_dir"], trainer.manifest, "test"), trainer.features,
        views=1, batch_size=16, device=torch.device("cpu"), pad_token_id=trainer.pad_token_id,
    )
    expected = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    for doc_id, row in zip(doc_ids, expected):
        got = [rows[doc_id]["probabilities"][name] for name in trainer.label_names]
        np.testing.assert_allclose(got, row, atol=2e-6)

    out2, _, _ = _predict(trained, prep, tmp_path, "p2.jsonl", "--eval_views", "1")
    assert out1.read_bytes() == out2.read_bytes()  # deterministic draws for a random seq fn

    lengths = {row[0]: len(tokenizer(row[3], add_special_tokens=False, truncation=False)["input_ids"]) for row in prep["rows"]["test"]}
    long_ids = {doc for doc, n in lengths.items() if n > MAX_SEQ - 2}
    assert long_ids and long_ids != test_ids
    for views in ("chunks", "3"):
        _, other, count = _predict(trained, prep, tmp_path, f"p_{views}.jsonl", "--eval_views", views)
        assert count == 30 and set(other) == test_ids
        for doc_id, row in other.items():
            assert math.isclose(sum(row["probabilities"].values()), 1.0, abs_tol=1e-5)
            if doc_id not in long_ids:  # one view only: exactly the single-view result
                assert row["probabilities"] == rows[doc_id]["probabilities"], doc_id
        assert any(other[doc]["probabilities"] != rows[doc]["probabilities"] for doc in long_ids), views

    tsv = tmp_path / "p.tsv"
    from trainer import predict

    assert predict.main(["--model_dir", trained["output_dir"], "--data_dir", prep["data_dir"], "--output", str(tsv), "--use_cpu"]) == 0
    lines = tsv.read_text().splitlines()
    assert lines[0].split("\t") == ["id", "label", *(f"p_{name}" for name in trainer.label_names)]
    assert len(lines) == 31 and {line.split("\t")[0] for line in lines[1:]} == test_ids


# --------------------------------------------------------------------------- resume is exact
RESUME_EPOCHS, RESUME_STEPS, SAVE_STEPS = 4, 48, 4


def _resume_argv(prep, model, out, trace, workers):
    return task_argv(
        prep["data_dir"], model, out,
        "--seq_len_func", "rs", "--seq_func_params", str(SPAN),
        "--num_train_epochs", str(RESUME_EPOCHS), "--learning_rate", "1e-2",
        "--save_steps", str(SAVE_STEPS), "--save_total_limit", "3",
        "--dataloader_num_workers", str(workers),
        "--sample_trace_file", str(trace),
    )


def _checked(proc, expected_rc=0):
    assert proc.returncode == expected_rc, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


@pytest.fixture(scope="module")
def uninterrupted(prep, tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("uninterrupted")
    trace = root / "trace.jsonl"
    _checked(run_task_subprocess(_resume_argv(prep, tiny_model, root / "out", trace, workers=0)))
    mapping, order = trace_by_key(read_trace(trace))
    assert len(read_trace(trace)) == RESUME_STEPS
    return {"out": root / "out", "mapping": mapping, "order": order}


def _checkpoint_steps(out):
    return sorted(int(name.split("-")[1]) for name in os.listdir(out / "checkpoints") if name.startswith("checkpoint-"))


def _assert_equals_uninterrupted(uninterrupted, out, records):
    mapping, order = trace_by_key(records)  # also asserts replayed batches repeat the same ids
    assert order == uninterrupted["order"]
    assert mapping == uninterrupted["mapping"]
    _assert_same_weights(uninterrupted["out"] / "model.safetensors", out / "model.safetensors")
    final = json.loads((out / "eval_results.json").read_text())["final"]
    reference = json.loads((uninterrupted["out"] / "eval_results.json").read_text())["final"]
    assert final["loss"] == reference["loss"] and final["confusion_matrix"] == reference["confusion_matrix"]


def test_uninterrupted_trace_covers_every_epoch(uninterrupted, prep):
    """The reference itself: 4 epochs x 12 batches in order, each epoch the whole split."""
    order = uninterrupted["order"]
    assert order == [(epoch, batch) for epoch in range(RESUME_EPOCHS) for batch in range(12)]
    for epoch in range(RESUME_EPOCHS):
        ids = [doc for (e, _), batch in uninterrupted["mapping"].items() if e == epoch for doc in batch]
        assert sorted(ids) == sorted(_train_ids(prep))
    epoch_orders = [[uninterrupted["mapping"][(e, b)] for b in range(12)] for e in range(2)]
    assert epoch_orders[0] != epoch_orders[1]  # reshuffled each epoch


def test_resume_after_sigterm_is_exact(uninterrupted, prep, tiny_model, tmp_path):
    """SIGTERM once the trace shows 6 batches: checkpoint, exit 143; the same command resumes.

    2 DataLoader workers, and the signal goes to the whole process group, as torchrun
    (``killpg``) and a VM shutdown send it: the workers must survive until the checkpoint.
    """
    trace, out = tmp_path / "trace.jsonl", tmp_path / "out"
    argv = _resume_argv(prep, tiny_model, out, trace, workers=2)
    returncode, stdout, stderr = _signal_group_after_batches(argv, trace, signal.SIGTERM)
    assert returncode == 143, f"exit {returncode}\n{stderr[-4000:]}"
    assert "stopped by SIGTERM after step" in stderr
    stopped_at = len(read_trace(trace))
    assert 6 <= stopped_at < RESUME_STEPS
    # the stop step is checkpointed even though it is not a multiple of --save_steps
    assert _checkpoint_steps(out)[-1] == stopped_at
    assert not (out / "model.safetensors").exists()

    resumed = _checked(run_task_subprocess(argv))
    assert f"resumed from {out / 'checkpoints'}" in resumed.stderr
    records = read_trace(trace)
    assert len(records) == RESUME_STEPS  # nothing replayed: the checkpoint is the stop step
    _assert_equals_uninterrupted(uninterrupted, out, records)


def test_resume_after_exception_is_exact(uninterrupted, prep, tiny_model, tmp_path):
    """A crash after step 18 (checkpoint at 16): the resumed run replays batches 17-18 identically."""
    trace, out = tmp_path / "trace.jsonl", tmp_path / "out"
    argv = _resume_argv(prep, tiny_model, out, trace, workers=0)
    failed = run_task_subprocess(argv, **{FAIL_ENV: "18"})
    assert failed.returncode not in (0, 143), failed.stderr[-3000:]
    assert "injected failure after step 18" in failed.stderr
    assert len(read_trace(trace)) == 18
    assert _checkpoint_steps(out)[-1] == 16

    _checked(run_task_subprocess(argv))
    records = read_trace(trace)
    assert len(records) == RESUME_STEPS + 2
    # the trace after the restart begins at the checkpoint's position: epoch 1, batch 4
    assert (records[18]["epoch"], records[18]["batch"]) == (1, 4)
    assert records[18:20] == records[16:18]
    _assert_equals_uninterrupted(uninterrupted, out, records)
    # steps 17-18 were logged twice; the resumed run's purge_step leaves the second logging only
    assert _train_losses(out) == _train_losses(uninterrupted["out"])


def _train_losses(out):
    """``(step, value)`` of every train/loss scalar of the run's TensorBoard directory (purged events left out)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = Path(out) / "runs"
    assert sorted(os.listdir(runs)) == ["topics"]  # one TensorBoard run
    accumulator = EventAccumulator(str(runs / "topics"), size_guidance={"scalars": 0})
    accumulator.Reload()
    return [(event.step, event.value) for event in accumulator.Scalars("train/loss")]


def test_resume_after_ctrl_c_is_exact_and_appends_to_one_tensorboard_run(uninterrupted, prep, tiny_model, tmp_path):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it, DataLoader workers included):
    a checkpoint of the step, exit 130 with one line and no traceback; the same command resumes
    to the uninterrupted result and logs into the same TensorBoard run, every step once."""
    trace, out = tmp_path / "trace.jsonl", tmp_path / "out"
    argv = _resume_argv(prep, tiny_model, out, trace, workers=2)
    returncode, stdout, stderr = _signal_group_after_batches(argv, trace, signal.SIGINT)
    assert returncode == 130, f"exit {returncode}\n{stderr[-4000:]}"
    stopped_at = len(read_trace(trace))
    assert 6 <= stopped_at < RESUME_STEPS
    checkpoint = out / "checkpoints" / f"checkpoint-{stopped_at:08d}"
    assert _checkpoint_steps(out)[-1] == stopped_at and (checkpoint / "COMPLETE").exists()
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert stderr.rstrip().splitlines()[-1] == (
        f"stopped by Ctrl-C after step {stopped_at}; checkpoint {checkpoint}; run the same command again to resume"
    )
    assert stderr.count("stopped by Ctrl-C") == 1
    # the first Ctrl-C is acknowledged once, by the trainer only (the workers ignore it)
    assert stderr.count("Ctrl-C: stopping after this step") == 1
    assert not (out / "model.safetensors").exists()

    resumed = _checked(run_task_subprocess(argv))
    assert f"resumed from {checkpoint}: step {stopped_at}," in resumed.stderr
    records = read_trace(trace)
    assert len(records) == RESUME_STEPS
    _assert_equals_uninterrupted(uninterrupted, out, records)
    assert _train_losses(out) == _train_losses(uninterrupted["out"])  # steps 1..48 once each, the same losses


def test_second_ctrl_c_stops_at_once_without_a_checkpoint(prep, tiny_model, tmp_path, monkeypatch, capsys):
    """Two Ctrl-C in the middle of step 3: no checkpoint of step 3, exit 130, one line; the handlers are restored."""
    from trainer import task

    original = task.Trainer._forward_backward

    def forward_backward(self, model, batch):
        if self.global_step == 2 and self.next_batch == 2:  # the batch of step 3
            os.kill(os.getpid(), signal.SIGINT)  # (delivered to this thread before kill returns)
            assert self.signals.requested == signal.SIGINT  # the first one: a request only
            os.kill(os.getpid(), signal.SIGINT)  # the second: KeyboardInterrupt, here
            raise AssertionError("the second Ctrl-C did not stop the run")
        return original(self, model, batch)

    monkeypatch.setattr(task.Trainer, "_forward_backward", forward_backward)
    out = tmp_path / "out"
    handler = signal.getsignal(signal.SIGINT)
    argv = task_argv(prep["data_dir"], tiny_model, out, "--max_steps", "8", "--save_steps", "2", "--eval_strategy", "no")
    assert task.main(argv) == 130
    assert signal.getsignal(signal.SIGINT) is handler
    err = capsys.readouterr().err
    assert err.rstrip().splitlines()[-1] == (
        "stopped at once by Ctrl-C, without a checkpoint of this step; the same command resumes from the last checkpoint"
    )
    assert "Traceback" not in err
    assert _checkpoint_steps(out) == [2]


# --------------------------------------------------------------------------- per-epoch resampling
@pytest.mark.parametrize("seq_func", ["rs", "rso", "rsd"])
def test_random_views_resampled_each_epoch_and_reproducible(prep, tokenizer, seq_func):
    lengths = _doc_lengths(prep)
    long_ids = [doc for doc, n in lengths.items() if n > MAX_SEQ - 2]
    short_ids = [doc for doc, n in lengths.items() if n <= MAX_SEQ - 2]
    views = {}
    for workers in (0, 2):
        stream = _stream(prep, tokenizer, seq_func)  # a fresh stream: a second "run"
        for epoch in (0, 1):
            views[workers, epoch] = _inputs_by_doc(_epoch_batches(stream, epoch, workers))
    for epoch in (0, 1):
        assert set(views[0, epoch]) == set(lengths)
        assert views[0, epoch] == views[2, epoch]  # same draws whatever the workers, run to run
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    for doc in long_ids:
        first, second = views[0, 0][doc], views[0, 1][doc]
        assert len(first) == len(second) == MAX_SEQ  # budget filled exactly, plus [CLS] and [SEP]
        assert first[0] == second[0] == cls and first[-1] == second[-1] == sep
        assert first != second, f"{seq_func}: {doc} has the same view in epochs 0 and 1"
    for doc in short_ids:
        assert views[0, 0][doc] == views[0, 1][doc] and len(views[0, 0][doc]) == lengths[doc] + 2
    # another seed draws other spans
    other = _inputs_by_doc(_epoch_batches(_stream(prep, tokenizer, seq_func, seed=7), 0))
    assert all(other[doc] == views[0, 0][doc] for doc in short_ids)
    assert any(other[doc] != views[0, 0][doc] for doc in long_ids)


# --------------------------------------------------------------------------- order and resume position
def test_sample_order_independent_of_workers_and_start_batch_is_tail(prep, tokenizer):
    stream = _stream(prep, tokenizer, "rs", shuffle_buffer=16)  # several shuffle windows per epoch
    num_batches = stream.plan(0).num_batches
    assert num_batches == 12
    full = {}
    for epoch in (0, 1):
        by_workers = {workers: _epoch_batches(stream, epoch, workers) for workers in (0, 2)}
        assert _order(by_workers[0]) == _order(by_workers[2])
        assert [index for index, _ in _order(by_workers[0])] == list(range(num_batches))
        full[epoch] = by_workers[0]
    assert _order(full[0]) != _order(full[1])
    for workers, start in ((0, 5), (2, 7), (0, 11)):
        tail = _epoch_batches(stream, 1, workers, start_batch=start)
        assert _order(tail) == _order(full[1])[start:]
        for got, want in zip(tail, full[1][start:]):
            assert torch.equal(got["input_ids"], want["input_ids"]) and torch.equal(got["labels"], want["labels"])
    assert _epoch_batches(stream, 1, 0, start_batch=num_batches) == []


def _lengths(batch):
    return batch["attention_mask"].sum(dim=1).tolist()


def test_group_by_length_batches_similar_lengths_same_with_any_workers_and_resumable(prep, tokenizer):
    """Within each shuffle window the batches hold documents of similar length (their length ranges
    do not overlap), the batches are the same with 0, 1 or 2 DataLoader workers and epoch to
    epoch reshuffled, and a resumed epoch (start_batch) is exactly the tail of the whole one."""
    grouped = _stream(prep, tokenizer, "rs", shuffle_buffer=32, group_by_length=True)  # windows of 4 batches
    plain = _stream(prep, tokenizer, "rs", shuffle_buffer=32)
    num_batches = grouped.plan(0).num_batches
    assert num_batches == 12
    epochs = {}
    for epoch in (0, 1):
        runs = {workers: _epoch_batches(grouped, epoch, workers) for workers in (0, 1, 2)}
        for workers in (1, 2):
            assert _order(runs[workers]) == _order(runs[0])
            assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(runs[workers], runs[0]))
        batches = epochs[epoch] = runs[0]
        assert [index for index, _ in _order(batches)] == list(range(num_batches))
        ids = [doc for batch in batches for doc in batch["doc_ids"]]
        assert sorted(ids) == sorted(_train_ids(prep))  # every document once
        for window in range(0, num_batches, 4):
            full = [batch for batch in batches[window : window + 4] if len(batch["doc_ids"]) == 8]
            for a in full:
                for b in full:
                    if a is not b:
                        assert max(_lengths(a)) <= min(_lengths(b)) or max(_lengths(b)) <= min(_lengths(a))
        # less padding than the same windows without grouping
        padded = lambda run: sum(batch["input_ids"].numel() for batch in run)  # noqa: E731
        assert padded(batches) < padded(_epoch_batches(plain, epoch))
    assert _order(epochs[0]) != _order(epochs[1])
    for workers, start in ((0, 5), (2, 7)):
        tail = _epoch_batches(grouped, 1, workers, start_batch=start)
        assert _order(tail) == _order(epochs[1])[start:]
        assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(tail, epochs[1][start:]))


def test_group_by_length_run_resumes_exactly(one_torch_thread, prep, tiny_model, tmp_path, monkeypatch):
    """A --group_by_length run that crashes after step 10 (checkpoint 8) and is resumed equals one that was not."""
    from trainer.task import run

    def argv(name):
        return task_argv(
            prep["data_dir"], tiny_model, tmp_path / name, "--group_by_length", "--shuffle_buffer", "32",
            "--seq_len_func", "rs", "--seq_func_params", str(SPAN), "--max_steps", "16", "--save_steps", "4",
            "--eval_strategy", "no", "--learning_rate", "1e-2", "--sample_trace_file", str(tmp_path / f"{name}.jsonl"),
        )

    run(argv("reference"))
    monkeypatch.setenv(FAIL_ENV, "10")
    with pytest.raises(RuntimeError, match="injected failure after step 10"):
        run(argv("resumed"))
    monkeypatch.delenv(FAIL_ENV)
    run(argv("resumed"))
    reference, resumed = read_trace(tmp_path / "reference.jsonl"), read_trace(tmp_path / "resumed.jsonl")
    assert len(resumed) == 16 + 2 and resumed[10:12] == resumed[8:10]  # batches 9-10 replayed, identically
    assert trace_by_key(resumed) == trace_by_key(reference)
    _assert_same_weights(tmp_path / "reference" / "model.safetensors", tmp_path / "resumed" / "model.safetensors")


def test_evaluation_is_the_same_with_dataloader_workers(trained, prep):
    from trainer.shards import list_units
    from trainer.evaluation import score_documents

    trainer = trained["trainer"]
    units = list_units(prep["data_dir"], trainer.manifest, "dev")
    for views in ("chunks", 3):
        results = [
            score_documents(trainer.model, units, trainer.features, views=views, batch_size=4, device=torch.device("cpu"),
                            pad_token_id=trainer.pad_token_id, num_workers=workers)
            for workers in (0, 2)
        ]
        assert results[0][0] == results[1][0] and len(results[0][0]) == 30
        np.testing.assert_array_equal(results[0][1], results[1][1])
        np.testing.assert_array_equal(results[0][2], results[1][2])


# --------------------------------------------------------------------------- sharding across ranks
def _rank_epoch(prep, tokenizer, units, epoch, rank, world_size):
    stream = _stream(prep, tokenizer, "head", units=units, rank=rank, world_size=world_size)
    batches = _epoch_batches(stream, epoch)
    assert len(batches) == stream.plan(epoch).num_batches
    return [doc for batch in batches for doc in batch["doc_ids"]], len(batches)


def test_two_ranks_disjoint_union_is_epoch_same_batch_count(prep, tokenizer):
    from schemas.manifest import read_manifest
    from trainer.shards import list_units

    units = list_units(prep["data_dir"], read_manifest(prep["data_dir"]), "train")
    all_ids = _train_ids(prep)
    for epoch in (0, 1, 2):
        (ids0, n0), (ids1, n1) = (_rank_epoch(prep, tokenizer, units, epoch, rank, 2) for rank in (0, 1))
        assert n0 == n1 == math.ceil(45 / 8)
        assert len(ids0) == len(set(ids0)) == 45 and len(ids1) == len(set(ids1)) == 45
        assert not set(ids0) & set(ids1)
        assert set(ids0) | set(ids1) == all_ids
    first = _rank_epoch(prep, tokenizer, units, 0, 0, 2)[0]
    assert set(first) != set(_rank_epoch(prep, tokenizer, units, 1, 0, 2)[0])  # ranks' shares change per epoch


def test_odd_row_count_pads_by_wrapping_with_equal_batches(prep, tokenizer):
    from schemas.manifest import read_manifest
    from trainer.data import EpochPlan, eval_plan
    from trainer.shards import list_units

    units = list_units(prep["data_dir"], read_manifest(prep["data_dir"]), "train")
    drop = next(i for i, unit in enumerate(units) if unit.num_rows % 2)
    odd_units = units[:drop] + units[drop + 1 :]
    total = sum(unit.num_rows for unit in odd_units)
    assert total % 2 == 1
    all_pairs = {(unit.path, unit.row_group, row) for unit in odd_units for row in range(unit.num_rows)}
    per_rank = math.ceil(total / 2)
    for epoch in (0, 1):
        plans = [EpochPlan(odd_units, batch_size=8, seed=42, epoch=epoch, rank=r, world_size=2) for r in (0, 1)]
        assert plans[0].num_rows == plans[1].num_rows == per_rank
        assert plans[0].num_batches == plans[1].num_batches == math.ceil(per_rank / 8)
        located = []
        for plan in plans:
            positions = np.concatenate([plan.batch_positions(b) for b in range(plan.num_batches)])
            located.append([(unit.path, unit.row_group, row) for unit, row in plan.locate(positions)])
        assert len(set(located[0])) == len(located[0]) == per_rank
        assert set(located[0]) | set(located[1]) == all_pairs
        # the one padding row of rank 1 wraps around to the start of the epoch's stream
        assert len(set(located[0]) & set(located[1])) == 2 * per_rank - total == 1
        # the same through ShardStream, with document ids
        (ids0, n0), (ids1, n1) = (_rank_epoch(prep, tokenizer, odd_units, epoch, rank, 2) for rank in (0, 1))
        assert n0 == n1 and len(ids0) == len(ids1) == per_rank
        assert len(set(ids0) & set(ids1)) == 1 and len(set(ids0) | set(ids1)) == total
    # evaluation does not pad: every row exactly once across the ranks
    eval_plans = [eval_plan(odd_units, batch_size=8, rank=r, world_size=2) for r in (0, 1)]
    assert sum(plan.num_rows for plan in eval_plans) == total
    assert eval_plans[0].stop == eval_plans[1].start


def test_torchrun_two_ranks_gloo(prep, tiny_model, tmp_path):
    """A real 2-process CPU run: each rank traces its own batches; shares are disjoint per epoch."""
    trace, out = tmp_path / "trace.jsonl", tmp_path / "out"
    argv = task_argv(
        prep["data_dir"], tiny_model, out,
        "--seq_len_func", "rs", "--seq_func_params", str(SPAN),
        "--num_train_epochs", "2", "--learning_rate", "1e-2", "--sample_trace_file", str(trace),
    )
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "trainer.task", *argv],
        cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=240,
    )
    _checked(proc)
    assert not trace.exists()  # each rank writes its own file
    traces = [read_trace(tmp_path / f"trace.rank{rank}.jsonl") for rank in (0, 1)]
    keys = [[(r["epoch"], r["batch"]) for r in records] for records in traces]
    assert keys[0] == keys[1] == [(epoch, batch) for epoch in range(2) for batch in range(6)]
    all_ids = _train_ids(prep)
    for epoch in range(2):
        shares = [[doc for r in records if r["epoch"] == epoch for doc in r["ids"]] for records in traces]
        assert len(shares[0]) == len(set(shares[0])) == len(shares[1]) == len(set(shares[1])) == 45
        assert not set(shares[0]) & set(shares[1])
        assert set(shares[0]) | set(shares[1]) == all_ids
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.label2id == prep["manifest"]["label_map"]
    assert json.loads((out / "run_config.json").read_text())["world_size"] == 2
    final = json.loads((out / "eval_results.json").read_text())["final"]
    assert final["num_examples"] == 30  # every dev document once, gathered from both ranks
    assert _checkpoint_steps(out)[-1] == 12


# --------------------------------------------------------------------------- manifest mismatch
def _copy_prep(prep, tmp_path):
    target = tmp_path / "prep"
    shutil.copytree(prep["data_dir"], target)
    return target


def _edit_manifest(data_dir, edit):
    path = Path(data_dir) / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def _fails_fast(argv, capsys, *expected):
    from trainer.task import main, run

    with pytest.raises(ValueError) as error:
        run(argv)
    for text in expected:
        assert text in str(error.value), str(error.value)
    assert main(argv) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("error: ") and all(text in stderr for text in expected)


def test_shards_of_another_vocab_size_refused(prep, tiny_model, tmp_path, capsys):
    data_dir = _copy_prep(prep, tmp_path)
    _edit_manifest(data_dir, lambda m: m["tokenizer"].update(vocab_size=50265))
    out = tmp_path / "out"
    _fails_fast(task_argv(data_dir, tiny_model, out), capsys, "vocab_size: shards 50265 vs now 30522")
    assert not (out / "model.safetensors").exists()


def test_shards_of_another_tokenizer_refused(prep, tiny_model, tmp_path, capsys):
    """A cased variant of the tokenizer (--tokenizer_name) has another fingerprint."""
    cased = tmp_path / "cased"
    shutil.copytree(tiny_model, cased)
    config_path = cased / "tokenizer_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "do_lower_case": False}))
    argv = task_argv(prep["data_dir"], tiny_model, tmp_path / "out", "--tokenizer_name", str(cased))
    _fails_fast(argv, capsys, "fingerprint: shards", f"differs from {str(cased)!r}")
    # an edited fingerprint is refused the same way
    data_dir = _copy_prep(prep, tmp_path)
    _edit_manifest(data_dir, lambda m: m["tokenizer"].update(fingerprint="0" * 64))
    _fails_fast(task_argv(data_dir, tiny_model, tmp_path / "out2"), capsys, f"fingerprint: shards {'0' * 64!r} vs now")


def test_shards_of_another_schema_version_refused(prep, tiny_model, tmp_path, capsys):
    data_dir = _copy_prep(prep, tmp_path)
    _edit_manifest(data_dir, lambda m: m.update(schema_version=2))
    _fails_fast(task_argv(data_dir, tiny_model, tmp_path / "out"), capsys, "schema_version 2", "supported 1")


# --------------------------------------------------------------------------- metrics
def test_metrics_three_classes_by_hand():
    from modeling.metrics import classification_metrics, confusion_matrix

    # true \ predicted:  a  b  c
    matrix = np.array([[5, 1, 0],   # a: 6
                       [2, 3, 1],   # b: 6
                       [0, 0, 4]])  # c: 4
    labels = [0] * 5 + [0] + [1, 1] + [1] * 3 + [1] + [2] * 4
    predictions = [0] * 5 + [1] + [0, 0] + [1] * 3 + [2] + [2] * 4
    assert confusion_matrix(labels, predictions, 3).tolist() == matrix.tolist()
    metrics = classification_metrics(matrix, ["a", "b", "c"])
    assert metrics["accuracy"] == pytest.approx(12 / 16)
    # precision a 5/7, b 3/4, c 4/5; recall a 5/6, b 3/6, c 4/4 -> F1 10/13, 3/5, 8/9
    assert metrics["per_class"]["a"]["precision"] == pytest.approx(5 / 7)
    assert metrics["per_class"]["b"]["recall"] == pytest.approx(0.5)
    assert [metrics["per_class"][k]["f1"] for k in "abc"] == pytest.approx([10 / 13, 3 / 5, 8 / 9])
    assert [metrics["per_class"][k]["support"] for k in "abc"] == [6, 6, 4]
    assert metrics["macro_f1"] == pytest.approx((10 / 13 + 3 / 5 + 8 / 9) / 3)
    # Gorodkin: (c*s - sum p_k t_k) / sqrt((s^2 - sum p_k^2)(s^2 - sum t_k^2)), p = (7,4,5), t = (6,6,4)
    assert metrics["mcc"] == pytest.approx((12 * 16 - (42 + 24 + 20)) / math.sqrt((256 - 90) * (256 - 88)))
    assert metrics["num_examples"] == 16 and metrics["confusion_matrix"] == matrix.tolist()


@pytest.mark.parametrize("tn,fp,fn,tp", [(50, 10, 5, 35), (3, 7, 9, 1), (1, 0, 0, 1), (0, 4, 6, 0), (10, 2, 30, 1)])
def test_binary_mcc_is_the_standard_formula(tn, fp, fn, tp):
    from modeling.metrics import classification_metrics

    metrics = classification_metrics(np.array([[tn, fp], [fn, tp]]), ["neg", "pos"])
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert metrics["mcc"] == pytest.approx(expected)
    assert metrics["accuracy"] == pytest.approx((tp + tn) / (tn + fp + fn + tp))
    f1_pos = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    f1_neg = 2 * tn / (2 * tn + fn + fp) if tn else 0.0
    assert metrics["macro_f1"] == pytest.approx((f1_pos + f1_neg) / 2)


def test_metrics_degenerate_cases():
    from modeling.metrics import classification_metrics

    everything_one_class = classification_metrics(np.array([[0, 6], [0, 4]]), ["n", "p"])
    assert everything_one_class["mcc"] == 0.0 and everything_one_class["accuracy"] == pytest.approx(0.4)
    assert everything_one_class["macro_f1"] == pytest.approx((0 + 2 * 4 / (8 + 6)) / 2)
    # a label that neither occurs nor is predicted does not count in macro-F1 (as scikit-learn)
    absent = classification_metrics(np.array([[3, 1, 0], [1, 3, 0], [0, 0, 0]]), ["a", "b", "c"])
    assert absent["macro_f1"] == pytest.approx(0.75)
    assert absent["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    perfect = classification_metrics(np.diag([2, 3, 4]), ["a", "b", "c"])
    assert perfect["mcc"] == pytest.approx(1.0) and perfect["macro_f1"] == pytest.approx(1.0)
    empty = classification_metrics(np.zeros((2, 2)), ["n", "p"])
    assert empty["accuracy"] == 0.0 and empty["mcc"] == 0.0
