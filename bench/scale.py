"""Corpus scale: peak memory and time to the first optimizer step at 1x and Kx the corpus.

    python bench/scale.py [--corpus 20newsgroups|bbc] [--copies 10] [--repeats 2] [--ours_per_round 2] \\
        [--baseline_storage lists|arrow] [--model DIR] [--max_seq_length 512] [--threads 2] \\
        [--work_dir DIR] [--json FILE]

Two ways to get from a TSV corpus to the first optimizer step, each at 1x and ``--copies`` x the
corpus (the train split with every document repeated under new IDs: 20 Newsgroups 10,146 ->
101,460 training documents by default). Each case runs in a fresh Python process, so the peak
memory is that of the case alone: VmHWM (the resident high-water mark) read at the first step.
The time is wall time from just before the process is started (interpreter start and imports
included) to the return of the first ``optimizer.step()`` (a global torch optimizer post-hook,
so both sides are timed at the same point), and the CPU time of the process at that point (all
threads; steadier than wall time on a shared machine). Each of ``--repeats`` rounds runs the
baseline at 1x and Kx once and ours ``--ours_per_round`` times at each size (ours costs seconds,
the baseline at Kx minutes), interleaved, the order rotated each round; medians are reported.

ours
    ``trainer.task.Trainer`` (``setup()`` then ``train()``) on the preprocessed shards, exactly as
    ``python -m trainer.task --do_train --use_cpu --max_seq_length 512 --seq_len_func head
    --per_device_train_batch_size 8`` runs it. The corpus was tokenized once, earlier, by the
    pipeline (built once in the work dir; not part of the timing, as in production).
baseline (what Hugging Face ``run_glue.py`` does)
    read ``train.tsv``; tokenize every text at start-up with the same fast tokenizer, truncation
    to ``max_seq_length``, in batches of 1,000 (``datasets.map(batched=True)``'s default), into
    an in-memory table; then a shuffled ``DataLoader`` with ``DataCollatorWithPadding`` and one
    optimizer step. ``--baseline_storage lists`` keeps the tokenized columns as Python lists
    (as the issue asks; HF ``datasets`` is not installed), ``arrow`` as a compact in-memory
    pyarrow table (int32 ids, int8 masks: closer to what ``datasets`` holds). Padding is dynamic
    (run_glue's ``--pad_to_max_length False``); run_glue's default pads every row to 512, which
    would only make the baseline bigger.

Both sides use the same model (default: the tiny random BERT, so that the model does not hide
the data path), the same tokenizer (the bundled MiniLM's), fused AdamW, batch 8, and the same
thread count. The target (design.md section 8): ours stays flat (Kx / 1x <= 1.2 for time and
memory), the baseline grows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402  (puts the repo on sys.path)

__all__ = ["main"]

FLAT_LIMIT = 1.2


class _FirstStep(Exception):
    pass


def _install_first_step_hook(start: float, marks: dict[str, float]) -> None:
    """Stop the process's work at the return of the first optimizer step, noting time and VmHWM."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    def hook(optimizer: Any, args: Any, kwargs: Any) -> None:
        marks["first_step_s"] = time.time() - start
        marks["peak_rss_mib"] = _common.peak_rss_mib()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        marks["cpu_s"] = usage.ru_utime + usage.ru_stime  # all threads of this process since it started
        raise _FirstStep

    register_optimizer_step_post_hook(hook)


def _child_ours(args: argparse.Namespace, start: float) -> dict[str, Any]:
    import torch

    marks: dict[str, float] = {"imports_s": 0.0}
    from trainer.args import parse_args
    from trainer.task import Trainer

    marks["imports_s"] = time.time() - start
    with tempfile.TemporaryDirectory() as output_dir:
        config = parse_args([
            "--data_dir", args.data, "--model_name", args.model, "--task_name", "scale", "--output_dir", output_dir,
            "--do_train", "--use_cpu", "--disable_tqdm", "--max_seq_length", str(args.max_seq_length),
            "--seq_len_func", "head", "--per_device_train_batch_size", str(args.batch_size), "--max_steps", "1",
            "--learning_rate", "1e-4", "--resume_from_checkpoint", "no", "--pad_to_multiple_of", str(args.max_seq_length),
        ])
        torch.set_num_threads(args.threads)
        trainer = Trainer(config)
        trainer.setup()
        marks["setup_done_s"] = time.time() - start
        _install_first_step_hook(start, marks)
        try:
            trainer.train()
        except _FirstStep:
            pass
        marks["train_docs"] = sum(unit.num_rows for unit in trainer.plan.train_units)
        trainer.close()
    if "first_step_s" not in marks:
        raise RuntimeError("ours: no optimizer step was taken")
    return marks


