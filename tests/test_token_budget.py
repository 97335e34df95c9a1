"""Issue 21, training: the padding fraction, batches by token budget, packed views.

* ``FeatureBuilder.train_view_lengths`` gives the length of every view without building it
  (the token-budget cut is made from it before any worker reads a row);
* the padding fraction (``padding_counts``, ``PaddingMeter``, ``train_results.json``) equals the
  one counted by hand over the batches;
* ``--max_tokens_per_batch``: every batch keeps the budget, the epoch is every document once,
  the batches are the same with 0 and 2 DataLoader workers, a resumed epoch is the tail of the
  whole one, ranks yield the same number of batches, and an interrupted run resumes exactly;
* ``--pack_views``: packed and unpacked logits agree (fp32, within 1e-5; measured ~1e-8), for
  SDPA and eager attention; other model types are refused.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from trainer_helpers import (  # noqa: F401  (prep and tiny_model are fixtures)
    FAIL_ENV,
    load_safetensors,
    minilm_dir,
    prep,
    read_trace,
    task_argv,
    tiny_model,
    trace_by_key,
)

MAX_SEQ, SPAN = 64, 8


@pytest.fixture(scope="module")
def tokenizer():
    from tokenization.tokenizer import load_tokenizer

    return load_tokenizer(minilm_dir())


def _features(tokenizer, seq_func="rs", params=(SPAN,), max_chunks=None, seed=42):
    from modeling.features import FeatureBuilder, SpecialTokenTemplate
    from tokenization.seq_len import validate_seq_config

    config = validate_seq_config(seq_func, list(params), MAX_SEQ, tokenizer)
    return FeatureBuilder(config, SpecialTokenTemplate.from_tokenizer(tokenizer), seed, max_chunks=max_chunks)


def _units(prep, split="train"):
    from schemas.manifest import read_manifest
    from trainer.shards import list_units

    return list_units(prep["data_dir"], read_manifest(prep["data_dir"]), split)


def _stream(prep, tokenizer, *, max_tokens=None, pack=False, group_by_length=False, views=1, rank=0, world_size=1,
            shuffle_buffer=32, seq_func="rs", max_chunks=None, pad_to_multiple_of=None, batch_size=8):
    from trainer.data import ShardStream

    features = _features(tokenizer, seq_func, (SPAN,) if seq_func == "rs" else (), max_chunks=max_chunks)
    return ShardStream(
        _units(prep), features, batch_size=batch_size, seed=42, pad_token_id=tokenizer.pad_token_id, rank=rank,
        world_size=world_size, shuffle_buffer=shuffle_buffer, group_by_length=group_by_length, views=views,
        max_tokens_per_batch=max_tokens, pack_capacity=MAX_SEQ if pack else None, pad_to_multiple_of=pad_to_multiple_of,
    )


def _epoch_batches(stream, epoch, workers=0, start_batch=0):
    from trainer.data import worker_init_threads

    stream.set_epoch(epoch, start_batch)
    stream.plan()  # the main process counts the epoch's cut before the workers start (as RunPlan does)
    loader = DataLoader(stream, batch_size=None, num_workers=workers,
                        worker_init_fn=worker_init_threads if workers else None, generator=torch.Generator().manual_seed(0))
    return list(loader)


def _order(batches):
    return [(batch["batch_index"], list(batch["doc_ids"])) for batch in batches]


def _same_tensors(a, b):
    return all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b) if x["doc_ids"]) and len(a) == len(b)


# --------------------------------------------------------------------------- view lengths
@pytest.mark.parametrize("seq_func,params", [("head", ()), ("head", (20,)), ("tail", (30,)), ("ht", (10, 30)), ("rs", (SPAN,)),
                                             ("rso", (SPAN,)), ("rsd", (SPAN,))])
def test_view_lengths_without_building_the_views(tokenizer, seq_func, params):
    """The lengths the cut uses are the lengths of the views the loader builds: single texts and
    pairs, short and long, one view, K views and chunks."""
    rng = np.random.default_rng(0)
    for max_chunks in (None, 3):
        features = _features(tokenizer, seq_func, params, max_chunks=max_chunks)
        for len_a, len_b in [(0, 0), (5, 0), (62, 0), (63, 0), (200, 0), (1000, 0), (5, 3), (40, 40), (300, 10), (10, 300), (300, 300)]:
            a, b = rng.integers(1000, 2000, len_a), rng.integers(1000, 2000, len_b)
            for views in (1, 3, "chunks"):
                if views == "chunks" and max_chunks is None and len_a > 500:
                    continue
                built = [len(example.input_ids) for example in features.train_views("d", 0, a, b, 1, views)]
                assert features.train_view_lengths(len_a, len_b, views) == built, (len_a, len_b, views)


# --------------------------------------------------------------------------- padding fraction
def test_padding_fraction_by_hand():
    """Two batches, lengths (3, 5, 2) and (4, 4): 10 of 15 and 8 of 8 tokens real, so the fraction is
    1 - 18 / 23 over both; per batch 1/3 and 0."""
    from modeling.features import Example, collate
    from trainer.data import padding_counts
    from trainer.meters import PaddingMeter

    def batch(lengths):
        return collate([Example(f"d{i}", 0, [7] * n, [0] * n) for i, n in enumerate(lengths)], pad_token_id=0)

    first, second = batch([3, 5, 2]), batch([4, 4])
    assert padding_counts(first) == {"real_tokens": 10, "padded_tokens": 15}
    assert padding_counts(second) == {"real_tokens": 8, "padded_tokens": 8}
    meter = PaddingMeter()
    meter.add({**first, **padding_counts(first)})
    assert meter.read_interval() == pytest.approx(1 / 3)
    meter.add({**second, **padding_counts(second)})
    assert meter.read_interval() == 0.0
    assert meter.epoch == [18, 23, 5, 2]
    assert PaddingMeter.fraction(*meter.epoch[:2]) == pytest.approx(5 / 23)
    # a packed batch counts its rows: (3, 5, 2) in rows of 8 are [3+5] and [2], padded to 8: 10 of 16 real
    from modeling.packing import collate_packed

    packed = collate_packed([Example(f"d{i}", 0, [7] * n, [0] * n) for i, n in enumerate([3, 5, 2])], 0, capacity=8)
    assert padding_counts(packed) == {"real_tokens": 10, "padded_tokens": 16}


def test_train_results_padding_fraction_equals_the_batches(one_torch_thread, prep, tiny_model, tokenizer, tmp_path):
    """One epoch of a run: train_results.json's padding fraction is 1 - real / padded summed over that
    epoch's batches, counted here from the loader's own attention masks."""
    from trainer.task import run

    run(task_argv(prep["data_dir"], tiny_model, tmp_path / "out", "--do_train", "--num_train_epochs", "1",
                  "--seq_len_func", "rs", "--seq_func_params", str(SPAN), "--shuffle_buffer", "32"))
    epochs = json.loads((tmp_path / "out" / "train_results.json").read_text())["epochs"]
    batches = _epoch_batches(_stream(prep, tokenizer), 0)
    real = sum(int(batch["attention_mask"].sum()) for batch in batches)
    padded = sum(batch["input_ids"].numel() for batch in batches)
    assert real < padded
    assert len(epochs) == 1 and epochs[0]["batches"] == len(batches) == 12 and epochs[0]["documents"] == 90
    assert (epochs[0]["real_tokens"], epochs[0]["padded_tokens"]) == (real, padded)
    assert epochs[0]["padding_fraction"] == pytest.approx(1 - real / padded, abs=1e-6)


# --------------------------------------------------------------------------- token budget
BUDGET = 256


@pytest.mark.parametrize("variant", ["plain", "group_by_length", "packed", "views"])
def test_budget_batches_keep_the_budget_and_order_with_any_workers(prep, tokenizer, variant):
    """Every batch keeps rows x padded length <= the budget; each epoch holds every document once; the
    batches are the same with 0 and 2 workers, and a resumed epoch (start_batch) is the whole one's tail."""
    options = {"plain": {}, "group_by_length": {"group_by_length": True}, "packed": {"pack": True, "group_by_length": True},
               "views": {"views": 3, "max_tokens": 3 * MAX_SEQ, "pad_to_multiple_of": 8}}[variant]
    budget = options.pop("max_tokens", BUDGET)
    stream = _stream(prep, tokenizer, max_tokens=budget, **options)
    fixed = _stream(prep, tokenizer, **{k: v for k, v in options.items() if k != "group_by_length"})
    epochs = {}
    for epoch in (0, 1):
        runs = {workers: _epoch_batches(stream, epoch, workers) for workers in (0, 2)}
        assert _order(runs[0]) == _order(runs[2]) and _same_tensors(runs[0], runs[2])
        batches = epochs[epoch] = runs[0]
        assert [b["batch_index"] for b in batches] == list(range(stream.plan(epoch).num_batches))
        for batch in batches:
            assert batch["input_ids"].numel() <= budget
            assert batch["padded_tokens"] == batch["input_ids"].numel()
        ids = [doc for batch in batches for doc in batch["doc_ids"]]
        assert sorted(ids) == sorted(row[0] for row in prep["rows"]["train"])
        if variant != "views":
            assert len({len(batch["doc_ids"]) for batch in batches}) > 1  # sized by tokens, not documents
        if variant in ("group_by_length", "packed"):  # less padding than fixed batches of 8
            fraction = lambda run: 1 - sum(b["real_tokens"] for b in run) / sum(b["padded_tokens"] for b in run)  # noqa: E731
            assert fraction(batches) < fraction(_epoch_batches(fixed, epoch))
    assert _order(epochs[0]) != _order(epochs[1])
    for workers, start in ((0, 3), (2, 5)):
        tail = _epoch_batches(stream, 1, workers, start_batch=start)
        assert _order(tail) == _order(epochs[1])[start:] and _same_tensors(tail, epochs[1][start:])


