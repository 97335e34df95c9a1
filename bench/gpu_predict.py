"""The prediction half of the GPU check (issue 21): ``transformers.pipeline`` against ``trainer.predict``
and the Python API, at 512 tokens, bf16, with and without worker processes and a token budget.

    bench/gpu_check.sh                 # runs it after the training check (see there)
    python3 bench/gpu_predict.py [--docs 5000] [--workers 4] [--max_tokens_per_batch 32768] [--json FILE]
    python3 bench/gpu_predict.py --smoke   # the same, tiny, on this CPU: checks the script, measures nothing

Self-contained like ``bench/gpu_check.py`` (no network, no bundled corpus or model): it makes the
30,522-word tokenizer of ``gpu_check.make_tokenizer``, ``--docs`` documents of those words
(lengths drawn like a news corpus: median about 230 words, 3% over 2,000), and a randomly
initialised BERT-base-size classifier whose record says ``head`` at 512 tokens
(``bench/predict.py --random_model bert-base``: throughput does not depend on the weights'
values). Then ``bench/predict.py`` times, each side in a fresh process (start-up and model load
included, as there), one view per document, bf16 weights everywhere:

* ``transformers.pipeline`` (truncation at 512), and ours with the host side in one process:
  ``--input_files`` (``raw``) and the API with 0 workers and ``--batch_size`` views a batch;
* ours with ``--workers`` host worker processes;
* ours with those workers and ``--max_tokens_per_batch``.

It prints the GPU's name and one table: documents/s, CPU seconds of the process tree (the issue's
goal: under half the wall seconds), and the ratio to the pipeline's documents/s.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_check import LABELS, SPECIAL, VOCAB_SIZE, log, make_tokenizer  # noqa: E402


def make_documents(path: Path, count: int, seed: int = 21) -> None:
    """``count`` documents of made-up words, as the TSV ``bench/predict.py --docs_tsv`` reads."""
    rng = random.Random(seed)
    words = VOCAB_SIZE - len(SPECIAL)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("id\talpha\tlabel\ttext_a\n")
        for index in range(count):
            length = max(8, min(6000, int(rng.lognormvariate(5.45, 1.0))))  # median e^5.45 = 233 words
            text = " ".join(f"w{rng.randrange(words)}" for _ in range(length))
            handle.write(f"doc-{index:06d}\ta\t{LABELS[index % len(LABELS)]}\t{text}\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/gpu_predict.py", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny model and 96 documents on the CPU (checks the script)")
    parser.add_argument("--work_dir", default="/tmp/spanwise-gpu-check")
    parser.add_argument("--docs", type=int, default=5000, help="documents per side (default 5000; smoke 96)")
    parser.add_argument("--batch_size", type=int, default=64, help="views per batch without a budget (default 64)")
    parser.add_argument("--workers", type=int, default=4, help="host worker processes of our sides (default 4)")
    parser.add_argument("--max_tokens_per_batch", type=int, default=32768,
                        help="the token budget of the last variant (default 32768 = 64 views of 512)")
    parser.add_argument("--threads", type=int, default=4, help="torch threads of every side (default 4)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    import torch

    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu_predict: no CUDA GPU visible to torch (run with --smoke to check the script on a CPU)", file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "none (--smoke, CPU)"
    docs = 96 if args.smoke else args.docs
    max_seq = 128 if args.smoke else 512
    work = Path(args.work_dir) / ("predict-smoke" if args.smoke else "predict")
    tokenizer_dir, docs_tsv = work / "tokenizer", work / f"docs-{docs}.tsv"
    if not (tokenizer_dir / "tokenizer.json").exists():
        log("building the tokenizer")
        make_tokenizer(tokenizer_dir)
    if not docs_tsv.exists():
        make_documents(docs_tsv, docs)
    common = ["--docs_tsv", str(docs_tsv), "--random_model", "tiny" if args.smoke else "bert-base", "--tokenizer_dir",
              str(tokenizer_dir), "--max_seq_length", str(max_seq), "--bf16", "--views", "1", "--device", device,
              "--threads", str(args.threads), "--batch_size", str(args.batch_size), "--work_dir", str(work)]
    variants = [("0 workers, batches of views", ["--sides", "hf_pipeline", "raw", "api", "--workers", "0"]),
                (f"{args.workers} workers", ["--sides", "raw", "api", "--workers", str(args.workers)]),
                (f"{args.workers} workers, {args.max_tokens_per_batch} tokens a batch",
                 ["--sides", "raw", "api", "--workers", str(args.workers), "--max_tokens_per_batch",
                  str(args.max_tokens_per_batch)])]
    rows: list[dict[str, Any]] = []
    failed = False
    for name, flags in variants:
        out = work / "result.json"
        started = time.perf_counter()
        result = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "predict.py"), *common, *flags,
                                 "--json", str(out)], cwd=REPO_ROOT, capture_output=True, text=True)
        if result.returncode != 0 or not out.exists():
            print(f"{name}: FAILED (exit {result.returncode})\n{result.stderr[-3000:]}", flush=True)
            failed = True
            continue
        for row in json.loads(out.read_text())["results"]:
            rows.append({"variant": "" if row["side"] == "hf_pipeline" else name, **row})
        out.unlink()
        log(f"{name}: {time.perf_counter() - started:.0f} s")
    anchor = next((r["docs_per_s"] for r in rows if r["side"] == "hf_pipeline"), float("nan"))
    print(f"\n{gpu}: bf16 weights, {'tiny' if args.smoke else 'BERT-base-size'} random init, max_seq_length {max_seq}, "
          f"head (one view), {docs} documents, {args.threads} torch threads; docs/s of the whole process")
    print(f"{'side':<12} | {'variant':<44} | {'docs/s':>8} | {'CPU s':>7} | {'wall s':>7} | x pipeline")
    for row in rows:
        print(f"{row['side']:<12} | {row['variant']:<44} | {row['docs_per_s']:8.1f} | {row['tree_cpu_s']:7.1f} | "
              f"{row['wall_s']:7.1f} | {row['docs_per_s'] / anchor:8.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"gpu": gpu, "docs": docs, "rows": rows}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
