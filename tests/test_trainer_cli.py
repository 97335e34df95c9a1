"""The trainer as a Hugging Face user drives it (issue 13): each case a new user tried, and what they see now.

* run_glue's flag names and meanings (``--do_train/--do_eval/--do_predict``, ``--lr_scheduler_type``,
  ``--warmup_steps``, ``--save_strategy``, ``--optim``, ``--max_train_samples``, ...), the old names
  as aliases, JSON/YAML config files, and every default in ``--help``;
* a re-run into an ``--output_dir`` holding a run: refused with what differs and the two ways out,
  ``run_config.json`` untouched; the same command on a finished run trains nothing;
* failures before the first step: an evaluation split without labels (the preprocessing statistics
  say so too), ``--max_seq_length`` above the model's position embeddings, a tokenizer larger than
  the model's embeddings, a saved classifier of another label count (``--ignore_mismatched_sizes``);
* a run always ends evaluated (``--max_steps`` shorter than an epoch);
* ``--load_best_model_at_end`` and ``--early_stopping_patience`` on the exact-resume checkpoints;
* the GPU-readiness flags where they can run on a CPU: no host sync per micro-batch, fp16 skipped
  steps leave the schedule alone, ``--optim``, ``--torch_compile``, ``--gradient_checkpointing``,
  GPU-only flags refused on a CPU, the ranks' stop agreement one step late without a device sync.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer_helpers import (  # noqa: F401  (prep and tiny_model are fixtures)
    FAIL_ENV,
    LABELS,
    REPO_ROOT,
    load_safetensors,
    minilm_dir,
    prep,
    read_trace,
    run_preprocess,
    task_argv,
    tiny_model,
    topic_rows,
    train_in_process,
)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """In-process runs with one thread, as the subprocess runs are (reproducible float sums)."""
    yield


def _fails_before_training(argv, capsys, *expected):
    """``run`` raises ValueError naming the problem; ``main`` prints it as one ``error:`` line and exits 2."""
    from trainer.task import main, run

    with pytest.raises(ValueError) as error:
        run(argv)
    for text in expected:
        assert text in str(error.value), str(error.value)
    capsys.readouterr()  # (progress bars of the set-up before)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and all(text in err for text in expected) and "Traceback" not in err
    return str(error.value)


# --------------------------------------------------------------------------- flags, --help, config files
HF_FLAGS = [
    "--do_train", "--do_eval", "--do_predict", "--overwrite_output_dir", "--lr_scheduler_type", "cosine",
    "--warmup_steps", "3", "--save_strategy", "steps", "--save_steps", "4", "--eval_strategy", "steps", "--eval_steps", "4",
    "--report_to", "none", "--optim", "adamw_torch", "--gradient_checkpointing", "--max_train_samples", "24",
    "--max_eval_samples", "10", "--load_best_model_at_end", "--metric_for_best_model", "loss",
    "--early_stopping_patience", "2", "--torch_compile", "--tf32", "false", "--group_by_length",
]
HF_VALUES = dict(
    do_train=True, do_eval=True, do_predict=True, overwrite_output_dir=True, lr_scheduler_type="cosine", warmup_steps=3,
    save_strategy="steps", save_steps=4, eval_strategy="steps", eval_steps=4, report_to="none", optim="adamw_torch",
    gradient_checkpointing=True, max_train_samples=24, max_eval_samples=10, load_best_model_at_end=True,
    metric_for_best_model="loss", early_stopping_patience=2, torch_compile=True, tf32=False, group_by_length=True,
)
BASE = ["--data_dir", "d", "--model_name_or_path", "m", "--task_name", "t", "--output_dir", "o"]


def test_run_glue_flag_names_parse_with_their_meaning():
    from trainer.args import parse_args

    config = parse_args([*BASE, *HF_FLAGS])
    assert {name: getattr(config, name) for name in HF_VALUES} == HF_VALUES
    # booleans take an optional value, as in TrainingArguments
    assert parse_args([*BASE, "--do_eval", "false", "--do_train", "true"]).do_eval is False
    # the earlier names stay: --model_name, and no --do_* meaning train and evaluate
    old = parse_args(["--data_dir", "d", "--model_name", "m", "--task_name", "t", "--output_dir", "o"])
    assert old.model_name_or_path == old.model_name == "m" and old.do_train and old.do_eval and not old.do_predict
    assert old.save_strategy == "epoch" and parse_args([*BASE, "--save_steps", "4"]).save_strategy == "steps"
    assert parse_args([*BASE, "--eval_strategy", "steps", "--logging_steps", "7"]).eval_steps == 7  # HF's default


def test_help_shows_every_default_and_the_hf_names(capsys):
    from trainer.args import build_parser

    parser = build_parser()
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # (argparse wraps lines)
    for flag in HF_FLAGS:
        if flag.startswith("--"):
            assert flag in text, flag
    for default in ("--learning_rate LEARNING_RATE, --learning-rate LEARNING_RATE peak learning rate of AdamW (default: 2e-05)",
                    "documents per batch per process (default: 8)", "epochs (may be fractional) (default: 3.0)", "(default: head)",
                    "seed of the new head, the data order and the random spans (default: 42)", "--model_name MODEL_NAME_OR_PATH",
                    "--config FILE"):
        assert default in text, default
    for action in parser._actions:  # every flag says its default (or that it is required)
        if action.option_strings and action.dest != "help":
            formatted = parser._get_formatter()._get_help_string(action)
            assert "(default:" in formatted or "(required)" in formatted, action.dest


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_config_file_as_hf_argument_parser_users_give_it(tmp_path, suffix):
    from trainer.args import parse_args

    values = {"data_dir": "d", "model_name_or_path": "m", "task_name": "t", "output_dir": "o", "do_train": True,
              "learning_rate": 3e-5, "seq_len_func": "ht", "seq_func_params": [128, 382], "tf32": False,
              "lr_scheduler_type": "cosine"}
    path = tmp_path / f"config{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(values))
    else:  # YAML as people write it: 3e-5 is a string to YAML 1.1, and lists in flow style
        path.write_text("data_dir: d\nmodel_name_or_path: m\ntask_name: t\noutput_dir: o\ndo_train: true\n"
                        "learning_rate: 3e-5\nseq_len_func: ht\nseq_func_params: [128, 382]\ntf32: false\n"
                        "lr_scheduler_type: cosine\n")
    config = parse_args([str(path)])
    assert {k: getattr(config, k) for k in values} == values and config.do_eval is False
    # --config FILE, and flags beside it win
    other = parse_args(["--config", str(path), "--learning_rate", "0.1", "--seq_func_params", "64", "64"])
    assert other.learning_rate == 0.1 and other.seq_func_params == [64, 64] and other.lr_scheduler_type == "cosine"


def test_config_file_mistakes_are_named(tmp_path):
    from trainer.args import parse_args

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"data_dir": "d", "learning_rat": 1e-3}))
    with pytest.raises(ValueError, match=r"unknown key 'learning_rat' \(did you mean 'learning_rate'\?\)"):
        parse_args([str(bad)])
    with pytest.raises(ValueError, match="not found"):
        parse_args(["--config", str(tmp_path / "missing.yaml")])
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="expected a mapping of flag names to values, got list"):
        parse_args([str(listed)])


def test_a_config_dumped_by_hugging_face_is_read_as_it_says(tmp_path, caplog):
    """``TrainingArguments(...).to_json_string()`` plus the data keys (issue 22): HF's keys at HF's
    defaults are ignored in one log line; ``report_to: []`` is none, ``save_total_limit: null`` keeps
    every checkpoint, ``evaluation_strategy`` is ``eval_strategy``; a changed HF key is refused."""
    import logging

    from trainer.args import parse_args
    from trainer_helpers import hf_training_dump

    dump = hf_training_dump(learning_rate=3e-5, eval_strategy="epoch")
    dump.update(data_dir="d", model_name_or_path="m", task_name="t", output_dir="o")
    path = tmp_path / "hf.json"
    path.write_text(json.dumps(dump))
    with caplog.at_level(logging.INFO, logger="trainer.args"):
        config = parse_args([str(path)])
    assert (config.report_to, config.save_total_limit, config.eval_strategy, config.learning_rate) == ("none", 0, "epoch", 3e-5)
    [line] = [r.getMessage() for r in caplog.records if r.name == "trainer.args"]
    ignored = [key for key in dump if key not in ("data_dir", "model_name_or_path", "task_name") and key not in config.to_dict()]
    assert line == (f"config file {path}: ignoring {len(ignored)} Hugging Face TrainingArguments keys at their defaults: "
                    + ", ".join(ignored))
    assert {"data_seed", "use_cache", "deepspeed", "hub_token"} <= set(ignored)

    older = dict(dump, evaluation_strategy="steps", eval_steps=5)  # transformers 4's name
    del older["eval_strategy"]
    path.write_text(json.dumps(older))
    assert parse_args([str(path)]).eval_strategy == "steps"

    path.write_text(json.dumps(dict(dump, data_seed=7, label_smoothing_factor=0.1)))
    with pytest.raises(ValueError, match=r"hf\.json: label_smoothing_factor: 0\.1 \(HF's default: 0\.0\), data_seed: 7 "
                                         r"\(HF's default: null\): python -m trainer\.task does not support these Hugging "
                                         r"Face settings; remove the key or set it to HF's default$"):
        parse_args([str(path)])


@pytest.mark.parametrize("key, hint", [("data_seedz", ""), ("use_cach", ""), ("deepspeedx", ""),
                                       ("learning_rat", " (did you mean 'learning_rate'?)"),
                                       ("per_device_batch_size", " (did you mean 'per_device_eval_batch_size'?)")])
def test_a_suggestion_only_when_close(tmp_path, key, hint):
    from trainer.args import parse_args

    path = tmp_path / "c.json"
    path.write_text(json.dumps({**dict(zip(BASE[::2], BASE[1::2])), key: 1}).replace('"--', '"'))
    with pytest.raises(ValueError) as error:
        parse_args([str(path)])
    assert f"unknown key {key!r}{hint};" in str(error.value)


def test_eval_views_default_to_the_train_views():
    from trainer.args import parse_args

    assert parse_args([*BASE, "--train_views", "chunks", "--max_chunks", "2"]).eval_views == "chunks"
    assert parse_args([*BASE, "--train_views", "3", "--seq_len_func", "rs", "--seq_func_params", "8"]).eval_views == "3"
    assert parse_args([*BASE, "--train_views", "chunks", "--max_chunks", "2", "--eval_views", "1"]).eval_views == "1"
    assert parse_args(BASE).eval_views == "1"


@pytest.mark.parametrize("flags, message", [
    (["--load_best_model_at_end", "--eval_strategy", "no"], "--load_best_model_at_end need evaluations during training"),
    (["--early_stopping_patience", "2", "--do_train"], "--early_stopping_patience need evaluations during training"),
    (["--save_strategy", "steps"], "--save_strategy steps needs --save_steps >= 1"),
    (["--tf32", "true", "--use_cpu"], "--tf32 true needs a CUDA GPU"),
    (["--max_train_samples", "0"], "--max_train_samples must be >= 1"),
    (["--overwrite_output_dir", "--resume_from_checkpoint", "ckpt"], "cannot resume --resume_from_checkpoint ckpt"),
])
def test_inconsistent_flags_are_refused_before_anything(flags, message):
    from trainer.args import parse_args

    with pytest.raises(ValueError, match=message):
        parse_args([*BASE, *flags])


def test_hf_flags_drive_a_run_from_a_yaml_config(prep, tiny_model, tmp_path):
    """A YAML config with run_glue's flags (one overridden on the command line): the first 24
    documents, cosine schedule with warm-up, foreach AdamW, evaluation of the first 10 dev
    documents at steps 3 and 6, checkpoints every 3 steps, test predictions, no TensorBoard."""
    from trainer.args import parse_args
    from trainer.data import read_rows, eval_plan
    from trainer.shards import list_units
    from trainer.task import Trainer

    out, trace = tmp_path / "out", tmp_path / "trace.jsonl"
    config = tmp_path / "run.yaml"
    config.write_text(
        f"data_dir: {prep['data_dir']}\nmodel_name_or_path: {tiny_model}\ntask_name: topics\noutput_dir: {out}\n"
        "do_train: true\ndo_eval: true\ndo_predict: true\nmax_seq_length: 64\nlearning_rate: 2e-3\n"
        "lr_scheduler_type: cosine\nwarmup_steps: 2\nmax_steps: 6\nsave_strategy: steps\nsave_steps: 3\n"
        "eval_strategy: steps\neval_steps: 3\nmax_train_samples: 24\nmax_eval_samples: 10\nreport_to: none\n"
        f"optim: adamw_torch\nlogging_steps: 1\nuse_cpu: true\ndisable_tqdm: true\nsample_trace_file: {trace}\n"
    )
    trainer = Trainer(parse_args([str(config), "--seed", "7"]))
    trainer.setup()
    try:
        trainer.train()
        trainer.save()
        trainer.predict()
    finally:
        trainer.close()
    assert trainer.config.seed == 7 and trainer.config.learning_rate == 2e-3
    units = list_units(prep["data_dir"], trainer.manifest, "train")
    first_24 = {row[0] for row in read_rows(eval_plan(units, batch_size=8), np.arange(24))}
    records = read_trace(trace)
    assert [(r["epoch"], r["batch"]) for r in records] == [(e, b) for e in range(2) for b in range(3)]
    for epoch in range(2):
        assert sorted(doc for r in records if r["epoch"] == epoch for doc in r["ids"]) == sorted(first_24)
    optimizer = trainer.optimizer
    assert optimizer.defaults["foreach"] is True and not optimizer.defaults.get("fused")
    lr_at = trainer.scheduler.lr_lambdas[0]
    assert lr_at(1) == pytest.approx(0.5) and lr_at(4) == pytest.approx(0.5) and lr_at(6) == pytest.approx(0.0)
    results = json.loads((out / "eval_results.json").read_text())
    assert [entry["step"] for entry in results["history"]] == [3, 6]
    assert all(entry["num_examples"] == 10 for entry in results["history"])
    assert sorted(os.listdir(out / "checkpoints")) == ["checkpoint-00000003", "checkpoint-00000006"]
    lines = (out / "predict_results.tsv").read_text().splitlines()
    assert lines[0].split("\t")[:2] == ["id", "label"] and len(lines) == 31
    assert not (out / "runs").exists()  # --report_to none
    args = json.loads((out / "run_config.json").read_text())["args"]
    assert args["lr_scheduler_type"] == "cosine" and args["warmup_steps"] == 2 and args["optim"] == "adamw_torch"


# --------------------------------------------------------------------------- re-running into an output_dir
def test_rerun_into_a_finished_run(prep, tiny_model, tmp_path, capsys, caplog):
    """Other arguments: refused before any work, with what differs and the two ways out, and
    run_config.json untouched; the same arguments: nothing to train; --overwrite_output_dir: afresh."""
    from trainer.task import run

    out = tmp_path / "out"
    first = task_argv(prep["data_dir"], tiny_model, out, "--max_steps", "4", "--eval_strategy", "no")
    run(first)
    run_config = out / "run_config.json"
    before = (run_config.read_bytes(), run_config.stat().st_mtime_ns, sorted(os.listdir(out / "runs" / "topics")))

    other = [*first, "--learning_rate", "1e-2", "--seq_len_func", "tail"]
    message = _fails_before_training(
        other, capsys, f"{out} holds a run made with other arguments", "learning_rate 0.001 -> 0.01",
        "seq_len_func 'head' -> 'tail'", "--overwrite_output_dir", "a new --output_dir",
    )
    assert "max_steps" not in message and "total_steps" not in message  # only what differs
    after = (run_config.read_bytes(), run_config.stat().st_mtime_ns, sorted(os.listdir(out / "runs" / "topics")))
    assert after == before  # not rewritten, no TensorBoard file added
    assert json.loads(run_config.read_text())["seq_len"]["name"] == "head"  # what trainer.report reads
    _fails_before_training([*first, "--resume_from_checkpoint", "no"], capsys, "--resume_from_checkpoint no would start afresh")

    with caplog.at_level("INFO", logger="trainer"):
        results = run(first)
    assert "holds this run, finished" in caplog.text and "nothing to train" in caplog.text
    assert results["final"]["step"] == 4
    assert (run_config.read_bytes(), run_config.stat().st_mtime_ns) == before[:2]

    run([*other, "--overwrite_output_dir"])
    assert json.loads(run_config.read_text())["seq_len"]["name"] == "tail"
    assert sorted(os.listdir(out / "checkpoints")) == ["checkpoint-00000004"]
    state = torch.load(out / "checkpoints" / "checkpoint-00000004" / "state.pt", weights_only=True)
    assert json.loads(state["result_args"])["learning_rate"] == 0.01


def test_max_steps_shorter_than_an_epoch_ends_with_an_evaluation(prep, tiny_model, tmp_path):
    from trainer.task import run

    out = tmp_path / "out"
    results = run(task_argv(prep["data_dir"], tiny_model, out, "--max_steps", "3"))  # an epoch is 12 steps
    saved = json.loads((out / "eval_results.json").read_text())
    assert [entry["step"] for entry in saved["history"]] == [3] and saved["final"]["num_examples"] == 30
    assert results["final"] == saved["final"]


# --------------------------------------------------------------------------- before the first step
def test_text_labels_in_dev_numeric_in_train_stop_before_training(tiny_model, tmp_path, capsys):
    """Preprocessing still succeeds but says loudly that dev lost every row; the trainer stops
    before its first step, naming the split, the reason and the fix."""
    from beam_pipelines import preprocess

    tsv = tmp_path / "tsv"
    tsv.mkdir()
    numeric = {label: str(index) for index, label in enumerate(LABELS)}
    for split, count in (("train", 30), ("dev", 12)):
        rows = topic_rows(split, count)
        with open(tsv / f"{split}.tsv", "w", encoding="utf-8") as handle:
            for doc_id, alpha, label, text in rows:
                handle.write("\t".join([doc_id, alpha, numeric[label] if split == "train" else label, text]) + "\n")
    prep_dir = tmp_path / "prep"
    code = preprocess.main(["--data_dir", str(tsv), "--output_dir", str(prep_dir), "--tokenizer", minilm_dir()])
    printed = capsys.readouterr().out
    assert code == 0
    assert "WARNING: every row of split 'dev' was rejected (unseen_label 12)" in printed

    out = tmp_path / "out"
    _fails_before_training(
        task_argv(prep_dir, tiny_model, out), capsys,
        "the evaluation split 'dev' has no labelled documents (preprocessing rejected all 12 of its rows: unseen_label 12",
        "they must be labels of the train split: 0, 1, 2", "--do_train without --do_eval",
    )
    assert not out.exists()  # nothing was trained or written


def _model_variant(tiny_model, target, *, config_edit=None, tokenizer_edit=None, classifier_labels=None):
    """A copy of the tiny model with its config (or tokenizer config) edited, or saved as a classifier."""
    from transformers import BertConfig, BertForSequenceClassification

    shutil.copytree(tiny_model, target)
    if config_edit:
        config = BertConfig.from_pretrained(target)
        for key, value in config_edit.items():
            setattr(config, key, value)
        torch.manual_seed(0)
        from transformers import BertModel

        BertModel(config).save_pretrained(target)
    if tokenizer_edit:
        path = Path(target) / "tokenizer_config.json"
        path.write_text(json.dumps(tokenizer_edit(json.loads(path.read_text()))))
    if classifier_labels:
        torch.manual_seed(0)
        config = BertConfig.from_pretrained(target, num_labels=classifier_labels)
        BertForSequenceClassification(config).save_pretrained(target)
    return str(target)


def test_max_seq_length_above_the_models_positions_stops_before_training(prep, tiny_model, tmp_path, capsys):
    """The tokenizer knows no model_max_length; the model's config has 128 positions."""
    model = _model_variant(
        tiny_model, tmp_path / "short", config_edit={"max_position_embeddings": 128},
        tokenizer_edit=lambda c: {k: v for k, v in c.items() if k != "model_max_length"},
    )
    out = tmp_path / "out"
    _fails_before_training(
        task_argv(prep["data_dir"], model, out, "--max_seq_length", "256"), capsys,
        "--max_seq_length 256 exceeds what model", "max_position_embeddings 128", "use --max_seq_length 128 or less",
    )
    assert not out.exists()


