"""Real corpora in (the corpus-input issue), through the real pipeline on the local runner.

A split given as many files and glob patterns, local and on the GCS emulator, in every format
and compression, read back to exactly the tokenizer's ids; duplicate IDs across the files of a
split; headers and columns by name, and the errors a column mix-up gives before any work; IDs
derived for a corpus without ID column; the previous output intact after a failed, killed or
interrupted run; label names in the shards' schema for ``datasets``, pandas and pyarrow.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

import spanwise_io
from beam_pipelines import preprocess
from gcs_emulator import GcsEmulator, gcs_emulator_fixtures
from pipeline_helpers import (
    load_reference_tokenizer,
    make_docs,
    read_manifest_json,
    read_rejected,
    read_split,
    reference_ids,
    shard_names,
    tokenizer_path,
)
from schemas.rows import Reason
from schemas.shard import label_names_of

REPO_ROOT = Path(__file__).resolve().parents[1]
LABELS = ("neg", "neutral", "pos")
gcs_emulator_server, gcs = gcs_emulator_fixtures()
COMPRESS = {"": lambda b: b, ".gz": gzip.compress, ".bz2": bz2.compress, ".zst": lambda b: zstandard.ZstdCompressor().compress(b)}


@pytest.fixture(scope="module")
def tok():
    return load_reference_tokenizer()


def _records(docs) -> list[dict]:
    return [{"id": d.id, "alpha": d.alpha, "label": d.label, "text": d.text_a, "text_b": d.text_b or ""} for d in docs]


def encode(fmt: str, records: list[dict], header: bool = True) -> bytes:
    """Records as the bytes of one file of ``fmt`` (TSV: the GLUE layout, with or without header)."""
    if fmt == "tsv":
        lines = ["id\talpha\tlabel\ttext_a\ttext_b"] if header else []
        lines += ["\t".join([r["id"], r["alpha"], r["label"], r["text"]] + ([r["text_b"]] if r["text_b"] else [])) for r in records]
        return ("\n".join(lines) + "\n").encode("utf-8")
    if fmt == "csv":
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=["id", "alpha", "label", "text", "text_b"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        return buffer.getvalue().encode("utf-8")
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records), sink, row_group_size=4)
    return sink.getvalue()


def write_file(path: str, fmt: str, records: list[dict], compression: str = "", header: bool = True) -> str:
    spanwise_io.write_bytes(path, COMPRESS[compression](encode(fmt, records, header)))
    return path


# (format, compression) of each of the train files: every format, every compression
TRAIN_FILES = [("tsv", ""), ("tsv", ".gz"), ("csv", ".bz2"), ("jsonl", ".zst"), ("parquet", ""), ("jsonl", ".gz"), ("csv", "")]


def _write_mixed_corpus(root: str) -> dict:
    """train as 7 files of every format and compression (a glob finds them); dev as two files (a list)."""
    docs = make_docs("train", 35, LABELS, seed=21)
    dev = make_docs("dev", 8, LABELS, seed=22)
    paths = []
    for index, (fmt, compression) in enumerate(TRAIN_FILES):
        part = docs[index::len(TRAIN_FILES)]
        paths.append(write_file(spanwise_io.join(root, "corpus", f"train-{index:05d}.{fmt}{compression}"), fmt, _records(part), compression))
    dev_paths = [write_file(spanwise_io.join(root, "corpus", "dev-a.jsonl"), "jsonl", _records(dev[:4])),
                 write_file(spanwise_io.join(root, "corpus", "dev-b.tsv.gz"), "tsv", _records(dev[4:]), ".gz", header=False)]
    return {"train": docs, "dev": dev, "train_paths": paths, "dev_paths": dev_paths,
            "argv": ["--train_files", spanwise_io.join(root, "corpus", "train-*"), "--dev_files", *dev_paths]}


def _check_read_back(output: str, corpus: dict, tok) -> dict:
    manifest = read_manifest_json(output)
    for split in ("train", "dev"):
        docs = {d.id: d for d in corpus[split]}
        rows = read_split(output, split)
        assert sorted(r["id"] for r in rows) == sorted(docs), split
        for row in rows:
            doc = docs[row["id"]]
            assert row["input_ids_a"] == reference_ids(tok, doc.text_a), doc.id
            assert row["input_ids_b"] == (reference_ids(tok, doc.text_b) if doc.text_b else []), doc.id
            assert row["label"] == manifest["label_map"][doc.label]
        info = manifest["splits"][split]
        assert info["read"] == info["records"] == len(docs) and info["rejected"] == 0
    inputs = manifest["inputs"]["train"]
    assert [(f["format"], f["compression"]) for f in inputs["files"]] == [
        (fmt, {"": None, ".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}[comp]) for fmt, comp in TRAIN_FILES
    ]
    assert manifest["splits"]["train"]["input"] == [corpus["argv"][1]]  # the pattern, as given
    return manifest


def test_many_files_every_format_and_compression_local(tmp_path, tok):
    corpus = _write_mixed_corpus(str(tmp_path))
    out = str(tmp_path / "out")
    preprocess.run([*corpus["argv"], "--output_dir", out, "--tokenizer", tokenizer_path(), "--num_shards", "2"])
    manifest = _check_read_back(out, corpus, tok)
    assert manifest["inputs"]["dev"]["files"][1]["header"] is False  # a GLUE TSV without header, gzipped


def test_many_files_every_format_and_compression_on_gcs(gcs: GcsEmulator, tok, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    corpus = _write_mixed_corpus(gcs.url("data"))
    out = gcs.url("prep")
    preprocess.run([*corpus["argv"], "--output_dir", out, "--tokenizer", tokenizer_path(), "--num_shards", "2"])
    _check_read_back(out, corpus, tok)
    assert spanwise_io.listdir(out) == ["manifest.json", read_manifest_json(out)["run"]]


# --------------------------------------------------------------------------- duplicates across files


def test_duplicates_across_seven_files_are_rejected_once_naming_both_places(tmp_path):
    """A split over 7 files (one read in byte ranges); IDs repeated within and across files: the
    first by (file, position) is kept, every other copy rejected once, naming where the first is."""
    root = tmp_path / "corpus"
    files = []
    for index in range(7):
        rows = [f"f{index}-r{i}\ta\t{LABELS[i % 3]}\tdocument {i} of file {index}" for i in range(30)]
        rows[5] = f"shared\ta\tpos\tcopy in file {index}"  # in every file: 6 duplicates
        if index == 3:
            rows[20] = "f3-r2\ta\tneg\tthe same ID twice in one file, far apart"
        if index == 6:
            rows[0] = "f1-r7\ta\tneg\ta copy of a row of file 1"
        path = root / f"part-{index}.tsv"
        root.mkdir(exist_ok=True)
        path.write_text("\n".join(rows) + "\n", encoding="utf-8")
        files.append(str(path))
    (tmp_path / "dev.tsv").write_text("d1\ta\tpos\ta dev row\n")
    out = tmp_path / "out"
    manifest = preprocess.run([
        "--train_files", *reversed(files[3:]), *files[:3],  # the order given decides "first"
        "--dev_files", str(tmp_path / "dev.tsv"), "--output_dir", str(out), "--tokenizer", tokenizer_path(),
        "--num_shards", "3", "--read_range_mb", "0.0005",  # ~500-byte ranges: each file is read by several workers
    ])
    order = [*reversed(files[3:]), *files[:3]]
    train = manifest["splits"]["train"]
    rejected = read_rejected(str(out), "train")
    assert train["read"] == 210 == train["records"] + train["rejected"]
    assert train["rejected_by_reason"] == {Reason.DUPLICATE_ID: 8}
    first_shared = f"{order[0]}:6"  # line 6 of the first file given
    shared = sorted((r["file"], r["line"]) for r in rejected if r["raw"].startswith("shared\t"))
    assert shared == sorted((path, 6) for path in order[1:])
    assert all(f"ID 'shared' already used at {first_shared}; the first is kept" == r["detail"]
               for r in rejected if r["raw"].startswith("shared\t"))
    by_raw = {r["raw"].split("\t")[0] + "@" + r["file"]: r for r in rejected}
    same_file = by_raw[f"f3-r2@{files[3]}"]
    assert (same_file["line"], same_file["detail"]) == (21, f"ID 'f3-r2' already used at {files[3]}:3; the first is kept")
    # file 6 is given before file 1: its copy is kept, file 1's row is the duplicate
    assert by_raw[f"f1-r7@{files[1]}"]["detail"] == f"ID 'f1-r7' already used at {files[6]}:1; the first is kept"
    kept = {r["id"]: r for r in read_split(str(out), "train")}
    assert len(kept) == 202 and "shared" in kept
    for r in rejected:  # a rejection's byte offset points at its line
        assert Path(r["file"]).read_bytes()[r["offset"]:].split(b"\n", 1)[0].decode() == r["raw"]


# --------------------------------------------------------------------------- columns by name


def _as_in_a_terminal() -> None:
    """The child's Ctrl-C as a terminal gives it: SIGINT handled and not blocked. A test run
    started in the background by a non-interactive shell (``cmd &``) has SIGINT ignored, and the
    child would inherit that: Python then installs no KeyboardInterrupt handler, and the Ctrl-C
    test's signal did nothing (the run went on and published)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _run_cli(argv: list[str], env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "beam_pipelines.preprocess", *argv], cwd=REPO_ROOT, capture_output=True, text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT), **(env or {})), timeout=timeout,
        preexec_fn=_as_in_a_terminal,
    )