def test_budget_cut_is_counted_before_the_workers(prep, tokenizer):
    """The counts a worker uses are the ones the main process made (a stream copied into a worker
    after plan() does not recount), and a plan made afresh counts the same."""
    stream = _stream(prep, tokenizer, max_tokens=BUDGET)
    first = stream.plan(0)
    again = _stream(prep, tokenizer, max_tokens=BUDGET).plan(0)
    assert list(first.counts) == list(again.counts) and first.num_batches == again.num_batches
    assert stream.layouts[0] is first.counts
    for b in range(first.num_batches):
        assert np.array_equal(first.batch_positions(b), again.batch_positions(b))
    assert first.num_batches > math.ceil(90 / 8)  # small budget: more, smaller batches than 8 documents


def test_two_ranks_run_the_same_number_of_budget_batches(prep, tokenizer):
    """Each rank cuts its own share; with the largest count given (RunPlan gathers it), the rank that ran
    out yields empty batches, and the two shares together are the epoch."""
    for epoch in (0, 1):
        streams = [_stream(prep, tokenizer, max_tokens=BUDGET, rank=rank, world_size=2) for rank in (0, 1)]
        own = [stream.plan(epoch).num_batches for stream in streams]
        for stream in streams:
            stream.epoch_batches[epoch] = max(own)
        runs = [_epoch_batches(stream, epoch, workers) for stream, workers in zip(streams, (0, 2))]
        assert len(runs[0]) == len(runs[1]) == max(own)
        empty = [sum(1 for batch in run if not batch["doc_ids"]) for run in runs]
        assert sorted(empty) == sorted(max(own) - n for n in own)
        shares = [[doc for batch in run for doc in batch["doc_ids"]] for run in runs]
        assert not set(shares[0]) & set(shares[1])
        assert sorted(shares[0] + shares[1]) == sorted(row[0] for row in prep["rows"]["train"])


