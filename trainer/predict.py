"""``python -m trainer.predict``: one prediction per document with a trained model.

Two kinds of input:

* ``--data_dir DIR --split test``: a split of a preprocessing run (shards and manifest.json);
* ``--input_files PATTERN...``: raw documents, in any input format of preprocessing (TSV, CSV,
  JSONL, Parquet; plain or compressed; local or ``gs://``; columns found by name, labels
  optional), read, tokenized and scored in a stream (``modeling.classifier``, the path the Beam
  pipeline and the Python API share). Bad rows go to ``--rejected_output`` with a reason.

Uses the sequence-length function the model was trained with (recorded in its folder), with
deterministic draws, and optionally several views per long document (``--eval_views``) whose
logits are averaged. Output: JSONL (``id``, ``label``, ``probabilities``) or, for a ``.tsv``
path, a TSV with one probability column per label. Shows its progress on standard error
(``--quiet``: none), writes the full summary as JSON (``--summary_output``) and prints a few
readable lines of it: documents read, predicted, rejected by reason; accuracy, macro-F1 and MCC
where the documents carry labels; where the outputs are. ``--json`` prints the full summary on
standard output instead, and nothing else there, for scripts.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

import spanwise_io
from corpora.inputs import LABEL_NAMES_HELP, parse_label_names, plan_inputs
from corpora.read_progress import TaskProgress, planned_bytes
from corpora.readers import FORMATS, InputFile, TaskCounts, plan_tasks, read_task
from modeling.batching import check_token_budget, ordered_map
from modeling.classifier import DOCS_PER_CHUNK, RUN_CONFIG_NAME, Classifier, TrainedView, load_scoring_model, local_model_path
from modeling.features import FeatureBuilder, SpecialTokenTemplate, parse_views
from modeling.label_space import input_label_separator, labelled_rows
from modeling.prediction_output import PredictionWriter, Tally, format_summary
from modeling.scoring import PreparedViews, ViewBatching, inference_dtype, prepare_views, score_prepared
from schemas.columns import ColumnSpec
from schemas.manifest import check_compatible, problem_type_of, read_manifest
from schemas.rows import DEFAULT_LABEL_SEPARATOR, Reason, Rejection, Row, describe_place
from spanwise_io.progress import Progress
from tokenization.seq_len import validate_seq_config
from tokenization.tokenizer import load_tokenizer, tokenizer_identity
from trainer.distributed import init_distributed, shutdown_distributed
from trainer.evaluation import label_metrics, render_predictions, score_documents
from trainer.shards import DataLimits, ShardProblem, scan_split

__all__ = ["predict", "main", "RAW_SPLIT", "ROWS_PER_CHUNK"]

# The split name of raw documents (their messages say --input_files).
RAW_SPLIT = "input"
# Documents read, tokenized and scored at a time with --input_files (bounds memory).
ROWS_PER_CHUNK = DOCS_PER_CHUNK

log = logging.getLogger("trainer.predict")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``(default: X)`` after a flag's help, except where there is no default value to show (None):
    those flags say in words what happens without them."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None:
            return action.help or ""
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer.predict", description=__doc__.splitlines()[0],
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--model_dir", required=True, help="a model saved by trainer.task (local or gs://)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data_dir", help="shards + manifest.json made by beam_pipelines.preprocess")
    source.add_argument("--input_files", nargs="+", metavar="FILE_OR_PATTERN",
                        help="raw documents: files or glob patterns, local or gs://, plain or .gz/.bz2/.zst")
    parser.add_argument("--split", default="test", help="with --data_dir: the split to predict")
    parser.add_argument("--output", required=True, help="predictions file (.jsonl or .tsv; local or gs://)")
    raw = parser.add_argument_group("raw documents (--input_files)")
    raw.add_argument("--input_format", default=None, choices=FORMATS,
                     help="format of every input file (default: from each file's extension)")
    for role, default in (("id", "id, idx, guid, doc_id; none: IDs are made from file and line"),
                          ("label", "label, labels, class, category, target; none: no metrics"),
                          ("text", "text, text_a, sentence, sentence1"),
                          ("text_b", "text_b, sentence2")):
        raw.add_argument(f"--{role}_column", default=None, help=f"the {role} column (default: the first of {default})")
    raw.add_argument("--label_names", default=None, metavar="NAMES_OR_FILE", help=LABEL_NAMES_HELP)
    raw.add_argument("--label_separator", default=None, metavar="SEP",
                     help=f"a multi-label model: what separates the labels of a text cell (default {DEFAULT_LABEL_SEPARATOR!r}, "
                     "as preprocessing's --multi_label reads them)")
    raw.add_argument("--rejected_output", default=None,
                     help="rejected rows as JSONL, each with its file, line, reason and the row as read "
                          "(default: the --output path with .rejected.jsonl)")
    raw.add_argument("--decode_errors", default="strict", choices=["strict", "replace"],
                     help="strict: reject rows with invalid UTF-8; replace: keep them with U+FFFD")
    parser.add_argument("--eval_views", default=None, help="views per long document: 1, K or 'chunks' (default: the views the model was trained "
                             "with, as recorded in it)")
    parser.add_argument("--batch_size", "--per_device_eval_batch_size", dest="batch_size", type=int, default=32,
                        help="views per batch")
    parser.add_argument("--max_tokens_per_batch", type=int, default=None,
                        help="instead of --batch_size views, as many views per batch as fit in this many padded tokens "
                             "(views x the longest; views sorted by length); at least the model's max_seq_length")
    parser.add_argument("--dataloader_num_workers", type=int, default=0,
                        help="worker processes that read, tokenize, build the views and collate the batches while the "
                             "model runs (0: all in this process); the predictions do not depend on it")
    parser.add_argument("--threshold", type=float, default=None,
                        help="a multi-label model: predict each label whose probability is >= this (default: the model's "
                        "own, --threshold of its training; its config.json's spanwise.best_threshold is the one with "
                        "the best micro-F1 on dev)")
    parser.add_argument("--use_cpu", action="store_true", help="run on the CPU even if a GPU is present")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 weights (GPU with bf16, or CPU)")
    parser.add_argument("--fp16", action="store_true", help="float16 weights (GPU only)")
    parser.add_argument("--skip_bad_shards", action="store_true",
                        help="skip (and count) missing, corrupt or foreign shards and unreadable row groups instead of stopping")
    parser.add_argument("--summary_output", default=None,
                        help="the full summary as JSON (default: the --output path with .summary.json)")
    parser.add_argument("--json", action="store_true",
                        help="print the full summary as one JSON object on standard output, and nothing else there")
    parser.add_argument("--quiet", action="store_true", help="no progress (documents, rate, ETA) on standard error")
    return parser


def predict(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Write the predictions; return a summary (documents, output path, accuracy where labelled)."""
    args = build_parser().parse_args(argv)
    if args.bf16 and args.fp16:
        raise ValueError("choose one of --bf16 and --fp16")
    if args.batch_size < 1 or args.dataloader_num_workers < 0:
        raise ValueError("--batch_size must be >= 1 and --dataloader_num_workers >= 0")
    if args.threshold is not None and not 0.0 < args.threshold < 1.0:
        raise ValueError(f"--threshold must be between 0 and 1 (exclusive), got {args.threshold}")
    summary_path = args.summary_output or _beside(args.output, ".summary.json")
    summary = predict_raw(args) if args.input_files else predict_shards(args)
    if summary is not None:
        summary["summary_output"] = summary_path
        spanwise_io.write_bytes(summary_path, (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    return summary


def predict_shards(args: argparse.Namespace) -> dict[str, Any]:
    """``--data_dir``: score a split of a preprocessing run; return the summary (None on other ranks)."""
    ctx = init_distributed(args.use_cpu)
    progress = Progress("predict: scored", enabled=ctx.is_main and not args.quiet)
    try:
        inference_dtype(args.bf16, args.fp16, ctx.device)  # (checked before any work)
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
        space = TrainedView.read(model_dir).label_space.with_threshold(args.threshold)
        data_labels = [name for name, _ in sorted(manifest["label_map"].items(), key=lambda item: item[1])]
        if data_labels != label_names:
            raise ValueError(f"{args.data_dir}: label map {data_labels} differs from the model's {label_names}")
        if problem_type_of(manifest) != space.problem_type:
            raise ValueError(f"{args.data_dir} has problem_type {problem_type_of(manifest)} but the model "
                             f"{args.model_dir} is a {space.problem_type} model; preprocess the data as it was for training")
        seq = run_config["seq_len"]
        seq_config = validate_seq_config(seq["name"], seq["params"], seq["max_seq_length"], tokenizer)
        features = FeatureBuilder(seq_config, SpecialTokenTemplate.from_tokenizer(tokenizer), train_args["seed"],
                                  max_chunks=train_args.get("max_chunks"))  # --max_chunks and --pooling as in training
        views = parse_views(args.eval_views if args.eval_views is not None else train_args.get("eval_views", "1"))
        check_token_budget(args.max_tokens_per_batch, int(seq["max_seq_length"]))

        # the same up-front check as training (listing + Parquet footers), before the model is loaded
        limits = DataLimits(len(label_names), True, manifest["tokenizer"].get("vocab_size"), multi_label=space.multi_label)
        scan = scan_split(args.data_dir, manifest, args.split, limits=limits, skip_bad_shards=args.skip_bad_shards)
        for problem in scan.skipped:
            log.warning("--skip_bad_shards: skipping %s (%s rows)", problem, problem.rows)
        skipped_row_groups: list[ShardProblem] | None = [] if args.skip_bad_shards else None
        dtype = inference_dtype(args.bf16, args.fp16, ctx.device)
        model = load_scoring_model(model_dir, ctx.device, dtype)  # bf16/fp16: the weights cast once, no autocast
        progress.total_docs = sum(unit.rows for unit in scan.units) if ctx.world_size == 1 else None  # else: a share
        progress.start()
        doc_ids, labels, logits = score_documents(
            model,
            scan.units,
            features,
            views=views,
            batch_size=args.batch_size,
            device=ctx.device,
            pad_token_id=int(tokenizer.pad_token_id or 0),
            max_tokens=args.max_tokens_per_batch,
            rank=ctx.rank,
            world_size=ctx.world_size,
            limits=limits,
            skipped=skipped_row_groups,
            num_workers=args.dataloader_num_workers,
            pooling=train_args.get("pooling", "mean"),
            progress=progress.update,
        )
        progress.close()
        for problem in skipped_row_groups or ():
            log.warning("--skip_bad_shards: skipping %s (%s rows)", problem, problem.rows)
        if ctx.is_main:
            spanwise_io.write_bytes(args.output, render_predictions(args.output, doc_ids, logits, space))
        labelled = labelled_rows(labels) if len(doc_ids) else np.zeros(0, dtype=bool)
        summary: dict[str, Any] = {"documents": len(doc_ids), "output": args.output, "eval_views": str(views)}
        if scan.skipped or skipped_row_groups:
            skipped = [problem.to_dict() for problem in [*scan.skipped, *(skipped_row_groups or ())]]
            summary["skipped"] = {"files": len(scan.skipped), "row_groups": len(skipped_row_groups or ()), "details": skipped}
        if labelled.any():
            metrics = label_metrics(space, labels, logits)
            names = ("micro_f1", "macro_f1", "exact_match", "threshold") if space.multi_label else ("accuracy", "macro_f1", "mcc")
            summary.update(labelled=int(labelled.sum()), **{name: metrics[name] for name in names})
        return summary if ctx.is_main else None
    finally:
        progress.close(show=False)  # (after a failure; a finished run has shown its last line)
        shutdown_distributed()


@dataclass
class _RawChunk:
    """Up to ``ROWS_PER_CHUNK`` rows of one read task, with the rows rejected while reading them.

    ``counts`` is the task's (filled by the reader) on its last chunk only, and None before.
    """

    file: InputFile
    task: Any
    rows: list[Row]
    rejections: list[Rejection]
    first: bool
    counts: TaskCounts | None = None

    def doc_ids(self) -> list[str]:
        """A row's ID, or the one preprocessing derives: ``<file>:<line>`` (Parquet ``<file>:<row>``)."""
        return [row.id or f"{self.file.name}:{row.line or row.offset}" for row in self.rows]


def _read_chunks(files: Sequence[InputFile], decode_errors: str) -> Iterator[_RawChunk]:
    """The rows of every file, in order, in chunks (read here: reading is cheap next to tokenizing).

    A chunk ends at ``ROWS_PER_CHUNK`` rows, or rejections (bounding memory on a file of bad
    rows), and at the end of each task, whose last chunk (maybe empty) carries its counts.
    """
    for file in files:
        for task in plan_tasks(file, 1 << 62):  # one task per file: line numbers are the file's
            counts = TaskCounts()
            rows: list[Row] = []
            rejections: list[Rejection] = []
            first = True
            for item in read_task(task, counts, decode_errors):
                if isinstance(item, Rejection):
                    rejections.append(item)
                else:
                    rows.append(item)
                if len(rows) == ROWS_PER_CHUNK or len(rejections) == ROWS_PER_CHUNK:
                    yield _RawChunk(file, task, rows, rejections, first)
                    rows, rejections, first = [], [], False
            yield _RawChunk(file, task, rows, rejections, first, counts)


def _chunk_payload(chunk: _RawChunk) -> tuple[list[str], list[str], list[str]]:
    return chunk.doc_ids(), [row.text_a for row in chunk.rows], [row.text_b for row in chunk.rows]


def predict_raw(args: argparse.Namespace) -> dict[str, Any]:
    """``--input_files``: read, tokenize, score and write in chunks of ``ROWS_PER_CHUNK`` documents.

    A row that cannot be read, or whose text gives no tokens, goes to the rejected output with
    its file, line and reason; read = predicted + rejected. A file without an ID column gives
    its rows the IDs preprocessing would (``<file>:<line>``, Parquet ``<file>:<row>``). With
    ``--dataloader_num_workers N`` this process reads the rows and N worker processes tokenize
    them, build the views and collate the batches (``modeling.batching.ordered_map``), a few
    chunks ahead of the model; the chunks, batches and outputs are those of 0 workers.
    """
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("--input_files runs in one process; to predict on many GPUs or machines use "
                         "python -m beam_pipelines.predict")
    spec = ColumnSpec(args.id_column, args.label_column, args.text_column, args.text_b_column)
    separator = input_label_separator(TrainedView.read(args.model_dir).label_space, args.label_separator, args.model_dir)
    plan = plan_inputs({RAW_SPLIT: list(args.input_files)}, args.input_format, spec,  # columns checked first
                       parse_label_names(args.label_names), separator)
    check_token_budget(args.max_tokens_per_batch, TrainedView.read(args.model_dir).max_seq_length)
    classifier = Classifier.from_pretrained(args.model_dir, device="cpu" if args.use_cpu else None,
                                            bf16=args.bf16, fp16=args.fp16, threshold=args.threshold)
    views = parse_views(args.eval_views if args.eval_views is not None else classifier.view.eval_views)
    batching = ViewBatching(classifier.documents, views, args.batch_size, args.max_tokens_per_batch)
    rejected_path = args.rejected_output or _beside(args.output, ".rejected.jsonl")
    tally = Tally(classifier.label_space)
    read = 0
    first_of_id: dict[str, str] = {}  # ID -> where its first row is (later rows of that ID are rejected)
    progress = Progress("predict: read", total_bytes=planned_bytes(plan.files[RAW_SPLIT]), enabled=not args.quiet)
    with spanwise_io.atomic_write(args.output) as out, spanwise_io.atomic_write(rejected_path) as rejected_out, \
            progress:
        writer = PredictionWriter(out, classifier.label_space, tsv=args.output.endswith(".tsv"))

        def reject(rejection: Rejection) -> None:
            tally.rejected[rejection.reason] += 1
            rejected_out.write((rejection.to_json() + "\n").encode("utf-8"))

        chunks = _read_chunks(plan.files[RAW_SPLIT], args.decode_errors)
        done: TaskProgress | None = None
        for chunk, prepared in ordered_map(prepare_views, batching, chunks, _chunk_payload,
                                           args.dataloader_num_workers):
            if chunk.first:
                done = TaskProgress(chunk.task, lambda docs, nbytes, _: progress.update(docs, nbytes))
            for rejection in chunk.rejections:  # (read before the chunk's rows were scored, so written first)
                reject(rejection)
            if chunk.rows:
                _predict_chunk(classifier, chunk, prepared, writer, tally, reject, first_of_id)
                done.advance(len(chunk.rows) + len(chunk.rejections), chunk.rows[-1].offset)
            if chunk.counts is not None:
                done.finish(chunk.counts)
                read += chunk.counts.lines - chunk.counts.headers
    summary: dict[str, Any] = {"read": read, **tally.summary(), "output": args.output, "rejected_output": rejected_path,
                               "eval_views": str(views)}
    if summary["documents"] + summary["rejected"] != read:
        raise RuntimeError(f"read {read} rows but predicted {summary['documents']} and rejected {summary['rejected']}")
    return summary


def _beside(output: str, suffix: str) -> str:
    """A file beside ``output``: ``p.jsonl`` -> ``p<suffix>`` (the rejected rows, the summary)."""
    for extension in (".jsonl", ".tsv"):
        if output.endswith(extension):
            return output[: -len(extension)] + suffix
    return output + suffix


def _predict_chunk(classifier: Classifier, chunk: _RawChunk, prepared: PreparedViews, writer: PredictionWriter,
                   tally: Tally, reject: Any, first_of_id: dict[str, str]) -> None:
    """Score one prepared chunk of rows and write their predictions.

    Rows without tokens are rejected, and so is a row whose ID an earlier row has (as
    preprocessing keeps the first row of an ID); ``first_of_id`` remembers where each ID was first.
    (A repeated ID's views were prepared with the others, and are scored but not written.)
    """
    rows, doc_ids = chunk.rows, chunk.doc_ids()
    kept: list[int] = []  # rows written
    dense: list[int] = []  # their places among the rows with tokens (prepared.owners' numbering)
    with_tokens = 0
    for index, row in enumerate(rows):
        if not prepared.has_tokens[index]:
            reject(Rejection.of_row(row, Reason.NO_TOKENS, "TEXT_A gives no tokens with this tokenizer"))
            continue
        with_tokens += 1
        if row.id and row.id in first_of_id:
            reject(Rejection.of_row(row, Reason.DUPLICATE_ID,
                                    f"ID {row.id!r} already used at {first_of_id[row.id]}; the first is kept"))
            continue
        if row.id:
            first_of_id[row.id] = describe_place(chunk.file.path, row.line, row.offset)
        kept.append(index)
        dense.append(with_tokens - 1)
    if not kept:
        return
    scored = score_prepared(classifier.model, prepared, device=classifier.device, autocast=classifier.autocast)
    pooled = classifier.pool(scored, prepared.owners, prepared.documents)
    predicted = writer.write([doc_ids[i] for i in kept], pooled[dense])
    multi = classifier.label_space.multi_label
    tally.add([rows[i].labels if multi else rows[i].label for i in kept], predicted,
              int(np.bincount(prepared.owners)[dense].sum()))


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        summary = predict(argv)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if summary is None:  # not the main rank: it wrote nothing
        return 0
    if build_parser().parse_args(argv).json:
        print(json.dumps(summary))
    else:
        print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
