"""Tokenize a corpus once into sharded Parquet records, a manifest and a dead-letter output.

    python -m beam_pipelines.preprocess (--data_dir DIR | --train_files P.. --dev_files P.. [--test_files P..]) \\
        --output_dir DIR_OR_GS --tokenizer NAME_OR_PATH [--input_format tsv|csv|jsonl|parquet] \\
        [--id_column C --label_column C --text_column C --text_b_column C] [--num_shards N] \\
        [--multi_label [--label_separator '|']] \\
        [--max_doc_tokens N] [--max_doc_chars N] [--max_labels N] \\
        [--seq_len_func head|tail|ht --seq_func_params ... --max_seq_length N] [--overwrite] \\
        [Beam options: --runner DataflowRunner --project P --region R --temp_location gs://...]

Inputs are files or glob patterns per split, local or ``gs://``, plain or compressed (``.gz``,
``.bz2``, ``.zst``), in TSV (the GLUE layout, or columns named by a header), CSV, JSON Lines or
Parquet (``schemas.columns``; ``corpora.inputs``). With ``--multi_label`` a label cell holds a
set of labels (a JSON or Parquet list, or text split on ``--label_separator``) and the shards
carry ``labels`` (``schemas.shard``). Writes ``<output_dir>/manifest.json``
and, in the run's folder it names, ``<split>-SSSSS-of-NNNNN.parquet`` and
``rejected/<split>-SSSSS-of-NNNNN.jsonl`` (design.md section 4; ``beam_pipelines.sinks``), then
prints the corpus statistics. The manifest is the commit point: until a run has written it, the
previous run's output is untouched.

Without ``--runner`` the job runs here on Beam's FnApiRunner (one process; what the tests run);
with ``--runner DataflowRunner`` on Dataflow. With Beam's ``--no_wait_until_finish`` a Dataflow
job is submitted and the command returns at once, printing the job id and where the manifest
will appear.

Resource guards: a text longer than ``--max_doc_chars`` characters is cut to its head and tail
before tokenizing (counted in the manifest), and a train split with more distinct labels than
``--max_labels`` stops the job with a ``CorpusError`` (a ValueError) before anything is published.
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and "torch" not in sys.modules:
    # The command line never needs torch, but transformers imports it whenever it is installed
    # (the trainer's environment): ~220 MB and ~2 CPU-seconds for nothing. A None entry makes
    # transformers see the tokenizers-only install it supports (as on Dataflow workers), minus
    # its advice that models need PyTorch.
    import os

    sys.modules["torch"] = None  # type: ignore[assignment]
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import argparse
import logging
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineResult, PipelineState

import spanwise_io
from beam_pipelines import sinks, transforms
from beam_pipelines.records import RECORD_SCHEMA, REJECTION_SCHEMA
from beam_pipelines.shuffle import GroupTablesByKey
from corpora.inputs import LABEL_NAMES_HELP, InputPlan, parse_label_names, plan_inputs, split_patterns
from corpora.read_progress import planned_bytes
from corpora.readers import FORMATS, plan_tasks
from schemas.columns import ColumnSpec
from schemas.manifest import MANIFEST_NAME, format_stats, read_manifest
from schemas.rows import DEFAULT_LABEL_SEPARATOR
from schemas.shard import MULTI_LABEL, SINGLE_LABEL
from spanwise_io.progress import JobProgress
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
    "DEFAULT_RUNNER",
    "LOCAL_RUNNERS",
    "TESTED_RUNNERS",
    "UNTESTED_RUNNERS",
    "DATA_LOSING_RUNNERS",
    "check_runner",
    "build_pipeline",
    "remove_if_empty",
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
# The runner when --runner is not given: Beam's in-process portable runner. (Beam 2.77's
# DirectRunner tries to download and start the Prism runner first, so what ran would depend on
# the network.) --direct_running_mode multi_processing --direct_num_workers N runs N processes.
DEFAULT_RUNNER = "FnApiRunner"
# Runners that run the job on this machine: their GroupByKey holds all it groups in memory,
# so records are grouped through spill files on disk (beam_pipelines.shuffle).
LOCAL_RUNNERS = frozenset({"fnapirunner", "directrunner", "switchingdirectrunner", "bundlebaseddirectrunner",
                           "prismrunner", "testdirectrunner"})
# Runners this project's tests run the pipelines on (Dataflow through its API, tests/fake_dataflow.py),
# and portable runners expected to work that no test runs.
TESTED_RUNNERS = ("FnApiRunner (the default)", "DirectRunner", "DataflowRunner")
UNTESTED_RUNNERS = ("FlinkRunner", "SparkRunner", "PrismRunner")
# Runners known to lose data on these pipelines, and how (checked by name before any work).
DATA_LOSING_RUNNERS = {
    "daskrunner": "Beam 2.77's DaskRunner loses data on these pipelines: it does not keep a step's tagged outputs "
                  "apart (counts and rejected rows reach the steps meant for rows) and drops what a step emits when it finishes "
                  "a bundle (the last batch of RunInference, silently)",
}
# How a CorpusError appears in a worker's traceback passed on as text (Dataflow, multi_processing).
_CORPUS_ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?CorpusError: (.+)$", re.MULTILINE)
_STEP_ANNOTATION = re.compile(r" \[while running '[^']*'\]$")


class PreprocessOptions(PipelineOptions):
    """spanwise's own options; all other flags are Beam's (runner, project, temp_location...)."""

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        group = parser.add_argument_group("spanwise preprocessing") if hasattr(parser, "add_argument_group") else parser
        group.add_argument(
            "--data_dir",
            help="folder (local or gs://) with train.tsv, dev.tsv and optional test.tsv (or .csv/.jsonl/.parquet, "
                 "optionally .gz/.bz2/.zst); or give the files with --train_files/--dev_files/--test_files",
        )
        for split, required in (("train", True), ("dev", True), ("test", False)):
            group.add_argument(
                f"--{split}_files", nargs="+", default=None, metavar="FILE_OR_PATTERN",
                help=f"the {split} split{'' if required else ' (optional)'}: files or glob patterns, local or gs://, "
                     "plain or .gz/.bz2/.zst (quote patterns for the shell)",
            )
        group.add_argument(
            "--input_format", default=None, choices=FORMATS,
            help="format of every input file (default: from each file's extension: .tsv .csv .jsonl .parquet)",
        )
        for role, default in (("id", "id, idx, guid, doc_id; none: IDs are made from file and line"),
                              ("label", "label, labels, class, category, target"),
                              ("text", "text, text_a, sentence, sentence1"),
                              ("text_b", "text_b, sentence2; none: no second text")):
            group.add_argument(
                f"--{role}_column", default=None,
                help=f"name of the {role} column in a header, JSON object or Parquet schema (default: the first of {default})",
            )
        group.add_argument("--label_names", default=None, metavar="NAMES_OR_FILE", help=LABEL_NAMES_HELP)
        group.add_argument(
            "--multi_label", action="store_true", default=False,
            help=(
                "each document has a set of labels (multi_label_classification): a JSON list in JSON Lines, a list "
                "column in Parquet (a datasets Sequence(ClassLabel) too), text split on --label_separator in TSV and "
                "CSV. [] or an empty cell is a document without labels (train, dev); in test an empty cell or null "
                "is unlabelled (write the separator alone, or [], for an empty set)"
            ),
        )
        group.add_argument(
            "--label_separator", default=None, metavar="SEP",
            help=f"with --multi_label: what separates the labels of a text cell (default {DEFAULT_LABEL_SEPARATOR!r})",
        )
        group.add_argument("--output_dir", help="folder (local or gs://) for manifest.json and the run's shards and rejected rows")
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
                "most distinct labels in the train split; more stop the job before anything is published, "
                f"naming some of them (often the wrong label column) (default {DEFAULT_MAX_LABELS})"
            ),
        )
        group.add_argument(
            "--num_shards", type=int, default=0,
            help="shards per split; 0 = one per --shard_size_mb of input (default 0). Fixed before the job "
                 "starts, so that tokenizing need not wait for a count of the rows",
        )
        group.add_argument(
            "--shard_size_mb", type=int, default=64,
            help="with --num_shards 0: MiB of input text per shard (compressed files count 4x their size, "
                 "Parquet its uncompressed size) (default 64)",
        )
        group.add_argument("--rows_per_shard", type=int, default=None, help=argparse.SUPPRESS)
        group.add_argument(
            "--read_range_mb", type=float, default=64,
            help="plain TSV/JSONL files larger than this are read in byte ranges of this many MiB by "
                 "different workers; Parquet row groups are grouped to this size (default 64)",
        )
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
            "--shuffle", default="auto", choices=["auto", "disk", "runner"],
            help="how records meet in their shard: through spill files on this machine's disk (disk) or the "
                 "runner's GroupByKey (runner; on Dataflow its shuffle service). auto: disk for the local "
                 "runners, whose GroupByKey keeps everything in memory; runner otherwise (default auto)",
        )
        group.add_argument("--spill_dir", default=None, help="folder for --shuffle disk (default: a temporary folder)")
        group.add_argument(
            "--overwrite", action="store_true", default=False,
            help="replace the earlier run in --output_dir (it stays intact until the new one is complete)",
        )
        group.add_argument(
            "--quiet", action="store_true", default=False,
            help="no progress (documents and bytes read, rate, ETA) on standard error, and on Dataflow no job "
                 "states while waiting; the final table is still printed",
        )


def _check_options(opts: PreprocessOptions) -> None:
    """Validate our options before any work."""
    for name in ("output_dir", "tokenizer"):
        if not getattr(opts, name):
            raise ValueError(f"--{name} is required")
    if opts.rows_per_shard is not None:
        raise ValueError(
            "--rows_per_shard is gone: it needed a count of every row before tokenizing could start. "
            "Use --num_shards N, or --shard_size_mb (MiB of input per shard, the default sizing)"
        )
    if opts.max_doc_tokens < 1:
        raise ValueError(f"--max_doc_tokens must be >= 1, got {opts.max_doc_tokens}")
    if opts.max_doc_chars != 0 and opts.max_doc_chars < MIN_MAX_DOC_CHARS:
        raise ValueError(
            f"--max_doc_chars must be 0 (no cap) or >= {MIN_MAX_DOC_CHARS}, got {opts.max_doc_chars}; "
            "to shorten documents use --max_doc_tokens or --seq_len_func"
        )
    if opts.max_labels < 1:
        raise ValueError(f"--max_labels must be >= 1, got {opts.max_labels}")
    if opts.num_shards < 0 or opts.shard_size_mb < 1 or not opts.read_range_mb > 0:
        raise ValueError("--num_shards must be >= 0, --shard_size_mb >= 1 and --read_range_mb > 0")
    if opts.tokenize_batch_size < 1:
        raise ValueError("--tokenize_batch_size must be >= 1")
    if opts.label_separator is not None:
        if not opts.multi_label:
            raise ValueError("--label_separator separates the labels of a set: give it with --multi_label, or drop it")
        if not opts.label_separator or any(c in opts.label_separator for c in "\t\r\n"):
            raise ValueError(
                f"--label_separator {opts.label_separator!r}: give a non-empty separator without tab or line break, "
                f"e.g. --label_separator '{DEFAULT_LABEL_SEPARATOR}' (the default) or ';'"
            )


def _label_separator(opts: PreprocessOptions) -> str | None:
    """The separator of a label set's text (``--multi_label``), None for one label per document."""
    if not opts.multi_label:
        return None
    return opts.label_separator if opts.label_separator is not None else DEFAULT_LABEL_SEPARATOR