def test_a_reordered_tsv_header_trains_on_the_right_column(tmp_path, tok):
    """The issue's case: ``id text_a label alpha`` used to train on ALPHA (1 token per document)."""
    (tmp_path / "train.tsv").write_text(
        "id\ttext_a\tlabel\talpha\nt1\tthe first long enough document\tpos\ta\nt2\tanother one here\tneg\tb\n")
    (tmp_path / "dev.tsv").write_text("text_a\tid\tlabel\nthe dev document\td1\tpos\n")
    out = tmp_path / "out"
    preprocess.run(["--data_dir", str(tmp_path), "--output_dir", str(out), "--tokenizer", tokenizer_path()])
    rows = {r["id"]: r for r in read_split(str(out), "train") + read_split(str(out), "dev")}
    assert rows["t1"]["input_ids_a"] == reference_ids(tok, "the first long enough document")
    assert rows["t2"]["alpha"] == "b" and rows["d1"]["input_ids_a"] == reference_ids(tok, "the dev document")


@pytest.mark.parametrize(
    ("name", "content", "extra", "message"),
    [
        ("train.tsv", "id\tbody\tlabel\nt1\tx\tpos\n", [],
         r"train\.tsv: no text column; its columns are 'id', 'body', 'label'; name it with --text_column"),
        ("train.csv", "id,text,stars\nt1,x,5\n", [],
         r"train\.csv: no label column; its columns are 'id', 'text', 'stars'; name it with --label_column"),
        ("train.csv", "id,text,label\nt1,x,pos\n", ["--id_column", "uuid"],
         r"train\.csv: no column 'uuid' \(--id_column\); its columns are 'id', 'text', 'label'"),
        ("train.jsonl", '{"id": "t1", "text": "x", "label": "pos", "category": "c"}\n', [],
         r"train\.jsonl: columns 'label', 'category' could each be the label column; say which with --label_column"),
        ("train.tsv", "t1\ta\tpos\tsome text\n", ["--text_column", "body"],
         r"train\.tsv has no header .* --text_column cannot name its columns"),
    ],
    ids=["unknown_text_name", "missing_label", "named_column_absent", "two_label_columns", "flag_without_header"],
)
def test_a_column_mix_up_stops_the_job_before_any_work(tmp_path, name, content, extra, message):
    (tmp_path / name).write_text(content)
    (tmp_path / "dev.tsv").write_text("d1\ta\tpos\ttext\n")
    out = tmp_path / "out"
    argv = ["--train_files", str(tmp_path / name), "--dev_files", str(tmp_path / "dev.tsv"),
            "--output_dir", str(out), "--tokenizer", tokenizer_path(), *extra]
    with pytest.raises(ValueError, match=message):
        preprocess.run(argv)
    assert not out.exists()
    result = _run_cli(argv)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: {tmp_path / name}") or "has no header" in result.stderr, result.stderr[-2000:]
    assert not out.exists()


