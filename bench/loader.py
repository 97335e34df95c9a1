"""Loader throughput: samples/s of the training loader alone (read shard + seq fn + collate).

    python bench/loader.py [--corpus 20newsgroups|bbc] [--workers 0,1,2] \\
        [--seq_funcs "head;ht 128 382;rs 16;rso 16;rsd 16"] [--max_seq_length 512] \\
        [--batch_size 32] [--samples 8192] [--repeats 3] [--no_breakdown] [--work_dir DIR] [--json FILE]

What is timed is exactly what ``trainer.task`` iterates: ``trainer.data.ShardStream`` over the
real shards of a bundled corpus (preprocessed once with the MiniLM tokenizer and reused), in a
``torch.utils.data.DataLoader`` built as ``Trainer._loader`` builds it (``batch_size=None``,
``worker_init_threads``, ``prefetch_factor=4`` with workers), consumed by a loop that does
nothing else. Each measurement runs from ``iter(loader)`` (worker start-up included) until
``--samples`` samples have arrived; ``--samples`` defaults to two shuffle windows (2 x 4,096
rows), so the Parquet reads of every window are inside the timing. Every (seq fn, workers)
case is measured ``--repeats`` times, the cases interleaved and their order rotated each round;
the table gives the median and [min-max] of samples/s (wall), and samples per CPU-second of the
main process and its workers together (steadier on a shared machine: what one core gives).

The design target (design.md section 8): the loader must give >= 10 x what the GPU consumes;
BERT-base at 512 tokens on an H100 trains at about 1,000 samples/s, i.e. thousands of samples/s
per core. "Per core" is the samples per CPU-second.

Unless ``--no_breakdown``, cheap in-process analyses follow:

* the time split of one worker's work (read + decode Parquet row groups, row lookup, per-doc
  rng, seq fn, special tokens, collate), by running ShardStream's loop with timers, and the same
  examples collated by ``proposed_collate`` (numpy fill; same tensors, checked);
* the cost of handing ready batches from one worker to the main process;
* worker scaling: with K DataLoader workers each worker reads and decodes *every* row group of
  each shuffle window but keeps only 1/K of its rows. Worker 0 of K is simulated on this one
  core (``get_worker_info`` patched) for K = 1, 2, 4, 8, 16 to show the per-worker rate a GPU
  host with many cores would see.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402  (puts the repo on sys.path)

__all__ = ["main"]

DEFAULT_SEQ_FUNCS = "head;ht 128 382;rs 16;rso 16;rsd 16"
GPU_SAMPLES_PER_S = 1000  # BERT-base, 512 tokens, one H100 (design.md section 8)
TARGET_FACTOR = 10


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python bench/loader.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default="20newsgroups", choices=["20newsgroups", "bbc"])
    parser.add_argument("--work_dir", default=_common.DEFAULT_WORK_DIR, help="where corpora and shards are built once")
    parser.add_argument("--seq_funcs", default=DEFAULT_SEQ_FUNCS,
                        help="';'-separated 'name params...' (default: %(default)s)")
    parser.add_argument("--workers", default="0,1,2", help="DataLoader num_workers values (default 0,1,2)")
    parser.add_argument("--max_seq_length", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--shuffle_buffer", type=int, default=4096, help="as trainer.task's --shuffle_buffer")
    parser.add_argument("--samples", type=int, default=8192, help="samples per measurement (default: two shuffle windows)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the main process (default 1: per-core figures)")
    parser.add_argument("--no_breakdown", action="store_true", help="skip the time split and the worker-scaling simulation")
    parser.add_argument("--scaling_workers", default="1,2,4,8,16", help="K values of the worker-scaling simulation")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    args.seq_funcs = [tuple(spec.split()) for spec in args.seq_funcs.split(";") if spec.strip()]
    args.workers = [int(w) for w in args.workers.split(",")]
    args.scaling_workers = [int(w) for w in args.scaling_workers.split(",")]
    if args.repeats < 1 or args.samples < args.batch_size:
        parser.error("--repeats must be >= 1 and --samples >= --batch_size")
    return args


class _Setup:
    """Tokenizer, template, units: what ``Trainer.setup`` builds before the loader."""

    def __init__(self, prep_dir: str, max_seq_length: int) -> None:
        from modeling.features import SpecialTokenTemplate
        from schemas.manifest import read_manifest
        from tokenization.tokenizer import load_tokenizer
        from trainer.shards import list_units

        self.prep_dir = prep_dir
        self.manifest = read_manifest(prep_dir)
        self.tokenizer = load_tokenizer(_common.minilm_dir())
        self.template = SpecialTokenTemplate.from_tokenizer(self.tokenizer)
        self.units = list_units(prep_dir, self.manifest, "train")
        self.max_seq_length = max_seq_length
        self.pad_token_id = int(self.tokenizer.pad_token_id or 0)

    def features(self, spec: tuple[str, ...], seed: int = 42) -> Any:
        from modeling.features import FeatureBuilder
        from tokenization.seq_len import validate_seq_config

        config = validate_seq_config(spec[0], list(spec[1:]), self.max_seq_length, self.tokenizer)
        return FeatureBuilder(config, self.template, seed)

    def stream(self, spec: tuple[str, ...], batch_size: int, shuffle_buffer: int, epoch: int) -> Any:
        from trainer.data import ShardStream

        stream = ShardStream(self.units, self.features(spec), batch_size=batch_size, seed=42,
                             pad_token_id=self.pad_token_id, shuffle_buffer=shuffle_buffer)
        stream.set_epoch(epoch)
        return stream


def _loader(stream: Any, workers: int) -> Any:
    """The DataLoader exactly as ``Trainer._loader`` builds it (CPU: no pinned memory)."""
    import torch
    from torch.utils.data import DataLoader

    from trainer.data import worker_init_threads

    return DataLoader(stream, batch_size=None, num_workers=workers,
                      worker_init_fn=worker_init_threads if workers else None,
                      generator=torch.Generator().manual_seed(42), pin_memory=False,
                      prefetch_factor=4 if workers else None)


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _measure(setup: _Setup, spec: tuple[str, ...], workers: int, args: argparse.Namespace, epoch: int) -> dict[str, float]:
    """One measurement: wall time from iter(loader) to ``args.samples`` samples, and the CPU it cost.

    CPU = this process's CPU time plus that of the worker processes (counted once they are
    joined): on a shared machine, samples per CPU-second is what one core can do, whatever
    else is running; wall samples/s is what this machine gave at that moment.
    """
    loader = _loader(setup.stream(spec, args.batch_size, args.shuffle_buffer, epoch), workers)
    samples, first, first_samples = 0, None, 0
    cpu, children = time.process_time(), _children_cpu()
    start = time.perf_counter()
    iterator = iter(loader)
    for batch in iterator:
        samples += len(batch["doc_ids"])
        if first is None:
            first, first_samples = time.perf_counter(), samples
        if samples >= args.samples:
            break
    end = time.perf_counter()
    main_cpu = time.process_time() - cpu
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()  # joins the workers, so their CPU time is counted below
    del iterator, loader
    worker_cpu = _children_cpu() - children
    return {
        "samples": samples,
        "seconds": end - start,
        "samples_per_s": samples / (end - start),
        "first_batch_s": first - start,
        "after_first_per_s": (samples - first_samples) / max(end - first, 1e-9),
        "main_cpu_s": main_cpu,
        "worker_cpu_s": worker_cpu,
        "samples_per_cpu_s": samples / max(main_cpu + worker_cpu, 1e-9),
    }


# The numpy-fill collate this benchmark proposed was adopted as modeling.features.collate; the
# comparison below now measures it against itself (about 1.0x) and stays as a regression check.
from modeling.features import collate as proposed_collate  # noqa: E402


def _ipc_cost(setup: _Setup, spec: tuple[str, ...], args: argparse.Namespace, batches: int = 150) -> dict[str, float]:
    """ms per batch to pass ready-made batches through a DataLoader with 0 and 1 workers."""
    import torch
    from torch.utils.data import IterableDataset

    sample = []
    for batch in setup.stream(spec, args.batch_size, args.shuffle_buffer, epoch=0):
        batch.pop("batch_index")
        sample.append(batch)
        if len(sample) == 8:
            break

    class Ready(IterableDataset):
        def __iter__(self) -> Any:
            for i in range(batches):
                yield {k: (v.clone() if isinstance(v, torch.Tensor) else list(v)) for k, v in sample[i % len(sample)].items()}

    out: dict[str, list[float]] = {"0": [], "1": []}
    for _ in range(3):
        for workers in (0, 1):
            start = time.perf_counter()
            for _batch in _loader(Ready(), workers):
                pass
            out[str(workers)].append((time.perf_counter() - start) / batches * 1000)
    return {k: _common.median(v) for k, v in out.items()}


def _time_split(setup: _Setup, spec: tuple[str, ...], args: argparse.Namespace) -> dict[str, Any]:
    """ShardStream.__iter__ (one process, worker 0 of 1) with a timer around each step."""
    from modeling.features import Example, _to_list, collate
    from tokenization.rng import doc_rng
    from tokenization.seq_len import apply_seq_len
    from trainer.data import _RowGroupReader, read_rows

    stream = setup.stream(spec, args.batch_size, args.shuffle_buffer, epoch=0)
    features = stream.features
    config, template = features.config, features.template
    plan = stream.plan()
    reader = _RowGroupReader()
    spent = dict.fromkeys(["parquet", "lookup", "rng", "seq_fn", "special_tokens", "collate"], 0.0)
    decode = reader._read
    counts = {"row_groups_read": 0, "rows_decoded": 0}

    def timed_read(unit: Any) -> Any:
        t = time.perf_counter()
        out = decode(unit)
        spent["parquet"] += time.perf_counter() - t
        counts["row_groups_read"] += 1
        counts["rows_decoded"] += unit.num_rows
        return out

    reader._read = timed_read
    windows: dict[int, Any] = {}
    per_window = plan.window // plan.batch_size
    samples = long_docs = 0
    proposed_seconds = 0.0
    perf = time.perf_counter
    start = perf()
    for batch_index in range(0, plan.num_batches):
        if batch_index // per_window not in windows:
            reader.clear()
        t = perf()
        rows = read_rows(plan, plan.batch_positions(batch_index, windows), reader)
        spent["lookup"] += perf() - t
        examples = []
        for doc_id, label, a, b in rows:
            t0 = perf()
            too_long = features._too_long(a, b)
            rng = doc_rng(features.seed, 0, doc_id) if config.is_random and too_long else None
            t1 = perf()
            a2, b2 = apply_seq_len(a, b, config, rng)
            t2 = perf()
            ids, types = template.build(_to_list(a2), _to_list(b2))
            examples.append(Example(doc_id, int(label), ids, types))
            t3 = perf()
            spent["rng"] += t1 - t0
            spent["seq_fn"] += t2 - t1
            spent["special_tokens"] += t3 - t2
            long_docs += too_long
        t = perf()
        current = collate(examples, setup.pad_token_id, None)
        spent["collate"] += perf() - t
        t = perf()
        proposed = proposed_collate(examples, setup.pad_token_id, None)
        proposed_seconds += perf() - t
        if batch_index == 0:
            import torch

            assert all(torch.equal(current[k], proposed[k]) for k in ("input_ids", "attention_mask", "token_type_ids", "labels"))
        samples += len(rows)
        if samples >= args.samples:
            break
    total = perf() - start - proposed_seconds
    spent["lookup"] -= spent["parquet"]  # lookup was timed around reads that include the parquet decode
    spent["other"] = max(total - sum(spent.values()), 0.0)
    return {
        "samples": samples,
        "long_docs": long_docs,
        "seconds": total,
        "samples_per_s": samples / total,
        "us_per_sample": {k: v / samples * 1e6 for k, v in spent.items()},
        "share": {k: v / total for k, v in spent.items()},
        "seq_fn_us_per_long_doc": spent["seq_fn"] / max(long_docs, 1) * 1e6,
        "rng_us_per_long_doc": spent["rng"] / max(long_docs, 1) * 1e6 if config.is_random else 0.0,
        **counts,
        "parquet_rows_per_s": counts["rows_decoded"] / max(spent["parquet"], 1e-9),
        "proposed_collate_us_per_sample": proposed_seconds / samples * 1e6,
        "samples_per_s_with_proposed_collate": samples / (total - spent["collate"] + proposed_seconds),
    }


def _simulated_worker(setup: _Setup, spec: tuple[str, ...], workers: int, args: argparse.Namespace, windows: int = 2) -> dict[str, float]:
    """Worker 0 of ``workers``, run in this process over its batches of the first ``windows`` shuffle windows."""
    import trainer.data as data

    class _Info:
        id, num_workers = 0, workers

    stream = setup.stream(spec, args.batch_size, args.shuffle_buffer, epoch=0)
    plan = stream.plan()
    last_batch = min(plan.num_batches, windows * plan.window // plan.batch_size)
    original = data.get_worker_info
    data.get_worker_info = lambda: _Info()
    try:
        samples = 0
        cpu = time.process_time()
        for batch in stream:
            if batch["batch_index"] >= last_batch:
                break
            samples += len(batch["doc_ids"])
        seconds = time.process_time() - cpu
    finally:
        data.get_worker_info = original
    return {"samples": samples, "samples_per_cpu_s": samples / seconds}


def _name(spec: tuple[str, ...]) -> str:
    return " ".join(spec)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(args.threads)
    _, prep_dir = _common.ensure_corpus(args.work_dir, args.corpus)
    setup = _Setup(str(prep_dir), args.max_seq_length)
    stats = setup.manifest["splits"]["train"].get("stats", {})
    epoch_rows = sum(unit.num_rows for unit in setup.units)
    args.samples = min(args.samples, epoch_rows)
    long_share = stats.get("fraction_longer_than", {}).get("510")
    _common.log(f"{args.corpus}: {epoch_rows} train docs in {len(setup.units)} row groups; shards {prep_dir}")

    cases = [(spec, workers) for workers in args.workers for spec in args.seq_funcs]
    results: dict[tuple[str, int], list[dict[str, float]]] = {(_name(s), w): [] for s, w in cases}
    # warm-up: import paths, page cache, fork machinery (not recorded)
    _measure(setup, args.seq_funcs[0], 0, argparse.Namespace(**{**vars(args), "samples": args.batch_size * 4}), epoch=99)
    for repeat in range(args.repeats):
        shift = repeat % len(cases)
        for spec, workers in cases[shift:] + cases[:shift]:
            result = _measure(setup, spec, workers, args, epoch=repeat)
            results[(_name(spec), workers)].append(result)
            _common.log(f"round {repeat + 1}/{args.repeats} {_name(spec):>10} workers={workers}: "
                        f"{result['samples_per_s']:,.0f} samples/s (first batch {result['first_batch_s'] * 1000:.0f} ms)")

    print(f"\nLoader throughput, {args.corpus} train ({epoch_rows} docs; "
          f"{'?' if long_share is None else f'{long_share:.0%}'} longer than 510 tokens), "
          f"max_seq_length {args.max_seq_length}, batch {args.batch_size}, {args.samples} samples per measurement, "
          f"{args.repeats} interleaved rounds, {os.cpu_count()} cores")
    header = f"{'seq fn':>12} | " + " | ".join(f"workers={w}: samples/s".rjust(27) for w in args.workers)
    header += " | " + " | ".join(f"w={w}: per CPU-s".rjust(15) for w in args.workers)
    print(header)
    print("-" * len(header))
    summary: dict[str, Any] = {}
    for spec in args.seq_funcs:
        name = _name(spec)
        cells, per_cpu = [], []
        summary[name] = {}
        for workers in args.workers:
            runs = results[(name, workers)]
            rates = [r["samples_per_s"] for r in runs]
            cpu_rates = [r["samples_per_cpu_s"] for r in runs]
            summary[name][workers] = {"median": _common.median(rates), "min": min(rates), "max": max(rates),
                                      "per_cpu_s": _common.median(cpu_rates),
                                      "worker_cpu_share": _common.median(r["worker_cpu_s"] / max(r["worker_cpu_s"] + r["main_cpu_s"], 1e-9) for r in runs),
                                      "first_batch_ms": _common.median(r["first_batch_s"] for r in runs) * 1000}
            cells.append(_common.spread(rates).rjust(27))
            per_cpu.append(f"{_common.median(cpu_rates):,.0f}".rjust(15))
        print(f"{name:>12} | " + " | ".join(cells) + " | " + " | ".join(per_cpu))
    print("  (samples/s: wall time, median [min-max]; per CPU-s: samples per CPU-second of the main process and its "
          "workers together, i.e. what one core gives)")

    base = 0 if 0 in args.workers else args.workers[0]
    print("\nratios (median samples/s against num_workers=0):")
    for spec in args.seq_funcs:
        name = _name(spec)
        parts = [f"w={w}: {summary[name][w]['median'] / summary[name][base]['median']:.2f}x" for w in args.workers if w != base]
        print(f"  {name:>10}: " + ", ".join(parts))
    per_core = min(summary[_name(s)][base]["per_cpu_s"] for s in args.seq_funcs)
    slowest = min(args.seq_funcs, key=lambda s: summary[_name(s)][base]["per_cpu_s"])
    wall = summary[_name(slowest)][base]["median"]
    print(f"\ntarget: GPU consumes ~{GPU_SAMPLES_PER_S:,} samples/s (BERT-base, 512, H100); loader >= "
          f"{TARGET_FACTOR} x that = {GPU_SAMPLES_PER_S * TARGET_FACTOR:,} samples/s per GPU, 'thousands per core'")
    print(f"  slowest seq fn ({_name(slowest)}), workers={base}: {per_core:,.0f} samples per CPU-second "
          f"({wall:,.0f} samples/s wall on this shared machine) = {per_core / GPU_SAMPLES_PER_S:.1f} x one H100's "
          f"consumption; {'meets' if per_core >= 2 * GPU_SAMPLES_PER_S else 'MISSES'} 'thousands of samples/s per core'; "
          f"cores for the 10x: {GPU_SAMPLES_PER_S * TARGET_FACTOR / per_core:.1f}")
    for workers in args.workers:
        if workers:
            rate = min(summary[_name(s)][workers]["per_cpu_s"] for s in args.seq_funcs)
            print(f"  through {workers} worker(s): slowest {rate:,.0f} samples per CPU-second "
                  f"({rate / per_core:.2f}x of in-process: worker-to-main hand-over and worker start-up)")

    payload: dict[str, Any] = {
        "machine": _common.machine(), "args": {k: v for k, v in vars(args).items()}, "corpus_docs": epoch_rows,
        "train_stats": stats, "results": {f"{k[0]}|{k[1]}": v for k, v in results.items()}, "summary": summary,
    }
    if not args.no_breakdown:
        print("\ntime split of one process's loader work (in-process ShardStream loop with timers), us per sample:")
        keys = ["parquet", "lookup", "rng", "seq_fn", "special_tokens", "collate", "other"]
        print(f"{'seq fn':>12} | {'samples/s':>9} | " + " | ".join(f"{k:>14}" for k in keys) + " | seq fn us/long doc")
        splits = {}
        for spec in args.seq_funcs:
            split = _time_split(setup, spec, args)
            splits[_name(spec)] = split
            cells = [f"{split['us_per_sample'][k]:6.1f} ({split['share'][k]:4.0%})" for k in keys]
            print(f"{_name(spec):>12} | {split['samples_per_s']:9,.0f} | " + " | ".join(f"{c:>14}" for c in cells)
                  + f" | {split['seq_fn_us_per_long_doc'] + split['rng_us_per_long_doc']:8.1f} (incl. rng)")
        any_split = next(iter(splits.values()))
        print(f"  ({any_split['long_docs']} of {any_split['samples']} sampled docs exceed the budget; Parquet: "
              f"{any_split['rows_decoded']} rows decoded for {any_split['samples']} used, "
              f"{any_split['parquet_rows_per_s']:,.0f} rows/s)")
        print("\nproposed collate (numpy fill, same tensors) on the same examples:")
        for name, split in splits.items():
            current, proposed = split["us_per_sample"]["collate"], split["proposed_collate_us_per_sample"]
            print(f"  {name:>10}: collate {current:5.1f} -> {proposed:5.1f} us/sample ({current / proposed:.1f}x); "
                  f"loader {split['samples_per_s']:,.0f} -> {split['samples_per_s_with_proposed_collate']:,.0f} samples/s "
                  f"({split['samples_per_s_with_proposed_collate'] / split['samples_per_s']:.2f}x)")
        payload["time_split"] = splits

        ipc = _ipc_cost(setup, args.seq_funcs[0], args)
        print(f"\nDataLoader hand-over of ready batches (no loader work): {ipc['0']:.2f} ms/batch in-process, "
              f"{ipc['1']:.2f} ms/batch through 1 worker = {(ipc['1'] - ipc['0']) * 1000 / args.batch_size:.0f} us/sample "
              f"of worker-to-main transfer at batch {args.batch_size}")
        payload["ipc_ms_per_batch"] = ipc

        print("\nworker scaling: worker 0 of K simulated in this process over its batches of two shuffle windows "
              "(each worker decodes every row group of a window, keeps 1/K of the rows):")
        spec = next((s for s in args.seq_funcs if s[0] == "head"), args.seq_funcs[0])
        scaling: dict[int, list[float]] = {k: [] for k in args.scaling_workers}
        for _ in range(5):
            for k in args.scaling_workers:
                scaling[k].append(_simulated_worker(setup, spec, k, args)["samples_per_cpu_s"])
        one = _common.median(scaling[args.scaling_workers[0]])
        for k in args.scaling_workers:
            rate = _common.median(scaling[k])
            print(f"  {_name(spec)}, K={k:>2}: {rate:8,.0f} samples per CPU-second per worker "
                  f"({rate / one:.2f}x of K={args.scaling_workers[0]}); K such workers on K cores: {rate * k:,.0f} samples/s")
        payload["worker_scaling"] = {"seq_fn": _name(spec), "samples_per_cpu_s": scaling}
    _common.write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
