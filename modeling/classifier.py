"""Classify raw documents with a trained model: the one prediction path.

``trainer.predict --input_files``, the Beam batch-prediction pipeline (``beam_pipelines.predict``)
and the Python API (``Classifier``) all turn a document into model inputs and scores here
(steps 1-2, and the model's loading and saving) and in ``modeling.scoring`` (steps 3-4):

1. ``DocumentViews.token_ids``: text -> token ids exactly as preprocessing stores them
   (``tokenization.documents``: the ``--max_doc_chars`` cut, the ``--max_doc_tokens`` cap and a
   preprocess-time sequence function, read from the model's record of its training data);
2. ``DocumentViews.views``: token ids -> the views the model was trained to see, with the
   deterministic draws of evaluation (``FeatureBuilder.eval_examples``: one view, K random draws
   or consecutive chunks);
3. ``scoring.prepare_views`` (on the host, in worker processes with ``num_workers``) then
   ``scoring.score_prepared`` (on the device): views -> logits, in length-sorted batches of
   ``batch_size`` views or of ``max_tokens_per_batch`` padded tokens (``modeling.batching``); for
   a model with a head over the windows (``--pooling attention|transformer``,
   ``modeling.window_heads``) the windows' states instead;
4. ``scoring.pool_views``: the mean (or max, ``--pooling``) of a document's view logits, as
   ``trainer.predict`` on shards pools them; or ``head_logits``: the model's head over each
   document's window states, in the order of its windows.

What the model saw in training is recorded in its ``config.json`` under ``"spanwise"``
(``TrainedView``), so that a model folder copied or pushed without ``run_config.json`` still
predicts as it was trained; folders saved before that record are read from ``run_config.json``.

Example::

    from modeling.classifier import Classifier

    classifier = Classifier.from_pretrained("out/model")
    for p in classifier.predict(["a long text ...", "another ..."], views="chunks"):
        print(p.label, p.probabilities)
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

import spanwise_io
from modeling.batching import check_token_budget, ordered_map
from modeling.features import Example, FeatureBuilder, SpecialTokenTemplate, parse_views
from modeling.label_space import DEFAULT_THRESHOLD, LabelSpace
from modeling.pooling import HEAD_POOLINGS
from modeling.scoring import ViewBatching, head_logits, inference_dtype, pool_views, prepare_views, score_prepared
from modeling.window_heads import MODEL_TYPE, WindowHead, WindowHeadConfig, WindowHeadForSequenceClassification, is_window_model
from schemas.shard import SINGLE_LABEL
from spanwise_io.progress import Progress
from tokenization.documents import cap_tokens, tokenize_texts
from tokenization.seq_len import SeqLenConfig, apply_seq_len, validate_seq_config
from tokenization.tokenizer import load_tokenizer

__all__ = [
    "CONFIG_KEY",
    "RUN_CONFIG_NAME",
    "save_classifier",
    "DEFAULT_MAX_DOC_TOKENS",
    "DEFAULT_MAX_DOC_CHARS",
    "DOCS_PER_CHUNK",
    "TrainedView",
    "DocumentViews",
    "Prediction",
    "Classifier",
    "start_classifier",
    "load_window_head",
    "head_parameter_names",
    "text_id",
    "local_model_path",
    "load_classifier",
    "load_scoring_model",
    "pick_device",
]

# The key of the training record in the model's config.json.
CONFIG_KEY = "spanwise"
# Preprocessing's defaults (beam_pipelines.preprocess), for a model without a record of its data.
DEFAULT_MAX_DOC_TOKENS = 32768
DEFAULT_MAX_DOC_CHARS = 1_000_000
# Texts the Python API tokenizes and scores at a time (bounds its memory; trainer.predict's chunks are as large).
DOCS_PER_CHUNK = 512
# The trainer's record of a run, saved beside the model (its flags, data, seq function, versions).
RUN_CONFIG_NAME = "run_config.json"
_PREPROCESS_MANIFEST = "preprocess_manifest.json"


@dataclass(frozen=True)
class TrainedView:
    """What a model saw in training, which prediction must repeat.

    Attributes:
        label_names: the classes, in the order of the model's logits.
        seq_len_func, seq_func_params, max_seq_length: the sequence-length function and budget.
        seed: the seed of the deterministic evaluation draws.
        eval_views: the views evaluation used (``"1"``, ``"K"`` or ``"chunks"``): prediction's default.
        max_doc_tokens, max_doc_chars: preprocessing's caps on a text (its token ids are those
            of the capped text).
        preprocess_seq_len: a deterministic function applied at preprocessing time
            (``{"name", "params", "max_seq_length"}``), or None.
        pooling: how a document's view logits become one (``mean`` or ``max``, ``--pooling``).
        max_chunks: the most windows of a ``chunks`` view set (``--max_chunks``), None: all.
        problem_type: ``single_label_classification`` (softmax, one label) or
            ``multi_label_classification`` (a sigmoid per label, a label set).
        threshold: label sets: a label is predicted at or above this probability (``--threshold``).
        best_threshold: label sets: the threshold with the best micro-F1 in the saved model's
            evaluation (None: not evaluated); predictions use ``threshold`` unless told otherwise.
    """

    label_names: tuple[str, ...]
    seq_len_func: str
    seq_func_params: tuple[int, ...]
    max_seq_length: int
    seed: int
    eval_views: str = "1"
    max_doc_tokens: int = DEFAULT_MAX_DOC_TOKENS
    max_doc_chars: int = DEFAULT_MAX_DOC_CHARS
    preprocess_seq_len: Mapping[str, Any] | None = None
    pooling: str = "mean"
    max_chunks: int | None = None
    problem_type: str = SINGLE_LABEL
    threshold: float = DEFAULT_THRESHOLD
    best_threshold: float | None = None

    @property
    def label_space(self) -> LabelSpace:
        """The model's labels, problem type and decision threshold."""
        return LabelSpace(self.label_names, self.problem_type, self.threshold)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["label_names"] = list(self.label_names)
        out["seq_func_params"] = list(self.seq_func_params)
        out["preprocess_seq_len"] = dict(self.preprocess_seq_len) if self.preprocess_seq_len else None
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainedView":
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        known["label_names"] = tuple(known.get("label_names", ()))
        known["seq_func_params"] = tuple(int(p) for p in known.get("seq_func_params", ()))
        return cls(**known)

    @classmethod
    def from_run(cls, run_config: Mapping[str, Any], manifest: Mapping[str, Any] | None) -> "TrainedView":
        """The record of a trainer run (its ``run_config.json``) and the manifest of its data."""
        args, seq = run_config["args"], run_config["seq_len"]
        manifest = manifest or {}
        pre = manifest.get("preprocess_seq_len")
        return cls(
            label_names=tuple(run_config["label_names"]),
            seq_len_func=seq["name"],
            seq_func_params=tuple(int(p) for p in seq["params"]),
            max_seq_length=int(seq["max_seq_length"]),
            seed=int(args["seed"]),
            eval_views=str(args.get("eval_views", "1")),
            max_doc_tokens=int(manifest.get("max_doc_tokens", DEFAULT_MAX_DOC_TOKENS)),
            max_doc_chars=int(manifest.get("max_doc_chars", DEFAULT_MAX_DOC_CHARS)),
            preprocess_seq_len={k: pre[k] for k in ("name", "params", "max_seq_length")} if pre else None,
            pooling=str(args.get("pooling") or "mean"),
            max_chunks=args.get("max_chunks"),
            problem_type=str(run_config.get("problem_type") or SINGLE_LABEL),
            threshold=float(run_config.get("threshold") or args.get("threshold") or DEFAULT_THRESHOLD),
            best_threshold=run_config.get("best_threshold"),
        )

    @classmethod
    def read(cls, model_dir: str) -> "TrainedView":
        """From ``config.json``'s ``"spanwise"`` record; else from ``run_config.json`` (older models).

        Raises:
            ValueError: the folder has neither (not a model saved by ``trainer.task``).
        """
        config_path = spanwise_io.join(model_dir, "config.json")
        if not spanwise_io.exists(config_path):
            raise ValueError(f"{model_dir}: no config.json; give a model folder saved by trainer.task")
        config = json.loads(spanwise_io.read_bytes(config_path))
        if isinstance(config.get(CONFIG_KEY), dict):
            return cls.from_dict(config[CONFIG_KEY])
        run_path = spanwise_io.join(model_dir, RUN_CONFIG_NAME)
        if not spanwise_io.exists(run_path):
            raise ValueError(
                f"{model_dir}: its config.json has no {CONFIG_KEY!r} record and there is no {RUN_CONFIG_NAME}, so the "
                "sequence-length function it was trained with is unknown; give a model saved by trainer.task"
            )
        manifest_path = spanwise_io.join(model_dir, _PREPROCESS_MANIFEST)
        manifest = json.loads(spanwise_io.read_bytes(manifest_path)) if spanwise_io.exists(manifest_path) else None
        return cls.from_run(json.loads(spanwise_io.read_bytes(run_path)), manifest)


