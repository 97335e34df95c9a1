"""Whole-document classifiers: a learned head over the encoder's state of each window (issue 19).

``--pooling mean|max`` averages (or maxes) the logits that each window gets on its own: the
weakest way to pool in Sun et al. 2019. The two heads here read the windows' *states* instead,
so the model learns which windows matter and how they relate:

* ``attention``: one score per window (``w2 . tanh(W1 h + b1)``), a softmax over a document's
  windows, the weighted sum of their states, then the classifier;
* ``transformer`` (hierarchical BERT, as LexGLUE's ``hierbert``): each window's state plus a
  learned window-position embedding, a small transformer encoder over a document's windows (of
  the encoder's width, ``head_layers`` layers), max (or mean) over the windows, then the classifier.

A window's state is the encoder's pooled output where it has a pooler (BERT, RoBERTa: the state
``*ForSequenceClassification`` classifies), else its first token's last hidden state.

The model is one ``PreTrainedModel`` (``encoder.*`` and ``head.*`` weights in one safetensors
file) with its own ``model_type`` (``spanwise_windows``), so ``AutoModelForSequenceClassification``
never mistakes a folder for a plain encoder with a fresh classifier (the silent trap of a
config.json that keeps ``bert``). Importing this module registers the config and model with the
``Auto*`` classes; ``save_pretrained`` also copies this file into the folder (``auto_map``), so a
plain Hugging Face user gets the whole model with ``trust_remote_code=True``, and without it an
error that asks for it. For that copy to work, this file imports torch and transformers only.

The batch layout is the trainer's: a flat batch of windows plus ``owners`` (each window's
document, ``0..num_docs-1``); a window's position in its document is its rank among the
document's windows in batch order. Without ``owners`` every row is a document of one window (what
``transformers.pipeline`` passes).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.utils import logging

__all__ = [
    "is_window_model",
    "MODEL_TYPE",
    "HEAD_POOLINGS",
    "HEAD_REDUCTIONS",
    "WindowHeadConfig",
    "WindowHead",
    "WindowHeadForSequenceClassification",
    "DocumentClassifierOutput",
    "window_slots",
]

MODEL_TYPE = "spanwise_windows"
HEAD_POOLINGS = ("attention", "transformer")
HEAD_REDUCTIONS = ("max", "mean")

logger = logging.get_logger(__name__)


class WindowHeadConfig(PretrainedConfig):
    """The encoder's config (``encoder``, as a dict) and the head's settings.

    Args:
        encoder: ``to_dict()`` of the encoder's config (its ``model_type`` included).
        pooling: ``attention`` or ``transformer``.
        max_windows: window positions the transformer head knows (its position embeddings).
        head_layers: transformer encoder layers over the windows.
        head_reduce: ``max`` or ``mean`` over the transformer's window outputs.
    """

    model_type = MODEL_TYPE

    def __init__(self, encoder: dict[str, Any] | None = None, pooling: str = "attention", max_windows: int = 4,
                 head_layers: int = 2, head_reduce: str = "max", **kwargs: Any) -> None:
        if pooling not in HEAD_POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(HEAD_POOLINGS)}, got {pooling!r}")
        if head_reduce not in HEAD_REDUCTIONS:
            raise ValueError(f"head_reduce must be one of {', '.join(HEAD_REDUCTIONS)}, got {head_reduce!r}")
        if int(max_windows) < 1 or int(head_layers) < 1:
            raise ValueError(f"max_windows and head_layers must be >= 1, got {max_windows} and {head_layers}")
        self.encoder = dict(encoder or {"model_type": "bert"})
        self.pooling = pooling
        self.max_windows = int(max_windows)
        self.head_layers = int(head_layers)
        self.head_reduce = head_reduce
        super().__init__(**kwargs)

    def encoder_config(self) -> PretrainedConfig:
        values = dict(self.encoder)
        return AutoConfig.for_model(values.pop("model_type"), **values)


def window_slots(owners: torch.Tensor, num_docs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each window's position within its document (its rank in batch order) and each document's window count."""
    counts = torch.bincount(owners, minlength=num_docs)
    order = torch.argsort(owners, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    slots = torch.empty_like(owners)
    slots[order] = torch.arange(owners.numel(), device=owners.device) - starts[owners[order]]
    return slots, counts


class WindowHead(nn.Module):
    """Window states ``(windows, hidden)`` + ``owners`` -> document logits ``(num_docs, labels)``."""

    def __init__(self, config: WindowHeadConfig, hidden: int, heads: int, ffn: int, dropout: float,
                 init_std: float = 0.02) -> None:
        super().__init__()
        self.pooling = config.pooling
        self.reduce = config.head_reduce
        self.max_windows = config.max_windows
        if self.pooling == "attention":
            self.score = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        else:
            self.positions = nn.Embedding(config.max_windows, hidden)
            # as the encoder's own position embeddings (N(0, initializer_range)); torch's N(0, 1) default is
            # larger than the window states it is added to, and drowned them in a short fine-tuning
            nn.init.normal_(self.positions.weight, std=init_std)
            layer = nn.TransformerEncoderLayer(hidden, heads, ffn, dropout, activation="gelu", batch_first=True)
            self.windows = nn.TransformerEncoder(layer, config.head_layers, enable_nested_tensor=False)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, config.num_labels)

    @classmethod
    def from_config(cls, config: WindowHeadConfig) -> "WindowHead":
        """The head of a ``WindowHeadConfig``: the encoder's width, attention heads, feed-forward size and dropout."""
        encoder = config.encoder_config()
        hidden = int(encoder.hidden_size)
        heads = int(getattr(encoder, "num_attention_heads", 1) or 1)
        ffn = int(getattr(encoder, "intermediate_size", 4 * hidden) or 4 * hidden)
        dropout = float(getattr(encoder, "hidden_dropout_prob", 0.1) or 0.0)
        init_std = float(getattr(encoder, "initializer_range", 0.02) or 0.02)
        return cls(config, hidden, heads, ffn, dropout, init_std)

    def forward(self, states: torch.Tensor, owners: torch.Tensor, num_docs: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(logits, attention weights per window or None)``; every document must own a window."""
        if self.pooling == "attention":
            documents, weights = self._attend(states, owners, num_docs)
        else:
            documents, weights = self._encode(states, owners, num_docs), None
        return self.classifier(self.dropout(documents)), weights

    def _attend(self, states: torch.Tensor, owners: torch.Tensor, num_docs: int) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.score(states).squeeze(-1).float()
        top = scores.new_full((num_docs,), float("-inf")).scatter_reduce(0, owners, scores, reduce="amax")
        exp = torch.exp(scores - top[owners])
        weights = exp / exp.new_zeros(num_docs).index_add(0, owners, exp)[owners]
        weighted = weights.to(states.dtype).unsqueeze(1) * states
        return states.new_zeros((num_docs, states.shape[1])).index_add(0, owners, weighted), weights

    def _encode(self, states: torch.Tensor, owners: torch.Tensor, num_docs: int) -> torch.Tensor:
        slots, counts = window_slots(owners, num_docs)
        width = int(counts.max())  # the one host sync: the grid's width
        if width > self.max_windows:
            raise ValueError(f"a document has {width} windows but this model's transformer head knows "
                             f"{self.max_windows} window positions: predict with at most {self.max_windows} views")
        grid = states.new_zeros((num_docs, width, states.shape[1]))
        grid[owners, slots] = states + self.positions(slots).to(states.dtype)
        padding = torch.ones((num_docs, width), dtype=torch.bool, device=states.device)
        padding[owners, slots] = False
        out = self.windows(grid, src_key_padding_mask=padding)
        if self.reduce == "max":
            return out.masked_fill(padding.unsqueeze(-1), float("-inf")).amax(dim=1)
        out = out.masked_fill(padding.unsqueeze(-1), 0.0)
        return out.sum(dim=1) / counts.to(out.dtype).unsqueeze(1)


@dataclass
class DocumentClassifierOutput(SequenceClassifierOutput):
    """Logits per document; ``window_weights``: the attention head's weight of each window."""

    window_weights: torch.Tensor | None = None


class WindowHeadForSequenceClassification(PreTrainedModel):
    """An encoder (``AutoModel``) and a ``WindowHead``: one prediction per document from its windows."""

    config_class = WindowHeadConfig
    base_model_prefix = "encoder"
    supports_gradient_checkpointing = True
    main_input_name = "input_ids"

    def __init__(self, config: WindowHeadConfig) -> None:
        super().__init__(config)
        self.encoder = AutoModel.from_config(config.encoder_config())
        self.head = WindowHead.from_config(config)
        self._takes_token_types = "token_type_ids" in inspect.signature(self.encoder.forward).parameters
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The head keeps the initialisation of its construction (drawn from the seeded generator): torch's,
        and the window positions' N(0, initializer_range)."""

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.encoder.set_input_embeddings(value)

    def window_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The state of each window: the encoder's pooled output, else its first token's last hidden state."""
        inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self._takes_token_types:
            inputs["token_type_ids"] = token_type_ids
        out = self.encoder(**inputs)
        pooled = getattr(out, "pooler_output", None)
        return pooled if pooled is not None else out.last_hidden_state[:, 0]

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, owners: torch.Tensor | None = None,
                num_docs: int | None = None, labels: torch.Tensor | None = None, **kwargs: Any) -> DocumentClassifierOutput:
        """Logits per document (``owners`` given) or per row (each row a document of one window).

        Args:
            owners: ``(windows,)`` each window's document in ``0..num_docs-1``.
            num_docs: documents in the batch (default: one per row without ``owners``, else ``owners.max() + 1``).
            labels: ``(num_docs,)``: the loss is one cross-entropy per document.
        """
        if input_ids is None:
            raise ValueError("WindowHeadForSequenceClassification needs input_ids")
        if owners is None:
            logger.warning_once(
                "spanwise_windows: each row is scored as a document of one window; to read whole documents use "
                "spanwise's Classifier.from_pretrained(DIR).predict (modeling.classifier) or trainer.predict")
            owners = torch.arange(input_ids.shape[0], device=input_ids.device)
            num_docs = input_ids.shape[0]
        elif num_docs is None:
            num_docs = int(owners.max()) + 1
        states = self.window_states(input_ids, attention_mask, token_type_ids)
        logits, weights = self.head(states, owners.to(states.device), int(num_docs))
        if labels is None:
            loss = None
        elif self.config.problem_type == "multi_label_classification":  # label sets: a sigmoid per label
            loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float())
        else:
            loss = nn.functional.cross_entropy(logits.float(), labels)
        return DocumentClassifierOutput(loss=loss, logits=logits, window_weights=weights)

    @classmethod
    def from_encoder(cls, encoder_path: str, *, pooling: str, num_labels: int, id2label: dict[int, str],
                     label2id: dict[str, int], max_windows: int, head_layers: int = 2, head_reduce: str = "max",
                     trust_remote_code: bool = False, problem_type: str | None = None) -> "WindowHeadForSequenceClassification":
        """A pretrained encoder (``AutoModel`` of ``encoder_path``) under a new head (torch's seeded initialisation)."""
        encoder = AutoModel.from_pretrained(encoder_path, trust_remote_code=trust_remote_code)
        config = WindowHeadConfig(encoder=encoder.config.to_dict(), pooling=pooling, max_windows=max_windows,
                                  head_layers=head_layers, head_reduce=head_reduce, num_labels=num_labels,
                                  id2label=id2label, label2id=label2id, problem_type=problem_type)
        model = cls(config)
        missing, unexpected = model.encoder.load_state_dict(encoder.state_dict(), strict=False)
        if unexpected or [key for key in missing if not key.endswith("position_ids")]:
            raise ValueError(f"{encoder_path}: its weights do not fit its config (missing {missing[:3]}, unexpected {unexpected[:3]})")
        return model


AutoConfig.register(MODEL_TYPE, WindowHeadConfig, exist_ok=True)
AutoModelForSequenceClassification.register(WindowHeadConfig, WindowHeadForSequenceClassification, exist_ok=True)
WindowHeadConfig.register_for_auto_class()
WindowHeadForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")


def is_window_model(model: torch.nn.Module) -> bool:
    """A whole-document model (``--pooling attention|transformer``): it scores windows into states, not logits."""
    inner = getattr(model, "_orig_mod", model)
    return isinstance(getattr(inner, "module", inner), WindowHeadForSequenceClassification)