def _shard_counts(opts: PreprocessOptions, plan: InputPlan) -> dict[str, int]:
    """Shards per split: ``--num_shards``, or one per ``--shard_size_mb`` of (estimated) input."""
    if opts.num_shards > 0:
        return {split: opts.num_shards for split in plan.files}
    per_shard = opts.shard_size_mb << 20
    return {split: max(1, math.ceil(plan.estimated_bytes(split) / per_shard)) for split in plan.files}


@dataclass(frozen=True)
class _Previous:
    """What to delete once this run is committed: the committed run (``committed``) and runs that never were (``stale``)."""

    committed: list[str]
    stale: list[str]


def _previous_run(output_dir: str, overwrite: bool, run_name: str) -> _Previous:
    """Look at ``output_dir`` before the run: refuse an earlier run without ``--overwrite``.

    Returns the names (relative to ``output_dir``) to delete once this run is committed: the
    committed run's folder (or, from before run folders, its files), and folders of runs that
    never committed (killed) and started before this one.
    """
    if not spanwise_io.exists(output_dir):
        return _Previous([], [])
    names = spanwise_io.listdir(output_dir)
    committed: list[str] = []
    if MANIFEST_NAME in names:
        try:
            manifest = read_manifest(output_dir)
        except ValueError:
            manifest = {}
        if manifest.get("run"):
            committed = [manifest["run"]]
        else:  # a manifest of spanwise before run folders: its files at the top
            listed = {f["name"] for info in manifest.get("splits", {}).values() for f in info.get("files", [])}
            committed = sorted(listed | {n for n in names if n.endswith(".parquet")}) + [sinks.REJECTED_DIR]
    elif any(name.endswith(".parquet") for name in names):
        committed = sorted(n for n in names if n.endswith(".parquet")) + [sinks.REJECTED_DIR]
    if (committed or MANIFEST_NAME in names) and not overwrite:
        shown = [MANIFEST_NAME] if MANIFEST_NAME in names else committed[:3]
        raise ValueError(
            f"{output_dir} already holds an earlier run ({', '.join(shown)}...); choose another --output_dir or pass --overwrite"
        )
    stale = [
        name for name in names
        if (name.startswith(sinks.RUN_PREFIX) and name < run_name and name not in committed) or name.startswith(".spanwise-tmp-")
    ]
    return _Previous(committed, stale)


