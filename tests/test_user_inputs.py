"""What a new user met with real Hugging Face artefacts, damaged files and the prediction API
(issue 22), end to end: preprocessing, training, ``trainer.predict``, the Beam prediction
pipeline and ``Classifier``, each as a user runs it.

One small model is trained here, the way such a user would: from a corpus that
``datasets.Dataset.to_parquet()`` wrote (integer labels, their names in the file's metadata),
with a config file that ``TrainingArguments.to_json_string()`` dumped, and ``--train_views chunks``.
The reader-level cases (each compression damaged two ways, UTF-16/32, repeated headers, JSON
null, ``--label_names`` mistakes) are in ``tests/test_readers.py``; the config-file rules in
``tests/test_trainer_cli.py``.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from trainer_helpers import (  # noqa: F401  (tiny_model is a fixture)
    LABELS,
    REPO_ROOT,
    hf_training_dump,
    minilm_dir,
    subprocess_env,
    tiny_model,
    topic_rows,
)

SIZES = {"train": 60, "dev": 15, "test": 12}
# the ClassLabel order of the corpus (not sorted): integer i is CLASS_NAMES[i]
CLASS_NAMES = ("tech", "sport", "food")


def write_hf_parquet(path: Path, rows: list[tuple[str, str, str, str]]) -> None:
    """Rows ``(id, alpha, label, text)`` as ``datasets`` writes them: a ClassLabel of CLASS_NAMES."""
    import datasets

    features = datasets.Features({"id": datasets.Value("string"), "text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=list(CLASS_NAMES))})
    datasets.Dataset.from_dict({"id": [r[0] for r in rows], "text": [r[3] for r in rows],
                                "label": [CLASS_NAMES.index(r[2]) for r in rows]}, features=features).to_parquet(str(path))


def preprocess_argv(out: Path, *extra: str) -> list[str]:
    return ["--output_dir", str(out), "--tokenizer", minilm_dir(), *extra]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Any]:
    """The topic corpus as Hugging Face Parquet files, preprocessed."""
    from beam_pipelines import preprocess

    root = tmp_path_factory.mktemp("hf_corpus")
    rows = {split: topic_rows(split, count) for split, count in SIZES.items()}
    for split in rows:
        write_hf_parquet(root / f"{split}.parquet", rows[split])
    manifest = preprocess.run(preprocess_argv(root / "prep", "--data_dir", str(root)))
    return {"root": root, "rows": rows, "manifest": manifest, "data_dir": str(root / "prep")}


@pytest.fixture(scope="module")
def model(corpus, tiny_model, tmp_path_factory) -> str:  # noqa: F811
    """Trained from a config file dumped by Hugging Face, plus the data keys and chunk views."""
    from trainer.task import main

    root = tmp_path_factory.mktemp("hf_model")
    config = hf_training_dump(learning_rate=1e-2, num_train_epochs=1, per_device_train_batch_size=8, logging_steps=1,
                              save_strategy="epoch", use_cpu=True, disable_tqdm=True)
    assert config["report_to"] == [] and config["save_total_limit"] is None and len(config) > 100
    config.update(data_dir=corpus["data_dir"], model_name_or_path=tiny_model, task_name="hf", max_seq_length=64,
                  output_dir=str(root / "model"), train_views="chunks", max_chunks=2)
    (root / "config.json").write_text(json.dumps(config), encoding="utf-8")
    assert main([str(root / "config.json")]) == 0
    return str(root / "model")


# --------------------------------------------------------------------------- 1. label names


def test_class_label_names_reach_the_manifest_the_model_and_pipeline(corpus, model):
    from transformers import AutoConfig

    from schemas.manifest import format_stats

    assert sorted(corpus["manifest"]["label_map"]) == sorted(CLASS_NAMES)
    assert format_stats(corpus["manifest"]).splitlines()[0] == "labels (3): food, sport, tech"
    assert set(AutoConfig.from_pretrained(model).id2label.values()) == set(CLASS_NAMES)


def test_integer_labels_stay_integers_said_unnamed_or_are_named_by_flag(corpus, tmp_path):
    from beam_pipelines import preprocess
    from schemas.manifest import format_stats

    rows = {split: corpus["rows"][split][:20] for split in ("train", "dev")}
    for split, split_rows in rows.items():  # Dataset.to_json(): integers, no names
        with open(tmp_path / f"{split}.jsonl", "w", encoding="utf-8") as handle:
            for row_id, _, label, text in split_rows:
                handle.write(json.dumps({"id": row_id, "text": text, "label": CLASS_NAMES.index(label)}) + "\n")
    plain = preprocess.run(preprocess_argv(tmp_path / "plain", "--data_dir", str(tmp_path)))
    assert format_stats(plain).splitlines()[0] == (
        "labels (3): 0, 1, 2 (integers without names: give --label_names to name them)")
    named = preprocess.run(preprocess_argv(tmp_path / "named", "--data_dir", str(tmp_path),
                                           "--label_names", ",".join(CLASS_NAMES)))
    assert list(named["label_map"]) == ["food", "sport", "tech"]
    assert named["splits"]["train"]["records"] == 20 and named["options"]["label_names"] == list(CLASS_NAMES)


def test_a_class_label_test_set_is_scored_by_every_prediction_way(corpus, model, tmp_path):
    from beam_pipelines import predict as beam_predict
    from trainer.predict import predict

    test_file = str(corpus["root"] / "test.parquet")
    count = SIZES["test"]
    summary = predict(["--model_dir", model, "--input_files", test_file, "--output", str(tmp_path / "p.jsonl"), "--use_cpu"])
    assert (summary["labelled"], summary["unknown_labels"]) == (count, 0) and "accuracy" in summary
    beam = beam_predict.run(["--model_dir", model, "--input_files", test_file, "--output_dir", str(tmp_path / "beam")])
    assert (beam["labelled"], beam["unknown_labels"]) == (count, 0)
    assert beam["confusion_matrix"] == summary["confusion_matrix"]
    # the same test set written by Dataset.to_json(): integers, named by --label_names
    jsonl = tmp_path / "test.jsonl"
    jsonl.write_text("".join(json.dumps({"id": r[0], "text": r[3], "label": CLASS_NAMES.index(r[2])}) + "\n"
                             for r in corpus["rows"]["test"]), encoding="utf-8")
    named = predict(["--model_dir", model, "--input_files", str(jsonl), "--output", str(tmp_path / "n.jsonl"), "--use_cpu",
                     "--label_names", ",".join(CLASS_NAMES)])
    assert named["confusion_matrix"] == summary["confusion_matrix"]


def test_a_repeated_header_adds_no_label(tmp_path):
    from beam_pipelines import preprocess

    rows = topic_rows("train", 12)
    text = "id,text,label\n" + "".join(f"{r[0]},{r[3]},{r[2]}\n" for r in rows[:6])
    (tmp_path / "train.csv").write_text(text + "id,text,label\n" + "".join(f"{r[0]},{r[3]},{r[2]}\n" for r in rows[6:]),
                                        encoding="utf-8")  # two files joined with cat
    (tmp_path / "dev.csv").write_text(text, encoding="utf-8")
    manifest = preprocess.run(preprocess_argv(tmp_path / "out", "--data_dir", str(tmp_path)))
    assert sorted(manifest["label_map"]) == sorted(LABELS)
    assert manifest["splits"]["train"]["rejected_by_reason"] == {"repeated_header": 1}


# --------------------------------------------------------------------------- 2 and 5. a Hugging Face config; the views trained with


def test_the_hf_config_run_wrote_no_tensorboard_kept_every_checkpoint_and_records_its_views(model):
    from modeling.classifier import TrainedView

    folder = Path(model)
    assert not (folder / "runs").exists()  # report_to: [] is none
    run_config = json.loads((folder / "run_config.json").read_text())
    assert run_config["args"]["save_total_limit"] == 0  # save_total_limit: null keeps them all
    assert run_config["args"]["eval_views"] == "chunks"
    assert TrainedView.read(model).eval_views == "chunks"


def test_prediction_defaults_to_the_views_the_model_was_trained_with(corpus, model, tmp_path):
    from modeling.classifier import Classifier
    from trainer.predict import predict

    long_doc = next(r for r in corpus["rows"]["test"] if len(r[3].split()) > 200)
    [prediction] = Classifier.from_pretrained(model, device="cpu").predict([long_doc[3]])
    assert prediction.views == 2  # its chunks, at most --max_chunks 2
    summary = predict(["--model_dir", model, "--input_files", str(corpus["root"] / "test.parquet"), "--output",
                       str(tmp_path / "p.jsonl"), "--use_cpu"])
    assert summary["eval_views"] == "chunks"


def test_help_says_what_the_views_default_to_and_no_none(capsys):
    from beam_pipelines import predict as beam_predict
    from trainer.predict import build_parser

    help_text = build_parser().format_help()
    assert "(default: None)" not in help_text
    assert "the views the model was trained with" in " ".join(help_text.split())
    assert beam_predict.main(["--help"]) == 0
    assert "the views the model was trained with" in " ".join(capsys.readouterr().out.split())


# --------------------------------------------------------------------------- 3. damaged compressed files


def _cut_gzip(path: Path, rows: list[tuple[str, str, str, str]]) -> None:
    data = "".join(json.dumps({"id": r[0], "text": r[3], "label": r[2]}) + "\n" for r in rows).encode()
    packed = gzip.compress(data)
    path.write_bytes(packed[: len(packed) * 2 // 3])


def _cli(module: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=REPO_ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)


def test_a_cut_gzip_file_stops_preprocessing_in_one_line_leaving_nothing(tmp_path):
    rows = topic_rows("train", 400)
    _cut_gzip(tmp_path / "train.jsonl.gz", rows)
    (tmp_path / "dev.jsonl").write_text(json.dumps({"id": "d", "text": "ball team", "label": "sport"}) + "\n")
    out = tmp_path / "out"
    result = _cli("beam_pipelines.preprocess", "--train_files", str(tmp_path / "train.jsonl.gz"),
                  "--dev_files", str(tmp_path / "dev.jsonl"), *preprocess_argv(out))
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if " INFO " not in line]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert errors[0].startswith(f"error: {tmp_path / 'train.jsonl.gz'}: the gzip file is damaged: cut short")
    assert " rows; nothing was published" in errors[0]
    assert not out.exists()


def test_a_cut_gzip_file_stops_both_prediction_commands_leaving_nothing(model, tmp_path, capsys):
    from trainer.predict import main

    _cut_gzip(tmp_path / "docs.jsonl.gz", topic_rows("test", 400))
    docs = str(tmp_path / "docs.jsonl.gz")
    assert main(["--model_dir", model, "--input_files", docs, "--output", str(tmp_path / "p" / "p.jsonl"), "--use_cpu"]) == 2
    err = capsys.readouterr().err.splitlines()  # (after the progress bar of the model's loading)
    assert err[-1].startswith(f"error: {docs}: the gzip file is damaged: cut short") and "Traceback" not in err
    assert not os.listdir(tmp_path / "p")
    result = _cli("beam_pipelines.predict", "--model_dir", model, "--input_files", docs, "--output_dir",
                  str(tmp_path / "beam"))
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if " INFO " not in line and "Loading weights" not in line
              and line.strip()]
    assert len(errors) == 1 and errors[0].startswith(f"error: {docs}: the gzip file is damaged"), result.stderr
    assert not (tmp_path / "beam").exists()  # no beam-temp-predictions-* folder either


# --------------------------------------------------------------------------- 4. the Python API's texts


def test_the_api_names_a_text_that_is_not_a_string(model):
    from modeling.classifier import Classifier

    classifier = Classifier.from_pretrained(model, device="cpu")
    with pytest.raises(ValueError, match=r"^text 1 is None, not a string; give every text as a str$"):
        classifier.predict(["ball team", None])
    with pytest.raises(ValueError, match=r"^text 0 is of type int \(42\), not a string"):
        classifier.predict([42])
    with pytest.raises(ValueError, match=r"^second text 0 is of type float \(1\.5\)"):
        classifier.predict(["ball"], [1.5])


# --------------------------------------------------------------------------- 6. one ID twice in prediction input


def test_a_repeated_id_is_predicted_once_and_rejected_naming_the_first(model, tmp_path):
    from beam_pipelines import predict as beam_predict
    from modeling.classifier import Classifier
    from trainer.predict import predict

    path = tmp_path / "docs.jsonl"
    docs = [("a", "ball team game"), ("b", "bread cheese soup"), ("a", "computer data code"), ("c", "apple pizza")]
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in docs), encoding="utf-8")
    detail = f"ID 'a' already used at {path}:1; the first is kept"
    summary = predict(["--model_dir", model, "--input_files", str(path), "--output", str(tmp_path / "p.jsonl"), "--use_cpu"])
    assert (summary["read"], summary["documents"], summary["rejected_by_reason"]) == (4, 3, {"duplicate_id": 1})
    assert sorted(json.loads(line)["id"] for line in (tmp_path / "p.jsonl").read_text().splitlines()) == ["a", "b", "c"]
    [rejected] = [json.loads(line) for line in (tmp_path / "p.rejected.jsonl").read_text().splitlines()]
    assert (rejected["line"], rejected["reason"], rejected["detail"]) == (3, "duplicate_id", detail)
    assert json.loads(rejected["raw"]) == {"id": "a", "text": "computer data code"}
    kept = {json.loads(line)["id"]: json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()}

    beam = beam_predict.run(["--model_dir", model, "--input_files", str(path), "--output_dir", str(tmp_path / "beam")])
    assert (beam["read"], beam["documents"], beam["rejected_by_reason"]) == (4, 3, {"duplicate_id": 1})
    lines = (tmp_path / "beam" / "predictions-00000-of-00001.jsonl").read_text().splitlines()
    beam_kept = {json.loads(line)["id"]: json.loads(line) for line in lines}
    assert sorted(beam_kept) == ["a", "b", "c"] and beam_kept["a"]["label"] == kept["a"]["label"]
    assert beam_kept["a"]["probabilities"] == pytest.approx(kept["a"]["probabilities"], abs=2e-5)
    [beam_rejected] = [json.loads(line) for line in
                       (tmp_path / "beam" / "rejected" / "input-00000-of-00001.jsonl").read_text().splitlines()]
    assert beam_rejected == rejected

    with pytest.raises(ValueError, match="ids 0 and 2 are both 'a': each document needs its own ID"):
        Classifier.from_pretrained(model, device="cpu").predict([t for _, t in docs], ids=[i for i, _ in docs])


# --------------------------------------------------------------------------- 8. runners known to lose data


@pytest.mark.parametrize("runner", ["DaskRunner", "apache_beam.runners.dask.dask_runner.DaskRunner"])
def test_a_runner_known_to_lose_data_is_refused_before_any_work(model, tmp_path, capsys, runner):
    from beam_pipelines import predict as beam_predict
    from beam_pipelines import preprocess

    (tmp_path / "train.tsv").write_text("d1\ta\tpos\tsome text\n", encoding="utf-8")
    (tmp_path / "dev.tsv").write_text("d2\ta\tpos\tmore text\n", encoding="utf-8")
    assert preprocess.main(preprocess_argv(tmp_path / "out", "--data_dir", str(tmp_path), "--runner", runner)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --runner DaskRunner: Beam 2.77's DaskRunner loses data on these pipelines")
    assert err.count("\n") == 1 and ("Tested runners: FnApiRunner (the default), DirectRunner, DataflowRunner; "
                                     "expected to work but untested: FlinkRunner, SparkRunner, PrismRunner") in err
    assert beam_predict.main(["--model_dir", model, "--input_files", str(tmp_path / "dev.tsv"), "--output_dir",
                              str(tmp_path / "pred"), "--runner", runner]) == 2
    assert capsys.readouterr().err.startswith("error: --runner DaskRunner: ")
    assert not (tmp_path / "out").exists() and not (tmp_path / "pred").exists()


# --------------------------------------------------------------------------- 9. noise


def test_beam_prediction_logs_no_false_resource_warning(model, tmp_path, caplog):
    from beam_pipelines import predict as beam_predict

    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"id": "a", "text": "ball team game"}) + "\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        beam_predict.run(["--model_dir", model, "--input_files", str(path), "--output_dir", str(tmp_path / "beam")])
    assert not [r for r in caplog.records if "Resource module" in r.getMessage()]
