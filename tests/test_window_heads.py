"""Whole-document heads over the windows' states (issue 19): ``--pooling attention|transformer``.

* the forward of each head on a tiny BERT equals a reference computed here (attention: the
  scores, softmax per document and weighted sum written out; transformer: each document alone,
  unpadded, through the same layers); attention weights sum to 1 over a document's windows; a
  document of one window gets the same logits whatever the padding (of its tokens, and of the
  window slots when batched with a longer document); the gradient reaches the encoder through
  every window;
* what a plain Hugging Face user gets from such a folder: the whole model with spanwise imported
  or with ``trust_remote_code=True``; without either, an error asking for it (never the bare
  encoder under a fresh classifier);
* a trained model's predictions agree through ``trainer.predict`` (shards, raw files),
  ``Classifier.predict`` and ``beam_pipelines.predict``, after save and reload;
* a ``--pooling transformer`` run stopped by SIGTERM at a random step and resumed gives
  bit-identical weights (head included) to an uninterrupted one; ``--gradient_checkpointing``
  and gradient accumulation train it too; two gloo ranks train an attention head.
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

from test_predict import assert_same, predict_shards, raw_test_file, read_jsonl
from trainer_helpers import (  # noqa: F401  (prep and tiny_model are fixtures)
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
    train_in_process,
)

LABELS3 = {0: "a", 1: "b", 2: "c"}


def _model(tiny_model, pooling, **extra):
    from modeling.window_heads import WindowHeadForSequenceClassification

    torch.manual_seed(0)
    return WindowHeadForSequenceClassification.from_encoder(
        tiny_model, pooling=pooling, num_labels=3, id2label=LABELS3, label2id={v: k for k, v in LABELS3.items()},
        max_windows=4, **extra).eval()


def _windows(lengths, seed=1, first_token=None):
    """A padded batch of windows of the given lengths ([CLS] ... [SEP]), token ids drawn from ``seed``."""
    from modeling.features import Example, collate

    generator = torch.Generator().manual_seed(seed)
    examples = []
    for i, n in enumerate(lengths):
        body = torch.randint(1000, 5000, (n - 2,), generator=generator).tolist()
        if first_token is not None:
            body[0] = first_token + i  # a token of this window only
        examples.append(Example("d", 0, [101, *body, 102], [0] * n))
    batch = collate(examples, pad_token_id=0)
    return {name: batch[name] for name in ("input_ids", "attention_mask", "token_type_ids")}


def _states_one_by_one(model, inputs):
    with torch.no_grad():
        return torch.cat([model.window_states(**{k: v[i : i + 1, : int(inputs["attention_mask"][i].sum())]
                                                 for k, v in inputs.items()}) for i in range(len(inputs["input_ids"]))])


# --------------------------------------------------------------------------- the heads against references
def test_attention_head_equals_a_reference_and_its_weights_sum_to_one(tiny_model):
    model = _model(tiny_model, "attention")
    with torch.no_grad():  # a random tiny encoder's windows are alike: sharpen the scores so that they differ
        model.head.score[0].weight.mul_(50)
    inputs = _windows([40, 17, 64, 9, 33])
    owners = torch.tensor([0, 1, 0, 1, 0])  # a document's windows need not be adjacent
    with torch.no_grad():
        out = model(**inputs, owners=owners, num_docs=2)
    states = _states_one_by_one(model, inputs)
    head = model.head
    linear1, linear2 = head.score[0], head.score[2]
    scores = (torch.tanh(states @ linear1.weight.T + linear1.bias) @ linear2.weight.T + linear2.bias).squeeze(-1)
    expected_logits, expected_weights = [], torch.zeros(5)
    for doc in (0, 1):
        rows = [i for i, o in enumerate(owners.tolist()) if o == doc]
        weights = torch.exp(scores[rows]) / torch.exp(scores[rows]).sum()
        expected_weights[rows] = weights
        document = (weights.unsqueeze(1) * states[rows]).sum(dim=0)
        expected_logits.append(document @ head.classifier.weight.T + head.classifier.bias)
    torch.testing.assert_close(out.window_weights, expected_weights, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.logits, torch.stack(expected_logits), atol=1e-5, rtol=1e-5)
    sums = torch.zeros(2).index_add(0, owners, out.window_weights)
    torch.testing.assert_close(sums, torch.ones(2))
    assert len(set(round(float(w), 4) for w in out.window_weights)) > 2  # not uniform: the scores matter


@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_transformer_head_equals_each_document_alone_unpadded(tiny_model, reduce):
    model = _model(tiny_model, "transformer", head_reduce=reduce)
    inputs = _windows([40, 17, 64, 9, 33, 20])
    owners = torch.tensor([0, 1, 0, 2, 0, 1])  # 3, 2 and 1 windows
    with torch.no_grad():
        logits = model(**inputs, owners=owners, num_docs=3).logits
        states = _states_one_by_one(model, inputs)
        head = model.head
        expected = []
        for doc in range(3):
            rows = [i for i, o in enumerate(owners.tolist()) if o == doc]
            x = states[rows] + head.positions.weight[: len(rows)]  # window k of the document: position k
            for layer in head.windows.layers:  # post-norm layers, no mask: the document alone
                attended, _ = layer.self_attn(x[None], x[None], x[None], need_weights=False)
                x = layer.norm1(x + attended[0])
                x = layer.norm2(x + layer.linear2(torch.nn.functional.gelu(layer.linear1(x))))
            document = x.amax(dim=0) if reduce == "max" else x.mean(dim=0)
            expected.append(document @ head.classifier.weight.T + head.classifier.bias)
    torch.testing.assert_close(logits, torch.stack(expected), atol=1e-5, rtol=1e-5)
    # the order of a document's windows matters (position embeddings): swapping two changes the logits
    states = torch.randn(6, states.shape[1], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before, _ = model.head(states, owners, 3)
        after, _ = model.head(states[[2, 1, 0, 3, 4, 5]], owners, 3)
    assert not torch.allclose(before[0], after[0], atol=1e-4) and torch.equal(before[1:], after[1:])
    with pytest.raises(ValueError, match="knows 4 window positions: predict with at most 4 views"):
        model.head(torch.randn(5, states.shape[1]), torch.zeros(5, dtype=torch.long), 1)


@pytest.mark.parametrize("pooling", ["attention", "transformer"])
def test_a_one_window_document_is_the_same_whatever_the_padding(tiny_model, pooling):
    model = _model(tiny_model, pooling)
    alone = _windows([20])
    with torch.no_grad():
        reference = model(**alone, owners=torch.tensor([0]), num_docs=1).logits[0]
        # padded tokens: batched with longer windows of another document (3 windows: padded window slots too)
        mixed = _windows([60, 50, 64], seed=2)
        width = mixed["input_ids"].shape[1]
        padded = {k: torch.cat([torch.nn.functional.pad(alone[k], (0, width - alone[k].shape[1])), mixed[k]]) for k in alone}
        logits = model(**padded, owners=torch.tensor([0, 1, 1, 1]), num_docs=2).logits
        torch.testing.assert_close(logits[0], reference, atol=1e-5, rtol=1e-5)
        # the one-window document last, and without owners (each row a document: what transformers.pipeline passes)
        reordered = {k: torch.cat([v[1:], v[:1]]) for k, v in padded.items()}
        logits = model(**reordered, owners=torch.tensor([0, 0, 0, 1]), num_docs=2).logits
        torch.testing.assert_close(logits[1], reference, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(**alone).logits[0], reference)


@pytest.mark.parametrize("pooling", ["attention", "transformer"])
def test_gradients_reach_the_encoder_through_every_window(tiny_model, pooling):
    from modeling.pooling import pooled_forward

    model = _model(tiny_model, pooling).train()
    inputs = _windows([30, 12, 25, 40, 18], first_token=7000)  # window i holds token 7000 + i, no other does
    owners = torch.tensor([0, 0, 1, 1, 1])
    logits = pooled_forward(model, inputs, owners, 2, pooling)
    torch.nn.functional.cross_entropy(logits, torch.tensor([2, 0])).backward()
    embedding_grad = model.encoder.embeddings.word_embeddings.weight.grad
    assert all(float(embedding_grad[7000 + i].abs().sum()) > 0 for i in range(5))
    assert float(embedding_grad[6999].abs().sum()) == 0.0 and float(embedding_grad[7005].abs().sum()) == 0.0
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.head.parameters())


# --------------------------------------------------------------------------- a plain Hugging Face user
def test_what_a_plain_hugging_face_user_gets(tiny_model, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from modeling.window_heads import MODEL_TYPE, WindowHeadForSequenceClassification

    model = _model(tiny_model, "transformer")
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == MODEL_TYPE and config["encoder"]["model_type"] == "bert"
    assert config["auto_map"]["AutoModelForSequenceClassification"] == "window_heads.WindowHeadForSequenceClassification"
    assert (tmp_path / "window_heads.py").read_text() == (REPO_ROOT / "modeling" / "window_heads.py").read_text()
    inputs = _windows([20, 33])
    with torch.no_grad():
        expected = model(**inputs).logits
    # in a process that imported spanwise: the whole model, not a BERT with a fresh classifier
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, WindowHeadForSequenceClassification)
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, expected)
    # in a fresh process without spanwise: an error asking for trust_remote_code, then the whole model with it
    np.save(tmp_path / "inputs.npy", inputs["input_ids"].numpy())
    np.save(tmp_path / "expected.npy", expected.numpy())
    script = f"""
