"""Tests of manifest.json and the shard names (design.md section 4)."""

from __future__ import annotations

import copy
import json
import os

import pyarrow as pa
import pytest

from schemas.manifest import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    check_compatible,
    read_manifest,
    validate_manifest,
    write_manifest,
)
from schemas.shard import SHARD_SCHEMA, parse_shard_name, records_to_table, shard_name
from tokenization.tokenizer import tokenizer_identity


@pytest.fixture(scope="module")
def identity(minilm_tokenizer, minilm_path):
    return tokenizer_identity(minilm_tokenizer, minilm_path)


@pytest.fixture()
def manifest(identity):
    return {
        "schema_version": SCHEMA_VERSION,
        "created_at": "2026-01-02T03:04:05Z",
        "options": {"data_dir": "/data/imdb", "max_doc_tokens": 32768},
        "tokenizer": identity,
        "label_map": {"neg": 0, "pos": 1},
        "max_doc_tokens": 32768,
        "seq_len": None,
        "splits": {
            "train": {
                "read": 10,
                "records": 8,
                "rejected": 2,
                "rejected_by_reason": {"empty_id": 1, "wrong_field_count": 1},
                "files": [
                    {"name": shard_name("train", 0, 2), "rows": 5, "row_groups": 1},
                    {"name": shard_name("train", 1, 2), "rows": 3, "row_groups": 1},
                ],
                "stats": {"quantiles": {"p50": 300}, "max": 900, "fraction_longer_than": {"126": 0.9}},
            },
            "dev": {
                "read": 4,
                "records": 4,
                "rejected": 0,
                "files": [{"name": shard_name("dev", 0, 1), "rows": 4, "row_groups": 1}],
            },
        },
    }


# --- write / read -------------------------------------------------------------------------


def test_round_trip(tmp_path, manifest):
    path = write_manifest(str(tmp_path), manifest)
    assert path == os.path.join(str(tmp_path), MANIFEST_NAME)
    assert os.listdir(tmp_path) == [MANIFEST_NAME]  # no temporary file left behind
    assert read_manifest(str(tmp_path)) == manifest
    assert json.loads((tmp_path / MANIFEST_NAME).read_text("utf-8")) == manifest


def test_write_overwrites(tmp_path, manifest):
    write_manifest(str(tmp_path), manifest)
    manifest["label_map"] = {"a": 0, "b": 1, "c": 2}
    write_manifest(str(tmp_path), manifest)
    assert read_manifest(str(tmp_path))["label_map"] == {"a": 0, "b": 1, "c": 2}


def test_write_refuses_an_invalid_manifest(tmp_path, manifest):
    manifest["splits"]["train"]["records"] = 9
    with pytest.raises(ValueError, match="train"):
        write_manifest(str(tmp_path), manifest)
    assert not (tmp_path / MANIFEST_NAME).exists()


