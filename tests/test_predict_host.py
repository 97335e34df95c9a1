"""Prediction's host side (issue 21): worker processes, token-budget batches and bf16 weights change no output.

Two small trained models (``rs`` with 4 random views of long documents; a whole-document model
with an attention head over its windows) predict the topic corpus of ``trainer_helpers`` with
0, 1 and 2 worker processes and with ``max_tokens_per_batch``, through the Python API,
``trainer.predict --input_files`` (with rejected and repeated rows), ``trainer.predict
--data_dir`` and the Beam pipeline. Worker counts give the very same bytes; a token budget
(other batches, so other float rounding) the same labels and view counts and probabilities
within 1e-5. ``--bf16`` casts the weights (not autocast) and stays within ``BF16_TOLERANCE``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from test_predict import assert_same, predict_shards, raw_test_file, read_jsonl
from trainer_helpers import prep, task_argv, tiny_model, train_in_process  # noqa: F401  (fixtures)

MAX_SEQ = 64
BUDGET = 3 * MAX_SEQ  # tokens per batch: 3 full-length views, or many short ones
# Largest |bf16 - fp32| probability: 1.4e-4 (rs) and 6.4e-4 (attention) measured on these models, with
# margin; docs/benchmarks.md has the figure of the benchmark's MiniLM (20 labels).
BF16_TOLERANCE = 5e-3


@pytest.fixture(scope="module")
def models(prep, tiny_model, tmp_path_factory) -> dict[str, str]:  # noqa: F811
    out = {}
    for name, flags in {
        "rs": ["--seq_len_func", "rs", "--seq_func_params", "8", "--eval_views", "4", "--num_train_epochs", "1",
               "--learning_rate", "1e-2"],
        "attention": ["--seq_len_func", "head", "--train_views", "chunks", "--max_chunks", "3", "--pooling",
                      "attention", "--eval_views", "chunks", "--num_train_epochs", "1", "--learning_rate", "1e-2"],
    }.items():
        directory = tmp_path_factory.mktemp(f"host_{name}") / "model"
        train_in_process(task_argv(prep["data_dir"], tiny_model, directory, *flags))
        out[name] = str(directory)
    return out


# --------------------------------------------------------------------------- the pieces
def test_plan_batches_by_count_and_by_tokens():
    from modeling.batching import plan_batches

    lengths = [5, 64, 7, 64, 30, 5, 12, 64, 9]
    by_count = plan_batches(lengths, 4)
    assert [list(b) for b in by_count] == [[0, 5, 2, 8], [6, 4, 1, 3], [7]]  # shortest first, ties in order
    for budget in (64, 100, 192, 1000):
        batches = plan_batches(lengths, 4, budget)
        assert sorted(int(i) for b in batches for i in b) == list(range(len(lengths)))
        assert all(len(b) * max(lengths[i] for i in b) <= budget for b in batches)
        # each batch is full: the next view would have taken it over the budget
        for batch, following in zip(batches, batches[1:]):
            assert (len(batch) + 1) * lengths[following[0]] > budget
    assert [len(b) for b in plan_batches(lengths, 4, 1000)] == [9]  # the budget, not batch_size, bounds the views
    assert [list(b) for b in plan_batches([70, 3], 4, 64)] == [[1], [0]]  # longer than the budget: alone
    assert plan_batches([], 4, 64) == [] and plan_batches([], 4) == []


def _square(state: int, payload: int) -> int:
    if payload == 13:
        raise ValueError("payload 13 refused")
    return state * payload * payload


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_ordered_map_keeps_the_order_and_raises_in_place(workers):
    from modeling.batching import ordered_map

    jobs = [(f"job{i}", i) for i in range(40)]
    got = list(ordered_map(_square, 2, jobs[:12], lambda job: job[1], workers))
    assert got == [(job, 2 * job[1] ** 2) for job in jobs[:12]]
    seen = []
    with pytest.raises(ValueError, match="payload 13 refused"):
        for job, _ in ordered_map(_square, 2, jobs, lambda job: job[1], workers):
            seen.append(job[1])
    assert seen == list(range(13))  # every job before the failing one, in order


# --------------------------------------------------------------------------- the Python API
@pytest.mark.parametrize("name,views", [("rs", "1"), ("rs", "4"), ("rs", "chunks"), ("attention", "chunks")])
def test_the_api_predicts_the_same_with_workers_and_a_token_budget(models, prep, monkeypatch, name, views):  # noqa: F811
    from modeling import classifier as classifier_module

    monkeypatch.setattr(classifier_module, "DOCS_PER_CHUNK", 8)  # several chunks in flight
    rows = prep["rows"]["test"]
    texts, ids = [row[3] for row in rows], [row[0] for row in rows]
    classifier = classifier_module.Classifier.from_pretrained(models[name], device="cpu")
    base, base_counts = classifier.predict_logits(texts, ids=ids, views=views, batch_size=5)
    assert base_counts.max() > 1 or views == "1"
    for workers in (1, 2):
        logits, counts = classifier.predict_logits(texts, ids=ids, views=views, batch_size=5, num_workers=workers)
        assert np.array_equal(logits, base) and np.array_equal(counts, base_counts), workers
    budget, budget_counts = classifier.predict_logits(texts, ids=ids, views=views, max_tokens_per_batch=BUDGET)
    assert np.array_equal(budget_counts, base_counts)
    np.testing.assert_allclose(_softmax(budget), _softmax(base), atol=1e-5)
    assert np.array_equal(budget.argmax(1), base.argmax(1))
    both, _ = classifier.predict_logits(texts, ids=ids, views=views, max_tokens_per_batch=BUDGET, num_workers=2)
    assert np.array_equal(both, budget)
    predictions = classifier.predict(texts, ids=ids, views=views, max_tokens_per_batch=BUDGET, num_workers=2)
    assert [p.views for p in predictions] == base_counts.tolist()
    # the budget, not batch_size, made the batches: more than 5 short views, no batch over BUDGET padded tokens
    from modeling.scoring import ViewBatching, prepare_views

    prepared = prepare_views(ViewBatching(classifier.documents, views, 5, BUDGET), (ids, texts, None))
    shapes = [arrays["input_ids"].shape for _, arrays in prepared.batches]
    assert all(rows * length <= BUDGET for rows, length in shapes) and max(rows for rows, _ in shapes) > 5


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def test_the_api_refuses_a_budget_below_a_view_and_bad_worker_counts(models):
    from modeling.classifier import Classifier

    classifier = Classifier.from_pretrained(models["rs"], device="cpu")
    with pytest.raises(ValueError, match=r"max_tokens_per_batch must be an integer of at least the model's max_seq_length \(64\)"):
        classifier.predict(["ball"], max_tokens_per_batch=MAX_SEQ - 1)
    with pytest.raises(ValueError, match="num_workers must be an integer >= 0"):
        classifier.predict(["ball"], num_workers=-1)
    with pytest.raises(ValueError, match=r"text 9 \('' ?\) gives no tokens"):
        classifier.predict(["ball team"] * 9 + [""], num_workers=2)


def test_bf16_casts_the_weights_and_stays_within_tolerance(models, prep):  # noqa: F811
    import torch

    from modeling.classifier import Classifier

    rows = prep["rows"]["test"]
    texts, ids = [row[3] for row in rows], [row[0] for row in rows]
    for name, views in (("rs", "4"), ("attention", "chunks")):
        fp32 = Classifier.from_pretrained(models[name], device="cpu")
        bf16 = Classifier.from_pretrained(models[name], device="cpu", bf16=True)
        assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16} and bf16.autocast is None
        base, counts = fp32.predict_logits(texts, ids=ids, views=views)
        low, low_counts = bf16.predict_logits(texts, ids=ids, views=views, num_workers=2)
        assert low.dtype == np.float32 and np.array_equal(low_counts, counts)
        difference = np.abs(_softmax(low) - _softmax(base)).max()
        assert 0 < difference < BF16_TOLERANCE, (name, difference)
    with pytest.raises(ValueError, match="--fp16 needs a GPU"):
        Classifier.from_pretrained(models["rs"], device="cpu", fp16=True)


# --------------------------------------------------------------------------- trainer.predict
def _raw_input(prep: dict[str, Any], path: Path) -> Path:  # noqa: F811
    """The test split as JSONL, with rows that are rejected on reading, give no tokens or repeat an ID."""
    rows = prep["rows"]["test"]
    with open(path, "wb") as handle:
        for number, (doc_id, _, label, text) in enumerate(rows):
            handle.write(json.dumps({"id": doc_id, "label": label, "text": text}).encode() + b"\n")
            if number == 3:
                handle.write(json.dumps({"id": "empty", "text": ""}).encode() + b"\n")
                handle.write(json.dumps({"id": "blank", "text": "\u200b\u200b"}).encode() + b"\n")
            if number == 11:
                handle.write(json.dumps({"id": rows[2][0], "text": "ball team again"}).encode() + b"\n")
                handle.write(b'{"id": "bad", "text": "caf\xe9 bread"}\n')
    return path


@pytest.mark.parametrize("name,views", [("rs", "4"), ("attention", "chunks")])
def test_trainer_predict_raw_is_the_same_with_workers_and_a_token_budget(models, prep, tmp_path, monkeypatch,
                                                                          name, views):  # noqa: F811
    from trainer import predict as predict_module

    monkeypatch.setattr(predict_module, "ROWS_PER_CHUNK", 7)  # several chunks, some ending at a task's end
    source = _raw_input(prep, tmp_path / "docs.jsonl")
    outputs = {}
    for label, extra in (("w0", []), ("w1", ["--dataloader_num_workers", "1"]), ("w2", ["--dataloader_num_workers", "2"]),
                         ("budget", ["--max_tokens_per_batch", str(BUDGET)]),
                         ("budget_w2", ["--max_tokens_per_batch", str(BUDGET), "--dataloader_num_workers", "2"])):
        out = tmp_path / f"{label}.jsonl"
        summary = predict_module.predict(["--model_dir", models[name], "--input_files", str(source), "--output", str(out),
                                          "--eval_views", views, "--batch_size", "5", "--use_cpu", "--quiet", *extra])
        outputs[label] = (summary, out.read_bytes(), (tmp_path / f"{label}.rejected.jsonl").read_bytes())
    summary = outputs["w0"][0]
    rows = len(prep["rows"]["test"])
    assert (summary["read"], summary["documents"], summary["rejected"]) == (rows + 4, rows, 4)
    assert summary["rejected_by_reason"] == {"empty_text_a": 1, "no_tokens": 1, "duplicate_id": 1, "invalid_utf8": 1}
    paths = ("output", "rejected_output", "summary_output")
    plain = {k: v for k, v in summary.items() if k not in paths}
    for label in ("w1", "w2"):
        assert outputs[label][1:] == outputs["w0"][1:], label  # the same bytes
        assert {k: v for k, v in outputs[label][0].items() if k not in paths} == plain
    assert outputs["budget_w2"][1:] == outputs["budget"][1:]
    assert outputs["budget"][2] == outputs["w0"][2]
    assert outputs["budget"][0]["views"] == summary["views"] and outputs["budget"][0]["documents"] == rows
    assert_same(read_jsonl(tmp_path / "budget.jsonl"), read_jsonl(tmp_path / "w0.jsonl"), "budget")
    assert summary["views"] > rows


@pytest.mark.parametrize("name,views", [("rs", "4"), ("attention", "chunks")])
def test_trainer_predict_shards_is_the_same_with_workers_and_a_token_budget(models, prep, tmp_path, name, views):  # noqa: F811
    from trainer.predict import predict

    expected = predict_shards(models[name], prep, tmp_path / "plain.jsonl", views)
    for label, extra in (("budget", ["--max_tokens_per_batch", str(BUDGET)]),
                         ("budget_w2", ["--max_tokens_per_batch", str(BUDGET), "--dataloader_num_workers", "2"])):
        out = tmp_path / f"{label}.jsonl"
        predict(["--model_dir", models[name], "--data_dir", prep["data_dir"], "--split", "test", "--output", str(out),
                 "--eval_views", views, "--use_cpu", "--batch_size", "4", *extra])
        assert_same(read_jsonl(out), expected, f"{name} {label}")
    assert (tmp_path / "budget.jsonl").read_bytes() == (tmp_path / "budget_w2.jsonl").read_bytes()
    out = tmp_path / "bf16.jsonl"
    predict(["--model_dir", models[name], "--data_dir", prep["data_dir"], "--split", "test", "--output", str(out),
             "--eval_views", views, "--use_cpu", "--bf16"])
    got = read_jsonl(out)
    assert set(got) == set(expected)
    assert max(abs(got[d]["probabilities"][n] - p) for d, row in expected.items()
               for n, p in row["probabilities"].items()) < BF16_TOLERANCE


def test_trainer_predict_refuses_a_budget_below_a_view(models, prep, tmp_path, capsys):  # noqa: F811
    from trainer.predict import main

    for source in (["--input_files", raw_test_file(prep)], ["--data_dir", prep["data_dir"]]):
        code = main(["--model_dir", models["rs"], *source, "--output", str(tmp_path / "p.jsonl"), "--use_cpu",
                     "--max_tokens_per_batch", "32"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.count("\n") == 0
        assert "--max_tokens_per_batch must be an integer of at least the model's max_seq_length (64)" in err


# --------------------------------------------------------------------------- Beam
def test_beam_batches_by_tokens_with_the_same_predictions(models, prep, tmp_path):  # noqa: F811
    from beam_pipelines import predict as beam_predict
    from beam_pipelines.inference import ViewModelHandler, view_tokens

    handler = ViewModelHandler(models["rs"], 8, max_tokens=BUDGET)
    assert handler.batch_elements_kwargs() == {"min_batch_size": BUDGET, "max_batch_size": BUDGET,
                                               "element_size_fn": view_tokens}
    assert ViewModelHandler(models["rs"], 8).batch_elements_kwargs() == {"min_batch_size": 8, "max_batch_size": 8}
    expected = predict_shards(models["rs"], prep, tmp_path / "shards.jsonl", "4")
    out_dir = tmp_path / "beam"
    summary = beam_predict.run(["--model_dir", models["rs"], "--input_files", raw_test_file(prep), "--output_dir",
                                str(out_dir), "--eval_views", "4", "--max_tokens_per_batch", str(BUDGET), "--quiet"])
    got: dict[str, dict[str, Any]] = {}
    for file_name in sorted(os.listdir(out_dir)):
        if file_name.startswith("predictions-"):
            got.update(read_jsonl(out_dir / file_name))
    assert_same(got, expected, "beam budget")
    assert summary["documents"] == len(expected)
    with pytest.raises(ValueError, match="--max_tokens_per_batch must be an integer of at least"):
        beam_predict.run(["--model_dir", models["rs"], "--input_files", raw_test_file(prep), "--output_dir",
                          str(tmp_path / "refused"), "--max_tokens_per_batch", "10"])


def test_beam_scores_a_batch_over_the_budget_in_parts(models):
    """RunInference sums a batch's tokens; a batch that mixes long and short views is cut to the padded budget."""
    from beam_pipelines.inference import ViewModelHandler
    from modeling.features import Example

    handler = ViewModelHandler(models["rs"], 8, max_tokens=BUDGET)
    model = handler.load_model()
    calls: list[tuple[int, ...]] = []
    model.register_forward_pre_hook(lambda _, args, kwargs: calls.append(tuple(kwargs["input_ids"].shape)),
                                    with_kwargs=True)
    batch = [Example("a", -1, [101] + [2000] * 62 + [102], [0] * 64)] + [Example(f"s{i}", -1, [101, 2001, 102], [0] * 3)
                                                                         for i in range(20)]
    results = list(handler.run_inference(batch, model))
    assert len(results) == 21 and all(rows * length <= BUDGET for rows, length in calls) and len(calls) == 2
    alone = handler.run_inference(batch[:1], model)[0].inference
    np.testing.assert_allclose(results[0].inference, alone, atol=1e-5)
