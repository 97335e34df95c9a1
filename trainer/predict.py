"""``python -m trainer.predict``: one prediction per document with a trained model.

Uses the sequence-length function the model was trained with (from its ``run_config.json``),
with deterministic draws, and optionally several views per long document (``--eval_views``)
whose logits are averaged. Output: JSONL (``id``, ``label``, ``probabilities``) or, for a
``.tsv`` path, a TSV with one probability column per label.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Sequence

import numpy as np
import torch

import spanwise_io
from schemas.manifest import check_compatible, read_manifest
from tokenization.seq_len import validate_seq_config
from tokenization.tokenizer import load_tokenizer, tokenizer_identity
from trainer.data import DataLimits, ShardProblem, scan_split
from trainer.distributed import init_distributed, shutdown_distributed
from trainer.evaluation import parse_views, render_predictions, score_documents
from trainer.features import FeatureBuilder, SpecialTokenTemplate
from trainer.task import RUN_CONFIG_NAME, load_classifier, local_model_path

__all__ = ["predict", "main"]

log = logging.getLogger("trainer.predict")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer.predict", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="a model saved by trainer.task (local or gs://)")
    parser.add_argument("--data_dir", required=True, help="shards + manifest.json made by beam_pipelines.preprocess")
    parser.add_argument("--split", default="test", help="the split to predict")
    parser.add_argument("--output", required=True, help="predictions file (.jsonl or .tsv; local or gs://)")
    parser.add_argument("--eval_views", default=None, help="1, K or 'chunks' (default: as in training)")
    parser.add_argument("--batch_size", "--per_device_eval_batch_size", dest="batch_size", type=int, default=32,
                        help="views per batch")
    parser.add_argument("--dataloader_num_workers", type=int, default=0, help="DataLoader workers building the views")
    parser.add_argument("--use_cpu", action="store_true", help="run on the CPU even if a GPU is present")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (GPU with bf16, or CPU)")
    parser.add_argument("--fp16", action="store_true", help="float16 autocast (GPU only)")
    parser.add_argument("--skip_bad_shards", action="store_true",
                        help="skip (and count) missing, corrupt or foreign shards and unreadable row groups instead of stopping")
    return parser


def predict(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Write the predictions; return a summary (documents, output path, accuracy where labelled)."""
    args = build_parser().parse_args(argv)
    if args.bf16 and args.fp16:
        raise ValueError("choose one of --bf16 and --fp16")
    if args.batch_size < 1 or args.dataloader_num_workers < 0:
        raise ValueError("--batch_size must be >= 1 and --dataloader_num_workers >= 0")
    ctx = init_distributed(args.use_cpu)
    try:
        if args.fp16 and ctx.device.type != "cuda":
            raise ValueError("--fp16 needs a GPU; use --bf16 on a CPU")
        model_dir = local_model_path(args.model_dir)
        config_path = spanwise_io.join(args.model_dir, RUN_CONFIG_NAME)
        if not spanwise_io.exists(config_path):
            raise ValueError(f"{config_path}: missing; --model_dir must be a model saved by trainer.task")
        run_config = json.loads(spanwise_io.read_bytes(config_path))
        train_args = run_config["args"]
        tokenizer = load_tokenizer(model_dir)
        manifest = read_manifest(args.data_dir)
        check_compatible(manifest, tokenizer_identity(tokenizer, args.model_dir))
        label_names = run_config["label_names"]
        data_labels = [name for name, _ in sorted(manifest["label_map"].items(), key=lambda item: item[1])]
        if data_labels != label_names:
            raise ValueError(f"{args.data_dir}: label map {data_labels} differs from the model's {label_names}")
        seq = run_config["seq_len"]
        seq_config = validate_seq_config(seq["name"], seq["params"], seq["max_seq_length"], tokenizer)
        features = FeatureBuilder(seq_config, SpecialTokenTemplate.from_tokenizer(tokenizer), train_args["seed"],
                                  max_chunks=train_args.get("max_chunks"))  # --max_chunks and --pooling as in training
        views = parse_views(args.eval_views if args.eval_views is not None else train_args.get("eval_views", "1"))

        # the same up-front check as training (listing + Parquet footers), before the model is loaded
        limits = DataLimits(len(label_names), True, manifest["tokenizer"].get("vocab_size"))
        scan = scan_split(args.data_dir, manifest, args.split, limits=limits, skip_bad_shards=args.skip_bad_shards)
        for problem in scan.skipped:
            log.warning("--skip_bad_shards: skipping %s (%s rows)", problem, problem.rows)
        skipped_row_groups: list[ShardProblem] | None = [] if args.skip_bad_shards else None
        model = load_classifier(model_dir).to(ctx.device)
        doc_ids, labels, logits = score_documents(
            model,
            scan.units,
            features,
            views=views,
            batch_size=args.batch_size,
            device=ctx.device,
            pad_token_id=int(tokenizer.pad_token_id or 0),
            autocast_dtype=torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None,
            rank=ctx.rank,
            world_size=ctx.world_size,
            limits=limits,
            skipped=skipped_row_groups,
            num_workers=args.dataloader_num_workers,
            pooling=train_args.get("pooling", "mean"),
        )
        for problem in skipped_row_groups or ():
            log.warning("--skip_bad_shards: skipping %s (%s rows)", problem, problem.rows)
        probabilities = torch.softmax(torch.from_numpy(logits), dim=1).numpy() if len(doc_ids) else np.zeros((0, len(label_names)))
        predicted = probabilities.argmax(axis=1) if len(doc_ids) else np.zeros(0, dtype=np.int64)
        if ctx.is_main:
            spanwise_io.write_bytes(args.output, render_predictions(args.output, doc_ids, logits, label_names))
        labelled = labels >= 0
        summary: dict[str, Any] = {"documents": len(doc_ids), "output": args.output, "eval_views": str(views)}
        if scan.skipped or skipped_row_groups:
            skipped = [problem.to_dict() for problem in [*scan.skipped, *(skipped_row_groups or ())]]
            summary["skipped"] = {"files": len(scan.skipped), "row_groups": len(skipped_row_groups or ()), "details": skipped}
        if labelled.any():
            summary["accuracy"] = float((predicted[labelled] == labels[labelled]).mean())
        return summary
    finally:
        shutdown_distributed()


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        summary = predict(argv)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