def test_columns_named_by_flags_and_ids_derived_from_file_and_line(tmp_path, tok, capsys):
    (tmp_path / "reviews.csv").write_text('body,stars\n"great, really\ngreat",5\nawful,1\n"ok\tfine",3\n')
    (tmp_path / "dev.csv").write_text("body,stars\nnice,5\n")
    out = tmp_path / "out"
    argv = ["--train_files", str(tmp_path / "reviews.csv"), "--dev_files", str(tmp_path / "dev.csv"),
            "--text_column", "body", "--label_column", "stars", "--output_dir", str(out), "--tokenizer", tokenizer_path()]
    assert preprocess.main(argv) == 0
    manifest = read_manifest_json(str(out))
    assert manifest["splits"]["train"]["derived_ids"] is True and manifest["inputs"]["train"]["derived_ids"] is True
    assert manifest["inputs"]["train"]["files"][0]["columns"] == {"id": None, "label": "stars", "text": "body",
                                                                   "text_b": None, "alpha": None}
    rows = {r["id"]: r for r in read_split(str(out), "train")}
    assert sorted(rows) == ["reviews.csv:2", "reviews.csv:4", "reviews.csv:5"]  # a record's first line
    assert rows["reviews.csv:2"]["input_ids_a"] == reference_ids(tok, "great, really\ngreat")
    assert rows["reviews.csv:5"]["input_ids_a"] == reference_ids(tok, "ok\tfine")
    assert manifest["label_map"] == {"1": 0, "3": 1, "5": 2}
    assert "IDs made from file and line" in capsys.readouterr().out


