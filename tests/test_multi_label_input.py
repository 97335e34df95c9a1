"""Multi-label corpora in (issue 20, the input side): ``--multi_label`` and ``--label_separator``.

Reader level (no Beam): each format's label cells read as sets (TSV in the GLUE layout, CSV
with a header, JSON Lines, Parquet list<string> and a ``datasets`` ``Sequence(ClassLabel)``),
separators, outer spaces, duplicates inside one cell kept once, empty sets and unlabelled test
rows told apart, wrong types; a list of several labels read without the flag is rejected with a
detail naming it. Pipeline level (the local runner, as ``tests/test_pipeline.py``): the shards'
``labels`` read back with pyarrow and ``datasets``, the manifest's ``problem_type``,
``label_counts`` and label-set counts exact on small known corpora, an unseen dev label
rejected (``unseen_label``), read = written + rejected, the flag errors, and the paired BBC
corpus (``beam_pipelines.datasets bbc --paired``) read directly.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_pipelines import preprocess
from corpora.readers import TaskCounts, format_of, inspect_file, plan_tasks, read_task
from pipeline_helpers import read_manifest_json, read_rejected, read_split, shard_names, tokenizer_path
from schemas.columns import ColumnSpec
from schemas.manifest import format_stats
from schemas.rows import Reason, Rejection, Row, split_label_cell
from schemas.shard import MULTI_LABEL, label_column_of, label_names_of

FLAG = "pass --multi_label to read a cell as a set of labels"


def _read(path: Path, split: str = "train", separator: str | None = "|", names: tuple[str, ...] = (),
          spec: ColumnSpec = ColumnSpec()) -> tuple[list[Row | Rejection], TaskCounts]:
    """Every row and rejection of one file, read as ``--multi_label`` does (``separator`` None: without it)."""
    file = inspect_file(split, 0, str(path), path.name, os.path.getsize(path), format_of(str(path), None), spec,
                        names, separator)
    items: list[Row | Rejection] = []
    counts = TaskCounts()
    for task in plan_tasks(file, 1 << 30):
        items.extend(read_task(task, counts))
    return items, counts


def _sets(items) -> dict[str, tuple[str, ...] | None]:
    return {item.id: item.labels for item in items if isinstance(item, Row)}


def _rejections(items) -> list[tuple[int | None, str, str]]:
    return [(item.line, item.reason, item.detail) for item in items if isinstance(item, Rejection)]


def _hf_parquet(path: Path, ids: list[str], label_sets: list[list[int]], names: list[str]) -> None:
    """A corpus as ``datasets.Dataset.to_parquet()`` writes a ``Sequence(ClassLabel(names))`` label column."""
    import datasets

    features = datasets.Features({"id": datasets.Value("string"), "text": datasets.Value("string"),
                                  "labels": datasets.Sequence(datasets.ClassLabel(names=names))})
    datasets.Dataset.from_dict({"id": ids, "text": [f"the text of {i}" for i in ids], "labels": label_sets},
                               features=features).to_parquet(str(path))


# --------------------------------------------------------------------------- readers


def test_split_label_cell_strips_drops_empty_pieces_and_keeps_each_label_once():
    assert split_label_cell(" tech | sport|tech ", "|") == ("sport", "tech")
    assert split_label_cell("a||b|", "|") == ("a", "b")
    assert split_label_cell("", "|") == split_label_cell("|", "|") == split_label_cell(" | ", "|") == ()
    assert split_label_cell("Science Fiction; Fantasy", ";") == ("Fantasy", "Science Fiction")
    assert split_label_cell("a|b", ";") == ("a|b",)  # another separator: one label


def test_tsv_glue_layout_label_sets(tmp_path):
    lines = ["t1\ta\tsport|tech\tone", "t2\ta\t tech | sport|tech\ttwo", "t3\ta\t\tthree", "t4\ta\t|\tfour",
             "t5\ta\tpolitics\tfive", "t6\ta\tsport"]
    (tmp_path / "train.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    items, counts = _read(tmp_path / "train.tsv")
    assert _sets(items) == {"t1": ("sport", "tech"), "t2": ("sport", "tech"), "t3": (), "t4": (), "t5": ("politics",)}
    assert [(line, reason) for line, reason, _ in _rejections(items)] == [(6, Reason.WRONG_FIELD_COUNT)]
    assert counts.lines == len(lines)  # read = rows + rejected
    # the row as read for a later rejection (duplicate ID, unseen label) is the line itself
    (t2,) = [r for r in items if isinstance(r, Row) and r.id == "t2"]
    assert t2.line_as_read() == lines[1] and t2.label == "tech | sport|tech"
    # test: an empty cell is an unlabelled row; the separator alone is the empty set
    (tmp_path / "test.tsv").write_text("x1\ta\t\tone\nx2\ta\t|\ttwo\nx3\ta\t b \tthree\n", encoding="utf-8")
    assert _sets(_read(tmp_path / "test.tsv", "test")[0]) == {"x1": None, "x2": (), "x3": ("b",)}


def test_tsv_without_multi_label_keeps_a_separator_inside_the_label(tmp_path):
    (tmp_path / "train.tsv").write_text("t1\ta\tsport|tech\tone\nt2\ta\t\ttwo\n", encoding="utf-8")
    items, _ = _read(tmp_path / "train.tsv", separator=None)
    (row,) = [r for r in items if isinstance(r, Row)]
    assert (row.label, row.labels) == ("sport|tech", None)
    assert _rejections(items) == [(2, Reason.MISSING_LABEL, "LABEL is empty; every train row needs one")]


def test_csv_with_header_label_sets_and_another_separator(tmp_path):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerows([["id", "text", "label"], ["c1", "a text, with a comma", "Fantasy; Science Fiction"],
                      ["c2", "two", ""], ["c3", "three", "Fantasy;Fantasy"], ["c4", "four", "a|b"]])
    path = tmp_path / "train.csv"
    path.write_text(buffer.getvalue(), encoding="utf-8")
    items, counts = _read(path, separator=";")
    assert _sets(items) == {"c1": ("Fantasy", "Science Fiction"), "c2": (), "c3": ("Fantasy",), "c4": ("a|b",)}
    assert counts.lines - counts.headers == 4
    test = tmp_path / "test.csv"
    test.write_text("id,text,label\nx1,one,\nx2,two,;\nx3,three,b;a\n", encoding="utf-8")
    assert _sets(_read(test, "test", separator=";")[0]) == {"x1": None, "x2": (), "x3": ("a", "b")}


def test_jsonl_lists_strings_integers_null_and_wrong_types(tmp_path):
    objects = [
        {"id": "j1", "text": "one", "label": ["tech", " sport", "tech"]},
        {"id": "j2", "text": "two", "label": []},
        {"id": "j3", "text": "three", "label": None},
        {"id": "j4", "text": "four"},
        {"id": "j5", "text": "five", "label": "tech|politics"},
        {"id": "j6", "text": "six", "label": 3},
        {"id": "j7", "text": "seven", "label": [1, "2", 1]},
        {"id": "j8", "text": "eight", "label": ["tech", 1.5]},
        {"id": "j9", "text": "nine", "label": {"a": 1}},
        {"id": "j10", "text": "ten", "label": ["tech", None]},
        {"id": "j11", "text": "eleven", "label": ["tech", True]},
        {"id": "j12", "text": "twelve", "label": ["", " "]},
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(o) + "\n" for o in objects), encoding="utf-8")
    items, counts = _read(path)
    assert _sets(items) == {"j1": ("sport", "tech"), "j2": (), "j5": ("politics", "tech"), "j6": ("3",),
                            "j7": ("1", "2"), "j12": ()}
    assert _rejections(items) == [
        (3, Reason.MISSING_LABEL, "the label set is null; every train row needs one (an empty list for a document without labels)"),
        (4, Reason.MISSING_FIELD, "no 'label' (label column)"),
        (8, Reason.WRONG_TYPE, "'label' (label column) holds a list with a float item: '1.5'; the labels of a set are strings or integers"),
        (9, Reason.WRONG_TYPE, "'label' (label column) holds a dict: \"{'a': 1}\"; a label set is a list, a string or an integer"),
        (10, Reason.WRONG_TYPE, "'label' (label column) holds a list with a NoneType item: 'None'; the labels of a set are strings or integers"),
        (11, Reason.WRONG_TYPE, "'label' (label column) holds a list with a bool item: 'True'; the labels of a set are strings or integers"),
    ]
    assert counts.lines == len(objects)
    # test: null and a missing key are unlabelled, [] is the empty set
    test = tmp_path / "test.jsonl"
    test.write_text('{"id": "x1", "text": "a", "label": null}\n{"id": "x2", "text": "b"}\n'
                    '{"id": "x3", "text": "c", "label": []}\n{"id": "x4", "text": "d", "label": ""}\n', encoding="utf-8")
    assert _sets(_read(test, "test")[0]) == {"x1": None, "x2": None, "x3": (), "x4": None}


def test_label_names_name_the_integers_of_a_set(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a", "label": [2, 0, "tech"]}\n{"text": "b", "label": [1, 7]}\n{"text": "c", "label": "1|0"}\n',
                    encoding="utf-8")
    items, _ = _read(path, names=("tech", "business", "sport"))
    assert [r.labels for r in items if isinstance(r, Row)] == [("sport", "tech"), ("business", "tech")]
    assert _rejections(items) == [(2, Reason.UNNAMED_LABEL, "label 7 has no name: the label names are 3 (0..2)")]


def test_parquet_list_of_strings_string_and_integer_columns(tmp_path):
    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({
        "id": ["p0", "p1", "p2", "p3"],
        "text": ["zero", "one", "two", "three"],
        "label": pa.array([["b", "a", "b"], [], None, [" c "]], type=pa.list_(pa.string())),
    }), path)
    items, counts = _read(path)
    assert _sets(items) == {"p0": ("a", "b"), "p1": (), "p3": ("c",)}
    assert [(r.offset, r.reason) for r in items if isinstance(r, Rejection)] == [(2, Reason.MISSING_LABEL)]
    assert counts.lines == 4
    strings = tmp_path / "strings.parquet"
    pq.write_table(pa.table({"text": ["x", "y"], "label": ["a|b", "c"]}), strings)
    assert [r.labels for r in _read(strings)[0]] == [("a", "b"), ("c",)]
    integers = tmp_path / "integers.parquet"
    pq.write_table(pa.table({"text": ["x", "y"], "label": pa.array([[3, 1], [2]], type=pa.list_(pa.int64()))}), integers)
    assert [r.labels for r in _read(integers)[0]] == [("1", "3"), ("2",)]
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"text": ["x"], "label": pa.array([[1.5]], type=pa.list_(pa.float64()))}), bad)
    with pytest.raises(ValueError, match=r"bad\.parquet: column 'label': an label column must hold strings or integers"):
        _read(bad)


def test_parquet_sequence_of_class_label_gets_its_names(tmp_path):
    path = tmp_path / "train.parquet"
    _hf_parquet(path, ["h0", "h1", "h2", "h3"], [[0, 1], [2], [], [1, 1]], ["tech", "sport", "food"])
    assert _sets(_read(path)[0]) == {"h0": ("sport", "tech"), "h1": ("food",), "h2": (), "h3": ("sport",)}


def test_a_list_of_labels_without_multi_label_is_rejected_naming_the_flag(tmp_path):
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text('{"id": "j1", "text": "a", "label": ["pos", "neg"]}\n{"id": "j2", "text": "b", "label": []}\n'
                     '{"id": "j3", "text": "c", "label": ["neg"]}\n{"id": "j4", "text": "d", "label": "pos|neg"}\n',
                     encoding="utf-8")
    items, counts = _read(jsonl, separator=None)
    # one label in a list is one label, as before label sets; a separator is part of a single label
    assert [(r.id, r.label, r.labels) for r in items if isinstance(r, Row)] == [("j3", "neg", None), ("j4", "pos|neg", None)]
    assert _rejections(items) == [
        (1, Reason.WRONG_TYPE, f"'label' (label column) holds 2 labels; a document has one label here ({FLAG})"),
        (2, Reason.WRONG_TYPE, f"'label' (label column) holds 0 labels; a document has one label here ({FLAG})"),
    ]
    assert counts.lines == 4
    parquet = tmp_path / "train.parquet"
    _hf_parquet(parquet, ["h0", "h1"], [[0, 1], [1]], ["tech", "sport"])
    items, _ = _read(parquet, separator=None, spec=ColumnSpec(label="labels"))
    assert [(r.id, r.label) for r in items if isinstance(r, Row)] == [("h1", "sport")]
    assert [(r.offset, r.reason, r.detail) for r in items if isinstance(r, Rejection)] == [
        (0, Reason.WRONG_TYPE, f"'labels' (label column) holds 2 labels; a document has one label here ({FLAG})")]


# --------------------------------------------------------------------------- the pipeline


def _argv(out: Path, *extra: str) -> list[str]:
    return ["--output_dir", str(out), "--tokenizer", tokenizer_path(), "--quiet", *extra]


def _written(out: Path, split: str) -> dict[str, list[int] | None]:
    return {row["id"]: row["labels"] for row in read_split(str(out), split)}


@pytest.fixture(scope="module")
def tsv_corpus(tmp_path_factory) -> dict:
    """The GLUE layout, with --multi_label: sets, spaces, duplicates, empty sets, an unseen dev label."""
    root = tmp_path_factory.mktemp("multi_tsv")
    data = root / "data"
    data.mkdir()
    splits = {
        "train": ["t1\ta\tsport|tech\tthe match was played", "t2\ta\t tech | sport|tech\ta new phone for the team",
                  "t3\ta\t\tnothing to say here", "t4\ta\tpolitics\tthe vote in parliament",
                  "t5\ta\tsport||\tthe final score", "t6\ta\tsport"],
        "dev": ["d1\ta\ttech\ta chip", "d2\ta\ttech|weather\tsun and a laptop", "d3\ta\t\tnothing", "d4\ta\t|\tstill nothing"],
        "test": ["x1\ta\t\tunlabelled text", "x2\ta\t|\tan empty set", "x3\ta\tpolitics|sport\tthe minister ran",
                 "x4\ta\tsnow\tcold"],
    }
    for split, lines in splits.items():
        (data / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = root / "prep"
    manifest = preprocess.run(_argv(out, "--data_dir", str(data), "--multi_label", "--num_shards", "2"))
    return {"out": out, "manifest": manifest}


def test_tsv_corpus_shards_hold_the_label_index_lists(tsv_corpus):
    out, manifest = tsv_corpus["out"], tsv_corpus["manifest"]
    assert manifest["label_map"] == {"politics": 0, "sport": 1, "tech": 2}
    assert _written(out, "train") == {"t1": [1, 2], "t2": [1, 2], "t3": [], "t4": [0], "t5": [1]}
    assert _written(out, "dev") == {"d1": [2], "d3": [], "d4": []}
    assert _written(out, "test") == {"x1": None, "x2": [], "x3": [0, 1]}
    for name in shard_names(str(out)):
        schema = pq.read_schema(out / name)
        assert label_column_of(schema) == "labels" and "label" not in schema.names
        assert schema.field("labels").type == pa.list_(pa.int64())
        assert label_names_of(schema) == ["politics", "sport", "tech"]
        assert json.loads(schema.metadata[b"spanwise"])["problem_type"] == MULTI_LABEL


def test_tsv_corpus_unseen_labels_are_rejected_and_rows_add_up(tsv_corpus):
    out, manifest = tsv_corpus["out"], tsv_corpus["manifest"]
    assert [(r["line"], r["reason"], r["detail"]) for r in read_rejected(str(out), "dev")] == [
        (2, Reason.UNSEEN_LABEL, "label 'weather' of the set ['tech', 'weather'] does not occur in train (3 labels)")]
    assert [(r["line"], r["reason"], r["raw"]) for r in read_rejected(str(out), "test")] == [
        (4, Reason.UNSEEN_LABEL, "x4\ta\tsnow\tcold")]
    assert [(r["line"], r["reason"]) for r in read_rejected(str(out), "train")] == [(6, Reason.WRONG_FIELD_COUNT)]
    for split, (read, written) in {"train": (6, 5), "dev": (4, 3), "test": (4, 3)}.items():
        info = manifest["splits"][split]
        assert (info["read"], info["records"], info["rejected"]) == (read, written, read - written), split


def test_tsv_corpus_manifest_problem_type_and_label_counts(tsv_corpus):
    manifest = tsv_corpus["manifest"]
    assert manifest["problem_type"] == MULTI_LABEL
    assert manifest["options"]["multi_label"] is True and manifest["options"]["label_separator"] == "|"
    assert manifest["label_counts"] == {"politics": 1, "sport": 3, "tech": 2}
    splits = manifest["splits"]
    assert {split: (info["label_set_sizes"], info["empty_label_sets"], info["unlabelled"]) for split, info in splits.items()} == {
        "train": ({"0": 1, "1": 2, "2": 2}, 1, 0),
        "dev": ({"0": 2, "1": 1}, 2, 0),
        "test": ({"0": 1, "2": 1}, 1, 1),
    }
    assert splits["dev"]["label_counts"] == {"politics": 0, "sport": 0, "tech": 1}
    assert splits["test"]["label_counts"] == {"politics": 1, "sport": 1, "tech": 0}
    stats = format_stats(manifest).splitlines()
    assert stats[0] == "labels (3, a set per document: multi_label_classification): politics, sport, tech"
    assert stats[1] == "train documents per label: sport 3, tech 2, politics 1"
    assert "       labels per document: 0:1 1:2 2:2 (empty sets 1)" in stats
    assert "       labels per document: 0:1 2:1 (empty sets 1); unlabelled 1" in stats


def test_tsv_corpus_shards_load_in_datasets_as_sequences_of_class_labels(tsv_corpus):
    import datasets

    out = tsv_corpus["out"]
    files = [str(out / name) for name in shard_names(str(out), "test")]
    loaded = datasets.load_dataset("parquet", data_files=files, split="train")
    assert loaded.features["labels"] == datasets.Sequence(datasets.ClassLabel(names=["politics", "sport", "tech"]))
    assert dict(zip(loaded["id"], loaded["labels"])) == {"x1": None, "x2": [], "x3": [0, 1]}
    train = datasets.load_dataset("parquet", data_files=[str(out / n) for n in shard_names(str(out), "train")], split="train")
    names = train.features["labels"].feature.names
    assert {row["id"]: [names[i] for i in row["labels"]] for row in train} == {
        "t1": ["sport", "tech"], "t2": ["sport", "tech"], "t3": [], "t4": ["politics"], "t5": ["sport"]}


@pytest.fixture(scope="module")
def mixed_corpus(tmp_path_factory) -> dict:
    """Train in Parquet (a datasets Sequence(ClassLabel) file and a list<string> file), dev in JSON
    Lines, test in CSV with a header; --multi_label."""
    root = tmp_path_factory.mktemp("multi_mixed")
    _hf_parquet(root / "train-a.parquet", ["h0", "h1", "h2", "h3"], [[0, 1], [2], [], [1, 1]], ["tech", "sport", "food"])
    pq.write_table(pa.table({"id": ["b1", "b2", "b3"], "text": ["bread and jam", "an app for recipes", "no label"],
                             "labels": pa.array([["food"], ["tech", "food "], None], type=pa.list_(pa.string()))}),
                   root / "train-b.parquet")
    (root / "dev.jsonl").write_text("".join(json.dumps(o) + "\n" for o in [
        {"id": "d1", "text": "a chip in a cake", "labels": ["food", "tech"]},
        {"id": "d2", "text": "nothing here", "labels": []},
        {"id": "d3", "text": "null labels", "labels": None},
        {"id": "d4", "text": "the team's phones", "labels": ["tech", "tech", " sport "]},
        {"id": "d5", "text": "rain", "labels": ["weather", "food"]},
    ]), encoding="utf-8")
    (root / "test.csv").write_text('id,text,labels\nx1,"soup, bread and a ball",food|sport\nx2,unlabelled,\nx3,empty,|\n',
                                   encoding="utf-8")
    out = root / "prep"
    manifest = preprocess.run(_argv(out, "--train_files", str(root / "train-*.parquet"), "--dev_files", str(root / "dev.jsonl"),
                                    "--test_files", str(root / "test.csv"), "--multi_label"))
    return {"out": out, "manifest": manifest}


def test_mixed_corpus_every_format_reads_label_sets(mixed_corpus):
    out, manifest = mixed_corpus["out"], mixed_corpus["manifest"]
    assert manifest["label_map"] == {"food": 0, "sport": 1, "tech": 2}
    assert _written(out, "train") == {"h0": [1, 2], "h1": [0], "h2": [], "h3": [1], "b1": [0], "b2": [0, 2]}
    assert _written(out, "dev") == {"d1": [0, 2], "d2": [], "d4": [1, 2]}
    assert _written(out, "test") == {"x1": [0, 1], "x2": None, "x3": []}
    assert manifest["label_counts"] == {"food": 3, "sport": 2, "tech": 2}
    assert manifest["splits"]["train"]["label_set_sizes"] == {"0": 1, "1": 3, "2": 2}
    assert sorted((r["reason"], r["detail"]) for split in ("train", "dev") for r in read_rejected(str(out), split)) == [
        (Reason.MISSING_LABEL, "the label set is null; every dev row needs one (an empty list for a document without labels)"),
        (Reason.MISSING_LABEL, "the label set is null; every train row needs one (an empty list for a document without labels)"),
        (Reason.UNSEEN_LABEL, "label 'weather' of the set ['food', 'weather'] does not occur in train (3 labels)"),
    ]
    for split, (read, written) in {"train": (7, 6), "dev": (5, 3), "test": (3, 3)}.items():
        info = manifest["splits"][split]
        assert (info["read"], info["records"], info["rejected"]) == (read, written, read - written), split


def test_a_hand_edited_label_set_count_is_refused(tsv_corpus):
    from schemas.manifest import validate_manifest

    manifest = json.loads(json.dumps(tsv_corpus["manifest"]))
    validate_manifest(manifest)
    manifest["splits"]["dev"]["empty_label_sets"] = -1
    with pytest.raises(ValueError, match=r"splits\.dev\.empty_label_sets must be an integer >= 0, got -1"):
        validate_manifest(manifest)


def test_label_separator_needs_multi_label_and_a_usable_value(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "dev"):
        (data / f"{split}.tsv").write_text("r1\ta\tx\ttext\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"--label_separator separates the labels of a set: give it with --multi_label"):
        preprocess.run(_argv(tmp_path / "out", "--data_dir", str(data), "--label_separator", ";"))
    for bad in ("", "\t"):
        with pytest.raises(ValueError, match=r"--label_separator .*: give a non-empty separator without tab or line break"):
            preprocess.run(_argv(tmp_path / "out", "--data_dir", str(data), "--multi_label", "--label_separator", bad))
    assert not (tmp_path / "out").exists()


def _train_and_dev(tmp_path: Path, train: str, dev: str) -> Path:
    """A GLUE-layout data folder with these train and dev lines."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.tsv").write_text(train, encoding="utf-8")
    (data / "dev.tsv").write_text(dev, encoding="utf-8")
    return data


