"""Training throughput: steady-state samples/s of our loop against a Hugging Face ``Trainer``.

    python bench/train_throughput.py [--models tiny,minilm] [--steps_tiny 150] [--steps_minilm 20] \\
        [--variants adamw_torch_fused,adamw_torch,group_by_length,torch_compile,max_tokens,max_tokens_grouped,pack_views] \
        [--torch_compile_backend inductor] [--max_tokens_per_batch N] \\
        [--warmup_steps 5] [--repeats 3] [--batch_size 8] [--max_seq_length 128] [--threads 1] \\
        [--corpus 20newsgroups|bbc] [--work_dir DIR] [--json FILE]

The HF Trainer side needs ``accelerate`` (``requirements-bench.txt``). Each variant sets the same
options on both sides, under the same names:

``adamw_torch_fused``
    ``--optim adamw_torch_fused`` (our default): torch's fused AdamW kernel.
``adamw_torch``
    ``--optim adamw_torch``: torch's AdamW, ``foreach`` implementation.
``group_by_length``
    fused AdamW + ``--group_by_length``. Ours sorts by length within each ``--shuffle_buffer``
    window; HF (``train_sampling_strategy="group_by_length"``, transformers 5's spelling) with its
    ``LengthGroupedSampler``, within megabatches of 50 batches of its (in-memory) examples. The batches then differ between the sides; the table gives each side's mean padded
    length (tokens per sample) beside its rate.
``torch_compile``
    fused AdamW + ``--torch_compile`` with ``--torch_compile_backend`` (inductor by default, as
    torch's and HF's). Compilation falls in the untimed warm-up steps; a new batch shape later
    may recompile inside the timed ones (dynamic padding), on both sides alike.

``max_tokens``, ``max_tokens_grouped``, ``pack_views`` (issue 21; ours only: the HF Trainer has neither)
    fused AdamW + ``--max_tokens_per_batch`` (default batch size x max_seq_length, the most a fixed
    batch can hold), + ``--group_by_length``, or + ``--pack_views``. Their batches hold varying
    numbers of documents: samples/s counts the documents of each timed step (from the run's
    ``--sample_trace_file``); the table adds our padding fraction (``train_results.json``'s, over
    the whole run), the rate against ours with fixed batches, and real (non-pad) tokens per
    CPU-second, which does not depend on how long the documents of the few timed steps were.

Without grouping both sides train the same model on the same documents, batch by batch identical:

ours
    ``trainer.task.Trainer`` (``setup()`` + ``train()``), as ``python -m trainer.task --do_train
    --use_cpu --max_seq_length 128 --seq_len_func head --per_device_train_batch_size 8
    --max_steps N`` runs it: streaming the shards, head at 128 per sample, dynamic padding, fused
    AdamW, linear schedule, gradient clipping at 1.0, TensorBoard every 10 steps.
Hugging Face
    ``transformers.Trainer`` with ``DataCollatorWithPadding`` (pad to the longest in the batch),
    its default fused AdamW and linear schedule, ``max_grad_norm`` 1.0, TensorBoard every 10
    steps, no saving. Its dataset holds the very examples our loader builds for epoch 0
    (``FeatureBuilder.train_example`` on the rows of our ``EpochPlan``), in our batch order, read
    with a ``SequentialSampler`` (the one change to HF's defaults: a ``_get_train_sampler``
    override), so every step of both sides sees the same tensors. Its data are therefore ready
    in memory; ours are read, cut and padded inside the timed loop.

Same batch size, same thread count (``OMP_NUM_THREADS`` and ``torch.set_num_threads``), same
number of steps, ``dataloader_num_workers`` 0 on both, CPU. Start-up is excluded: a global torch
optimizer post-hook timestamps every optimizer step on both sides, and the rate is taken from the
end of step ``--warmup_steps`` to the end of the last step, in wall time and in CPU time of the
process (all threads: on a shared machine a neighbour's burst stretches wall time, not CPU
time). Each (model, side) run is a fresh
process; runs are interleaved, their order rotated each round; medians are reported. Target
(design.md section 8): ours / Hugging Face >= 1.0.

``tiny`` is a random BERT of hidden size 32 (steps of milliseconds: shows the per-step overhead
of each loop, data path included); ``minilm`` is the bundled all-MiniLM-L6-v2 (22.7M parameters:
compute-bound, the realistic case).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402  (puts the repo on sys.path)

__all__ = ["main"]


def _step_clock() -> list[float]:
    """perf_counter() at the return of every optimizer step of this process."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    stamps: list[float] = []

    def hook(optimizer: Any, args: Any, kwargs: Any) -> None:
        stamps.append(time.perf_counter())
        _CPU_STAMPS.append(time.process_time())
        if len(stamps) == 1:
            _THREADS.append(torch.get_num_threads())

    register_optimizer_step_post_hook(hook)
    return stamps


