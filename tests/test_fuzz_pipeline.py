"""Fuzz tests of the whole preprocessing pipeline on hostile TSV corpora.

Hypothesis generates ``train.tsv``, ``dev.tsv`` and an optional ``test.tsv`` mixing valid rows
with random bytes, wrong field counts, long lines, UTF-8 BOMs, CRLF endings, NUL bytes,
invalid UTF-8, blank lines, empty files, header-only files, labels with spaces and IDs
repeated within and across files. Every example runs the REAL pipeline
(``beam_pipelines.preprocess.run`` on the DirectRunner) and compares what it wrote with an
independent model of the rules written below (``expect_corpus``):

* per split, the lines of the file = ``header_lines + read`` and ``read = records + rejected``
  in the manifest (a header is counted in ``header_lines``, not in ``read``; a blank line is a
  line, read and rejected as ``wrong_field_count``; an empty or BOM-only file has 0 lines);
* the dead-letter file holds one JSON object per ``\n``-ended line, one per rejected line, each
  with a known reason code, the split, the file, the line number and the reason the model
  expects, and the line as read as its raw text (cut to ``MAX_RAW_CHARS``); the manifest's
  counts by reason equal the counts in that file and add up to ``rejected``;
* the Parquet shards hold exactly the IDs (and labels) the model keeps, once each;
* no bad row makes the run raise; without any valid train row it raises a ``ValueError``
  naming ``train.tsv`` and still leaves the rejected train rows where the message points.

The only thing the model borrows is the tokenizer (through ``transformers``, not the
pipeline's loader), to know which texts give no tokens at all.

Each example costs one Beam run (1-3 s), so the number of examples comes from a profile chosen
by ``SPANWISE_FUZZ_PROFILE`` (as in ``tests/test_fuzz_tsv.py``): ``ci`` (default: 8 examples,
derandomized, no shrinking) or ``long`` (350 examples, random, about 10 minutes)::

    SPANWISE_FUZZ_PROFILE=long .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_fuzz_pipeline.py
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import pytest
from hypothesis import HealthCheck, Phase, currently_in_test_context, event, given, note, settings
from hypothesis import strategies as st

from beam_pipelines import preprocess
from pipeline_helpers import preprocess_argv, read_split
from schemas.rows import MAX_RAW_CHARS, Reason
from tsv_model import BOM, model_lines

PROFILE = os.environ.get("SPANWISE_FUZZ_PROFILE", "ci")
_COMMON = dict(
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: every step would be a Beam run
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
settings.register_profile("pipeline-ci", max_examples=8, derandomize=True, **_COMMON)
settings.register_profile("pipeline-long", max_examples=350, **_COMMON)  # ~10 min here
# Applied per test (not loaded globally): test_fuzz_tsv.py loads its own profiles.
PIPELINE_SETTINGS = settings.get_profile(f"pipeline-{PROFILE}")

REASONS = {value for name, value in vars(Reason).items() if name.isupper()}
TEN_MB = 10 * 1024 * 1024

# --------------------------------------------------------------------------- the model


# The format's rules, restated independently of schemas/ (design.md section 2 and the
# corpus-input issue): line 1 is a header when at least two of its fields are known column
# names and every field looks like a name; the header then decides which field is which.
ROLE_NAMES = {
    "id": ("id", "idx", "guid", "doc_id"),
    "label": ("label", "labels", "class", "category", "target"),
    "text": ("text", "text_a", "sentence", "sentence1"),
    "text_b": ("text_b", "sentence2"),
    "alpha": ("alpha", "alpha_col"),
}
KNOWN_NAMES = {name for names in ROLE_NAMES.values() for name in names}
NAME_LIKE = re.compile(r"^[#\w][\w .#-]{0,63}$")
GLUE = {"id": 0, "alpha": 1, "label": 2, "text": 3, "text_b": 4, "columns": None}


class HeaderError(Exception):
    """The model's verdict: this header cannot be mapped; the run must fail before any work."""