def test_jsonl_rows_missing_a_key_or_of_a_wrong_type_are_rejected_with_the_key(tmp_path):
    lines = ['{"id": "j1", "text": "good", "label": "pos"}', '{"id": "j2", "label": "pos"}',
             '{"id": "j3", "text": 7, "label": "pos"}', '{"id": "j4", "text": "no label"}', "not json",
             '{"id": 5, "text": "an integer id", "label": "neg"}']
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "dev.jsonl").write_text('{"id": "d", "text": "dev", "label": "pos"}\n')
    out = tmp_path / "out"
    manifest = preprocess.run(["--data_dir", str(tmp_path), "--output_dir", str(out), "--tokenizer", tokenizer_path()])
    rejected = {r["line"]: (r["reason"], r["detail"]) for r in read_rejected(str(out), "train")}
    assert rejected == {
        2: (Reason.MISSING_FIELD, "no 'text' (text column)"),
        3: (Reason.WRONG_TYPE, "'text' (text column) holds a int: '7'"),
        4: (Reason.MISSING_FIELD, "no 'label' (label column)"),
        5: (Reason.INVALID_JSON, rejected[5][1]),
    }
    assert sorted(r["id"] for r in read_split(str(out), "train")) == ["5", "j1"]
    assert manifest["splits"]["train"]["read"] == 6


# --------------------------------------------------------------------------- the previous output survives


def _committed(out: Path) -> dict[str, bytes]:
    """Every file of the committed run, and the manifest."""
    manifest = read_manifest_json(str(out))
    names = ["manifest.json"] + [f["name"] for info in manifest["splits"].values() for f in info["files"]]
    return {name: (out / name).read_bytes() for name in names}


@pytest.fixture
def earlier_run(tmp_path) -> dict:
    """A committed run in ``out``, and a bigger corpus for the next one."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.tsv").write_text("".join(f"t{i}\ta\t{LABELS[i % 3]}\tdocument number {i}\n" for i in range(40)))
    (data / "dev.tsv").write_text("d1\ta\tpos\tdev text\n")
    out = tmp_path / "out"
    preprocess.run(["--data_dir", str(data), "--output_dir", str(out), "--tokenizer", tokenizer_path(), "--num_shards", "2"])
    big = tmp_path / "big"
    big.mkdir()
    (big / "train.tsv").write_text("".join(f"b{i}\ta\t{LABELS[i % 3]}\t{'word ' * 50}{i}\n" for i in range(3000)))
    (big / "dev.tsv").write_text("d1\ta\tpos\tdev text\n")
    return {"out": out, "before": _committed(out), "big": big}


def _still_there(run: dict) -> None:
    """The earlier run: its manifest and shards unchanged and readable by the trainer's scan."""
    from schemas.manifest import read_manifest
    from trainer.shards import scan_split

    assert _committed(run["out"]) == run["before"]
    manifest = read_manifest(str(run["out"]))
    assert sum(unit.num_rows for unit in scan_split(str(run["out"]), manifest, "train").units) == 40


