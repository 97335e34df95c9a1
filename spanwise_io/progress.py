"""Progress of a long local run, for a person to watch: a tqdm bar on a terminal, plain lines elsewhere.

Every long command of spanwise (preprocessing, both prediction commands, ``Classifier.predict``
on request) counts documents and, where it knows them, input bytes, and shows them with a rate
and an ETA on standard error:

* on a terminal, a tqdm bar (refreshed about every second) when tqdm is installed;
* otherwise (CI, a log file, a pipe), one plain line every ``DEFAULT_LINE_INTERVAL`` seconds
  while the counts move, and a last line with the final counts, for example::

      preprocess: read 52,310 documents, 71.8 MB of 266.0 MB (27%), 2,150 documents/s, ETA 0:00:53
      preprocess: read 188,010 documents, 266.0 MB in 0:01:10, 2,686 documents/s

``SPANWISE_PROGRESS_INTERVAL`` (seconds) overrides both refresh intervals: tests set it small
to see intermediate lines on small inputs.

A Beam job counts inside its workers, which on the local runners are threads of this process or
(``--direct_running_mode multi_processing``) processes of this machine. ``SharedCounts`` carries
their counts to the process that shows them through one small JSON file per process in a local
folder, written at most every ``FLUSH_SECONDS`` and at the end of each read task, so that the
last line holds the exact totals. A remote runner (Dataflow) gets no folder: its workers count
nothing and the launcher shows the job's state instead.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from typing import IO, Callable

__all__ = ["INTERVAL_ENV", "DEFAULT_LINE_INTERVAL", "DEFAULT_BAR_INTERVAL", "FLUSH_SECONDS", "interval",
           "Progress", "SharedCounts", "JobProgress", "format_line", "cpu_spent"]

INTERVAL_ENV = "SPANWISE_PROGRESS_INTERVAL"
# Seconds between plain lines (a log file should not fill up) and between refreshes of a bar.
DEFAULT_LINE_INTERVAL = 10.0
DEFAULT_BAR_INTERVAL = 1.0
# Longest a worker keeps its counts before writing them for the launcher (also bounded by the interval).
FLUSH_SECONDS = 0.5
# Shortest interval (tests ask for "0"): the reporting thread must not spin.
MIN_INTERVAL = 0.005

# CPU seconds this process has spent showing progress (the reporting threads) and counting it for a
# launcher (SharedCounts.add, its file writes included): what bench/progress_overhead.py reports.
_spent = [0.0]
_spent_lock = threading.Lock()


def cpu_spent() -> float:
    """CPU seconds this process has spent on progress so far (see ``_spent``)."""
    return _spent[0]


def _charge(started: float) -> None:
    with _spent_lock:
        _spent[0] += time.thread_time() - started


def interval(terminal: bool) -> float:
    """Seconds between two reports: ``SPANWISE_PROGRESS_INTERVAL`` or the default for the output."""
    value = os.environ.get(INTERVAL_ENV, "").strip()
    if value:
        try:
            seconds = float(value)
        except ValueError:
            seconds = float("nan")
        if not 0 <= seconds < 1e6:  # (nan and inf too)
            raise ValueError(f"${INTERVAL_ENV} must be a number of seconds, got {value!r}")
        return max(seconds, MIN_INTERVAL)
    return DEFAULT_BAR_INTERVAL if terminal else DEFAULT_LINE_INTERVAL


def _duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(round(seconds))))


def _megabytes(nbytes: int) -> str:
    return f"{nbytes / 1e6:,.1f} MB"


def format_line(desc: str, docs: int, nbytes: int, elapsed: float, *, total_docs: int | None = None,
                total_bytes: int | None = None, final: bool = False) -> str:
    """One progress line: documents (of the total), bytes (of the total), rate, then ETA or the time taken."""
    parts = [f"{desc} {docs:,}" + (f" of {total_docs:,}" if total_docs is not None else "") + " documents"]
    if total_bytes:
        parts.append(_megabytes(nbytes) if final else f"{_megabytes(nbytes)} of {_megabytes(total_bytes)}")
    rate = docs / elapsed if elapsed > 0 else 0.0
    if final:
        parts[-1] += f" in {_duration(elapsed)}"
        parts.append(f"{rate:,.0f} documents/s" if rate >= 10 else f"{rate:,.2f} documents/s")
        return ", ".join(parts)
    done = None
    if total_docs:
        done = docs / total_docs
    elif total_bytes:
        done = nbytes / total_bytes
    if done is not None:
        parts[-1] += f" ({min(done, 1.0):.0%})"
    parts.append(f"{rate:,.0f} documents/s" if rate >= 10 else f"{rate:,.2f} documents/s")
    if done is not None and 0 < done < 1:
        parts.append(f"ETA {_duration(elapsed * (1 - done) / done)}")
    return ", ".join(parts)


class Progress:
    """Shows counts of documents (and input bytes) as a job makes them, until ``close``.

    Counts arrive by ``update`` (the job runs in this thread) or, with ``poll``, are read every
    tick from elsewhere (``SharedCounts.total`` of a Beam job). A daemon thread shows them every
    ``interval`` seconds; ``close`` shows the final counts once. Disabled (``enabled=False``,
    ``--quiet``), it shows nothing and starts no thread.

    Args:
        desc: what is being counted, as the start of each line (``"preprocess: read"``).
        total_docs, total_bytes: what the run will reach, when known (the ETA follows the first).
        poll: returns the current ``(documents, bytes)`` (then nothing calls ``update``).
        stream: where to show it (default standard error).
        terminal: bar or lines (default: whether ``stream`` is a terminal).
    """

    def __init__(self, desc: str, *, total_docs: int | None = None, total_bytes: int | None = None,
                 poll: Callable[[], tuple[int, int]] | None = None, stream: IO[str] | None = None,
                 terminal: bool | None = None, enabled: bool = True) -> None:
        self.desc, self.total_docs, self.total_bytes, self.enabled = desc, total_docs, total_bytes, enabled
        self._poll = poll
        self._stream = stream if stream is not None else sys.stderr
        self._terminal = bool(getattr(self._stream, "isatty", lambda: False)()) if terminal is None else terminal
        self._interval = interval(self._terminal) if enabled else 0.0
        self._docs = self._bytes = 0
        self._shown: tuple[int, int] = (0, 0)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar = None
        self._start = time.monotonic()
        self._closed = False

    def __enter__(self) -> "Progress":
        return self.start()

    def __exit__(self, kind, error, traceback) -> None:  # noqa: ANN001
        self.close(show=error is None)

    @property
    def counts(self) -> tuple[int, int]:
        """``(documents, bytes)`` so far."""
        if self._poll is not None:  # never backwards, even where the poll estimates (SharedCounts.scored)
            docs, nbytes = self._poll()
            with self._lock:
                self._docs, self._bytes = max(docs, self._docs), max(nbytes, self._bytes)
                return self._docs, self._bytes
        with self._lock:
            return self._docs, self._bytes

    def start(self) -> "Progress":
        self._start = time.monotonic()
        if not self.enabled:
            return self
        if self._terminal:
            self._bar = self._make_bar()
        self._thread = threading.Thread(target=self._run, name="spanwise-progress", daemon=True)
        self._thread.start()
        return self

    def update(self, docs: int = 0, nbytes: int = 0) -> None:
        """Add documents done and input bytes read."""
        with self._lock:
            self._docs += docs
            self._bytes += nbytes

    def close(self, show: bool = True) -> None:
        """Stop the thread; show the final counts (unless ``show`` is False: the run failed)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self.enabled:
            return
        elapsed = time.monotonic() - self._start
        docs, nbytes = self.counts
        if self._bar is not None:
            self._refresh_bar(docs, nbytes)
            self._bar.close()
        if show:
            self._write(format_line(self.desc, docs, nbytes, elapsed, total_docs=self.total_docs,
                                    total_bytes=self.total_bytes, final=True))

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            started = time.thread_time()
            try:
                self._tick()
            except Exception:  # noqa: BLE001 - progress must never stop the job
                pass
            _charge(started)

    def _tick(self) -> None:
        docs, nbytes = self.counts
        if self._bar is not None:
            self._refresh_bar(docs, nbytes)
        elif (docs, nbytes) != self._shown and docs > 0:
            self._shown = (docs, nbytes)
            self._write(format_line(self.desc, docs, nbytes, time.monotonic() - self._start,
                                    total_docs=self.total_docs, total_bytes=self.total_bytes))

    def _write(self, line: str) -> None:
        try:
            self._stream.write(line + "\n")
            self._stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: nothing to show it on
            pass

    def _make_bar(self):  # noqa: ANN202 (a tqdm, when installed)
        try:
            from tqdm.auto import tqdm
        except ImportError:
            self._terminal = False
            self._interval = interval(False) if INTERVAL_ENV not in os.environ else self._interval
            return None
        by_bytes = self.total_docs is None and bool(self.total_bytes)
        return tqdm(total=self.total_bytes if by_bytes else self.total_docs, desc=self.desc,
                    unit="B" if by_bytes else " documents", unit_scale=by_bytes, file=self._stream,
                    dynamic_ncols=True, mininterval=self._interval, leave=False)

    def _refresh_bar(self, docs: int, nbytes: int) -> None:
        bar = self._bar
        bar.n = nbytes if bar.unit == "B" else docs
        if bar.unit == "B":
            bar.set_postfix_str(f"{docs:,} documents", refresh=False)
        bar.refresh()