def build_pipeline(
    pipeline: beam.Pipeline,
    opts: PreprocessOptions,
    plan: InputPlan,
    manifest_base: dict[str, Any],
    seq_config: SeqLenConfig | None,
    run_name: str,
    shard_counts: dict[str, int],
    spill_dir: str | None,
    previous: Sequence[str] = (),
    progress_dir: str | None = None,
) -> beam.PCollection:
    """Add the preprocessing graph to ``pipeline``; return the PCollection holding the manifest.

    read task -> read and parse -> tokenize (one fused step per task) -> records grouped by
    shard -> dedupe, label, write each shard; rejected rows grouped by bucket -> written; the
    small outputs (task counts, labels, length histograms, file lists) -> one commit step.
    docs/design.md has the table of steps, their keys and what bounds their memory.
    ``progress_dir``: where the read step counts documents and bytes for the progress shown here.
    """
    read_range = max(1, int(opts.read_range_mb * (1 << 20)))
    tasks = [task for files in plan.files.values() for file in files for task in plan_tasks(file, read_range)]
    read = (
        pipeline
        | "ListTasks" >> beam.Create(tasks, reshuffle=False)
        | "SpreadTasks" >> beam.Reshuffle()
        | "Read" >> beam.ParDo(transforms.ReadTaskFn(opts.decode_errors, progress_dir)).with_outputs(
            transforms.REJECTED, transforms.COUNTS, main="batches"
        )
    )
    counts = read[transforms.COUNTS]
    # The label map never holds more than --max_labels + 1 labels: a wrong label column
    # (texts as labels) fails in BuildLabelMap with a count and examples, not in memory.
    distinct_labels = (
        read.batches
        | "TrainLabels" >> beam.FlatMap(transforms.train_labels)
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
    tokenized = read.batches | "Tokenize" >> beam.ParDo(
        transforms.TokenizeFn(opts.tokenizer, opts.max_doc_tokens, shard_counts, seq_config, opts.max_doc_chars,
                              opts.tokenize_batch_size)
    ).with_outputs(transforms.REJECTED, main="records")
    files = {(f.split, f.index): (f.path, f.name, f.format) for split_files in plan.files.values() for f in split_files}
    problem_type = MULTI_LABEL if opts.multi_label else SINGLE_LABEL
    shards = (
        tokenized.records
        | "GroupByShard" >> GroupTablesByKey(RECORD_SCHEMA, spill_dir and spanwise_io.join(spill_dir, "records"))
        | "WriteShards" >> beam.ParDo(
            sinks.WriteShardFn(opts.output_dir, run_name, files, opts.max_doc_tokens, problem_type),
            beam.pvalue.AsSingleton(label_map),
            beam.pvalue.AsDict(counts),
        ).with_outputs(transforms.REJECTED, sinks.STATS, sinks.LABEL_STATS, main="shards")
    )
    stats = shards[sinks.STATS] | "LengthStats" >> beam.CombinePerKey(transforms.LengthStatsFn())
    label_stats = shards[sinks.LABEL_STATS] | "LabelStats" >> beam.CombinePerKey(sinks.merge_label_stats)
    rejected_files = (
        (read[transforms.REJECTED], tokenized[transforms.REJECTED], shards[transforms.REJECTED])
        | "AllRejected" >> beam.Flatten()
        | "BatchRejected" >> beam.ParDo(sinks.BatchRejectionsFn(shard_counts))
        | "GroupRejected" >> GroupTablesByKey(REJECTION_SCHEMA, spill_dir and spanwise_io.join(spill_dir, "rejected"))
        | "WriteRejected" >> beam.ParDo(sinks.WriteRejectedFn(opts.output_dir, run_name), beam.pvalue.AsDict(counts))
    )
    split_inputs = {
        split: {"input": list(plan.patterns[split]), "derived_ids": plan.derived_ids(split)} for split in plan.files
    }
    return (
        pipeline
        | "FinalizeTrigger" >> beam.Create([None])
        | "Finalize" >> beam.ParDo(
            sinks.FinalizeFn(opts.output_dir, run_name, manifest_base, shard_counts,
                             [f.path for f in plan.files["train"]], split_inputs, previous, problem_type),
            shards=beam.pvalue.AsList(shards.shards),
            rejected_files=beam.pvalue.AsList(rejected_files),
            label_map=beam.pvalue.AsSingleton(label_map),
            counts=beam.pvalue.AsDict(counts),
            stats=beam.pvalue.AsDict(stats),
            label_stats=beam.pvalue.AsDict(label_stats),
        )
    )


def _help_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m beam_pipelines.preprocess",
        description=__doc__.split("\n\n")[0],
        epilog="Any other flag is a Beam pipeline option (--runner, --project, --region, --temp_location, ...). "
               f"Without --runner the job runs here on Beam's {DEFAULT_RUNNER}.",
    )
    PreprocessOptions._add_argparse_args(parser)
    return parser