def test_budget_run_resumes_exactly_and_counts_its_steps(one_torch_thread, prep, tiny_model, tmp_path, monkeypatch):
    """--max_tokens_per_batch with --pack_views and --group_by_length, 2 epochs: a run that crashes after
    step 10 (checkpoint 8) and is resumed equals one that was not (batches, weights, epoch statistics);
    the schedule's step count is the batches of both epochs (no estimate)."""
    from trainer.task import run

    def argv(name, workers):
        return task_argv(
            prep["data_dir"], tiny_model, tmp_path / name, "--do_train", "--max_tokens_per_batch", str(BUDGET),
            "--pack_views", "--group_by_length", "--shuffle_buffer", "32", "--seq_len_func", "rs", "--seq_func_params",
            str(SPAN), "--num_train_epochs", "2", "--save_steps", "4", "--learning_rate", "1e-2",
            "--dataloader_num_workers", str(workers), "--sample_trace_file", str(tmp_path / f"{name}.jsonl"),
        )

    run(argv("reference", 0))
    monkeypatch.setenv(FAIL_ENV, "10")
    with pytest.raises(RuntimeError, match="injected failure after step 10"):
        run(argv("resumed", 2))
    monkeypatch.delenv(FAIL_ENV)
    run(argv("resumed", 0))
    reference, resumed = read_trace(tmp_path / "reference.jsonl"), read_trace(tmp_path / "resumed.jsonl")
    assert resumed[10:12] == resumed[8:10]  # batches 9-10 replayed, identically
    assert trace_by_key(resumed) == trace_by_key(reference)
    a, b = (load_safetensors(tmp_path / name / "model.safetensors") for name in ("reference", "resumed"))
    assert all(torch.equal(a[key], b[key]) for key in a)
    stats = [json.loads((tmp_path / name / "train_results.json").read_text()) for name in ("reference", "resumed")]
    assert stats[0] == stats[1] and len(stats[0]["epochs"]) == 2
    assert sum(epoch["batches"] for epoch in stats[0]["epochs"]) == len(reference)  # gradient accumulation 1
    assert all(epoch["documents"] == 90 for epoch in stats[0]["epochs"])


# --------------------------------------------------------------------------- packing
def _tiny_bert(attention: str):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=MAX_SEQ, num_labels=3, attn_implementation=attention)
    return BertForSequenceClassification(config).eval()


