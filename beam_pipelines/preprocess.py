"""Tokenize a TSV corpus once into sharded Parquet records, a manifest and a dead-letter output.

    python -m beam_pipelines.preprocess --data_dir DIR_OR_GS --output_dir DIR_OR_GS \\
        --tokenizer NAME_OR_PATH [--max_doc_tokens N] [--max_doc_chars N] [--max_labels N] [--num_shards N] \\
        [--seq_len_func head|tail|ht --seq_func_params ... --max_seq_length N] \\
        [Beam options: --runner DataflowRunner --project P --region R --temp_location gs://...]

Runs on the DirectRunner by default and on Dataflow with Beam's usual options. Writes
``<output_dir>/manifest.json``, ``<split>-SSSSS-of-NNNNN.parquet`` and ``rejected/<split>-*.jsonl``
(design.md section 4), then prints the corpus statistics. With Beam's ``--no_wait_until_finish``
a Dataflow job is submitted and the command returns at once, printing the job id and where the
manifest will appear.

Resource guards: a text longer than ``--max_doc_chars`` characters is cut to its head and tail
before tokenizing (counted in the manifest), and a train split with more distinct labels than
``--max_labels`` stops the job with a ``CorpusError`` (a ValueError) before anything is written.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import uuid
from dataclasses import dataclass
from typing import Any, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineResult, PipelineState

import spanwise_io
from beam_pipelines import sinks, transforms
from schemas.manifest import MANIFEST_NAME, format_stats, read_manifest
from schemas.tsv import REQUIRED_SPLITS, SPLITS
from tokenization.seq_len import DETERMINISTIC_FUNCS, SeqLenConfig, validate_seq_config
from tokenization.tokenizer import load_tokenizer, tokenizer_identity

__all__ = [
    "PreprocessOptions",
    "PreprocessJob",
    "JobFailedError",
    "CorpusError",
    "DEFAULT_MAX_DOC_CHARS",
    "MIN_MAX_DOC_CHARS",
    "DEFAULT_MAX_LABELS",
    "build_pipeline",
    "submit",
    "run",
    "main",
]

_LOG = logging.getLogger(__name__)

CorpusError = transforms.CorpusError
# 1M characters: ~200-250k tokens of English text (4-5 characters a token), at most ~1M
# WordPiece tokens of any text, so --max_doc_tokens (32768) still decides for any ordinary text;
# the fast tokenizer needs ~0.7 GB per million tokens of one text (measured with MiniLM's), so
# a text costs ~0.2 GB (English) to ~0.7 GB (CJK) at most, where a 10M-token text needs ~7 GB.
DEFAULT_MAX_DOC_CHARS = 1_000_000
# Below this, the guard would cut ordinary paragraphs: it is a guard against pathological
# texts, not a way to shorten documents (--max_doc_tokens and --seq_len_func are).
MIN_MAX_DOC_CHARS = 1000
DEFAULT_MAX_LABELS = 10_000
# How a CorpusError appears in a worker's traceback passed on as text (Dataflow, multi_processing).
_CORPUS_ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?CorpusError: (.+)$", re.MULTILINE)
_STEP_ANNOTATION = re.compile(r" \[while running '[^']*'\]$")


class PreprocessOptions(PipelineOptions):
    """spanwise's own options; all other flags are Beam's (runner, project, temp_location...)."""

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        group = parser.add_argument_group("spanwise preprocessing") if hasattr(parser, "add_argument_group") else parser
        group.add_argument("--data_dir", help="folder (local or gs://) with train.tsv, dev.tsv and optional test.tsv")
        group.add_argument("--output_dir", help="folder (local or gs://) for manifest.json, shards and rejected/")
        group.add_argument("--tokenizer", help="fast tokenizer: local dir, gs:// dir or hub name")
        group.add_argument(
            "--max_doc_tokens", type=int, default=32768,
            help="cap per text; longer texts keep their first and last halves of the cap (default 32768)",
        )
        group.add_argument(
            "--max_doc_chars", type=int, default=DEFAULT_MAX_DOC_CHARS,
            help=(
                "guard per text, applied BEFORE tokenizing: a TEXT_A or TEXT_B longer than this many characters "
                "keeps its first and last halves (cut at whitespace) and is counted in the manifest "
                "(stats.capped_at_max_doc_chars); its token length is then that of the cut text. "
                f"The default {DEFAULT_MAX_DOC_CHARS:,} characters is ~200k English tokens, far above "
                "--max_doc_tokens, which still decides for ordinary text; it bounds the tokenizer's memory "
                f"(~0.2 GB per English text at the default). 0 = no guard; else at least {MIN_MAX_DOC_CHARS}"
            ),
        )
        group.add_argument(
            "--max_labels", type=int, default=DEFAULT_MAX_LABELS,
            help=(
                "most distinct labels in train.tsv; more stop the job before anything is written, "
                f"naming some of them (often a shifted LABEL column) (default {DEFAULT_MAX_LABELS})"
            ),
        )
        group.add_argument(
            "--num_shards", type=int, default=0,
            help="shards per split; 0 = one per --rows_per_shard rows (default 0)",
        )
        group.add_argument("--rows_per_shard", type=int, default=10000, help="target rows per shard when --num_shards is 0")
        group.add_argument(
            "--seq_len_func", default=None, choices=sorted(DETERMINISTIC_FUNCS),
            help="apply a deterministic sequence-length function now (saves space); random ones belong to the trainer",
        )
        group.add_argument("--seq_func_params", type=int, nargs="*", default=[], help="parameters of --seq_len_func")
        group.add_argument("--max_seq_length", type=int, default=None, help="model input length; needed with --seq_len_func")
        group.add_argument(
            "--decode_errors", default="strict", choices=["strict", "replace"],
            help="strict: reject rows with invalid UTF-8; replace: keep them with U+FFFD (default strict)",
        )
        group.add_argument("--tokenize_batch_size", type=int, default=64, help="texts per tokenizer call (default 64)")
        group.add_argument(
            "--overwrite", action="store_true", default=False,
            help="replace an earlier run's manifest, shards and rejected rows in --output_dir",
        )


def _check_options(opts: PreprocessOptions) -> dict[str, str]:
    """Validate our options before any work; return ``{split: input path}``."""
    for name in ("data_dir", "output_dir", "tokenizer"):
        if not getattr(opts, name):
            raise ValueError(f"--{name} is required")
    if opts.max_doc_tokens < 1:
        raise ValueError(f"--max_doc_tokens must be >= 1, got {opts.max_doc_tokens}")
    if opts.max_doc_chars != 0 and opts.max_doc_chars < MIN_MAX_DOC_CHARS:
        raise ValueError(
            f"--max_doc_chars must be 0 (no cap) or >= {MIN_MAX_DOC_CHARS}, got {opts.max_doc_chars}; "
            "to shorten documents use --max_doc_tokens or --seq_len_func"
        )
    if opts.max_labels < 1:
        raise ValueError(f"--max_labels must be >= 1, got {opts.max_labels}")
    if opts.num_shards < 0 or opts.rows_per_shard < 1:
        raise ValueError("--num_shards must be >= 0 and --rows_per_shard >= 1")
    if opts.tokenize_batch_size < 1:
        raise ValueError("--tokenize_batch_size must be >= 1")
    inputs: dict[str, str] = {}
    for split in SPLITS:
        path = spanwise_io.join(opts.data_dir, f"{split}.tsv")
        if spanwise_io.exists(path):
            inputs[split] = path
        elif split in REQUIRED_SPLITS:
            raise ValueError(f"{path} not found: --data_dir needs train.tsv and dev.tsv (test.tsv is optional)")
    existing = [name for name in spanwise_io.listdir(opts.output_dir) if name == MANIFEST_NAME or name.endswith(".parquet")] \
        if spanwise_io.exists(opts.output_dir) else []
    if existing and not opts.overwrite:
        raise ValueError(
            f"{opts.output_dir} already holds an earlier run ({', '.join(existing[:3])}...); "
            "choose another --output_dir or pass --overwrite"
        )
    return inputs


def _clear_previous_run(output_dir: str) -> None:
    if not spanwise_io.exists(output_dir):
        return
    for name in spanwise_io.listdir(output_dir):
        if name == MANIFEST_NAME or name.endswith(".parquet"):
            spanwise_io.remove(spanwise_io.join(output_dir, name))
    spanwise_io.remove_tree(spanwise_io.join(output_dir, sinks.REJECTED_DIR))


def build_pipeline(
    pipeline: beam.Pipeline,
    opts: PreprocessOptions,
    inputs: dict[str, str],
    manifest_base: dict[str, Any],
    seq_config: SeqLenConfig | None,
    temp_dir: str,
) -> beam.PCollection:
    """Add the preprocessing graph to ``pipeline``; return the PCollection holding the manifest.

    Elements are batches of rows end to end (read -> tokenize -> group by shard -> write); the
    small side outputs (per-file counts, per-batch length histograms, labels, rejected rows)
    feed the label map, the shard counts and the single finalize step.
    """
    read = (
        pipeline
        | "ListInputs" >> beam.Create(sorted(inputs.items()))
        | "ReadParse" >> beam.ParDo(
            transforms.ReadParseFn(opts.tokenize_batch_size, opts.decode_errors, opts.max_doc_chars)
        ).with_outputs(
            transforms.REJECTED, transforms.COUNTS, main="batches"
        )
    )
    # one file is read by one worker: spread its batches over the workers before tokenizing
    batches = read.batches | "Spread" >> beam.Reshuffle()
    counts = read[transforms.COUNTS]
    # The label map never holds more than --max_labels + 1 labels: a shifted LABEL column
    # (texts as labels) fails in BuildLabelMap with a count and examples, not in memory.
    distinct_labels = (
        batches
        | "TrainLabels" >> beam.FlatMap(lambda batch: sorted({row.label for row in batch if row.split == "train"}))
        | "DistinctLabels" >> beam.Distinct()
    )
    label_count = distinct_labels | "CountLabels" >> beam.combiners.Count.Globally()
    label_map = (
        distinct_labels
        | "AllLabels" >> beam.combiners.Top.Smallest(opts.max_labels + 1)
        | "BuildLabelMap" >> beam.Map(
            transforms.build_label_map, max_labels=opts.max_labels, found=beam.pvalue.AsSingleton(label_count)
        )
    )
    tokenized = batches | "Tokenize" >> beam.ParDo(
        transforms.TokenizeBatchFn(opts.tokenizer, opts.max_doc_tokens, seq_config, opts.num_shards, opts.rows_per_shard),
        beam.pvalue.AsSingleton(label_map),
        beam.pvalue.AsDict(counts),
    ).with_outputs(transforms.REJECTED, transforms.STATS, main="shards")
    shards = (
        tokenized.shards
        | "GroupByShard" >> beam.GroupByKey()
        | "WriteShards" >> beam.ParDo(sinks.WriteShardFn(temp_dir))
    )
    stats = tokenized[transforms.STATS] | "LengthStats" >> beam.CombinePerKey(transforms.LengthStatsFn())
    rejected = (read[transforms.REJECTED], tokenized[transforms.REJECTED]) | "AllRejected" >> beam.Flatten()
    rejected_files = (
        rejected
        | "RejectedBySplit" >> beam.Map(lambda r: (r.split, r))
        | "GroupRejected" >> beam.GroupByKey()
        | "WriteRejected" >> beam.ParDo(sinks.WriteRejectedFn(temp_dir))
    )
    rejected_counts = (
        rejected
        | "ReasonKeys" >> beam.Map(lambda r: ((r.split, r.reason), 1))
        | "CountReasons" >> beam.CombinePerKey(sum)
    )
    return (
        pipeline
        | "FinalizeTrigger" >> beam.Create([None])
        | "Finalize" >> beam.ParDo(
            sinks.FinalizeFn(opts.output_dir, temp_dir, manifest_base, inputs),
            shards=beam.pvalue.AsList(shards),
            rejected_files=beam.pvalue.AsList(rejected_files),
            label_map=beam.pvalue.AsSingleton(label_map),
            counts=beam.pvalue.AsDict(counts),
            rejected_counts=beam.pvalue.AsDict(rejected_counts),
            stats=beam.pvalue.AsDict(stats),
        )
    )


def _help_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m beam_pipelines.preprocess",
        description=__doc__.split("\n\n")[0],
        epilog="Any other flag is a Beam pipeline option (--runner, --project, --region, --temp_location, ...).",
    )
    PreprocessOptions._add_argparse_args(parser)
    return parser


class JobFailedError(RuntimeError):
    """A remote preprocessing job ended in another state than DONE."""


def _corpus_error_in(error: BaseException, where: str = "") -> CorpusError | None:
    """The ``CorpusError`` behind a failed run, with the user's message only; None if there is none.

    On the DirectRunner (in_memory) the error is raised as it was. A runner that passes on the
    worker's traceback as text (Dataflow, multi_processing) gives an exception whose message
    holds a ``...CorpusError: <message>`` line: that message is taken (the last one, the
    original) and any " [while running 'step']" that Beam added is dropped.
    """
    if isinstance(error, CorpusError):
        message = _STEP_ANNOTATION.sub("", str(error))
        return error if message == str(error) and not where else CorpusError(message + where)
    found = _CORPUS_ERROR_LINE.findall(str(error).replace("\\n", "\n"))
    if not found:
        return None
    return CorpusError(_STEP_ANNOTATION.sub("", found[-1].strip()) + where)


def _remove_temp_dir(temp_dir: str) -> None:
    """Best effort: a failed DirectRunner job leaves no temp folder in --output_dir."""
    try:
        spanwise_io.remove_tree(temp_dir)
    except Exception as error:  # noqa: BLE001 (the job's own error matters more)
        _LOG.warning("could not remove %s: %s", temp_dir, error)


@dataclass
class PreprocessJob:
    """A started preprocessing job: on Dataflow it runs on, on the DirectRunner it has finished."""

    result: PipelineResult
    output_dir: str
    runner: str
    job_id: str | None = None
    console_url: str | None = None
    no_wait: bool = False  # Beam's --no_wait_until_finish: the caller returns once it is submitted

    @property
    def state(self) -> str:
        return str(self.result.state)

    @property
    def _where(self) -> str:
        """`` (job ID: console URL)`` for messages about a remote job; empty for a local one."""
        return f" (job {self.job_id}: {self.console_url})" if self.job_id else ""

    def wait(self) -> dict[str, Any]:
        """Block until the job ends; return the manifest it wrote.

        Raises:
            CorpusError: the job failed on the corpus (e.g. more labels than --max_labels).
            JobFailedError: the job ended in another state than DONE (failed, cancelled, drained).
        """
        try:
            state = self.result.wait_until_finish()
        except Exception as error:
            corpus_error = _corpus_error_in(error, self._where)
            if corpus_error is not None:
                raise corpus_error from error
            if type(error).__name__ != "DataflowRuntimeException":  # (Beam's class; its module needs the gcp extra)
                raise
            raise JobFailedError(f"preprocessing job failed{self._where}: {error}") from error
        if state != PipelineState.DONE:
            raise JobFailedError(f"preprocessing job ended in state {state}{self._where}; see its logs")
        return read_manifest(self.output_dir)


def submit(argv: Sequence[str] | None = None) -> PreprocessJob:
    """Check the options, build the pipeline and start it; do not wait for a remote job.

    Raises:
        ValueError: an option is missing or invalid.
        CorpusError: (DirectRunner, which runs the job here) the corpus cannot be preprocessed
            (no valid train rows, more labels than --max_labels); nothing is published.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    options = PipelineOptions(argv)
    opts = options.view_as(PreprocessOptions)
    inputs = _check_options(opts)
    tokenizer = load_tokenizer(opts.tokenizer)
    seq_config = None
    if opts.seq_len_func:
        if not opts.max_seq_length:
            raise ValueError("--seq_len_func at preprocess time needs --max_seq_length")
        seq_config = validate_seq_config(opts.seq_len_func, opts.seq_func_params, opts.max_seq_length, tokenizer)
    elif opts.seq_func_params:
        raise ValueError("--seq_func_params given without --seq_len_func")
    if opts.overwrite:
        _clear_previous_run(opts.output_dir)
    spanwise_io.makedirs(opts.output_dir)
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    manifest_base = {
        "options": {
            "data_dir": opts.data_dir,
            "output_dir": opts.output_dir,
            "tokenizer": opts.tokenizer,
            "max_doc_tokens": opts.max_doc_tokens,
            "max_doc_chars": opts.max_doc_chars,
            "max_labels": opts.max_labels,
            "num_shards": opts.num_shards,
            "rows_per_shard": opts.rows_per_shard,
            "decode_errors": opts.decode_errors,
            "runner": runner,
        },
        "tokenizer": tokenizer_identity(tokenizer, opts.tokenizer),
        "max_doc_tokens": opts.max_doc_tokens,
        "max_doc_chars": opts.max_doc_chars,
        "preprocess_seq_len": seq_config.to_dict() if seq_config else None,
    }
    temp_dir = spanwise_io.join(opts.output_dir, f".spanwise-tmp-{uuid.uuid4().hex}")
    _LOG.info("preprocessing %s -> %s", ", ".join(inputs.values()), opts.output_dir)
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, opts, inputs, manifest_base, seq_config, temp_dir)
    try:
        result = pipeline.run()  # the DirectRunner runs the whole job here
    except Exception as error:
        if "dataflow" not in runner.lower():  # (a Dataflow submission that fails wrote nothing)
            _remove_temp_dir(temp_dir)
        corpus_error = _corpus_error_in(error)
        if corpus_error is not None and corpus_error is not error:
            raise corpus_error from error
        raise
    job_id = result.job_id() if callable(getattr(result, "job_id", None)) else None
    console_url = None
    if job_id:
        cloud = options.view_as(GoogleCloudOptions)
        console_url = f"https://console.cloud.google.com/dataflow/jobs/{cloud.region}/{job_id}?project={cloud.project}"
    no_wait = options.view_as(StandardOptions).no_wait_until_finish
    return PreprocessJob(result, opts.output_dir, runner, job_id, console_url, no_wait)


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the preprocessing job to its end; return the manifest it wrote.

    Waits for a Dataflow job whatever ``--no_wait_until_finish`` says (``main`` honours that flag).

    Raises:
        ValueError: an option is missing or invalid.
        CorpusError: (a ValueError) the corpus has no valid train rows, or more distinct train
            labels than --max_labels; nothing is published.
        JobFailedError: a remote job ended in another state than DONE.
    """
    return submit(argv).wait()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        _help_parser().print_help()
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    try:
        job = submit(argv)
        if job.no_wait and not PipelineState.is_terminal(job.result.state):
            print(f"\nsubmitted {job.runner} job {job.job_id or ''} (state {job.state}); not waiting for it.")
            if job.console_url:
                print(f"follow it at {job.console_url}")
            print(f"when it is done, its manifest is {spanwise_io.join(job.output_dir, MANIFEST_NAME)}")
            return 0
        manifest = job.wait()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except JobFailedError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"\nwrote {spanwise_io.join(manifest['options']['output_dir'], MANIFEST_NAME)}")
    print(format_stats(manifest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
