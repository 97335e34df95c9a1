"""Resource guards of ``beam_pipelines.preprocess``: huge documents and unbounded label sets.

A train document of 10 million tokens goes through a real DirectRunner run: it is cut to its
head and tail by ``--max_doc_chars`` before tokenizing (so the tokenizer never needs the ~9 GB
that text would take), and the manifest says so. A train split with more distinct labels
than ``--max_labels`` stops the job with a plain message (in-process and on the command line)
and publishes nothing. Time and memory are measured outside the tests (see the report of the
change), not asserted here.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from beam_pipelines import preprocess
from beam_pipelines.transforms import CorpusError, cap_chars
from tokenization.documents import char_bounded_groups
from pipeline_helpers import (
    Doc,
    load_reference_tokenizer,
    preprocess_argv,
    read_rejected,
    read_split,
    reference_ids,
    shard_names,
    write_corpus,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
# Words that are one token each in the MiniLM (bert-base-uncased) vocabulary: a text of N of
# them is N tokens, ~3.9 characters a token.
ONE_TOKEN_WORDS = "the cat sat on a mat dog ran red big sun sea old new day way car bus key box".split()
HUGE_DOC_WORDS = 10_000_000
END_BLOCK_WORDS = 200_000  # the random head and tail of the huge document (~780k characters each)
MIDDLE_BLOCK_WORDS = 100_000
CHECKED_TOKENS = 20_000  # tokens compared exactly at each end of the stored document
DEFAULT_MAX_DOC_TOKENS = 32768


def _random_words(seed: str, count: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choices(ONE_TOKEN_WORDS, k=count))


def _write_huge_document_corpus(data_dir: Path) -> dict[str, str]:
    """train.tsv with a 10M-token TEXT_A, a pair whose TEXT_B is ~1.2M characters, and short rows.

    Written piece by piece (the 10M-token line is ~39 MB), never built as one string. Returns
    the texts the test needs: the huge document's head and tail blocks and the long TEXT_B.
    """
    head, tail = _random_words("head", END_BLOCK_WORDS), _random_words("tail", END_BLOCK_WORDS)
    middle = _random_words("middle", MIDDLE_BLOCK_WORDS)
    repeats, left = divmod(HUGE_DOC_WORDS - 2 * END_BLOCK_WORDS, MIDDLE_BLOCK_WORDS)
    assert left == 0
    long_b = _random_words("long-b", 300_000)
    data_dir.mkdir(parents=True)
    with open(data_dir / "train.tsv", "w", encoding="utf-8") as handle:
        handle.write("short-1\ta\tpos\tthe cat sat on the mat\n")
        handle.write("huge\ta\tneg\t" + head + " ")
        for _ in range(repeats):
            handle.write(middle + " ")
        handle.write(tail + "\n")
        handle.write(f"pair\ta\tpos\ta short text a\t{long_b}\n")
        handle.write("short-2\ta\tneg\ta dog ran to the sea\n")
    with open(data_dir / "dev.tsv", "w", encoding="utf-8") as handle:
        handle.write("dev-1\ta\tpos\tthe sun is red\n")
    return {"head": head, "tail": tail, "long_b": long_b}


@pytest.fixture(scope="module")
def tok():
    return load_reference_tokenizer()


@pytest.fixture(scope="module")
def huge(tmp_path_factory):
    root = tmp_path_factory.mktemp("huge")
    texts = _write_huge_document_corpus(root / "data")
    out = root / "out"
    manifest = preprocess.run(preprocess_argv(root / "data", out))  # default guards
    return {"out": out, "manifest": manifest, "rows": {r["id"]: r for r in read_split(str(out), "train")}, **texts}


def test_huge_document_is_written_capped(huge):
    assert sorted(huge["rows"]) == ["huge", "pair", "short-1", "short-2"]
    row = huge["rows"]["huge"]
    assert len(row["input_ids_a"]) == DEFAULT_MAX_DOC_TOKENS
    assert row["input_ids_b"] == []
    # The recorded length is that of the character-capped text: at most one token per
    # character of it, more than max_doc_tokens, far below the 10M of the whole document.
    assert DEFAULT_MAX_DOC_TOKENS < row["num_tokens_a"] <= preprocess.DEFAULT_MAX_DOC_CHARS
    assert row["num_tokens_a"] < HUGE_DOC_WORDS // 10


def test_huge_document_keeps_its_true_head_and_tail(huge, tok):
    stored = huge["rows"]["huge"]["input_ids_a"]
    half = DEFAULT_MAX_DOC_TOKENS // 2
    head_words = huge["head"].split(" ")[:CHECKED_TOKENS]
    tail_words = huge["tail"].split(" ")[-CHECKED_TOKENS:]
    assert stored[:half] == reference_ids(tok, " ".join(head_words))[:half]
    assert stored[half:] == reference_ids(tok, " ".join(tail_words))[-half:]
    # and the very first and last words of the 10M-token text are there
    assert stored[0] == tok.convert_tokens_to_ids(head_words[0])
    assert stored[-1] == tok.convert_tokens_to_ids(tail_words[-1])


def test_long_text_b_is_capped_on_its_own(huge, tok):
    row = huge["rows"]["pair"]
    assert row["input_ids_a"] == reference_ids(tok, "a short text a")
    assert len(row["input_ids_b"]) == DEFAULT_MAX_DOC_TOKENS
    half = DEFAULT_MAX_DOC_TOKENS // 2
    words = huge["long_b"].split(" ")
    assert row["input_ids_b"][:half] == reference_ids(tok, " ".join(words[:CHECKED_TOKENS]))[:half]
    assert row["input_ids_b"][half:] == reference_ids(tok, " ".join(words[-CHECKED_TOKENS:]))[-half:]


def test_short_rows_untouched(huge, tok):
    assert huge["rows"]["short-1"]["input_ids_a"] == reference_ids(tok, "the cat sat on the mat")
    assert huge["rows"]["short-2"]["input_ids_a"] == reference_ids(tok, "a dog ran to the sea")


def test_manifest_records_the_caps(huge):
    manifest = huge["manifest"]
    assert manifest["options"]["max_doc_chars"] == preprocess.DEFAULT_MAX_DOC_CHARS == 1_000_000
    assert manifest["max_doc_chars"] == preprocess.DEFAULT_MAX_DOC_CHARS
    assert manifest["options"]["max_labels"] == preprocess.DEFAULT_MAX_LABELS
    train = manifest["splits"]["train"]
    assert train["records"] == 4 and train["rejected"] == 0
    assert train["stats"]["capped_at_max_doc_chars"] == 2  # huge (TEXT_A) and pair (TEXT_B)
    assert train["stats"]["capped_at_max_doc_tokens"] == 2
    assert manifest["splits"]["dev"]["stats"]["capped_at_max_doc_chars"] == 0
    # and the statistics printed after the run say so, for train only
    from schemas.manifest import format_stats

    printed = format_stats(manifest).splitlines()
    assert [line.strip() for line in printed if "capped:" in line] == ["capped: 2 at --max_doc_chars, 2 at --max_doc_tokens"]
    assert printed[printed.index(next(l for l in printed if "capped:" in l)) - 1].startswith("train ")


# --------------------------------------------------------------------------- cap_chars


def test_cap_chars_keeps_short_texts_and_no_cap():
    text = "word " * 500
    assert cap_chars(text, 10_000) is text
    assert cap_chars(text, len(text)) is text
    assert cap_chars(text * 1000, 0) == text * 1000


def test_cap_chars_head_and_tail_on_word_boundaries():
    words = [f"w{i}" for i in range(3000)]  # "w0 w1 ... w2999", ~17k characters
    capped = cap_chars(" ".join(words), 1000)
    assert len(capped) <= 1000
    kept = capped.split(" ")
    head_words = next(k for k in range(len(kept)) if kept[k] != words[k])  # the run of first words
    head, tail = kept[:head_words], kept[head_words:]
    assert head == words[: len(head)] and tail == words[len(words) - len(tail) :]  # no word cut in two
    # each end keeps about half of the budget (cuts move at most 100 characters, to whitespace)
    assert 400 <= len(" ".join(head)) <= 500 and 390 <= len(" ".join(tail)) <= 499


def test_cap_chars_without_whitespace_cuts_exactly():
    text = "x" * 600 + "y" * 600
    capped = cap_chars(text, 1000)
    assert capped == "x" * 500 + " " + "y" * 499


def test_tokenizer_calls_are_bounded_in_characters():
    texts_a = ["x" * chars for chars in (10, 700, 400, 2000, 5)]
    groups = list(char_bounded_groups(texts_a, [""] * 5, 1000))
    assert groups == [(0, 2), (2, 3), (3, 4), (4, 5)]  # in order, each row once, a long one alone
    texts_b = ["y" * chars for chars in (900, 200, 0, 0, 0)]
    assert list(char_bounded_groups(["a"] * 5, texts_b, 1000)) == [(0, 1), (1, 5)]  # TEXT_B too


# --------------------------------------------------------------------------- labels


def _shifted_label_corpus(data_dir: Path) -> list[str]:
    """A train.tsv whose LABEL column holds the texts (a column was lost): 8 distinct 'labels'."""
    texts = [f"review number {i} says the film was {'good' if i % 2 else 'bad'} and long" for i in range(8)]
    write_corpus(str(data_dir), {
        "train": [Doc(f"t-{i}", "a", text, "pos" if i % 2 else "neg") for i, text in enumerate(texts)],
        "dev": [Doc("d-1", "a", "pos", "text")],
    })
    return texts


def test_too_many_labels_fails_with_a_clear_message(tmp_path):
    texts = _shifted_label_corpus(tmp_path / "data")
    out = tmp_path / "out"
    with pytest.raises(CorpusError) as error:
        preprocess.run(preprocess_argv(tmp_path / "data", out, "--max_labels", "5"))
    message = str(error.value)
    assert isinstance(error.value, ValueError)
    assert message.startswith("train has 8 distinct labels, more than --max_labels 5 (e.g. ")
    assert "raise --max_labels" in message and "--label_column" in message
    assert repr(sorted(texts)[0][:40] + "...") in message  # examples, cut to a readable length
    assert "while running" not in message  # no Beam step annotation
    assert not out.exists()  # nothing published: the failed run's folder gone, and the output folder it made


def test_labels_up_to_the_bound_pass(tmp_path):
    _shifted_label_corpus(tmp_path / "data")
    manifest = preprocess.run(preprocess_argv(tmp_path / "data", tmp_path / "out", "--max_labels", "8"))
    assert len(manifest["label_map"]) == 8
    assert manifest["options"]["max_labels"] == 8


def test_too_many_labels_on_the_command_line(tmp_path):
    _shifted_label_corpus(tmp_path / "data")
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "beam_pipelines.preprocess",
         *preprocess_argv(tmp_path / "data", out, "--max_labels", "5")],
        cwd=REPO_ROOT, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT)),
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "error: train has 8 distinct labels, more than --max_labels 5" in result.stderr
    assert "Traceback" not in result.stderr and "while running" not in result.stderr, result.stderr[-3000:]
    assert not (out / "manifest.json").exists()


def test_corpus_error_found_in_a_remote_traceback():
    """Dataflow and multi_processing pass the worker's traceback on as text."""
    remote = RuntimeError(
        "Pipeline failed: Traceback (most recent call last):\\n  File \"transforms.py\", line 1, in f\\n"
        "beam_pipelines.transforms.CorpusError: train has 9 distinct labels, more than --max_labels 5 "
        "(e.g. 'a') [while running 'BuildLabelMap']\\n"
    )
    found = preprocess._corpus_error_in(remote, " (job 42: url)")
    assert isinstance(found, CorpusError)
    assert str(found) == "train has 9 distinct labels, more than --max_labels 5 (e.g. 'a') (job 42: url)"
    assert preprocess._corpus_error_in(RuntimeError("worker lost")) is None


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--max_doc_chars", "-1", r"--max_doc_chars must be 0 \(no cap\) or >= 1000, got -1"),
        ("--max_doc_chars", "10", r"--max_doc_chars must be 0 \(no cap\) or >= 1000, got 10"),
        ("--max_labels", "0", r"--max_labels must be >= 1, got 0"),
    ],
)
def test_guard_option_errors(tmp_path, capsys, flag, value, expected):
    argv = preprocess_argv(tmp_path / "data", tmp_path / "out", flag, value)
    with pytest.raises(ValueError, match=expected):
        preprocess.run(argv)
    assert preprocess.main(argv) == 2
    assert f"error: {flag}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_cut_row_keeps_its_line_as_read_for_a_later_rejection(tmp_path):
    """A row cut at --max_doc_chars and rejected later (here: a duplicate ID, decided where its
    shard is written) shows the line as it was read in the dead-letter output, not the cut text."""
    line = "t1\ta\tpos\t" + "word " * 1000
    write_corpus(str(tmp_path / "data"), {"train": ["t1\ta\tpos\tfirst", line], "dev": ["d1\ta\tpos\ttext"]})
    manifest = preprocess.run(preprocess_argv(tmp_path / "data", tmp_path / "out", "--max_doc_chars", "1000"))
    (rejection,) = read_rejected(str(tmp_path / "out"), "train")
    assert rejection["reason"] == "duplicate_id" and rejection["line"] == 2
    assert rejection["raw"] == line[:1000] + f"...[{len(line)} chars]"
    assert manifest["splits"]["train"]["stats"]["capped_at_max_doc_chars"] == 0  # the cut row was not written