def test_a_tokenizer_larger_than_the_models_embeddings_stops_before_training(prep, tiny_model, tmp_path, capsys):
    model = _model_variant(tiny_model, tmp_path / "small_vocab", config_edit={"vocab_size": 1000})
    _fails_before_training(
        task_argv(prep["data_dir"], model, tmp_path / "out"), capsys,
        "has 30522 tokens but model", "has embeddings for 1000", "use the model's own tokenizer",
    )


def test_a_classifier_of_another_label_count(prep, tiny_model, tmp_path, capsys):
    """Without --ignore_mismatched_sizes: a message naming the flag; with it: a new head of 3 labels."""
    from transformers import AutoConfig

    from trainer.task import run

    model = _model_variant(tiny_model, tmp_path / "five", classifier_labels=5)
    argv = task_argv(prep["data_dir"], model, tmp_path / "out", "--max_steps", "2", "--eval_strategy", "no")
    _fails_before_training(argv, capsys, "is a classifier of 5 labels but the data has 3", "--ignore_mismatched_sizes")
    run([*argv, "--ignore_mismatched_sizes"])
    saved = AutoConfig.from_pretrained(tmp_path / "out")
    assert saved.num_labels == 3 and saved.label2id == prep["manifest"]["label_map"]


def test_gpu_only_flags_on_a_cpu_say_so(prep, tiny_model, tmp_path, capsys):
    from trainer import predict

    _fails_before_training(task_argv(prep["data_dir"], tiny_model, tmp_path / "o1", "--fp16"), capsys, "--fp16 needs a GPU")
    _fails_before_training(task_argv(prep["data_dir"], tiny_model, tmp_path / "o2", "--tf32", "true"), capsys,
                           "--tf32 true needs a CUDA GPU")
    argv = ["--model_dir", tiny_model, "--data_dir", prep["data_dir"], "--output", str(tmp_path / "p.tsv"), "--use_cpu", "--fp16"]
    assert predict.main(argv) == 2
    assert "error: --fp16 needs a GPU; use --bf16 on a CPU" in capsys.readouterr().err


