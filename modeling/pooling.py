"""Several views of one document, one prediction: pooling view logits per document (issue 14).

Training with ``--train_views K|chunks`` expands each document of a batch into its views (K draws
of the sequence-length function, or consecutive windows, at most ``--max_chunks``); the batch is
then a flat batch of views plus ``owners`` (the index, within the batch, of each view's
document), as evaluation has always done. The model scores every view in one forward; the
view logits are pooled per document (``mean`` or ``max``, elementwise over the classes) and the
loss is one cross-entropy per document. Evaluation and prediction pool with the same rule.

Mean and max of logits need no new parameters, so such a model stays a plain
``AutoModelForSequenceClassification``. The learned heads over the windows' states
(``--pooling attention|transformer``, issue 19) are a model of their own
(``modeling.window_heads``) whose forward takes the ``owners`` and returns logits per document:
``pooled_forward`` calls it so, and evaluation then keeps a document's windows in one batch
(``keeps_documents_whole``).

Nothing here imports the data code: ``pool_logits`` is a pure function of tensors, so the
tests check it against views scored one at a time.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

import numpy as np
import torch

__all__ = [
    "POOLINGS",
    "LOGIT_POOLINGS",
    "HEAD_POOLINGS",
    "keeps_documents_whole",
    "pool_logits",
    "pooled_forward",
    "select_windows",
    "model_input_names",
    "new_pool",
    "add_to_pool_",
    "finish_pool",
    "batch_inputs",
]

LOGIT_POOLINGS = ("mean", "max")  # of the views' logits, no parameters
HEAD_POOLINGS = ("attention", "transformer")  # learned heads over the windows' states (= window_heads.HEAD_POOLINGS)
POOLINGS = LOGIT_POOLINGS + HEAD_POOLINGS
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _check(pooling: str) -> None:
    if pooling not in LOGIT_POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(LOGIT_POOLINGS)}, got {pooling!r}")


def keeps_documents_whole(pooling: str) -> bool:
    """True for a head over the windows: all of a document's windows must be in one forward."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    return pooling in HEAD_POOLINGS


def pool_logits(logits: torch.Tensor, owners: torch.Tensor, num_docs: int, pooling: str) -> torch.Tensor:
    """Logits per document from logits per view (differentiable).

    Args:
        logits: ``(views, classes)``.
        owners: ``(views,)`` index of each view's document, in ``0..num_docs-1``; every document
            must own at least one view.
        num_docs: documents in the batch.
        pooling: ``mean`` (average of the views' logits) or ``max`` (per class, the largest).

    Returns:
        ``(num_docs, classes)``: with ``max``, the gradient of a class goes to the view holding
        its maximum only (torch's ``amax`` rule).
    """
    _check(pooling)
    index = owners.to(logits.device).unsqueeze(1).expand_as(logits)
    out = logits.new_zeros((num_docs, logits.shape[1]))
    if pooling == "mean":
        return out.scatter_reduce(0, index, logits, reduce="mean", include_self=False)
    return out.scatter_reduce(0, index, logits, reduce="amax", include_self=False)


def model_input_names(model: torch.nn.Module) -> tuple[str, ...]:
    """The inputs of ``_INPUTS`` that the model's ``forward`` takes.

    ModernBERT (and other models without segment embeddings) has no ``token_type_ids``
    argument; passing it anyway would go into its ``**kwargs``, down to the attention code.
    """
    inner = getattr(model, "_orig_mod", model)  # torch.compile
    inner = getattr(inner, "module", inner)  # DistributedDataParallel
    parameters = inspect.signature(inner.forward).parameters
    return tuple(name for name in _INPUTS if name != "token_type_ids" or name in parameters)


def pooled_forward(model: torch.nn.Module, inputs: Mapping[str, torch.Tensor], owners: torch.Tensor, num_docs: int,
                   pooling: str) -> torch.Tensor:
    """One forward over all the views of a batch; the pooled logits per document (float32).

    ``mean``/``max``: the model scores each view and the logits are pooled here; ``attention``/
    ``transformer``: the model (``window_heads.WindowHeadForSequenceClassification``) pools the
    windows' states itself, given ``owners`` (so every document's windows must be in ``inputs``).
    """
    if keeps_documents_whole(pooling):
        return model(**inputs, owners=owners, num_docs=num_docs).logits.float()
    logits = model(**inputs).logits.float()
    return pool_logits(logits, owners, num_docs, pooling)


def select_windows(count: int, limit: int | None) -> list[int]:
    """Which of ``count`` consecutive windows a document keeps under ``--max_chunks limit``.

    All of them when ``count <= limit`` (or no limit); else ``limit`` windows evenly spaced over
    the document, the first and the last always kept (``round(i * (count - 1) / (limit - 1))``;
    with a limit of 1, the first window). The choice depends on the lengths only, so it is the
    same every epoch, on every rank and in prediction.
    """
    if limit is None or count <= limit:
        return list(range(count))
    if limit == 1:
        return [0]
    picks = np.round(np.arange(limit) * (count - 1) / (limit - 1)).astype(int)
    return [int(i) for i in picks]


# --------------------------------------------------------------------------- evaluation: pooling across batches
def new_pool(num_docs: int, num_classes: int, pooling: str, device: torch.device) -> torch.Tensor:
    """The running per-document accumulator of ``score_documents`` (sums, or maxima from -inf)."""
    _check(pooling)
    fill = 0.0 if pooling == "mean" else float("-inf")
    return torch.full((num_docs, num_classes), fill, device=device)


def add_to_pool_(pool: torch.Tensor, owners: torch.Tensor, logits: torch.Tensor, pooling: str) -> None:
    """Add one batch of view logits to the accumulator, in place (on the device: no host sync)."""
    if pooling == "mean":
        pool.index_add_(0, owners, logits)
    else:
        pool.scatter_reduce_(0, owners.unsqueeze(1).expand_as(logits), logits, reduce="amax", include_self=True)


def finish_pool(pool: torch.Tensor, counts: torch.Tensor, pooling: str) -> torch.Tensor:
    """The pooled logits: sums over view counts (mean), or the maxima as they are (max)."""
    if pooling == "mean":
        return pool / counts.clamp(min=1).unsqueeze(1)
    return pool


def batch_inputs(batch: Mapping[str, Any], names: tuple[str, ...], device: torch.device) -> dict[str, torch.Tensor]:
    """The model inputs of a collated batch, on the device."""
    return {key: batch[key].to(device, non_blocking=True) for key in names}
