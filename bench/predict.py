"""Prediction on raw documents: our three ways against ``transformers.pipeline``, side by side.

    python bench/predict.py [--corpus 20newsgroups|bbc] [--docs 2000] [--views 1 chunks] \\
        [--sides beam raw api hf_pipeline] [--device cpu|cuda] [--work_dir DIR] [--json FILE] \\
        [--workers N] [--max_tokens_per_batch N]
    python bench/predict.py --host_only [--docs 2000] [--host_workers 0 1 2]

On the same documents (``--docs`` rows spread evenly over the corpus's test split, written as
one TSV) and one trained model (the bundled MiniLM, 30 steps of ``head`` at max_seq_length 128,
made once in the work folder, or ``--model DIR``), each side runs in its own process:

* ``beam``: ``python -m beam_pipelines.predict`` (Beam's FnApiRunner, RunInference);
* ``raw``: ``python -m trainer.predict --input_files``;
* ``api``: ``Classifier.from_pretrained(...).predict(texts, ids=...)``;
* ``hf_pipeline``: ``transformers.pipeline("text-classification", model)`` called with
  ``truncation=True, max_length=<the model's max_seq_length>`` (what a user would write; it sees
  the first tokens, the same view as ``head``), ``batch_size`` as ours.

Printed per side and views: documents/s (wall, process start and model load included), CPU
seconds of the process tree, peak RSS (and PSS) of the tree, the ratio to ``hf_pipeline``'s
documents/s, and how many labels agree with ``api``'s. Also what ``transformers.pipeline`` does
with a text longer than the model's positions when called without ``truncation``. ``--workers``
and ``--max_tokens_per_batch`` go to the ``raw`` and ``api`` sides (and the budget to ``beam``).

``--host_only`` measures the host side alone (issue 21), the model replaced by a no-op: documents/s
of ``trainer.predict --input_files`` (read, tokenize, views, collate, pool, write) with each of
``--host_workers`` worker processes, against ``transformers.pipeline``'s own host side (its
``preprocess`` of each text, then its ``pad_collate_fn`` per batch), each in its own process,
timed from after the model load to the last document; the ratios side by side.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, TreeMemory, child_env, ensure_corpus, log, machine, minilm_dir, write_json  # noqa: E402

SIDES = ("beam", "raw", "api", "hf_pipeline")
MAX_SEQ = 128


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python bench/predict.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default="20newsgroups", choices=["20newsgroups", "bbc"])
    parser.add_argument("--docs", type=int, default=2000, help="documents to predict (default 2000)")
    parser.add_argument("--views", nargs="+", default=["1", "chunks"], help="views of our sides (default 1 chunks)")
    parser.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch_size", type=int, default=32, help="views per forward pass, every side (default 32)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every side (default 2: the cores here)")
    parser.add_argument("--model", default=None, help="a model saved by trainer.task (default: train one, once)")
    parser.add_argument("--random_model", default=None, choices=["tiny", "minilm", "bert-base"],
                        help="instead: a randomly initialised classifier of this shape with a head-view record "
                             "(where the trained weights cannot travel: the GPU machine); throughput does not depend "
                             "on the weights' values")
    parser.add_argument("--tokenizer_dir", default=None, help="with --random_model: the tokenizer (default: MiniLM's)")
    parser.add_argument("--docs_tsv", default=None, help="predict these documents (a TSV with a header: id, label, text_a)"
                                                          " instead of the corpus's test split")
    parser.add_argument("--max_seq_length", type=int, default=MAX_SEQ, help=f"of the model (default {MAX_SEQ})")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 weights on every side")
    parser.add_argument("--work_dir", default="/tmp/spanwise-bench", help="corpora, model and outputs")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--workers", type=int, default=0,
                        help="raw and api sides: worker processes of the host side (default 0)")
    parser.add_argument("--max_tokens_per_batch", type=int, default=None,
                        help="raw, api and beam sides: batches by this many padded tokens instead of --batch_size views")
    parser.add_argument("--host_only", action="store_true",
                        help="measure the host side alone (model replaced by a no-op) against the pipeline's preprocess")
    parser.add_argument("--host_workers", type=int, nargs="+", default=[0, 1, 2],
                        help="with --host_only: the worker counts of our side (default 0 1 2)")
    parser.add_argument("--repeats", type=int, default=1, help="with --host_only: runs of each side (the best is kept)")
    parser.add_argument("--side", default=None, help=argparse.SUPPRESS)  # internal: one side in this process
    parser.add_argument("--docs_file", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--view", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- set-up (parent)


def _documents(work: Path, corpus: str, count: int) -> Path:
    """``count`` rows spread evenly over the test split (it is sorted by label), as one TSV with a header."""
    tsv_dir, _ = ensure_corpus(work, corpus)
    target = work / f"{corpus}-predict-{count}.tsv"
    if target.exists():
        return target
    lines = (tsv_dir / "test.tsv").read_text(encoding="utf-8").splitlines()
    header, rows = (lines[0], lines[1:]) if lines[0].startswith("id\t") else ("id\talpha\tlabel\ttext_a", lines)
    step = max(1, len(rows) // count)
    picked = rows[::step][:count]
    target.write_text("\n".join([header, *picked]) + "\n", encoding="utf-8")
    return target


def _random_model(work: Path, shape: str, tokenizer_dir: str, docs: Path, max_seq: int) -> str:
    """A randomly initialised BERT classifier of ``shape`` whose record says ``head`` at ``max_seq``."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from modeling.classifier import CONFIG_KEY, TrainedView

    directory = work / f"random-{shape}-{max_seq}"
    if (directory / "config.json").exists():  # made by an earlier run (the same documents' labels)
        return str(directory)
    labels = sorted({row.split("\t")[2] for row in docs.read_text(encoding="utf-8").splitlines()[1:]})
    sizes = {"tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
             "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
             "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)}
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, max_position_embeddings=512, num_labels=len(labels),
                        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)}, **sizes[shape])
    setattr(config, CONFIG_KEY, TrainedView(tuple(labels), "head", (), max_seq, 42).to_dict())
    BertForSequenceClassification(config).save_pretrained(directory)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if os.path.exists(os.path.join(tokenizer_dir, name)):
            shutil.copy(os.path.join(tokenizer_dir, name), directory / name)
    return str(directory)


