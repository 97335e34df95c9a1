"""Whether a run may continue what an ``--output_dir`` already holds.

A checkpoint (and ``run_config.json`` of a finished run) records the arguments that decide the
result: model, data, sequence-length function and its parameters, ``--max_seq_length``, the
optimizer and its schedule (including the number of steps), seed, batch size and the data order
(world size, accumulation, shuffle buffer, length grouping). A run resumes only when its own are
the same; otherwise it stops before any work with what differs and the two ways out
(``--overwrite_output_dir``, or a new ``--output_dir``). Arguments that change how fast or where,
not what (workers, logging, evaluation batch size, ``--torch_compile``), may change between runs.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import spanwise_io
from trainer import checkpoint as ckpt

__all__ = ["RESULT_FIELDS", "result_args", "differences", "refusal", "clear_output_dir", "OUTPUT_FILES"]

log = logging.getLogger("trainer")

RESULT_FIELDS = (
    "model_name_or_path", "tokenizer_name", "data_dir", "train_split", "max_train_samples",
    "max_seq_length", "seq_len_func", "seq_func_params", "fixed_spans",
    "optim", "learning_rate", "lr_scheduler_type", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon",
    "max_grad_norm", "bf16", "fp16", "ignore_mismatched_sizes",
    "seed", "per_device_train_batch_size", "gradient_accumulation_steps", "shuffle_buffer", "group_by_length",
)
# decide the result only when the best model or early stopping depends on the evaluations
_EVAL_FIELDS = ("eval_split", "max_eval_samples", "eval_views", "eval_strategy", "eval_steps", "metric_for_best_model",
                "load_best_model_at_end", "early_stopping_patience", "early_stopping_threshold")

# what a run writes into --output_dir (removed by --overwrite_output_dir, with the checkpoints)
OUTPUT_FILES = ("model.safetensors", "config.json", "run_config.json", "eval_results.json", "preprocess_manifest.json",
                "train_results.json",
                "predict_results.tsv", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                "merges.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model", "added_tokens.json",
                "chat_template.jinja", "generation_config.json",
                "window_heads.py")


def result_args(config: Any, *, world_size: int, total_steps: int, warmup_steps: int, data_created_at: Any) -> dict[str, Any]:
    """The values that decide what a training run produces (JSON-serialisable)."""
    values: dict[str, Any] = {name: getattr(config, name) for name in RESULT_FIELDS}
    if config.load_best_model_at_end or config.early_stopping_patience is not None:
        values.update({name: getattr(config, name) for name in _EVAL_FIELDS})
    values.update(world_size=world_size, total_steps=total_steps, warmup_steps=warmup_steps,
                  data_created_at=data_created_at)
    values["seq_func_params"] = list(values["seq_func_params"])
    # issue 14: recorded only when set, so that runs made before these flags still resume
    if str(getattr(config, "train_views", "1")) != "1":
        values.update(train_views=config.train_views, max_chunks=config.max_chunks, pooling=config.pooling)
    if "eval_views" in values and (config.max_chunks is not None or config.pooling != "mean"):
        values.update(max_chunks=config.max_chunks, pooling=config.pooling)
    # issue 21: the batches' make-up, recorded only when set (runs made before still resume)
    if getattr(config, "max_tokens_per_batch", None):
        values.update(max_tokens_per_batch=config.max_tokens_per_batch)
    if getattr(config, "pack_views", False):
        values.update(pack_views=True)
    if getattr(config, "head_learning_rate", None) is not None:  # recorded only when set (runs made before still resume)
        values.update(head_learning_rate=config.head_learning_rate)
    if config.pooling in ("attention", "transformer"):  # issue 19: the head's shape
        values.update(head_layers=config.head_layers, head_reduce=config.head_reduce)
    return values


def differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``name: saved -> now`` for every value that differs."""
    return [
        f"{name} {saved.get(name)!r} -> {current.get(name)!r}"
        for name in sorted(set(saved) | set(current))
        if saved.get(name) != current.get(name)
    ]


def refusal(where: str, output_dir: str, diffs: list[str]) -> ValueError:
    """The message for a run whose arguments are not those of the run it would continue."""
    return ValueError(
        f"{output_dir} holds a run made with other arguments ({where}); continuing it would give neither result. "
        f"What differs (that run -> this one): {'; '.join(diffs)}. "
        "Either start afresh there with --overwrite_output_dir (its checkpoints and model are deleted), "
        "or give a new --output_dir"
    )


def clear_output_dir(config: Any) -> None:
    """``--overwrite_output_dir``: delete the checkpoints, the files a run writes and its TensorBoard logs."""
    checkpoint_dir = config.resolved_checkpoint_dir
    for _, path in ckpt.list_checkpoints(checkpoint_dir, complete_only=False):
        log.info("--overwrite_output_dir: removing %s", path)
        spanwise_io.remove_tree(path)
    output_dir = config.output_dir
    if spanwise_io.isdir(output_dir):
        present = set(spanwise_io.listdir(output_dir))
        for name in OUTPUT_FILES:
            if name in present:
                spanwise_io.remove(spanwise_io.join(output_dir, name))
        if "best_model" in present:  # written by earlier versions
            spanwise_io.remove_tree(spanwise_io.join(output_dir, "best_model"))
    default_logs = spanwise_io.join(output_dir, "runs", config.task_name)
    if config.resolved_logging_dir == default_logs and spanwise_io.isdir(default_logs):
        log.info("--overwrite_output_dir: removing the TensorBoard logs in %s", default_logs)
        spanwise_io.remove_tree(default_logs)
