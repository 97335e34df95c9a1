"""The GPU check of issue 13: our trainer against the Hugging Face Trainer on one GPU, bf16, max_seq_length 512.

    bench/gpu_check.sh            # on the GPU machine (see there); --smoke: the same on this CPU, tiny

Self-contained for a machine with torch, transformers, accelerate, pyarrow and tokenizers but
none of our preprocessing stack (Beam, the bundled corpora and model): it builds

* a BERT WordPiece tokenizer with a vocabulary of 30,522 made-up words (``tokenizers``),
* a BERT-base-size model (hidden 768, 12 layers, 12 heads, random init; ``--smoke``: tiny),
* shards of 3 labels with token ids drawn directly (no text): lengths 64 to 4,000 tokens, about
  a third shorter than 510, written with the shard schema and a manifest that ``read_manifest``
  validates, as the pipeline would,

then times each variant on both sides with ``bench/train_throughput.py``'s children (fresh
processes; the same steps, batch, bf16, ``head`` at 512, the same examples): samples/s from the
end of the warm-up steps to the last step. It prints the GPU's name and one table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

LABELS = ("alpha", "beta", "gamma")
VOCAB_SIZE = 30522
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def make_tokenizer(directory: Path) -> Any:
    """A fast BERT tokenizer (WordPiece, lower-case, [CLS] A [SEP] B [SEP]) over made-up words."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(SPECIAL + [f"w{i}" for i in range(VOCAB_SIZE - len(SPECIAL))])}
    backend = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=512,
    )
    tokenizer.save_pretrained(directory)
    return tokenizer


def make_model(directory: Path, smoke: bool) -> None:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    size = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64) if smoke else dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    BertModel(BertConfig(vocab_size=VOCAB_SIZE, max_position_embeddings=512, **size)).save_pretrained(directory)


