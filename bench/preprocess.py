"""Preprocessing at corpus scale: our pipeline against the raw tokenizer and Hugging Face ``datasets``.

    python bench/preprocess.py [--scales 1 10] [--repeats 1] [--sides raw pipeline datasets] \\
        [--num_proc 2] [--work_dir DIR] [--json FILE] [--pipeline_args "--direct_running_mode ..."]

20 Newsgroups (bundled, ``beam_pipelines.datasets``) is written at each scale ``k`` as many files:
``k`` copies of every document (copy ``c`` gets the ID ``<id>~c``), each split cut into parts
(train 4, dev 1, test 2 per copy), every third file gzip-compressed, each with a header line.
Three sides then read exactly those files and tokenize exactly the same texts, each in its own
subprocess, one after another, in an order that alternates between repeats:

raw
    ``tokenization.tokenizer.tokenize_batch`` (the pipeline's own call: the Rust tokenizer's
    ``encode_batch_fast``, no special tokens, no truncation) over the texts, in batches of 64,
    the texts already in memory. Its CPU time is that of the tokenizing loop alone: the limit.
pipeline
    the command a user runs, ``python -m beam_pipelines.preprocess --train_files ...
    --dev_files ... --test_files ...`` (run through ``main`` in a child that counts the CPU of its
    tokenizer calls, nothing else changed), on its default local runner (Beam's FnApiRunner,
    in_memory, one process) unless ``--pipeline_args`` says otherwise: read, parse, tokenize,
    group by shard (spill files), dedupe, label, write Parquet, statistics, manifest. Its
    tokens are read from the manifest it wrote.
datasets
    what a user would write instead on one machine: ``datasets.load_dataset("csv",
    data_files=..., delimiter="\\t")`` (gzip files decompressed by ``datasets``) then
    ``Dataset.map(tokenize, batched=True, num_proc=N)`` with ``tokenizer(batch["text_a"],
    add_special_tokens=False, truncation=False)``, into a fresh cache folder (nothing reused).

For each side: content tokens (the three must agree, or the benchmark fails), wall seconds,
CPU seconds of the whole process tree (the side's process and every process it started and
waited for, from ``wait4``; for ``raw``, the loop's own CPU time), tokens per CPU-second and per
wall second, and the peak resident memory of the process tree, sampled with psutil: the sum of
RSS every 0.1 s (what the issue asked for; it counts pages shared by forked workers once per
process) and the sum of PSS every second (shared pages split between the processes sharing them).

Separate processes on a shared machine swing by 10% or more in CPU per token, so the pipeline
side also counts, in its own process, the CPU seconds spent inside its tokenizer calls (all
threads: the Rust pool's too): ``tokenizer share`` = those / all the pipeline's CPU seconds is the
pipeline's efficiency against the raw tokenizer measured side by side in one run.

Needs the bench extras (``.venv/bin/pip install --no-deps -r requirements-bench.txt``: psutil)
and ``datasets`` (requirements-dev.txt).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, TreeMemory, child_env, log, machine, median, minilm_dir, write_json  # noqa: E402

__all__ = ["main"]

_SPLITS = ("train", "dev", "test")
_PARTS = {"train": 4, "dev": 1, "test": 2}
_SIDES = ("raw", "pipeline", "datasets")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python bench/preprocess.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10], help="copies of 20 Newsgroups (default 1 10)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each side per scale (default 1)")
    parser.add_argument("--sides", nargs="+", default=list(_SIDES), choices=_SIDES, help="what to run (default all)")
    parser.add_argument("--num_proc", type=int, default=2, help="datasets.map num_proc (default 2: the cores here)")
    parser.add_argument("--batch_size", type=int, default=64, help="texts per tokenizer call of raw and pipeline (default 64)")
    parser.add_argument("--pipeline_args", default="", help="extra flags for the pipeline, e.g. '--direct_running_mode multi_processing --direct_num_workers 2'")
    parser.add_argument("--work_dir", default=None, help="folder for the corpora and outputs (default: a temp dir)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--side", default=None, help=argparse.SUPPRESS)  # internal: run one side in this process
    parser.add_argument("--corpus_dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out_dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.num_proc < 1 or min(args.scales) < 1:
        parser.error("--repeats, --num_proc and --scales must be >= 1")
    return args


# --------------------------------------------------------------------------- the corpus


def _write_scaled(base_tsv: Path, target: Path, copies: int) -> dict[str, list[str]]:
    """``copies`` copies of the corpus as many files, every third one gzipped; ``{split: [paths]}``."""
    marker = target / ".complete"
    files: dict[str, list[str]] = {split: [] for split in _SPLITS}
    plan = []
    count = 0
    for split in _SPLITS:
        for copy in range(copies):
            for part in range(_PARTS[split]):
                gz = count % 3 == 2
                count += 1
                name = f"{split}-{copy:03d}-{part}.tsv" + (".gz" if gz else "")
                files[split].append(str(target / name))
                plan.append((split, copy, part, target / name, gz))
    if marker.exists():
        return files
    log(f"writing 20 Newsgroups x{copies} as {count} files in {target}")
    target.mkdir(parents=True, exist_ok=True)
    for split in _SPLITS:
        lines = (base_tsv / f"{split}.tsv").read_text(encoding="utf-8").split("\n")
        header, rows = lines[0], [line for line in lines[1:] if line]
        for _, copy, part, path, gz in (p for p in plan if p[0] == split):
            chosen = rows[part :: _PARTS[split]]
            text = header + "\n" + "".join(
                (row if copy == 0 else row.replace("\t", f"~{copy}\t", 1)) + "\n" for row in chosen
            )
            data = text.encode("utf-8")
            path.write_bytes(gzip.compress(data, compresslevel=6) if gz else data)
    marker.write_text("ok\n")
    return files


# --------------------------------------------------------------------------- the sides (children)


def _texts(files: dict[str, list[str]]) -> list[str]:
    texts = []
    for paths in files.values():
        for path in paths:
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rt", encoding="utf-8", newline="\n") as handle:
                next(handle)  # the header
                texts.extend(line.rstrip("\n").split("\t")[3] for line in handle if line.strip())
    return texts


def _side_raw(files: dict[str, list[str]], batch_size: int) -> dict[str, Any]:
    from tokenization.tokenizer import load_tokenizer, tokenize_batch

    tokenizer = load_tokenizer(minilm_dir())
    texts = _texts(files)
    tokenize_batch(tokenizer, texts[: 4 * batch_size])  # warm the Rust pool
    tokens = 0
    cpu, wall = time.process_time(), time.perf_counter()
    for offset in range(0, len(texts), batch_size):
        tokens += sum(len(ids) for ids in tokenize_batch(tokenizer, texts[offset : offset + batch_size]))
    return {"tokens": tokens, "loop_cpu_s": time.process_time() - cpu, "loop_wall_s": time.perf_counter() - wall,
            "documents": len(texts)}


def _side_datasets(files: dict[str, list[str]], out_dir: str, num_proc: int) -> dict[str, Any]:
    import datasets
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir(), use_fast=True)
    loaded = datasets.load_dataset("csv", data_files=files, delimiter="\t", cache_dir=out_dir, quoting=3)  # 3: QUOTE_NONE

    def tokenize(batch: dict[str, list[str]]) -> dict[str, Any]:
        return tokenizer(batch["text_a"], add_special_tokens=False, truncation=False)

    tokens = documents = 0
    for split, dataset in loaded.items():
        mapped = dataset.map(tokenize, batched=True, num_proc=num_proc, remove_columns=dataset.column_names)
        lengths = mapped.map(lambda b: {"n": [len(x) for x in b["input_ids"]]}, batched=True, remove_columns=["input_ids"])
        tokens += sum(lengths["n"])
        documents += len(mapped)
    return {"tokens": tokens, "documents": documents, "datasets": datasets.__version__}


def _pipeline_result(out_dir: Path) -> dict[str, Any]:
    """What the pipeline wrote: tokens and documents from its manifest, and which runner ran."""
    manifest = json.loads((out_dir / "manifest.json").read_text())
    return {
        "tokens": sum(int(info["stats"].get("total_tokens", 0)) for info in manifest["splits"].values()),
        "documents": sum(info["records"] for info in manifest["splits"].values()),
        "runner": manifest["options"]["runner"],
        "shuffle": manifest["options"]["shuffle"],
        "shards": {split: len(info["files"]) for split, info in manifest["splits"].items()},
    }


def _side_pipeline(argv: list[str]) -> int:
    """The command line ``python -m beam_pipelines.preprocess ARGV``, exactly (torch kept out, as its
    ``__main__`` does), with the CPU seconds spent inside the tokenizer calls counted: all threads
    of this process, so the Rust pool's too (the local runner tokenizes in this process)."""
    import atexit

    sys.modules["torch"] = None  # type: ignore[assignment]  (what beam_pipelines/preprocess.py's __main__ does)
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from beam_pipelines import preprocess
    from tokenization import documents  # where the pipeline's tokenizer calls are made

    tokenize, spent = documents.tokenize_batch, [0.0]

    def counted(tokenizer: Any, texts: list[str]) -> list[list[int]]:
        start = time.process_time()
        try:
            return tokenize(tokenizer, texts)
        finally:
            spent[0] += time.process_time() - start

    documents.tokenize_batch = counted
    atexit.register(lambda: print(json.dumps({"tokenizer_cpu_s": round(spent[0], 2)}), file=sys.stderr, flush=True))
    return preprocess.main(argv)


