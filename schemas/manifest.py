"""``manifest.json``: what a preprocessing run produced and how, read first by the trainer.

Written last by the pipeline, so its presence means the shards are complete. The trainer calls
``read_manifest`` and ``check_compatible`` before reading any shard. File names are relative to
the manifest's folder: ``run-<time>-<id>/train-00000-of-00004.parquet`` (the run's folder), or
a bare name (runs made before run folders).
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

import spanwise_io
from schemas.rows import SPLITS
from schemas.shard import MULTI_LABEL, PROBLEM_TYPES, SINGLE_LABEL

__all__ = [
    "SCHEMA_VERSION",
    "MANIFEST_NAME",
    "write_manifest",
    "read_manifest",
    "validate_manifest",
    "check_compatible",
    "format_stats",
    "problem_type_of",
]

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
_REQUIRED_KEYS = ("schema_version", "tokenizer", "label_map", "splits", "max_doc_tokens")
# A file the manifest lists: a name in its folder, or in one run folder below it.
_FILE_NAME_RE = re.compile(r"^(?:run-[0-9A-Za-z][0-9A-Za-z_-]*/)?(?!\.\.?$)[^/\\]+$")


def write_manifest(output_dir: str, manifest: Mapping[str, Any]) -> str:
    """Validate and write ``manifest.json`` atomically; return its path."""
    validate_manifest(manifest, source=output_dir)
    path = spanwise_io.join(output_dir, MANIFEST_NAME)
    spanwise_io.write_bytes(path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    return path


def read_manifest(prep_dir: str) -> dict[str, Any]:
    """Read and validate ``<prep_dir>/manifest.json``.

    Raises:
        ValueError: the manifest is missing, not JSON, or lacks required fields.
    """
    path = spanwise_io.join(prep_dir, MANIFEST_NAME)
    if not spanwise_io.exists(path):
        raise ValueError(f"{path} not found: is {prep_dir} the output_dir of beam_pipelines.preprocess?")
    try:
        manifest = json.loads(spanwise_io.read_bytes(path).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    validate_manifest(manifest, source=path)
    return manifest


def problem_type_of(manifest: Mapping[str, Any]) -> str:
    """``single_label_classification`` or ``multi_label_classification`` (manifests written
    before label sets have no ``problem_type``: one label per document)."""
    return manifest.get("problem_type", SINGLE_LABEL)


def validate_manifest(manifest: Mapping[str, Any], source: str = "manifest") -> None:
    """Check the manifest's structure, types and internal consistency.

    A manifest edited by hand is refused here, before any shard is opened, with a message
    that names the field (e.g. ``splits.train.files[2].rows``) and what is wrong with it.

    Args:
        manifest: the parsed ``manifest.json``.
        source: where it came from (its path), the prefix of every message.

    Raises:
        ValueError: a required key is missing, a value has the wrong type, the label map is not
            ``label -> 0..N-1``, or the counts of a split do not add up.
    """
    if not isinstance(manifest, Mapping):
        raise ValueError(f"{source}: manifest must be a JSON object, got {_json_type(manifest)}")
    missing = [key for key in _REQUIRED_KEYS if key not in manifest]
    if missing:
        raise ValueError(f"{source}: manifest lacks {', '.join(missing)}")
    if manifest["schema_version"] != SCHEMA_VERSION:
        raise ValueError(
            f"{source}: schema_version {manifest['schema_version']} is not the supported {SCHEMA_VERSION}; "
            "re-run beam_pipelines.preprocess with this version of spanwise"
        )
    if not isinstance(manifest["tokenizer"], Mapping):
        raise ValueError(f"{source}: tokenizer must be a JSON object, got {_json_type(manifest['tokenizer'])}")
    _require_count(manifest["max_doc_tokens"], "max_doc_tokens", source)
    label_map = manifest["label_map"]
    if (
        not isinstance(label_map, Mapping)
        or not label_map
        or not all(_is_count(index) for index in label_map.values())
        or sorted(label_map.values()) != list(range(len(label_map)))
    ):
        raise ValueError(
            f"{source}: label_map must map each label to a distinct index 0..N-1, got {json.dumps(label_map)[:200]}"
        )
    if manifest.get("problem_type", SINGLE_LABEL) not in PROBLEM_TYPES:
        raise ValueError(
            f"{source}: problem_type must be one of {', '.join(PROBLEM_TYPES)}, got {json.dumps(manifest['problem_type'])[:100]}"
        )
    if "label_counts" in manifest:
        counts = manifest["label_counts"]
        if not isinstance(counts, Mapping) or set(counts) != set(label_map):
            raise ValueError(f"{source}: label_counts must give a count for each label of label_map, got {json.dumps(counts)[:200]}")
        for label, count in counts.items():
            _require_count(count, f"label_counts[{json.dumps(label)}]", source)
    splits = manifest["splits"]
    if not isinstance(splits, Mapping):
        raise ValueError(f"{source}: splits must be a JSON object (split name -> files and counts), got {_json_type(splits)}")
    for split, info in splits.items():
        if not isinstance(info, Mapping):
            raise ValueError(f"{source}: split {split!r} must be a JSON object, got {_json_type(info)}")
        for key in ("read", "records", "rejected", "files"):
            if key not in info:
                raise ValueError(f"{source}: split {split!r} lacks {key!r}")
        for key in ("read", "records", "rejected"):
            _require_count(info[key], f"splits.{split}.{key}", source)
        for key in ("empty_label_sets", "unlabelled"):  # multi-label manifests
            if key in info:
                _require_count(info[key], f"splits.{split}.{key}", source)
        _validate_files(info["files"], split, source)
        if info["read"] != info["records"] + info["rejected"]:
            raise ValueError(
                f"{source}: split {split!r} has read {info['read']} != records {info['records']} + rejected {info['rejected']}"
            )
        file_rows = sum(f["rows"] for f in info["files"])
        if file_rows != info["records"]:
            raise ValueError(
                f"{source}: split {split!r} file row counts do not add up to records {info['records']} (they add up to {file_rows})"
            )


def _validate_files(files: Any, split: str, source: str) -> None:
    """``splits.<split>.files``: a list of ``{"name": plain file name, "rows": int >= 0, ...}``, names unique."""
    if not isinstance(files, list):
        raise ValueError(f"{source}: splits.{split}.files must be a list of {{name, rows}} objects, got {_json_type(files)}")
    seen: set[str] = set()
    for index, entry in enumerate(files):
        where = f"splits.{split}.files[{index}]"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{source}: {where} must be a JSON object with name and rows, got {_json_type(entry)}")
        for key in ("name", "rows"):
            if key not in entry:
                raise ValueError(f"{source}: {where} lacks {key!r}")
        name = entry["name"]
        if not isinstance(name, str) or not _FILE_NAME_RE.match(name):
            raise ValueError(
                f"{source}: {where}.name must be a file name in the manifest's folder or its run folder, got {json.dumps(name)}"
            )
        if name in seen:
            raise ValueError(f"{source}: {where}.name {name!r} is listed twice")
        seen.add(name)
        _require_count(entry["rows"], f"{where}.rows", source)
        if "row_groups" in entry:
            _require_count(entry["row_groups"], f"{where}.row_groups", source)


def _is_count(value: Any) -> bool:
    """A JSON integer >= 0 (``true`` is not one, though Python says bool is an int)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _require_count(value: Any, field: str, source: str) -> None:
    if not _is_count(value):
        raise ValueError(f"{source}: {field} must be an integer >= 0, got {json.dumps(value)[:100]}")


