"""Corrupt or foreign shards and hand-edited manifests (hardening issue).

A real prep dir (``beam_pipelines.preprocess`` on the topic corpus of tests/trainer_helpers.py,
6 shards per split) is copied and damaged once per case. Without
``--skip_bad_shards`` the trainer must stop before its first step (no checkpoint, no TensorBoard
run, no model) with a ValueError naming the file and the problem; a row group found corrupt only
when it is decoded must stop the run with the file and the row group named, also from a
DataLoader worker. With ``--skip_bad_shards`` training finishes without the bad rows, and the
counts and files are in eval_results.json and run_config.json.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gcs_emulator import GcsEmulator, gcs_emulator_fixtures
from trainer_helpers import (  # noqa: F401  (prep and tiny_model are fixtures)
    REPO_ROOT,
    prep,
    read_trace,
    run_task_subprocess,
    subprocess_env,
    task_argv,
    tiny_model,
)

gcs_emulator_server, gcs = gcs_emulator_fixtures()

SHARD = "train-00002-of-00006.parquet"  # 15 rows, one row group (in the run folder the manifest names)
SKIP_HINT = "; re-run beam_pipelines.preprocess, or pass --skip_bad_shards to skip it"


# --------------------------------------------------------------------------- damage helpers
def _at(data_dir: Path, name: str) -> Path:
    """A shard's path: in the run folder that ``data_dir``'s manifest names."""
    return Path(data_dir) / json.loads((Path(data_dir) / "manifest.json").read_text())["run"] / name


def _listed(name: str) -> Callable[[dict[str, Any]], str]:
    """The manifest's name of a shard (run folder included), for edits made once the manifest is read."""
    return lambda manifest: f"{manifest['run']}/{name}"


def _copy_prep(prep: dict[str, Any], tmp_path: Path, name: str = "prep") -> Path:
    target = tmp_path / name
    shutil.copytree(prep["data_dir"], target)
    return target


def _edit_manifest(data_dir: Path, edit: Callable[[dict[str, Any]], Any]) -> None:
    path = data_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def _rewrite(path: Path, change: Callable[[pa.Table], pa.Table], **options: Any) -> pa.Table:
    table = change(pq.read_table(path))
    pq.write_table(table, path, compression="zstd", **options)
    return table


def _split_row_groups(data_dir: Path, name: str, rows_per_group: int = 5) -> int:
    """Rewrite one shard with small row groups (same rows) and update the manifest; return the count."""
    _rewrite(_at(data_dir, name), lambda table: table, row_group_size=rows_per_group)
    groups = pq.ParquetFile(_at(data_dir, name)).metadata.num_row_groups
    split = name.split("-")[0]

    def update(manifest: dict[str, Any]) -> None:
        for entry in manifest["splits"][split]["files"]:
            if entry["name"].rsplit("/", 1)[-1] == name:
                entry["row_groups"] = groups

    _edit_manifest(data_dir, update)
    return groups


def _corrupt_data_page(path: Path, row_group: int, column: str = "input_ids_a") -> None:
    """Flip bytes inside the compressed data of one column chunk (footer and other groups intact)."""
    metadata = pq.ParquetFile(path).metadata
    chunk = next(
        metadata.row_group(row_group).column(i)
        for i in range(metadata.num_columns)
        if metadata.row_group(row_group).column(i).path_in_schema.startswith(column)
    )
    begin = chunk.dictionary_page_offset or chunk.data_page_offset
    data = bytearray(path.read_bytes())
    for offset in range(begin + 30, begin + chunk.total_compressed_size - 4, 7):
        data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _ids(path: Path) -> list[str]:
    return pq.read_table(path, columns=["id"]).column("id").to_pylist()


def _ids_of_row_group(path: Path, row_group: int, prep_dir: str, rows_per_group: int = 5) -> list[str]:
    """The ids of one row group of a shard rewritten by ``_split_row_groups``, read from the intact original."""
    ids = _ids(_at(Path(prep_dir), path.name))
    return ids[row_group * rows_per_group : (row_group + 1) * rows_per_group]


