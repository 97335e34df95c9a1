"""How far a read task has got, in documents and input bytes, for the progress a person watches.

A task's bytes are its share of the input as planned: its byte range of a plain file, the
whole size of a compressed or CSV file read by one task, the row-group bytes of a Parquet task.
Within a task of an uncompressed text file the bytes advance with the byte offset of the last row
read; a compressed file or a Parquet task counts its bytes when the task ends. At the end of a
task its counts are made exact: documents = lines read - header lines (the manifest's and the
prediction summary's ``read``), bytes = the task's bytes, so the last progress line of a run
holds the totals.
"""

from __future__ import annotations

from typing import Callable, Iterable

from corpora.readers import InputFile, ReadTask, TaskCounts

__all__ = ["task_bytes", "planned_bytes", "TaskProgress"]


def task_bytes(task: ReadTask) -> int:
    """The input bytes a task stands for (see the module docstring)."""
    file = task.file
    if file.format == "parquet":
        return sum(file.row_groups[index][1] for index in task.row_groups)
    return (file.size if task.end is None else task.end) - task.start


def planned_bytes(files: Iterable[InputFile]) -> int:
    """The input bytes of whole files: the sum of their tasks' ``task_bytes``, however they are cut."""
    return sum(sum(nbytes for _, nbytes in file.row_groups) if file.format == "parquet" else file.size
               for file in files)


class TaskProgress:
    """Reports ``(documents, bytes, task done)`` increments of one task to ``report`` as it is read."""

    def __init__(self, task: ReadTask, report: Callable[[int, int, bool], None]) -> None:
        self._task, self._report = task, report
        self._by_offset = task.file.compression is None and task.file.format != "parquet"
        self._size = task_bytes(task)
        self._docs = self._bytes = 0

    def advance(self, docs: int, offset: int | None = None) -> None:
        """``docs`` more documents read, the last at byte ``offset`` of the file (where known)."""
        nbytes = 0
        if self._by_offset and offset is not None:
            reached = min(max(offset - self._task.start, 0), self._size)
            nbytes, self._bytes = max(reached - self._bytes, 0), max(reached, self._bytes)
        self._docs += docs
        self._report(docs, nbytes, False)

    def finish(self, counts: TaskCounts) -> None:
        """The task is read: report what remains to its exact counts."""
        docs = counts.lines - counts.headers - self._docs
        nbytes = self._size - self._bytes
        self._docs, self._bytes = self._docs + docs, self._size
        self._report(docs, nbytes, True)