def text_id(text_a: str, text_b: str = "") -> str:
    """The ID of a text given without one: a hash of its content, so that a text always gets the
    same random views whatever else it is predicted with."""
    digest = hashlib.sha256(f"{text_a}\x00{text_b}".encode("utf-8")).hexdigest()[:16]
    return f"text:{digest}"


class DocumentViews:
    """Raw text -> token ids (as preprocessing stores them) -> the model's views (as evaluation)."""

    def __init__(self, tokenizer: Any, view: TrainedView) -> None:
        self.tokenizer = tokenizer
        self.view = view
        self.seq_config: SeqLenConfig = validate_seq_config(
            view.seq_len_func, list(view.seq_func_params), view.max_seq_length, tokenizer
        )
        pre = view.preprocess_seq_len
        self.preprocess_seq: SeqLenConfig | None = (
            validate_seq_config(pre["name"], list(pre["params"]), int(pre["max_seq_length"]), tokenizer) if pre else None
        )
        self.features = FeatureBuilder(self.seq_config, SpecialTokenTemplate.from_tokenizer(tokenizer), view.seed,
                                       max_chunks=view.max_chunks)
        self.pad_token_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)

    def token_ids(
        self, texts_a: Sequence[str], texts_b: Sequence[str] | None = None, batch_size: int = 64
    ) -> Iterator[tuple[int, Sequence[int], Sequence[int]]]:
        """``(index, TEXT_A ids, TEXT_B ids)`` per text, in order; TEXT_A ids may be empty (no tokens)."""
        texts_b = texts_b if texts_b is not None else [""] * len(texts_a)
        if len(texts_b) != len(texts_a):
            raise ValueError(f"{len(texts_a)} texts but {len(texts_b)} second texts")
        for index, a, b, _ in tokenize_texts(self.tokenizer, texts_a, texts_b, max_doc_chars=self.view.max_doc_chars,
                                             batch_size=batch_size):
            if not a:
                yield index, [], []
                continue
            a, b = cap_tokens(a, self.view.max_doc_tokens), cap_tokens(b, self.view.max_doc_tokens)
            if self.preprocess_seq is not None:
                a, b = apply_seq_len(a, b, self.preprocess_seq, rng=None)
            yield index, a, b

    def views(self, doc_id: str, ids_a: Sequence[int], ids_b: Sequence[int], views: int | str) -> list[Example]:
        """The model inputs of one document (label -1): 1, K random draws, or its chunks."""
        return self.features.eval_examples(doc_id, -1, ids_a, ids_b, views)


