"""Encoders with more than 512 positions (issue 14): ModernBERT, Longformer and BigBird.

Tiny random configs (hidden 32, 2 layers, 1,024+ positions) saved beside the MiniLM tokenizer
(the shards' tokenizer), trained by the real trainer at ``--max_seq_length 768`` on the topic
corpus, whose long documents (300-2,000 words) fill the window: the loss falls, the saved model
reloads with the same logits, ``trainer.predict`` reads it, and ``--max_seq_length`` above the
model's positions is refused before any work. BigBird is trained with batches padded to 768 (it
switches itself to full attention for good at the first shorter batch). ModernBERT takes no ``token_type_ids``, so it also
checks that the trainer only passes the inputs a model's ``forward`` has.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from trainer_helpers import TOKENIZER_FILES, minilm_dir, prep, task_argv  # noqa: F401  (prep is a fixture)

MAX_SEQ = 768
VOCAB = 30522  # the MiniLM (bert-base-uncased) vocabulary; [PAD] 0, [CLS] 101, [SEP] 102
TINY = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, pad_token_id=0)


def _config(kind: str):
    from transformers import BigBirdConfig, LongformerConfig, ModernBertConfig

    if kind == "modernbert":
        return ModernBertConfig(**TINY, max_position_embeddings=1024, local_attention=64, global_attn_every_n_layers=2,
                                bos_token_id=101, eos_token_id=102, cls_token_id=101, sep_token_id=102)
    if kind == "longformer":  # positions start after the padding index: 1,026 - 0 - 1 = 1,025 usable
        return LongformerConfig(**TINY, max_position_embeddings=1026, attention_window=32, type_vocab_size=2)
    if kind == "bigbird":  # block-sparse attention from 9 blocks of 16 up: 768 tokens use it
        return BigBirdConfig(**TINY, max_position_embeddings=1024, attention_type="block_sparse", block_size=16,
                             num_random_blocks=2)
    raise ValueError(kind)


LIMITS = {"modernbert": 1024, "longformer": 1025, "bigbird": 1024}


def make_long_model(directory: str, kind: str) -> str:
    """A tiny random encoder of ``kind`` plus the MiniLM tokenizer files, its ``model_max_length``
    raised to the model's positions (as a long-context model's own tokenizer says)."""
    from transformers import AutoModel

    os.makedirs(directory, exist_ok=True)
    torch.manual_seed(0)
    AutoModel.from_config(_config(kind)).save_pretrained(directory)
    for name in TOKENIZER_FILES:
        shutil.copy(os.path.join(minilm_dir(), name), os.path.join(directory, name))
    path = os.path.join(directory, "tokenizer_config.json")
    with open(path, encoding="utf-8") as handle:
        settings = json.load(handle)
    settings["model_max_length"] = LIMITS[kind]
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(settings, handle)
    return directory


@pytest.mark.parametrize("kind", ["modernbert", "longformer", "bigbird"])
def test_long_context_model_trains_above_512_saves_reloads_and_predicts(kind, prep, tmp_path, one_torch_thread):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from trainer import predict
    from trainer.args import parse_args
    from trainer.shards import list_units
    from trainer.evaluation import score_documents
    from trainer.preflight import check_model_fits
    from trainer.task import Trainer

    model_dir = make_long_model(str(tmp_path / kind), kind)
    out = tmp_path / "out"
    argv = task_argv(
        prep["data_dir"], model_dir, out, "--max_seq_length", str(MAX_SEQ), "--seq_len_func", "head",
        "--max_steps", "36", "--learning_rate", "1e-2", "--warmup_steps", "2", "--do_train", "--do_eval",
        "--eval_strategy", "no", "--max_eval_samples", "12",
        # BigBird switches itself to full attention for good at the first batch shorter than
        # (5 + 2 x random blocks) x block size tokens; padded to 768, it trains block-sparse throughout
        *(["--pad_to_multiple_of", str(MAX_SEQ)] if kind == "bigbird" else []),
    )
    trainer = Trainer(parse_args(argv))
    trainer.setup()
    try:
        assert type(trainer.model).__name__.lower().startswith(kind)
        assert ("token_type_ids" in trainer.input_names) == (kind != "modernbert")
        trainer.train()
        trainer.save()
    finally:
        trainer.close()
    if kind == "bigbird":
        assert trainer.model.bert.attention_type == "block_sparse"

    # the long documents filled the window: inputs of 768 tokens, above BERT's 512
    lengths = [len(trainer.features.train_example(doc_id, 0, np.arange(2000, 2000 + n), [], 0).input_ids) for doc_id, n in
               (("a", 300), ("b", 2000))]
    assert lengths == [302, MAX_SEQ]

    accumulator = EventAccumulator(str(out / "runs" / "topics"), size_guidance={"scalars": 0})
    accumulator.Reload()
    losses = [event.value for event in accumulator.Scalars("train/loss")]
    assert len(losses) == 36
    first, last = float(np.mean(losses[:4])), float(np.mean(losses[-4:]))
    assert last < first - 0.2, (kind, losses)

    reloaded = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert reloaded.config.model_type == trainer.model.config.model_type
    units = list_units(prep["data_dir"], trainer.manifest, "dev")
    kwargs = dict(views=1, batch_size=8, device=torch.device("cpu"), pad_token_id=trainer.pad_token_id)
    ids_a, _, logits_trained = score_documents(trainer.model, units, trainer.features, **kwargs)
    ids_b, _, logits_reloaded = score_documents(reloaded, units, trainer.features, **kwargs)
    assert ids_a == ids_b and len(ids_a) == 30
    np.testing.assert_array_equal(logits_trained, logits_reloaded)

    output = tmp_path / "predictions.jsonl"
    assert predict.main(["--model_dir", str(out), "--data_dir", prep["data_dir"], "--split", "test",
                         "--output", str(output), "--use_cpu"]) == 0
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == 30 and all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in rows)

    # preflight: the model's own limit, from its config
    config = parse_args(task_argv(prep["data_dir"], model_dir, tmp_path / "x", "--max_seq_length", str(LIMITS[kind])))
    check_model_fits(config, AutoConfig.from_pretrained(model_dir), trainer.tokenizer, trainer.label_names)
    config.max_seq_length = LIMITS[kind] + 1
    with pytest.raises(ValueError, match=f"at most {LIMITS[kind]} tokens"):
        check_model_fits(config, AutoConfig.from_pretrained(model_dir), trainer.tokenizer, trainer.label_names)