import numpy as np, sys, torch
from transformers import AutoModelForSequenceClassification
assert "modeling" not in sys.modules
try:
    AutoModelForSequenceClassification.from_pretrained({str(tmp_path)!r})
    print("LOADED WITHOUT REMOTE CODE")
except ValueError as error:
    print("REFUSED:", str(error).replace(chr(10), " "))
model = AutoModelForSequenceClassification.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()
ids = torch.from_numpy(np.load({str(tmp_path / "inputs.npy")!r}))
with torch.no_grad():
    logits = model(input_ids=ids, attention_mask=(ids != 0).long()).logits
print("CLASS", type(model).__name__, "SAME", bool(np.allclose(logits.numpy(), np.load({str(tmp_path / "expected.npy")!r}), atol=1e-6)))
"""
    env = subprocess_env(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "REFUSED:" in proc.stdout and "trust_remote_code=True" in proc.stdout, proc.stdout
    assert "CLASS WindowHeadForSequenceClassification SAME True" in proc.stdout, proc.stdout


# --------------------------------------------------------------------------- trained: every prediction way agrees
@pytest.fixture(scope="module")
def head_models(prep, tiny_model, tmp_path_factory):
    out = {}
    for pooling in ("attention", "transformer"):
        directory = tmp_path_factory.mktemp(f"model_{pooling}") / "model"
        train_in_process(task_argv(prep["data_dir"], tiny_model, directory, "--seq_len_func", "head", "--train_views",
                                   "chunks", "--max_chunks", "3", "--pooling", pooling, "--eval_views", "chunks",
                                   "--num_train_epochs", "3", "--learning_rate", "3e-3"))
        out[pooling] = str(directory)
    return out


@pytest.mark.parametrize("pooling", ["attention", "transformer"])
def test_save_reload_and_every_prediction_way_agree(head_models, prep, tmp_path, pooling):
    from beam_pipelines import predict as beam_predict
    from modeling.classifier import Classifier, TrainedView
    from modeling.window_heads import WindowHeadForSequenceClassification

    model = head_models[pooling]
    view = TrainedView.read(model)
    assert (view.pooling, view.max_chunks, view.eval_views) == (pooling, 3, "chunks")
    weights = load_safetensors(os.path.join(model, "model.safetensors"))
    assert any(name.startswith("head.") for name in weights) and any(name.startswith("encoder.") for name in weights)
    rows = prep["rows"]["test"]
    expected = predict_shards(model, prep, tmp_path / "shards.jsonl", "chunks")
    assert len(expected) == len(rows)
    assert len({row["label"] for row in expected.values()}) > 1  # trained off a constant answer

    summary = __import__("trainer.predict", fromlist=["predict"]).predict(
        ["--model_dir", model, "--input_files", raw_test_file(prep), "--output", str(tmp_path / "raw.jsonl"), "--use_cpu"])
    assert_same(read_jsonl(tmp_path / "raw.jsonl"), expected, "raw")
    classifier = Classifier.from_pretrained(model, device="cpu")
    assert isinstance(classifier.model, WindowHeadForSequenceClassification)
    api = classifier.predict([r[3] for r in rows], ids=[r[0] for r in rows], batch_size=5)
    assert_same({p.id: {"label": p.label, "probabilities": p.probabilities} for p in api}, expected, "api")
    assert max(p.views for p in api) == 3
    beam_summary = beam_predict.run(["--model_dir", model, "--input_files", raw_test_file(prep), "--output_dir",
                                     str(tmp_path / "beam"), "--batch_size", "4"])
    got = {}
    for name in sorted(os.listdir(tmp_path / "beam")):
        if name.startswith("predictions-"):
            got.update(read_jsonl(tmp_path / "beam" / name))
    assert_same(got, expected, "beam")
    assert beam_summary["views"] == summary["views"] == sum(p.views for p in api)


# --------------------------------------------------------------------------- exact resume, accumulation, checkpointing
HEAD_EPOCHS, HEAD_STEPS = 2, 24  # 90 documents, batches of 8: 12 per epoch


def _transformer_argv(prep, model, out, trace, workers, *extra):
    return task_argv(
        prep["data_dir"], model, out,
        "--seq_len_func", "head", "--train_views", "chunks", "--max_chunks", "3", "--pooling", "transformer",
        "--eval_views", "chunks", "--num_train_epochs", str(HEAD_EPOCHS), "--learning_rate", "1e-2",
        "--save_steps", "4", "--save_total_limit", "2", "--dataloader_num_workers", str(workers),
        "--sample_trace_file", str(trace), *extra,
    )


def test_transformer_head_resumes_exactly_after_sigterm_at_a_random_step(prep, tiny_model, tmp_path):
    seed = int(os.environ.get("SPANWISE_HEAD_RESUME_SEED", "19"))
    stop_after = random.Random(seed).randint(3, HEAD_STEPS - 4)
    print(f"\nSIGTERM after batch {stop_after} (SPANWISE_HEAD_RESUME_SEED={seed})")
    reference_trace, reference_out = tmp_path / "reference.jsonl", tmp_path / "reference"
    done = run_task_subprocess(_transformer_argv(prep, tiny_model, reference_out, reference_trace, 0), timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]

    trace, out = tmp_path / "trace.jsonl", tmp_path / "out"
    argv = _transformer_argv(prep, tiny_model, out, trace, 2)
    returncode, _, stderr = signal_group_after_batches(argv, trace, signal.SIGTERM, batches=stop_after)
    assert returncode == 143, f"exit {returncode}\n{stderr[-4000:]}"
    assert stop_after <= len(read_trace(trace)) < HEAD_STEPS
    resumed = run_task_subprocess(argv, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resumed from" in resumed.stderr

    assert trace_by_key(read_trace(trace)) == trace_by_key(read_trace(reference_trace))
    a, b = load_safetensors(reference_out / "model.safetensors"), load_safetensors(out / "model.safetensors")
    assert sorted(a) == sorted(b) and any(name.startswith("head.windows.") for name in a)
    assert [name for name in a if not torch.equal(a[name], b[name])] == []
    final = json.loads((out / "eval_results.json").read_text())["final"]
    reference = json.loads((reference_out / "eval_results.json").read_text())["final"]
    assert final["loss"] == reference["loss"] and final["pooling"] == "transformer"

    # another head shape is another run: refused, naming it
    other = run_task_subprocess([*argv, "--head_layers", "1"], timeout=120)
    assert other.returncode == 2 and "head_layers 2 -> 1" in other.stderr


def test_gradient_checkpointing_and_accumulation_train_the_head(prep, tiny_model, tmp_path):
    """With activation checkpointing the weights are those without it (the same computation,
    recomputed with the same dropout); with gradient accumulation a step takes 2 x 4 documents."""
    base = ["--seq_len_func", "head", "--train_views", "chunks", "--max_chunks", "3", "--pooling", "transformer",
            "--max_steps", "3", "--learning_rate", "1e-2", "--do_train"]
    runs = {
        "plain": task_argv(prep["data_dir"], tiny_model, tmp_path / "plain", *base),
        "checkpointing": task_argv(prep["data_dir"], tiny_model, tmp_path / "checkpointing", *base,
                                   "--gradient_checkpointing"),
        "accumulated": task_argv(prep["data_dir"], tiny_model, tmp_path / "accumulated", *base,
                                 "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2",
                                 "--sample_trace_file", str(tmp_path / "accumulated.jsonl")),
    }
    weights = {}
    for name, argv in runs.items():
        trainer = train_in_process(argv)
        assert trainer.global_step == 3
        weights[name] = load_safetensors(tmp_path / name / "model.safetensors")
    for key, value in weights["plain"].items():
        torch.testing.assert_close(weights["checkpointing"][key], value, atol=2e-5, rtol=1e-4, msg=key)
    start = _model(tiny_model, "transformer").state_dict()
    for name in ("plain", "accumulated"):
        assert not torch.equal(weights[name]["head.classifier.weight"], start["head.classifier.weight"])
        assert not torch.equal(weights[name]["encoder.embeddings.word_embeddings.weight"],
                               start["encoder.embeddings.word_embeddings.weight"])
    assert [len(record["ids"]) for record in read_trace(tmp_path / "accumulated.jsonl")] == [4] * 6


def test_torchrun_two_ranks_attention_head(prep, tiny_model, tmp_path):
    trace, out = tmp_path / "trace.jsonl", tmp_path / "out"
    argv = task_argv(prep["data_dir"], tiny_model, out, "--train_views", "chunks", "--max_chunks", "2",
                     "--pooling", "attention", "--max_steps", "3", "--sample_trace_file", str(trace),
                     "--eval_views", "chunks")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "trainer.task", *argv],
        cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    shares = [[doc for record in read_trace(tmp_path / f"trace.rank{rank}.jsonl") for doc in record["ids"]] for rank in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == 3 * 8 and not set(shares[0]) & set(shares[1])
    final = json.loads((out / "eval_results.json").read_text())["final"]
    assert final["num_examples"] == 30 and final["pooling"] == "attention"


def test_window_positions_start_at_the_encoders_scale(tiny_model):
    """The transformer head's window-position embeddings are drawn as the encoder's own position
    embeddings (N(0, initializer_range)), not torch's N(0, 1), which drowned the window states."""
    from transformers import AutoConfig

    std = AutoConfig.from_pretrained(tiny_model).initializer_range
    positions = _model(tiny_model, "transformer").head.positions.weight
    assert positions.mean().abs() < std and 0.5 * std < positions.std() < 1.5 * std