def pick_device(name: str | None = None) -> torch.device:
    """``cuda`` when a GPU is present (or asked for), else ``cpu``.

    Raises:
        ValueError: ``cuda`` asked for on a machine without one.
    """
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: this machine has no GPU that torch can use")
    return device


def local_model_path(name_or_path: str) -> str:
    """A model or tokenizer location that transformers can open: gs:// dirs are copied locally."""
    return spanwise_io.copy_dir_to_local(name_or_path) if spanwise_io.is_remote(name_or_path) else name_or_path


def load_classifier(name_or_path: str, **kwargs: Any) -> Any:
    """``AutoModelForSequenceClassification.from_pretrained``, with a clear error for pickled weights.

    transformers reads a ``pytorch_model.bin`` with ``torch.load(weights_only=True)``, which
    refuses a pickle that would build arbitrary objects (or run code); that refusal becomes a
    ValueError naming the model instead of a traceback.
    """
    import pickle

    from transformers import AutoModelForSequenceClassification

    try:
        return AutoModelForSequenceClassification.from_pretrained(local_model_path(name_or_path), **kwargs)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"{name_or_path}: refusing its pickled weights (pytorch_model.bin), which would build arbitrary "
            f"objects when loaded; use a copy saved as model.safetensors ({first_line})"
        ) from error