def _rows(prep: dict[str, Any], name: str) -> int:
    """A shard's row count in the manifest of the intact prep dir."""
    split = name.split("-")[0]
    return next(entry["rows"] for entry in prep["manifest"]["splits"][split]["files"] if entry["name"].rsplit("/", 1)[-1] == name)


def _assert_no_step(out: Path) -> None:
    """The run stopped in set-up: no checkpoint, no TensorBoard run, no model, no results."""
    assert not (out / "checkpoints").exists()
    assert not (out / "runs").exists()
    assert not (out / "model.safetensors").exists()
    assert not (out / "eval_results.json").exists()


def _run_fails(argv: list[str]) -> str:
    from trainer.task import run

    with pytest.raises(ValueError) as error:
        run(argv)
    return str(error.value)


# --------------------------------------------------------------------------- bad shard files
def _truncate(path: Path) -> str:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return f"truncated Parquet file: it starts like Parquet but has no footer ({len(data) // 2} bytes; an interrupted copy or write?)"


def _csv(path: Path) -> str:
    path.write_text("id,label,text\n1,0,hello\n")
    return "not a Parquet file: it starts with b'id,label,text\\n1,', not with PAR1"


def _random_bytes(path: Path) -> str:
    data = np.random.default_rng(0).bytes(3000)
    path.write_bytes(data)
    return f"not a Parquet file: it starts with {data[:16]!r}, not with PAR1"


def _empty(path: Path) -> str:
    path.write_bytes(b"")
    return "empty file (0 bytes), not a Parquet shard"


def _columns(table: pa.Table) -> str:
    return ", ".join(table.column_names)


def _missing_column(path: Path) -> str:
    table = _rewrite(path, lambda t: t.drop_columns(["input_ids_b"]))
    return f"foreign schema, not a spanwise shard: missing column 'input_ids_b' (it has columns {_columns(table)})"


def _renamed_column(path: Path) -> str:
    table = _rewrite(path, lambda t: t.rename_columns(["doc_id" if n == "id" else n for n in t.column_names]))
    return f"foreign schema, not a spanwise shard: missing column 'id' (it has columns {_columns(table)})"


def _label_as_string(path: Path) -> str:
    def change(t: pa.Table) -> pa.Table:
        return t.set_column(t.column_names.index("label"), "label", pa.array([str(x) for x in t.column("label").to_pylist()]))

    table = _rewrite(path, change)
    return f"foreign schema, not a spanwise shard: column 'label' is string, expected int64 (it has columns {_columns(table)})"


def _int64_token_ids(path: Path) -> str:
    def change(t: pa.Table) -> pa.Table:
        return t.set_column(t.column_names.index("input_ids_a"), "input_ids_a", t.column("input_ids_a").cast(pa.list_(pa.int64())))

    table = _rewrite(path, change)
    return (
        "foreign schema, not a spanwise shard: column 'input_ids_a' is list<element: int64>, expected list<item: int32> "
        f"(it has columns {_columns(table)})"
    )


def _label_out_of_range(path: Path) -> str:
    _rewrite(path, lambda t: t.set_column(1, "label", pa.array([1] * (t.num_rows - 1) + [7], pa.int32())))
    return "row group 0: label 7 is out of range for the label_map of manifest.json (3 labels, indices 0..2)"


def _unlabelled_training_rows(path: Path) -> str:
    _rewrite(path, lambda t: t.set_column(1, "label", pa.array([-1] + [0] * (t.num_rows - 1), pa.int32())))
    return "row group 0: label -1 (no label) found, which a training split cannot have"


