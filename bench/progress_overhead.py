"""What showing progress costs: the preprocessing command and both prediction commands, progress on and ``--quiet``.

    python bench/progress_overhead.py [--scale 10] [--docs 2000] [--repeats 1] [--sides preprocess raw beam] \\
        [--work_dir DIR] [--json FILE]

Each run is the command a user runs, in its own process, output not a terminal (plain progress
lines every 10 s, as in CI or a log file): ``python -m beam_pipelines.preprocess`` on
``bench/preprocess.py``'s corpus at ``--scale`` (20 Newsgroups x k, many files, every third
gzipped; FnApiRunner), and ``trainer.predict --input_files`` (``raw``) and
``beam_pipelines.predict`` (``beam``) on ``bench/predict.py``'s ``--docs`` documents with its
model. Runs alternate progress on / ``--quiet`` ``--repeats`` times. Per run: the process's CPU
seconds (all its threads, from ``getrusage``) and, with progress on, the CPU seconds the process
itself spent on progress (``spanwise_io.progress.cpu_spent``: the reporting thread's ticks and the
read step's counting, its file writes included, timed with ``time.thread_time``). The second
is the overhead, measured exactly rather than as the difference of two noisy runs; the
difference on/quiet is printed as well, as a check of its size.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, child_env, ensure_corpus, log, machine, minilm_dir, write_json  # noqa: E402


def _child(side: str, argv: list[str]) -> int:
    """Run one command here; print ``{"cpu", "progress_cpu", "wall"}`` as the last line of stdout."""
    started = time.perf_counter()
    if side == "preprocess":
        sys.modules["torch"] = None  # type: ignore[assignment]  (what beam_pipelines/preprocess.py's __main__ does)
        from beam_pipelines import preprocess

        code = preprocess.main(argv)
    elif side == "raw":
        from trainer.predict import main

        code = main(argv)
    else:
        from beam_pipelines import predict

        code = predict.main(argv)
    from spanwise_io.progress import cpu_spent

    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"cpu": usage.ru_utime + usage.ru_stime, "progress_cpu": cpu_spent(),
                      "wall": time.perf_counter() - started}))
    return code


def _run(side: str, argv: list[str], quiet: bool) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--", *argv, *(["--quiet"] if quiet else [])]
    result = subprocess.run(command, cwd=REPO_ROOT, env=child_env(2, TOKENIZERS_PARALLELISM="true"),
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{side} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    lines = [line for line in result.stderr.splitlines() if line.startswith(("preprocess: read", "predict: read", "predict: scored"))]
    return {**json.loads(result.stdout.splitlines()[-1]), "progress_lines": len(lines), "shown": lines,
            "printed": result.stdout.splitlines()[:-1]}


def _commands(args: argparse.Namespace, work: Path) -> dict[str, list[str]]:
    commands: dict[str, list[str]] = {}
    if "preprocess" in args.sides:
        import preprocess as bench_preprocess  # bench/preprocess.py: its corpus

        base, _ = ensure_corpus(work, "20newsgroups")
        files = bench_preprocess._write_scaled(base, work / f"scaled-x{args.scale}", args.scale)
        out = Path(tempfile.mkdtemp(prefix="progress-prep-", dir=work))
        commands["preprocess"] = ["--train_files", *files["train"], "--dev_files", *files["dev"], "--test_files",
                                  *files["test"], "--output_dir", str(out), "--tokenizer", minilm_dir(), "--overwrite"]
    if {"raw", "beam"} & set(args.sides):
        import predict as bench_predict  # bench/predict.py: its documents and model

        docs = bench_predict._documents(work, "20newsgroups", args.docs)
        model = bench_predict._model(work, "20newsgroups", "cpu")
        out = Path(tempfile.mkdtemp(prefix="progress-predict-", dir=work))
        commands["raw"] = ["--model_dir", model, "--input_files", str(docs), "--output", str(out / "p.jsonl"), "--use_cpu"]
        commands["beam"] = ["--model_dir", model, "--input_files", str(docs), "--output_dir", str(out / "beam"),
                            "--device", "cpu", "--overwrite"]
    return {side: commands[side] for side in args.sides}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return _child(argv[1], argv[3:])
    parser = argparse.ArgumentParser(prog="python bench/progress_overhead.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=10, help="copies of 20 Newsgroups to preprocess (default 10)")
    parser.add_argument("--docs", type=int, default=2000, help="documents to predict (default 2000)")
    parser.add_argument("--repeats", type=int, default=1, help="pairs of runs (progress on, --quiet) per side")
    parser.add_argument("--sides", nargs="+", default=["preprocess", "raw", "beam"], choices=["preprocess", "raw", "beam"])
    parser.add_argument("--work_dir", default=str(Path(tempfile.gettempdir()) / "spanwise-bench"))
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    for side, command in _commands(args, work).items():
        for repeat in range(args.repeats):
            for quiet in ((False, True) if repeat % 2 == 0 else (True, False)):
                log(f"{side} {'--quiet' if quiet else 'progress on'} ({repeat + 1}/{args.repeats})")
                results.append({"side": side, "quiet": quiet, **_run(side, command, quiet)})
    print(f"\n{'side':<11} {'progress':<8} {'CPU s':>8} {'wall s':>7} {'progress CPU s':>14} {'share':>7} {'lines':>5}")
    for r in results:
        share = f"{r['progress_cpu'] / r['cpu']:.3%}" if not r["quiet"] else ""
        print(f"{r['side']:<11} {'off' if r['quiet'] else 'on':<8} {r['cpu']:>8.2f} {r['wall']:>7.1f} "
              f"{r['progress_cpu']:>14.4f} {share:>7} {r['progress_lines']:>5}")
    for side in dict.fromkeys(r["side"] for r in results):
        on = [r["cpu"] for r in results if r["side"] == side and not r["quiet"]]
        off = [r["cpu"] for r in results if r["side"] == side and r["quiet"]]
        print(f"{side}: mean CPU s on {sum(on) / len(on):.2f}, --quiet {sum(off) / len(off):.2f} "
              f"(difference {sum(on) / len(on) - sum(off) / len(off):+.2f} s: run-to-run noise included)")
    if args.json:
        write_json(args.json, {"machine": machine(), "args": vars(args), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