def start_classifier(name_or_path: str, *, pooling: str = "mean", max_windows: int = 1, head_layers: int = 2,
                     head_reduce: str = "max", trust_remote_code: bool = False, **kwargs: Any) -> Any:
    """The model a training run starts from (``--pooling`` decides its kind).

    ``mean``/``max``: ``load_classifier`` (a new classification head on an encoder, or a saved
    classifier). ``attention``/``transformer``: the encoder under a new ``WindowHead``
    (``window_heads.WindowHeadForSequenceClassification.from_encoder``), or a saved whole-document
    model of that same pooling, loaded whole.

    Raises:
        ValueError: a saved whole-document model with another ``--pooling``.
    """
    from transformers import AutoConfig

    local = local_model_path(name_or_path)
    saved = AutoConfig.from_pretrained(local, trust_remote_code=trust_remote_code)
    saved_pooling = getattr(saved, "pooling", None) if getattr(saved, "model_type", None) == MODEL_TYPE else None
    if saved_pooling is not None and saved_pooling != pooling:
        raise ValueError(f"{name_or_path} is a whole-document model with --pooling {saved_pooling}; train it with "
                         f"--pooling {saved_pooling}, or start from its encoder")
    if pooling not in HEAD_POOLINGS or saved_pooling is not None:
        return load_classifier(local, trust_remote_code=trust_remote_code, **kwargs)
    return WindowHeadForSequenceClassification.from_encoder(
        local, pooling=pooling, num_labels=kwargs["num_labels"], id2label=kwargs["id2label"],
        label2id=kwargs["label2id"], max_windows=max_windows, head_layers=head_layers, head_reduce=head_reduce,
        trust_remote_code=trust_remote_code, problem_type=kwargs.get("problem_type"))


def head_parameter_names(model: torch.nn.Module) -> frozenset[str]:
    """The names of the parameters outside the model's pretrained encoder (its ``base_model_prefix``):
    the classifier a run starts from random and, for a whole-document model, the head over the windows
    (``--head_learning_rate`` trains them at their own rate)."""
    prefix = getattr(model, "base_model_prefix", "") + "."
    return frozenset(name for name, _ in model.named_parameters() if not name.startswith(prefix))


def load_window_head(model_dir: str, device: torch.device | str = "cpu") -> WindowHead:
    """The head alone of a whole-document model folder (its ``head.*`` weights), in eval mode.

    For a step that pools window states computed elsewhere (the Beam pipeline's), without a
    second copy of the encoder.
    """
    import safetensors

    local = local_model_path(model_dir)
    config = WindowHeadConfig.from_pretrained(local)
    head = WindowHead.from_config(config)
    prefix = "head."
    with safetensors.safe_open(os.path.join(local, "model.safetensors"), framework="pt") as weights:
        state = {key[len(prefix):]: weights.get_tensor(key) for key in weights.keys() if key.startswith(prefix)}
    head.load_state_dict(state, strict=True)
    return head.to(device).eval()


def save_classifier(model: Any, tokenizer: Any, target: str, run_config: Mapping[str, Any],
                    manifest: Mapping[str, Any] | None) -> None:
    """``save_pretrained`` model + tokenizer + ``run_config.json`` to ``target`` (local or ``gs://``).

    What prediction must repeat (``TrainedView``) goes into ``config.json`` under ``"spanwise"``, so
    it travels with the weights; ``run_config.json`` keeps the whole record of the run.
    """
    if spanwise_io.is_remote(target):
        with tempfile.TemporaryDirectory() as tmp:
            save_classifier(model, tokenizer, tmp, run_config, manifest)
            spanwise_io.upload_dir(tmp, target)
        return
    os.makedirs(target, exist_ok=True)
    setattr(model.config, CONFIG_KEY, TrainedView.from_run(run_config, manifest).to_dict())
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    with open(os.path.join(target, RUN_CONFIG_NAME), "w", encoding="utf-8") as handle:
        json.dump(run_config, handle, indent=2, sort_keys=True, default=str)