# --------------------------------------------------------------------------- best model, early stopping
BEST_FLAGS = ("--learning_rate", "0.05", "--max_steps", "24", "--eval_strategy", "steps", "--eval_steps", "2",
              "--save_steps", "2", "--save_total_limit", "1", "--metric_for_best_model", "loss", "--load_best_model_at_end")


def test_load_best_model_at_end_keeps_the_best_checkpoint(prep, tiny_model, tmp_path):
    """--save_total_limit 1 keeps the newest checkpoint and, besides it, the best; the saved model
    is the best checkpoint's, and eval_results.json's final entry is its evaluation."""
    from trainer.task import run

    out = tmp_path / "out"
    results = run(task_argv(prep["data_dir"], tiny_model, out, *BEST_FLAGS))
    history = results["history"]
    best = min(history, key=lambda entry: entry["loss"])
    assert best["step"] < 24, "the test needs a run whose best evaluation is not its last"
    assert results["best_step"] == best["step"] and results["final"] == best
    assert sorted(os.listdir(out / "checkpoints")) == [f"checkpoint-{best['step']:08d}", "checkpoint-00000024"]
    final = load_safetensors(out / "model.safetensors")
    checkpoint = load_safetensors(out / "checkpoints" / f"checkpoint-{best['step']:08d}" / "model.safetensors")
    assert final.keys() == checkpoint.keys() and all(torch.equal(final[k], checkpoint[k]) for k in final)
    last = load_safetensors(out / "checkpoints" / "checkpoint-00000024" / "model.safetensors")
    assert any(not torch.equal(final[k], last[k]) for k in final)