class SharedCounts:
    """Documents, bytes (and views) that a job's workers add up and its launcher reads, through ``folder``.

    Each process keeps its own running totals (shared by its threads) and writes them to
    ``<folder>/<pid>.json`` at most every ``FLUSH_SECONDS`` and on ``flush``; ``totals`` sums
    the files. Pickles as its folder name, so a Beam DoFn may hold it. ``views`` and ``scored``
    count a prediction job's views made and scored (``JobProgress(scoring=True)``).
    """

    _states: dict[str, list] = {}  # folder -> [lock, [docs, bytes, views, scored], last write, seconds between writes]
    _states_lock = threading.Lock()

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def __reduce__(self):  # noqa: ANN204
        return SharedCounts, (self.folder,)

    def _state(self) -> list:
        state = SharedCounts._states.get(self.folder)
        if state is None:
            with SharedCounts._states_lock:
                state = SharedCounts._states.setdefault(
                    self.folder, [threading.Lock(), [0, 0, 0, 0], 0.0, min(FLUSH_SECONDS, interval(False))])
        return state

    def add(self, docs: int = 0, nbytes: int = 0, flush: bool = False, *, views: int = 0, scored: int = 0) -> None:
        """Count documents, input bytes, views made and scored; write them out if due (or ``flush``)."""
        started = time.thread_time()
        try:
            self._add((docs, nbytes, views, scored), flush)
        finally:
            _charge(started)

    def _add(self, values: tuple[int, int, int, int], flush: bool) -> None:
        state = self._state()
        with state[0]:
            counts = state[1]
            for i, value in enumerate(values):
                counts[i] += value
            now = time.monotonic()
            if not flush and now - state[2] < state[3]:
                return
            state[2] = now
            path = os.path.join(self.folder, f"{os.getpid()}.json")
            try:
                with open(path + ".tmp", "w", encoding="utf-8") as handle:
                    handle.write(json.dumps(counts))
                os.replace(path + ".tmp", path)
            except OSError:  # the launcher has gone (or removed the folder): nobody to tell
                pass

    def totals(self) -> tuple[int, int, int, int]:
        """``(documents, bytes, views, scored)``: the sums of every process's last written counts."""
        sums = [0, 0, 0, 0]
        try:
            names = os.listdir(self.folder)
        except OSError:
            return 0, 0, 0, 0
        for name in names:
            if not name.endswith(".json"):
                continue
            try:
                with open(os.path.join(self.folder, name), encoding="utf-8") as handle:
                    values = json.load(handle)
            except (OSError, ValueError):
                continue
            for i, value in enumerate(values[:4]):
                sums[i] += int(value)
        return sums[0], sums[1], sums[2], sums[3]

    def total(self) -> tuple[int, int]:
        """``(documents, bytes)`` read."""
        return self.totals()[:2]

    def scored(self) -> tuple[int, int]:
        """``(documents, bytes)`` read, times the share of the views made so far that are scored: the
        documents a prediction job has scored, whether its reading runs ahead of scoring or not."""
        docs, nbytes, views, scored = self.totals()
        if views == 0 or scored >= views:  # (no views yet, or none left: the counts read stand)
            return docs, nbytes
        return docs * scored // views, nbytes * scored // views