def _read_tsv(path: str) -> tuple[list[str], list[str]]:
    """``(texts, labels)`` of a TSV in our format (header skipped), as run_glue's CSV reader would give."""
    texts, labels = [], []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle):
            fields = line.rstrip("\n").split("\t")
            if number == 0 and fields[0] == "id":
                continue
            labels.append(fields[2])
            texts.append(fields[3])
    return texts, labels


def _child_baseline(args: argparse.Namespace, start: float) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader, Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    marks: dict[str, Any] = {"imports_s": time.time() - start}
    torch.set_num_threads(args.threads)
    torch.manual_seed(42)
    texts, labels = _read_tsv(os.path.join(args.data, "train.tsv"))
    label_list = sorted(set(labels))
    label_to_id = {label: i for i, label in enumerate(label_list)}
    label_ids = [label_to_id[label] for label in labels]
    marks["read_s"] = time.time() - start
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    columns: dict[str, Any] = {"input_ids": [], "token_type_ids": [], "attention_mask": []}
    chunks: list[Any] = []
    for offset in range(0, len(texts), 1000):  # datasets.map(batched=True) default batch size
        encoded = tokenizer(texts[offset : offset + 1000], padding=False, max_length=args.max_seq_length, truncation=True)
        if args.baseline_storage == "lists":
            for name in columns:
                columns[name].extend(encoded[name])
        else:
            import pyarrow as pa

            chunks.append(pa.record_batch({
                "input_ids": pa.array(encoded["input_ids"], type=pa.list_(pa.int32())),
                "token_type_ids": pa.array(encoded["token_type_ids"], type=pa.list_(pa.int8())),
                "attention_mask": pa.array(encoded["attention_mask"], type=pa.list_(pa.int8())),
                "label": pa.array(label_ids[offset : offset + 1000], type=pa.int64()),
            }))
    del texts
    if args.baseline_storage == "arrow":
        import pyarrow as pa

        table = pa.Table.from_batches(chunks)
        del chunks

        class Tokenized(Dataset):
            def __len__(self) -> int:
                return table.num_rows

            def __getitem__(self, index: int) -> dict[str, Any]:
                row = table.slice(index, 1).to_pylist()[0]
                row["labels"] = row.pop("label")
                return row
    else:
        columns["label"] = label_ids

        class Tokenized(Dataset):  # type: ignore[no-redef]
            def __len__(self) -> int:
                return len(columns["label"])

            def __getitem__(self, index: int) -> dict[str, Any]:
                return {"input_ids": columns["input_ids"][index], "token_type_ids": columns["token_type_ids"][index],
                        "attention_mask": columns["attention_mask"][index], "labels": columns["label"][index]}
    dataset = Tokenized()
    marks["tokenized_s"] = time.time() - start
    marks["train_docs"] = len(dataset)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=len(label_list))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, collate_fn=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=args.max_seq_length),
                        generator=torch.Generator().manual_seed(42))
    marks["setup_done_s"] = time.time() - start
    _install_first_step_hook(start, marks)
    try:
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
    except _FirstStep:
        pass
    if "first_step_s" not in marks:
        raise RuntimeError("baseline: no optimizer step was taken")
    return marks


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python bench/scale.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default="20newsgroups", choices=["20newsgroups", "bbc"])
    parser.add_argument("--copies", type=int, default=10, help="the large corpus is the train split this many times (default 10)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds; each runs the baseline at x1 and xK once")
    parser.add_argument("--ours_per_round", type=int, default=2, help="runs of ours at x1 and at xK per round (default 2)")
    parser.add_argument("--baseline_storage", default="lists", choices=["lists", "arrow"])
    parser.add_argument("--model", default=None, help="model dir for both sides (default: the tiny random BERT)")
    parser.add_argument("--max_seq_length", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (OMP_NUM_THREADS) of both sides")
    parser.add_argument("--work_dir", default=_common.DEFAULT_WORK_DIR)
    parser.add_argument("--json", default=None)
    # internal: one case in a fresh process
    parser.add_argument("--child", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--start", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.copies < 2 or args.repeats < 1 or args.ours_per_round < 1:
        parser.error("--copies must be >= 2, --repeats and --ours_per_round >= 1")
    return args


def _run_case(args: argparse.Namespace, side: str, data: str) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--data", data, "--model", args.model,
               "--max_seq_length", str(args.max_seq_length), "--batch_size", str(args.batch_size),
               "--threads", str(args.threads), "--baseline_storage", args.baseline_storage]
    # the baseline tokenizes as run_glue does: the Rust tokenizer's own thread pool is on
    env = _common.child_env(args.threads, TOKENIZERS_PARALLELISM="true" if side == "baseline" else "false",
                            RAYON_NUM_THREADS=str(args.threads))
    start = time.time()
    return _common.run_json_child([*command, "--start", repr(start)], env)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.child:
        runner = _child_ours if args.child == "ours" else _child_baseline
        marks = runner(args, args.start)
        print(json.dumps(marks))
        return 0
    args.model = args.model or _common.ensure_tiny_model(args.work_dir)
    small_tsv, small_prep = _common.ensure_corpus(args.work_dir, args.corpus)
    large_tsv, large_prep = _common.ensure_multiplied_corpus(args.work_dir, args.corpus, args.copies)
    sizes = {1: (str(small_tsv), str(small_prep)), args.copies: (str(large_tsv), str(large_prep))}
    # ours costs seconds, the baseline at Kx minutes: ours runs --ours_per_round times per round,
    # spread between the baseline's runs, so its medians rest on more runs at little cost
    k = args.copies
    cases: list[tuple[str, int]] = []
    for index in range(args.ours_per_round):
        cases += [("ours", 1), ("ours", k)] if index % 2 == 0 else [("ours", k), ("ours", 1)]
        if index == 0:
            cases.append(("baseline", 1))
    cases.append(("baseline", k))
    results: dict[tuple[str, int], list[dict[str, Any]]] = {
        (side, size): [] for side in ("ours", "baseline") for size in (1, k)}
    for repeat in range(args.repeats):
        shift = repeat % len(cases)
        for side, size in cases[shift:] + cases[:shift]:
            tsv_dir, prep_dir = sizes[size]
            marks = _run_case(args, side, prep_dir if side == "ours" else tsv_dir)
            results[(side, size)].append(marks)
            _common.log(f"round {repeat + 1}/{args.repeats} {side:>8} x{size:<3}: first step {marks['first_step_s']:6.1f} s "
                        f"(CPU {marks['cpu_s']:.1f} s), "
                        f"peak RSS {marks['peak_rss_mib']:7.0f} MiB ({marks['train_docs']} train docs)")

    def med(side: str, size: int, key: str) -> float:
        return _common.median(r[key] for r in results[(side, size)] if key in r)

    print(f"\nCorpus scale, {args.corpus} train x1 and x{k}, model {Path(args.model).name}, max_seq_length "
          f"{args.max_seq_length}, batch {args.batch_size}, {args.threads} threads, baseline storage "
          f"{args.baseline_storage}, {args.repeats} interleaved rounds, {os.cpu_count()} cores (medians)")
    print(f"{'':>12} | {'docs':>8} | {'first step s':>12} | {'CPU s':>6} | {'of which imports':>16} | {'data/setup done at':>18} | {'peak RSS MiB':>12}")
    for side in ("ours", "baseline"):
        for size in (1, k):
            docs = results[(side, size)][0]["train_docs"]
            print(f"{side + ' x' + str(size):>12} | {docs:>8,} | {med(side, size, 'first_step_s'):12.1f} | "
                  f"{med(side, size, 'cpu_s'):6.1f} | "
                  f"{med(side, size, 'imports_s'):16.1f} | {med(side, size, 'setup_done_s'):18.1f} | "
                  f"{med(side, size, 'peak_rss_mib'):12.0f}")
    ratios = {}
    for side in ("ours", "baseline"):
        ratios[side] = {key: med(side, k, key) / med(side, 1, key) for key in ("first_step_s", "cpu_s", "peak_rss_mib")}
    print(f"\nratios x{k} / x1:")
    for side in ("ours", "baseline"):
        print(f"  {side:>8}: time to first step {ratios[side]['first_step_s']:.2f}x (CPU time {ratios[side]['cpu_s']:.2f}x), "
              f"peak RSS {ratios[side]['peak_rss_mib']:.2f}x")
    print(f"  at x{k}, baseline / ours: time to first step "
          f"{med('baseline', k, 'first_step_s') / med('ours', k, 'first_step_s'):.1f}x, peak RSS "
          f"{med('baseline', k, 'peak_rss_mib') / med('ours', k, 'peak_rss_mib'):.1f}x")
    names = {"first_step_s": "time", "cpu_s": "CPU time", "peak_rss_mib": "peak RSS"}
    verdict = ", ".join(f"{names[key]} {ratios['ours'][key]:.2f}x {'ok' if ratios['ours'][key] <= FLAT_LIMIT else 'OVER'}"
                        for key in names)
    grows = ", ".join(f"{names[key]} {ratios['baseline'][key]:.2f}x" for key in names)
    print(f"target: ours flat within {FLAT_LIMIT}x from x1 to x{k}: {verdict}; the baseline grows: {grows}")
    _common.write_json(args.json, {
        "machine": _common.machine(), "args": vars(args),
        "results": {f"{side}|x{size}": v for (side, size), v in results.items()}, "ratios": ratios,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