def test_early_stopping_stops_and_resumes_to_the_same_result(prep, tiny_model, tmp_path, monkeypatch):
    """--early_stopping_patience 2: training stops two evaluations after the best one, exactly so
    when the run crashed in between and was resumed; the same command afterwards trains nothing."""
    from trainer.task import run

    def argv(name):
        return task_argv(prep["data_dir"], tiny_model, tmp_path / name, *BEST_FLAGS, "--early_stopping_patience", "2",
                         "--sample_trace_file", str(tmp_path / f"{name}.jsonl"))

    reference = run(argv("reference"))
    best, stopped = reference["best_step"], len(read_trace(tmp_path / "reference.jsonl"))
    assert reference["stopped_early"] is True and stopped == best + 4 < 24
    assert reference["history"][-1]["step"] == stopped

    monkeypatch.setenv(FAIL_ENV, str(stopped - 1))
    with pytest.raises(RuntimeError, match="injected failure"):
        run(argv("resumed"))
    monkeypatch.delenv(FAIL_ENV)
    resumed = run(argv("resumed"))
    assert resumed["history"] == reference["history"] and resumed["best_step"] == best and resumed["stopped_early"]
    a, b = (load_safetensors(tmp_path / name / "model.safetensors") for name in ("reference", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert run(argv("resumed"))["history"] == reference["history"]  # finished: nothing trained
    assert len(read_trace(tmp_path / "resumed.jsonl")) == (stopped - 1) + 2  # crash, then steps stopped-1 and stopped


# --------------------------------------------------------------------------- GPU readiness, on the CPU
def test_no_host_sync_per_micro_batch(prep, tiny_model, tmp_path, monkeypatch):
    """The trainer reads a tensor's value (a device sync on a GPU) only at logging steps: 2 reads
    for 8 optimizer steps of 2 micro-batches with --logging_steps 4."""
    from trainer.args import parse_args
    from trainer.task import Trainer

    trainer = Trainer(parse_args(task_argv(
        prep["data_dir"], tiny_model, tmp_path / "out", "--max_steps", "8", "--gradient_accumulation_steps", "2",
        "--logging_steps", "4", "--do_train",
    )))
    trainer.setup()
    reads = []
    for name in ("item", "__float__", "tolist", "cpu", "numpy", "__bool__"):
        original = getattr(torch.Tensor, name)

        def spy(self, *args, _original=original, _name=name, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if os.sep + "trainer" + os.sep in caller:
                reads.append((_name, caller, sys._getframe(1).f_lineno))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)
    trainer.train()
    monkeypatch.undo()
    trainer.close()
    assert trainer.global_step == 8
    assert [name for name, _, _ in reads] == ["item", "item"], reads


def test_a_skipped_fp16_step_leaves_the_schedule(tmp_path):
    """The gradient scaler skips a step with inf gradients: no weight change and no schedule step."""
    from transformers import get_linear_schedule_with_warmup

    from trainer.optimization import optimizer_step

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, 10)
    scaler = torch.amp.GradScaler("cpu", enabled=True, init_scale=2.0**8)
    weights = model.weight.detach().clone()
    scaler.scale(model(torch.ones(1, 3)).sum()).backward()
    model.weight.grad[0, 0] = float("inf")
    assert optimizer_step(optimizer, scheduler, scaler, list(model.parameters()), 1.0) is False
    assert scheduler.last_epoch == 0 and scheduler.get_last_lr() == [0.1] and torch.equal(model.weight, weights)
    assert scaler.get_scale() == 2.0**7 and model.weight.grad is None
    scaler.scale(model(torch.ones(1, 3)).sum()).backward()
    assert optimizer_step(optimizer, scheduler, scaler, list(model.parameters()), 1.0) is True
    assert scheduler.last_epoch == 1 and scheduler.get_last_lr() == [pytest.approx(0.09)]
    assert not torch.equal(model.weight, weights)


def test_fused_adamw_torch_compile_and_gradient_checkpointing_on_cpu(prep, tiny_model, tmp_path):
    """--optim adamw_torch_fused (the default) is torch's fused kernel; --torch_compile (the
    aot_eager backend here: inductor would compile C++ for minutes) trains and saves a model that
    loads; --gradient_checkpointing gives the very weights of a run without it."""
    from transformers import AutoModelForSequenceClassification

    common = ("--max_steps", "4", "--eval_strategy", "no", "--do_train", "--pad_to_multiple_of", "64")
    plain = train_in_process(task_argv(prep["data_dir"], tiny_model, tmp_path / "plain", *common))
    assert plain.optimizer.defaults["fused"] is True
    checkpointed = train_in_process(task_argv(prep["data_dir"], tiny_model, tmp_path / "gc", *common, "--gradient_checkpointing"))
    assert checkpointed.model.is_activation_checkpointing
    a, b = (load_safetensors(tmp_path / name / "model.safetensors") for name in ("plain", "gc"))
    assert all(torch.equal(a[k], b[k]) for k in a)

    compiled = train_in_process(task_argv(prep["data_dir"], tiny_model, tmp_path / "compiled", *common,
                                             "--torch_compile_backend", "aot_eager"))
    assert isinstance(compiled.train_model, torch._dynamo.eval_frame.OptimizedModule)
    saved = load_safetensors(tmp_path / "compiled" / "model.safetensors")
    assert saved.keys() == a.keys()  # the plain module's names, no _orig_mod. prefix
    assert all(torch.allclose(saved[k], a[k], atol=1e-4) for k in a)  # the same training, compiled
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "compiled")
    assert all(torch.equal(v, saved[k]) for k, v in reloaded.state_dict().items())


_AGREE_SCRIPT = """
import os, signal, sys
import torch.distributed as dist
from trainer.stopping import StopSignals
rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=rank, world_size=2)
signals = StopSignals()
signals.use_group(True)
decided = []
for step in range(1, 7):
    if rank == 1 and step == 3:
        signals.requested = signal.SIGTERM  # as the handler sets it, on one rank only
    agreed = signals.agreed()
    decided.append(agreed.name if agreed else None)
signals.finish()
print(decided)
dist.destroy_process_group()
"""


def test_ranks_agree_on_a_stop_one_step_later_without_a_device_sync(tmp_path):
    """A SIGTERM on rank 1 in step 3: both ranks stop after step 4 (the flags travel on a gloo
    group, started in one step and read in the next)."""
    import subprocess

    from trainer_helpers import subprocess_env

    store = tmp_path / "store"
    procs = [
        subprocess.Popen([sys.executable, "-c", _AGREE_SCRIPT, str(rank), str(store)], cwd=REPO_ROOT, env=subprocess_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in (0, 1)
    ]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-2000:]
    expected = str([None, None, None, "SIGTERM", "SIGTERM", "SIGTERM"])
    assert [out.strip() for out, _ in outputs] == [expected, expected]