def _token_beyond_vocab(path: Path) -> str:
    _rewrite(path, lambda t: t.set_column(2, "input_ids_a", pa.array([[101, 99999]] * t.num_rows, pa.list_(pa.int32()))))
    return "row group 0: column 'input_ids_a' has token id 99999, beyond the tokenizer's vocabulary of 30522"


def _missing(path: Path) -> str:
    path.unlink()
    return "listed in manifest.json but missing"


def _more_rows_than_listed(path: Path) -> str:
    table = pq.read_table(path)
    pq.write_table(pa.concat_tables([table, table.slice(0, 2)]), path, compression="zstd")
    return f"holds {table.num_rows + 2} rows but manifest.json says {table.num_rows}"


@pytest.mark.parametrize(
    "damage",
    [
        _truncate, _csv, _random_bytes, _empty, _missing_column, _renamed_column, _label_as_string, _int64_token_ids,
        _label_out_of_range, _unlabelled_training_rows, _token_beyond_vocab, _missing, _more_rows_than_listed,
    ],
)
def test_bad_train_shard_stops_before_the_first_step(prep, tiny_model, tmp_path, damage):
    data_dir = _copy_prep(prep, tmp_path)
    problem = damage(_at(data_dir, SHARD))
    out = tmp_path / "out"
    message = _run_fails(task_argv(data_dir, tiny_model, out))
    assert message == f"{_at(data_dir, SHARD)}: {problem}{SKIP_HINT}"
    _assert_no_step(out)


def test_main_prints_the_message_and_exits_2(prep, tiny_model, tmp_path, capsys):
    from trainer.task import main

    data_dir = _copy_prep(prep, tmp_path)
    problem = _truncate(_at(data_dir, "dev-00001-of-00006.parquet"))
    assert main(task_argv(data_dir, tiny_model, tmp_path / "out")) == 2
    assert capsys.readouterr().err == f"error: {_at(data_dir, 'dev-00001-of-00006.parquet')}: {problem}{SKIP_HINT}\n"
    _assert_no_step(tmp_path / "out")


def test_every_bad_shard_is_named_in_one_message(prep, tiny_model, tmp_path):
    """A label map edited to lose a label: every shard holding that label is named."""
    data_dir = _copy_prep(prep, tmp_path)
    _edit_manifest(data_dir, lambda m: m.update(label_map={"food": 0, "sport": 1}))
    message = _run_fails(task_argv(data_dir, tiny_model, tmp_path / "out"))
    lines = message.splitlines()
    assert lines[0] == "6 bad shards in split 'train'; re-run beam_pipelines.preprocess, or pass --skip_bad_shards to skip them:"
    assert lines[1:] == [
        f"  {_at(data_dir, f'train-{i:05d}-of-00006.parquet')}: row group 0: label 2 is out of range for the label_map of "
        "manifest.json (2 labels, indices 0..1)"
        for i in range(6)
    ]
    # with the flag too: nothing would be left to train on
    message = _run_fails(task_argv(data_dir, tiny_model, tmp_path / "out", "--skip_bad_shards"))
    assert message.startswith("6 bad shards in split 'train'; every shard of split 'train' is bad, nothing left to read:\n")
    _assert_no_step(tmp_path / "out")


def test_a_shard_from_before_label_names_is_read_as_before(prep, tmp_path):
    """Shards written before the label names were added held int32 labels in required fields."""
    from schemas.manifest import read_manifest
    from trainer.shards import scan_split

    data_dir = _copy_prep(prep, tmp_path)
    old_schema = pa.schema([pa.field(f.name, pa.int32() if f.name == "label" else f.type, nullable=False)
                            for f in pq.read_schema(_at(data_dir, SHARD))])
    table = _rewrite(_at(data_dir, SHARD), lambda t: t.cast(old_schema).replace_schema_metadata(None))
    assert pq.read_schema(_at(data_dir, SHARD)).field("label").type == pa.int32()
    scan = scan_split(str(data_dir), read_manifest(str(data_dir)), "train")
    assert not scan.skipped and sum(unit.num_rows for unit in scan.units) == 90 and table.num_rows == _rows(prep, SHARD)


