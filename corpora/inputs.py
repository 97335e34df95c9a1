"""Which files make up each split, in which format, with which columns: decided before any work.

A split is given as files and glob patterns (``--train_files 'gs://b/c/train-*.jsonl.gz'``),
or, as in the seed format, by a folder holding ``train.tsv``, ``dev.tsv`` and an optional
``test.tsv`` (``--data_dir``; ``train.csv``, ``train.jsonl.gz``... are found there too). Every
file is looked at here, in parallel: its header, first JSON object or Parquet schema must give
the columns asked for, so that a column mix-up stops the job before it starts, naming the file.
"""

from __future__ import annotations

import os
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Mapping, Sequence

import spanwise_io
from corpora.readers import EXTENSIONS, InputFile, format_of, inspect_file
from schemas.columns import ColumnSpec
from schemas.rows import REQUIRED_SPLITS, SPLITS

__all__ = ["InputPlan", "plan_inputs", "split_patterns", "parse_label_names", "LABEL_NAMES_HELP"]

# The --label_names flag of preprocessing and prediction.
LABEL_NAMES_HELP = (
    "names of integer labels, in index order: 'business,entertainment,politics' or a file (local or gs://) "
    "with one name per line; label 0 is the first name. Default: a Parquet file's Hugging Face ClassLabel "
    "names, else the integers stay the labels"
)

# Threads that look at files at once (remote files: one small read each).
_INSPECT_THREADS = 16
# A compressed file is counted as this many times its size when sizing shards.
_COMPRESSED_FACTOR = 4


@dataclass(frozen=True)
class InputPlan:
    """The files of each split, in order, ready to be cut into read tasks."""

    files: Mapping[str, tuple[InputFile, ...]]
    patterns: Mapping[str, tuple[str, ...]]

    def estimated_bytes(self, split: str) -> int:
        """Uncompressed input bytes of a split, estimated (Parquet: its row groups' bytes)."""
        total = 0
        for file in self.files[split]:
            if file.format == "parquet":
                total += sum(nbytes for _, nbytes in file.row_groups)
            else:
                total += file.size * (_COMPRESSED_FACTOR if file.compression else 1)
        return total

    def derived_ids(self, split: str) -> bool:
        """Whether some file of the split has no ID column (its IDs are made from file and line)."""
        return any(file.layout.id is None and file.layout.columns for file in self.files[split])

    def describe(self) -> dict[str, dict]:
        """For the manifest: per split, the patterns, and per file its format, columns and size."""
        return {
            split: {
                "patterns": list(self.patterns[split]),
                "derived_ids": self.derived_ids(split),
                "files": [
                    {
                        "path": f.path,
                        "format": f.format,
                        "compression": f.compression,
                        "bytes": f.size,
                        "header": f.has_header,
                        "columns": f.layout.describe(),
                        **({"label_names": list(f.label_names)} if f.label_names else {}),
                    }
                    for f in files
                ],
            }
            for split, files in self.files.items()
        }


def parse_label_names(value: str | None) -> tuple[str, ...]:
    """``--label_names``: comma-separated names, or a file holding one name per line.

    Raises:
        ValueError: an empty or repeated name, or a name that is an integer other than its own index.
    """
    if not value:
        return ()
    is_file = "," not in value and spanwise_io.exists(value) and not spanwise_io.isdir(value)
    raw = spanwise_io.read_bytes(value).decode("utf-8-sig").splitlines() if is_file else value.split(",")
    names = [name.strip() for name in raw]
    if is_file:
        names = [name for name in names if name]
    where = f"--label_names {value}" + (" (a file)" if is_file else "")
    if not names or any(not name for name in names):
        raise ValueError(f"{where}: every name must be non-empty, e.g. --label_names business,sport,tech")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{where}: {', '.join(repr(name) for name in repeated)} given more than once")
    misplaced = [name for index, name in enumerate(names) if name.isdigit() and int(name) != index]
    if misplaced:
        raise ValueError(f"{where}: the name {misplaced[0]!r} is an integer that is not its own index, so integer "
                         "labels would be ambiguous; choose names that are not integers")
    return tuple(names)


def _data_dir_file(data_dir: str, split: str) -> str | None:
    """``<data_dir>/<split>.<ext>[.gz|.bz2|.zst]``: the one such file, None if none."""
    names = [f"{split}{ext}{comp}" for ext in EXTENSIONS for comp in ("", *spanwise_io.COMPRESSIONS)]
    try:
        present = set(spanwise_io.listdir(data_dir))
    except FileNotFoundError:
        raise ValueError(f"--data_dir {data_dir} does not exist") from None
    found = [name for name in names if name in present]
    if len(found) > 1:
        raise ValueError(f"{data_dir} holds {', '.join(found)}: which is the {split} split? Keep one, or use --{split}_files")
    return spanwise_io.join(data_dir, found[0]) if found else None