class JobFailedError(RuntimeError):
    """A remote preprocessing job ended in another state than DONE."""


def _corpus_error_in(error: BaseException, where: str = "") -> CorpusError | None:
    """The ``CorpusError`` behind a failed run, with the user's message only; None if there is none.

    On the local runner the error is raised as it was. A runner that passes on the worker's
    traceback as text (Dataflow, multi_processing) gives an exception whose message holds a
    ``...CorpusError: <message>`` line: that message is taken (the last one, the original) and
    any " [while running 'step']" that Beam added is dropped.
    """
    if isinstance(error, CorpusError):
        message = _STEP_ANNOTATION.sub("", str(error))
        return error if message == str(error) and not where else CorpusError(message + where)
    found = _CORPUS_ERROR_LINE.findall(str(error).replace("\\n", "\n"))
    if not found:
        return None
    return CorpusError(_STEP_ANNOTATION.sub("", found[-1].strip()) + where)


def _interrupted(error: BaseException) -> bool:
    """Whether a failed run is a Ctrl-C: Beam re-raises a KeyboardInterrupt from a step as a
    ``RuntimeError("KeyboardInterrupt [while running 'step']")``."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, KeyboardInterrupt) or str(error).startswith("KeyboardInterrupt"):
            return True
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return False


def _not_an_interrupt(record: logging.LogRecord) -> bool:
    """A log filter: Beam logs a Ctrl-C inside a step as an error with its traceback; the
    command line says it in one line instead."""
    return not record.getMessage().startswith("KeyboardInterrupt")


def _runner_name(runner: Any) -> str:
    """``DataflowRunner`` from a name, a dotted path or a runner object."""
    name = runner if isinstance(runner, str) else type(runner).__name__
    return name.rsplit(".", 1)[-1]


def check_runner(runner: str) -> None:
    """Refuse, before any work, a runner known to lose data on these pipelines.

    Raises:
        ValueError: why, and the runners that are tested (and those expected to work untested).
    """
    why = DATA_LOSING_RUNNERS.get(runner.lower()) or DATA_LOSING_RUNNERS.get(runner.lower() + "runner")
    if why:
        raise ValueError(
            f"--runner {runner}: {why}. Tested runners: {', '.join(TESTED_RUNNERS)}; expected to work but untested: "
            f"{', '.join(UNTESTED_RUNNERS)}"
        )


def _discard(path: str | None, what: str) -> None:
    """Best effort: delete a failed run's folder or the spill files (the job's own error matters more)."""
    if not path:
        return
    try:
        if spanwise_io.is_remote(path):
            spanwise_io.remove_tree(path)
        else:
            shutil.rmtree(path, ignore_errors=True)
    except Exception as error:  # noqa: BLE001
        _LOG.warning("could not delete %s %s: %s", what, path, error)


def remove_if_empty(folder: str) -> None:
    """Remove a local folder this run made, once a failed run has left nothing in it."""
    if spanwise_io.is_remote(folder):
        return  # a gs:// "folder" is only a prefix: it goes with its last object
    try:
        os.rmdir(folder)
    except OSError:
        pass  # not empty (or already gone): what is there is not ours to delete


@dataclass
class PreprocessJob:
    """A started preprocessing job: on Dataflow it runs on, on the local runner it has finished."""

    result: PipelineResult
    output_dir: str
    runner: str
    run_dir: str = ""
    spill_dir: str | None = None
    job_id: str | None = None
    console_url: str | None = None
    no_wait: bool = False  # Beam's --no_wait_until_finish: the caller returns once it is submitted
    _done: bool = field(default=False, repr=False)

    @property
    def state(self) -> str:
        return str(self.result.state)

    @property
    def _where(self) -> str:
        """`` (job ID: console URL)`` for messages about a remote job; empty for a local one."""
        return f" (job {self.job_id}: {self.console_url})" if self.job_id else ""

    def wait(self) -> dict[str, Any]:
        """Block until the job ends; return the manifest it committed.

        A job that fails publishes nothing: its run folder is deleted (unless its error message
        points into it: the rejected rows of a split with no valid row) and the previous run
        stays as it was.

        Raises:
            CorpusError: the job failed on the corpus (e.g. more labels than --max_labels).
            JobFailedError: the job ended in another state than DONE (failed, cancelled, drained).
        """
        try:
            state = self.result.wait_until_finish()
            if state != PipelineState.DONE:
                raise JobFailedError(f"preprocessing job ended in state {state}{self._where}; see its logs")
        except BaseException as error:
            if isinstance(error, KeyboardInterrupt) and self.job_id:
                raise  # a remote job runs on whatever happens here: its folder is its own
            if not self.run_dir or self.run_dir not in str(error):
                _discard(self.run_dir, "the folder of the failed run")
            corpus_error = _corpus_error_in(error, self._where) if isinstance(error, Exception) else None
            if corpus_error is not None:
                raise corpus_error from error
            if isinstance(error, JobFailedError) or type(error).__name__ != "DataflowRuntimeException":
                raise  # (Beam's class; its module needs the gcp extra)
            raise JobFailedError(f"preprocessing job failed{self._where}: {error}") from error
        finally:
            _discard(self.spill_dir, "the spill files")
        return read_manifest(self.output_dir)


def submit(argv: Sequence[str] | None = None) -> PreprocessJob:
    """Check the options and inputs, build the pipeline and start it; do not wait for a remote job.

    Raises:
        ValueError: an option is missing or invalid, or an input file does not give the columns
            asked for (nothing has started).
        CorpusError: (local runner, which runs the job here) the corpus cannot be preprocessed
            (no valid train rows, more labels than --max_labels); nothing is published.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    options = PipelineOptions(argv)
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = DEFAULT_RUNNER
    runner = _runner_name(standard.runner)
    check_runner(runner)
    opts = options.view_as(PreprocessOptions)
    _check_options(opts)
    patterns = split_patterns(opts.data_dir, {"train": opts.train_files, "dev": opts.dev_files, "test": opts.test_files})
    spec = ColumnSpec(opts.id_column, opts.label_column, opts.text_column, opts.text_b_column)
    tokenizer = load_tokenizer(opts.tokenizer)
    seq_config = None
    if opts.seq_len_func:
        if not opts.max_seq_length:
            raise ValueError("--seq_len_func at preprocess time needs --max_seq_length")
        seq_config = validate_seq_config(opts.seq_len_func, opts.seq_func_params, opts.max_seq_length, tokenizer)
    elif opts.seq_func_params:
        raise ValueError("--seq_func_params given without --seq_len_func")
    local = runner.lower() in LOCAL_RUNNERS
    on_disk = opts.shuffle == "disk" or (opts.shuffle == "auto" and local)
    if on_disk and not local:
        raise ValueError(f"--shuffle disk is for the local runners; on {runner} records meet through its shuffle (--shuffle runner)")
    if opts.spill_dir and spanwise_io.is_remote(opts.spill_dir):
        raise ValueError(f"--spill_dir must be a folder on this machine, got {opts.spill_dir}")
    run_name = sinks.new_run_name()
    previous = _previous_run(opts.output_dir, opts.overwrite, run_name)
    label_names = parse_label_names(opts.label_names)
    plan = plan_inputs(patterns, opts.input_format, spec, label_names, _label_separator(opts))
    shard_counts = _shard_counts(opts, plan)
    created_output_dir = not spanwise_io.exists(opts.output_dir)
    spanwise_io.makedirs(opts.output_dir)
    spill_dir = None
    if on_disk:
        base = opts.spill_dir or tempfile.gettempdir()
        spill_dir = spanwise_io.join(base, f"spanwise-spill-{run_name}")
        spanwise_io.makedirs(spill_dir)
    run_dir = spanwise_io.join(opts.output_dir, run_name)
    manifest_base = {
        "options": {
            "data_dir": opts.data_dir,
            "train_files": opts.train_files,
            "dev_files": opts.dev_files,
            "test_files": opts.test_files,
            "input_format": opts.input_format,
            "columns": {"id": opts.id_column, "label": opts.label_column, "text": opts.text_column,
                        "text_b": opts.text_b_column},
            "label_names": list(label_names) or None,
            "multi_label": bool(opts.multi_label),
            "label_separator": _label_separator(opts),
            "output_dir": opts.output_dir,
            "tokenizer": opts.tokenizer,
            "max_doc_tokens": opts.max_doc_tokens,
            "max_doc_chars": opts.max_doc_chars,
            "max_labels": opts.max_labels,
            "num_shards": opts.num_shards,
            "shard_size_mb": opts.shard_size_mb,
            "read_range_mb": opts.read_range_mb,
            "decode_errors": opts.decode_errors,
            "runner": runner,
            "shuffle": "disk" if on_disk else "runner",
        },
        "inputs": plan.describe(),
        "tokenizer": tokenizer_identity(tokenizer, opts.tokenizer),
        "max_doc_tokens": opts.max_doc_tokens,
        "max_doc_chars": opts.max_doc_chars,
        "preprocess_seq_len": seq_config.to_dict() if seq_config else None,
    }
    _LOG.info("preprocessing %s -> %s", "; ".join(f"{s}: {', '.join(p)}" for s, p in patterns.items()), run_dir)
    pipeline = beam.Pipeline(options=options)
    progress = JobProgress("preprocess: read", planned_bytes(f for files in plan.files.values() for f in files),
                           enabled=local and not opts.quiet)
    build_pipeline(pipeline, opts, plan, manifest_base, seq_config, run_name, shard_counts, spill_dir,
                   previous.committed + previous.stale, progress.folder)
    try:
        with progress:
            result = pipeline.run()  # the local runner runs the whole job here
    except BaseException as error:
        if local and run_dir not in str(error):  # (a failed Dataflow submission wrote nothing)
            _discard(run_dir, "the folder of the failed run")
            if created_output_dir:
                remove_if_empty(opts.output_dir)
        _discard(spill_dir, "the spill files")
        if _interrupted(error):
            raise KeyboardInterrupt from None
        corpus_error = _corpus_error_in(error) if isinstance(error, Exception) else None
        if corpus_error is not None and corpus_error is not error:
            raise corpus_error from error
        raise
    job_id = result.job_id() if callable(getattr(result, "job_id", None)) and not local else None
    console_url = None
    if job_id:
        cloud = options.view_as(GoogleCloudOptions)
        console_url = f"https://console.cloud.google.com/dataflow/jobs/{cloud.region}/{job_id}?project={cloud.project}"
    return PreprocessJob(result, opts.output_dir, runner, run_dir, spill_dir, job_id, console_url, standard.no_wait_until_finish)


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the preprocessing job to its end; return the manifest it wrote.

    Waits for a Dataflow job whatever ``--no_wait_until_finish`` says (``main`` honours that flag).

    Raises:
        ValueError: an option is missing or invalid, or an input does not give the columns asked for.
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
    for handler in logging.getLogger().handlers:
        handler.addFilter(_not_an_interrupt)
    opts = PipelineOptions(argv).view_as(PreprocessOptions)
    output_dir = opts.output_dir
    job: PreprocessJob | None = None
    try:
        job = submit(argv)
        if job.no_wait and not PipelineState.is_terminal(job.result.state):
            print(f"\nsubmitted {job.runner} job {job.job_id or ''} (state {job.state}); not waiting for it.")
            if job.console_url:
                print(f"follow it at {job.console_url}")
            print(f"when it is done, its manifest is {spanwise_io.join(job.output_dir, MANIFEST_NAME)}")
            return 0
        if job.job_id and not opts.quiet:
            print(f"submitted {job.runner} job {job.job_id}; waiting for it to finish (Ctrl-C stops waiting, "
                  f"not the job).\nfollow it at {job.console_url}", file=sys.stderr)
            logging.getLogger("apache_beam.runners.dataflow.dataflow_runner").setLevel(logging.INFO)  # its states
        manifest = job.wait()
    except KeyboardInterrupt:
        if job is not None and job.job_id:
            print(f"\ninterrupted: stopped waiting; {job.runner} job {job.job_id} runs on and commits "
                  f"{spanwise_io.join(output_dir, MANIFEST_NAME)} when done (cancel it at {job.console_url})", file=sys.stderr)
        else:
            print(f"\ninterrupted: nothing was published; {output_dir} is as it was before this run", file=sys.stderr)
        return 130
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except JobFailedError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"\nwrote {spanwise_io.join(manifest['options']['output_dir'], MANIFEST_NAME)} (run {manifest.get('run')})")
    print(format_stats(manifest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