def _model(work: Path, corpus: str, device: str) -> str:
    """MiniLM with a head trained 30 steps on ``head`` 128 (enough to give real labels; made once)."""
    directory = work / f"{corpus}-predict-model"
    if (directory / "config.json").exists():
        return str(directory)
    _, prep_dir = ensure_corpus(work, corpus)
    log(f"training the benchmark's model into {directory} (once)")
    command = [sys.executable, "-m", "trainer.task", "--data_dir", str(prep_dir), "--model_name", minilm_dir(),
               "--task_name", corpus,
               "--output_dir", str(directory), "--max_seq_length", str(MAX_SEQ), "--seq_len_func", "head",
               "--max_steps", "30", "--per_device_train_batch_size", "16", "--learning_rate", "5e-4",
               "--max_eval_samples", "64", "--disable_tqdm", *(["--use_cpu"] if device == "cpu" else [])]
    result = subprocess.run(command, cwd=REPO_ROOT, env=child_env(2), capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"training failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return str(directory)


# --------------------------------------------------------------------------- one side (child)


def _texts(path: str) -> tuple[list[str], list[str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [row["id"] for row in rows], [row["text_a"] for row in rows]


def _child(args: argparse.Namespace) -> int:
    """Run one side here; print ``{"labels": {id: label}, ...}`` as the last line."""
    import torch

    torch.set_num_threads(args.threads)
    labels: dict[str, str] = {}
    extra: dict[str, Any] = {}
    if args.side == "api":
        from modeling.classifier import Classifier

        ids, texts = _texts(args.docs_file)
        classifier = Classifier.from_pretrained(args.model, device=args.device, bf16=args.bf16)
        predictions = classifier.predict(texts, ids=ids, views=args.view, batch_size=args.batch_size,
                                         num_workers=args.workers, max_tokens_per_batch=args.max_tokens_per_batch)
        labels = {p.id: p.label for p in predictions}
        extra["views_scored"] = sum(p.views for p in predictions)
    elif args.side == "hf_pipeline":
        from transformers import pipeline

        ids, texts = _texts(args.docs_file)
        classify = pipeline("text-classification", model=args.model, device=0 if args.device == "cuda" else -1,
                            dtype=torch.bfloat16 if args.bf16 else None)
        try:
            classify([" ".join(texts[:50])])  # longer than the model's positions
            extra["without_truncation"] = "ok"
        except Exception as error:  # noqa: BLE001 - what the user gets is the point
            extra["without_truncation"] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
        outputs = classify(texts, truncation=True, max_length=args.max_seq_length, batch_size=args.batch_size)
        labels = {doc_id: out["label"] for doc_id, out in zip(ids, outputs)}
    elif args.side == "raw":
        from trainer.predict import predict

        out = Path(args.out) / "predictions.jsonl"
        summary = predict(["--model_dir", args.model, "--input_files", args.docs_file, "--output", str(out),
                           "--eval_views", args.view, "--batch_size", str(args.batch_size),
                           "--dataloader_num_workers", str(args.workers), *_budget(args),
                           *(["--use_cpu"] if args.device == "cpu" else []), *(["--bf16"] if args.bf16 else [])])
        labels = {row["id"]: row["label"] for row in map(json.loads, out.read_text().splitlines())}
        extra["views_scored"] = summary["views"]
    elif args.side == "beam":
        from beam_pipelines import predict as beam_predict

        out = Path(args.out) / "beam"
        summary = beam_predict.run(["--model_dir", args.model, "--input_files", args.docs_file, "--output_dir", str(out),
                                    "--eval_views", args.view, "--batch_size", str(args.batch_size), *_budget(args),
                                    "--device", args.device, *(["--bf16"] if args.bf16 else [])])
        for name in sorted(os.listdir(out)):
            if name.startswith("predictions-"):
                labels.update({row["id"]: row["label"] for row in map(json.loads, (out / name).read_text().splitlines())})
        extra["views_scored"] = summary["views"]
    print(json.dumps({"labels": labels, **extra}))
    return 0


def _budget(args: argparse.Namespace) -> list[str]:
    return ["--max_tokens_per_batch", str(args.max_tokens_per_batch)] if args.max_tokens_per_batch else []


def _host_child(args: argparse.Namespace) -> int:
    """One host-only side here: print ``{"documents", "seconds", "cpu_seconds"}`` as the last line.

    ``host_ours``: ``trainer.predict --input_files`` with ``--dataloader_num_workers args.workers``,
    the classifier loaded before the clock starts and its forward replaced by zeros (so every
    other step runs: read, tokenize, views, collate in the workers, pool, write).
    ``host_hf``: the pipeline's ``preprocess`` of each text (truncation at max_seq_length, as the
    ``hf_pipeline`` side calls it) and its ``pad_collate_fn`` per ``--batch_size`` texts.
    """
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    if args.side == "host_ours":
        from modeling.classifier import Classifier
        from trainer import predict as predict_module

        classifier = Classifier.from_pretrained(args.model, device="cpu")
        labels = len(classifier.label_names)
        predict_module.Classifier = type("Loaded", (), {"from_pretrained": staticmethod(lambda *a, **k: classifier)})
        predict_module.score_prepared = lambda model, prepared, **_: np.zeros((len(prepared.owners), labels), np.float32)
        out = Path(args.out) / "host.jsonl"
        started, cpu = time.perf_counter(), _tree_cpu()
        summary = predict_module.predict(["--model_dir", args.model, "--input_files", args.docs_file, "--output", str(out),
                                          "--eval_views", args.view, "--batch_size", str(args.batch_size), "--quiet",
                                          "--dataloader_num_workers", str(args.workers), *_budget(args), "--use_cpu"])
        seconds, cpu = time.perf_counter() - started, _tree_cpu() - cpu
        documents = summary["documents"]
    else:
        from transformers import pipeline
        from transformers.pipelines.base import pad_collate_fn

        classify = pipeline("text-classification", model=args.model, device=-1)
        collate = pad_collate_fn(classify.tokenizer, None)
        started, cpu = time.perf_counter(), _tree_cpu()
        _, texts = _texts(args.docs_file)
        for start in range(0, len(texts), args.batch_size):
            collate([classify.preprocess(text, truncation=True, max_length=args.max_seq_length)
                     for text in texts[start : start + args.batch_size]])
        seconds, cpu = time.perf_counter() - started, _tree_cpu() - cpu
        documents = len(texts)
    print(json.dumps({"documents": documents, "seconds": seconds, "cpu_seconds": cpu}))
    return 0


def _tree_cpu() -> float:
    """CPU seconds of this process and its (waited-for) children so far."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _host_only(args: argparse.Namespace, docs_file: Path, model: str, work: Path) -> int:
    """``--host_only``: every side ``--repeats`` times (best kept), then one table of documents/s and ratios."""
    sides = [("host_hf", 0)] + [("host_ours", workers) for workers in args.host_workers]
    best: dict[tuple[str, int], dict[str, Any]] = {}
    for repeat in range(args.repeats):
        for side, workers in sides:
            log(f"host side {side}, workers {workers}, run {repeat + 1}")
            out = work / "predict-out" / f"{side}-{workers}"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            command = [sys.executable, str(Path(__file__).resolve()), "--side", side, "--view", "1", "--docs_file",
                       str(docs_file), "--model", model, "--out", str(out), "--batch_size", str(args.batch_size),
                       "--threads", str(args.threads), "--max_seq_length", str(args.max_seq_length),
                       "--workers", str(workers), *_budget(args)]
            result = subprocess.run(command, cwd=REPO_ROOT, env=child_env(args.threads), capture_output=True, text=True)
            lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
            if result.returncode != 0 or not lines:
                raise RuntimeError(f"side {side} failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
            measured = json.loads(lines[-1])
            measured["docs_per_s"] = measured["documents"] / measured["seconds"]
            if (side, workers) not in best or measured["docs_per_s"] > best[(side, workers)]["docs_per_s"]:
                best[(side, workers)] = measured
    anchor = best[("host_hf", 0)]["docs_per_s"]
    one = best.get(("host_ours", 1), {}).get("docs_per_s", float("nan"))
    print(f"\nhost side only (model replaced by a no-op): {best[('host_hf', 0)]['documents']} documents "
          f"({docs_file.name}), one view, max_seq_length {args.max_seq_length}, batch {args.batch_size}, "
          f"{args.threads} torch threads, best of {args.repeats}")
    print(f"{'side':<44} {'docs/s':>8} {'CPU s':>7} {'wall s':>7} {'x hf':>6} {'x 1 worker':>11}")
    for (side, workers), measured in best.items():
        name = "transformers.pipeline preprocess + collate" if side == "host_hf" else \
            f"trainer.predict --input_files, {workers} worker{'s' if workers != 1 else ''}"
        rate = measured["docs_per_s"]
        print(f"{name:<44} {rate:>8.1f} {measured['cpu_seconds']:>7.2f} {measured['seconds']:>7.2f} "
              f"{rate / anchor:>6.2f} {rate / one if side == 'host_ours' else float('nan'):>11.2f}")
    write_json(args.json, {"machine": machine(), "docs": args.docs, "host_only": [
        {"side": side, "workers": workers, **measured} for (side, workers), measured in best.items()]})
    return 0


# --------------------------------------------------------------------------- measuring (parent)


def _measure(args: argparse.Namespace, side: str, view: str, docs_file: Path, model: str, out: Path) -> dict[str, Any]:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--side", side, "--view", view, "--docs_file", str(docs_file),
               "--model", model, "--out", str(out), "--device", args.device, "--batch_size", str(args.batch_size),
               "--threads", str(args.threads), "--max_seq_length", str(args.max_seq_length),
               "--workers", str(args.workers), *_budget(args), *(["--bf16"] if args.bf16 else [])]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=REPO_ROOT, env=child_env(args.threads), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    sampler = TreeMemory(child.pid)
    sampler.start()
    stdout, stderr = child.communicate()
    wall = time.perf_counter() - started
    sampler.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if child.returncode != 0 or not lines:
        raise RuntimeError(f"side {side} failed (exit {child.returncode}):\n{stdout[-2000:]}\n{stderr[-4000:]}")
    result = json.loads(lines[-1])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    documents = len(result["labels"])
    result.update(side=side, views=view if side != "hf_pipeline" else "first tokens", documents=documents,
                  wall_s=round(wall, 2), tree_cpu_s=round(cpu, 2), docs_per_s=round(documents / wall, 2),
                  peak_rss_mib=round(sampler.peak_rss / 2**20), peak_pss_mib=round(sampler.peak_pss / 2**20))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.side in ("host_ours", "host_hf"):
        return _host_child(args)
    if args.side:
        return _child(args)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    docs_file = Path(args.docs_tsv) if args.docs_tsv else _documents(work, args.corpus, args.docs)
    if args.random_model:
        model = _random_model(work, args.random_model, args.tokenizer_dir or minilm_dir(), docs_file, args.max_seq_length)
    else:
        model = args.model or _model(work, args.corpus, args.device)
    if args.host_only:
        return _host_only(args, docs_file, model, work)
    results: list[dict[str, Any]] = []
    if "hf_pipeline" in args.sides:
        log("side hf_pipeline")
        results.append(_measure(args, "hf_pipeline", "1", docs_file, model, work / "predict-out" / "hf"))
    for view in args.views:
        for side in [s for s in args.sides if s != "hf_pipeline"]:
            if side == "beam" and importlib.util.find_spec("apache_beam") is None:
                log("side beam skipped: apache_beam is not installed here")
                continue
            log(f"side {side}, views {view}")
            results.append(_measure(args, side, view, docs_file, model, work / "predict-out" / f"{side}-{view}"))
    anchor = next((r for r in results if r["side"] == "hf_pipeline"), None)
    api = {r["views"]: r["labels"] for r in results if r["side"] == "api"}
    print(f"\n{len(results[0]['labels']) if results else 0} documents ({docs_file.name}), model {model}, device {args.device}, "
          f"batch {args.batch_size}, {args.threads} threads, max_seq_length {args.max_seq_length}, bf16 {args.bf16}, "
          f"workers {args.workers}, max_tokens_per_batch {args.max_tokens_per_batch}")
    if args.device == "cuda":
        import torch

        print(f"GPU: {torch.cuda.get_device_name(0)}")
    print(f"{'side':<12} {'views':<13} {'docs/s':>8} {'x hf':>6} {'CPU s':>7} {'RSS MiB':>8} {'PSS MiB':>8} "
          f"{'views':>7} {'= api':>6}")
    for r in results:
        reference = api.get(r["views"]) or api.get("1")
        agree = (sum(r["labels"].get(k) == v for k, v in reference.items()) / len(reference)) if reference else float("nan")
        ratio = r["docs_per_s"] / anchor["docs_per_s"] if anchor else float("nan")
        print(f"{r['side']:<12} {r['views']:<13} {r['docs_per_s']:>8.1f} {ratio:>6.2f} {r['tree_cpu_s']:>7.1f} "
              f"{r['peak_rss_mib']:>8} {r['peak_pss_mib']:>8} {r.get('views_scored', r['documents']):>7} {agree:>6.3f}")
    if anchor:
        print(f"transformers.pipeline on a text longer than the model's positions, without truncation: "
              f"{anchor.get('without_truncation')}")
    write_json(args.json, {"machine": machine(), "corpus": args.corpus, "docs": args.docs, "device": args.device,
                           "results": [{k: v for k, v in r.items() if k != "labels"} for r in results]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