def test_head_learning_rate_trains_the_new_layers_at_their_own_rate(prep, tiny_model, tmp_path):
    """``--head_learning_rate``: the head over the windows and the classifier (every parameter outside the
    pretrained encoder) train at that rate, the encoder at ``--learning_rate``; a plain classifier's new
    layer is its classifier; a rate of 0 is refused naming the flag."""
    from modeling.classifier import head_parameter_names, start_classifier
    from trainer.args import parse_args
    from trainer.task import Trainer

    plain = start_classifier(tiny_model, num_labels=3)
    assert head_parameter_names(plain) == {"classifier.weight", "classifier.bias"}
    out = tmp_path / "out"
    argv = task_argv(prep["data_dir"], tiny_model, out, "--train_views", "chunks", "--max_chunks", "2", "--pooling",
                     "attention", "--max_steps", "2", "--learning_rate", "1e-12", "--head_learning_rate", "1e-2",
                     "--lr_scheduler_type", "constant", "--weight_decay", "0", "--do_train")
    trainer = Trainer(parse_args(argv))
    trainer.setup()
    start = {key: value.detach().clone() for key, value in trainer.model.state_dict().items()}
    try:
        trainer.train()
        trainer.save()
    finally:
        trainer.close()
    names = {id(p): name for name, p in trainer.model.named_parameters()}
    rates = {names[id(p)]: group["lr"] for group in trainer.optimizer.param_groups for p in group["params"]}
    assert set(rates) == set(names.values())
    assert {name for name, lr in rates.items() if lr == 1e-2} == head_parameter_names(trainer.model)
    assert all(name.startswith("head.") for name in head_parameter_names(trainer.model))
    assert all(lr == 1e-12 for name, lr in rates.items() if name.startswith("encoder."))
    trained = load_safetensors(out / "model.safetensors")
    moved = {key: float((trained[key].float() - start[key].float()).abs().max()) for key in start}
    assert max(value for key, value in moved.items() if key.startswith("encoder.")) < 1e-8
    assert moved["head.classifier.weight"] > 1e-3 and moved["head.score.0.weight"] > 1e-3
    run_config = json.loads((out / "run_config.json").read_text())
    assert run_config["args"]["head_learning_rate"] == run_config["result_args"]["head_learning_rate"] == 1e-2
    with pytest.raises(ValueError, match=r"--head_learning_rate must be > 0, got 0.0"):
        parse_args(task_argv(prep["data_dir"], tiny_model, tmp_path / "zero", "--head_learning_rate", "0"))
