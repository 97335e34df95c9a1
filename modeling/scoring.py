"""Views to scores on the device, and scores to one document's logits: the scoring half of prediction.

``modeling.classifier`` turns texts into a model's views (``DocumentViews``); everything after that
is here, shared by ``Classifier.predict``, ``trainer.predict`` and the Beam pipeline
(``beam_pipelines.inference``):

* ``prepare_views`` (the host: tokenize, build views, sort by length, batch and collate; a plain
  function so that ``modeling.batching.ordered_map``'s worker processes run it) and
  ``score_prepared`` (the device: every batch queued before any result is read);
* ``score_views`` / ``forward_batch``: the same on views already built (Beam's batches);
* ``pool_views`` (the mean or max of a document's view logits) and ``head_logits`` (a
  whole-document model's head over its windows' states);
* ``inference_dtype``: the dtype that ``--bf16``/``--fp16`` cast the weights to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from modeling.batching import plan_batches
from modeling.features import Example, collate
from modeling.pooling import batch_inputs, model_input_names, pool_logits
from modeling.window_heads import WindowHead, is_window_model

if TYPE_CHECKING:
    from modeling.classifier import DocumentViews

__all__ = [
    "inference_dtype",
    "score_views",
    "forward_batch",
    "ViewBatching",
    "PreparedViews",
    "prepare_views",
    "score_prepared",
    "pool_views",
    "head_logits",
]


def inference_dtype(bf16: bool, fp16: bool, device: torch.device) -> torch.dtype | None:
    """The dtype of ``--bf16``/``--fp16`` for prediction: the weights are cast to it (``load_scoring_model``).

    Prediction casts the weights once instead of autocasting fp32 weights, which casts every
    weight in every forward (issue 21); logits come back as float32 either way. (Training keeps
    autocast: it updates fp32 weights.)

    Raises:
        ValueError: both given, or fp16 without a GPU.
    """
    if bf16 and fp16:
        raise ValueError("choose one of --bf16 and --fp16")
    if fp16 and device.type != "cuda":
        raise ValueError("--fp16 needs a GPU; use --bf16 on a CPU")
    return torch.bfloat16 if bf16 else torch.float16 if fp16 else None


@torch.no_grad()
def score_views(
    model: torch.nn.Module,
    examples: Sequence[Example],
    *,
    device: torch.device,
    pad_token_id: int,
    batch_size: int = 32,
    autocast: torch.dtype | None = None,
    max_tokens: int | None = None,
) -> np.ndarray:
    """The logits (float32, ``[len(examples), labels]``) of each view, in the order given.

    Views are sorted by length and cut into batches of ``batch_size`` (or of ``max_tokens``
    padded tokens: ``modeling.batching.plan_batches``), so that a batch pads to a length close
    to its own views'; the results are put back in the given order.
    """
    if not examples:
        raise ValueError("no views to score")
    batches = plan_batches([len(example.input_ids) for example in examples], batch_size, max_tokens)
    parts = [forward_batch(model, [examples[i] for i in picked], device=device, pad_token_id=pad_token_id,
                           autocast=autocast) for picked in batches]
    out = np.empty((len(examples), parts[0].shape[1]), dtype=np.float32)
    out[np.concatenate(batches)] = np.concatenate(parts)
    return out


@torch.no_grad()
def forward_batch(
    model: torch.nn.Module,
    examples: Sequence[Example],
    *,
    device: torch.device,
    pad_token_id: int,
    autocast: torch.dtype | None = None,
) -> np.ndarray:
    """The logits of one batch of views (padded to its longest), on the host as float32; of a
    whole-document model, the windows' states (``window_states``), which ``head_logits`` pools."""
    batch = collate(examples, pad_token_id)
    inputs = batch_inputs(batch, model_input_names(model), device)
    with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
        scores = model.window_states(**inputs) if is_window_model(model) else model(**inputs).logits
    return scores.float().cpu().numpy()


@dataclass(frozen=True)
class ViewBatching:
    """What every chunk of documents shares on the host: the model's views and how they are batched.

    Given once to each worker process of ``modeling.batching.ordered_map`` (inherited, not pickled).
    """

    documents: DocumentViews
    views: int | str
    batch_size: int
    max_tokens: int | None = None


@dataclass
class PreparedViews:
    """A chunk of documents made ready on the host (``prepare_views``) for ``score_prepared``.

    Attributes:
        has_tokens: per document of the chunk: False where its TEXT_A gives no tokens (no views).
        owners: per view, in the order built, its document's index among those with tokens.
        batches: ``(view indices, collated inputs as numpy arrays)`` per batch, shortest views first.
    """

    has_tokens: list[bool]
    owners: np.ndarray
    batches: list[tuple[np.ndarray, dict[str, np.ndarray]]]

    @property
    def documents(self) -> int:
        """The documents with tokens (each has at least one view)."""
        return sum(self.has_tokens)


