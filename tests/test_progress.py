"""Progress a person can see, and summaries a person can read, on every long local run.

On a non-terminal (the output captured, as in CI), with ``SPANWISE_PROGRESS_INTERVAL`` small so
that small inputs last long enough to report: preprocessing (Beam's FnApiRunner),
``trainer.predict --input_files``, ``beam_pipelines.predict`` and ``Classifier.predict(progress=True)``
print at least one intermediate progress line whose counts are at most the final ones (the
pipeline's: documents read times the share of views scored), and the
final counts equal the manifest's or the summary's. ``--json`` prints exactly one JSON object on
standard output and nothing else there; without it a prediction run ends with a few readable
lines; ``--quiet`` shows no progress.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from typing import Any

import pytest
from transformers.utils import logging as transformers_logging

from pipeline_helpers import make_docs, preprocess_argv, write_tsv
from spanwise_io.progress import INTERVAL_ENV, Progress, SharedCounts, format_line
from trainer_helpers import REPO_ROOT, prep, subprocess_env, task_argv, tiny_model, topic_rows, train_in_process  # noqa: F401

# transformers binds its log handler to the sys.stderr of its first use: let that be the session's
# stream, not the capsys stream of a test below, closed after it (later tests' warnings would fail).
transformers_logging.get_logger("transformers")

FAST = {INTERVAL_ENV: "0.02"}
_LINE = re.compile(r"^(?P<what>\w+: \w+) (?P<docs>[\d,]+)(?: of [\d,]+)? documents(?:, (?P<mb>[\d.,]+) MB)?(?P<rest>.*)$")


def progress_lines(text: str, what: str) -> tuple[list[tuple[int, float | None]], tuple[int, float | None]]:
    """The intermediate progress lines ``(documents, MB)`` of ``what`` and its final one."""
    intermediate: list[tuple[int, float | None]] = []
    final: list[tuple[int, float | None]] = []
    for line in text.splitlines():
        match = _LINE.match(line)
        if not match or match["what"] != what:
            continue
        counts = (int(match["docs"].replace(",", "")), float(match["mb"].replace(",", "")) if match["mb"] else None)
        (final if re.match(r" in \d+:\d\d:\d\d, ", match["rest"]) else intermediate).append(counts)
    assert len(final) == 1, text[-3000:]
    return intermediate, final[0]


def assert_progress_then_total(text: str, what: str, total_docs: int, total_mb: float | None = None) -> None:
    intermediate, (docs, mb) = progress_lines(text, what)
    assert docs == total_docs, text[-3000:]
    if total_mb is not None:
        assert mb == round(total_mb, 1)
    assert intermediate, f"no intermediate {what!r} line:\n{text[-3000:]}"
    assert all(0 < d <= docs for d, _ in intermediate)
    assert all(m is None or m <= mb for _, m in intermediate)
    assert [d for d, _ in intermediate] == sorted(d for d, _ in intermediate)  # counts only grow


# --------------------------------------------------------------------------- the reporter itself


def test_lines_show_counts_rate_and_eta_then_the_totals():
    assert format_line("predict: read", 250, 2_500_000, 5.0, total_bytes=10_000_000) == (
        "predict: read 250 documents, 2.5 MB of 10.0 MB (25%), 50 documents/s, ETA 0:00:15")
    assert format_line("predict: scored", 3, 0, 2.0, total_docs=12) == (
        "predict: scored 3 of 12 documents (25%), 1.50 documents/s, ETA 0:00:06")
    assert format_line("preprocess: read", 1000, 10_000_000, 20.0, total_bytes=10_000_000, final=True) == (
        "preprocess: read 1,000 documents, 10.0 MB in 0:00:20, 50 documents/s")


def test_a_quiet_reporter_prints_nothing_and_a_failed_run_no_totals(monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "0")
    quiet, failed = io.StringIO(), io.StringIO()
    with Progress("x: read", stream=quiet, enabled=False) as progress:
        progress.update(5)
    with pytest.raises(RuntimeError), Progress("x: read", stream=failed, terminal=False) as progress:
        progress.update(5)
        raise RuntimeError("the run failed")
    assert quiet.getvalue() == ""
    assert " in 0:00:00" not in failed.getvalue()


def test_the_interval_must_be_a_number(monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "soon")
    with pytest.raises(ValueError, match=r"\$SPANWISE_PROGRESS_INTERVAL must be a number of seconds, got 'soon'"):
        Progress("x: read")


def test_shared_counts_add_up_over_processes(tmp_path):
    """What worker processes count (here: this one and a child) reaches the launcher through the folder."""
    counts = SharedCounts(str(tmp_path))
    counts.add(3, 30, flush=True)
    code = (f"from spanwise_io.progress import SharedCounts; c = SharedCounts({str(tmp_path)!r}); "
            "c.add(4, 40); c.add(1, 10, flush=True)")
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=subprocess_env(), check=True, timeout=60)
    assert counts.total() == (8, 80)


# --------------------------------------------------------------------------- preprocessing


def test_preprocess_shows_progress_and_ends_with_the_manifests_counts(tmp_path):
    data = tmp_path / "data"
    write_tsv(str(data / "train.tsv"), make_docs("train", 2400, ["a", "b", "c"], 1, long_every=60))
    write_tsv(str(data / "dev.tsv"), make_docs("dev", 400, ["a", "b", "c"], 2, long_every=60) + ["dev-bad\tonly two"])
    size = sum(path.stat().st_size for path in data.iterdir())
    result = subprocess.run(
        [sys.executable, "-m", "beam_pipelines.preprocess",
         *preprocess_argv(str(data), str(tmp_path / "out"), "--read_range_mb", "0.05")],
        cwd=REPO_ROOT, env=subprocess_env(**FAST), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    read = sum(info["read"] for info in manifest["splits"].values())
    assert read == 2801
    assert_progress_then_total(result.stderr, "preprocess: read", read, size / 1e6)
    assert "preprocess: read" not in result.stdout  # the table on stdout stays clean


def test_preprocess_quiet_shows_no_progress(tmp_path, capsys):
    from beam_pipelines import preprocess

    data = tmp_path / "data"
    write_tsv(str(data / "train.tsv"), make_docs("train", 30, ["a", "b"], 1))
    write_tsv(str(data / "dev.tsv"), make_docs("dev", 10, ["a", "b"], 2))
    assert preprocess.main(preprocess_argv(str(data), str(tmp_path / "out"), "--quiet")) == 0
    captured = capsys.readouterr()
    assert "preprocess: read" not in captured.err + captured.out
    assert "wrote " in captured.out


# --------------------------------------------------------------------------- prediction


@pytest.fixture(scope="module")
def model(prep, tiny_model, tmp_path_factory) -> str:  # noqa: F811
    directory = tmp_path_factory.mktemp("progress_model") / "model"
    train_in_process(task_argv(prep["data_dir"], tiny_model, directory, "--seq_len_func", "head", "--max_steps", "2"))
    return str(directory)


@pytest.fixture(scope="module")
def documents(tmp_path_factory) -> dict[str, Any]:
    """1,200 labelled documents (more than one chunk of 512) and one row that is rejected."""
    path = tmp_path_factory.mktemp("progress_docs") / "docs.tsv"
    rows = topic_rows("test", 1200, seed=5)
    lines = ["\t".join(row) for row in rows] + ["bad-row\tonly two fields"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"path": str(path), "rows": rows, "read": len(rows) + 1, "bytes": path.stat().st_size}


def test_trainer_predict_json_is_one_object_on_stdout_and_progress_on_stderr(model, documents, tmp_path):
    out = tmp_path / "p.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "trainer.predict", "--model_dir", model, "--input_files", documents["path"],
         "--output", str(out), "--use_cpu", "--json"],
        cwd=REPO_ROOT, env=subprocess_env(**FAST), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)  # the whole of stdout is one JSON object...
    assert result.stdout.count("\n") == 1 and result.stdout.endswith("}\n")  # ...on one line, and nothing else
    assert summary["read"] == documents["read"] and summary["rejected"] == 1
    assert summary["summary_output"] == str(tmp_path / "p.summary.json")
    assert json.loads((tmp_path / "p.summary.json").read_text()) == summary
    assert_progress_then_total(result.stderr, "predict: read", summary["read"], documents["bytes"] / 1e6)


def test_trainer_predict_ends_with_readable_lines(model, documents, tmp_path, capsys):
    from trainer.predict import main

    out = tmp_path / "p.jsonl"
    assert main(["--model_dir", model, "--input_files", documents["path"], "--output", str(out), "--use_cpu",
                 "--quiet"]) == 0
    captured = capsys.readouterr()
    summary = json.loads((tmp_path / "p.summary.json").read_text())
    lines = captured.out.splitlines()
    assert lines[0] == f"read {documents['read']:,} documents: {summary['documents']:,} predicted, 1 rejected (wrong_field_count 1)"
    assert lines[1] == (f"{summary['labelled']:,} labelled: accuracy {summary['accuracy']:.4f}, "
                        f"macro-F1 {summary['macro_f1']:.4f}, MCC {summary['mcc']:.4f}")
    assert lines[2:] == [f"predictions: {out}", f"rejected rows: {tmp_path / 'p.rejected.jsonl'}",
                         f"summary: {tmp_path / 'p.summary.json'}"]
    assert "confusion_matrix" in summary and "predict: read" not in captured.err  # --quiet


def test_trainer_predict_on_shards_shows_progress_and_metrics(model, prep, tmp_path, capsys, monkeypatch):  # noqa: F811
    from trainer.predict import main

    monkeypatch.setenv(INTERVAL_ENV, "0")
    out = tmp_path / "p.jsonl"
    assert main(["--model_dir", model, "--data_dir", prep["data_dir"], "--split", "test", "--output", str(out),
                 "--use_cpu", "--batch_size", "4"]) == 0
    captured = capsys.readouterr()
    summary = json.loads((tmp_path / "p.summary.json").read_text())
    assert summary["documents"] == len(prep["rows"]["test"])
    assert {"accuracy", "macro_f1", "mcc"} <= set(summary)
    intermediate, (docs, _) = progress_lines(captured.err, "predict: scored")
    assert docs == summary["documents"] and all(d <= docs for d, _ in intermediate)
    assert captured.out.splitlines()[0] == f"{summary['documents']:,} predicted"


def test_beam_predict_shows_progress_and_json_is_one_object(model, documents, tmp_path):
    out = tmp_path / "beam"
    result = subprocess.run(
        [sys.executable, "-m", "beam_pipelines.predict", "--model_dir", model, "--input_files", documents["path"],
         "--output_dir", str(out), "--device", "cpu", "--read_range_mb", "0.02", "--json"],
        cwd=REPO_ROOT, env=subprocess_env(**FAST), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert result.stdout.count("\n") == 1
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["read"] == documents["read"] and summary["rejected"] == 1
    assert_progress_then_total(result.stderr, "predict: scored", summary["read"], documents["bytes"] / 1e6)


def test_beam_predict_ends_with_readable_lines(model, documents, tmp_path, capsys):
    from beam_pipelines import predict as beam_predict

    out = tmp_path / "beam"
    assert beam_predict.main(["--model_dir", model, "--input_files", documents["path"], "--output_dir", str(out),
                              "--device", "cpu", "--quiet"]) == 0
    captured = capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    lines = captured.out.splitlines()
    assert lines[0] == f"read {documents['read']:,} documents: {summary['documents']:,} predicted, 1 rejected (wrong_field_count 1)"
    assert lines[1].startswith(f"{summary['labelled']:,} labelled: accuracy {summary['accuracy']:.4f}, macro-F1 ")
    assert lines[2:] == [f"predictions: {out / 'predictions-00000-of-00001.jsonl'}",
                         f"rejected rows: {out / 'rejected' / 'input-00000-of-00001.jsonl'}",
                         f"summary: {out / 'summary.json'}"]
    assert "predict: scored" not in captured.err


def test_classifier_predict_shows_progress_on_request(model, documents, capsys, monkeypatch):
    from modeling.classifier import Classifier

    monkeypatch.setenv(INTERVAL_ENV, "0")
    classifier = Classifier.from_pretrained(model, device="cpu")
    texts = [row[3] for row in documents["rows"]]
    capsys.readouterr()
    silent = classifier.predict(texts[:20])
    assert capsys.readouterr().err == ""  # no progress unless asked
    predictions = classifier.predict(texts, progress=True)
    intermediate, (docs, _) = progress_lines(capsys.readouterr().err, "predict: scored")
    assert docs == len(predictions) == len(texts)
    assert [p.label for p in predictions[:20]] == [p.label for p in silent]
    assert intermediate and all(0 < d <= docs for d, _ in intermediate)
