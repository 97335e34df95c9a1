"""Label sets on the model side: the loss, the metrics, training, the saved model and prediction.

The loss must be ``BCEWithLogitsLoss`` and the metrics scikit-learn's; a tiny model trained on a
multi-label topic corpus (``trainer_helpers.write_label_set_shards``: documents mixing the words
of 0, 1 or 2 topics) must learn (its loss falls); the saved folder must load with
``AutoModelForSequenceClassification`` as a multi-label model whose ``transformers.pipeline``
sigmoid scores equal ours; ``trainer.predict`` and the Python API must agree. The input side
(readers, pipeline, shards, manifest) is tested in tests/test_multi_label_input.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from modeling.label_space import LabelSpace, label_tensor, labelled_rows, multi_hot
from modeling.metrics import best_threshold, label_set_counts, multi_label_metrics
from schemas.shard import MULTI_LABEL
from trainer_helpers import LABELS, task_argv, tiny_model, train_in_process, write_label_set_shards  # noqa: F401

NAMES = ("a", "b", "c", "d")


def test_the_loss_is_bce_with_logits_on_a_hand_computed_batch():
    space = LabelSpace(NAMES[:3], MULTI_LABEL)
    logits = torch.tensor([[2.0, -1.0, 0.0], [0.5, 0.5, -3.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    # -[t log s(x) + (1 - t) log(1 - s(x))], averaged over the 6 entries
    by_hand = 0.0
    for x, t in zip(logits.flatten().tolist(), targets.flatten().tolist()):
        s = 1 / (1 + np.exp(-x))
        by_hand -= t * np.log(s) + (1 - t) * np.log(1 - s)
    assert float(space.loss(logits, targets)) == pytest.approx(by_hand / 6, rel=1e-6)
    assert float(space.loss(logits, targets)) == pytest.approx(float(torch.nn.BCEWithLogitsLoss()(logits, targets)))
    single = LabelSpace(NAMES[:3])
    assert float(single.loss(logits, torch.tensor([0, 2]))) == pytest.approx(
        float(torch.nn.CrossEntropyLoss()(logits, torch.tensor([0, 2]))))


def test_probabilities_decisions_and_records():
    space = LabelSpace(NAMES[:3], MULTI_LABEL, threshold=0.6)
    logits = np.array([[2.0, 0.0, -2.0], [-5.0, -5.0, -5.0]], dtype=np.float32)
    probabilities = space.probabilities(logits)
    np.testing.assert_allclose(probabilities, 1 / (1 + np.exp(-logits)), rtol=1e-6)
    assert space.decide(probabilities).tolist() == [[True, False, False], [False, False, False]]
    assert space.record("d1", probabilities[0]) == {
        "id": "d1", "labels": ["a"], "probabilities": {"a": 0.880797, "b": 0.5, "c": 0.119203}}
    assert space.record("d2", probabilities[1])["labels"] == []  # a document may get no label
    assert space.with_threshold(0.5).decide(probabilities)[0].tolist() == [True, True, False]  # 0.5 >= 0.5
    assert space.tsv_label(np.array([True, False, True])) == "a|c"
    single = LabelSpace(NAMES[:3])
    assert single.record("d1", single.probabilities(logits)[0])["label"] == "a"
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="--threshold must be between 0 and 1"):
            LabelSpace(NAMES, MULTI_LABEL, threshold=bad)


def test_targets_labelled_rows_and_batch_tensors():
    assert multi_hot([0, 2], 4).tolist() == [1, 0, 1, 0]
    assert multi_hot([], 3).tolist() == [0, 0, 0]  # a document with no label is labelled
    assert multi_hot(None, 3).tolist() == [-1, -1, -1]  # unlabelled
    rows = np.stack([multi_hot([1], 3), multi_hot(None, 3), multi_hot([], 3)])
    assert labelled_rows(rows).tolist() == [True, False, True]
    assert labelled_rows(np.array([2, -1, 0])).tolist() == [True, False, True]
    tensor = label_tensor([multi_hot([1], 3), multi_hot([0, 2], 3)])
    assert tensor.dtype == torch.float32 and tensor.tolist() == [[0, 1, 0], [1, 0, 1]]
    assert label_tensor([2, 0]).dtype == torch.long


FIXED_TRUE = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 1]], dtype=bool)
FIXED_PRED = np.array([[1, 0, 0, 0], [0, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=bool)


def sklearn_scores(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "micro_f1": f1_score(truth, predicted, average="micro", zero_division=0),
        "macro_f1": f1_score(truth, predicted, average="macro", zero_division=0),
        "exact_match": accuracy_score(truth, predicted),  # subset accuracy on indicator arrays
    }


def test_metrics_equal_scikit_learn_on_fixed_arrays():
    metrics = multi_label_metrics(label_set_counts(FIXED_TRUE, FIXED_PRED), NAMES)
    expected = sklearn_scores(FIXED_TRUE, FIXED_PRED)
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, abs=1e-12), name
    # by hand: tp 5, fp 1, fn 3 -> micro-F1 10/14; per label F1 (4/5, 1, 1/2, 0) -> macro 0.575
    assert metrics["micro_f1"] == pytest.approx(10 / 14)
    assert metrics["macro_f1"] == pytest.approx((0.8 + 1 + 0.5 + 0) / 4)
    assert metrics["exact_match"] == pytest.approx(2 / 5)  # rows 2 and 3
    assert metrics["per_class"]["a"] == {"precision": 1.0, "recall": pytest.approx(2 / 3), "f1": pytest.approx(0.8),
                                         "support": 3}


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.integers(2, 5), st.randoms(use_true_random=False))
def test_metrics_equal_scikit_learn_on_random_arrays(documents, labels, rng):
    # (2 labels or more: scikit-learn takes a single 0/1 column for a binary target, not a label set)
    truth = np.array([[rng.random() < 0.4 for _ in range(labels)] for _ in range(documents)], dtype=bool)
    predicted = np.array([[rng.random() < 0.4 for _ in range(labels)] for _ in range(documents)], dtype=bool)
    # counts of two batches added up give the metrics of the whole
    half = documents // 2
    first, second = label_set_counts(truth[:half], predicted[:half]), label_set_counts(truth[half:], predicted[half:])
    counts = {key: first[key] + second[key] for key in first}
    metrics = multi_label_metrics(counts, [f"l{i}" for i in range(labels)])
    for name, value in sklearn_scores(truth, predicted).items():
        assert metrics[name] == pytest.approx(value, abs=1e-12), name


def test_no_label_true_and_none_predicted_scores_as_scikit_learn():
    """F1 is 0/0 when no document has a label and none is predicted: 0, scikit-learn's default
    (``zero_division``), while every (empty) set was right: exact match 1."""
    nothing = np.zeros((3, 2), dtype=bool)
    metrics = multi_label_metrics(label_set_counts(nothing, nothing), ["a", "b"])
    assert (metrics["micro_f1"], metrics["macro_f1"], metrics["exact_match"]) == (0.0, 0.0, 1.0)
    assert {k: v for k, v in sklearn_scores(nothing, nothing).items()} == {"micro_f1": 0.0, "macro_f1": 0.0,
                                                                          "exact_match": 1.0}


def test_best_threshold_maximises_micro_f1():
    truth = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=bool)
    probabilities = np.array([[0.35, 0.1], [0.2, 0.45], [0.4, 0.32], [0.05, 0.25]])
    threshold, score = best_threshold(truth, probabilities)
    # every true label is above 0.3 and every false one below it: micro-F1 1 from 0.26 to 0.32
    assert score == pytest.approx(1.0)
    assert 0.25 < threshold <= 0.32 and threshold == pytest.approx(0.32)  # the tie nearest 0.5
    from sklearn.metrics import f1_score

    grid_best = max(f1_score(truth, probabilities >= t, average="micro", zero_division=0) for t in np.arange(1, 100) / 100)
    assert score == pytest.approx(grid_best)


# ---------------------------------------------------------------------------------------------- a run


@pytest.fixture(scope="module")
def label_sets(tmp_path_factory) -> dict[str, Any]:
    return write_label_set_shards(tmp_path_factory.mktemp("label_sets") / "prep")


@pytest.fixture(scope="module")
def trained(label_sets, tiny_model, tmp_path_factory) -> dict[str, Any]:  # noqa: F811
    out = tmp_path_factory.mktemp("ml_model") / "model"
    trainer = train_in_process(task_argv(label_sets["data_dir"], tiny_model, out, "--do_train", "--do_eval",
                                         "--num_train_epochs", "8", "--learning_rate", "5e-3",
                                         "--metric_for_best_model", "micro_f1", "--threshold", "0.4"))
    return {"dir": str(out), "history": trainer.evals.history}


def test_training_on_label_sets_learns(trained):
    history = trained["history"]
    assert len(history) == 8
    assert history[-1]["loss"] < history[0]["loss"] - 0.1, [h["loss"] for h in history]
    assert history[-1]["micro_f1"] > 0.6
    for entry in history:
        assert {"micro_f1", "macro_f1", "exact_match", "best_threshold", "micro_f1_at_best_threshold"} <= set(entry)
        assert entry["threshold"] == 0.4
        assert entry["micro_f1_at_best_threshold"] >= entry["micro_f1"] - 1e-12 or entry["threshold"] not in (
            np.arange(1, 100) / 100)
    results = json.loads((Path(trained["dir"]) / "eval_results.json").read_text())
    assert results["metric_for_best_model"] == "micro_f1"


def test_the_saved_model_is_a_multi_label_classifier(trained, label_sets):
    from transformers import AutoModelForSequenceClassification, pipeline

    from modeling.classifier import Classifier

    config = json.loads((Path(trained["dir"]) / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert config["id2label"] == {"0": "food", "1": "sport", "2": "tech"}
    record = config["spanwise"]
    assert record["problem_type"] == MULTI_LABEL and record["threshold"] == 0.4
    assert record["best_threshold"] == trained["history"][-1]["best_threshold"]
    model = AutoModelForSequenceClassification.from_pretrained(trained["dir"])
    assert model.config.problem_type == "multi_label_classification"

    texts = [text for _, _, text in label_sets["rows"]["test"][:12] if len(text.split()) < 60]
    scorer = pipeline("text-classification", model=trained["dir"], top_k=None, device="cpu")
    theirs = scorer(texts)
    ours = Classifier.from_pretrained(trained["dir"], device="cpu").predict(texts)
    for mine, scores in zip(ours, theirs):
        by_name = {entry["label"]: entry["score"] for entry in scores}
        assert set(by_name) == set(mine.probabilities)
        for name, p in mine.probabilities.items():
            assert p == pytest.approx(by_name[name], abs=1e-5)  # a sigmoid per label, not a softmax
        assert mine.labels == tuple(name for name in ("food", "sport", "tech") if mine.probabilities[name] >= 0.4)


def test_trainer_predict_and_the_api_agree_on_label_sets(trained, label_sets, tmp_path):
    from modeling.classifier import Classifier
    from trainer.predict import predict

    out = tmp_path / "pred.jsonl"
    summary = predict(["--model_dir", trained["dir"], "--data_dir", label_sets["data_dir"], "--split", "test",
                       "--output", str(out), "--use_cpu", "--quiet"])
    records = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    rows = label_sets["rows"]["test"]
    assert set(records) == {doc_id for doc_id, _, _ in rows}
    assert all("labels" in r and "label" not in r for r in records.values())
    # the summary's metrics are those of the written decisions against the true sets
    truth = np.array([[name in labels for name in ("food", "sport", "tech")] for _, labels, _ in rows])
    predicted = np.array([[name in records[doc_id]["labels"] for name in ("food", "sport", "tech")]
                          for doc_id, _, _ in rows])
    metrics = multi_label_metrics(label_set_counts(truth, predicted), ("food", "sport", "tech"))
    assert summary["labelled"] == len(rows) and summary["threshold"] == 0.4
    for name in ("micro_f1", "macro_f1", "exact_match"):
        assert summary[name] == pytest.approx(metrics[name])

    api = Classifier.from_pretrained(trained["dir"], device="cpu").predict(
        [text for _, _, text in rows], ids=[doc_id for doc_id, _, _ in rows])
    for p in api:
        assert list(p.labels) == records[p.id]["labels"]
        for name, value in p.probabilities.items():
            assert value == pytest.approx(records[p.id]["probabilities"][name], abs=2e-5)

    # another threshold at prediction time: more labels predicted, never fewer
    low = tmp_path / "low.tsv"
    predict(["--model_dir", trained["dir"], "--data_dir", label_sets["data_dir"], "--split", "test",
             "--output", str(low), "--use_cpu", "--quiet", "--threshold", "0.1"])
    lines = low.read_text().splitlines()
    assert lines[0].split("\t") == ["id", "labels", "p_food", "p_sport", "p_tech"]
    for line in lines[1:]:
        doc_id, labels, *_ = line.split("\t")
        assert set(records[doc_id]["labels"]) <= set(filter(None, labels.split("|")))


@pytest.mark.parametrize("flags", [
    ["--seq_len_func", "rs", "--seq_func_params", "8", "--train_views", "2"],
    ["--train_views", "chunks", "--max_chunks", "4", "--pooling", "attention"],
    ["--pack_views", "--max_tokens_per_batch", "256", "--group_by_length"],
], ids=["rs-2-views", "attention-head", "packed-token-budget"])
def test_views_and_heads_train_on_label_sets(label_sets, tiny_model, tmp_path, flags):  # noqa: F811
    trainer = train_in_process(task_argv(label_sets["data_dir"], tiny_model, tmp_path / "m", "--do_train", "--do_eval",
                                         "--max_steps", "6", "--learning_rate", "5e-3", *flags))
    final = trainer.evals.history[-1]
    assert np.isfinite(final["loss"]) and 0.0 <= final["micro_f1"] <= 1.0
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["problem_type"] == MULTI_LABEL


def test_unlabelled_and_broken_label_sets_in_shards(label_sets, tmp_path):
    """A null set is unlabelled (fine to predict, refused in train); an index out of range is refused."""
    import pyarrow.parquet as pq

    from trainer.data import _RowGroupReader
    from trainer.shards import DataLimits, ShardProblem, Unit

    source = Path(label_sets["data_dir"]) / "dev-00000-of-00001.parquet"
    table = pq.read_table(source)
    labels = table.column("labels").to_pylist()
    labels[0], labels[1] = None, []
    path = tmp_path / "dev.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index("labels"), "labels",
                                    __import__("pyarrow").array(labels, type=table.schema.field("labels").type)), path)
    unit = Unit(str(path), 0, table.num_rows)
    reader = _RowGroupReader(limits=DataLimits(3, True, multi_label=True))
    assert reader.row(unit, 0)[1].tolist() == [-1, -1, -1]
    assert reader.row(unit, 1)[1].tolist() == [0, 0, 0]
    with pytest.raises(ShardProblem, match="without a label set"):
        _RowGroupReader(limits=DataLimits(3, False, multi_label=True)).row(unit, 0)
    with pytest.raises(ShardProblem, match="out of range"):
        _RowGroupReader(limits=DataLimits(2, True, multi_label=True)).row(unit, 2)


def test_a_metric_of_the_other_problem_type_is_refused(label_sets, tiny_model, tmp_path):  # noqa: F811
    from trainer.args import parse_args
    from trainer.task import Trainer

    trainer = Trainer(parse_args(task_argv(label_sets["data_dir"], tiny_model, tmp_path / "m", "--do_train",
                                           "--metric_for_best_model", "accuracy")))
    with pytest.raises(ValueError, match="--metric_for_best_model accuracy: .* has label sets .* micro_f1"):
        trainer.setup()


# ------------------------------------------------------------------- raw documents, end to end


@pytest.fixture(scope="module")
def raw_label_sets(tiny_model, tmp_path_factory) -> dict[str, Any]:  # noqa: F811
    """The label-set corpus as GLUE-layout TSV (label cells ``food|tech``; the empty set is ``|``,
    as a test file must say it), run through ``preprocess --multi_label``, and a model trained on it."""
    from trainer_helpers import label_set_rows, run_preprocess

    root = tmp_path_factory.mktemp("raw_label_sets")
    (root / "tsv").mkdir()
    rows = {split: label_set_rows(split, count) for split, count in {"train": 90, "dev": 30, "test": 30}.items()}
    for split, split_rows in rows.items():
        lines = [f"{doc_id}\ta\t{'|'.join(labels) or '|'}\t{text}" for doc_id, labels, text in split_rows]
        (root / "tsv" / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    manifest = run_preprocess(str(root / "tsv"), str(root / "prep"), "--multi_label")
    assert manifest["problem_type"] == MULTI_LABEL and manifest["splits"]["test"]["records"] == 30
    model = root / "model"
    train_in_process(task_argv(str(root / "prep"), tiny_model, model, "--do_train", "--num_train_epochs", "4",
                               "--learning_rate", "5e-3", "--seq_len_func", "rs", "--seq_func_params", "8",
                               "--eval_views", "3", "--metric_for_best_model", "micro_f1"))
    return {"root": root, "rows": rows, "prep": str(root / "prep"), "model": str(model)}


def test_every_prediction_path_agrees_on_label_sets(raw_label_sets, tmp_path):
    """trainer.predict on the shards (the reference), on the raw TSV, the API and the Beam pipeline:
    the same label sets, probabilities and view counts, and the same micro-F1 in the summaries."""
    from beam_pipelines import predict as beam_predict
    from modeling.classifier import Classifier
    from trainer.predict import predict

    model, rows = raw_label_sets["model"], raw_label_sets["rows"]["test"]
    raw = str(raw_label_sets["root"] / "tsv" / "test.tsv")
    expected_out = tmp_path / "shards.jsonl"
    shard_summary = predict(["--model_dir", model, "--data_dir", raw_label_sets["prep"], "--split", "test",
                             "--output", str(expected_out), "--use_cpu", "--quiet"])
    expected = {r["id"]: r for r in map(json.loads, expected_out.read_text().splitlines())}

    def same(got: dict[str, dict[str, Any]], what: str) -> None:
        assert set(got) == set(expected), what
        for doc_id, record in expected.items():
            assert got[doc_id]["labels"] == record["labels"], (what, doc_id)
            for name, p in record["probabilities"].items():
                assert got[doc_id]["probabilities"][name] == pytest.approx(p, abs=2e-5), (what, doc_id, name)

    raw_out = tmp_path / "raw.jsonl"
    raw_summary = predict(["--model_dir", model, "--input_files", raw, "--output", str(raw_out), "--use_cpu", "--quiet"])
    same({r["id"]: r for r in map(json.loads, raw_out.read_text().splitlines())}, "trainer.predict --input_files")
    assert raw_summary["labelled"] == shard_summary["labelled"] == len(rows)  # "|" is a labelled empty set
    for name in ("micro_f1", "macro_f1", "exact_match"):
        assert raw_summary[name] == pytest.approx(shard_summary[name]), name

    # host-side workers and token-budget batches (issue 21) change nothing
    busy_out = tmp_path / "raw-workers.jsonl"
    predict(["--model_dir", model, "--input_files", raw, "--output", str(busy_out), "--use_cpu", "--quiet",
             "--dataloader_num_workers", "2", "--max_tokens_per_batch", "256"])
    same({r["id"]: r for r in map(json.loads, busy_out.read_text().splitlines())}, "2 workers, 256 tokens a batch")

    api = Classifier.from_pretrained(model, device="cpu").predict([text for _, _, text in rows],
                                                                  ids=[doc_id for doc_id, _, _ in rows])
    same({p.id: {"labels": list(p.labels), "probabilities": p.probabilities} for p in api}, "Classifier.predict")

    out_dir = tmp_path / "beam"
    beam_summary = beam_predict.run(["--model_dir", model, "--input_files", raw, "--output_dir", str(out_dir),
                                     "--batch_size", "5", "--quiet"])
    got: dict[str, dict[str, Any]] = {}
    for name in sorted(p.name for p in out_dir.iterdir() if p.name.startswith("predictions-")):
        got.update({r["id"]: r for r in map(json.loads, (out_dir / name).read_text().splitlines())})
    same(got, "beam_pipelines.predict")
    assert beam_summary["views"] == raw_summary["views"] == sum(p.views for p in api)
    for name in ("micro_f1", "macro_f1", "exact_match", "labelled"):
        assert beam_summary[name] == pytest.approx(raw_summary[name]), name


def test_prediction_flags_for_label_sets(raw_label_sets, tmp_path):
    from trainer.predict import main

    raw = str(raw_label_sets["root"] / "tsv" / "test.tsv")
    assert main(["--model_dir", raw_label_sets["model"], "--input_files", raw, "--output", str(tmp_path / "p.jsonl"),
                 "--threshold", "1.5", "--use_cpu"]) == 2
    # another separator: the test file's cells then read as one label each, and "food|tech" is unknown
    summary_path = tmp_path / "s.json"
    assert main(["--model_dir", raw_label_sets["model"], "--input_files", raw, "--output", str(tmp_path / "p.jsonl"),
                 "--label_separator", ";", "--use_cpu", "--quiet", "--summary_output", str(summary_path)]) == 0
    summary = json.loads(summary_path.read_text())
    two = sum(len(labels) == 2 for _, labels, _ in raw_label_sets["rows"]["test"])
    assert summary["unknown_labels"] == two + sum(len(labels) == 0 for _, labels, _ in raw_label_sets["rows"]["test"])