def test_unlisted_shard_is_ignored_with_a_warning(prep, tmp_path, caplog):
    from schemas.manifest import read_manifest
    from trainer.shards import scan_split

    data_dir = _copy_prep(prep, tmp_path)
    stray = _at(data_dir, "train-00006-of-00007.parquet")
    shutil.copy(_at(data_dir, SHARD), stray)
    with caplog.at_level(logging.WARNING, logger="trainer.data"):
        scan = scan_split(str(data_dir), read_manifest(str(data_dir)), "train")
    assert scan.unlisted == [str(stray)]
    assert sum(unit.num_rows for unit in scan.units) == 90  # the stray file's rows are not read
    assert f"{stray}: not listed in manifest.json; ignored (split 'train' has 6 listed shards)" in caplog.messages


# --------------------------------------------------------------------------- hand-edited manifests
def _set_file(index: int, **values: Any) -> Callable[[dict[str, Any]], None]:
    """Edit one train file entry; a callable value is given the manifest (run folder names)."""
    return lambda m: m["splits"]["train"]["files"][index].update(
        {key: value(m) if callable(value) else value for key, value in values.items()}
    )


MANIFEST_EDITS = [
    ("missing key", lambda m: m.pop("label_map"), "manifest lacks label_map"),
    ("split lacks files", lambda m: m["splits"]["train"].pop("files"), "split 'train' lacks 'files'"),
    ("files not a list", lambda m: m["splits"]["train"].update(files="train-*.parquet"),
     'splits.train.files must be a list of {name, rows} objects, got the string "train-*.parquet"'),
    ("rows a string", _set_file(0, rows="13"), 'splits.train.files[0].rows must be an integer >= 0, got "13"'),
    ("rows negative", _set_file(0, rows=-1), "splits.train.files[0].rows must be an integer >= 0, got -1"),
    ("name with a folder", _set_file(0, name="../prep/train-00000-of-00006.parquet"),
     "splits.train.files[0].name must be a file name in the manifest's folder or its run folder, "
     "got \"../prep/train-00000-of-00006.parquet\""),
    ("name in another folder", _set_file(0, name="run-x/../../train-00000-of-00006.parquet"),
     "splits.train.files[0].name must be a file name in the manifest's folder or its run folder, "
     "got \"run-x/../../train-00000-of-00006.parquet\""),
    ("name twice", _set_file(1, name=_listed("train-00000-of-00006.parquet")),
     "splits.train.files[1].name '{run}/train-00000-of-00006.parquet' is listed twice"),
    ("label_map values strings", lambda m: m.update(label_map={"food": "0", "sport": "1", "tech": "2"}),
     'label_map must map each label to a distinct index 0..N-1, got {"food": "0", "sport": "1", "tech": "2"}'),
    ("label_map a list", lambda m: m.update(label_map=["food", "sport", "tech"]),
     'label_map must map each label to a distinct index 0..N-1, got ["food", "sport", "tech"]'),
    ("splits a list", lambda m: m.update(splits=[]), "splits must be a JSON object (split name -> files and counts), got a list"),
    ("records a float", lambda m: m["splits"]["dev"].update(records=30.0), "splits.dev.records must be an integer >= 0, got 30.0"),
    ("tokenizer a string", lambda m: m.update(tokenizer="bert-base-uncased"),
     'tokenizer must be a JSON object, got the string "bert-base-uncased"'),
    ("file rows do not add up", lambda m: m["splits"]["train"]["files"][2].update(rows=m["splits"]["train"]["files"][2]["rows"] + 1000),
     "split 'train' file row counts do not add up to records 90 (they add up to 1090)"),
]


