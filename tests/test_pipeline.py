"""End-to-end tests of ``beam_pipelines.preprocess`` on the real Beam DirectRunner.

Each module-scoped fixture runs the pipeline once on a small TSV corpus (tens of rows) and
several tests check what it wrote: shard names and counts, exact token ids against the
transformers tokenizer, labels, the manifest, rejected rows, the ``--max_doc_tokens`` cap,
a preprocess-time ``ht`` function, determinism, option errors and the command line.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from beam_pipelines import preprocess
from pipeline_helpers import (
    SHARD_NAME_RE,
    Doc,
    comparable_manifest,
    file_bytes,
    load_reference_tokenizer,
    make_docs,
    preprocess_argv,
    random_text,
    read_manifest_json,
    read_rejected,
    read_shard,
    read_split,
    reference_ids,
    shard_names,
    tokenizer_path,
    write_corpus,
    write_tsv,
)
from schemas.shard import SHARD_SCHEMA, label_names_of
from schemas.rows import MAX_RAW_CHARS, Reason
from tokenization.rng import stable_hash64

REPO_ROOT = Path(__file__).resolve().parents[1]
LABELS = ("neg", "neutral", "pos")
# Characters that str.splitlines() treats as line breaks but the TSV format does not, and a
# lone CR in the middle of a text: they must stay inside their row.
ODD_WHITESPACE_TEXT = "first\u2028second\x0bthird\x0cfourth\x1cfifth\x85sixth\rseventh caf\u00e9 \u6771\u4eac \U0001f642"


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    return env


@pytest.fixture(scope="module")
def tok():
    return load_reference_tokenizer()


def _lengths(tok, docs):
    return {d.id: len(reference_ids(tok, d.text_a)) for d in docs}


# --------------------------------------------------------------------------- round trip


@pytest.fixture(scope="module")
def roundtrip(tmp_path_factory):
    root = tmp_path_factory.mktemp("roundtrip")
    data_dir, out_dir = root / "data", root / "out"
    docs = {
        "train": make_docs("train", 30, LABELS, seed=1)
        + [Doc("train-odd", "odd", "pos", ODD_WHITESPACE_TEXT, "b side\u2028with odd breaks")],
        "dev": make_docs("dev", 12, LABELS, seed=2),
        # test: the first 6 unlabelled (LABEL empty), the rest labelled with train labels
        "test": make_docs("test", 6, LABELS, seed=3, unlabelled=True)
        + [Doc(f"test-l{i}", "x", LABELS[i % 3], f"labelled test document number {i}") for i in range(4)],
    }
    # one row with an empty 5th field (TEXT_B present but empty)
    docs["dev"].append(Doc("dev-emptyb", "x", "neg", "a text whose text b field is empty", ""))
    write_corpus(str(data_dir), docs)
    manifest = preprocess.run(preprocess_argv(data_dir, out_dir, "--num_shards", "3"))
    return {"data_dir": data_dir, "out": out_dir, "docs": docs, "manifest": manifest}


def test_roundtrip_corpus_has_long_docs_and_pairs(roundtrip, tok):
    """Sanity of the fixture itself: the corpus exercises > 512-token docs and TEXT_B."""
    lengths = _lengths(tok, roundtrip["docs"]["train"])
    assert sum(n > 512 for n in lengths.values()) >= 5
    assert sum(d.text_b is not None for d in roundtrip["docs"]["train"]) >= 8


def test_roundtrip_output_files(roundtrip):
    out, manifest = roundtrip["out"], roundtrip["manifest"]
    # the manifest and the run's folder, nothing else; nothing rejected -> no rejected/ files
    assert sorted(os.listdir(out)) == ["manifest.json", manifest["run"]]
    assert re.fullmatch(r"run-\d{8}T\d{6}Z-[0-9a-f]{8}", manifest["run"])
    assert all(name.endswith(".parquet") for name in os.listdir(out / manifest["run"]))
    expected_counts = {"train": 3, "dev": 3, "test": 3}  # --num_shards 3
    for split, docs in roundtrip["docs"].items():
        names = shard_names(str(out), split)
        assert names, split
        parsed = [SHARD_NAME_RE.match(n) for n in names]
        assert all(parsed), names
        count = expected_counts[split]
        assert [int(m.group(2)) for m in parsed] == list(range(count))
        assert {int(m.group(3)) for m in parsed} == {count}
        info = manifest["splits"][split]
        assert [f["name"] for f in info["files"]] == names
        for f in info["files"]:
            rows, meta = read_shard(str(out / f["name"]))
            assert f["rows"] == len(rows) == meta.num_rows
            assert f["row_groups"] == meta.num_row_groups
        assert info["records"] == sum(f["rows"] for f in info["files"]) == len(docs)
        assert info["read"] == len(docs)
        assert info["rejected"] == 0 and info["rejected_by_reason"] == {}
        assert info["rejected_files"] == []
        assert info["header_lines"] == 0
        assert info["input"] == [str(roundtrip["data_dir"] / f"{split}.tsv")]
        assert info["derived_ids"] is False


def test_roundtrip_shard_schema_and_codec(roundtrip):
    for name in shard_names(str(roundtrip["out"])):
        parquet = pq.ParquetFile(roundtrip["out"] / name)
        assert parquet.schema_arrow.equals(SHARD_SCHEMA), name
        assert label_names_of(parquet.schema_arrow) == ["neg", "neutral", "pos"], name
        meta = parquet.metadata
        for g in range(meta.num_row_groups):
            for c in range(meta.num_columns):
                assert meta.row_group(g).column(c).compression == "ZSTD"


def test_roundtrip_every_id_exactly_once(roundtrip):
    out = str(roundtrip["out"])
    for split, docs in roundtrip["docs"].items():
        rows = read_split(out, split)
        counts = Counter(r["id"] for r in rows)
        assert counts == Counter(d.id for d in docs)
        assert set(counts.values()) == {1}
        # as implemented (sinks.py): shard = stable_hash64(id) % count, rows sorted by id
        for name in shard_names(out, split):
            index, count = map(int, SHARD_NAME_RE.match(name).groups()[1:])
            shard_rows, _ = read_shard(os.path.join(out, name))
            ids = [r["id"] for r in shard_rows]
            assert ids == sorted(ids)
            assert all(stable_hash64(i) % count == index for i in ids)


def test_roundtrip_token_ids_exact(roundtrip, tok):
    out = str(roundtrip["out"])
    checked_long = 0
    for split, docs in roundtrip["docs"].items():
        by_id = {d.id: d for d in docs}
        for row in read_split(out, split):
            doc = by_id[row["id"]]
            expected_a = reference_ids(tok, doc.text_a)
            expected_b = reference_ids(tok, doc.text_b) if doc.text_b else []
            assert row["input_ids_a"] == expected_a, doc.id
            assert row["input_ids_b"] == expected_b, doc.id
            assert row["num_tokens_a"] == len(expected_a)
            assert row["num_tokens_b"] == len(expected_b)
            assert row["alpha"] == doc.alpha
            checked_long += len(expected_a) > 512
    assert checked_long >= 5  # not silently truncated to 512 (or to the backend's 128)


def test_roundtrip_odd_whitespace_stays_in_its_row(roundtrip, tok):
    rows = {r["id"]: r for r in read_split(str(roundtrip["out"]), "train")}
    row = rows["train-odd"]
    assert row["input_ids_a"] == reference_ids(tok, ODD_WHITESPACE_TEXT)
    assert row["input_ids_b"] == reference_ids(tok, "b side\u2028with odd breaks")
    assert row["alpha"] == "odd"


def test_roundtrip_labels(roundtrip):
    manifest = roundtrip["manifest"]
    assert manifest["label_map"] == {"neg": 0, "neutral": 1, "pos": 2}
    for split, docs in roundtrip["docs"].items():
        by_id = {d.id: d for d in docs}
        for row in read_split(str(roundtrip["out"]), split):
            label = by_id[row["id"]].label
            assert row["label"] == (manifest["label_map"][label] if label else -1), row["id"]
    test_labels = Counter(r["label"] for r in read_split(str(roundtrip["out"]), "test"))
    assert test_labels[-1] == 6


def test_roundtrip_manifest(roundtrip, tok):
    out, manifest = roundtrip["out"], roundtrip["manifest"]
    assert read_manifest_json(str(out)) == manifest  # run() returns what it wrote
    assert manifest["schema_version"] == 1
    assert manifest["max_doc_tokens"] == 32768
    assert manifest["preprocess_seq_len"] is None
    assert manifest["options"]["data_dir"] == str(roundtrip["data_dir"])
    assert manifest["options"]["num_shards"] == 3
    ident = manifest["tokenizer"]
    assert ident["name_or_path"] == tokenizer_path()
    assert ident["vocab_size"] == len(tok) == 30522
    assert ident["num_special_tokens_single"] == 2 and ident["num_special_tokens_pair"] == 3
    assert ident["special_tokens"]["cls_token"] == "[CLS]"
    assert re.fullmatch(r"[0-9a-f]{64}", ident["fingerprint"])
    assert "vocab.txt" in ident["files_sha256"]
    assert set(manifest["splits"]) == {"train", "dev", "test"}
    for split, docs in roundtrip["docs"].items():
        lengths = sorted(
            len(reference_ids(tok, d.text_a)) + (len(reference_ids(tok, d.text_b)) if d.text_b else 0) for d in docs
        )
        stats = manifest["splits"][split]["stats"]
        n = len(lengths)
        assert stats["documents"] == n
        assert stats["min"] == lengths[0] and stats["max"] == lengths[-1]
        assert stats["total_tokens"] == sum(lengths)
        assert stats["quantiles"]["p50"] == lengths[math.ceil(0.5 * n) - 1]
        assert stats["quantiles"]["p90"] == lengths[math.ceil(0.9 * n) - 1]
        for budget in (126, 254, 510):
            assert stats["fraction_longer_than"][str(budget)] == pytest.approx(
                sum(x > budget for x in lengths) / n, abs=1e-6
            )
        assert stats["capped_at_max_doc_tokens"] == 0


# --------------------------------------------------------------------------- determinism


def test_determinism_two_runs_identical(roundtrip, tmp_path):
    second = tmp_path / "second"
    manifest = preprocess.run(preprocess_argv(roundtrip["data_dir"], second, "--num_shards", "3"))
    first_run, second_run = roundtrip["out"] / roundtrip["manifest"]["run"], second / manifest["run"]
    first_names = sorted(os.listdir(first_run))
    assert sorted(os.listdir(second_run)) == first_names
    assert file_bytes(str(second_run), first_names) == file_bytes(str(first_run), first_names)
    assert comparable_manifest(manifest) == comparable_manifest(roundtrip["manifest"])
    assert manifest["options"]["output_dir"] == str(second)


# --------------------------------------------------------------------------- --max_doc_tokens


CAP = 40


@pytest.fixture(scope="module")
def capped(tmp_path_factory):
    root = tmp_path_factory.mktemp("capped")
    data_dir, out_dir = root / "data", root / "out"
    labels = ("1", "2", "10")
    docs = {
        "train": make_docs("train", 12, labels, seed=4, long_every=2, pair_every=3, long_words=60),
        "dev": make_docs("dev", 4, labels, seed=5, long_every=2, pair_every=2, long_words=60),
    }
    docs["train"].append(Doc("train-longb", "x", "2", "short a", random_text(random.Random(9), 80)))
    write_corpus(str(data_dir), docs)
    manifest = preprocess.run(
        preprocess_argv(data_dir, out_dir, "--max_doc_tokens", str(CAP), "--num_shards", "6")
    )
    return {"data_dir": data_dir, "out": out_dir, "docs": docs, "manifest": manifest}


def _capped(ids, cap):
    """As implemented (transforms.cap_tokens): first cap//2 and last cap - cap//2 tokens."""
    if len(ids) <= cap:
        return ids
    return ids[: cap // 2] + ids[len(ids) - (cap - cap // 2) :]


def test_cap_keeps_head_and_tail_and_true_length(capped, tok):
    hit = 0
    for split, docs in capped["docs"].items():
        by_id = {d.id: d for d in docs}
        rows = read_split(str(capped["out"]), split)
        assert sorted(r["id"] for r in rows) == sorted(by_id)
        for row in rows:
            doc = by_id[row["id"]]
            full_a = reference_ids(tok, doc.text_a)
            full_b = reference_ids(tok, doc.text_b) if doc.text_b else []
            assert row["input_ids_a"] == _capped(full_a, CAP), doc.id
            assert row["input_ids_b"] == _capped(full_b, CAP), doc.id
            assert len(row["input_ids_a"]) <= CAP and len(row["input_ids_b"]) <= CAP
            assert row["num_tokens_a"] == len(full_a)  # the uncapped length
            assert row["num_tokens_b"] == len(full_b)
            was_capped = len(full_a) > CAP or len(full_b) > CAP
            hit += was_capped
        stats = capped["manifest"]["splits"][split]["stats"]
        expected_hits = sum(
            len(reference_ids(tok, d.text_a)) > CAP or (bool(d.text_b) and len(reference_ids(tok, d.text_b)) > CAP)
            for d in docs
        )
        assert stats["capped_at_max_doc_tokens"] == expected_hits
        # statistics use the true lengths, not the capped ones
        assert stats["max"] > CAP
    assert hit >= 6
    assert capped["manifest"]["max_doc_tokens"] == CAP
    assert capped["manifest"]["options"]["max_doc_tokens"] == CAP
    assert set(capped["manifest"]["splits"]) == {"train", "dev"}  # test.tsv is optional


def test_cap_numeric_labels_in_numeric_order(capped):
    assert capped["manifest"]["label_map"] == {"1": 0, "2": 1, "10": 2}
    by_id = {d.id: d for d in capped["docs"]["train"]}
    for row in read_split(str(capped["out"]), "train"):
        assert row["label"] == capped["manifest"]["label_map"][by_id[row["id"]].label]


def test_num_shards_with_empty_shards(capped):
    """--num_shards 6 for 4 dev rows: every shard file exists, some are empty but readable."""
    out = str(capped["out"])
    for split in ("train", "dev"):
        names = shard_names(out, split)
        run = capped["manifest"]["run"]
        assert names == [f"{run}/{split}-{i:05d}-of-00006.parquet" for i in range(6)]
        info = capped["manifest"]["splits"][split]
        for f in info["files"]:
            rows, meta = read_shard(os.path.join(out, f["name"]))
            assert f["rows"] == len(rows) == meta.num_rows
            assert f["row_groups"] == meta.num_row_groups
            assert pq.ParquetFile(os.path.join(out, f["name"])).schema_arrow.equals(SHARD_SCHEMA)
    dev_rows = [f["rows"] for f in capped["manifest"]["splits"]["dev"]["files"]]
    assert dev_rows.count(0) >= 2 and sum(dev_rows) == 4


# --------------------------------------------------------------------------- --seq_len_func ht


HT = (10, 20)
HT_MAX_SEQ_LENGTH = 64  # MiniLM: budget 62 single, 61 pair


@pytest.fixture(scope="module")
def with_ht(tmp_path_factory):
    root = tmp_path_factory.mktemp("ht")
    data_dir, out_dir = root / "data", root / "out"
    docs = {
        "train": make_docs("train", 14, LABELS, seed=6, long_every=2, pair_every=3, long_words=80),
        "dev": make_docs("dev", 4, LABELS, seed=7, long_every=2, pair_every=2, long_words=80),
    }
    rng = random.Random(11)
    # a short A with a long B, and a long A with a long B
    docs["train"].append(Doc("train-pair1", "x", "neg", "a short first text", random_text(rng, 120)))
    docs["train"].append(Doc("train-pair2", "x", "pos", random_text(rng, 120), random_text(rng, 120)))
    write_corpus(str(data_dir), docs)
    argv = preprocess_argv(
        data_dir, out_dir,
        "--seq_len_func", "ht", "--seq_func_params", str(HT[0]), str(HT[1]),
        "--max_seq_length", str(HT_MAX_SEQ_LENGTH),
    )
    manifest = preprocess.run(argv)
    return {"data_dir": data_dir, "out": out_dir, "docs": docs, "manifest": manifest}


def _expected_ht(a, b):
    """design.md section 3, with the A side's ht parts scaled down in proportion when the pair
    rule leaves A a budget below head_len + tail_len (as implemented in seq_len.ht)."""
    head_len, tail_len = HT
    if not b:
        budget = HT_MAX_SEQ_LENGTH - 2
        return (a if len(a) <= budget else a[:head_len] + a[-tail_len:]), []
    budget = HT_MAX_SEQ_LENGTH - 3
    b_keep = min(len(b), max(budget - len(a), budget // 2))
    budget_a = budget - b_keep
    if len(a) <= budget_a:
        return a, b[:b_keep]
    if head_len + tail_len > budget_a:
        head_len = head_len * budget_a // (HT[0] + HT[1])
        tail_len = budget_a - head_len
    return a[:head_len] + a[len(a) - tail_len :], b[:b_keep]


def test_ht_at_preprocess_time(with_ht, tok):
    manifest = with_ht["manifest"]
    assert manifest["preprocess_seq_len"] == {
        "name": "ht", "params": list(HT), "max_seq_length": HT_MAX_SEQ_LENGTH, "budget_single": 62, "budget_pair": 61,
    }
    cut = 0
    for split, docs in with_ht["docs"].items():
        by_id = {d.id: d for d in docs}
        rows = read_split(str(with_ht["out"]), split)
        assert sorted(r["id"] for r in rows) == sorted(by_id)
        for row in rows:
            doc = by_id[row["id"]]
            full_a = reference_ids(tok, doc.text_a)
            full_b = reference_ids(tok, doc.text_b) if doc.text_b else []
            exp_a, exp_b = _expected_ht(full_a, full_b)
            assert row["input_ids_a"] == exp_a, doc.id
            assert row["input_ids_b"] == exp_b, doc.id
            total = len(row["input_ids_a"]) + len(row["input_ids_b"])
            assert total + (3 if full_b else 2) <= HT_MAX_SEQ_LENGTH
            assert row["num_tokens_a"] == len(full_a) and row["num_tokens_b"] == len(full_b)
            cut += len(exp_a) < len(full_a)
            if not full_b and len(full_a) > 62:
                assert row["input_ids_a"] == full_a[: HT[0]] + full_a[-HT[1] :]
    assert cut >= 6


def test_ht_options_errors(tmp_path, roundtrip):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=r"ht 100 100 .*content tokens"):
        preprocess.run(preprocess_argv(
            roundtrip["data_dir"], out, "--seq_len_func", "ht", "--seq_func_params", "100", "100", "--max_seq_length", "128"
        ))
    with pytest.raises(ValueError, match="--max_seq_length"):
        preprocess.run(preprocess_argv(roundtrip["data_dir"], out, "--seq_len_func", "ht", "--seq_func_params", "1", "2"))
    with pytest.raises(ValueError, match="--seq_func_params given without --seq_len_func"):
        preprocess.run(preprocess_argv(roundtrip["data_dir"], out, "--seq_func_params", "1", "2"))
    # random functions belong to the trainer: argparse refuses them (exit 2)
    with pytest.raises(SystemExit) as exit_info:
        preprocess.run(preprocess_argv(roundtrip["data_dir"], out, "--seq_len_func", "rs", "--seq_func_params", "16"))
    assert exit_info.value.code == 2
    assert not out.exists()  # refused before any work


# --------------------------------------------------------------------------- bad input


LONG_BAD_LINE = "x" * (3 * MAX_RAW_CHARS)


def _bad_corpus():
    """Lines of each split and the expected {line: reason} of its rejected rows."""
    train = [
        "id\talpha\tlabel\ttext_a\ttext_b",                        # 1 header (skipped, not rejected)
        "t-good1\ta\tpos\tthe first good document",                # 2
        "t-bad3\ta\tpos",                                          # 3 three fields
        "t-good2\ta\tneg\tanother good document\twith a text b",   # 4
        "t-bad5\ta\tpos\tx\ty\tz",                                 # 5 six fields
        "t-empty\ta\tpos\t   ",                                    # 6 empty TEXT_A
        b"t-good1\ta\tneg\ta duplicate of line 2 with crlf\r",     # 7 duplicate ID (CRLF ending)
        b"t-latin1\ta\tpos\tcaf\xe9 au lait",                      # 8 not UTF-8
        "\ta\tpos\tno id here",                                    # 9 empty ID
        "t-nolabel\ta\t\tno label here",                           # 10 missing label
        "t-notokens\ta\tneg\t\u200b\u200d",                        # 11 gives no tokens
        LONG_BAD_LINE,                                             # 12 one field, very long
        "",                                                        # 13 blank line
        "t-good3\ta\tneutral\ta third good document",              # 14
        "t-good1\ta\tpos\tthird use of the id t-good1",            # 15 duplicate ID
        "shared-id\ta\tpos\tthis id is also used in dev",          # 16
    ]
    train_rejected = {
        3: Reason.WRONG_FIELD_COUNT, 5: Reason.WRONG_FIELD_COUNT, 6: Reason.EMPTY_TEXT_A, 7: Reason.DUPLICATE_ID,
        8: Reason.INVALID_UTF8, 9: Reason.EMPTY_ID, 10: Reason.MISSING_LABEL, 11: Reason.NO_TOKENS,
        12: Reason.WRONG_FIELD_COUNT, 13: Reason.WRONG_FIELD_COUNT, 15: Reason.DUPLICATE_ID,
    }
    dev = [
        "d-good1\ta\tpos\ta good dev document",                    # 1
        "d-unseen\ta\tmaybe\ta label never seen in train",         # 2 unseen label
        "shared-id\ta\tneg\tsame id as a train row: not a duplicate",  # 3
        "d-nolabel\ta\t\tdev rows need a label",                   # 4 missing label
        "d-good1\ta\tneg\tduplicate in dev",                       # 5 duplicate ID
        "d-good2\ta\tneutral\tanother good dev document\t",        # 6 empty TEXT_B
    ]
    dev_rejected = {2: Reason.UNSEEN_LABEL, 4: Reason.MISSING_LABEL, 5: Reason.DUPLICATE_ID}
    test = [
        "s-1\ta\t\tan unlabelled test document",                   # 1
        "s-2\ta\tpos\ta labelled test document",                   # 2
        "s-3\ta\tunknown\ta test label never seen in train",       # 3 unseen label
    ]
    test_rejected = {3: Reason.UNSEEN_LABEL}
    good = {
        "train": {"t-good1", "t-good2", "t-good3", "shared-id"},
        "dev": {"d-good1", "shared-id", "d-good2"},
        "test": {"s-1", "s-2"},
    }
    return (
        {"train": train, "dev": dev, "test": test},
        {"train": train_rejected, "dev": dev_rejected, "test": test_rejected},
        good,
    )


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    data_dir, out_dir = root / "data", root / "out"
    lines, rejected, good = _bad_corpus()
    data_dir.mkdir()
    write_tsv(str(data_dir / "train.tsv"), lines["train"], bom=True)
    write_tsv(str(data_dir / "dev.tsv"), lines["dev"], newline=b"\r\n")
    write_tsv(str(data_dir / "test.tsv"), lines["test"])
    manifest = preprocess.run(preprocess_argv(data_dir, out_dir))
    return {
        "data_dir": data_dir, "out": out_dir, "lines": lines, "rejected": rejected, "good": good, "manifest": manifest,
    }


def test_bad_rows_rejected_with_reasons(bad):
    for split, expected in bad["rejected"].items():
        rejected = read_rejected(str(bad["out"]), split)
        assert {r["line"]: r["reason"] for r in rejected} == expected, split
        assert len(rejected) == len(expected)  # one entry per bad row
        for r in rejected:
            assert r["split"] == split
            assert r["file"] == str(bad["data_dir"] / f"{split}.tsv")
            assert r["detail"]
            assert len(r["raw"]) <= MAX_RAW_CHARS + 20
        run = bad["manifest"]["run"]
        files = [n for n in os.listdir(bad["out"] / run / "rejected") if n.startswith(f"{split}-")]
        assert len(files) == 1 and re.fullmatch(rf"{split}-00000-of-00001\.jsonl", files[0])  # one shard, one bucket
        assert bad["manifest"]["splits"][split]["rejected_files"] == [f"{run}/rejected/{files[0]}"]


def test_bad_rows_raw_text(bad):
    train = {r["line"]: r for r in read_rejected(str(bad["out"]), "train")}
    assert "\\xe9" in train[8]["raw"] and train[8]["raw"].startswith("t-latin1\ta\tpos\tcaf")
    assert train[12]["raw"].startswith("x" * MAX_RAW_CHARS) and train[12]["raw"] != LONG_BAD_LINE
    assert str(len(LONG_BAD_LINE)) in train[12]["raw"]
    assert train[3]["raw"] == "t-bad3\ta\tpos"
    assert train[7]["raw"] == "t-good1\ta\tneg\ta duplicate of line 2 with crlf"  # CR stripped
    assert "line 2" in train[7]["detail"] or ":2" in train[7]["detail"]
    dev = {r["line"]: r for r in read_rejected(str(bad["out"]), "dev")}
    assert "maybe" in dev[2]["detail"]
    assert not dev[2]["raw"].endswith("\r")


def test_bad_input_counts_add_up(bad):
    manifest = bad["manifest"]
    for split, lines in bad["lines"].items():
        info = manifest["splits"][split]
        header = 1 if split == "train" else 0
        assert info["header_lines"] == header
        assert info["read"] == len(lines) - header
        assert info["read"] == info["records"] + info["rejected"]
        assert info["rejected"] == len(bad["rejected"][split])
        assert info["rejected_by_reason"] == dict(Counter(bad["rejected"][split].values()))
        assert info["records"] == len(read_split(str(bad["out"]), split))


def test_bad_input_good_rows_all_written(bad, tok):
    assert bad["manifest"]["label_map"] == {"neg": 0, "neutral": 1, "pos": 2}
    for split, good in bad["good"].items():
        rows = {r["id"]: r for r in read_split(str(bad["out"]), split)}
        assert set(rows) == good, split
    train = {r["id"]: r for r in read_split(str(bad["out"]), "train")}
    # of three rows with ID t-good1, the first (line 2) is kept
    assert train["t-good1"]["input_ids_a"] == reference_ids(tok, "the first good document")
    assert train["t-good1"]["label"] == 2
    assert train["t-good2"]["input_ids_b"] == reference_ids(tok, "with a text b")
    dev = {r["id"]: r for r in read_split(str(bad["out"]), "dev")}
    assert dev["d-good1"]["input_ids_a"] == reference_ids(tok, "a good dev document")
    assert dev["shared-id"]["label"] == 0
    assert dev["d-good2"]["input_ids_b"] == []
    test = {r["id"]: r for r in read_split(str(bad["out"]), "test")}
    assert test["s-1"]["label"] == -1 and test["s-2"]["label"] == 2


def test_decode_errors_replace_keeps_the_row(tmp_path, tok):
    data_dir = tmp_path / "data"
    write_corpus(str(data_dir), {
        "train": [b"r-1\ta\tpos\tcaf\xe9 au lait", "r-2\ta\tneg\tplain"],
        "dev": ["d-1\ta\tpos\tdev text"],
    })
    manifest = preprocess.run(preprocess_argv(data_dir, tmp_path / "out", "--decode_errors", "replace"))
    assert manifest["splits"]["train"]["rejected"] == 0
    rows = {r["id"]: r for r in read_split(str(tmp_path / "out"), "train")}
    assert rows["r-1"]["input_ids_a"] == reference_ids(tok, "caf\ufffd au lait")


def test_no_valid_train_rows_is_a_clear_error(tmp_path):
    data_dir = tmp_path / "data"
    write_corpus(str(data_dir), {"train": ["t-1\ta\tpos\t ", "t-2\ta\tpos"], "dev": ["d-1\ta\tpos\ttext"]})
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"no valid rows.*rejected/train-\*\.jsonl") as error:
        preprocess.run(preprocess_argv(data_dir, out))
    # nothing committed; the message points at the rejected rows of the run's folder: they are there
    (run,) = os.listdir(out)
    assert str(out / run / "rejected") in str(error.value)
    assert os.listdir(out / run) == ["rejected"]
    assert {r["line"]: r["reason"] for r in read_rejected(str(out), "train", folder=str(out / run))} == {
        1: Reason.EMPTY_TEXT_A, 2: Reason.WRONG_FIELD_COUNT,
    }


# --------------------------------------------------------------------------- options errors


def test_missing_dev_tsv(tmp_path, capsys):
    data_dir = tmp_path / "data"
    write_corpus(str(data_dir), {"train": ["t-1\ta\tpos\ttext"]})
    argv = preprocess_argv(data_dir, tmp_path / "out")
    with pytest.raises(ValueError, match=r"dev\.tsv"):
        preprocess.run(argv)
    assert preprocess.main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "dev.tsv" in err
    assert not (tmp_path / "out").exists()


def test_missing_required_option(tmp_path, capsys):
    with pytest.raises(ValueError, match="no input for train, dev: give --data_dir DIR, or --train_files and --dev_files"):
        preprocess.run(["--output_dir", str(tmp_path / "out"), "--tokenizer", tokenizer_path()])
    assert preprocess.main(["--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "o")]) == 2
    assert "--tokenizer is required" in capsys.readouterr().err


def test_existing_output_without_overwrite(roundtrip, capsys):
    out = roundtrip["out"]
    before = {str(p): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    argv = preprocess_argv(roundtrip["data_dir"], out, "--num_shards", "3")
    with pytest.raises(ValueError, match="--overwrite") as error:
        preprocess.run(argv)
    assert str(out) in str(error.value)
    assert preprocess.main(argv) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--overwrite" in err
    assert {str(p): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # untouched


# --------------------------------------------------------------------------- command line


def test_cli_help_lists_our_flags():
    result = subprocess.run(
        [sys.executable, "-m", "beam_pipelines.preprocess", "--help"],
        cwd=REPO_ROOT, env=_subprocess_env(), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for flag in (
        "--data_dir", "--train_files", "--dev_files", "--test_files", "--input_format", "--id_column",
        "--label_column", "--text_column", "--text_b_column", "--output_dir", "--tokenizer", "--max_doc_tokens",
        "--num_shards", "--shard_size_mb", "--read_range_mb", "--shuffle",
        "--seq_len_func", "--seq_func_params", "--max_seq_length", "--decode_errors", "--overwrite",
    ):
        assert flag in result.stdout, flag
    assert "--runner" in result.stdout  # the epilog points at Beam's options


def test_cli_end_to_end_with_overwrite(bad, roundtrip, tmp_path):
    """The CLI over the bad-input corpus, into a folder holding an older run (--overwrite): the
    older run's folder goes once the new one is committed, and the result is byte-identical to
    the in-process run."""
    out = tmp_path / "out"
    shutil.copytree(roundtrip["out"], out)  # an older run: its manifest and run folder
    old_run = roundtrip["manifest"]["run"]
    argv = preprocess_argv(bad["data_dir"], out, "--overwrite")
    result = subprocess.run(
        [sys.executable, "-m", "beam_pipelines.preprocess", *argv],
        cwd=REPO_ROOT, env=_subprocess_env(), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = read_manifest_json(str(out))
    assert f"wrote {out / 'manifest.json'} (run {manifest['run']})" in result.stdout
    assert "rejected:" in result.stdout and "wrong_field_count 4" in result.stdout  # the stats table
    assert sorted(os.listdir(out)) == sorted(["manifest.json", manifest["run"]]) and old_run not in os.listdir(out)
    new_run, in_process = out / manifest["run"], bad["out"] / bad["manifest"]["run"]
    names = sorted(str(p.relative_to(new_run)) for p in new_run.rglob("*") if p.is_file())
    assert names == sorted(str(p.relative_to(in_process)) for p in in_process.rglob("*") if p.is_file())
    assert file_bytes(str(new_run), names) == file_bytes(str(in_process), names)
    assert comparable_manifest(manifest) == comparable_manifest(bad["manifest"])
    assert json.loads((out / "manifest.json").read_text())["options"]["output_dir"] == str(out)