def _json_type(value: Any) -> str:
    """How a JSON value looks to the person who edited the file: ``a list``, ``the string "3"``."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, str):
        return f"the string {json.dumps(value)[:100]}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, list):
        return "a list"
    return "an object" if isinstance(value, Mapping) else type(value).__name__


def check_compatible(manifest: Mapping[str, Any], tokenizer_identity: Mapping[str, Any]) -> None:
    """Refuse shards of another schema version or made with another tokenizer, saying what differs."""
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(
            f"the shards have schema_version {manifest.get('schema_version')!r}, this version of spanwise reads "
            f"{SCHEMA_VERSION}; re-run beam_pipelines.preprocess with this version of spanwise"
        )
    made_with = manifest["tokenizer"]
    differences = [
        f"{key}: shards {made_with.get(key)!r} vs now {tokenizer_identity.get(key)!r}"
        for key in ("fingerprint", "vocab_size", "special_tokens", "num_special_tokens_single", "num_special_tokens_pair")
        if made_with.get(key) != tokenizer_identity.get(key)
    ]
    if differences:
        raise ValueError(
            f"the shards were tokenized with {made_with.get('name_or_path')!r}, which differs from "
            f"{tokenizer_identity.get('name_or_path')!r}: " + "; ".join(differences)
        )


# How many labels the statistics list with their train document counts (the most frequent).
_SHOWN_LABEL_COUNTS = 20


def _label_count_line(counts: Mapping[str, int]) -> str:
    """``train documents per label: tech 40, sport 31, ...``: the most frequent first, cut short."""
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    shown = ", ".join(f"{label} {count}" for label, count in ordered[:_SHOWN_LABEL_COUNTS])
    more = len(ordered) - _SHOWN_LABEL_COUNTS
    return f"train documents per label: {shown}" + (f", ... ({more} more)" if more > 0 else "")


def format_stats(manifest: Mapping[str, Any]) -> str:
    """The corpus statistics as a small text table, for people."""
    labels = list(manifest["label_map"])
    unnamed = bool(labels) and all(label.lstrip("-").isdigit() for label in labels)
    multi_label = problem_type_of(manifest) == MULTI_LABEL
    lines = [
        f"labels ({len(labels)}{', a set per document: ' + MULTI_LABEL if multi_label else ''}): {', '.join(labels)}"
        + (" (integers without names: give --label_names to name them)" if unnamed else ""),
        *([_label_count_line(manifest["label_counts"])] if multi_label and "label_counts" in manifest else []),
        f"{'split':<6} {'read':>7} {'written':>7} {'rejected':>8}  "
        f"{'p10':>6} {'p50':>6} {'p90':>6} {'p99':>6} {'max':>7}  {'>126':>6} {'>254':>6} {'>510':>6}",
    ]
    order = {split: i for i, split in enumerate(SPLITS)}
    for split in sorted(manifest["splits"], key=lambda name: (order.get(name, len(order)), name)):
        info = manifest["splits"][split]
        stats = info.get("stats") or {}
        quantiles = stats.get("quantiles", {})
        longer = stats.get("fraction_longer_than", {})
        lines.append(
            f"{split:<6} {info['read']:>7} {info['records']:>7} {info['rejected']:>8}  "
            + " ".join(f"{quantiles.get(q, 0):>6}" for q in ("p10", "p50", "p90", "p99"))
            + f" {stats.get('max', 0):>7}  "
            + " ".join(f"{longer.get(str(b), 0.0):>6.1%}" for b in (126, 254, 510))
        )
        if info.get("rejected_by_reason"):
            reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(info["rejected_by_reason"].items()))
            lines.append(f"       rejected: {reasons}")
        if "label_set_sizes" in info:
            sizes = " ".join(f"{size}:{count}" for size, count in info["label_set_sizes"].items()) or "-"
            unlabelled = f"; unlabelled {info['unlabelled']}" if info.get("unlabelled") else ""
            lines.append(f"       labels per document: {sizes} (empty sets {info.get('empty_label_sets', 0)}){unlabelled}")
        if info.get("derived_ids"):
            lines.append("       IDs made from file and line (the input has no ID column)")
        capped = [
            f"{stats[key]} at --{flag}"
            for key, flag in (("capped_at_max_doc_chars", "max_doc_chars"), ("capped_at_max_doc_tokens", "max_doc_tokens"))
            if stats.get(key)
        ]
        if capped:
            lines.append(f"       capped: {', '.join(capped)}")
    lines.append(
        "token lengths are content tokens (TEXT_A + TEXT_B, no special tokens); "
        "a text cut at --max_doc_chars counts the tokens of its cut text"
    )
    for split in sorted(manifest["splits"], key=lambda name: (order.get(name, len(order)), name)):
        info = manifest["splits"][split]
        if split != "train" and info["read"] and not info["records"]:
            by_reason = info.get("rejected_by_reason") or {}
            reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(by_reason.items()))
            hint = "; unseen_label: its labels are not labels of the train split" if "unseen_label" in by_reason else ""
            lines.append(
                f"WARNING: every row of split {split!r} was rejected ({reasons}): nothing to evaluate or predict "
                f"on; see {manifest['run'] + '/' if manifest.get('run') else ''}rejected/{split}-*.jsonl{hint}"
            )
    return "\n".join(lines)