@pytest.mark.parametrize("edit, problem", [case[1:] for case in MANIFEST_EDITS], ids=[case[0] for case in MANIFEST_EDITS])
def test_hand_edited_manifest_is_refused(prep, tiny_model, tmp_path, edit, problem):
    data_dir = _copy_prep(prep, tmp_path)
    run = prep["manifest"]["run"]
    _edit_manifest(data_dir, edit)
    out = tmp_path / "out"
    assert _run_fails(task_argv(data_dir, tiny_model, out)) == f"{data_dir / 'manifest.json'}: {problem.replace('{run}', run)}"
    _assert_no_step(out)


def test_manifest_not_json(prep, tiny_model, tmp_path):
    data_dir = _copy_prep(prep, tmp_path)
    (data_dir / "manifest.json").write_text('{"schema_version": 1,')
    message = _run_fails(task_argv(data_dir, tiny_model, tmp_path / "out"))
    assert message.startswith(f"{data_dir / 'manifest.json'} is not valid JSON: ")
    _assert_no_step(tmp_path / "out")


def test_consistent_row_count_edit_is_caught_against_the_file(prep, tiny_model, tmp_path):
    """rows, records and read all raised by 5: the manifest adds up, the shard's footer does not."""
    data_dir = _copy_prep(prep, tmp_path)

    def edit(manifest: dict[str, Any]) -> None:
        info = manifest["splits"]["train"]
        info["files"][2]["rows"] += 5
        info["records"] += 5
        info["read"] += 5

    _edit_manifest(data_dir, edit)
    message = _run_fails(task_argv(data_dir, tiny_model, tmp_path / "out"))
    rows = _rows(prep, SHARD)
    assert message == f"{_at(data_dir, SHARD)}: holds {rows} rows but manifest.json says {rows + 5}{SKIP_HINT}"