_THREADS: list[int] = []  # torch threads seen at the first step (a library may change them)
_CPU_STAMPS: list[float] = []  # process CPU time (all threads) at the return of every optimizer step


def _shape_log(model: Any) -> list[list[int]]:
    """Shapes of ``input_ids`` of every forward call of ``model`` (checks both sides saw the same batches)."""
    shapes: list[list[int]] = []

    def hook(module: Any, args: Any, kwargs: Any) -> None:
        ids = kwargs.get("input_ids") if kwargs else None
        if ids is None and args:
            ids = args[0]
        shapes.append(list(ids.shape) if ids is not None else [])

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return shapes


VARIANTS = ("adamw_torch_fused", "adamw_torch", "group_by_length", "torch_compile", "max_tokens", "max_tokens_grouped",
            "pack_views")
# issue 21: batches by token budget and packed views; Hugging Face's Trainer has neither, so these run ours only,
# beside ours with fixed batches (adamw_torch_fused) and --group_by_length
OURS_ONLY = ("max_tokens", "max_tokens_grouped", "pack_views")


def _variant_flags(args: argparse.Namespace, variant: str) -> list[str]:
    """Our flags for one variant (the HF side sets the TrainingArguments of the same names)."""
    optim = "adamw_torch" if variant == "adamw_torch" else "adamw_torch_fused"
    flags = ["--optim", optim]
    if variant == "group_by_length":
        flags.append("--group_by_length")
    if variant == "torch_compile":
        flags += ["--torch_compile", "--torch_compile_backend", args.torch_compile_backend]
    if variant in OURS_ONLY:
        flags += ["--max_tokens_per_batch", str(args.max_tokens_per_batch or args.batch_size * args.max_seq_length)]
    if variant == "max_tokens_grouped":
        flags.append("--group_by_length")
    if variant == "pack_views":
        flags.append("--pack_views")
    return flags


def _ours_argv(args: argparse.Namespace, output_dir: str, variant: str = "adamw_torch_fused") -> list[str]:
    device = ["--use_cpu"] if args.device == "cpu" else []
    return [
        "--data_dir", args.data, "--model_name_or_path", args.model, "--task_name", "throughput", "--output_dir", output_dir,
        "--do_train", *device, *(["--bf16"] if args.bf16 else []), "--dataloader_num_workers", str(args.dataloader_num_workers),
        "--disable_tqdm", "--max_seq_length", str(args.max_seq_length),
        "--seq_len_func", "head", "--per_device_train_batch_size", str(args.batch_size), "--max_steps", str(args.steps),
        "--learning_rate", "5e-5", "--logging_steps", "10", "--resume_from_checkpoint", "no", "--seed", "42",
        "--save_strategy", "no", *_variant_flags(args, variant),
    ]