_COLLATED = ("input_ids", "attention_mask", "token_type_ids")


def prepare_views(batching: ViewBatching, payload: tuple[Sequence[str], Sequence[str], Sequence[str] | None]
                  ) -> PreparedViews:
    """The host's work on one chunk, ``(doc ids, TEXT_A, TEXT_B or None)``: tokenize as preprocessing,
    build the views with evaluation's draws, sort them by length, cut the batches and collate them.

    A module-level function of plain inputs, so that worker processes run it
    (``modeling.batching.ordered_map``); the result depends on the chunk only.
    """
    doc_ids, texts_a, texts_b = payload
    documents = batching.documents
    has_tokens = [False] * len(texts_a)
    examples: list[Example] = []
    owners: list[int] = []
    kept = 0
    for index, ids_a, ids_b in documents.token_ids(list(texts_a), None if texts_b is None else list(texts_b)):
        if not len(ids_a):
            continue
        built = documents.views(doc_ids[index], ids_a, ids_b, batching.views)
        owners.extend([kept] * len(built))
        examples.extend(built)
        has_tokens[index] = True
        kept += 1
    batches = []
    for picked in plan_batches([len(example.input_ids) for example in examples], batching.batch_size,
                               batching.max_tokens):
        collated = collate([examples[i] for i in picked], documents.pad_token_id)
        batches.append((picked, {name: collated[name].numpy() for name in _COLLATED}))
    return PreparedViews(has_tokens, np.asarray(owners, dtype=np.int64), batches)


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on ``device``: on a GPU through pinned memory with a non-blocking copy, so that
    the host goes on to the next batch while the copy and the forward run."""
    tensor = torch.from_numpy(array)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


@torch.no_grad()
def score_prepared(model: torch.nn.Module, prepared: PreparedViews, *, device: torch.device,
                   autocast: torch.dtype | None = None) -> np.ndarray:
    """The logits (float32, ``[views, labels]``) of a prepared chunk's views, in the order they were
    built; of a whole-document model, the windows' states (``head_logits`` pools them).

    Every batch is queued on the device before any result is read: the host waits for the device
    once per chunk, not once per batch.
    """
    names = model_input_names(model)
    window = is_window_model(model)
    parts = []
    for _, arrays in prepared.batches:
        inputs = {name: _to_device(arrays[name], device) for name in names}
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            parts.append(model.window_states(**inputs) if window else model(**inputs).logits)
    if not parts:
        raise ValueError("no views to score")
    scored = torch.cat(parts).float().cpu().numpy()
    out = np.empty_like(scored)
    out[np.concatenate([picked for picked, _ in prepared.batches])] = scored
    return out


def pool_views(logits: np.ndarray, owners: Sequence[int], documents: int, pooling: str = "mean") -> np.ndarray:
    """Each document's logits from its views' (``owners[i]``: the document of view ``i``), pooled
    as evaluation and training pool them (``modeling.pooling.pool_logits``: mean, or per class max)."""
    owners_t = torch.as_tensor(np.asarray(owners, dtype=np.int64))
    counts = torch.bincount(owners_t, minlength=documents)
    if (counts == 0).any():
        raise ValueError("a document has no view")
    logits = np.asarray(logits, dtype=np.float32)
    if pooling == "mean":
        # sums over counts, as trainer.predict on shards; in numpy: torch's scatter_reduce took 70 ms a chunk here,
        # on the host's critical path (its threads wait for a busy CPU)
        sums = np.zeros((documents, logits.shape[1]), dtype=np.float32)
        np.add.at(sums, owners_t.numpy(), logits)
        return sums / counts.numpy()[:, None].astype(np.float32)
    return pool_logits(torch.from_numpy(logits), owners_t, documents, pooling).numpy()


@torch.no_grad()
def head_logits(head: WindowHead, states: np.ndarray, owners: Sequence[int], documents: int, *,
                device: torch.device | str = "cpu", autocast: torch.dtype | None = None) -> np.ndarray:
    """Each document's logits from its windows' states (``owners[i]``: the document of window ``i``;
    a document's windows in the order of its views), by the model's head, as float32."""
    owners_t = torch.as_tensor(np.asarray(owners, dtype=np.int64))
    if (torch.bincount(owners_t, minlength=documents) == 0).any():
        raise ValueError("a document has no view")
    device = torch.device(device)
    dtype = next(head.parameters()).dtype  # bf16 or fp16 where the model's weights were cast (inference_dtype)
    states_t = torch.from_numpy(np.asarray(states, dtype=np.float32)).to(device=device, dtype=dtype)
    with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
        logits, _ = head(states_t, owners_t.to(device), documents)
    return logits.float().cpu().numpy()