def test_read_missing(tmp_path):
    with pytest.raises(ValueError, match="not found") as info:
        read_manifest(str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_read_not_json(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text("{not json", "utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_manifest(str(tmp_path))


def test_read_validates(tmp_path, manifest):
    manifest["splits"]["dev"]["read"] = 5
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(manifest), "utf-8")
    with pytest.raises(ValueError, match="'dev' has read 5 != records 4 \\+ rejected 0"):
        read_manifest(str(tmp_path))


# --- validate_manifest --------------------------------------------------------------------


def test_valid_manifest_passes(manifest):
    validate_manifest(manifest)


def test_read_must_equal_records_plus_rejected(manifest):
    manifest["splits"]["train"]["rejected"] = 3
    with pytest.raises(ValueError) as info:
        validate_manifest(manifest, source="gs://b/prep")
    message = str(info.value)
    for fragment in ("gs://b/prep", "'train'", "read 10", "records 8", "rejected 3"):
        assert fragment in message


def test_file_rows_must_add_up_to_records(manifest):
    manifest["splits"]["train"]["files"][1]["rows"] = 4
    with pytest.raises(ValueError, match="'train' file row counts do not add up to records 8"):
        validate_manifest(manifest)


@pytest.mark.parametrize("key", ["schema_version", "tokenizer", "label_map", "splits", "max_doc_tokens"])
def test_required_keys(manifest, key):
    del manifest[key]
    with pytest.raises(ValueError, match=f"lacks {key}"):
        validate_manifest(manifest)


@pytest.mark.parametrize("key", ["read", "records", "rejected", "files"])
def test_required_split_keys(manifest, key):
    del manifest["splits"]["dev"][key]
    with pytest.raises(ValueError, match=f"split 'dev' lacks '{key}'"):
        validate_manifest(manifest)


@pytest.mark.parametrize("label_map", [{"neg": 0, "pos": 2}, {"neg": 1, "pos": 1}, {"neg": 1, "pos": 2}, ["neg", "pos"]])
def test_label_map_must_be_0_to_n_minus_1(manifest, label_map):
    manifest["label_map"] = label_map
    with pytest.raises(ValueError, match="label_map"):
        validate_manifest(manifest)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(tokenizer="bert-base-uncased"), 'tokenizer must be a JSON object, got the string "bert-base-uncased"'),
        (lambda m: m.update(max_doc_tokens="32768"), 'max_doc_tokens must be an integer >= 0, got "32768"'),
        (lambda m: m.update(label_map={}), "label_map must map each label to a distinct index 0..N-1, got {}"),
        (lambda m: m.update(label_map={"neg": True, "pos": 1}), "label_map must map each label to a distinct index"),
        (lambda m: m.update(splits=[]), "splits must be a JSON object (split name -> files and counts), got a list"),
        (lambda m: m["splits"].update(dev=None), "split 'dev' must be a JSON object, got null"),
        (lambda m: m["splits"]["dev"].update(read=4.0), "splits.dev.read must be an integer >= 0, got 4.0"),
        (lambda m: m["splits"]["dev"].update(files={}), "splits.dev.files must be a list of {name, rows} objects, got an object"),
        (lambda m: m["splits"]["dev"]["files"].append("dev-x.parquet"), "splits.dev.files[1] must be a JSON object with name and rows"),
        (lambda m: m["splits"]["dev"]["files"][0].pop("rows"), "splits.dev.files[0] lacks 'rows'"),
        (lambda m: m["splits"]["dev"]["files"][0].update(rows=True), "splits.dev.files[0].rows must be an integer >= 0, got true"),
        (lambda m: m["splits"]["dev"]["files"][0].update(row_groups=-1), "splits.dev.files[0].row_groups must be an integer >= 0"),
        (lambda m: m["splits"]["dev"]["files"][0].update(name="/abs/dev.parquet"), "splits.dev.files[0].name must be a file name"),
        (lambda m: m["splits"]["dev"]["files"][0].update(name=".."), "splits.dev.files[0].name must be a file name"),
        (lambda m: m["splits"]["train"]["files"][1].update(name=m["splits"]["train"]["files"][0]["name"]),
         "splits.train.files[1].name 'train-00000-of-00002.parquet' is listed twice"),
    ],
)
def test_hand_edited_types_are_refused_with_the_field_named(manifest, edit, message):
    edit(manifest)
    with pytest.raises(ValueError) as info:
        validate_manifest(manifest, source="/prep/manifest.json")
    assert str(info.value).startswith("/prep/manifest.json: ")
    assert message in str(info.value)