def _child_ours(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from trainer.args import parse_args
    from trainer.task import Trainer

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as output_dir:
        trace = os.path.join(output_dir, "trace.jsonl")
        trainer = Trainer(parse_args([*_ours_argv(args, os.path.join(output_dir, "out"), args.variant),
                                      "--sample_trace_file", trace]))
        trainer.setup()
        shapes = _shape_log(trainer.model)
        tokens: list[list[int]] = []  # (real, padded) tokens of every batch
        count = trainer.padding.add

        def add(batch: dict[str, Any]) -> None:
            tokens.append([int(batch.get("real_tokens", 0)), int(batch.get("padded_tokens", 0))])
            count(batch)

        trainer.padding.add = add
        stamps = _step_clock()
        trainer.train()
        trainer.close()
        with open(trace, encoding="utf-8") as handle:  # documents per optimizer step (accumulation 1)
            docs = [len(json.loads(line)["ids"]) for line in handle]
    real = sum(entry["real_tokens"] for entry in trainer.epoch_stats)
    padded = sum(entry["padded_tokens"] for entry in trainer.epoch_stats)
    return {"stamps": stamps, "threads_at_step": _THREADS[:1], "shapes": shapes, "cpu_stamps": _CPU_STAMPS,
            "docs_per_step": docs, "tokens_per_step": tokens, "padding_fraction": 1 - real / padded if padded else 0.0}


def _our_examples(args: argparse.Namespace, trainer: Any) -> list[dict[str, Any]]:
    """The examples our loader builds for the first ``steps`` batches of epoch 0, in batch order."""
    from trainer.data import _RowGroupReader, read_rows

    stream = trainer.plan.dataset
    stream.set_epoch(0)
    plan = stream.plan()
    reader = _RowGroupReader()
    examples: list[dict[str, Any]] = []
    windows: dict[int, Any] = {}
    for batch_index in range(min(args.steps, plan.num_batches)):
        for doc_id, label, a, b in read_rows(plan, plan.batch_positions(batch_index, windows), reader):
            example = trainer.features.train_example(doc_id, label, a, b, 0)
            examples.append({"input_ids": example.input_ids, "token_type_ids": example.token_type_ids,
                             "attention_mask": [1] * len(example.input_ids), "labels": example.label})
    return examples


def _child_hf(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from torch.utils.data import Dataset, SequentialSampler
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from trainer.args import parse_args
    from trainer.task import Trainer as OurTrainer

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as output_dir:
        # our set-up gives the same model (same seed for the new head), tokenizer and examples (in our
        # plain batch order: with group_by_length HF groups them itself)
        ours = OurTrainer(parse_args(_ours_argv(args, os.path.join(output_dir, "ours"))))
        ours.setup()
        examples = _our_examples(args, ours)
        model, tokenizer = ours.model, ours.tokenizer
        ours.close()
        del ours

        class Examples(Dataset):
            def __len__(self) -> int:
                return len(examples)

            def __getitem__(self, index: int) -> dict[str, Any]:
                return examples[index]

        class InOrderTrainer(Trainer):
            def _get_train_sampler(self, train_dataset: Any = None) -> Any:
                return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

        variant = args.variant
        import dataclasses

        names = {field.name for field in dataclasses.fields(TrainingArguments)}
        grouping = {"train_sampling_strategy": "group_by_length" if variant == "group_by_length" else "random"} if (
            "train_sampling_strategy" in names) else {"group_by_length": variant == "group_by_length"}  # transformers 4
        training_args = TrainingArguments(
            output_dir=os.path.join(output_dir, "hf"), per_device_train_batch_size=args.batch_size,
            max_steps=args.steps, learning_rate=5e-5, logging_steps=10, save_strategy="no", eval_strategy="no",
            report_to=["tensorboard"], use_cpu=args.device == "cpu", bf16=args.bf16,
            dataloader_num_workers=args.dataloader_num_workers, seed=42, disable_tqdm=True, max_grad_norm=1.0,
            optim="adamw_torch" if variant == "adamw_torch" else "adamw_torch_fused",
            torch_compile=variant == "torch_compile",
            torch_compile_backend=args.torch_compile_backend if variant == "torch_compile" else None,
            **grouping,
        )
        trainer_class = Trainer if variant == "group_by_length" else InOrderTrainer
        hf = trainer_class(model=model, args=training_args, train_dataset=Examples(),
                           data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)
        shapes = _shape_log(model)
        stamps = _step_clock()
        hf.train()
        optim = training_args.optim
    return {"stamps": stamps, "optim": str(optim), "threads_at_step": _THREADS[:1], "shapes": shapes, "cpu_stamps": _CPU_STAMPS}


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python bench/train_throughput.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny,minilm", help="tiny and/or minilm, or model dirs (default tiny,minilm)")
    parser.add_argument("--steps_tiny", type=int, default=150, help="optimizer steps per run of the tiny model")
    parser.add_argument("--steps_minilm", type=int, default=20, help="optimizer steps per run of MiniLM (or other dirs)")
    parser.add_argument("--warmup_steps", type=int, default=5, help="steps not timed at the start of each run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch / OMP threads of both sides (default 1)")
    parser.add_argument("--corpus", default="20newsgroups", choices=["20newsgroups", "bbc"])
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, of {', '.join(VARIANTS)} (default: all, in this order)")
    parser.add_argument("--torch_compile_backend", default="inductor", help="of the torch_compile variant (default inductor)")
    parser.add_argument("--max_tokens_per_batch", type=int, default=None,
                        help="budget of the max_tokens, max_tokens_grouped and pack_views variants (default: batch size x "
                        "max_seq_length, the most a fixed batch can hold)")
    parser.add_argument("--work_dir", default=_common.DEFAULT_WORK_DIR)
    parser.add_argument("--json", default=None)
    # internal: one run in a fresh process
    parser.add_argument("--child", choices=["ours", "hf"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="adamw_torch_fused", choices=VARIANTS, help=argparse.SUPPRESS)
    # (children only; bench/gpu_check.py runs them on a GPU)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help=argparse.SUPPRESS)
    parser.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dataloader_num_workers", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup_steps < 1:
        parser.error("--repeats and --warmup_steps must be >= 1")
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown --variants {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    return args


def _rate(stamps: list[float], warmup: int, batch_size: int, docs_per_step: Sequence[int] | None = None) -> float:
    """Documents per second from the end of step ``warmup`` to the last step (``docs_per_step``: the
    documents of each step when batches are not of ``batch_size``, e.g. under a token budget)."""
    if len(stamps) <= warmup:
        raise RuntimeError(f"only {len(stamps)} optimizer steps recorded; need more than --warmup_steps {warmup}")
    documents = sum(docs_per_step[warmup : len(stamps)]) if docs_per_step else (len(stamps) - warmup) * batch_size
    return documents / (stamps[-1] - stamps[warmup - 1])


def _padded_length(shapes: list[list[int]]) -> float:
    """Mean padded input length (tokens per sample) over the batches a side trained on."""
    shapes = [shape for shape in shapes if len(shape) == 2]
    return sum(rows * length for rows, length in shapes) / max(sum(rows for rows, _ in shapes), 1)


def _median_step_rate(stamps: list[float], warmup: int, batch_size: int, docs_per_step: Sequence[int] | None = None) -> float:
    """The median over the timed steps of documents / step duration: robust to a neighbour's burst."""
    durations = [b - a for a, b in zip(stamps[warmup - 1 :], stamps[warmup:])]
    docs = docs_per_step[warmup : len(stamps)] if docs_per_step else [batch_size] * len(durations)
    return _common.median(n / d for n, d in zip(docs, durations))


def _token_rate(clock: list[float], warmup: int, tokens: Sequence[Sequence[int]] | None) -> float:
    """Real (non-pad) tokens per second over the timed steps: the work rate whatever the batches' sizes
    and however long the documents of the few timed steps happened to be (NaN without the counts)."""
    if not tokens:
        return float("nan")
    return sum(real for real, _ in tokens[warmup : len(clock)]) / (clock[-1] - clock[warmup - 1])


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.child:
        result = (_child_ours if args.child == "ours" else _child_hf)(args)
        print(json.dumps(result))
        return 0
    _, prep_dir = _common.ensure_corpus(args.work_dir, args.corpus)
    models: dict[str, tuple[str, int]] = {}
    for name in args.models.split(","):
        if name == "tiny":
            models[name] = (_common.ensure_tiny_model(args.work_dir), args.steps_tiny)
        elif name == "minilm":
            models[name] = (_common.minilm_dir(), args.steps_minilm)
        else:
            models[Path(name).name] = (name, args.steps_minilm)
    for name, (_, steps) in models.items():
        if steps <= args.warmup_steps + 1:
            raise SystemExit(f"{name}: steps {steps} must exceed --warmup_steps {args.warmup_steps} + 1")
    variants = args.variants.split(",")
    cases = [(model, variant, side) for model in models for variant in variants for side in ("ours", "hf")
             if side == "ours" or variant not in OURS_ONLY]
    results: dict[tuple[str, str, str], list[dict[str, Any]]] = {case: [] for case in cases}
    for repeat in range(args.repeats):
        shift = repeat % len(cases)
        for model, variant, side in cases[shift:] + cases[:shift]:
            path, steps = models[model]
            command = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--data", str(prep_dir),
                       "--model", path, "--steps", str(steps), "--batch_size", str(args.batch_size),
                       "--max_seq_length", str(args.max_seq_length), "--threads", str(args.threads),
                       "--variant", variant, "--torch_compile_backend", args.torch_compile_backend,
                       *(["--max_tokens_per_batch", str(args.max_tokens_per_batch)] if args.max_tokens_per_batch else [])]
            out = _common.run_json_child(command, _common.child_env(args.threads), timeout=1800)
            docs = out.get("docs_per_step")
            out["samples_per_s"] = _rate(out["stamps"], args.warmup_steps, args.batch_size, docs)
            out["median_step_samples_per_s"] = _median_step_rate(out["stamps"], args.warmup_steps, args.batch_size, docs)
            out["real_tokens_per_s"] = _token_rate(out["stamps"], args.warmup_steps, out.get("tokens_per_step"))
            out["real_tokens_per_cpu_s"] = _token_rate(out["cpu_stamps"], args.warmup_steps, out.get("tokens_per_step"))
            out["samples_per_cpu_s"] = _rate(out["cpu_stamps"], args.warmup_steps, args.batch_size, docs)
            out["padded_length"] = _padded_length(out["shapes"])
            out["steps"] = len(out["stamps"])
            results[(model, variant, side)].append(out)
            _common.log(f"round {repeat + 1}/{args.repeats} {model:>7} {variant:>17} {side:>4}: {out['samples_per_s']:8.1f} "
                        f"samples/s ({out['steps']} steps; by median step {out['median_step_samples_per_s']:.1f}; "
                        f"per CPU-second {out['samples_per_cpu_s']:.1f}; padded length {out['padded_length']:.1f}; "
                        f"padding fraction {out.get('padding_fraction', float('nan')):.3f}; real tokens/s "
                        f"{out['real_tokens_per_s']:.0f} (per CPU-second {out['real_tokens_per_cpu_s']:.0f}); "
                        f"torch threads {out.get('threads_at_step')})")

    print(f"\nTraining throughput, {args.corpus} shards, head at max_seq_length {args.max_seq_length}, batch "
          f"{args.batch_size}, dynamic padding, CPU, {args.threads} thread(s), steps {args.warmup_steps + 1}..N timed, "
          f"{args.repeats} interleaved round(s), {os.cpu_count()} cores; torch_compile backend {args.torch_compile_backend}")
    print(f"{'model':>8} | {'variant':>18} | {'steps':>5} | {'ours samples/s':>24} | {'HF Trainer samples/s':>24} | "
          f"{'ours / HF':>9} | {'ours / HF (CPU)':>15} | {'padded len ours / HF':>20} | {'padding ours':>12} | "
          f"{'vs fixed':>8} | {'real tok/CPU-s':>14} | same batches")
    summary: dict[str, Any] = {}
    for model in models:
        fixed = results.get((model, "adamw_torch_fused", "ours"))
        fixed_rate = _common.median(r["samples_per_s"] for r in fixed) if fixed else None
        for variant in variants:
            sides = ("ours",) if variant in OURS_ONLY else ("ours", "hf")
            runs = {side: results[(model, variant, side)] for side in sides}
            rate = {side: [r["samples_per_s"] for r in runs[side]] for side in runs}
            cpu = {side: [r["samples_per_cpu_s"] for r in runs[side]] for side in runs}
            padded = {side: _common.median(r["padded_length"] for r in runs[side]) for side in runs}
            padding = _common.median(r.get("padding_fraction", float("nan")) for r in runs["ours"])
            token_cpu = _common.median(r["real_tokens_per_cpu_s"] for r in runs["ours"])
            versus_fixed = _common.median(rate["ours"]) / fixed_rate if fixed_rate else float("nan")
            item: dict[str, Any] = {"ours": rate["ours"], "ours_cpu": cpu["ours"], "padded_length": padded,
                                    "padding_fraction": padding, "vs_fixed": versus_fixed, "real_tokens_per_cpu_s": token_cpu}
            if "hf" in runs:
                item.update(hf=rate["hf"], hf_cpu=cpu["hf"], ratio=_common.median(rate["ours"]) / _common.median(rate["hf"]),
                            cpu_ratio=_common.median(cpu["ours"]) / _common.median(cpu["hf"]),
                            same_batch_shapes=all(r["shapes"] == runs["ours"][0]["shapes"] for side in runs for r in runs[side]),
                            hf_optim=runs["hf"][0].get("optim"))
                hf_cells = (f"{_common.spread_float(rate['hf']):>24} | {item['ratio']:8.2f}x | {item['cpu_ratio']:14.2f}x | "
                            f"{padded['ours']:9.1f} / {padded['hf']:<8.1f}")
                same = "yes" if item["same_batch_shapes"] else "no"
            else:
                hf_cells = f"{'-':>24} | {'-':>9} | {'-':>15} | {'-':>20}"
                same = "-"
            summary[f"{model}|{variant}"] = item
            print(f"{model:>8} | {variant:>18} | {models[model][1]:>5} | {_common.spread_float(rate['ours']):>24} | {hf_cells} | "
                  f"{padding:12.3f} | {versus_fixed:7.2f}x | {token_cpu:14.0f} | {same}")
    compared = {key: item for key, item in summary.items() if "ratio" in item}
    met = [key for key, item in compared.items() if item["ratio"] >= 1.0]
    missed = [f"{key} {item['ratio']:.2f}x" for key, item in compared.items() if item["ratio"] < 1.0]
    if compared:
        print(f"target ours / HF >= 1.0 (wall): met by {len(met)} of {len(compared)} rows" + (f"; not by {', '.join(missed)}" if missed else ""))
    _common.write_json(args.json, {"machine": _common.machine(), "args": vars(args), "summary": summary,
                                   "results": {f"{m}|{v}|{side}": r for (m, v, side), r in results.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
