"""``python -m trainer.report``: a PNG plot of finished (or running) training runs.

    python -m trainer.report RUN_DIR [RUN_DIR ...] --output plot.png \\
        [--metric accuracy|macro_f1|mcc|loss|micro_f1|exact_match] [--x auto|epoch|step] [--title TEXT]

Each ``RUN_DIR`` is the ``--output_dir`` of a ``trainer.task`` run (local or ``gs://``). The
left panel is the evaluation metric at every evaluation, read from ``eval_results.json``
(written after each evaluation, so a running job can be plotted too); the right panel, when the
run has TensorBoard event files, is the training loss per optimizer step (``train/loss``).
One line per run, labelled with the task name and the sequence-length function from
``run_config.json`` (the directory name while the run has not saved yet).

Plotting uses matplotlib's Agg backend: no display is needed. ``bench/study.py`` draws its
figures through :func:`plot_panels` too, so the study's plots and this command's look alike.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import posixpath
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import spanwise_io

__all__ = ["Series", "Panel", "RunRecord", "load_run", "event_files", "read_scalars", "read_scalar_events", "plot_panels", "plot_runs", "main"]

log = logging.getLogger("trainer.report")

EVAL_RESULTS_NAME = "eval_results.json"  # as trainer.task writes them (not imported: no torch needed here)
RUN_CONFIG_NAME = "run_config.json"
EVENTS_PREFIX = "events.out.tfevents."
METRICS = ("accuracy", "macro_f1", "mcc", "loss", "micro_f1", "exact_match")  # the last two: label sets


@dataclass
class Series:
    """One line of a panel; ``low``/``high`` (same length as ``x``) draw a shaded band."""

    label: str
    x: list[float]
    y: list[float]
    low: list[float] | None = None
    high: list[float] | None = None


@dataclass
class Panel:
    title: str
    xlabel: str
    ylabel: str
    series: list[Series] = field(default_factory=list)


@dataclass
class RunRecord:
    """What the report reads from one run directory."""

    run_dir: str
    label: str
    history: list[dict[str, Any]]
    run_config: dict[str, Any] | None
    scalars: dict[str, list[tuple[int, float]]]


# --------------------------------------------------------------------------- reading
def _read_json(path: str) -> Any | None:
    if not spanwise_io.exists(path):
        return None
    return json.loads(spanwise_io.read_bytes(path))


def run_label(run_dir: str, run_config: dict[str, Any] | None) -> str:
    """``task_name: seq_fn params`` (e.g. ``bbc-rs-s13: rs 16 (fixed spans)``), else the directory name."""
    name = posixpath.basename(str(run_dir).rstrip("/")) if spanwise_io.is_remote(run_dir) else os.path.basename(os.path.normpath(run_dir))
    if not run_config:
        return name
    args = run_config.get("args", {})
    seq = run_config.get("seq_len") or {}
    func = seq.get("name", args.get("seq_len_func", "?"))
    params = seq.get("params", args.get("seq_func_params", []))
    text = f"{args.get('task_name', name)}: {func}" + (" " + " ".join(str(p) for p in params) if params else "")
    if args.get("fixed_spans") and func in ("rs", "rso", "rsd"):
        text += " (fixed spans)"
    return text


def event_files(run_dir: str, run_config: dict[str, Any] | None) -> list[str]:
    """TensorBoard event files of a run: its ``--logging_dir`` if recorded, else ``runs/*/``."""
    candidates: list[str] = []
    args = (run_config or {}).get("args", {})
    if args.get("logging_dir"):
        candidates.append(args["logging_dir"])
    if args.get("task_name"):
        candidates.append(spanwise_io.join(run_dir, "runs", args["task_name"]))
    runs = spanwise_io.join(run_dir, "runs")
    if spanwise_io.exists(runs) and spanwise_io.isdir(runs):
        candidates.extend(spanwise_io.join(runs, name) for name in spanwise_io.listdir(runs))
    seen: set[str] = set()
    files: list[str] = []
    for directory in candidates:
        if directory in seen or not spanwise_io.exists(directory) or not spanwise_io.isdir(directory):
            continue
        seen.add(directory)
        files.extend(spanwise_io.join(directory, name) for name in spanwise_io.listdir(directory) if name.startswith(EVENTS_PREFIX))
        if files:
            break  # the first directory with events is the run's
    return files


def read_scalar_events(files: Sequence[str]) -> dict[str, list[tuple[int, float, float]]]:
    """``tag -> [(step, value, wall_time), ...]`` of the scalar summaries in TensorBoard event files.

    Remote files are copied to a temporary file first (the event reader wants a local path).
    A later value for the same (tag, step) replaces an earlier one (a resumed run logs again).
    """
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    found: dict[str, dict[int, tuple[float, float]]] = {}
    for path in files:
        with _local_copy(path) as local:
            for event in EventFileLoader(local).Load():
                if not event.HasField("summary"):
                    continue
                for value in event.summary.value:
                    kind = value.WhichOneof("value")
                    if kind == "simple_value":
                        number = float(value.simple_value)
                    elif kind == "tensor" and value.metadata.plugin_data.plugin_name == "scalars":
                        number = float(tensor_util.make_ndarray(value.tensor))
                    else:
                        continue
                    found.setdefault(value.tag, {})[int(event.step)] = (number, float(event.wall_time))
    return {tag: [(step, v, t) for step, (v, t) in sorted(points.items())] for tag, points in found.items()}


def read_scalars(files: Sequence[str]) -> dict[str, list[tuple[int, float]]]:
    """``tag -> [(step, value), ...]`` of the scalar summaries in TensorBoard event files."""
    return {tag: [(step, value) for step, value, _ in points] for tag, points in read_scalar_events(files).items()}


@contextlib.contextmanager
def _local_copy(path: str) -> Iterator[str]:
    """A local path for ``path``: itself when local, else a temporary copy removed afterwards."""
    if not spanwise_io.is_remote(path):
        yield path
        return
    handle, temp = tempfile.mkstemp(prefix="spanwise-events-")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(spanwise_io.read_bytes(path))
        yield temp
    finally:
        os.unlink(temp)


def load_run(run_dir: str, with_events: bool = True) -> RunRecord:
    """Read one run directory; ValueError if it has neither evaluations nor events."""
    results = _read_json(spanwise_io.join(run_dir, EVAL_RESULTS_NAME))
    run_config = _read_json(spanwise_io.join(run_dir, RUN_CONFIG_NAME))
    history = list((results or {}).get("history") or [])
    scalars = read_scalars(event_files(run_dir, run_config)) if with_events else {}
    if not history and not scalars:
        raise ValueError(
            f"{run_dir}: no {EVAL_RESULTS_NAME} with evaluations and no TensorBoard events; "
            "is it the --output_dir of a trainer.task run?"
        )
    return RunRecord(run_dir, run_label(run_dir, run_config), history, run_config, scalars)


# --------------------------------------------------------------------------- plotting
def _x_values(history: Sequence[dict[str, Any]], x: str) -> tuple[list[float], str]:
    epochs = [entry.get("epoch") for entry in history]
    if x == "auto":
        x = "epoch" if None not in epochs and len(set(epochs)) == len(epochs) else "step"
    if x == "epoch":
        return [float(e) for e in epochs], "epoch"
    return [float(entry["step"]) for entry in history], "optimizer step"


def plot_panels(panels: Sequence[Panel], output: str, title: str | None = None) -> str:
    """Draw the panels side by side into a PNG at ``output`` (local or gs://); return ``output``."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib import pyplot as plt

    panels = [panel for panel in panels if panel.series]
    if not panels:
        raise ValueError("nothing to plot: no series")
    figure, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.4), squeeze=False)
    for axis, panel in zip(axes[0], panels):
        for series in panel.series:
            marker = "o" if len(series.x) <= 30 else None
            (line,) = axis.plot(series.x, series.y, marker=marker, markersize=4, linewidth=1.5, label=series.label)
            if series.low is not None and series.high is not None:
                axis.fill_between(series.x, series.low, series.high, color=line.get_color(), alpha=0.15, linewidth=0)
        if panel.xlabel == "epoch":  # whole epochs from 0, also when there is a single evaluation
            from matplotlib.ticker import MaxNLocator

            last = max((max(series.x) for series in panel.series if series.x), default=1.0)
            axis.set_xlim(0, max(last, 1.0) + 0.25)
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_title(panel.title, fontsize=10)
        axis.set_xlabel(panel.xlabel)
        axis.set_ylabel(panel.ylabel)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8, loc="best")
    if title:
        figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    if not spanwise_io.is_remote(output):
        parent = os.path.dirname(os.path.abspath(output))
        os.makedirs(parent, exist_ok=True)
    spanwise_io.write_bytes(output, buffer.getvalue())
    return output


def plot_runs(runs: Sequence[RunRecord], output: str, metric: str = "accuracy", x: str = "auto", title: str | None = None) -> str:
    """The eval metric per evaluation (and train loss per step, where logged) of each run."""
    if metric not in METRICS:
        raise ValueError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    eval_panel = Panel(f"{metric} on the evaluation split", "", metric)
    loss_panel = Panel("training loss (TensorBoard train/loss)", "optimizer step", "loss")
    for run in runs:
        if run.history and metric not in run.history[0]:
            has = ", ".join(name for name in METRICS if name in run.history[0])
            raise ValueError(f"{run.label}: its evaluations have no {metric} (they have {has}); choose --metric from those")
        if run.history:
            xs, eval_panel.xlabel = _x_values(run.history, x)
            eval_panel.series.append(Series(run.label, xs, [float(entry[metric]) for entry in run.history]))
        if run.scalars.get("train/loss"):
            steps, values = zip(*run.scalars["train/loss"])
            loss_panel.series.append(Series(run.label, [float(s) for s in steps], list(values)))
    if not eval_panel.xlabel:
        eval_panel.xlabel = "epoch"
    return plot_panels([eval_panel, loss_panel], output, title)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer.report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="--output_dir of trainer.task runs (local or gs://)")
    parser.add_argument("--output", required=True, help="PNG file to write (local or gs://)")
    parser.add_argument("--metric", choices=METRICS, default="accuracy", help="evaluation metric to plot (default accuracy)")
    parser.add_argument("--x", choices=["auto", "epoch", "step"], default="auto",
                        help="x axis of the evaluation panel (auto: epoch when each evaluation has its own, else step)")
    parser.add_argument("--title", default=None)
    parser.add_argument("--no_events", action="store_true", help="do not read TensorBoard events (no loss panel)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        runs = [load_run(run_dir, with_events=not args.no_events) for run_dir in args.run_dirs]
        plot_runs(runs, args.output, args.metric, args.x, args.title)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    summary = {
        "output": args.output,
        "runs": [
            {"run_dir": run.run_dir, "label": run.label, "evaluations": len(run.history),
             f"last_{args.metric}": run.history[-1][args.metric] if run.history else None}
            for run in runs
        ],
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