def load_scoring_model(model_dir: str, device: torch.device, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """The saved classifier in eval mode on ``device`` (``gs://`` folders are copied locally first),
    its weights cast to ``dtype`` (``inference_dtype``) when one is given."""
    return load_classifier(model_dir).to(device=device, dtype=dtype).eval()


def _check_texts(texts: Sequence[Any], what: str) -> None:
    """Every text is a ``str``: a None or a number would fail deep inside the tokenizer, naming nothing.

    Raises:
        ValueError: naming the first text that is not a string, its position and its type.
    """
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            shown = "None" if text is None else f"of type {type(text).__name__} ({text!r:.40})"
            raise ValueError(f"{what} {index} is {shown}, not a string; give every text as a str")


@dataclass(frozen=True)
class Prediction:
    """One document's prediction: its label, each label's probability, and how many views were pooled.

    ``label`` is the most probable label. ``labels`` is the predicted set: ``(label,)`` for a model
    of one label per document; for a multi-label model, every label whose (sigmoid) probability
    reaches the model's threshold, in the model's label order (possibly none).
    """

    id: str
    label: str
    probabilities: dict[str, float] = field(repr=False)
    views: int = 1
    labels: tuple[str, ...] = ()


class Classifier:
    """A trained spanwise model, loaded once, that classifies raw texts as it was trained to see them.

    ``predict`` tokenizes like preprocessing, applies the model's sequence-length function with
    the deterministic draws of evaluation, scores every view and pools a document's logits:
    the same path as ``trainer.predict --input_files`` and ``beam_pipelines.predict``.
    The views and their pooling are the model's own (``--max_chunks``, ``--pooling``).
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, view: TrainedView, *, device: torch.device,
                 autocast: torch.dtype | None = None, threshold: float | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.view = view
        self.label_space = view.label_space.with_threshold(threshold)
        self.documents = DocumentViews(tokenizer, view)
        self.device = device
        self.autocast = autocast
        num_labels = int(getattr(model.config, "num_labels", len(view.label_names)))
        if num_labels != len(view.label_names):
            raise ValueError(f"the model has {num_labels} outputs but its record names {len(view.label_names)} labels")

    @classmethod
    def from_pretrained(cls, model_dir: str, *, device: str | None = None, bf16: bool = False,
                        fp16: bool = False, threshold: float | None = None) -> "Classifier":
        """Load a model folder saved by ``trainer.task`` (local or ``gs://``).

        Args:
            model_dir: the folder (its config.json, weights, tokenizer and training record).
            device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default: a GPU when there is one.
            bf16, fp16: cast the weights to bfloat16 (GPU or CPU) or float16 (GPU only) once, at
                load (``inference_dtype``); the logits are float32 either way.
            threshold: a multi-label model's decision threshold (default: the one it was trained with;
                its record also holds ``best_threshold``, the one with the best micro-F1 on dev).
        """
        local = local_model_path(model_dir)
        if not os.path.isdir(local):
            raise ValueError(f"{model_dir}: not a folder; give a model folder saved by trainer.task")
        view = TrainedView.read(local)
        torch_device = pick_device(device)
        dtype = inference_dtype(bf16, fp16, torch_device)
        return cls(load_scoring_model(local, torch_device, dtype), load_tokenizer(local), view, device=torch_device,
                   threshold=threshold)

    @property
    def label_names(self) -> list[str]:
        return list(self.view.label_names)

    def predict(
        self,
        texts: Sequence[str],
        texts_b: Sequence[str] | None = None,
        *,
        ids: Sequence[str] | None = None,
        views: int | str | None = None,
        batch_size: int = 32,
        progress: bool = False,
        max_tokens_per_batch: int | None = None,
        num_workers: int = 0,
    ) -> list[Prediction]:
        """One prediction per text.

        Args:
            texts: the documents (TEXT_A).
            texts_b: optional second texts (sentence pairs), one per text.
            ids: the documents' IDs: random views are drawn per ID, so the IDs of a corpus give
                the very predictions of ``trainer.predict`` and the Beam pipeline; default: a
                hash of each text (``text_id``).
            views: 1, K or ``"chunks"``; default: what the model was evaluated with in training.
            batch_size: views per forward pass.
            progress: show the documents scored, with a rate and an ETA, on standard error (a tqdm
                bar on a terminal, else a line every few seconds; ``spanwise_io.progress``).
            max_tokens_per_batch: instead of ``batch_size`` views, as many views per forward pass as
                fit in this many padded tokens (views times the longest; views sorted by length):
                many short views or few long ones, at one memory size. At least the model's
                ``max_seq_length``.
            num_workers: worker processes that tokenize, build the views and collate the batches
                (the host side) while this process runs the model; 0: all here. The predictions
                are the same whatever the number.

        Raises:
            ValueError: a text is not a string or gives no tokens, two ids are equal, or the arguments do
                not fit together.
        """
        if isinstance(texts, str):
            raise ValueError("predict takes a list of texts; wrap a single text in a list")
        logits, counts = self.predict_logits(texts, texts_b, ids=ids, views=views, batch_size=batch_size,
                                             progress=progress, max_tokens_per_batch=max_tokens_per_batch,
                                             num_workers=num_workers)
        space = self.label_space
        probabilities = space.probabilities(logits)
        decisions = space.decide(probabilities)
        names = space.names
        doc_ids = self._ids(texts, texts_b, ids)
        return [
            Prediction(doc_ids[i], names[int(np.argmax(row))], {n: float(p) for n, p in zip(names, row)}, int(counts[i]),
                       tuple(space.chosen(decisions[i])))
            for i, row in enumerate(probabilities)
        ]

    def predict_logits(
        self,
        texts: Sequence[str],
        texts_b: Sequence[str] | None = None,
        *,
        ids: Sequence[str] | None = None,
        views: int | str | None = None,
        batch_size: int = 32,
        progress: bool = False,
        max_tokens_per_batch: int | None = None,
        num_workers: int = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The pooled logits ``[len(texts), labels]`` and the number of views of each text.

        Texts are tokenized and scored ``DOCS_PER_CHUNK`` at a time, so that memory holds one
        chunk's token ids and views, whatever the number of texts (with ``num_workers``, a few
        chunks ahead); ``progress`` counts them so.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
        check_token_budget(max_tokens_per_batch, self.view.max_seq_length, "max_tokens_per_batch")
        if texts_b is not None and len(texts_b) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(texts_b)} second texts")
        _check_texts(texts, "text")
        if texts_b is not None:
            _check_texts(texts_b, "second text")
        chosen = parse_views(views if views is not None else self.view.eval_views)
        doc_ids = self._ids(texts, texts_b, ids)
        logits = np.zeros((len(texts), len(self.view.label_names)), dtype=np.float32)
        counts = np.zeros(len(texts), dtype=np.int64)
        batching = ViewBatching(self.documents, chosen, batch_size, max_tokens_per_batch)
        with Progress("predict: scored", total_docs=len(texts), enabled=progress) as shown:
            self._score_chunks(texts, texts_b, doc_ids, batching, logits, counts, shown, num_workers)
        return logits, counts

    def _score_chunks(self, texts: Sequence[str], texts_b: Sequence[str] | None, doc_ids: Sequence[str],
                      batching: ViewBatching, logits: np.ndarray, counts: np.ndarray, progress: Progress,
                      num_workers: int = 0) -> None:
        """Fill ``logits`` and ``counts``, ``DOCS_PER_CHUNK`` texts at a time (prepared by ``num_workers``)."""

        def payload(start: int) -> tuple[Sequence[str], list[str], list[str] | None]:
            end = min(start + DOCS_PER_CHUNK, len(texts))
            return doc_ids[start:end], list(texts[start:end]), None if texts_b is None else list(texts_b[start:end])

        chunks = range(0, len(texts), DOCS_PER_CHUNK)
        for start, prepared in ordered_map(prepare_views, batching, chunks, payload, num_workers):
            end = min(start + DOCS_PER_CHUNK, len(texts))
            if not all(prepared.has_tokens):
                index = start + prepared.has_tokens.index(False)
                raise ValueError(f"text {index} ({texts[index][:40]!r}) gives no tokens with this model's tokenizer")
            scored = score_prepared(self.model, prepared, device=self.device, autocast=self.autocast)
            logits[start:end] = self.pool(scored, prepared.owners, end - start)
            counts[start:end] = np.bincount(prepared.owners, minlength=end - start)
            progress.update(end - start)

    def pool(self, scored: np.ndarray, owners: Sequence[int], documents: int) -> np.ndarray:
        """Documents' logits from their views' scores (``score_views``): pooled logits, or the model's head."""
        if is_window_model(self.model):
            return head_logits(self.model.head, scored, owners, documents, device=self.device, autocast=self.autocast)
        return pool_views(scored, owners, documents, self.view.pooling)

    @staticmethod
    def _ids(texts: Sequence[str], texts_b: Sequence[str] | None, ids: Sequence[str] | None) -> list[str]:
        if ids is None:
            return [text_id(text, texts_b[i] if texts_b is not None else "") for i, text in enumerate(texts)]
        if len(ids) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(ids)} ids")
        out = [str(i) for i in ids]
        first: dict[str, int] = {}
        for index, doc_id in enumerate(out):
            if first.setdefault(doc_id, index) != index:
                raise ValueError(f"ids {first[doc_id]} and {index} are both {doc_id!r}: each document needs its own ID "
                                 "(its views are drawn per ID, and a prediction is known by it)")
        return out
