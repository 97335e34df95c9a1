"""Checks before the first step, so a run never fails after minutes (or GPU-hours) of training.

Each problem is a ValueError naming it and the fix: a model whose position embeddings are fewer
than ``--max_seq_length`` (read from the model's config, since a tokenizer may not know), a
tokenizer with more tokens than the model's embeddings, a saved classifier with another label
count, an evaluation split without a labelled document, an empty split to predict, and flags
that need a GPU on a machine without one.

``python -m trainer.preflight FLAGS...`` runs the checks that need neither the data nor the
model weights: the trainer's own flag checks (``trainer.args``) and the sequence-length check
with the tokenizer when it is a local directory (otherwise with no special tokens counted, the
most permissive case, and a note). ``bin/submit-vertex.sh`` runs it before submitting a job.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Sequence

from modeling.metrics import METRIC_NAMES, MULTI_LABEL_METRIC_NAMES

__all__ = ["model_max_positions", "check_model_fits", "check_splits", "check_device", "check_seq_offline", "main"]

# models whose position ids start after the padding index (max_position_embeddings - pad_token_id - 1 usable)
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "longformer", "bart", "mbart", "data2vec-text", "xmod",
                     "roberta-prelayernorm", "ibert", "luke", "mpnet")


def model_max_positions(model_config: Any) -> int | None:
    """The longest input the model's position embeddings allow, or None if it has no absolute limit."""
    if getattr(model_config, "relative_attention", False) and not getattr(model_config, "position_biased_input", True):
        return None  # DeBERTa-v2/v3: relative positions only
    if getattr(model_config, "position_embedding_type", "absolute") not in ("absolute", None):
        return None
    limit = getattr(model_config, "max_position_embeddings", None) or getattr(model_config, "n_positions", None)
    if not isinstance(limit, int) or limit <= 0:
        return None
    if getattr(model_config, "model_type", "") in _OFFSET_POSITIONS:
        pad = getattr(model_config, "pad_token_id", None)
        limit -= (pad if isinstance(pad, int) else 1) + 1
    return limit


def check_model_fits(config: Any, model_config: Any, tokenizer: Any, label_names: Sequence[str]) -> None:
    """The model can take this run's inputs and labels.

    Raises:
        ValueError: ``--max_seq_length`` above the position embeddings; a tokenizer larger than
            the embeddings; a saved classification head of another size without
            ``--ignore_mismatched_sizes``.
    """
    name = config.model_name_or_path
    limit = model_max_positions(model_config)
    if limit is not None and config.max_seq_length > limit:
        raise ValueError(
            f"--max_seq_length {config.max_seq_length} exceeds what model {name} can take: its config has "
            f"max_position_embeddings {getattr(model_config, 'max_position_embeddings', None) or model_config.n_positions}, "
            f"so at most {limit} tokens; use --max_seq_length {limit} or less (a longer document is cut by "
            "--seq_len_func)"
        )
    vocab = getattr(model_config, "vocab_size", None)
    tokens = len(tokenizer)
    if isinstance(vocab, int) and tokens > vocab:
        raise ValueError(
            f"the tokenizer ({config.tokenizer_name or name}) has {tokens} tokens but model {name} has embeddings for "
            f"{vocab}: token ids >= {vocab} would fail in the model; use the model's own tokenizer (drop "
            "--tokenizer_name, and preprocess the data with that tokenizer)"
        )
    architectures = getattr(model_config, "architectures", None) or []
    saved_head = any(arch.endswith("ForSequenceClassification") for arch in architectures)
    saved_labels = getattr(model_config, "num_labels", None)
    if saved_head and saved_labels != len(label_names) and not config.ignore_mismatched_sizes:
        raise ValueError(
            f"model {name} is a classifier of {saved_labels} labels but the data has {len(label_names)} "
            f"({', '.join(label_names)}); pass --ignore_mismatched_sizes to replace its head with a new one of "
            f"{len(label_names)} labels (initialised from --seed), or start from its base model"
        )