def model_layout(first: bytes, labelled: bool) -> tuple[dict[str, Any], bool]:
    """The layout of a file from its first line: ``(role -> field index, has_header)``."""
    fields = first.decode("utf-8", errors="replace").split("\t")
    clean = [f.replace("\ufeff", "").strip() for f in fields]
    names_ok = all(NAME_LIKE.match(f.replace("\ufeff", "").strip()) for f in fields if f.strip())
    if len(fields) < 2 or not names_ok or sum(c.lower() in KNOWN_NAMES for c in clean) < 2:
        return GLUE, False
    layout: dict[str, Any] = {"columns": len(fields), "names": clean}
    for role, names in ROLE_NAMES.items():
        hits = [i for i, c in enumerate(clean) if c.lower() in names]
        if len(hits) > 1:
            raise HeaderError(f"two {role} columns")
        layout[role] = hits[0] if hits else None
    if layout["text"] is None or (layout["label"] is None and labelled):
        raise HeaderError("no text or label column")
    return layout, True


def fields_fit(count: int, layout: dict[str, Any]) -> bool:
    columns = layout["columns"]
    if columns is None:
        return count in (4, 5)
    return (
        count == columns
        or (count == columns - 1 and layout["text_b"] == columns - 1)
        or (count == 5 and columns == 4 and layout["text_b"] is None and (layout["id"], layout["label"], layout["text"]) == (0, 2, 3))
    )


@dataclass(frozen=True)
class Kept:
    """A line that passed the per-line rules."""

    line: int
    id: str
    label: str
    text_a: str


def model_line(split: str, number: int, raw: bytes, decode_errors: str, layout: dict[str, Any]) -> str | Kept:
    """A rejection reason, or the row kept so far (its ID empty when the file has no ID column)."""
    try:
        text = raw.decode("utf-8", errors=decode_errors)
    except UnicodeDecodeError:
        return Reason.INVALID_UTF8
    fields = text.split("\t")
    if not fields_fit(len(fields), layout):
        return Reason.WRONG_FIELD_COUNT
    if layout.get("names") and [f.replace("\ufeff", "").strip() for f in fields] == layout["names"]:
        return Reason.REPEATED_HEADER  # the header again, after line 1 (files joined with cat)

    def get(role: str) -> str:
        index = layout[role]
        return fields[index] if index is not None and index < len(fields) else ""

    if layout["id"] is not None and not get("id").strip():
        return Reason.EMPTY_ID
    if not get("text").strip():
        return Reason.EMPTY_TEXT_A
    if not get("label").strip() and split != "test":
        return Reason.MISSING_LABEL
    return Kept(number, get("id").strip(), get("label").strip(), get("text"))


def model_raw(raw: bytes, decode_errors: str) -> str:
    """The raw text a rejection carries: the line as read (undecodable bytes as escapes), cut."""
    try:
        text = raw.decode("utf-8", errors=decode_errors)
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="backslashreplace")
    return text if len(text) <= MAX_RAW_CHARS else f"{text[:MAX_RAW_CHARS]}...[{len(text)} chars]"


def line_offsets(data: bytes, count: int) -> list[int]:
    """The byte offset at which each of a file's first ``count`` lines starts (a BOM belongs to line 1)."""
    offsets = [0]
    for index, byte in enumerate(data):
        if byte == 0x0A:
            offsets.append(index + 1)
    return offsets[:count]


@dataclass
class SplitExpectation:
    """What the pipeline must write for one split."""

    lines: int = 0
    headers: int = 0
    rejected: dict[int, str] = field(default_factory=dict)  # line -> reason
    records: dict[str, str] = field(default_factory=dict)  # id -> label ("" = unlabelled)
    raws: dict[int, str] = field(default_factory=dict)  # line -> raw text of its rejection
    offsets: dict[int, int] = field(default_factory=dict)  # line -> byte offset of its rejection


