"""Prediction on raw documents: the Beam pipeline, ``trainer.predict`` and the Python API agree.

Three small models (``head``, ``ht``, ``rs``) are trained on the topic corpus of
``trainer_helpers``; their predictions of its test split are made four ways, with 1, 4 and
``chunks`` views: ``trainer.predict`` on the preprocessed shards (the reference),
``trainer.predict --input_files`` on the raw TSV, ``Classifier.predict`` and
``beam_pipelines.predict`` (Beam's FnApiRunner, RunInference). They must give the same labels and
probabilities, and the same number of views per document as the reference's feature builder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trainer_helpers import LABELS, prep, task_argv, tiny_model, train_in_process  # noqa: F401  (fixtures)

MAX_SEQ = 64
MODELS = {"head": ["--seq_len_func", "head"], "ht": ["--seq_len_func", "ht", "--seq_func_params", "20", "42"],
          "rs": ["--seq_len_func", "rs", "--seq_func_params", "8"]}
VIEWS = ("1", "4", "chunks")


@pytest.fixture(scope="module")
def models(prep, tiny_model, tmp_path_factory) -> dict[str, str]:  # noqa: F811
    """A model per sequence function: 2 epochs at lr 1e-2 (enough to move off uniform probabilities)."""
    out = {}
    for name, flags in MODELS.items():
        directory = tmp_path_factory.mktemp(f"model_{name}") / "model"
        train_in_process(task_argv(prep["data_dir"], tiny_model, directory, *flags, "--num_train_epochs", "2",
                                   "--learning_rate", "1e-2", "--eval_views", "4"))
        out[name] = str(directory)
    return out


def raw_test_file(prep: dict[str, Any]) -> str:  # noqa: F811
    return os.path.join(os.path.dirname(prep["data_dir"]), "tsv", "test.tsv")


def read_jsonl(path: str | Path) -> dict[str, dict[str, Any]]:
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]
    return {row["id"]: row for row in rows}


def predict_shards(model: str, prep: dict[str, Any], out: Path, views: str) -> dict[str, dict[str, Any]]:  # noqa: F811
    from trainer.predict import predict

    predict(["--model_dir", model, "--data_dir", prep["data_dir"], "--split", "test", "--output", str(out),
             "--eval_views", views, "--use_cpu"])
    return read_jsonl(out)


def assert_same(got: dict[str, dict[str, Any]], expected: dict[str, dict[str, Any]], what: str) -> None:
    assert set(got) == set(expected), what
    for doc_id, row in expected.items():
        assert got[doc_id]["label"] == row["label"], (what, doc_id)
        names = sorted(row["probabilities"])
        np.testing.assert_allclose([got[doc_id]["probabilities"][n] for n in names],
                                   [row["probabilities"][n] for n in names], atol=2e-5, err_msg=f"{what} {doc_id}")


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_every_path_gives_the_same_predictions(models, prep, tmp_path, model_name):  # noqa: F811
    from beam_pipelines import predict as beam_predict
    from modeling.classifier import Classifier
    from trainer.predict import predict

    model = models[model_name]
    rows = prep["rows"]["test"]
    classifier = Classifier.from_pretrained(model, device="cpu")
    assert classifier.label_names == sorted(LABELS)
    for views in VIEWS:
        expected = predict_shards(model, prep, tmp_path / f"shards-{views}.jsonl", views)
        assert len(expected) == len(rows)

        summary = predict(["--model_dir", model, "--input_files", raw_test_file(prep), "--output",
                           str(tmp_path / f"raw-{views}.jsonl"), "--eval_views", views, "--use_cpu"])
        assert summary["read"] == summary["documents"] == len(rows) and summary["rejected"] == 0
        assert summary["labelled"] == len(rows) and 0 <= summary["accuracy"] <= 1
        assert_same(read_jsonl(tmp_path / f"raw-{views}.jsonl"), expected, f"{model_name} raw views={views}")

        api = classifier.predict([row[3] for row in rows], ids=[row[0] for row in rows], views=views, batch_size=7)
        assert_same({p.id: {"label": p.label, "probabilities": p.probabilities} for p in api}, expected,
                     f"{model_name} api views={views}")

        if views != "1" or model_name == "rs":
            out_dir = tmp_path / f"beam-{views}"
            beam_summary = beam_predict.run(["--model_dir", model, "--input_files", raw_test_file(prep),
                                             "--output_dir", str(out_dir), "--eval_views", views, "--batch_size", "5"])
            got: dict[str, dict[str, Any]] = {}
            for name in sorted(os.listdir(out_dir)):
                if name.startswith("predictions-"):
                    got.update(read_jsonl(out_dir / name))
            assert_same(got, expected, f"{model_name} beam views={views}")
            assert beam_summary["read"] == beam_summary["documents"] == len(rows)
            assert beam_summary["accuracy"] == pytest.approx(summary["accuracy"])
            assert beam_summary["views"] == summary["views"] == sum(p.views for p in api)
            assert beam_summary["confusion_matrix"] == summary["confusion_matrix"]


def test_views_are_those_of_the_feature_builder(models, prep):  # noqa: F811
    """A long document gets exactly trainer.predict's views: 1, 4 draws (rs) or its chunks."""
    from modeling.classifier import Classifier
    from tokenization.tokenizer import load_tokenizer

    classifier = Classifier.from_pretrained(models["rs"], device="cpu")
    tokenizer = load_tokenizer(models["rs"])
    budget = MAX_SEQ - 2
    for doc_id, _, _, text in prep["rows"]["test"]:
        length = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids_a = next(classifier.documents.token_ids([text]))[1]
        assert len(ids_a) == length
        expected_chunks = -(-length // budget)
        for views, count in (("1", 1), ("4", 4 if length > budget else 1), ("chunks", max(1, expected_chunks))):
            examples = classifier.documents.views(doc_id, ids_a, [], views if views == "chunks" else int(views))
            assert len(examples) == count, (doc_id, views, length)
            assert all(len(e.input_ids) <= MAX_SEQ for e in examples)
        [prediction] = classifier.predict([text], ids=[doc_id], views="chunks")
        assert prediction.views == max(1, expected_chunks)


def test_bad_rows_are_rejected_with_a_reason_and_counted(models, tmp_path):
    from beam_pipelines import predict as beam_predict
    from trainer.predict import predict

    path = tmp_path / "docs.jsonl"
    with open(path, "wb") as handle:
        handle.write(json.dumps({"id": "a", "text": "ball team game score player", "label": "sport"}).encode() + b"\n")
        handle.write(json.dumps({"id": "b", "text": "", "label": "tech"}).encode() + b"\n")  # empty text
        handle.write(json.dumps({"id": "c", "text": "\u200b\u200b"}).encode() + b"\n")  # no tokens
        handle.write(b'{"id": "d", "text": "caf\xe9 bread"}\n')  # not UTF-8
        handle.write(json.dumps({"id": "e", "body": "no text key"}).encode() + b"\n")  # missing field
        handle.write(json.dumps({"id": "f", "text": "bread cheese apple soup pizza", "label": "unknown"}).encode() + b"\n")
    summary = predict(["--model_dir", models["head"], "--input_files", str(path), "--output", str(tmp_path / "p.jsonl"),
                       "--use_cpu"])
    assert summary["read"] == 6 and summary["documents"] == 2 and summary["rejected"] == 4
    assert summary["labelled"] == 1 and summary["unknown_labels"] == 1
    rejected = [json.loads(line) for line in (tmp_path / "p.rejected.jsonl").read_text().splitlines()]
    by_line = {r["line"]: r["reason"] for r in rejected}
    assert by_line == {2: "empty_text_a", 3: "no_tokens", 4: "invalid_utf8", 5: "missing_field"}
    assert all(r["file"].endswith("docs.jsonl") and r["detail"] for r in rejected)

    out_dir = tmp_path / "beam"
    beam_summary = beam_predict.run(["--model_dir", models["head"], "--input_files", str(path), "--output_dir", str(out_dir)])
    assert beam_summary["read"] == 6 and beam_summary["documents"] == 2 and beam_summary["rejected"] == 4
    assert beam_summary["rejected_by_reason"] == summary["rejected_by_reason"]
    beam_rejected = [json.loads(line) for line in (out_dir / "rejected" / "input-00000-of-00001.jsonl").read_text().splitlines()]
    assert {r["line"]: r["reason"] for r in beam_rejected} == by_line
    assert json.loads((out_dir / "summary.json").read_text())["documents"] == 2


def test_a_missing_text_column_stops_before_any_work(models, tmp_path):
    from beam_pipelines import predict as beam_predict
    from trainer.predict import main

    path = tmp_path / "docs.csv"
    path.write_text("id,body\n1,some text\n", encoding="utf-8")
    assert main(["--model_dir", models["head"], "--input_files", str(path), "--output", str(tmp_path / "p.jsonl")]) == 2
    with pytest.raises(ValueError, match=r"docs.csv: no text column; its columns are 'id', 'body'"):
        beam_predict.run(["--model_dir", models["head"], "--input_files", str(path), "--output_dir", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_derived_ids_match_preprocessing_and_parquet_output(models, tmp_path):
    """A corpus without IDs gets <file>:<line> IDs, as preprocessing gives them; Parquet output."""
    import pyarrow.parquet as pq

    from beam_pipelines import predict as beam_predict
    from trainer.predict import predict

    path = tmp_path / "docs.csv"
    path.write_text('text,label\n"ball team, game",sport\n"bread ""cheese"" soup",food\n', encoding="utf-8")
    predict(["--model_dir", models["ht"], "--input_files", str(path), "--output", str(tmp_path / "p.tsv"), "--use_cpu"])
    lines = (tmp_path / "p.tsv").read_text().splitlines()
    assert lines[0].split("\t")[:2] == ["id", "label"] and [line.split("\t")[0] for line in lines[1:]] == ["docs.csv:2", "docs.csv:3"]
    beam_predict.run(["--model_dir", models["ht"], "--input_files", str(path), "--output_dir", str(tmp_path / "o"),
                      "--output_format", "parquet"])
    table = pq.read_table(tmp_path / "o" / "predictions-00000-of-00001.parquet")
    assert sorted(table.column("id").to_pylist()) == ["docs.csv:2", "docs.csv:3"]
    assert table.schema.field("probabilities").type.num_fields == len(LABELS)
    with pytest.raises(ValueError, match="already holds predictions"):
        beam_predict.run(["--model_dir", models["ht"], "--input_files", str(path), "--output_dir", str(tmp_path / "o")])


def test_the_model_folder_records_its_training_view(models):
    """config.json carries the view (so a copy without run_config.json predicts the same);
    transformers' own loader ignores it and keeps the label names."""
    from transformers import AutoConfig

    from modeling.classifier import TrainedView

    config = json.loads(Path(models["ht"], "config.json").read_text())
    assert config["spanwise"]["seq_len_func"] == "ht" and config["spanwise"]["seq_func_params"] == [20, 42]
    assert config["spanwise"]["eval_views"] == "4" and config["spanwise"]["label_names"] == sorted(LABELS)
    assert TrainedView.read(models["ht"]).max_seq_length == MAX_SEQ
    assert AutoConfig.from_pretrained(models["ht"]).id2label == dict(enumerate(sorted(LABELS)))


def test_api_errors(models):
    from modeling.classifier import Classifier

    classifier = Classifier.from_pretrained(models["head"], device="cpu")
    with pytest.raises(ValueError, match="list of texts"):
        classifier.predict("one text")
    with pytest.raises(ValueError, match="gives no tokens"):
        classifier.predict(["ball", ""])
    with pytest.raises(ValueError, match="2 texts but 1 ids"):
        classifier.predict(["ball", "bread"], ids=["x"])
    with pytest.raises(ValueError, match="views must be"):
        classifier.predict(["ball"], views="all")
    first = classifier.predict(["ball team", "bread soup"], views="4")
    again = classifier.predict(["bread soup"], views="4")
    # a text's prediction does not depend on what it is predicted with (up to float noise of padding)
    assert (first[1].id, first[1].label, first[1].views) == (again[0].id, again[0].label, again[0].views)
    assert first[1].probabilities == pytest.approx(again[0].probabilities, abs=1e-6)


def test_the_readme_snippets_run(models, capsys):
    """The README's Python API and transformers.pipeline snippets, run on a test model."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    api = next(b for b in blocks if "from modeling.classifier import Classifier" in b)
    hf = next(b for b in blocks if "from transformers import pipeline" in b)
    for block in (api, hf):
        assert "out/demo/model" in block
        code = block.replace("out/demo/model", models["ht"])
        exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - our own README
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(line.split()[0] in LABELS and line.split()[2] == "1" for line in lines)


def test_the_api_scores_in_bounded_chunks(models, prep, monkeypatch):  # noqa: F811
    """Chunks of 4 texts give the predictions of one chunk for all (views of every size)."""
    from modeling import classifier as classifier_module

    rows = prep["rows"]["test"]
    classifier = classifier_module.Classifier.from_pretrained(models["rs"], device="cpu")
    texts, ids = [row[3] for row in rows], [row[0] for row in rows]
    whole, whole_counts = classifier.predict_logits(texts, ids=ids, views="4")
    monkeypatch.setattr(classifier_module, "DOCS_PER_CHUNK", 4)
    chunked, chunked_counts = classifier.predict_logits(texts, ids=ids, views="4")
    np.testing.assert_allclose(chunked, whole, atol=1e-5)
    assert chunked_counts.tolist() == whole_counts.tolist() and max(whole_counts) == 4
    with pytest.raises(ValueError, match="2 texts but 1 second texts"):
        classifier.predict(["ball", "bread"], ["x"])


def test_a_model_trained_on_pooled_chunks_predicts_with_its_pooling(prep, tiny_model, tmp_path):  # noqa: F811
    """--train_views chunks --max_chunks 2 --pooling max: every way pools the model's windows by max."""
    from beam_pipelines import predict as beam_predict
    from modeling.classifier import Classifier, TrainedView
    from trainer.predict import predict

    model = str(tmp_path / "model")
    train_in_process(task_argv(prep["data_dir"], tiny_model, model, "--seq_len_func", "head", "--train_views", "chunks",
                               "--max_chunks", "2", "--pooling", "max", "--num_train_epochs", "1", "--learning_rate", "1e-2"))
    view = TrainedView.read(model)
    assert (view.pooling, view.max_chunks) == ("max", 2)
    rows = prep["rows"]["test"]
    expected = predict_shards(model, prep, tmp_path / "shards.jsonl", "chunks")
    predict(["--model_dir", model, "--input_files", raw_test_file(prep), "--output", str(tmp_path / "raw.jsonl"),
             "--eval_views", "chunks", "--use_cpu"])
    assert_same(read_jsonl(tmp_path / "raw.jsonl"), expected, "raw")
    api = Classifier.from_pretrained(model, device="cpu").predict([r[3] for r in rows], ids=[r[0] for r in rows],
                                                                  views="chunks")
    assert_same({p.id: {"label": p.label, "probabilities": p.probabilities} for p in api}, expected, "api")
    assert max(p.views for p in api) == 2  # --max_chunks holds in prediction too
    summary = beam_predict.run(["--model_dir", model, "--input_files", raw_test_file(prep), "--output_dir",
                                str(tmp_path / "beam"), "--eval_views", "chunks"])
    assert_same(read_jsonl(tmp_path / "beam" / "predictions-00000-of-00001.jsonl"), expected, "beam")
    assert summary["views"] == sum(p.views for p in api)
