"""Packing several short views into one row (``--pack_views``, issue 21).

With dynamic padding a batch is as long as its longest view: a corpus of short documents next to
long ones spends much of every batch on pad tokens. Packing puts several views into one row of
at most ``capacity`` tokens (``--max_seq_length``): each view keeps its own position ids
(restarting at 0), and a block-diagonal attention mask keeps the views from seeing each other,
so a packed view gets the same encoder states as alone (up to float rounding). The classifier
then reads the first token ([CLS]) of each view.

The layout of the rows is ``first_fit``: the views, in batch order, each into the first row with
room (a new row when none has). It is a pure function of the view lengths, so the token-budget
cut (``trainer.budget``) and the collate here agree on it, in any DataLoader worker.

The model side is ``PackedForward``: it wraps a BERT-type sequence classifier (``model_type``
bert: BERT, MiniLM, ...) whose encoder takes ``position_ids`` and a 4-D mask ``[rows, 1, T, T]``
(transformers 5 passes a 4-D mask through unchanged: a boolean one to SDPA, an additive float one
to eager attention) and runs the encoder, gathers each view's first-token state, and applies the
model's own pooler, dropout and classifier. Other model types (RoBERTa's position ids start
after its padding index, ModernBERT and DistilBERT have other heads, FlashAttention takes no 4-D
mask) are refused by ``check_packable``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from modeling.label_space import label_tensor

__all__ = ["PACKABLE_MODEL_TYPES", "first_fit", "collate_packed", "check_packable", "PackedForward"]

PACKABLE_MODEL_TYPES = ("bert",)
_ATTENTION = ("sdpa", "eager")


def first_fit(lengths: Sequence[int], capacity: int) -> list[int]:
    """The row of each view: in order, the first row with room for it, else a new row.

    Raises:
        ValueError: a view longer than ``capacity``.
    """
    fills: list[int] = []
    rows = []
    for length in lengths:
        length = int(length)
        if length > capacity:
            raise ValueError(f"a view of {length} tokens does not fit a packed row of {capacity}")
        for row, fill in enumerate(fills):
            if fill + length <= capacity:
                fills[row] += length
                rows.append(row)
                break
        else:
            fills.append(length)
            rows.append(len(fills) - 1)
    return rows


def _round_up(length: int, multiple: int | None) -> int:
    return -(-length // multiple) * multiple if multiple else length


def collate_packed(examples: Sequence[Any], pad_token_id: int, capacity: int,
                   pad_to_multiple_of: int | None = None) -> dict[str, Any]:
    """Examples (``modeling.features.Example``) packed into rows of at most ``capacity`` tokens.

    Returns the tensors of ``collate`` (``attention_mask`` marks real tokens, for counting; the
    model takes ``segment_ids`` instead) plus ``position_ids`` (restarting at 0 in each view),
    ``segment_ids`` (1, 2, ... per view within its row; 0 on padding) and ``view_rows`` /
    ``view_cols`` (where each view's first token is, in example order); ``labels`` and
    ``doc_ids`` are per view, in example order.
    """
    if not examples:
        raise ValueError("cannot collate an empty batch")
    lengths = [len(example.input_ids) for example in examples]
    rows = first_fit(lengths, capacity)
    num_rows = max(rows) + 1
    fills = [0] * num_rows
    segments = [0] * num_rows
    view_rows, view_cols = [], []
    for row, length in zip(rows, lengths):
        view_rows.append(row)
        view_cols.append(fills[row])
        fills[row] += length
    width = _round_up(max(fills), pad_to_multiple_of)
    input_ids = np.full((num_rows, width), int(pad_token_id), dtype=np.int64)
    token_type_ids = np.zeros((num_rows, width), dtype=np.int64)
    position_ids = np.zeros((num_rows, width), dtype=np.int64)
    segment_ids = np.zeros((num_rows, width), dtype=np.int64)
    for example, row, col, length in zip(examples, view_rows, view_cols, lengths):
        segments[row] += 1
        input_ids[row, col : col + length] = example.input_ids
        token_type_ids[row, col : col + length] = example.token_type_ids
        position_ids[row, col : col + length] = np.arange(length)
        segment_ids[row, col : col + length] = segments[row]
    return {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy((segment_ids > 0).astype(np.int64)),
        "token_type_ids": torch.from_numpy(token_type_ids),
        "position_ids": torch.from_numpy(position_ids),
        "segment_ids": torch.from_numpy(segment_ids),
        "view_rows": torch.as_tensor(view_rows, dtype=torch.long),
        "view_cols": torch.as_tensor(view_cols, dtype=torch.long),
        "labels": label_tensor([example.label for example in examples]),
        "doc_ids": [example.doc_id for example in examples],
    }


def check_packable(model: torch.nn.Module) -> None:
    """Raise ValueError unless ``PackedForward`` can run ``model`` (see the module's docstring)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    attention = getattr(config, "_attn_implementation", None) or "eager"
    parts = all(hasattr(model, name) for name in ("bert", "dropout", "classifier"))
    if model_type not in PACKABLE_MODEL_TYPES or not parts:
        raise ValueError(
            f"--pack_views needs a BERT-type sequence classifier (model_type {', '.join(PACKABLE_MODEL_TYPES)}: position "
            f"ids restarting per view, a 4-D block-diagonal mask and the first token's head); this model is "
            f"{model_type or type(model).__name__} ({type(model).__name__}): drop --pack_views"
        )
    if attention not in _ATTENTION:
        raise ValueError(f"--pack_views needs sdpa or eager attention (a 4-D mask); the model uses {attention!r}: "
                         "drop --pack_views or load the model with sdpa attention")


class PackedForward(torch.nn.Module):
    """A sequence classifier that also takes packed batches (``collate_packed``).

    Given ``segment_ids`` it returns logits per view (in the order of ``view_rows``); without,
    it is the wrapped model's own forward. The training loop calls this module (under DDP and
    torch.compile as it would call the model), so the wrapped model's parameters are the ones
    trained and saved.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        check_packable(model)
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                segment_ids: torch.Tensor | None = None, view_rows: torch.Tensor | None = None,
                view_cols: torch.Tensor | None = None, **kwargs: Any) -> Any:
        from transformers.modeling_outputs import SequenceClassifierOutput

        if segment_ids is None:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                              position_ids=position_ids, **kwargs)
        same = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]  # padding attends to padding only
        if (getattr(self.model.config, "_attn_implementation", None) or "eager") == "eager":
            mask = torch.zeros(same.shape, dtype=torch.float32, device=same.device).masked_fill_(
                ~same, torch.finfo(torch.float32).min)
        else:
            mask = same
        base = self.model.bert
        hidden = base(input_ids=input_ids, attention_mask=mask, token_type_ids=token_type_ids,
                      position_ids=position_ids).last_hidden_state
        first = hidden[view_rows, view_cols]
        pooled = base.pooler(first.unsqueeze(1)) if base.pooler is not None else first
        return SequenceClassifierOutput(logits=self.model.classifier(self.model.dropout(pooled)))