class JobProgress:
    """The progress of a Beam job on a local runner, shown here while ``pipeline.run()`` runs it.

    Makes the folder of its ``SharedCounts`` (``folder``: give it to the job's read step) and,
    as a context manager, shows the counts from it until the job returns; then removes the folder.
    Disabled (a remote runner, ``--quiet``), ``folder`` is None and it shows nothing. ``scoring``:
    show the documents scored (``SharedCounts.scored``), not those read.
    """

    def __init__(self, desc: str, total_bytes: int | None, enabled: bool = True,
                 stream: IO[str] | None = None, scoring: bool = False) -> None:
        self.folder = os.path.join(tempfile.gettempdir(), f"spanwise-progress-{os.getpid()}-{uuid.uuid4().hex[:12]}") \
            if enabled else None  # made on __enter__, so that a job that never starts leaves nothing behind
        counts = SharedCounts(self.folder) if self.folder else None
        self.progress = Progress(desc, total_bytes=total_bytes, stream=stream, enabled=enabled,
                                 poll=(counts.scored if scoring else counts.total) if counts else None)

    def __enter__(self) -> "JobProgress":
        if self.folder:
            os.makedirs(self.folder, exist_ok=True)
        self.progress.start()
        return self

    def __exit__(self, kind, error, traceback) -> None:  # noqa: ANN001
        try:
            self.progress.close(show=error is None)
        finally:
            if self.folder:
                shutil.rmtree(self.folder, ignore_errors=True)
