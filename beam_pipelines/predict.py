"""Batch prediction of raw documents with a trained model, as a Beam job (local or Dataflow GPUs).

    python -m beam_pipelines.predict --model_dir DIR_OR_GS --input_files PATTERN [PATTERN ...] \\
        --output_dir DIR_OR_GS [--input_format tsv|csv|jsonl|parquet] \\
        [--id_column C --label_column C --text_column C --text_b_column C] \\
        [--eval_views 1|K|chunks] [--batch_size N | --max_tokens_per_batch N] [--output_format jsonl|parquet] [--num_shards N] \\
        [--device auto|cpu|cuda] [--bf16 | --fp16] [--overwrite] \\
        [Beam options: --runner DataflowRunner --project P --region R --temp_location gs://... \\
         --dataflow_service_options 'worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver']

Reads the documents with preprocessing's readers (labels optional; bad rows go to
``rejected/input-SSSSS-of-NNNNN.jsonl`` with a reason), tokenizes them with the model's own
tokenizer, applies the sequence-length function it was trained with (with the deterministic
draws of ``trainer.predict``) and expands each long document into its views, scores the views
with Beam's RunInference (the model loaded once per worker process), pools each document's
view logits (mean, or max for a model trained with ``--pooling max``; a model with a head over
the windows, ``--pooling attention|transformer``, pools their states with its head) and writes ``predictions-SSSSS-of-NNNNN.jsonl`` (or ``.parquet``): ``id``,
``label``, ``probabilities`` per label name and ``views``. Last, ``summary.json``: counts (read =
predicted + rejected), and accuracy, macro-F1 and the confusion matrix when the input carries
labels. Without ``--runner`` the job runs here on Beam's FnApiRunner, showing on standard error
the documents scored with a rate and an ETA (the documents and bytes read, times the share of the
views made so far that are scored: reading runs ahead of RunInference); on Dataflow, the job's
ID, console link and states while it waits. ``--quiet``: neither. The command ends with a few
readable lines of the summary (``--json``: the whole summary as one JSON object on standard
output, and nothing else there).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from typing import Any, Iterator, Mapping, Sequence

import apache_beam as beam
import pyarrow as pa
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineState

import spanwise_io
from beam_pipelines import sinks, transforms
from beam_pipelines.inference import (
    ApplyHeadFn,
    CollectStatesFn,
    KeepFirstIdFn,
    PoolLogitsFn,
    TallyFn,
    ViewModelHandler,
    ViewsFn,
    to_record,
)
from beam_pipelines.preprocess import (
    DEFAULT_RUNNER,
    LOCAL_RUNNERS,
    JobFailedError,
    _corpus_error_in,
    _interrupted,
    _not_an_interrupt,
    _runner_name,
    check_runner,
    remove_if_empty,
)
from beam_pipelines.records import REJECTION_SCHEMA
from beam_pipelines.shuffle import GroupTablesByKey
from corpora.inputs import LABEL_NAMES_HELP, InputPlan, parse_label_names, plan_inputs
from corpora.read_progress import planned_bytes
from corpora.readers import FORMATS, plan_tasks
from modeling.batching import check_token_budget
from modeling.classifier import TrainedView
from modeling.features import parse_views
from modeling.label_space import LabelSpace, input_label_separator
from modeling.pooling import HEAD_POOLINGS
from modeling.prediction_output import Tally, format_summary
from schemas.columns import ColumnSpec
from spanwise_io.progress import JobProgress, SharedCounts

__all__ = ["build_parser", "SPLIT", "SUMMARY_NAME", "PREDICTIONS_PREFIX", "build_pipeline", "run", "main"]

_LOG = logging.getLogger(__name__)

# The split name of the documents: messages name --input_files, rejected rows go to rejected/input-*.
SPLIT = "input"
SUMMARY_NAME = "summary.json"
PREDICTIONS_PREFIX = "predictions"
# Beam's file sinks write into <output_dir>/beam-temp-<prefix>-<uuid>/ before they rename.
_BEAM_TEMP_PREFIX = "beam-temp-"


def build_parser() -> argparse.ArgumentParser:
    """spanwise's prediction flags. Every other flag is Beam's (runner, project, temp_location...).

    A plain parser, not a ``PipelineOptions`` subclass: those share one parser in every process
    that imports them, and these flags have the names of preprocessing's.
    """
    parser = argparse.ArgumentParser(
        prog="python -m beam_pipelines.predict", description=__doc__.split("\n\n")[0], allow_abbrev=False,
        epilog="Any other flag is a Beam pipeline option (--runner, --project, --region, --temp_location, "
               f"--dataflow_service_options, ...). Without --runner the job runs here on Beam's {DEFAULT_RUNNER}.",
    )
    group = parser.add_argument_group("spanwise prediction")
    group.add_argument("--model_dir", help="a model folder saved by trainer.task (local or gs://)")
    group.add_argument("--input_files", nargs="+", default=None, metavar="FILE_OR_PATTERN",
                       help="the documents: files or glob patterns, local or gs://, plain or .gz/.bz2/.zst")
    group.add_argument("--input_format", default=None, choices=FORMATS,
                       help="format of every input file (default: from each file's extension)")
    for role, default in (("id", "id, idx, guid, doc_id; none: IDs are made from file and line"),
                          ("label", "label, labels, class, category, target; none: no metrics"),
                          ("text", "text, text_a, sentence, sentence1"),
                          ("text_b", "text_b, sentence2")):
        group.add_argument(f"--{role}_column", default=None,
                           help=f"the {role} column (default: the first of {default})")
    group.add_argument("--label_names", default=None, metavar="NAMES_OR_FILE", help=LABEL_NAMES_HELP)
    group.add_argument("--label_separator", default=None, metavar="SEP",
                       help="a multi-label model: what separates the labels of a text cell (default '|', as "
                       "preprocessing's --multi_label reads them)")
    group.add_argument("--output_dir", help="folder (local or gs://) for the predictions, rejected/ and summary.json")
    group.add_argument("--eval_views", default=None,
                       help="views per long document: 1, K random draws or 'chunks' (default: the views the model was "
                            "trained with, as recorded in it)")
    group.add_argument("--batch_size", type=int, default=32, help="views per forward pass (default 32)")
    group.add_argument("--max_tokens_per_batch", type=int, default=None,
                       help="instead of --batch_size: RunInference's batches sized by tokens (element_size_fn: a "
                            "view's tokens), at most this many padded tokens per forward; at least the model's "
                            "max_seq_length")
    group.add_argument("--output_format", default="jsonl", choices=["jsonl", "parquet"],
                       help="predictions as JSON Lines or Parquet (default jsonl)")
    group.add_argument("--num_shards", type=int, default=0,
                       help="prediction files; 0 = one per --shard_size_mb of input (default 0)")
    group.add_argument("--shard_size_mb", type=int, default=512,
                       help="with --num_shards 0: MiB of input per prediction file (default 512)")
    group.add_argument("--read_range_mb", type=float, default=64,
                       help="plain TSV/JSONL files with an ID column and larger than this are read in byte "
                            "ranges of this many MiB by different workers (default 64)")
    group.add_argument("--decode_errors", default="strict", choices=["strict", "replace"],
                       help="strict: reject rows with invalid UTF-8; replace: keep them with U+FFFD")
    group.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                       help="where the model runs: auto = the worker's GPU when it has one (default auto)")
    group.add_argument("--threshold", type=float, default=None,
                       help="a multi-label model: predict each label whose probability is >= this (default: the "
                       "model's own; its config.json's spanwise.best_threshold is the one with the best micro-F1 on dev)")
    group.add_argument("--bf16", action="store_true", default=False, help="bfloat16 weights")
    group.add_argument("--fp16", action="store_true", default=False, help="float16 weights (GPU only)")
    group.add_argument("--large_model", action="store_true", default=False,
                       help="one copy of the model per worker machine, shared by its processes (Beam's "
                            "share_model_across_processes), for models too large for one copy per process")
    group.add_argument("--overwrite", action="store_true", default=False,
                       help="replace the predictions already in --output_dir (deleted when this job starts)")
    group.add_argument("--json", action="store_true", default=False,
                       help="print the whole summary as one JSON object on standard output, and nothing else there")
    group.add_argument("--quiet", action="store_true", default=False,
                       help="no progress on standard error (local runners), no job states while waiting (Dataflow)")
    return parser


def _check_options(opts: argparse.Namespace) -> None:
    for name in ("model_dir", "input_files", "output_dir"):
        if not getattr(opts, name):
            raise ValueError(f"--{name} is required")
    if opts.batch_size < 1 or opts.num_shards < 0 or opts.shard_size_mb < 1 or not opts.read_range_mb > 0:
        raise ValueError("--batch_size and --shard_size_mb must be >= 1, --num_shards >= 0 and --read_range_mb > 0")
    if opts.bf16 and opts.fp16:
        raise ValueError("choose one of --bf16 and --fp16")
    if opts.fp16 and opts.device == "cpu":
        raise ValueError("--fp16 needs a GPU; use --bf16 on a CPU")
    if opts.threshold is not None and not 0.0 < opts.threshold < 1.0:
        raise ValueError(f"--threshold must be between 0 and 1 (exclusive), got {opts.threshold}")


def _previous_output(output_dir: str, overwrite: bool) -> list[str]:
    """What an earlier prediction run left in ``output_dir`` (names), refused without ``--overwrite``."""
    if not spanwise_io.exists(output_dir):
        return []
    names = spanwise_io.listdir(output_dir)
    ours = [n for n in names if n == SUMMARY_NAME or n.startswith(PREDICTIONS_PREFIX + "-") or n == sinks.REJECTED_DIR]
    if ours and not overwrite:
        raise ValueError(f"{output_dir} already holds predictions ({', '.join(sorted(ours)[:3])}); "
                         "choose another --output_dir or pass --overwrite")
    return ours


def _discard_partial_output(output_dir: str, created: bool) -> None:
    """Delete what a failed job wrote to ``output_dir`` (its predictions so far, rejected rows and
    Beam's ``beam-temp-*`` folders), and the folder itself when this job made it."""
    if not spanwise_io.exists(output_dir):
        return
    for name in spanwise_io.listdir(output_dir):
        path = spanwise_io.join(output_dir, name)
        try:
            if name == sinks.REJECTED_DIR or name.startswith(_BEAM_TEMP_PREFIX):
                spanwise_io.remove_tree(path)
            elif name == SUMMARY_NAME or name.startswith(PREDICTIONS_PREFIX + "-"):
                spanwise_io.remove(path)
        except OSError as error:  # best effort: the job's own error matters more
            _LOG.warning("could not delete %s: %s", path, error)
    if created:
        remove_if_empty(output_dir)


def _num_shards(opts: argparse.Namespace, plan: InputPlan) -> int:
    if opts.num_shards:
        return opts.num_shards
    return max(1, math.ceil(plan.estimated_bytes(SPLIT) / (opts.shard_size_mb << 20)))


def _parquet_schema(label_space: LabelSpace) -> pa.Schema:
    label_names = label_space.names
    return pa.schema([
        pa.field("id", pa.string()),
        pa.field("labels", pa.list_(pa.string())) if label_space.multi_label else pa.field("label", pa.string()),
        pa.field("probabilities", pa.struct([pa.field(name, pa.float64()) for name in label_names])),
        pa.field("views", pa.int32()),
    ], metadata={"spanwise": json.dumps({"label_names": list(label_names)})})


class CountScoredFn(beam.DoFn):
    """Passes scored views on unchanged, counting them for the progress shown here (``ViewsFn``
    counts those made)."""

    def __init__(self, progress_dir: str):
        self._counts = SharedCounts(progress_dir)

    def process(self, element: Any) -> Iterator[Any]:
        self._counts.add(scored=1)
        yield element

    def finish_bundle(self) -> None:
        self._counts.add(flush=True)  # the last counts, exact for the last progress line


class FinalizePredictFn(beam.DoFn):
    """Runs once, after every write: check read = predicted + rejected, write ``summary.json``."""

    def __init__(self, output_dir: str, base: Mapping[str, Any]):
        self._output_dir = output_dir
        self._base = dict(base)

    def process(self, _: Any, predictions: Sequence[str], rejected_files: Sequence[dict], counts: Mapping,
                tally: Tally) -> Any:
        for info in rejected_files:
            tally.rejected.update(info["by_reason"])
        read = sum(c["lines"] - c["headers"] for c in counts.values())
        summary = {**self._base, "read": read, **tally.summary()}
        summary["files"] = {
            "predictions": sorted(spanwise_io.join(self._output_dir, p.rsplit("/", 1)[-1]) for p in predictions),
            "rejected": sorted(spanwise_io.join(self._output_dir, info["name"]) for info in rejected_files if info["rows"]),
        }
        if summary["documents"] + summary["rejected"] != read:
            raise RuntimeError(
                f"read {read} rows but predicted {summary['documents']} and rejected {summary['rejected']}: rows were lost"
            )
        spanwise_io.write_bytes(spanwise_io.join(self._output_dir, SUMMARY_NAME),
                                json.dumps(summary, indent=2, sort_keys=True).encode("utf-8"))
        yield summary


def build_pipeline(pipeline: beam.Pipeline, opts: argparse.Namespace, plan: InputPlan, view: TrainedView,
                   views: int | str, shards: int, base: Mapping[str, Any], progress_dir: str | None = None
                   ) -> beam.PCollection:
    """Add the prediction graph to ``pipeline``; return the PCollection holding the summary.

    read task -> read and parse -> tokenize and build views (fused) -> RunInference ->
    mean (max) of each document's view logits (combined per document), or for a whole-document
    model its window states in order (combined per document) through its head -> the first row of
    each ID (later ones rejected) -> sharded predictions;
    rejected rows -> rejected/; counts and the confusion matrix -> summary.json. ``progress_dir``:
    where the read step counts documents and bytes, ``ViewsFn`` the views made and ``CountScored``
    those scored, for the progress shown here (local runners).
    """
    read_range = max(1, int(opts.read_range_mb * (1 << 20)))
    # a file without IDs is read by one task, so that its derived IDs (<file>:<line>) are its own line numbers
    tasks = [task for file in plan.files[SPLIT]
             for task in plan_tasks(file, read_range if file.layout.id is not None else 1 << 62)]
    names = {file.index: file.name for file in plan.files[SPLIT]}
    paths = {file.index: file.path for file in plan.files[SPLIT]}
    read = (
        pipeline
        | "ListTasks" >> beam.Create(tasks, reshuffle=False)
        | "SpreadTasks" >> beam.Reshuffle()
        | "Read" >> beam.ParDo(transforms.ReadTaskFn(opts.decode_errors, progress_dir)).with_outputs(
            transforms.REJECTED, transforms.COUNTS, main="batches")
    )
    counts = read[transforms.COUNTS]
    viewed = read.batches | "Views" >> beam.ParDo(ViewsFn(opts.model_dir, views, names, progress_dir)).with_outputs(
        transforms.REJECTED, main="views")
    handler = KeyedModelHandler(ViewModelHandler(opts.model_dir, opts.batch_size, opts.device, opts.bf16, opts.fp16,
                                                 opts.large_model, opts.max_tokens_per_batch))
    scored = viewed.views | "RunInference" >> RunInference(handler)
    if progress_dir:
        scored = scored | "CountScored" >> beam.ParDo(CountScoredFn(progress_dir))
    scored = scored | "Scores" >> beam.MapTuple(lambda key, result: (key[0], (key[1], result.inference)))
    if view.pooling in HEAD_POOLINGS:  # the windows' states, in window order, through the model's head
        per_document = (
            scored
            | "CollectStates" >> beam.CombinePerKey(CollectStatesFn())
            | "ApplyHead" >> beam.ParDo(ApplyHeadFn(opts.model_dir, opts.bf16))
        )
    else:
        per_document = scored | "PoolViews" >> beam.CombinePerKey(PoolLogitsFn(view.pooling))
    pooled = (
        per_document
        | "ById" >> beam.Map(lambda document: (document[0][0], document))
        | "GroupById" >> beam.GroupByKey()
        | "KeepFirstOfId" >> beam.ParDo(KeepFirstIdFn(SPLIT, paths), beam.pvalue.AsDict(counts)).with_outputs(
            transforms.REJECTED, main="documents")
    )
    label_space = view.label_space.with_threshold(opts.threshold)
    records = pooled.documents | "ToRecord" >> beam.Map(to_record, label_space=label_space)
    prefix = spanwise_io.join(opts.output_dir, PREDICTIONS_PREFIX)
    if opts.output_format == "parquet":
        written = records | "WritePredictions" >> beam.io.WriteToParquet(
            prefix, _parquet_schema(label_space), file_name_suffix=".parquet", num_shards=shards,
            shard_name_template="-SSSSS-of-NNNNN")
    else:
        written = (
            records
            | "ToJson" >> beam.Map(lambda record: json.dumps(record, ensure_ascii=False))
            | "WritePredictions" >> beam.io.WriteToText(prefix, file_name_suffix=".jsonl", num_shards=shards,
                                                        shard_name_template="-SSSSS-of-NNNNN")
        )
    tally = pooled.documents | "Tally" >> beam.CombineGlobally(TallyFn(label_space))
    rejected_files = (
        (read[transforms.REJECTED], viewed[transforms.REJECTED], pooled[transforms.REJECTED])
        | "AllRejected" >> beam.Flatten()
        | "BatchRejected" >> beam.ParDo(sinks.BatchRejectionsFn({SPLIT: shards}))
        | "GroupRejected" >> GroupTablesByKey(REJECTION_SCHEMA, None)
        | "WriteRejected" >> beam.ParDo(sinks.WriteRejectedFn(opts.output_dir, ""), beam.pvalue.AsDict(counts))
    )
    return (
        pipeline
        | "FinalizeTrigger" >> beam.Create([None])
        | "Finalize" >> beam.ParDo(
            FinalizePredictFn(opts.output_dir, base),
            predictions=beam.pvalue.AsList(written),
            rejected_files=beam.pvalue.AsList(rejected_files),
            counts=beam.pvalue.AsDict(counts),
            tally=beam.pvalue.AsSingleton(tally),
        )
    )


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Check the options, model and inputs, run the job to its end; return the summary it wrote.

    Raises:
        ValueError: an option is missing or invalid, the model folder is not one of ours, or an
            input file does not give the columns asked for (nothing has started).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    opts, beam_argv = build_parser().parse_known_args(argv)
    _check_options(opts)
    options = PipelineOptions(beam_argv)
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = DEFAULT_RUNNER
    runner = _runner_name(standard.runner)
    check_runner(runner)
    view = TrainedView.read(opts.model_dir)
    check_token_budget(opts.max_tokens_per_batch, view.max_seq_length)
    views = parse_views(opts.eval_views if opts.eval_views is not None else view.eval_views)
    spec = ColumnSpec(opts.id_column, opts.label_column, opts.text_column, opts.text_b_column)
    plan = plan_inputs({SPLIT: list(opts.input_files)}, opts.input_format, spec, parse_label_names(opts.label_names),
                       input_label_separator(view.label_space, opts.label_separator, opts.model_dir))
    previous = _previous_output(opts.output_dir, opts.overwrite)
    for name in previous:  # --overwrite: the earlier predictions go before this run writes (not kept on failure)
        path = spanwise_io.join(opts.output_dir, name)
        if name == sinks.REJECTED_DIR:
            spanwise_io.remove_tree(path)
        else:
            spanwise_io.remove(path)
    created_output_dir = not spanwise_io.exists(opts.output_dir)
    spanwise_io.makedirs(opts.output_dir)
    shards = _num_shards(opts, plan)
    base = {
        "model_dir": opts.model_dir,
        "input_files": list(opts.input_files),
        "output_dir": opts.output_dir,
        "output_format": opts.output_format,
        "eval_views": str(views),
        "seq_len": {"name": view.seq_len_func, "params": list(view.seq_func_params),
                    "max_seq_length": view.max_seq_length},
        "label_names": list(view.label_names),
        "runner": runner,
        "derived_ids": plan.derived_ids(SPLIT),
    }
    _LOG.info("predicting %s with %s -> %s", ", ".join(opts.input_files), opts.model_dir, opts.output_dir)
    pipeline = beam.Pipeline(options=options)
    local = runner.lower() in LOCAL_RUNNERS
    progress = JobProgress("predict: scored", planned_bytes(plan.files[SPLIT]), enabled=local and not opts.quiet,
                           scoring=True)
    build_pipeline(pipeline, opts, plan, view, views, shards, base, progress.folder)
    try:
        with progress:
            result = pipeline.run()  # a local runner runs the whole job here
        job_id = result.job_id() if callable(getattr(result, "job_id", None)) and not local else None
        if standard.no_wait_until_finish and job_id:
            return {**base, "job_id": job_id, "state": str(result.state)}
        if job_id and not opts.quiet:
            cloud = options.view_as(GoogleCloudOptions)
            print(f"submitted {runner} job {job_id}; waiting for it to finish. Follow it at "
                  f"https://console.cloud.google.com/dataflow/jobs/{cloud.region}/{job_id}?project={cloud.project}",
                  file=sys.stderr)
            logging.getLogger("apache_beam.runners.dataflow.dataflow_runner").setLevel(logging.INFO)  # its states
        state = result.wait_until_finish()
    except BaseException as error:
        if runner.lower() in LOCAL_RUNNERS:  # a failed local job leaves nothing behind
            _discard_partial_output(opts.output_dir, created_output_dir)
        if _interrupted(error):
            raise KeyboardInterrupt from None
        corpus_error = _corpus_error_in(error) if isinstance(error, Exception) else None
        if corpus_error is not None and corpus_error is not error:
            raise corpus_error from error
        raise
    if state is not None and state != PipelineState.DONE:
        raise JobFailedError(f"prediction job {job_id or ''} ended in state {state}; see its logs")
    return json.loads(spanwise_io.read_bytes(spanwise_io.join(opts.output_dir, SUMMARY_NAME)))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        build_parser().print_help()
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_not_an_interrupt)
    try:
        summary = run(argv)
        if "job_id" in summary:
            print(f"submitted prediction job {summary['job_id']} (state {summary['state']}); not waiting for it. "
                  f"When it is done, its summary is {spanwise_io.join(summary['output_dir'], SUMMARY_NAME)}")
            return 0
    except JobFailedError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: the prediction job was stopped; summary.json was not written", file=sys.stderr)
        return 130
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if build_parser().parse_known_args(argv)[0].json:
        print(json.dumps(summary))
    else:
        print(format_summary({**summary, "summary_output": spanwise_io.join(summary["output_dir"], SUMMARY_NAME)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
