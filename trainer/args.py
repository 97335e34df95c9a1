"""Command-line flags of ``python -m trainer.task``.

Names follow the 2020 tool where it had them (``--data_dir --model_type --model_name --task_name
--output_dir --max_seq_length --seq_len_func --seq_func_params --do_train --do_eval``) and Hugging
Face ``TrainingArguments`` otherwise, so users of either recognise them. On Vertex AI the
``AIP_*`` variables provide defaults for where the model, checkpoints and logs go.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from tokenization.seq_len import SEQ_LEN_FUNCS

__all__ = ["TrainConfig", "build_parser", "parse_args"]


@dataclass
class TrainConfig:
    data_dir: str
    model_name: str
    task_name: str
    output_dir: str
    model_type: str | None = None
    tokenizer_name: str | None = None
    max_seq_length: int = 512
    seq_len_func: str = "head"
    seq_func_params: list[int] = field(default_factory=list)
    fixed_spans: bool = False
    do_train: bool = True
    do_eval: bool = True
    train_split: str = "train"
    eval_split: str = "dev"
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 16
    learning_rate: float = 2e-5
    num_train_epochs: float = 3.0
    max_steps: int = -1
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    gradient_accumulation_steps: int = 1
    bf16: bool = False
    fp16: bool = False
    use_cpu: bool = False
    seed: int = 42
    eval_strategy: str = "epoch"
    eval_steps: int = 0
    eval_views: str = "1"
    metric_for_best_model: str = "macro_f1"
    load_best_model_at_end: bool = False
    save_steps: int = 0
    save_total_limit: int = 2
    logging_steps: int = 10
    resume_from_checkpoint: str = "auto"
    checkpoint_dir: str | None = None
    logging_dir: str | None = None
    dataloader_num_workers: int = 0
    shuffle_buffer: int = 4096
    pad_to_multiple_of: int = 0
    disable_tqdm: bool = False
    trust_remote_code: bool = False
    skip_bad_shards: bool = False
    sample_trace_file: str | None = None
    notify_webhook_env: str | None = None
    hypertune_metric_tag: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def resolved_checkpoint_dir(self) -> str:
        import spanwise_io

        return self.checkpoint_dir or spanwise_io.join(self.output_dir, "checkpoints")

    @property
    def resolved_logging_dir(self) -> str:
        import spanwise_io

        return self.logging_dir or spanwise_io.join(self.output_dir, "runs", self.task_name)


def _bool_flag(parser: argparse.ArgumentParser, name: str, help_text: str) -> None:
    parser.add_argument(f"--{name}", action="store_true", help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.task",
        allow_abbrev=False,  # a typo such as --learning_rat must fail, not silently match a flag
        description="Fine-tune a Hugging Face sequence classifier on shards made by beam_pipelines.preprocess.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    io = parser.add_argument_group("data and model")
    io.add_argument("--data_dir", required=True, help="preprocessed shards + manifest.json (local or gs://)")
    io.add_argument("--model_name", "--model_name_or_path", dest="model_name", required=True,
                    help="pretrained model: hub name, local dir or gs:// dir")
    io.add_argument("--model_type", default=None, help="accepted for 2020 compatibility (e.g. bert); the model's config decides")
    io.add_argument("--tokenizer_name", default=None, help="tokenizer if not the model's own")
    io.add_argument("--task_name", required=True, help="a name for this run (TensorBoard runs/<task_name>/)")
    io.add_argument("--output_dir", default=os.environ.get("AIP_MODEL_DIR"),
                    help="where the model goes (local or gs://); default $AIP_MODEL_DIR on Vertex AI")
    io.add_argument("--train_split", default="train")
    io.add_argument("--eval_split", default="dev")
    io.add_argument("--trust_remote_code", action="store_true", help="allow custom model code from the hub (off by default)")
    io.add_argument("--skip_bad_shards", action="store_true",
                    help="skip (and count) shards that are missing, corrupt or foreign, and row groups found corrupt "
                         "while reading, instead of stopping; the count and the files go to eval_results.json and "
                         "run_config.json (off by default: a bad shard stops the run before the first step)")

    seq = parser.add_argument_group("sequence length")
    seq.add_argument("--max_seq_length", type=int, default=512, help="model input length, special tokens included")
    seq.add_argument("--seq_len_func", choices=list(SEQ_LEN_FUNCS), default="head")
    seq.add_argument("--seq_func_params", type=int, nargs="*", default=[], help="e.g. ht: 128 382; rs/rso/rsd: span length")
    seq.add_argument("--fixed_spans", action="store_true",
                     help="draw random spans once (epoch 0) and reuse them every epoch, as the 2020 tool did")
    seq.add_argument("--eval_views", default="1",
                     help="views per long document at evaluation: 1, K random draws, or 'chunks' (windows covering it)")

    run = parser.add_argument_group("training")
    _bool_flag(run, "do_train", "train (default: train and evaluate when neither --do_train nor --do_eval is given)")
    _bool_flag(run, "do_eval", "evaluate")
    run.add_argument("--per_device_train_batch_size", type=int, default=8)
    run.add_argument("--per_device_eval_batch_size", type=int, default=16)
    run.add_argument("--learning_rate", type=float, default=2e-5)
    run.add_argument("--num_train_epochs", type=float, default=3.0)
    run.add_argument("--max_steps", type=int, default=-1, help="optimizer steps; overrides --num_train_epochs when > 0")
    run.add_argument("--warmup_ratio", type=float, default=0.0)
    run.add_argument("--weight_decay", type=float, default=0.0)
    run.add_argument("--adam_beta1", type=float, default=0.9)
    run.add_argument("--adam_beta2", type=float, default=0.999)
    run.add_argument("--adam_epsilon", type=float, default=1e-8)
    run.add_argument("--max_grad_norm", type=float, default=1.0)
    run.add_argument("--gradient_accumulation_steps", type=int, default=1)
    _bool_flag(run, "bf16", "bfloat16 autocast (GPU with bf16, or CPU)")
    _bool_flag(run, "fp16", "float16 autocast with a gradient scaler (GPU only)")
    _bool_flag(run, "use_cpu", "train on the CPU even if a GPU is present")
    run.add_argument("--seed", type=int, default=42)
    run.add_argument("--dataloader_num_workers", type=int, default=0)
    run.add_argument("--shuffle_buffer", type=int, default=4096, help="rows shuffled together (memory bound of the loader)")
    run.add_argument("--pad_to_multiple_of", type=int, default=0, help="pad batches to a multiple of this (8 helps tensor cores)")

    ev = parser.add_argument_group("evaluation, checkpoints, logging")
    ev.add_argument("--eval_strategy", choices=["no", "epoch", "steps"], default="epoch")
    ev.add_argument("--eval_steps", type=int, default=0)
    ev.add_argument("--metric_for_best_model", choices=["accuracy", "macro_f1", "mcc", "loss"], default="macro_f1")
    _bool_flag(ev, "load_best_model_at_end", "save the best evaluated model as the final model")
    ev.add_argument("--save_steps", type=int, default=0, help="checkpoint every N optimizer steps (0: at each epoch end)")
    ev.add_argument("--save_total_limit", type=int, default=2, help="checkpoints kept")
    ev.add_argument("--logging_steps", type=int, default=10)
    ev.add_argument("--resume_from_checkpoint", default="auto",
                    help="'auto' (newest in the checkpoint dir, if any), 'no', or a checkpoint path")
    ev.add_argument("--checkpoint_dir", default=os.environ.get("AIP_CHECKPOINT_DIR"),
                    help="default: $AIP_CHECKPOINT_DIR, else <output_dir>/checkpoints")
    ev.add_argument("--logging_dir", default=None,
                    help="TensorBoard dir; $AIP_TENSORBOARD_LOG_DIR wins when set; default <output_dir>/runs/<task_name>")
    _bool_flag(ev, "disable_tqdm", "no progress bar")
    ev.add_argument("--notify_webhook_env", default=None, metavar="ENV_NAME",
                    help="post a JSON summary when the run finishes or fails to the URL in this environment "
                         "variable (Slack incoming-webhook compatible); the URL itself never goes on the command line")
    ev.add_argument("--hypertune_metric_tag", default=None,
                    help="in a Vertex AI tuning trial, the tag the eval metric is reported under "
                         "(default: the --metric_for_best_model name)")
    ev.add_argument("--sample_trace_file", default=None,
                    help="append the document ids of every training batch to this local JSONL file (audits, tests); "
                         "with several ranks each writes its own, e.g. trace.rank1.jsonl")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """Parse and check the flags; ValueError for inconsistent values."""
    args = build_parser().parse_args(argv)
    values = vars(args)
    if not values["do_train"] and not values["do_eval"]:
        values["do_train"] = values["do_eval"] = True
    if os.environ.get("AIP_TENSORBOARD_LOG_DIR"):
        values["logging_dir"] = os.environ["AIP_TENSORBOARD_LOG_DIR"]
    config = TrainConfig(**values)
    if not config.output_dir:
        raise ValueError("--output_dir is required (or $AIP_MODEL_DIR on Vertex AI)")
    if config.bf16 and config.fp16:
        raise ValueError("choose one of --bf16 and --fp16")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(config, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(config, name)}")
    if config.eval_strategy == "steps" and config.eval_steps < 1:
        raise ValueError("--eval_strategy steps needs --eval_steps >= 1")
    if config.eval_views != "chunks" and not (config.eval_views.isdigit() and int(config.eval_views) >= 1):
        raise ValueError(f"--eval_views must be a positive integer or 'chunks', got {config.eval_views!r}")
    if config.notify_webhook_env and "://" in config.notify_webhook_env:
        raise ValueError("--notify_webhook_env takes the NAME of an environment variable holding the URL, not the URL")
    if config.max_steps <= 0 and config.num_train_epochs <= 0 and config.do_train:
        raise ValueError("set --num_train_epochs > 0 or --max_steps > 0")
    return config