def label_order(labels: set[str]) -> list[str]:
    """Train labels in index order: numeric when every label is an integer, else sorted."""
    if all(re.fullmatch(r"-?[0-9]+", label) for label in labels):
        return sorted(labels, key=lambda label: (int(label), label))
    return sorted(labels)


def expect_corpus(
    files: Mapping[str, bytes], decode_errors: str, has_tokens: Callable[[str], bool]
) -> tuple[dict[str, SplitExpectation], list[str]]:
    """The model: per split expectations and the label map's labels in order (empty: the run fails).

    Raises:
        HeaderError: a file's header cannot be mapped (the run must stop before any work).
    """
    kept: dict[str, list[Kept]] = {}
    out: dict[str, SplitExpectation] = {}
    lines: dict[str, list[bytes]] = {}
    for split, data in files.items():
        expected = out[split] = SplitExpectation()
        kept[split] = []
        lines[split] = model_lines(data)
        layout, has_header = model_layout(lines[split][0], split != "test") if lines[split] else (GLUE, False)
        for number, raw in enumerate(lines[split], start=1):
            expected.lines += 1
            if number == 1 and has_header:
                expected.headers += 1
                continue
            result = model_line(split, number, raw, decode_errors, layout)
            if isinstance(result, str):
                expected.rejected[number] = result
            else:
                kept[split].append(result)
    # the label map: every train row that passed the per-line rules (before tokens and IDs)
    labels = label_order({row.label for row in kept["train"]})
    for split, rows in kept.items():
        seen: set[str] = set()
        for row in rows:  # no tokens first, then the first row of an ID (file order), then its label
            row_id = row.id or f"{split}.tsv:{row.line}"
            if not has_tokens(row.text_a):
                out[split].rejected[row.line] = Reason.NO_TOKENS
            elif row_id in seen:
                out[split].rejected[row.line] = Reason.DUPLICATE_ID
            elif row.label and row.label not in labels:  # empty labels only reach here in test
                seen.add(row_id)
                out[split].rejected[row.line] = Reason.UNSEEN_LABEL
            else:
                seen.add(row_id)
                out[split].records[row_id] = row.label
    for split, expected in out.items():
        offsets = line_offsets(files[split], len(lines[split]))
        expected.raws = {number: model_raw(lines[split][number - 1], decode_errors) for number in expected.rejected}
        expected.offsets = {number: offsets[number - 1] for number in expected.rejected}
    return out, labels


# --------------------------------------------------------------------------- strategies

# IDs from a small pool repeat within and across files; " d1" and "d1 " are the ID "d1".
ids = st.one_of(st.sampled_from(["d1", "d2", " d1", "d1 ", "shared", "two words", "\u00e9t\u00e9", "0"]),
                st.integers(0, 30).map(lambda i: f"r{i}"))
labels = st.sampled_from(["pos", "neg", "pos", "neg", " pos ", "very positive", "a  b", "10", ""])
words = st.sampled_from(["the", "document", "caf\u00e9", "\u6771\u4eac", "\U0001f642", "don't", "3.14",
                         "unbelievably", "\u2028", "\x0b", "\u0085", "\r"])
# texts that give no tokens with a BERT tokenizer (zero-width, NUL, U+FFFD) or are blank
tokenless = st.sampled_from(["\u200b", "\x00", "\ufffd", "\u200b\u200d", " ", "\u3000"])
short_text = st.lists(words, min_size=1, max_size=8).map(" ".join)
long_text = st.integers(2_000, 60_000).map(lambda n: "long " * n)
texts = st.one_of(short_text, short_text, tokenless, long_text)
optional_text_b = st.one_of(st.none(), st.just(""), short_text)


@st.composite
def row_lines(draw: st.DrawFn) -> bytes:
    """A row with 4 or 5 fields, sometimes damaged: NUL, an invalid byte, a stray CR."""
    fields = [draw(ids), draw(st.sampled_from(["", "a", "x y", "\x00"])), draw(labels), draw(texts)]
    text_b = draw(optional_text_b)
    if text_b is not None:
        fields.append(text_b)
    raw = "\t".join(fields).encode("utf-8")
    damage = draw(st.sampled_from([None] * 12 + [b"\x00", b"\xff", b"\xc3", b"\xed\xa0\x80", b"\r"]))
    if damage is not None:
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + damage + raw[at:]
    return raw