def make_shards(directory: Path, tokenizer: Any, tokenizer_dir: Path, docs: dict[str, int]) -> None:
    """Shards and manifest.json as the pipeline writes them, with random token ids (seeded)."""
    import numpy as np
    import pyarrow.parquet as pq

    from schemas.manifest import SCHEMA_VERSION, write_manifest
    from schemas.shard import COMPRESSION, ROW_GROUP_SIZE, records_to_table, shard_name
    from tokenization.tokenizer import tokenizer_identity

    rng = np.random.default_rng(13)
    directory.mkdir(parents=True, exist_ok=True)
    splits: dict[str, Any] = {}
    for split, count in docs.items():
        lengths = np.where(rng.random(count) < 0.35, rng.integers(64, 510, count), rng.integers(510, 4000, count))
        records = [
            {"id": f"{split}-{i:06d}", "label": int(i % len(LABELS)),
             "input_ids_a": rng.integers(len(SPECIAL), VOCAB_SIZE, int(n)).astype(np.int32).tolist(), "input_ids_b": [],
             "num_tokens_a": int(n), "num_tokens_b": 0, "alpha": "a"}
            for i, n in enumerate(lengths)
        ]
        name = shard_name(split, 0, 1)
        table = records_to_table(sorted(records, key=lambda r: r["id"]))
        pq.write_table(table, directory / name, row_group_size=ROW_GROUP_SIZE, compression=COMPRESSION)
        splits[split] = {"read": count, "records": count, "rejected": 0, "rejected_by_reason": {},
                         "files": [{"name": name, "rows": count, "row_groups": -(-count // ROW_GROUP_SIZE)}]}
    write_manifest(str(directory), {
        "schema_version": SCHEMA_VERSION, "created_at": "gpu-check", "max_doc_tokens": 32768,
        "tokenizer": tokenizer_identity(tokenizer, str(tokenizer_dir)),
        "label_map": {label: index for index, label in enumerate(LABELS)}, "splits": splits,
    })


def _rate(stamps: Sequence[float], warmup: int, batch_size: int, docs_per_step: Sequence[int] | None = None) -> float:
    """Documents per second after the warm-up (``docs_per_step``: token-budget batches vary in size)."""
    documents = sum(docs_per_step[warmup : len(stamps)]) if docs_per_step else (len(stamps) - warmup) * batch_size
    return documents / (stamps[-1] - stamps[warmup - 1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/gpu_check.sh", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model, few steps, on the CPU (checks this script)")
    parser.add_argument("--work_dir", default="/tmp/spanwise-gpu-check")
    parser.add_argument("--variants", default="adamw_torch_fused,group_by_length,torch_compile,max_tokens_grouped,pack_views",
                        help="of bench/train_throughput.py's; max_tokens, max_tokens_grouped and pack_views (issue 21: "
                        "--max_tokens_per_batch batch x 512, with --group_by_length, with --pack_views) run ours only")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 60; smoke 8)")
    parser.add_argument("--warmup_steps", type=int, default=None, help="untimed steps (default 15; smoke 3)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers on both sides")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    steps = args.steps or (8 if args.smoke else 60)
    warmup = args.warmup_steps or (3 if args.smoke else 15)
    batch = 4 if args.smoke else args.batch_size
    import torch
    import transformers

    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible to torch (run with --smoke to check the script on a CPU)", file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "none (--smoke, CPU)"
    print(f"GPU: {gpu}; torch {torch.__version__}, transformers {transformers.__version__}, "
          f"CUDA {torch.version.cuda}, bf16 supported: {device == 'cuda' and torch.cuda.is_bf16_supported()}", flush=True)

    work = Path(args.work_dir) / ("smoke" if args.smoke else "bert-base")
    model_dir, prep_dir = work / "model", work / "prep"
    if not (prep_dir / "manifest.json").exists():
        from tokenization.tokenizer import load_tokenizer

        log("building the tokenizer, the model (its own tokenizer beside it) and the shards")
        make_tokenizer(model_dir)
        make_model(model_dir, args.smoke)
        docs = max(steps * batch + 64, 256)
        make_shards(prep_dir, load_tokenizer(str(model_dir)), model_dir, {"train": docs, "dev": 64})
    variants = args.variants.split(",")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore")
    from train_throughput import OURS_ONLY

    rows: dict[str, dict[str, float]] = {}
    padding: dict[str, float] = {}
    for variant in variants:
        for side in ("ours",) if variant in OURS_ONLY else ("ours", "hf"):
            command = [sys.executable, str(REPO_ROOT / "bench" / "train_throughput.py"), "--child", side,
                       "--data", str(prep_dir), "--model", str(model_dir), "--steps", str(steps), "--batch_size", str(batch),
                       "--max_seq_length", "512", "--threads", str(os.cpu_count() or 1), "--variant", variant,
                       "--device", device, "--bf16", "--dataloader_num_workers", str(args.workers)]
            started = time.perf_counter()
            result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
            lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
            if result.returncode != 0 or not lines:
                print(f"{variant} {side}: FAILED (exit {result.returncode})\n{result.stderr[-3000:]}", flush=True)
                rows.setdefault(variant, {})[side] = float("nan")
                continue
            out = json.loads(lines[-1])
            rate = _rate(out["stamps"], warmup, batch, out.get("docs_per_step"))
            rows.setdefault(variant, {})[side] = rate
            if side == "ours":
                padding[variant] = out.get("padding_fraction", float("nan"))
            log(f"{variant:>17} {side:>4}: {rate:9.1f} samples/s ({len(out['stamps'])} steps, process "
                f"{time.perf_counter() - started:.0f} s)")
    print(f"\n{gpu}: bf16, BERT-base-size random init (smoke: tiny), max_seq_length 512, head, batch {batch}, "
          f"{steps} steps ({warmup + 1}..{steps} timed), dataloader_num_workers {args.workers}")
    print(f"{'variant':>18} | {'ours samples/s':>14} | {'HF samples/s':>12} | ours / HF | padding ours | vs fixed")
    fixed = rows.get("adamw_torch_fused", {}).get("ours", float("nan"))
    for variant, rates in rows.items():
        ratio = rates.get("ours", float("nan")) / rates.get("hf", float("nan"))
        hf = (f"{rates['hf']:12.1f} | {ratio:8.2f}x") if "hf" in rates else f"{'-':>12} | {'-':>9}"
        print(f"{variant:>18} | {rates.get('ours', float('nan')):14.1f} | {hf} | "
              f"{padding.get(variant, float('nan')):12.3f} | {rates.get('ours', float('nan')) / fixed:7.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"gpu": gpu, "steps": steps, "batch": batch, "rows": rows,
                                               "padding_fraction": padding}, indent=2))
    return 0 if all(rate == rate for rates in rows.values() for rate in rates.values()) else 1  # NaN: a side failed


if __name__ == "__main__":
    sys.exit(main())