def test_overwrite_with_a_failing_run_keeps_the_previous_output(earlier_run, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.tsv").write_text("".join(f"x{i}\ta\tlabel {i}\ttext {i}\n" for i in range(20)))  # 20 labels
    (bad / "dev.tsv").write_text("d1\ta\tlabel 1\ttext\n")
    with pytest.raises(preprocess.CorpusError, match="more than --max_labels 5"):
        preprocess.run(["--data_dir", str(bad), "--output_dir", str(earlier_run["out"]), "--tokenizer", tokenizer_path(),
                        "--max_labels", "5", "--overwrite"])
    _still_there(earlier_run)
    assert sorted(os.listdir(earlier_run["out"])) == ["manifest.json", read_manifest_json(str(earlier_run["out"]))["run"]]


@pytest.mark.parametrize("point", ["tokenize", "write_shard"])
def test_a_run_killed_midway_keeps_the_previous_output(earlier_run, point):
    argv = ["--data_dir", str(earlier_run["big"]), "--output_dir", str(earlier_run["out"]), "--tokenizer", tokenizer_path(),
            "--overwrite", "--num_shards", "2"]
    result = _run_cli(argv, env={"SPANWISE_TEST_SIGNAL_AT": f"KILL:{point}"})
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    _still_there(earlier_run)
    # the next run commits, and deletes both the earlier run and the killed one's folder
    manifest = preprocess.run(argv)
    assert sorted(os.listdir(earlier_run["out"])) == ["manifest.json", manifest["run"]]
    assert manifest["splits"]["train"]["records"] == 3000


def test_ctrl_c_says_in_one_line_that_nothing_was_published(earlier_run):
    argv = ["--data_dir", str(earlier_run["big"]), "--output_dir", str(earlier_run["out"]), "--tokenizer", tokenizer_path(),
            "--overwrite"]
    result = _run_cli(argv, env={"SPANWISE_TEST_SIGNAL_AT": "INT:write_shard"})
    assert result.returncode == 130, result.stderr[-3000:]
    problems = [line for line in result.stderr.splitlines() if " INFO " not in line and line.strip()]
    assert problems == [f"interrupted: nothing was published; {earlier_run['out']} is as it was before this run"]
    _still_there(earlier_run)  # and the interrupted run's folder is gone
    assert sorted(os.listdir(earlier_run["out"])) == ["manifest.json", read_manifest_json(str(earlier_run["out"]))["run"]]


# --------------------------------------------------------------------------- label names with the shards


def test_label_names_travel_in_the_parquet_schema(earlier_run):
    import datasets

    out = earlier_run["out"]
    names = [str(out / name) for name in shard_names(str(out), "train")]
    assert label_names_of(pq.read_schema(names[0])) == list(LABELS)
    loaded = datasets.load_dataset("parquet", data_files={"train": names}, split="train",
                                   cache_dir=str(out.parent / "hf-cache"))
    feature = loaded.features["label"]
    assert isinstance(feature, datasets.ClassLabel) and feature.names == list(LABELS)
    assert loaded.features["input_ids_a"].feature.dtype == "int32"
    first = loaded[0]
    assert feature.int2str(first["label"]) == LABELS[int(first["id"][1:]) % 3]
    frame = pq.read_table(names[0]).to_pandas()  # pandas and friends: the names are in the schema's metadata
    assert json.loads(pq.read_schema(names[0]).metadata[b"spanwise"])["label_names"] == list(LABELS) and len(frame)


def test_keep_first_of_each_id_by_file_and_position():
    from beam_pipelines.sinks import keep_first_of_each_id

    ids = ["b", "a", "b", "c", "a", "d"]
    places = [(1, 10), (0, 50), (0, 99), (0, 5), (0, 20), (2, 0)]  # (file index, offset)
    labels = ["pos", "neg", "neg", "weird", "pos", ""]
    kept, label_ids, rejected = keep_first_of_each_id(ids, places, labels, {"neg": 0, "pos": 1}, labelled=False)
    assert kept == [4, 2, 5]  # a: offset 20 before 50; b: file 0 before file 1; d: unlabelled
    assert label_ids == [1, 0, -1]
    assert sorted(rejected) == [(0, Reason.DUPLICATE_ID, 2), (1, Reason.DUPLICATE_ID, 4), (3, Reason.UNSEEN_LABEL, -1)]
    assert keep_first_of_each_id(["d"], [(0, 0)], [""], {"neg": 0}, labelled=True)[2] == [(0, Reason.UNSEEN_LABEL, -1)]


def test_the_runner_shuffle_gives_the_same_output_as_spill_files(tmp_path):
    """``--shuffle runner`` is the path Dataflow takes (records through GroupByKey); run here, it
    must write byte for byte what the local default (spill files) writes."""
    corpus = _write_mixed_corpus(str(tmp_path))
    outputs = {}
    for shuffle in ("disk", "runner"):
        out = tmp_path / f"out-{shuffle}"
        manifest = preprocess.run([*corpus["argv"], "--output_dir", str(out), "--tokenizer", tokenizer_path(),
                                   "--num_shards", "3", "--shuffle", shuffle])
        assert manifest["options"]["shuffle"] == shuffle
        run = out / manifest["run"]
        outputs[shuffle] = {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    assert outputs["disk"] == outputs["runner"] and len(outputs["disk"]) == 6


def test_shuffle_options_are_checked(tmp_path):
    corpus = _write_mixed_corpus(str(tmp_path))
    base = [*corpus["argv"], "--output_dir", str(tmp_path / "out"), "--tokenizer", tokenizer_path()]
    with pytest.raises(ValueError, match="--spill_dir must be a folder on this machine, got gs://b/spill"):
        preprocess.run([*base, "--spill_dir", "gs://b/spill"])
    with pytest.raises(ValueError, match="--rows_per_shard is gone: .* Use --num_shards N, or --shard_size_mb"):
        preprocess.run([*base, "--rows_per_shard", "100"])
    assert not (tmp_path / "out").exists()


def test_ctrl_c_while_waiting_for_a_remote_job_leaves_its_folder(tmp_path, capsys, monkeypatch):
    """A Dataflow job runs on when the command stops waiting: its run folder is not deleted, and
    the message says where the job is; a local run's folder is."""
    class Interrupted:
        state = "RUNNING"

        def wait_until_finish(self):
            raise KeyboardInterrupt

    for job_id in ("2026-11-29_job", None):
        run_dir = tmp_path / f"run-{job_id}"
        run_dir.mkdir()
        job = preprocess.PreprocessJob(Interrupted(), str(tmp_path), "DataflowRunner", str(run_dir), None, job_id,
                                       "https://console/job" if job_id else None)
        with pytest.raises(KeyboardInterrupt):
            job.wait()
        assert run_dir.exists() == bool(job_id)
    monkeypatch.setattr(preprocess, "submit", lambda argv: preprocess.PreprocessJob(
        Interrupted(), str(tmp_path), "DataflowRunner", str(tmp_path / "run-x"), None, "2026-11-29_job", "https://console/job"))
    assert preprocess.main(["--output_dir", str(tmp_path)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[:2] == ["submitted DataflowRunner job 2026-11-29_job; waiting for it to finish (Ctrl-C stops waiting, not the job).",
                       "follow it at https://console/job"]  # what it waits for, and where to follow it
    assert err[-1] == (
        f"interrupted: stopped waiting; DataflowRunner job 2026-11-29_job runs on and commits {tmp_path}/manifest.json "
        "when done (cancel it at https://console/job)"
    )