# --------------------------------------------------------------------------- corruption found while reading
def test_corrupt_row_group_mid_training_from_a_worker(prep, tiny_model, tmp_path):
    """The footer is intact, a data page of row group 2 is not: the worker's error reaches the user as is."""
    data_dir = _copy_prep(prep, tmp_path)
    assert _split_row_groups(data_dir, SHARD) == 3
    _corrupt_data_page(_at(data_dir, SHARD), 2)
    out = tmp_path / "out"
    proc = run_task_subprocess(task_argv(data_dir, tiny_model, out, "--max_steps", "12", "--dataloader_num_workers", "2"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert error == (
        f"error: {_at(data_dir, SHARD)}, row group 2: cannot be decoded, the file is corrupt "
        "(OSError: ZSTD decompression failed: Data corruption detected); a run with --skip_bad_shards skips it"
    )
    assert "DataLoader worker" not in proc.stderr and "Traceback" not in proc.stderr


def test_skip_bad_shards_trains_on_the_rest_and_counts(prep, tiny_model, tmp_path):
    data_dir = _copy_prep(prep, tmp_path)
    truncated, foreign = _at(data_dir, "train-00000-of-00006.parquet"), _at(data_dir, "train-00004-of-00006.parquet")
    skipped_ids = set(_ids(truncated)) | set(_ids(foreign))
    truncated_problem, foreign_problem = _truncate(truncated), _missing_column(foreign)
    # a corrupt data page in row group 1 of a train shard and of a dev shard, found only when read
    dev_shard = max(prep["manifest"]["splits"]["dev"]["files"], key=lambda entry: entry["rows"])["name"].rsplit("/", 1)[1]
    corrupt_train, corrupt_dev = _at(data_dir, SHARD), _at(data_dir, dev_shard)
    for path, rows_per_group in ((corrupt_train, 5), (corrupt_dev, 2)):
        _split_row_groups(data_dir, path.name, rows_per_group)
        _corrupt_data_page(path, 1)
    skipped_ids |= set(_ids_of_row_group(corrupt_train, 1, prep["data_dir"]))
    skipped_dev = len(_ids_of_row_group(corrupt_dev, 1, prep["data_dir"], rows_per_group=2))
    stray = _at(data_dir, "train-00006-of-00007.parquet")
    shutil.copy(_at(Path(prep["data_dir"]), SHARD), stray)
    out, trace = tmp_path / "out", tmp_path / "trace.jsonl"
    from trainer.task import run

    results = run(task_argv(data_dir, tiny_model, out, "--skip_bad_shards", "--num_train_epochs", "2", "--sample_trace_file", str(trace)))

    trained = {doc for record in read_trace(trace) for doc in record["ids"]}
    all_train = {row[0] for row in prep["rows"]["train"]}
    truncated_rows, foreign_rows = _rows(prep, truncated.name), _rows(prep, foreign.name)
    assert trained == all_train - skipped_ids and len(skipped_ids) == truncated_rows + foreign_rows + 5
    page_problem = "cannot be decoded, the file is corrupt (OSError: ZSTD decompression failed: Data corruption detected)"
    expected = {
        "skip_bad_shards": True,
        "skipped_files": 2,
        "skipped_row_groups": 2,
        "skipped_rows": truncated_rows + foreign_rows + 5 + skipped_dev,
        "files": [
            {"split": "train", "path": str(truncated), "problem": truncated_problem, "rows": truncated_rows},
            {"split": "train", "path": str(foreign), "problem": foreign_problem, "rows": foreign_rows},
        ],
        "row_groups": [
            {"split": "dev", "path": str(corrupt_dev), "row_group": 1, "rows": skipped_dev, "problem": page_problem},
            {"split": "train", "path": str(corrupt_train), "row_group": 1, "rows": 5, "problem": page_problem},
        ],
        "unlisted_files": [str(stray)],
    }
    eval_results = json.loads((out / "eval_results.json").read_text())
    run_config = json.loads((out / "run_config.json").read_text())
    assert eval_results["data_problems"] == results["data_problems"] == expected
    assert run_config["data_problems"] == expected and run_config["args"]["skip_bad_shards"] is True
    assert eval_results["final"]["num_examples"] == 30 - skipped_dev  # the dev row group's documents are left out
    assert (out / "model.safetensors").exists()


def test_predict_checks_shards_up_front(prep, tiny_model, tmp_path):
    from trainer.predict import predict
    from trainer.task import run

    model = tmp_path / "model"
    run(task_argv(prep["data_dir"], tiny_model, model, "--max_steps", "1", "--eval_strategy", "no"))
    data_dir = _copy_prep(prep, tmp_path)
    bad = _at(data_dir, "test-00000-of-00006.parquet")
    problem = _csv(bad)
    argv = ["--model_dir", str(model), "--data_dir", str(data_dir), "--output", str(tmp_path / "p.jsonl"), "--use_cpu"]
    with pytest.raises(ValueError) as error:
        predict(argv)
    assert str(error.value) == f"{bad}: {problem}{SKIP_HINT}"
    assert not (tmp_path / "p.jsonl").exists()
    summary = predict([*argv, "--skip_bad_shards"])
    rows = 30 - _rows(prep, bad.name)
    assert summary["documents"] == rows and summary["skipped"]["files"] == 1
    assert summary["skipped"]["details"] == [{"path": str(bad), "problem": problem, "rows": _rows(prep, bad.name)}]
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == rows


# --------------------------------------------------------------------------- two ranks
def _torchrun(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "trainer.task", *argv],
        cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=240,
    )


def test_two_ranks_stop_together_with_the_same_message(prep, tiny_model, tmp_path):
    """Rank 0 checks the shards and broadcasts the verdict: rank 1 does not hang, it fails with it."""
    data_dir = _copy_prep(prep, tmp_path)
    problem = _missing(_at(data_dir, SHARD))
    out = tmp_path / "out"
    proc = _torchrun(task_argv(data_dir, tiny_model, out))
    assert proc.returncode != 0
    expected = f"error: {_at(data_dir, SHARD)}: {problem}{SKIP_HINT}"
    assert proc.stderr.count(expected) == 2, proc.stderr[-3000:]  # one line per rank
    _assert_no_step(out)


def test_two_ranks_skip_the_same_units_and_stay_in_step(prep, tiny_model, tmp_path):
    """A skipped shard plus a corrupt row group that leaves whole batches empty on one rank (batch 2,
    shuffle buffer 2): that rank still joins every gradient all-reduce, and no skipped row is trained."""
    data_dir = _copy_prep(prep, tmp_path)
    truncated = _at(data_dir, "train-00000-of-00006.parquet")
    skipped_ids = set(_ids(truncated))
    _truncate(truncated)
    _split_row_groups(data_dir, SHARD)
    _corrupt_data_page(_at(data_dir, SHARD), 1)
    skipped_ids |= set(_ids_of_row_group(_at(data_dir, SHARD), 1, prep["data_dir"]))
    out, trace = tmp_path / "out", tmp_path / "trace.jsonl"
    argv = task_argv(
        data_dir, tiny_model, out, "--skip_bad_shards", "--per_device_train_batch_size", "2", "--shuffle_buffer", "2",
        "--num_train_epochs", "1", "--sample_trace_file", str(trace),
    )
    proc = _torchrun(argv)
    assert proc.returncode == 0, proc.stderr[-3000:]
    traces = [read_trace(tmp_path / f"trace.rank{rank}.jsonl") for rank in (0, 1)]
    keys = [[record["batch"] for record in records] for records in traces]
    assert keys[0] == keys[1]  # same number of batches (and steps) on both ranks
    assert any(not record["ids"] for records in traces for record in records)  # an empty batch happened
    trained = {doc for records in traces for record in records for doc in record["ids"]}
    assert trained == {row[0] for row in prep["rows"]["train"]} - skipped_ids
    problems = json.loads((out / "eval_results.json").read_text())["data_problems"]
    assert (problems["skipped_files"], problems["skipped_row_groups"]) == (1, 1)
    assert problems["skipped_rows"] == _rows(prep, truncated.name) + 5
    assert [record["path"] for record in problems["files"] + problems["row_groups"]] == [str(truncated), str(_at(data_dir, SHARD))]


# --------------------------------------------------------------------------- gs://

def test_bad_shards_in_gcs_are_named_by_url(gcs: GcsEmulator, prep, tmp_path, monkeypatch):  # noqa: F811
    import spanwise_io
    from schemas.manifest import read_manifest
    from trainer.shards import scan_split

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    data_dir = _copy_prep(prep, tmp_path)
    truncated_problem = _truncate(_at(data_dir, "train-00000-of-00006.parquet"))
    _missing(_at(data_dir, SHARD))
    shutil.copy(_at(Path(prep["data_dir"]), SHARD), _at(data_dir, "train-00006-of-00007.parquet"))
    url = gcs.url("prep")
    spanwise_io.upload_dir(str(data_dir), url)
    manifest = read_manifest(url)
    run = manifest["run"]
    truncated_url, missing_url = f"{url}/{run}/train-00000-of-00006.parquet", f"{url}/{run}/{SHARD}"
    with pytest.raises(ValueError) as error:
        scan_split(url, manifest, "train")
    assert str(error.value) == (
        "2 bad shards in split 'train'; re-run beam_pipelines.preprocess, or pass --skip_bad_shards to skip them:\n"
        f"  {truncated_url}: {truncated_problem}\n"
        f"  {missing_url}: listed in manifest.json but missing"
    )
    scan = scan_split(url, manifest, "train", skip_bad_shards=True)
    assert [problem.path for problem in scan.skipped] == [truncated_url, missing_url]
    assert scan.unlisted == [f"{url}/{run}/train-00006-of-00007.parquet"]
    assert sum(unit.num_rows for unit in scan.units) == 90 - _rows(prep, SHARD) - _rows(prep, "train-00000-of-00006.parquet")