wrong_field_counts = st.builds(
    lambda count, values: "\t".join((values * count)[:count]).encode("utf-8"),
    st.sampled_from([1, 2, 3, 6, 7]),
    st.lists(st.sampled_from(["d9", "x", "pos", "some text", ""]), min_size=1, max_size=3),
)
random_bytes = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b""))
blank_lines = st.sampled_from([b"", b" ", b"\t\t\t", b"\r", b"\x00"])
# headers: the GLUE columns by name, reordered, without an ID column (IDs made from file and
# line), and headers that cannot be mapped (no text column: the run stops before any work)
header_lines = st.sampled_from([b"id\talpha\tlabel\ttext_a\ttext_b", b"ID\tALPHA\tLabel\ttext", b"guid\t\tcategory",
                                b" idx \tx\t target \ta\tb\tc", b"\xef\xbb\xbfid\talpha\tlabel\ttext_a",
                                b"id\talpha\tlabel\ttext", b"text_a\tid\tlabel\talpha", b"alpha\tlabel\ttext\ttext_b"])
very_long_garbage = st.integers(100_000, 1_000_000).map(lambda n: b"x\x00\xff" * (n // 3))
# rows are most of the lines: a valid row is what makes the later rules (duplicates, labels) count
# (st.one_of does not weigh repeated branches: pick the kind of line first)
tsv_lines = st.sampled_from(
    [row_lines()] * 6 + [wrong_field_counts, random_bytes, blank_lines, header_lines, very_long_garbage]
).flatmap(lambda kind: kind)
endings = st.sampled_from([b"\n", b"\r\n"])


@st.composite
def tsv_files(draw: st.DrawFn, min_lines: int = 1, max_lines: int = 10, lines_weight: int = 9) -> bytes:
    """A whole file: empty, BOM-only, header-only, or (``lines_weight`` times likelier than each) lines."""
    shape = draw(st.sampled_from(["lines"] * lines_weight + ["empty", "bom", "header_only"]))
    if shape == "empty":
        return b""
    if shape == "bom":
        return BOM + draw(st.sampled_from([b"", b"\n", b"\r\n"]))
    bom = BOM if draw(st.booleans()) else b""
    if shape == "header_only":
        return bom + draw(header_lines) + draw(st.sampled_from([b"", b"\n", b"\r\n"]))
    lines = draw(st.lists(st.tuples(tsv_lines, endings), min_size=min_lines, max_size=max_lines))
    data = bom + b"".join(line + ending for line, ending in lines)
    if draw(st.booleans()):  # no line ending after the last line
        data = data[: -len(lines[-1][1])]
    return data


@st.composite
def corpora(draw: st.DrawFn) -> dict[str, bytes]:
    """train.tsv and dev.tsv, and test.tsv half of the time."""
    files = {"train": draw(tsv_files(min_lines=2, lines_weight=18)), "dev": draw(tsv_files(max_lines=6))}
    if draw(st.booleans()):
        files["test"] = draw(tsv_files(max_lines=6))
    return files


pipeline_options = st.fixed_dictionaries({
    "--decode_errors": st.sampled_from(["strict", "strict", "replace"]),
    "--tokenize_batch_size": st.sampled_from(["1", "3", "64"]),
    "--num_shards": st.sampled_from(["1", "3"]),
    # byte ranges of ~100 bytes: a file is read by several tasks, whose lines are numbered afterwards
    "--read_range_mb": st.sampled_from(["64", "64", "0.0001"]),
    "--max_doc_tokens": st.sampled_from(["16", "32768"]),
})

# --------------------------------------------------------------------------- running and checking


@pytest.fixture(scope="module")
def has_tokens(minilm_path: str) -> Callable[[str], bool]:
    """Whether a text gives any token, asked of the transformers tokenizer (not the pipeline's)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path, use_fast=True)

    def ask(text: str) -> bool:
        def count(part: str) -> int:
            return len(tokenizer(part, add_special_tokens=False, truncation=False)["input_ids"])

        # a long text with a word near its start needs no full tokenization
        return count(text[:2000]) > 0 or (len(text) > 2000 and count(text) > 0)

    return ask


def read_dead_letter(run_dir: Path, split: str) -> list[dict[str, Any]]:
    """The rejected rows of one split, from strictly one-object-per-``\\n``-line JSONL files."""
    directory = run_dir / "rejected"
    entries: list[dict[str, Any]] = []
    for path in sorted(directory.glob(f"{split}-*.jsonl")) if directory.exists() else []:
        data = path.read_bytes()
        assert data.endswith(b"\n"), path  # (an empty bucket is not written)
        entries += [json.loads(line) for line in data.decode("utf-8").split("\n")[:-1]]
    return entries


def check_rejected(run_dir: Path, data_dir: Path, split: str, expected: SplitExpectation) -> list[dict[str, Any]]:
    """Check one split's dead-letter files against the model; return their entries."""
    rejected = read_dead_letter(run_dir, split)
    for entry in rejected:
        assert entry["reason"] in REASONS, entry
        assert entry["split"] == split and entry["file"] == str(data_dir / f"{split}.tsv")
        assert entry["detail"] and isinstance(entry["raw"], str)
    assert {entry["line"]: entry["reason"] for entry in rejected} == expected.rejected, split
    assert {entry["line"]: entry["raw"] for entry in rejected} == expected.raws, f"{split}: raw is the line as read"
    assert {entry["line"]: entry["offset"] for entry in rejected} == expected.offsets, f"{split}: byte offsets"
    assert len(rejected) == len(expected.rejected), f"{split}: one dead-letter entry per rejected line"
    return rejected


def run_and_check(
    files: Mapping[str, bytes], options: Mapping[str, str], has_tokens: Callable[[str], bool]
) -> dict[str, Any] | None:
    """Write the corpus, run the pipeline, check every invariant; return the manifest (None: failed run)."""
    decode_errors = options.get("--decode_errors", "strict")
    with tempfile.TemporaryDirectory(prefix="spanwise-fuzz-") as root:
        data_dir, out_dir = Path(root) / "data", Path(root) / "out"
        data_dir.mkdir()
        for split, data in files.items():
            (data_dir / f"{split}.tsv").write_bytes(data)
        argv = preprocess_argv(data_dir, out_dir, *[item for pair in options.items() for item in pair])
        try:
            expected, label_order_ = expect_corpus(files, decode_errors, has_tokens)
        except HeaderError as verdict:  # refused before any work, naming the file
            if currently_in_test_context():
                note(f"expected a header error: {verdict}")
            with pytest.raises(ValueError, match=rf"^{re.escape(str(data_dir))}/(train|dev|test)\.tsv: "):
                preprocess.run(argv)
            assert not out_dir.exists()
            return None
        if currently_in_test_context():  # shown with a falsifying example
            note(f"expected: {expected}, labels {label_order_}")
        if not label_order_ or not expected["train"].records:
            train_path = str(data_dir / "train.tsv")
            if not expected["train"].rejected:  # an empty or header-only train file
                with pytest.raises(ValueError, match=rf"^no valid rows in {re.escape(train_path)}: .*no data rows"):
                    preprocess.run(argv)
                assert not out_dir.exists()  # the output folder this run made goes with it
                return None
            message = rf"^no valid rows in {re.escape(train_path)}: .*rejected/train-\*\.jsonl"
            with pytest.raises(ValueError, match=message):
                preprocess.run(argv)
            (run,) = os.listdir(out_dir)  # nothing committed; the failed run's rejected rows only
            assert not (out_dir / "manifest.json").exists() and os.listdir(out_dir / run) == ["rejected"]
            check_rejected(out_dir / run, data_dir, "train", expected["train"])
            return None
        manifest = preprocess.run(argv)  # no bad row may make it raise
        run_dir = out_dir / manifest["run"]
        assert manifest["label_map"] == {label: index for index, label in enumerate(label_order_)}
        assert set(manifest["splits"]) == set(files)
        for split, want in expected.items():
            info = manifest["splits"][split]
            rejected = check_rejected(run_dir, data_dir, split, want)
            # the accounting: every line is a header, a record or a rejection
            assert info["header_lines"] == want.headers, split
            assert info["read"] == want.lines - want.headers, split
            assert info["read"] == info["records"] + info["rejected"], split
            assert info["rejected"] == len(want.rejected) == len(rejected), split
            assert info["rejected_by_reason"] == dict(Counter(want.rejected.values())), split
            assert info["rejected_by_reason"] == dict(Counter(entry["reason"] for entry in rejected)), split
            assert sum(info["rejected_by_reason"].values()) == info["rejected"], split
            assert sorted(info["rejected_files"]) == sorted(
                f"{manifest['run']}/rejected/{p.name}" for p in (run_dir / "rejected").glob(f"{split}-*.jsonl")
            )
            # the records: exactly the rows the model keeps, each once, with its label
            rows = read_split(str(out_dir), split)
            assert sorted(row["id"] for row in rows) == sorted(want.records), split
            assert info["records"] == len(rows) == sum(f["rows"] for f in info["files"]), split
            for row in rows:
                label = want.records[row["id"]]
                assert row["label"] == (manifest["label_map"][label] if label else -1), row["id"]
                assert len(row["input_ids_a"]) > 0 and row["num_tokens_a"] >= len(row["input_ids_a"])
        assert sorted(os.listdir(out_dir)) == ["manifest.json", manifest["run"]]  # no temp folder left
        return manifest


# --------------------------------------------------------------------------- tests


@PIPELINE_SETTINGS
@given(files=corpora(), options=pipeline_options)
def test_pipeline_accounts_for_every_line(files, options, has_tokens):
    manifest = run_and_check(files, options, has_tokens)
    # what the examples covered (pytest --hypothesis-show-statistics)
    event("run failed: no valid train row" if manifest is None else "run succeeded")
    if manifest is not None:
        for info in manifest["splits"].values():
            for reason in info["rejected_by_reason"]:
                event(f"rejected: {reason}")


def test_bom_only_files_are_empty(has_tokens):
    """A BOM alone is an empty file (0 lines); a BOM and a line ending is one blank line."""
    files = {
        "train": BOM + b"id\talpha\tlabel\ttext_a\r\nt1\ta\tpos\tone document\r\nt2\ta\tneg\ttwo documents\r\n",
        "dev": BOM,
        "test": BOM + b"\r\n",
    }
    manifest = run_and_check(files, {}, has_tokens)
    counts = {split: (info["header_lines"], info["read"], info["records"], info["rejected_by_reason"])
              for split, info in manifest["splits"].items()}
    assert counts == {
        "train": (1, 2, 2, {}),
        "dev": (0, 0, 0, {}),
        "test": (0, 1, 0, {Reason.WRONG_FIELD_COUNT: 1}),
    }


def test_empty_and_header_only_dev_and_blank_lines(has_tokens):
    """Blank lines anywhere (first, middle, last) are read and rejected, like a BOM + newline."""
    files = {
        "train": b"\nt1\ta\tpos\tone\n\n t1 \ta\tneg\tsame id once stripped\nt2\ta\tpos\ttwo\n\n",
        "dev": b"id\talpha\tlabel\ttext_a",
        "test": b"",
    }
    manifest = run_and_check(files, {}, has_tokens)
    train = manifest["splits"]["train"]
    assert (train["read"], train["records"], train["rejected_by_reason"]) == (
        6, 2, {Reason.WRONG_FIELD_COUNT: 3, Reason.DUPLICATE_ID: 1},
    )
    assert (manifest["splits"]["dev"]["header_lines"], manifest["splits"]["dev"]["read"]) == (1, 0)
    assert manifest["splits"]["test"]["read"] == 0


@pytest.mark.parametrize("train", [b"", BOM, BOM + b"\n", b"id\talpha\tlabel\ttext_a\n", b"t1\ta\tpos\t\x00\n"],
                         ids=["empty", "bom", "bom_newline", "header_only", "only_tokenless"])
def test_no_valid_train_row_fails_naming_the_file(train, has_tokens):
    """No train row is written: a ValueError naming train.tsv (checked in run_and_check), also
    when the only rows pass the line rules but give no tokens."""
    files = {"train": train, "dev": b"d1\ta\tpos\ttext\n"}
    assert run_and_check(files, {}, has_tokens) is None


@pytest.mark.parametrize("valid", [False, pytest.param(True, marks=pytest.mark.skipif(
    PROFILE != "long", reason="tokenizing a 10 MB document takes ~10 s: long profile only"))],
    ids=["rejected", "valid_document"])
def test_ten_megabyte_lines(valid, has_tokens):
    """10 MB lines: no tab at all, invalid UTF-8 at the very end, NUL text; and a valid 10 MB document."""
    train = [
        b"t1\ta\tpos\ta short document",
        b"x" * TEN_MB,
        b"t2\ta\tpos\t" + b"a" * TEN_MB + b"\xff",
        b"t3\ta\tneg\t" + b"\x00" * TEN_MB,
    ]
    if valid:
        train.append(b"t4\ta\tneg\t" + b"word " * (TEN_MB // 5))
    files = {"train": b"\r\n".join(train), "dev": b"d1\ta\tneg\ttext\n"}
    manifest = run_and_check(files, {"--max_doc_tokens": "1000"}, has_tokens)
    train_info = manifest["splits"]["train"]
    assert train_info["rejected_by_reason"] == {
        Reason.WRONG_FIELD_COUNT: 1, Reason.INVALID_UTF8: 1, Reason.NO_TOKENS: 1,
    }
    assert train_info["records"] == (2 if valid else 1)
    if valid:  # whatever guard cuts it first, the document is kept, capped at --max_doc_tokens
        assert train_info["stats"]["capped_at_max_doc_tokens"] == 1
        assert train_info["stats"]["max"] > 1000


# --------------------------------------------------------------------------- the other readers

# One logical row, written in each format: ID, label, text, text_b (None: no second text).
plain_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\t\n\r\x00")
rich_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
format_ids = st.one_of(st.sampled_from(["d1", "d2", " d1", "", "r 3"]), st.integers(0, 9).map(lambda i: f"x{i}"))
format_labels = st.sampled_from(["pos", "neg", " pos ", "", "10"])


def format_rows(chars: st.SearchStrategy[str]) -> st.SearchStrategy[list[tuple[str, str, str, str | None]]]:
    text = st.one_of(st.text(chars, max_size=40), st.sampled_from(["\u200b", "   ", "a,\"quoted\" word"]),
                     st.integers(300, 700).map(lambda n: "long " * n))
    return st.lists(st.tuples(format_ids, format_labels, text, st.one_of(st.none(), st.text(chars, max_size=20))),
                    min_size=1, max_size=12)


def _write_formats(data_dir: Path, rows: list[tuple[str, str, str, str | None]], formats: list[str]) -> dict[str, Path]:
    """The same rows in each format (IDs prefixed with the format, so that formats never share
    one); return each file and, per format, where each row is (its first line, or Parquet row)."""
    import csv
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    files, places = {}, {}
    for fmt in formats:
        mine = [{"id": f"{fmt}-{row_id}" if row_id.strip() else row_id, "alpha": "a", "label": label, "text": text,
                 "text_b": text_b or ""} for row_id, label, text, text_b in rows]
        path = files[fmt] = data_dir / f"train-{fmt}.{fmt}"
        if fmt == "tsv":  # the GLUE layout, no header
            path.write_text("".join(f"{r['id']}\ta\t{r['label']}\t{r['text']}" + (f"\t{r['text_b']}" if r["text_b"] else "") + "\n"
                                    for r in mine), encoding="utf-8")
            places[fmt] = list(range(1, len(rows) + 1))
        elif fmt == "csv":  # a header; a record's first line depends on the newlines of those before it
            serialized = []
            for record in [None, *mine]:
                buffer = io.StringIO(newline="")
                writer = csv.DictWriter(buffer, fieldnames=["id", "alpha", "label", "text", "text_b"], lineterminator="\r\n")
                writer.writeheader() if record is None else writer.writerow(record)
                serialized.append(buffer.getvalue())
            path.write_text("".join(serialized), encoding="utf-8", newline="")
            starts = [1]
            for text in serialized:
                starts.append(starts[-1] + text.count("\n"))
            places[fmt] = starts[1:-1]
        elif fmt == "jsonl":
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in mine), encoding="utf-8")
            places[fmt] = list(range(1, len(rows) + 1))
        else:
            pq.write_table(pa.Table.from_pylist(mine), path, row_group_size=5)
            places[fmt] = list(range(len(rows)))  # row indices
    return files, places


@settings(PIPELINE_SETTINGS, max_examples=max(2, PIPELINE_SETTINGS.max_examples // 2))
@given(rows=st.one_of(format_rows(plain_chars).map(lambda r: ("plain", r)), format_rows(rich_chars).map(lambda r: ("rich", r))),
       num_shards=st.sampled_from(["1", "2"]))
def test_every_format_reads_the_same_rows_the_same_way(rows, num_shards, has_tokens):
    """The same logical rows in TSV, CSV, JSONL and Parquet, one split of four files, one run:
    each row is kept by every format with the same tokens and label, or rejected by every format
    for the same reason. Texts with tabs, newlines and quotes ("rich") leave TSV out: it cannot
    hold them."""
    kind, rows = rows
    formats = ["csv", "jsonl", "parquet"] + (["tsv"] if kind == "plain" else [])
    with tempfile.TemporaryDirectory(prefix="spanwise-formats-") as root:
        data_dir, out_dir = Path(root) / "data", Path(root) / "out"
        data_dir.mkdir()
        files, places = _write_formats(data_dir, rows, formats)
        (data_dir / "dev.jsonl").write_text('{"id": "d", "text": "a dev text", "label": "pos"}\n')
        argv = ["--train_files", *map(str, files.values()), "--dev_files", str(data_dir / "dev.jsonl"),
                "--output_dir", str(out_dir), "--tokenizer", preprocess_argv("", "")[-1], "--num_shards", num_shards]
        try:
            manifest = preprocess.run(argv)
        except ValueError as error:  # no train row valid in any format
            assert str(error).startswith("no valid rows in "), error
            event("no valid row")
            return
        written = {row["id"]: row for row in read_split(str(out_dir), "train")}
        rejected = {(r["file"], r["line"] if r["line"] is not None else r["offset"]): r["reason"]
                    for r in read_dead_letter(out_dir / manifest["run"], "train")}
        info = manifest["splits"]["train"]
        assert info["read"] == len(formats) * len(rows) == info["records"] + info["rejected"] == len(written) + len(rejected)
        for index, (row_id, *_) in enumerate(rows):
            fates = {}
            for fmt in formats:
                reason = rejected.get((str(files[fmt]), places[fmt][index]))
                if reason:
                    fates[fmt] = ("rejected", reason)
                else:
                    kept = written[f"{fmt}-{row_id}".strip()]
                    fates[fmt] = ("kept", tuple(kept["input_ids_a"]), tuple(kept["input_ids_b"]), kept["label"])
            note(f"row {index} {rows[index]!r}: {fates}")
            assert len(set(fates.values())) == 1, fates
            event(f"{fates[formats[0]][0]} {fates[formats[0]][1] if fates[formats[0]][0] == 'rejected' else ''}")