def split_patterns(
    data_dir: str | None, files: Mapping[str, Sequence[str] | None]
) -> dict[str, tuple[str, ...]]:
    """The patterns of each split, from ``--data_dir`` or ``--<split>_files``.

    Raises:
        ValueError: both or neither given, or a required split (train, dev) is missing.
    """
    given = {split: tuple(patterns) for split, patterns in files.items() if patterns}
    if data_dir and given:
        raise ValueError("give either --data_dir or --train_files/--dev_files/--test_files, not both")
    if data_dir:
        out = {}
        for split in SPLITS:
            path = _data_dir_file(data_dir, split)
            if path is not None:
                out[split] = (path,)
            elif split in REQUIRED_SPLITS:
                raise ValueError(
                    f"{spanwise_io.join(data_dir, split + '.tsv')} not found: --data_dir needs train.tsv and dev.tsv "
                    "(test.tsv is optional; .csv, .jsonl, .parquet and .gz/.bz2/.zst variants work too), "
                    "or give the files with --train_files and --dev_files"
                )
        return out
    missing = [split for split in REQUIRED_SPLITS if split not in given]
    if missing:
        raise ValueError(
            f"no input for {', '.join(missing)}: give --data_dir DIR, or --train_files and --dev_files "
            "(files or glob patterns, local or gs://; --test_files is optional)"
        )
    return {split: given[split] for split in SPLITS if split in given}


def _common_folder(paths: Sequence[str]) -> str:
    """The deepest folder holding every path (remote paths keep their scheme)."""
    if len(paths) == 1:
        return posixpath.dirname(paths[0]) if spanwise_io.is_remote(paths[0]) else os.path.dirname(paths[0])
    if spanwise_io.is_remote(paths[0]):
        scheme = paths[0].split("://", 1)[0] + "://"
        return scheme + posixpath.commonpath([p.split("://", 1)[1] for p in paths])
    return os.path.commonpath(paths)


def _relative(path: str, folder: str) -> str:
    if spanwise_io.is_remote(path):
        return posixpath.relpath(path.split("://", 1)[1], folder.split("://", 1)[1])
    return os.path.relpath(path, folder)


def plan_inputs(
    patterns: Mapping[str, Sequence[str]], input_format: str | None, spec: ColumnSpec,
    label_names: Sequence[str] = (), label_separator: str | None = None,
) -> InputPlan:
    """List each split's files and look at each one (header, keys or schema) before any work.

    ``label_names`` (``--label_names``) name the integer labels of every file;
    ``label_separator`` (``--multi_label``; None: one label per row) makes label cells sets.

    Raises:
        ValueError: a pattern matches no file; a file is given twice (in one split or two);
            its format is unknown; its columns do not give what was asked for.
    """
    owner: dict[str, tuple[str, str]] = {}
    listed: dict[str, list[tuple[str, int]]] = {}
    for split, split_patterns_ in patterns.items():
        listed[split] = []
        for pattern in split_patterns_:
            matches = spanwise_io.glob(pattern)
            if not matches:
                raise ValueError(f"--{split}_files {pattern}: no file matches")
            for path, size in matches:
                if path in owner:
                    other_split, other_pattern = owner[path]
                    raise ValueError(
                        f"{path} is matched by --{other_split}_files {other_pattern} and by --{split}_files {pattern}: "
                        "each file belongs to one split, once"
                    )
                owner[path] = (split, pattern)
                listed[split].append((path, size))
    jobs = []
    for split, entries in listed.items():
        folder = _common_folder([path for path, _ in entries])
        for index, (path, size) in enumerate(entries):
            jobs.append((split, index, path, _relative(path, folder), size, format_of(path, input_format)))

    def inspect(job: tuple) -> InputFile:
        split, index, path, name, size, fmt = job
        return inspect_file(split, index, path, name, size, fmt, spec, label_names, label_separator)

    remote = any(spanwise_io.is_remote(job[2]) for job in jobs)
    if remote and len(jobs) > 1:
        with ThreadPoolExecutor(max_workers=min(_INSPECT_THREADS, len(jobs))) as pool:
            inspected = list(pool.map(inspect, jobs))
    else:
        inspected = [inspect(job) for job in jobs]
    files: dict[str, list[InputFile]] = {split: [] for split in patterns}
    for file in inspected:
        files[file.split].append(file)
    return InputPlan({split: tuple(f) for split, f in files.items()}, {s: tuple(p) for s, p in patterns.items()})
