"""Training on whole long documents by pooling their views (issue 14): ``--train_views K|chunks``,
``--max_chunks``, ``--pooling mean|max``.

* ``pool_logits`` by hand; the pooled forward of a tiny BERT equals the mean (max) of the view
  logits computed one view at a time, and the gradient reaches every view (max: exactly the
  views that hold a class's maximum);
* a document shorter than one window gives exactly one view; ``--max_chunks`` keeps at most N
  evenly spaced windows (first and last included), the same every epoch; K random views are
  re-drawn each epoch, reproducibly; a pooled batch holds at most batch size x N windows;
* flag errors are ValueErrors with the fix;
* a pooled run stopped by SIGTERM at a random step (2 DataLoader workers) and resumed gives
  bit-identical weights; so does one with K random views, max pooling and gradient
  accumulation after a crash; evaluation and ``trainer.predict`` pool with the run's pooling;
* a 2-process gloo run with pooled views.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from trainer_helpers import (  # noqa: F401  (prep and tiny_model are fixtures)
    FAIL_ENV,
    REPO_ROOT,
    load_safetensors,
    prep,
    read_trace,
    run_task_subprocess,
    signal_group_after_batches,
    subprocess_env,
    task_argv,
    tiny_model,
    trace_by_key,
)

MAX_SEQ = 64  # task_argv's --max_seq_length
BUDGET = MAX_SEQ - 2  # [CLS] ... [SEP]


@pytest.fixture(scope="module")
def tokenizer():
    from tokenization.tokenizer import load_tokenizer
    from trainer_helpers import minilm_dir

    return load_tokenizer(minilm_dir())


def _features(tokenizer, func="head", params=(), max_chunks=None, seed=42):
    from modeling.features import FeatureBuilder, SpecialTokenTemplate
    from tokenization.seq_len import validate_seq_config

    config = validate_seq_config(func, list(params), MAX_SEQ, tokenizer)
    return FeatureBuilder(config, SpecialTokenTemplate.from_tokenizer(tokenizer), seed, max_chunks=max_chunks)


def _assert_same_weights(path_a, path_b):
    a, b = load_safetensors(path_a), load_safetensors(path_b)
    assert sorted(a) == sorted(b)
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"tensors differ: {different[:5]} (of {len(different)})"


# --------------------------------------------------------------------------- pooling itself
def test_pool_logits_by_hand_and_gradients():
    from modeling.pooling import pool_logits

    logits = torch.tensor([[1.0, 5.0], [3.0, -1.0], [2.0, 2.0], [0.0, 7.0]], requires_grad=True)
    owners = torch.tensor([0, 0, 1, 0])
    mean = pool_logits(logits, owners, 2, "mean")
    torch.testing.assert_close(mean, torch.tensor([[4 / 3, 11 / 3], [2.0, 2.0]]))
    mean.sum().backward()
    torch.testing.assert_close(logits.grad, torch.tensor([[1 / 3] * 2, [1 / 3] * 2, [1.0, 1.0], [1 / 3] * 2]))
    logits.grad = None
    top = pool_logits(logits, owners, 2, "max")
    torch.testing.assert_close(top, torch.tensor([[3.0, 7.0], [2.0, 2.0]]))
    top.sum().backward()
    torch.testing.assert_close(logits.grad, torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="pooling must be one of mean, max"):
        pool_logits(logits, owners, 2, "attention")


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_pooled_forward_equals_views_scored_one_at_a_time_and_gradients_reach_the_views(tiny_model, pooling):
    from transformers import AutoModelForSequenceClassification

    from modeling.features import Example, collate
    from modeling.pooling import model_input_names, pooled_forward

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=3).eval()
    generator = torch.Generator().manual_seed(1)
    lengths, owners = [40, 17, 64, 9, 33], [0, 0, 0, 1, 1]  # document 0: 3 views, document 1: 2 (padded batch)
    examples = [Example("d", 0, [101] + torch.randint(1000, 5000, (n - 2,), generator=generator).tolist() + [102], [0] * n)
                for n in lengths]
    batch = collate(examples, pad_token_id=0)
    names = model_input_names(model)
    assert names == ("input_ids", "attention_mask", "token_type_ids")
    inputs = {name: batch[name] for name in names}

    captured = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        captured["embeddings"] = output

    handle = model.bert.embeddings.register_forward_hook(keep)
    pooled = pooled_forward(model, inputs, torch.tensor(owners), 2, pooling)
    handle.remove()

    with torch.no_grad():
        single = torch.cat([model(input_ids=torch.tensor([e.input_ids]), token_type_ids=torch.tensor([e.token_type_ids])).logits
                            for e in examples])
    expected = torch.stack([
        getattr(single[[i for i, o in enumerate(owners) if o == doc]], "mean" if pooling == "mean" else "amax")(dim=0)
        for doc in (0, 1)
    ])
    torch.testing.assert_close(pooled, expected, atol=1e-5, rtol=1e-5)

    torch.nn.functional.cross_entropy(pooled, torch.tensor([2, 1])).backward()
    grad = captured["embeddings"].grad
    per_view = [float(grad[row, : lengths[row]].abs().sum()) for row in range(len(lengths))]
    assert all(float(grad[row, lengths[row]:].abs().sum()) == 0.0 for row in range(len(lengths)))  # padding: none
    if pooling == "mean":
        assert all(value > 0 for value in per_view), per_view
    else:  # a view gets gradient iff it holds the maximum of some class of its document
        holders = set()
        for doc in (0, 1):
            rows = [i for i, o in enumerate(owners) if o == doc]
            holders |= {rows[int(k)] for k in single[rows].argmax(dim=0)}
        assert holders and all((value > 0) == (row in holders) for row, value in enumerate(per_view)), (per_view, holders)
    assert all(p.grad is not None for p in model.classifier.parameters())


# --------------------------------------------------------------------------- views of a document
def test_short_document_gives_exactly_one_view(tokenizer):
    short = list(range(1000, 1000 + BUDGET))  # exactly one window
    for func, params, views in (("head", (), "chunks"), ("rs", (8,), 4), ("rs", (8,), "chunks")):
        features = _features(tokenizer, func, params, max_chunks=3)
        for epoch in (0, 1):
            got = features.train_views("doc", 1, short, [], epoch, views)
            assert len(got) == 1
            assert got[0].input_ids == features.train_example("doc", 1, short, [], epoch).input_ids
            assert got[0].input_ids == [101, *short, 102]
        assert len(features.eval_examples("doc", 1, short, [], views)) == 1


def test_max_chunks_is_honoured_evenly_spaced_first_and_last_kept(tokenizer):
    from modeling.pooling import select_windows

    assert select_windows(3, None) == [0, 1, 2] and select_windows(3, 4) == [0, 1, 2]
    assert select_windows(10, 4) == [0, 3, 6, 9] and select_windows(7, 1) == [0] and select_windows(5, 2) == [0, 4]
    assert select_windows(9, 3) == [0, 4, 8]

    doc = list(range(2000, 2000 + 10 * BUDGET + 5))  # 11 windows, the last one of 5 tokens
    windows = [doc[i : i + BUDGET] for i in range(0, len(doc), BUDGET)]
    assert len(windows) == 11
    everything = _features(tokenizer, max_chunks=None).eval_examples("doc", 0, doc, [], "chunks")
    assert [e.input_ids[1:-1] for e in everything] == windows  # unset: all windows (evaluation as before)
    for limit in (1, 2, 4, 11, 20):
        features = _features(tokenizer, max_chunks=limit)
        views = features.train_views("doc", 0, doc, [], 0, "chunks")
        assert len(views) == min(limit, 11)
        expected = [windows[i] for i in select_windows(11, limit)]
        assert [v.input_ids[1:-1] for v in views] == expected
        assert views[0].input_ids[1:-1] == windows[0]
        if limit > 1:
            assert views[-1].input_ids[1:-1] == windows[-1]
        # deterministic: the same every epoch, and evaluation / prediction cut the same windows
        assert [v.input_ids for v in features.train_views("doc", 0, doc, [], 5, "chunks")] == [v.input_ids for v in views]
        assert [v.input_ids for v in features.eval_examples("doc", 0, doc, [], "chunks")] == [v.input_ids for v in views]


def test_random_views_are_redrawn_each_epoch_reproducibly(tokenizer):
    doc = list(range(3000, 3000 + 700))
    features = _features(tokenizer, "rs", (8,))
    epoch0 = [v.input_ids for v in features.train_views("doc", 2, doc, [], 0, 4)]
    assert len(epoch0) == 4 and len({tuple(ids) for ids in epoch0}) == 4
    assert all(len(ids) == MAX_SEQ for ids in epoch0)
    assert epoch0[0] == features.train_example("doc", 2, doc, [], 0).input_ids  # view 0 = the one-view draw
    assert epoch0 == [v.input_ids for v in _features(tokenizer, "rs", (8,)).train_views("doc", 2, doc, [], 0, 4)]
    epoch1 = [v.input_ids for v in features.train_views("doc", 2, doc, [], 1, 4)]
    assert not set(map(tuple, epoch0)) & set(map(tuple, epoch1))
    # a deterministic function gives its one view
    assert len(_features(tokenizer, "head").train_views("doc", 2, doc, [], 0, 4)) == 1


def _stream(prep, tokenizer, views, max_chunks=None, func="head", params=()):
    from schemas.manifest import read_manifest
    from trainer.data import ShardStream
    from trainer.shards import list_units

    units = list_units(prep["data_dir"], read_manifest(prep["data_dir"]), "train")
    features = _features(tokenizer, func, params, max_chunks=max_chunks)
    return ShardStream(units, features, batch_size=8, seed=42, pad_token_id=0, views=views)


def test_pooled_batches_same_documents_owners_and_memory_bound(prep, tokenizer):
    plain, pooled = _stream(prep, tokenizer, 1), _stream(prep, tokenizer, "chunks", max_chunks=3)
    for epoch in (0, 1):
        plain.set_epoch(epoch)
        pooled.set_epoch(epoch)
        one, many = list(plain), list(pooled)
        assert [b["doc_ids"] for b in one] == [b["doc_ids"] for b in many]  # the same documents, same order
        windows = 0
        for a, b in zip(one, many):
            owners = b["owners"].tolist()
            assert len(owners) == b["input_ids"].shape[0] <= 8 * 3
            assert owners == sorted(owners) and set(owners) == set(range(len(b["doc_ids"])))
            assert torch.equal(a["labels"], b["labels"])
            assert max(owners.count(i) for i in set(owners)) <= 3
            first = [owners.index(i) for i in range(len(b["doc_ids"]))]  # a document's first view is its head
            assert torch.equal(b["input_ids"][first, : a["input_ids"].shape[1]], a["input_ids"])
            windows += len(owners)
        assert windows > sum(len(b["doc_ids"]) for b in one)  # the long documents gave several windows


# --------------------------------------------------------------------------- flags
@pytest.mark.parametrize("flags, message", [
    (["--train_views", "chunks"], "--train_views chunks needs --max_chunks N"),
    (["--train_views", "0"], "--train_views must be a positive integer or 'chunks'"),
    (["--train_views", "all"], "--train_views must be a positive integer or 'chunks'"),
    (["--train_views", "chunks", "--max_chunks", "0"], "--max_chunks must be >= 1"),
    (["--train_views", "4", "--seq_len_func", "head"], "gives the same view every time"),
    (["--pooling", "attention"], "--pooling attention learns from a document's windows together"),
    (["--pooling", "transformer", "--train_views", "4", "--seq_len_func", "rs", "--seq_func_params", "8",
      "--eval_views", "chunks"], "--pooling transformer learns one embedding per window position"),
    (["--pooling", "transformer", "--train_views", "chunks", "--max_chunks", "2", "--head_layers", "0"],
     "--head_layers must be >= 1"),
])
def test_view_flag_errors(flags, message, tmp_path):
    from trainer.args import parse_args

    with pytest.raises(ValueError, match=message):
        parse_args(task_argv("data", "model", tmp_path, *flags))


def test_view_flags_parse():
    from trainer.args import parse_args

    config = parse_args(task_argv("d", "m", "o", "--train_views", "04", "--seq_len_func", "rs", "--seq_func_params", "8",
                                  "--pooling", "max"))
    assert (config.train_views, config.max_chunks, config.pooling) == ("4", None, "max")
    assert parse_args(task_argv("d", "m", "o")).train_views == "1"


# --------------------------------------------------------------------------- exact resume
POOLED_EPOCHS, POOLED_STEPS = 2, 24  # 90 documents, batches of 8: 12 per epoch


def _pooled_argv(prep, model, out, trace, workers):
    return task_argv(
        prep["data_dir"], model, out,
        "--seq_len_func", "head", "--train_views", "chunks", "--max_chunks", "3", "--pooling", "mean",
        "--eval_views", "chunks", "--num_train_epochs", str(POOLED_EPOCHS), "--learning_rate", "1e-2",
        "--save_steps", "4", "--save_total_limit", "2", "--dataloader_num_workers", str(workers),
        "--sample_trace_file", str(trace),
    )


def test_pooled_run_resumes_exactly_after_sigterm_at_a_random_step(prep, tiny_model, tmp_path):
    seed = int(os.environ.get("SPANWISE_POOL_RESUME_SEED", "14"))
    stop_after = random.Random(seed).randint(3, POOLED_STEPS - 4)
    print(f"\nSIGTERM after batch {stop_after} (SPANWISE_POOL_RESUME_SEED={seed})")
    reference_trace, reference_out = tmp_path / "reference.jsonl", tmp_path / "reference"
    done = run_task_subprocess(_pooled_argv(prep, tiny_model, reference_out, reference_trace, workers=0), timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]

    trace, out = tmp_path / "trace.jsonl", tmp_path / "out"
    argv = _pooled_argv(prep, tiny_model, out, trace, workers=2)
    returncode, _, stderr = signal_group_after_batches(argv, trace, signal.SIGTERM, batches=stop_after)
    assert returncode == 143, f"exit {returncode}\n{stderr[-4000:]}"
    assert "stopped by SIGTERM after step" in stderr
    assert stop_after <= len(read_trace(trace)) < POOLED_STEPS
    resumed = run_task_subprocess(argv, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resumed from" in resumed.stderr

    assert trace_by_key(read_trace(trace)) == trace_by_key(read_trace(reference_trace))
    _assert_same_weights(reference_out / "model.safetensors", out / "model.safetensors")
    final = json.loads((out / "eval_results.json").read_text())["final"]
    reference = json.loads((reference_out / "eval_results.json").read_text())["final"]
    assert final["loss"] == reference["loss"] and final["pooling"] == "mean" and final["eval_views"] == "chunks"
    run_config = json.loads((out / "run_config.json").read_text())
    assert run_config["result_args"]["train_views"] == "chunks" and run_config["result_args"]["max_chunks"] == 3

    # another pooling is another run: refused, naming it
    other = run_task_subprocess([*argv, "--pooling", "max"], timeout=120)
    assert other.returncode == 2 and "pooling 'mean' -> 'max'" in other.stderr


@pytest.fixture(scope="module")
def max_pooled(prep, tiny_model, tmp_path_factory):
    """K=3 random views, max pooling, accumulation 2: a crash after step 7 (checkpoint 6) resumed, and a reference."""
    from trainer.task import run

    root = tmp_path_factory.mktemp("max_pooled")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def argv(name):
        return task_argv(
            prep["data_dir"], tiny_model, root / name, "--seq_len_func", "rs", "--seq_func_params", "8",
            "--train_views", "3", "--pooling", "max", "--gradient_accumulation_steps", "2", "--max_steps", "12",
            "--save_steps", "3", "--learning_rate", "1e-2", "--eval_strategy", "no", "--do_train", "--do_eval",
            "--eval_views", "3", "--sample_trace_file", str(root / f"{name}.jsonl"),
        )

    try:
        run(argv("reference"))
        os.environ[FAIL_ENV] = "7"
        with pytest.raises(RuntimeError, match="injected failure after step 7"):
            run(argv("resumed"))
        del os.environ[FAIL_ENV]
        run(argv("resumed"))
    finally:
        os.environ.pop(FAIL_ENV, None)
        torch.set_num_threads(threads)
    return root


def test_random_views_max_pooling_with_accumulation_resume_exactly(max_pooled):
    reference, resumed = read_trace(max_pooled / "reference.jsonl"), read_trace(max_pooled / "resumed.jsonl")
    assert len(reference) == 24 and len(resumed) == 24 + 2  # batches 13-14 (step 7) replayed
    assert trace_by_key(resumed) == trace_by_key(reference)
    _assert_same_weights(max_pooled / "reference" / "model.safetensors", max_pooled / "resumed" / "model.safetensors")
    results = json.loads((max_pooled / "resumed" / "eval_results.json").read_text())
    assert results["final"]["pooling"] == "max" and results["final"]["eval_views"] == "3"


def test_evaluation_and_predict_pool_with_the_runs_pooling(max_pooled, prep, tokenizer):
    from transformers import AutoModelForSequenceClassification

    from schemas.manifest import read_manifest
    from trainer import predict
    from trainer.shards import list_units
    from trainer.evaluation import score_documents

    model_dir = max_pooled / "reference"
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    features = _features(tokenizer, "rs", (8,))
    units = list_units(prep["data_dir"], read_manifest(prep["data_dir"]), "test")
    kwargs = dict(views=3, batch_size=5, device=torch.device("cpu"), pad_token_id=0)
    ids, _, top = score_documents(model, units, features, pooling="max", **kwargs)
    _, _, mean = score_documents(model, units, features, **kwargs)
    rows = {row[0]: row for row in prep["rows"]["test"]}
    checked = 0
    for index, doc_id in enumerate(ids):
        a = np.asarray(tokenizer(rows[doc_id][3], add_special_tokens=False)["input_ids"])
        views = features.eval_examples(doc_id, 0, a, [], 3)
        with torch.no_grad():
            single = torch.cat([model(input_ids=torch.tensor([v.input_ids])).logits for v in views])
        np.testing.assert_allclose(top[index], single.amax(dim=0).numpy(), atol=1e-5)
        np.testing.assert_allclose(mean[index], single.mean(dim=0).numpy(), atol=1e-5)
        checked += len(views) > 1
    assert checked >= 3 and not np.allclose(top, mean)

    output = max_pooled / "predictions.jsonl"
    assert predict.main(["--model_dir", str(model_dir), "--data_dir", prep["data_dir"], "--split", "test",
                         "--output", str(output), "--use_cpu"]) == 0
    predicted = {json.loads(line)["id"]: json.loads(line) for line in output.read_text().splitlines()}
    expected = torch.softmax(torch.from_numpy(top), dim=1).numpy()  # max pooling and 3 views, from run_config.json
    labels = json.loads((model_dir / "run_config.json").read_text())["label_names"]
    for doc_id, row in zip(ids, expected):
        np.testing.assert_allclose([predicted[doc_id]["probabilities"][name] for name in labels], row, atol=2e-6)


# --------------------------------------------------------------------------- DDP
def test_torchrun_two_ranks_pooled_views(prep, tiny_model, tmp_path):
    """2 gloo ranks, chunks pooled: each rank's documents are disjoint, the run finishes and evaluates."""
    trace, out = tmp_path / "trace.jsonl", tmp_path / "out"
    argv = task_argv(prep["data_dir"], tiny_model, out, "--train_views", "chunks", "--max_chunks", "2",
                     "--pooling", "max", "--max_steps", "4", "--sample_trace_file", str(trace), "--eval_views", "chunks")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "trainer.task", *argv],
        cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    shares = [[doc for record in read_trace(tmp_path / f"trace.rank{rank}.jsonl") for doc in record["ids"]] for rank in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == 4 * 8 and not set(shares[0]) & set(shares[1])
    final = json.loads((out / "eval_results.json").read_text())["final"]
    assert final["num_examples"] == 30 and final["pooling"] == "max"
