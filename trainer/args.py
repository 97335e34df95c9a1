"""Command-line flags and config files of ``python -m trainer.task``.

The flags are the fields of ``TrainConfig``, parsed by transformers' ``HfArgumentParser`` as
``run_glue.py`` parses its ``TrainingArguments``: the same names and meanings (``--do_train``,
``--eval_strategy``, ``--save_strategy``, ``--lr_scheduler_type``, ``--optim``, ...), booleans
that take an optional ``true|false``, and every default in ``--help``. The names of the 2020 tool
and of earlier spanwise versions stay as aliases (``--model_name`` for
``--model_name_or_path``). A JSON or YAML file gives the same fields:
``python -m trainer.task config.yaml`` or ``--config config.json``; flags given beside it win.
On Vertex AI the ``AIP_*`` variables provide defaults for where the model, checkpoints and logs go.

Importing this module does not import torch, so ``bin/submit-vertex.sh --dry-run`` can check the
flags cheaply (see ``trainer.preflight``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import json
import logging
import os
import types
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from tokenization.seq_len import SEQ_LEN_FUNCS

__all__ = ["TrainConfig", "build_parser", "parse_args", "check_config", "load_config_file", "CONFIG_SUFFIXES",
           "head_windows"]

CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
POOLINGS = ("mean", "max", "attention", "transformer")  # = modeling.pooling.POOLINGS (this module imports no torch)
HEAD_POOLINGS = ("attention", "transformer")
# what an evaluation reports: one label (accuracy, macro_f1, mcc) or label sets (micro_f1,
# macro_f1, exact_match), and the loss of either
METRICS = ("accuracy", "macro_f1", "mcc", "loss", "micro_f1", "exact_match")
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt")
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

_DATA, _SEQ, _TRAIN, _GPU, _EVAL = "data and model", "sequence length", "training", "speed and precision", "evaluation, checkpoints, logging"


def arg(group: str, help: str, default: Any = dataclasses.MISSING, *, aliases: Sequence[str] = (), **extra: Any) -> Any:
    """A ``TrainConfig`` field: its ``--help`` group and text, aliases and argparse extras (``choices``, ``metavar``)."""
    metadata: dict[str, Any] = {"group": group, "help": help, **extra}
    if aliases:
        metadata["aliases"] = list(aliases)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Every flag of ``python -m trainer.task`` (the field name is the flag)."""

    # ---------------------------------------------------------------- data and model
    data_dir: str = arg(_DATA, "preprocessed shards + manifest.json (local or gs://)")
    model_name_or_path: str = arg(_DATA, "pretrained model: hub name, local dir or gs:// dir", aliases=["--model_name"])
    task_name: str = arg(_DATA, "a name for this run (TensorBoard runs/<task_name>/)")
    output_dir: str | None = arg(_DATA, "where the model goes (local or gs://); unset: $AIP_MODEL_DIR (Vertex AI)", None)
    overwrite_output_dir: bool = arg(
        _DATA, "start afresh in an --output_dir that holds a run: delete its checkpoints and outputs first "
        "(without it, a run there is resumed when its arguments match, else refused)", False)
    model_type: str | None = arg(_DATA, "accepted for 2020 compatibility (e.g. bert); the model's config decides", None)
    tokenizer_name: str | None = arg(_DATA, "tokenizer if not the model's own", None)
    train_split: str = arg(_DATA, "split to train on", "train")
    eval_split: str = arg(_DATA, "split to evaluate on", "dev")
    test_split: str = arg(_DATA, "split --do_predict predicts", "test")
    max_train_samples: int | None = arg(_DATA, "train on the first N documents of the split only (quick runs)", None)
    max_eval_samples: int | None = arg(_DATA, "evaluate on the first N documents only", None)
    max_predict_samples: int | None = arg(_DATA, "predict the first N documents only", None)
    ignore_mismatched_sizes: bool = arg(
        _DATA, "start from a classifier saved with another label count: its head is replaced by a new one", False)
    trust_remote_code: bool = arg(_DATA, "allow custom model code from the hub", False)
    skip_bad_shards: bool = arg(
        _DATA, "skip (and count) shards that are missing, corrupt or foreign, and row groups found corrupt while "
        "reading, instead of stopping; the count and the files go to eval_results.json and run_config.json", False)

    # ---------------------------------------------------------------- sequence length
    max_seq_length: int = arg(_SEQ, "model input length, special tokens included", 512)
    seq_len_func: str = arg(_SEQ, "which tokens of a long document the model sees", "head", choices=list(SEQ_LEN_FUNCS))
    seq_func_params: list[int] = arg(_SEQ, "e.g. ht: 128 382; rs/rso/rsd: span length", [])
    fixed_spans: bool = arg(_SEQ, "draw random spans once (epoch 0) and reuse them every epoch, as the 2020 tool did", False)
    eval_views: str | None = arg(
        _SEQ, "views per long document at evaluation (and the model's default in prediction): 1, K random draws, or "
        "'chunks' (windows covering it, at most --max_chunks); unset: the views of --train_views, which the model "
        "is trained to see", None)
    train_views: str = arg(
        _SEQ, "views per long training document, pooled into one prediction and one loss per document: 1 (one view, "
        "no pooling), K draws of a random --seq_len_func (re-drawn each epoch), or 'chunks' (consecutive windows, at "
        "most --max_chunks); a document that fits the window is one view", "1")
    max_chunks: int | None = arg(
        _SEQ, "at most N windows per document for 'chunks' views (training, evaluation, prediction); a longer "
        "document keeps N evenly spaced windows, its first and last included; a training batch then holds at most "
        "--per_device_train_batch_size x N windows. Required with --train_views chunks; unset: evaluation uses all "
        "windows", None)
    pooling: str = arg(_SEQ, "how a document's views become one prediction (training, evaluation, prediction): mean or "
                       "max of their logits (no new parameters); attention (a learned attention over the windows' "
                       "states, then the classifier) or transformer (window states + window-position embeddings, "
                       "a small transformer over the windows, max or mean, then the classifier): a head trained with "
                       "the encoder and saved beside it; these need --train_views chunks or K", "mean",
                       choices=list(POOLINGS))
    head_layers: int = arg(_SEQ, "--pooling transformer: transformer layers over the windows (of the encoder's width)", 2)
    head_reduce: str = arg(_SEQ, "--pooling transformer: how the windows' outputs become one (max or mean)", "max",
                           choices=["max", "mean"])

    # ---------------------------------------------------------------- training
    do_train: bool = arg(_TRAIN, "train (when none of --do_train/--do_eval/--do_predict is given: train and evaluate)", False)
    do_eval: bool = arg(_TRAIN, "evaluate on --eval_split (during training as --eval_strategy says, and at the end)", False)
    do_predict: bool = arg(_TRAIN, "predict --test_split at the end into <output_dir>/predict_results.tsv", False)
    per_device_train_batch_size: int = arg(_TRAIN, "documents per batch per process", 8)
    per_device_eval_batch_size: int = arg(_TRAIN, "views per evaluation batch per process", 16)
    gradient_accumulation_steps: int = arg(_TRAIN, "batches per optimizer step", 1)
    learning_rate: float = arg(_TRAIN, "peak learning rate of AdamW", 2e-5)
    head_learning_rate: float | None = arg(
        _TRAIN, "peak learning rate of the layers a run starts from random: the classifier and, with --pooling "
        "attention|transformer, the head over the windows (the encoder keeps --learning_rate; default: --learning_rate "
        "for all). A head trained from scratch in few steps may need a higher one (docs/results.md)", None)
    num_train_epochs: float = arg(_TRAIN, "epochs (may be fractional)", 3.0)
    max_steps: int = arg(_TRAIN, "optimizer steps; overrides --num_train_epochs when > 0", -1)
    lr_scheduler_type: str = arg(_TRAIN, "learning-rate schedule (transformers' get_scheduler)", "linear", choices=list(SCHEDULERS))
    warmup_steps: float = arg(_TRAIN, "warm-up steps, or a fraction of the optimizer steps when in (0, 1) (as in "
                              "transformers 5); overrides --warmup_ratio when > 0", 0)
    warmup_ratio: float = arg(_TRAIN, "warm-up as a fraction of the optimizer steps (transformers 4's name)", 0.0)
    weight_decay: float = arg(_TRAIN, "AdamW weight decay (not on biases and LayerNorm weights)", 0.0)
    adam_beta1: float = arg(_TRAIN, "AdamW beta1", 0.9)
    adam_beta2: float = arg(_TRAIN, "AdamW beta2", 0.999)
    adam_epsilon: float = arg(_TRAIN, "AdamW epsilon", 1e-8)
    max_grad_norm: float = arg(_TRAIN, "gradient clipping norm (0: no clipping)", 1.0)
    optim: str = arg(_TRAIN, "optimizer: torch's AdamW (foreach) or its fused kernel", "adamw_torch_fused", choices=list(OPTIMIZERS))
    seed: int = arg(_TRAIN, "seed of the new head, the data order and the random spans", 42)
    dataloader_num_workers: int = arg(_TRAIN, "DataLoader worker processes (training, evaluation, prediction)", 0)
    shuffle_buffer: int = arg(_TRAIN, "rows shuffled together (the memory bound of the loader)", 4096)
    group_by_length: bool = arg(
        _TRAIN, "batch documents of similar length together within each --shuffle_buffer window (less padding)", False)
    train_sampling_strategy: str | None = arg(
        _TRAIN, "transformers 5's spelling: group_by_length is --group_by_length, random is the default order", None,
        choices=["random", "group_by_length"])
    pad_to_multiple_of: int = arg(_TRAIN, "pad batches to a multiple of this (8 helps tensor cores; 0: no)", 0)
    max_tokens_per_batch: int | None = arg(
        _TRAIN, "training batches by tokens instead of documents: each batch takes documents, in the epoch's order, "
        "while rows x padded length stays within N (replaces --per_device_train_batch_size for training; with "
        "--group_by_length, similar lengths together: little padding). At least --max_seq_length x the views of one "
        "document. The order stays exact on resume and with any --dataloader_num_workers; unset: fixed batches", None)
    pack_views: bool = arg(
        _TRAIN, "pack several short views into one row of --max_seq_length tokens (position ids restart per view, a "
        "block-diagonal attention mask, the classifier on each view's first token): less padding. BERT-type models "
        "(bert, MiniLM) with sdpa or eager attention", False)

    # ---------------------------------------------------------------- speed and precision
    bf16: bool = arg(_GPU, "bfloat16 autocast (GPU with bf16, or CPU)", False)
    fp16: bool = arg(_GPU, "float16 autocast with a gradient scaler (GPU only)", False)
    tf32: bool | None = arg(_GPU, "TF32 matmuls on Ampere or newer GPUs: true|false (unset: on with a GPU)", None)
    gradient_checkpointing: bool = arg(_GPU, "recompute activations in the backward pass: less memory, more compute", False)
    torch_compile: bool = arg(_GPU, "torch.compile the model for training", False)
    torch_compile_backend: str | None = arg(_GPU, "torch.compile backend, e.g. inductor, aot_eager (implies --torch_compile; "
                                            "unset: torch's default, inductor)", None)
    torch_compile_mode: str | None = arg(_GPU, "torch.compile mode (implies --torch_compile)", None, choices=list(COMPILE_MODES))
    use_cpu: bool = arg(_GPU, "train on the CPU even if a GPU is present", False)

    # ---------------------------------------------------------------- evaluation, checkpoints, logging
    eval_strategy: str = arg(_EVAL, "evaluate during training: no, every --eval_steps, or each epoch "
                             "(a run with --do_eval also evaluates at its end)", "epoch", choices=["no", "steps", "epoch"],
                             aliases=["--evaluation_strategy"])
    eval_steps: int | None = arg(_EVAL, "with --eval_strategy steps: every N optimizer steps (unset: --logging_steps)", None)
    metric_for_best_model: str = arg(_EVAL, "the metric that decides the best model (loss: lower is better)", "macro_f1",
                                     choices=list(METRICS))
    threshold: float = arg(
        _EVAL, "label sets (a corpus preprocessed with --multi_label): a label is predicted when its sigmoid probability "
        "is >= this; recorded with the model as its decision threshold (each evaluation also reports the threshold "
        "that maximises micro-F1, best_threshold)", 0.5)
    load_best_model_at_end: bool = arg(
        _EVAL, "save the best evaluated model as the final model (its checkpoint is kept whatever --save_total_limit)", False)
    early_stopping_patience: int | None = arg(
        _EVAL, "stop training after N evaluations without improvement of --metric_for_best_model", None)
    early_stopping_threshold: float = arg(_EVAL, "the improvement that counts for --early_stopping_patience", 0.0)
    save_strategy: str | None = arg(
        _EVAL, "checkpoints: no, every --save_steps, each epoch, or at each new best evaluation; a checkpoint is also "
        "written at the end and on SIGTERM/Ctrl-C (unset: steps when --save_steps > 0, else epoch)", None,
        choices=["no", "steps", "epoch", "best"])
    save_steps: int = arg(_EVAL, "with --save_strategy steps: every N optimizer steps", 0)
    save_total_limit: int = arg(_EVAL, "checkpoints kept (<= 0: all); the best one is kept in addition", 2)
    resume_from_checkpoint: str = arg(
        _EVAL, "'auto' (the newest in the checkpoint dir, if its arguments match), 'no', or a checkpoint path", "auto")
    checkpoint_dir: str | None = arg(_EVAL, "where checkpoints go (unset: $AIP_CHECKPOINT_DIR, else <output_dir>/checkpoints)", None)
    logging_steps: int = arg(_EVAL, "log the training loss every N optimizer steps", 10)
    logging_dir: str | None = arg(_EVAL, "TensorBoard dir ($AIP_TENSORBOARD_LOG_DIR wins; unset: <output_dir>/runs/<task_name>)", None)
    report_to: str = arg(_EVAL, "where logs go: tensorboard, or none ('all' is tensorboard)", "tensorboard",
                         choices=["tensorboard", "none", "all"])
    disable_tqdm: bool = arg(_EVAL, "no progress bar", False)
    notify_webhook_env: str | None = arg(
        _EVAL, "post a JSON summary when the run finishes or fails to the URL in this environment variable (Slack "
        "incoming-webhook compatible); the URL itself never goes on the command line", None, metavar="ENV_NAME")
    hypertune_metric_tag: str | None = arg(
        _EVAL, "in a Vertex AI tuning trial, the tag the eval metric is reported under (unset: --metric_for_best_model)", None)
    sample_trace_file: str | None = arg(
        _EVAL, "append the document ids of every training batch to this local JSONL file (audits, tests); with "
        "several ranks each writes its own, e.g. trace.rank1.jsonl", None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def model_name(self) -> str:
        """``model_name_or_path`` (the name earlier versions used)."""
        return self.model_name_or_path

    @property
    def resolved_checkpoint_dir(self) -> str:
        import spanwise_io

        return self.checkpoint_dir or spanwise_io.join(self.output_dir, "checkpoints")

    @property
    def resolved_logging_dir(self) -> str:
        import spanwise_io

        return self.logging_dir or spanwise_io.join(self.output_dir, "runs", self.task_name)

    @property
    def evaluates_during_training(self) -> bool:
        return self.do_train and self.do_eval and self.eval_strategy != "no"


REQUIRED = ("data_dir", "model_name_or_path", "task_name")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``(default: X)`` after every flag's help, ``(required)`` for the required ones."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.required:
            return f"{action.help} (required)"
        return super()._get_help_string(action)


def _parser_class() -> type:
    from transformers import HfArgumentParser

    class GroupedParser(HfArgumentParser):
        """``HfArgumentParser`` that puts each field in the ``--help`` group of its metadata."""

        def error(self, message: str) -> None:  # type: ignore[override]
            """One line (the usage of 80 flags would bury the message): what is wrong, and where help is."""
            self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

        def _add_dataclass_arguments(self, dtype: Any) -> None:
            import typing

            hints = typing.get_type_hints(dtype)
            groups: dict[str, Any] = {}
            for item in dataclasses.fields(dtype):
                if not item.init:
                    continue
                metadata = dict(item.metadata)
                name = metadata.pop("group", None)
                group = groups.get(name) if name else self
                if group is None:
                    group = groups[name] = self.add_argument_group(name)
                item = copy.copy(item)
                item.type = hints[item.name]
                item.metadata = types.MappingProxyType(metadata)
                self._parse_dataclass_field(group, item)

    return GroupedParser


def build_parser() -> argparse.ArgumentParser:
    """The ``HfArgumentParser`` of ``TrainConfig``, plus ``--config``."""
    parser = _parser_class()(
        TrainConfig,
        prog="python -m trainer.task",
        allow_abbrev=False,  # a typo such as --learning_rat must fail, not silently match a flag
        description="Fine-tune a Hugging Face sequence classifier on shards made by beam_pipelines.preprocess. "
        "Also: python -m trainer.task CONFIG.json|yaml [FLAGS] (flags win over the file).",
        formatter_class=_HelpFormatter,
    )
    for action in parser._actions:
        if action.dest in REQUIRED:
            action.required = True
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="a JSON or YAML file of flags ({flag: value}); flags on the command line win")
    return parser