# --------------------------------------------------------------------------- measuring a side (parent)


def _measure(side: str, args: argparse.Namespace, corpus_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Run one side in a child; wall time, tree CPU time (wait4) and tree memory."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    if side == "pipeline":
        files = json.loads((corpus_dir / "files.json").read_text())
        command = [sys.executable, str(Path(__file__).resolve()), "--side", "pipeline", "--corpus_dir", str(corpus_dir),
                   "--out_dir", str(out_dir), "--", "--train_files", *files["train"], "--dev_files", *files["dev"],
                   "--test_files", *files["test"], "--output_dir", str(out_dir), "--tokenizer", minilm_dir(),
                   "--tokenize_batch_size", str(args.batch_size), *shlex.split(args.pipeline_args)]
    else:
        command = [sys.executable, str(Path(__file__).resolve()), "--side", side, "--corpus_dir", str(corpus_dir),
                   "--out_dir", str(out_dir), "--num_proc", str(args.num_proc), "--batch_size", str(args.batch_size)]
    env = child_env(1, TOKENIZERS_PARALLELISM="true")  # the Rust pool on both cores, as a user gets it
    env.pop("RAYON_NUM_THREADS", None)
    # one side at a time: what RUSAGE_CHILDREN grows by is this child's tree (wait4 adds a reaped
    # child's usage, which includes the descendants it waited for)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = TreeMemory(child.pid)
    sampler.start()
    stdout, stderr = child.communicate()
    wall = time.perf_counter() - started
    sampler.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [line for line in stderr.splitlines() + stdout.splitlines() if line.startswith("{")]
    if child.returncode != 0 or not lines:
        raise RuntimeError(f"side {side} failed (exit {child.returncode}):\n{stdout[-2000:]}\n{stderr[-4000:]}")
    result = json.loads(lines[-1])
    if side == "pipeline":
        result.update(_pipeline_result(out_dir))
    tree_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result.update(side=side, wall_s=round(wall, 2), tree_cpu_s=round(tree_cpu, 2),
                  peak_rss_mib=round(sampler.peak_rss / 2**20), peak_pss_mib=round(sampler.peak_pss / 2**20))
    if side == "pipeline":  # its own tokenizer calls' CPU against all of its CPU, in one process
        result["tokenizer_share_of_cpu"] = round(result["tokenizer_cpu_s"] / tree_cpu, 3)
    cpu = result["loop_cpu_s"] if side == "raw" else tree_cpu
    seconds = result["loop_wall_s"] if side == "raw" else wall
    result["tokens_per_cpu_s"] = round(result["tokens"] / cpu)
    result["tokens_per_s"] = round(result["tokens"] / seconds)
    return result


def _run_sides(args: argparse.Namespace, scale: int, files: dict[str, list[str]], corpus_dir: Path, work: Path) -> list[dict[str, Any]]:
    results = []
    for repeat in range(args.repeats):
        order = list(args.sides) if repeat % 2 == 0 else list(reversed(args.sides))
        for side in order:
            log(f"x{scale} repeat {repeat + 1}: {side}")
            result = _measure(side, args, corpus_dir, work / f"out-{side}")
            result.update(scale=scale, repeat=repeat + 1)
            log(f"  {result['tokens']:,} tokens, {result['wall_s']} s wall, {result['tree_cpu_s']} s CPU, "
                f"{result['tokens_per_cpu_s']:,} tokens/CPU-s, peak RSS {result['peak_rss_mib']} MiB (PSS {result['peak_pss_mib']})")
            results.append(result)
    return results


# --------------------------------------------------------------------------- report


def _summary(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for scale in sorted({r["scale"] for r in results}):
        by_side = {side: [r for r in results if r["scale"] == scale and r["side"] == side] for side in _SIDES}
        tokens = {r["tokens"] for r in results if r["scale"] == scale}
        if len(tokens) != 1:
            raise RuntimeError(f"x{scale}: the sides tokenized different amounts: {sorted(tokens)}")
        row: dict[str, Any] = {"scale": scale, "tokens": tokens.pop()}
        for side, runs in by_side.items():
            if runs:
                row[side] = {key: median(r[key] for r in runs) for key in
                             ("tokens_per_cpu_s", "tokens_per_s", "wall_s", "tree_cpu_s", "peak_rss_mib", "peak_pss_mib")}
        pipe = row.get("pipeline")
        if pipe:
            pipe["tokenizer_share_of_cpu"] = round(median(r["tokenizer_share_of_cpu"] for r in by_side["pipeline"]), 3)
        for other in ("raw", "datasets"):
            if pipe and other in row:
                row[f"pipeline_vs_{other}_per_cpu_s"] = round(pipe["tokens_per_cpu_s"] / row[other]["tokens_per_cpu_s"], 3)
                row[f"pipeline_vs_{other}_wall"] = round(pipe["tokens_per_s"] / row[other]["tokens_per_s"], 3)
        if pipe and "datasets" in row:
            row["pipeline_vs_datasets_peak_rss"] = round(pipe["peak_rss_mib"] / row["datasets"]["peak_rss_mib"], 3)
            row["pipeline_vs_datasets_peak_pss"] = round(pipe["peak_pss_mib"] / row["datasets"]["peak_pss_mib"], 3)
        rows.append(row)
    return rows


def _print_table(rows: list[dict[str, Any]]) -> None:
    print("\n| scale | side | tokens/CPU-s | tokens/s (wall) | wall s | tree CPU s | peak RSS MiB | peak PSS MiB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        for side in _SIDES:
            if side in row:
                s = row[side]
                print(f"| x{row['scale']} | {side} | {s['tokens_per_cpu_s']:,.0f} | {s['tokens_per_s']:,.0f} | {s['wall_s']:.1f} "
                      f"| {s['tree_cpu_s']:.1f} | {s['peak_rss_mib']:,.0f} | {s['peak_pss_mib']:,.0f} |")
    print("\n| scale | tokens | pipeline/raw per CPU-s | tokenizer share of the pipeline's CPU | pipeline/datasets per CPU-s | "
          "pipeline/datasets wall | pipeline/datasets peak RSS | pipeline/datasets peak PSS |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        share = row["pipeline"]["tokenizer_share_of_cpu"] if "pipeline" in row else "-"
        print(f"| x{row['scale']} | {row['tokens']:,} | {row.get('pipeline_vs_raw_per_cpu_s', '-')} | {share} | "
              f"{row.get('pipeline_vs_datasets_per_cpu_s', '-')} | {row.get('pipeline_vs_datasets_wall', '-')} | "
              f"{row.get('pipeline_vs_datasets_peak_rss', '-')} | {row.get('pipeline_vs_datasets_peak_pss', '-')} |")


def _child(args: argparse.Namespace, rest: list[str]) -> int:
    if args.side == "pipeline":
        return _side_pipeline(rest)
    files = json.loads((Path(args.corpus_dir) / "files.json").read_text())
    if args.side == "raw":
        result = _side_raw(files, args.batch_size)
    else:
        result = _side_datasets(files, args.out_dir, args.num_proc)
    print(json.dumps(result))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = _parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if args.side:
        return _child(args, rest)
    from beam_pipelines.datasets import convert

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="spanwise-bench-preprocess-"))
    base = work / "20newsgroups" / "tsv"
    if not (base / "train.tsv").exists():
        log(f"converting 20 Newsgroups to TSV in {base}")
        convert("20newsgroups", str(base))
    results = []
    for scale in args.scales:
        corpus_dir = work / f"20newsgroups-files-x{scale}"
        files = _write_scaled(base, corpus_dir, scale)
        (corpus_dir / "files.json").write_text(json.dumps(files))
        results += _run_sides(args, scale, files, corpus_dir, work / f"run-x{scale}")
    rows = _summary(results)
    pipeline_runs = [r for r in results if r["side"] == "pipeline"]
    print(f"\nmachine: {json.dumps(machine())}")
    if pipeline_runs:
        print(f"pipeline runner: {pipeline_runs[0]['runner']}, shuffle: {pipeline_runs[0]['shuffle']}, "
              f"extra flags: {args.pipeline_args or '(none)'}")
    _print_table(rows)
    write_json(args.json, {"args": vars(args), "machine": machine(), "runs": results, "summary": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