def test_max_labels_counts_the_distinct_labels_of_every_set(tmp_path):
    data = _train_and_dev(tmp_path, "r1\ta\ta|b\tone\nr2\ta\tb|c\ttwo\nr3\ta\tc\tthree\n", "d1\ta\ta\tone\n")
    with pytest.raises(ValueError, match=r"train has 3 distinct labels, more than --max_labels 2 \(e\.g\. 'a', 'b', 'c'\)"):
        preprocess.run(_argv(tmp_path / "out", "--data_dir", str(data), "--multi_label", "--max_labels", "2"))


def test_a_train_split_of_empty_sets_only_is_a_clear_error(tmp_path):
    data = _train_and_dev(tmp_path, "r1\ta\t\tone\nr2\ta\t|\ttwo\n", "d1\ta\t\tone\n")
    with pytest.raises(ValueError, match=r"every train document \(2\) has an empty label set: no label to learn"):
        preprocess.run(_argv(tmp_path / "out", "--data_dir", str(data), "--multi_label"))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_paired_bbc_is_read_directly_with_multi_label(tmp_path):
    from beam_pipelines import datasets as corpora

    summary = corpora.convert("bbc", str(tmp_path / "bbc"), limit=10, paired=True)
    assert summary["documents"] == {"train": 5, "dev": 5, "test": 5}
    out = tmp_path / "prep"
    manifest = preprocess.run(_argv(out, "--data_dir", str(tmp_path / "bbc"), "--multi_label"))
    assert manifest["problem_type"] == MULTI_LABEL
    assert list(manifest["label_map"]) == ["business", "entertainment", "politics", "sports", "tech"]
    assert manifest["label_counts"] == summary["label_counts"]["train"]
    for split in ("train", "dev", "test"):
        info = manifest["splits"][split]
        assert (info["read"], info["records"], info["rejected"]) == (5, 5, 0), split
        assert info["label_set_sizes"] == {"2": 5} and info["label_counts"] == summary["label_counts"][split]
        names = list(manifest["label_map"])
        assert {row["id"]: "|".join(names[i] for i in row["labels"]) for row in read_split(str(out), split)} == {
            line.split("\t")[0]: line.split("\t")[2]
            for line in (tmp_path / "bbc" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()[1:]
        }
    assert read_manifest_json(str(out))["label_counts"] == manifest["label_counts"]