def test_the_cut_packs_as_the_collate_does():
    """The cut's incremental first-fit (document by document) gives the rows collate_packed makes."""
    from modeling.packing import first_fit
    from trainer.budget import _first_fit_into

    rng = np.random.default_rng(3)
    for _ in range(200):
        lengths = rng.integers(1, 65, rng.integers(1, 30)).tolist()
        fills: list[int] = []
        for start in range(0, len(lengths), 3):  # documents of up to 3 views
            fills = _first_fit_into(fills, lengths[start : start + 3], 64)
        rows = first_fit(lengths, 64)
        assert fills == np.bincount(rows, weights=lengths).astype(int).tolist()
    with pytest.raises(ValueError, match="does not fit"):
        first_fit([10, 65], 64)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_and_unpacked_logits_agree(attention):
    """Views of 1 to 64 tokens (pairs with token types too), packed into rows of 64: each view's logits
    equal its logits alone, within 1e-5 (fp32)."""
    from modeling.features import Example, collate
    from modeling.packing import PackedForward, collate_packed

    model = _tiny_bert(attention)
    rng = np.random.default_rng(1)
    examples = []
    for i, n in enumerate([5, 64, 12, 30, 1, 33, 7, 20, 40, 2]):
        types = [0] * (n // 2) + [1] * (n - n // 2) if i % 2 else [0] * n
        examples.append(Example(f"d{i}", i % 3, [101, *rng.integers(5, 200, n - 1).tolist()], types))
    alone = torch.cat([model(**{k: v for k, v in collate([e], 0).items() if k in ("input_ids", "attention_mask",
                                                                                 "token_type_ids")}).logits
                       for e in examples])
    packed = collate_packed(examples, 0, capacity=MAX_SEQ)
    assert packed["input_ids"].shape[0] < len(examples)  # several views share rows
    inputs = {k: packed[k] for k in ("input_ids", "token_type_ids", "position_ids", "segment_ids", "view_rows", "view_cols")}
    with torch.no_grad():
        logits = PackedForward(model)(**inputs).logits
    torch.testing.assert_close(logits, alone.detach(), atol=1e-5, rtol=0)
    # without the packed layout, the wrapper is the model itself
    batch = collate(examples, 0)
    plain = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    torch.testing.assert_close(PackedForward(model)(**plain).logits, model(**plain).logits)


def test_models_that_cannot_pack_are_refused():
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    from modeling.packing import PackedForward

    model = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2, hidden_dim=32))
    with pytest.raises(ValueError, match="--pack_views needs a BERT-type"):
        PackedForward(model)


@pytest.mark.parametrize("flags,message", [
    (["--max_tokens_per_batch", "50"], "--max_tokens_per_batch 50 is below the batch of one document"),
    (["--max_tokens_per_batch", "200", "--train_views", "chunks", "--max_chunks", "4"], "= 256"),
    (["--max_tokens_per_batch", "64", "--pad_to_multiple_of", "48"], "padded to 96"),
    (["--pack_views", "--pooling", "attention", "--train_views", "chunks", "--max_chunks", "2"], "drop one of them"),
])
def test_inconsistent_budget_flags_are_refused(flags, message):
    from trainer.args import parse_args

    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_args(["--data_dir", "d", "--model_name", "m", "--task_name", "t", "--output_dir", "o",
                    "--max_seq_length", "64", *flags])


def test_torchrun_two_ranks_budget_batches(prep, tiny_model, tmp_path):
    """A real 2-process CPU run under a token budget: the ranks agree on every epoch's batch count (the
    larger of their own; the other rank's extra batches are empty), train to the end without a hang,
    and their shares of each epoch are disjoint and cover the split."""
    import subprocess
    import sys

    from trainer_helpers import REPO_ROOT, subprocess_env

    trace, out = tmp_path / "trace.jsonl", tmp_path / "out"
    argv = task_argv(prep["data_dir"], tiny_model, out, "--do_train", "--max_tokens_per_batch", str(BUDGET),
                     "--seq_len_func", "rs", "--seq_func_params", str(SPAN), "--num_train_epochs", "2",
                     "--shuffle_buffer", "16", "--sample_trace_file", str(trace))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "trainer.task", *argv],
        cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    traces = [read_trace(tmp_path / f"trace.rank{rank}.jsonl") for rank in (0, 1)]
    keys = [[(r["epoch"], r["batch"]) for r in records] for records in traces]
    assert keys[0] == keys[1]
    epochs = json.loads((out / "train_results.json").read_text())["epochs"]
    for epoch in range(2):
        shares = [[doc for r in records if r["epoch"] == epoch for doc in r["ids"]] for records in traces]
        assert not set(shares[0]) & set(shares[1])
        assert sorted(shares[0] + shares[1]) == sorted(row[0] for row in prep["rows"]["train"])
        assert epochs[epoch]["documents"] == 90  # gathered from both ranks
        assert epochs[epoch]["batches"] == 2 * sum(1 for key in keys[0] if key[0] == epoch)