def check_metric(config: Any, label_space: Any) -> None:
    """``--metric_for_best_model`` is one that an evaluation of these labels reports.

    Raises:
        ValueError: accuracy or MCC for label sets, micro-F1 or exact match for one label per document.
    """
    names = MULTI_LABEL_METRIC_NAMES if label_space.multi_label else METRIC_NAMES
    if config.metric_for_best_model not in names:
        kind = "label sets (problem_type multi_label_classification)" if label_space.multi_label else "one label per document"
        raise ValueError(
            f"--metric_for_best_model {config.metric_for_best_model}: {config.data_dir} has {kind}, whose evaluation "
            f"reports {', '.join(names)}; choose one of them"
        )


def check_splits(config: Any, manifest: dict[str, Any], scans: dict[str, Any]) -> None:
    """The evaluation split has a labelled document; the split to predict has a document."""
    from trainer.shards import has_labels

    if config.do_eval:
        split = config.eval_split
        if not has_labels(scans[split].units):
            info = manifest["splits"].get(split, {})
            why = ""
            if info.get("read") and not info.get("records"):
                reasons = ", ".join(f"{r} {n}" for r, n in sorted((info.get("rejected_by_reason") or {}).items()))
                why = f" (preprocessing rejected all {info['read']} of its rows: {reasons}; see rejected/{split}-*.jsonl)"
            elif info.get("records"):
                why = f" (its {info['records']} documents have no label)"
            raise ValueError(
                f"{config.data_dir}: the evaluation split {split!r} has no labelled documents{why}; fix its labels "
                f"(they must be labels of the train split: {', '.join(manifest['label_map'])}) and preprocess again, "
                "or run without evaluation (--do_train without --do_eval, or --eval_split another split)"
            )
    if config.do_predict and not sum(unit.rows for unit in scans[config.test_split].units):
        raise ValueError(f"{config.data_dir}: split {config.test_split!r} has no documents to predict (--do_predict)")


def check_device(config: Any, device: Any) -> None:
    """Flags that need a CUDA GPU, on a machine without one."""
    if device.type != "cuda":
        if config.fp16:
            raise ValueError("--fp16 needs a GPU; use --bf16 on a CPU")
        if config.tf32:
            raise ValueError("--tf32 true needs a CUDA GPU (Ampere or newer); drop it on a CPU")


class _NoSpecialTokens:
    """A tokenizer stand-in that adds no special tokens: the most permissive sequence-length check."""

    model_max_length = None

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return 0


def check_seq_offline(config: Any) -> str | None:
    """The trainer's sequence-length check without downloading anything; a note when it was partial."""
    from tokenization.seq_len import validate_seq_config

    source = config.tokenizer_name or config.model_name_or_path
    if os.path.isdir(source):
        from tokenization.tokenizer import load_tokenizer

        validate_seq_config(config.seq_len_func, config.seq_func_params, config.max_seq_length, load_tokenizer(source))
        return None
    unknown = (f"the tokenizer {source} is not on this machine, so its special tokens were not counted "
               "(the job counts them: it allows a few tokens fewer)")
    try:
        validate_seq_config(config.seq_len_func, config.seq_func_params, config.max_seq_length, _NoSpecialTokens())
    except ValueError as error:
        raise ValueError(f"{error} ({unknown})") from error
    return f"note: --seq_func_params were checked against --max_seq_length {config.max_seq_length}, but {unknown}"


def main(argv: Sequence[str] | None = None) -> int:
    """Check trainer flags as the trainer would before loading data; exit 2 with the problem."""
    from trainer.args import parse_args

    try:
        config = parse_args(argv)
        note = check_seq_offline(config)
    except ValueError as error:
        print(f"python -m trainer.task: error: {error}", file=sys.stderr)
        return 2
    if note:
        print(note, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