def test_schema_version_mismatch_is_refused(manifest):
    manifest["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ValueError) as info:
        validate_manifest(manifest)
    assert f"schema_version {SCHEMA_VERSION + 1}" in str(info.value)
    assert str(SCHEMA_VERSION) in str(info.value)


# --- check_compatible ---------------------------------------------------------------------


def test_same_tokenizer_is_compatible(manifest, minilm_tokenizer, minilm_path):
    check_compatible(manifest, tokenizer_identity(minilm_tokenizer, minilm_path))


def test_a_copy_elsewhere_is_compatible(manifest, identity):
    # the same tokenizer copied to a bucket or downloaded from the hub: only the name differs
    elsewhere = {**identity, "name_or_path": "gs://bucket/tokenizer", "files_sha256": {}}
    check_compatible(manifest, elsewhere)


def test_schema_version_mismatch_in_check_compatible(manifest, identity):
    manifest["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ValueError) as info:
        check_compatible(manifest, identity)
    assert "schema_version" in str(info.value)
    assert str(SCHEMA_VERSION + 1) in str(info.value)


@pytest.mark.parametrize(
    "key, value",
    [
        ("fingerprint", "0" * 64),
        ("vocab_size", 50265),
        ("special_tokens", {"cls_token": "<s>", "sep_token": "</s>"}),
        ("num_special_tokens_single", 3),
        ("num_special_tokens_pair", 4),
    ],
)
def test_tokenizer_mismatch_names_what_differs(manifest, identity, key, value):
    other = {**copy.deepcopy(identity), key: value, "name_or_path": "roberta-base"}
    with pytest.raises(ValueError) as info:
        check_compatible(manifest, other)
    message = str(info.value)
    assert key in message
    assert repr(value) in message and repr(identity[key]) in message
    assert "roberta-base" in message and repr(identity["name_or_path"]) in message
    unchanged = {"fingerprint", "vocab_size", "special_tokens", "num_special_tokens_single", "num_special_tokens_pair"} - {key}
    assert not any(f"{name}:" in message for name in unchanged)


def test_identity_of_the_minilm_tokenizer(identity, minilm_path):
    assert identity["name_or_path"] == minilm_path
    assert identity["vocab_size"] == 30522
    assert (identity["num_special_tokens_single"], identity["num_special_tokens_pair"]) == (2, 3)
    assert len(identity["fingerprint"]) == 64
    assert {"tokenizer.json", "vocab.txt"} <= set(identity["files_sha256"])
    assert identity["special_tokens"]["cls_token"] == "[CLS]"
    json.dumps(identity)  # goes into manifest.json


# --- shard names and schema ---------------------------------------------------------------


@pytest.mark.parametrize("split, index, count", [("train", 0, 1), ("dev", 3, 4), ("test", 12, 100), ("train", 99998, 99999)])
def test_shard_name_round_trip(split, index, count):
    name = shard_name(split, index, count)
    assert parse_shard_name(name) == (split, index, count)


def test_shard_name_format():
    assert shard_name("train", 0, 16) == "train-00000-of-00016.parquet"
    assert shard_name("dev", 7, 8) == "dev-00007-of-00008.parquet"


@pytest.mark.parametrize("index, count", [(-1, 4), (4, 4), (0, 0)])
def test_shard_name_index_out_of_range(index, count):
    with pytest.raises(ValueError, match="out of range"):
        shard_name("train", index, count)


@pytest.mark.parametrize(
    "name",
    ["train-0-of-4.parquet", "train-00000-of-00004.json", "train-00000-00004.parquet", "manifest.json", "/d/train-00000-of-00004.parquet", "Train-00000-of-00004.parquet"],
)
def test_parse_shard_name_rejects(name):
    with pytest.raises(ValueError, match="not a shard name"):
        parse_shard_name(name)


def test_shard_schema():
    assert SHARD_SCHEMA.field("id").type == pa.string()
    assert SHARD_SCHEMA.field("label").type == pa.int64()  # datasets' ClassLabel type
    assert all(field.nullable for field in SHARD_SCHEMA)  # as datasets' features are
    assert SHARD_SCHEMA.field("input_ids_a").type == pa.list_(pa.int32())
    assert SHARD_SCHEMA.field("input_ids_b").type == pa.list_(pa.int32())
    assert SHARD_SCHEMA.field("num_tokens_a").type == pa.int32()
    assert SHARD_SCHEMA.field("alpha").type == pa.string()


def test_records_to_table():
    records = [
        {"id": "d1", "label": 1, "input_ids_a": [5, 6, 7], "input_ids_b": [], "num_tokens_a": 3, "num_tokens_b": 0, "alpha": "a"},
        {"id": "d2", "label": -1, "input_ids_a": [8], "input_ids_b": [9, 10], "num_tokens_a": 40000, "num_tokens_b": 2, "alpha": ""},
    ]
    table = records_to_table(records)
    assert table.schema == SHARD_SCHEMA
    assert table.to_pylist() == records
