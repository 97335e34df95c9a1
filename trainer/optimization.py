"""Optimizer, learning-rate schedule and the optimizer step, with the Hugging Face names.

``--optim adamw_torch`` is torch's AdamW (its ``foreach`` implementation), ``adamw_torch_fused``
its fused kernel (CUDA, and CPU for float32); ``--lr_scheduler_type`` is any schedule of
transformers' ``get_scheduler`` that needs no extra arguments. ``optimizer_step`` does not
advance the schedule when the fp16 gradient scaler skipped the step (inf/NaN gradients), as
``accelerate`` does: the learning rate then follows the steps that really happened.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Collection, Iterable

import torch

__all__ = ["build_optimizer", "build_scheduler", "optimizer_step", "warmup_steps"]

_NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


def build_optimizer(
    named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
    *,
    optim: str,
    learning_rate: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float,
    head_names: Collection[str] = (),
    head_learning_rate: float | None = None,
) -> torch.optim.Optimizer:
    """AdamW with weight decay on every parameter but biases and norm weights.

    With ``head_learning_rate``, the parameters named in ``head_names`` (the layers a run starts
    from random: ``modeling.classifier.head_parameter_names``) train at that peak rate and the
    others at ``learning_rate``; the schedule scales both alike.

    Raises:
        ValueError: ``adamw_torch_fused`` on a device or dtype the fused kernel does not support.
    """
    named = [(name, p) for name, p in named_parameters if p.requires_grad]
    if head_learning_rate is None:
        parts = [(named, learning_rate)]
    else:
        if not any(n in head_names for n, _ in named):
            raise ValueError("--head_learning_rate: this model has no new layers to train at it (no parameter outside "
                             "its pretrained encoder)")
        parts = [([(n, p) for n, p in named if n not in head_names], learning_rate),
                 ([(n, p) for n, p in named if n in head_names], head_learning_rate)]
    groups = [
        group
        for part, lr in parts
        for group in (
            {"params": [p for n, p in part if not n.endswith(_NO_DECAY)], "weight_decay": weight_decay, "lr": lr},
            {"params": [p for n, p in part if n.endswith(_NO_DECAY)], "weight_decay": 0.0, "lr": lr},
        )
        if group["params"] or head_learning_rate is None
    ]
    options: dict[str, Any] = dict(lr=learning_rate, betas=betas, eps=eps)
    if optim == "adamw_torch_fused":
        try:
            return torch.optim.AdamW(groups, fused=True, **options)
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"--optim adamw_torch_fused is not available here ({error}); use --optim adamw_torch") from error
    if optim == "adamw_torch":
        return torch.optim.AdamW(groups, foreach=True, **options)
    raise ValueError(f"unknown --optim {optim!r}; choose adamw_torch or adamw_torch_fused")


def warmup_steps(warmup_steps: float, warmup_ratio: float, total_steps: int) -> int:
    """``--warmup_steps`` steps when >= 1, a fraction of the steps when in (0, 1) (transformers 5), else
    ``--warmup_ratio`` of the steps (transformers 4)."""
    if warmup_steps >= 1:
        return int(warmup_steps)
    ratio = warmup_steps if warmup_steps > 0 else warmup_ratio
    return int(math.ceil(ratio * total_steps))  # (both versions of TrainingArguments round up)


def build_scheduler(optimizer: torch.optim.Optimizer, name: str, num_warmup_steps: int, total_steps: int) -> Any:
    """transformers' ``get_scheduler(name, ...)``."""
    from transformers import get_scheduler

    return get_scheduler(name, optimizer, num_warmup_steps=num_warmup_steps, num_training_steps=total_steps)


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    parameters: list[torch.nn.Parameter],
    max_grad_norm: float,
) -> bool:
    """Unscale, clip, step, advance the schedule, zero the gradients; False when the step was skipped.

    A step is skipped when, with fp16, the scaler found inf/NaN gradients: the schedule then
    stays where it is. Reading the scale (a device sync) happens only when the scaler is enabled
    (fp16). A group without any gradient (every batch of it in skipped row groups, one process)
    makes no optimizer step, but its schedule step is taken, as the other ranks of a DDP run would.
    """
    if not any(p.grad is not None for p in parameters):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
            scheduler.step()
        return False
    scaler.unscale_(optimizer)
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    scale_before = scaler.get_scale() if scaler.is_enabled() else None
    scaler.step(optimizer)
    scaler.update()
    stepped = scale_before is None or scaler.get_scale() >= scale_before
    if stepped:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return stepped