def _split_config(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """The config file (first argument, or ``--config FILE``) and the other arguments."""
    rest = list(argv)
    path = None
    if rest and not rest[0].startswith("-") and rest[0].lower().endswith(CONFIG_SUFFIXES):
        path = rest.pop(0)
    for index, item in enumerate(rest):
        if item == "--":
            break
        if item == "--config" or item.startswith("--config="):
            if path is not None:
                raise ValueError("give one config file (as the first argument or with --config), not two")
            if item == "--config":
                if index + 1 >= len(rest):
                    raise ValueError("--config needs a file: --config config.yaml")
                path = rest[index + 1]
                del rest[index : index + 2]
            else:
                path = item.split("=", 1)[1]
                del rest[index]
            break
    return path, rest


def load_config_file(path: str) -> dict[str, Any]:
    """The ``{flag: value}`` mapping of a JSON or YAML file (local or gs://)."""
    import spanwise_io

    if not path.lower().endswith(CONFIG_SUFFIXES):
        raise ValueError(f"config file {path}: expected a .json, .yaml or .yml file")
    if not spanwise_io.exists(path):
        raise ValueError(f"config file {path} not found")
    text = spanwise_io.read_bytes(path).decode("utf-8")
    try:
        if path.lower().endswith(".json"):
            values = json.loads(text)
        else:
            import yaml

            values = yaml.safe_load(text)
    except Exception as error:  # json and yaml raise their own types
        raise ValueError(f"config file {path} does not parse: {error}") from error
    if not isinstance(values, dict):
        raise ValueError(f"config file {path}: expected a mapping of flag names to values, got {type(values).__name__}")
    return values


# How close an unknown config key must be to a flag's name for "did you mean" (difflib's ratio).
_SUGGEST_CUTOFF = 0.8
# Values of Hugging Face's TrainingArguments that mean "nothing set" (a dump writes its post-init
# values: report_to "none" as [], debug "" as [], an unset switch as false).
_UNSET = (None, "", [], {}, "none", ["none"])


def _hf_training_defaults() -> dict[str, Any]:
    """``{key: default}`` of Hugging Face's ``TrainingArguments`` (a config dumped with
    ``TrainingArguments.to_json_string()`` holds every one of them); {} where transformers cannot say."""
    try:
        from transformers import TrainingArguments
    except Exception:  # noqa: BLE001 (no transformers or no torch: every such key is then unknown)
        return {}
    defaults: dict[str, Any] = {}
    for item in dataclasses.fields(TrainingArguments):
        if not item.init:
            continue
        if item.default is not dataclasses.MISSING:
            value = item.default
        elif item.default_factory is not dataclasses.MISSING:
            value = item.default_factory()
        else:
            continue
        defaults[item.name] = getattr(value, "value", value)  # an Enum's value, as to_json_string writes it
    return defaults


def _hf_defaults_of_run(defaults: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """HF's defaults as its ``__post_init__`` sets them for this config's other values: a dump of a
    run with ``use_cpu`` says ``dataloader_pin_memory: false``, one with workers on a Mac ``fork``."""
    out = dict(defaults)
    if values.get("use_cpu") is True and "dataloader_pin_memory" in out:
        out["dataloader_pin_memory"] = False
    if isinstance(values.get("dataloader_num_workers"), int) and values["dataloader_num_workers"] > 1 \
            and values.get("dataloader_multiprocessing_context") == "fork":
        out["dataloader_multiprocessing_context"] = "fork"
    return out


def _accelerator_defaults() -> dict[str, Any]:
    """The dump of an ``AcceleratorConfig`` left at its defaults (HF writes one when accelerate is installed)."""
    try:
        from transformers.trainer_pt_utils import AcceleratorConfig
    except Exception:  # noqa: BLE001
        return {}
    return {item.name: item.default for item in dataclasses.fields(AcceleratorConfig)
            if item.default is not dataclasses.MISSING}


def _unset(value: Any, false_too: bool) -> bool:
    """Whether a value means "nothing set" (``false_too``: ``false`` as well, for a switch whose
    default None HF turns into false)."""
    return value is None or (false_too and value is False) or (isinstance(value, (str, list, dict)) and value in _UNSET)


def _at_hf_default(key: str, value: Any, default: Any) -> bool:
    """Whether a Hugging Face key of a dumped config leaves its setting as HF's default."""
    if key.endswith("_token") and value == f"<{key.upper()}>":  # to_json_string masks tokens
        return True
    if value == default and type(value) is type(default):
        return True
    if isinstance(value, (int, float)) and not isinstance(value, bool) and isinstance(default, (int, float)):
        return value == default  # 500 and 500.0
    if _unset(value, default is None) and _unset(default, False):
        return True
    if isinstance(value, dict) and default is None and key == "accelerator_config":
        defaults = _accelerator_defaults()
        return bool(defaults) and all(k in defaults and v == defaults[k] for k, v in value.items())
    return False


def _hf_config_values(values: dict[str, Any]) -> dict[str, Any]:
    """Our meaning of the values a Hugging Face dump gives to keys we share with it."""
    values = dict(values)
    report_to = values.get("report_to")
    if isinstance(report_to, (list, tuple)):  # HF's list of integrations; [] is none
        kinds = {str(item) for item in report_to} - {"none"}
        values["report_to"] = "none" if not kinds else ",".join(sorted(kinds)) if kinds - {"tensorboard", "all"} else "tensorboard"
    if "save_total_limit" in values and values["save_total_limit"] is None:  # HF: None keeps every checkpoint
        values["save_total_limit"] = 0
    return values


def _config_argv(values: dict[str, Any], parser: argparse.ArgumentParser, path: str) -> list[str]:
    """A config mapping as flags, which the parser then checks and converts like typed ones.

    A config dumped by Hugging Face (``TrainingArguments.to_json_string()``) holds every key of
    HF's trainer: those we do not have are ignored, and listed in one log line, when they are at
    HF's default; a key of HF's set to another value is refused with its value, since the run
    would silently not do what it says. A key that neither we nor HF define is refused, with a
    suggestion only when a flag's name is close to it.
    """
    names: dict[str, argparse.Action] = {}
    for action in parser._actions:
        for option in action.option_strings:
            names[option.lstrip("-")] = action
    unknown = [key for key in values if str(key) not in names or names[str(key)].dest in ("help", "config")]
    ignored: list[str] = []
    if unknown:
        hf = _hf_defaults_of_run(_hf_training_defaults(), values)
        foreign = [key for key in unknown if str(key) not in hf]
        if foreign:
            hints = []
            for key in foreign:
                close = difflib.get_close_matches(str(key), [n for n in names if "-" not in n], n=1, cutoff=_SUGGEST_CUTOFF)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ValueError(f"config file {path}: unknown key{'s' if len(foreign) > 1 else ''} {', '.join(hints)}; "
                             "the keys are the flag names of python -m trainer.task --help")
        changed = [key for key in unknown if not _at_hf_default(str(key), values[key], hf[str(key)])]
        if changed:
            shown = ", ".join(f"{key}: {json.dumps(values[key], default=str)[:80]} (HF's default: "
                              f"{json.dumps(hf[str(key)], default=str)[:40]})" for key in changed)
            raise ValueError(f"config file {path}: {shown}: python -m trainer.task does not support "
                             f"{'this Hugging Face setting' if len(changed) == 1 else 'these Hugging Face settings'}; "
                             "remove the key or set it to HF's default")
        ignored = [str(key) for key in unknown]
        values = {key: value for key, value in values.items() if key not in unknown}
    if ignored:
        logging.getLogger("trainer.args").info(
            "config file %s: ignoring %d Hugging Face TrainingArguments keys at their defaults: %s",
            path, len(ignored), ", ".join(ignored))
    argv: list[str] = []
    for key, value in _hf_config_values(values).items():
        if value is None:
            continue
        flag = f"--{key}"
        if isinstance(value, bool):
            argv += [flag, "true" if value else "false"]
        elif isinstance(value, (list, tuple)):
            if value:
                argv += [flag, *(str(item) for item in value)]
        elif isinstance(value, (dict, set)):
            raise ValueError(f"config file {path}: {key} must be a single value or a list, got {type(value).__name__}")
        else:
            argv += [flag, str(value)]
    return argv


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """Flags (and a config file) -> a checked ``TrainConfig``; ValueError for inconsistent values."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    path, rest = _split_config(argv)
    parser = build_parser()
    if path is not None:
        values = load_config_file(path)
        file_argv = _config_argv(values, parser, path)
        # the file satisfies the required flags it gives; the command line after it wins
        given = {parser._option_string_actions[f].dest for f in file_argv if f.startswith("--") and f in parser._option_string_actions}
        for action in parser._actions:
            if action.dest in given:
                action.required = False
        rest = file_argv + rest
    namespace = parser.parse_args(rest)
    values = {item.name: getattr(namespace, item.name) for item in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**values)
    return check_config(config)


def check_config(config: TrainConfig) -> TrainConfig:
    """Resolve the defaults that depend on other flags or the environment, and check the flags.

    Everything here needs neither torch, the tokenizer nor the data, so ``trainer.preflight``
    (the Vertex AI dry run) runs the very same checks. Raises ValueError naming the flag and the fix.
    """
    c = config
    if not c.do_train and not c.do_eval and not c.do_predict:
        c.do_train = c.do_eval = True
    c.output_dir = c.output_dir or os.environ.get("AIP_MODEL_DIR") or None
    c.checkpoint_dir = c.checkpoint_dir or os.environ.get("AIP_CHECKPOINT_DIR") or None
    if os.environ.get("AIP_TENSORBOARD_LOG_DIR"):
        c.logging_dir = os.environ["AIP_TENSORBOARD_LOG_DIR"]
    if c.train_sampling_strategy == "group_by_length":
        c.group_by_length = True
    if c.report_to == "all":
        c.report_to = "tensorboard"
    if c.torch_compile_mode is not None or c.torch_compile_backend is not None:
        c.torch_compile = True
    if c.save_strategy is None:
        c.save_strategy = "steps" if c.save_steps > 0 else "epoch"
    if c.eval_strategy == "steps" and c.eval_steps is None:
        c.eval_steps = c.logging_steps

    if not c.output_dir:
        raise ValueError("--output_dir is required (or $AIP_MODEL_DIR on Vertex AI)")
    if c.bf16 and c.fp16:
        raise ValueError("choose one of --bf16 and --fp16")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                 "logging_steps", "shuffle_buffer"):
        if getattr(c, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(c, name)}")
    for name in ("max_train_samples", "max_eval_samples", "max_predict_samples", "early_stopping_patience"):
        if getattr(c, name) is not None and getattr(c, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(c, name)}")
    if c.warmup_steps > 1 and c.warmup_steps != int(c.warmup_steps):
        raise ValueError(f"--warmup_steps is a number of steps or a fraction in (0, 1), got {c.warmup_steps}")
    if c.dataloader_num_workers < 0 or c.pad_to_multiple_of < 0 or c.warmup_steps < 0:
        raise ValueError("--dataloader_num_workers, --pad_to_multiple_of and --warmup_steps must be >= 0")
    if not 0.0 < c.threshold < 1.0:
        raise ValueError(f"--threshold must be between 0 and 1 (exclusive), got {c.threshold}")
    if not 0.0 <= c.warmup_ratio <= 1.0:
        raise ValueError(f"--warmup_ratio must be in [0, 1], got {c.warmup_ratio}")
    if c.learning_rate <= 0:
        raise ValueError(f"--learning_rate must be > 0, got {c.learning_rate}")
    if c.head_learning_rate is not None and c.head_learning_rate <= 0:
        raise ValueError(f"--head_learning_rate must be > 0, got {c.head_learning_rate}; leave it out to train the head "
                         "at --learning_rate")
    if c.eval_strategy == "steps" and (c.eval_steps or 0) < 1:
        raise ValueError(f"--eval_strategy steps needs --eval_steps >= 1, got {c.eval_steps}")
    if c.save_strategy == "steps" and c.save_steps < 1:
        raise ValueError("--save_strategy steps needs --save_steps >= 1")
    needs_eval = [flag for flag, on in (("--load_best_model_at_end", c.load_best_model_at_end),
                                         ("--early_stopping_patience", c.early_stopping_patience is not None),
                                         ("--save_strategy best", c.save_strategy == "best")) if on]
    if needs_eval and c.do_train and not c.evaluates_during_training:
        raise ValueError(
            f"{' and '.join(needs_eval)} need evaluations during training: add --do_eval with --eval_strategy "
            "epoch or steps (or drop the flag)"
        )
    _check_views(c)
    _check_token_budget(c)
    if c.eval_views is None:  # a model trained on pooled views is evaluated (and predicts) on them
        c.eval_views = c.train_views
    if c.eval_views != "chunks" and not (c.eval_views.isdigit() and int(c.eval_views) >= 1):
        raise ValueError(f"--eval_views must be a positive integer or 'chunks', got {c.eval_views!r}")
    if c.notify_webhook_env and "://" in c.notify_webhook_env:
        raise ValueError("--notify_webhook_env takes the NAME of an environment variable holding the URL, not the URL")
    if c.max_steps <= 0 and c.num_train_epochs <= 0 and c.do_train:
        raise ValueError("set --num_train_epochs > 0 or --max_steps > 0")
    if c.tf32 and c.use_cpu:
        raise ValueError("--tf32 true needs a CUDA GPU (Ampere or newer), and --use_cpu runs on the CPU: drop one of them")
    if c.overwrite_output_dir and c.resume_from_checkpoint not in ("auto", "no"):
        raise ValueError("--overwrite_output_dir starts afresh, so it cannot resume --resume_from_checkpoint "
                         f"{c.resume_from_checkpoint}: drop one of them")
    return c


RANDOM_SEQ_FUNCS = ("rs", "rso", "rsd")


def _check_views(c: TrainConfig) -> None:
    """``--train_views``, ``--max_chunks`` and ``--pooling`` (issue 14)."""
    if c.train_views != "chunks" and not (c.train_views.isdigit() and int(c.train_views) >= 1):
        raise ValueError(f"--train_views must be a positive integer or 'chunks', got {c.train_views!r}")
    c.train_views = str(int(c.train_views)) if c.train_views.isdigit() else c.train_views
    if c.max_chunks is not None and c.max_chunks < 1:
        raise ValueError(f"--max_chunks must be >= 1, got {c.max_chunks}")
    if c.train_views == "chunks" and c.max_chunks is None:
        raise ValueError("--train_views chunks needs --max_chunks N: a training batch holds up to "
                         "--per_device_train_batch_size x N windows, so N is the memory bound (e.g. --max_chunks 4)")
    if c.train_views not in ("1", "chunks") and c.seq_len_func not in RANDOM_SEQ_FUNCS:
        raise ValueError(f"--train_views {c.train_views} draws {c.train_views} random views of a long document, but "
                         f"--seq_len_func {c.seq_len_func} gives the same view every time: use one of "
                         f"{', '.join(RANDOM_SEQ_FUNCS)}, or --train_views chunks (consecutive windows)")
    if c.pooling in HEAD_POOLINGS:
        if c.train_views == "1":
            raise ValueError(f"--pooling {c.pooling} learns from a document's windows together: add --train_views chunks "
                             "--max_chunks N (or --train_views K with a random --seq_len_func)")
        if c.pooling == "transformer" and c.max_chunks is None and "chunks" in (c.train_views, c.eval_views):
            raise ValueError("--pooling transformer learns one embedding per window position: 'chunks' views need "
                             "--max_chunks N (the positions it knows)")
    if c.head_layers < 1:
        raise ValueError(f"--head_layers must be >= 1, got {c.head_layers}")


def _check_token_budget(c: TrainConfig) -> None:
    """``--max_tokens_per_batch`` and ``--pack_views`` (issue 21)."""
    if c.pack_views and c.pooling in HEAD_POOLINGS:
        raise ValueError(f"--pack_views scores each view on its own first token; --pooling {c.pooling} reads the "
                         "windows' states through its own head: drop one of them")
    if c.max_tokens_per_batch is None:
        return
    views = (c.max_chunks or 1) if c.train_views == "chunks" else int(c.train_views)
    length = c.max_seq_length
    if c.pad_to_multiple_of:
        length = -(-length // c.pad_to_multiple_of) * c.pad_to_multiple_of
    least = length * views
    if c.max_tokens_per_batch < least:
        what = f"--max_seq_length {c.max_seq_length}" + (f" (padded to {length})" if length != c.max_seq_length else "")
        what += f" x {views} views (--train_views {c.train_views})" if views > 1 else ""
        raise ValueError(f"--max_tokens_per_batch {c.max_tokens_per_batch} is below the batch of one document "
                         f"({what} = {least}): use --max_tokens_per_batch {least} or more")


def head_windows(c: TrainConfig) -> int:
    """The window positions a ``--pooling transformer`` head learns: the most views a document gets
    in training or evaluation (``--max_chunks``, ``--train_views K``, ``--eval_views K``)."""
    counts = [int(v) for v in (c.train_views, c.eval_views) if str(v).isdigit()]
    return max([c.max_chunks or 1, *counts])
