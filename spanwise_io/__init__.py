"""One small I/O layer for local paths and ``gs://`` URLs, over fsspec/gcsfs.

Every path argument of spanwise may be local or ``gs://``. Code calls these helpers instead of
``open``/``os`` so the two behave the same. Writes are atomic: local files are written to a
temporary name and renamed; a GCS object only becomes visible when its upload completes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import uuid
from typing import IO, Iterator

import fsspec

__all__ = [
    "is_remote",
    "join",
    "filesystem",
    "exists",
    "isdir",
    "listdir",
    "makedirs",
    "open_read",
    "atomic_write",
    "read_bytes",
    "write_bytes",
    "rename",
    "remove",
    "remove_tree",
    "size",
    "copy_dir_to_local",
    "upload_dir",
]


def is_remote(path: str) -> bool:
    """True for URLs with a scheme (``gs://...``), False for local paths."""
    return "://" in str(path)


def join(base: str, *parts: str) -> str:
    """Join path parts with '/' for URLs and the OS separator for local paths."""
    if is_remote(base):
        return posixpath.join(str(base).rstrip("/") + "/", *parts)
    return os.path.join(base, *parts)


def filesystem(path: str) -> fsspec.AbstractFileSystem:
    """The fsspec filesystem for ``path`` (gcsfs for gs://, local otherwise)."""
    protocol = str(path).split("://", 1)[0] if is_remote(path) else "file"
    return fsspec.filesystem(protocol)


def exists(path: str) -> bool:
    return filesystem(path).exists(path)


def isdir(path: str) -> bool:
    return filesystem(path).isdir(path)


def listdir(path: str) -> list[str]:
    """Names (not full paths) of the entries directly under ``path``, sorted."""
    fs = filesystem(path)
    entries = fs.ls(path, detail=False)
    return sorted(posixpath.basename(str(e).rstrip("/")) for e in entries)


def makedirs(path: str) -> None:
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)


def size(path: str) -> int:
    return int(filesystem(path).size(path))


def open_read(path: str) -> IO[bytes]:
    """Open for binary reading; remote files use read-ahead (fast sequential reads)."""
    if is_remote(path):
        return filesystem(path).open(path, "rb", cache_type="readahead")
    return open(path, "rb")


def read_bytes(path: str) -> bytes:
    with open_read(path) as handle:
        return handle.read()


@contextlib.contextmanager
def atomic_write(path: str) -> Iterator[IO[bytes]]:
    """Write ``path`` so readers see either the old file or the whole new one, never a part."""
    if is_remote(path):
        handle = filesystem(path).open(path, "wb")
        try:
            yield handle
        except BaseException:
            _abort_remote_write(handle)
            raise
        handle.close()  # the upload completes, and the object appears, only here
        return
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _abort_remote_write(handle: IO[bytes]) -> None:
    """Drop a failed remote write without publishing what was written so far.

    fsspec's file ``__exit__`` (and ``__del__``) call ``close()``, which *finishes* the upload,
    so a ``with fs.open(...)`` block that raises would leave a partial object behind.
    """
    with contextlib.suppress(Exception):
        handle.discard()  # gcsfs: cancel a resumable upload already started
    handle.closed = True  # close() and __del__ then upload nothing of the buffer


def write_bytes(path: str, data: bytes) -> None:
    with atomic_write(path) as handle:
        handle.write(data)


def rename(src: str, dst: str) -> None:
    """Move ``src`` to ``dst`` (a copy and delete on GCS, ``os.replace`` locally)."""
    if is_remote(src):
        filesystem(src).mv(src, dst)
    else:
        os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
        os.replace(src, dst)


def remove(path: str) -> None:
    fs = filesystem(path)
    if fs.exists(path):
        fs.rm(path)


def remove_tree(path: str) -> None:
    fs = filesystem(path)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def copy_dir_to_local(url: str, cache_root: str | None = None) -> str:
    """Copy the files directly under a remote directory into a local cache; return its path.

    The cache folder is named from the URL and the listing (names, sizes, generations/etags), so
    a second call reuses the copy while a re-uploaded file gets a fresh one.
    """
    fs = filesystem(url)
    if not fs.isdir(url):
        raise ValueError(f"{url} is not a directory")
    entries = sorted((e for e in fs.ls(url, detail=True) if e["type"] == "file"), key=lambda e: e["name"])
    signature = [
        (e["name"], e.get("size"), str(e.get("generation") or e.get("etag") or e.get("md5Hash") or e.get("mtime") or ""))
        for e in entries
    ]
    key = hashlib.sha256(repr((url.rstrip("/"), signature)).encode()).hexdigest()[:16]
    root = cache_root or os.path.join(os.path.expanduser("~"), ".cache", "spanwise", "remote")
    local = os.path.join(root, key)
    marker = os.path.join(local, ".complete")
    if os.path.exists(marker):
        return local
    os.makedirs(local, exist_ok=True)
    for entry in entries:
        name = posixpath.basename(entry["name"].rstrip("/"))
        source = entry["name"] if "://" in entry["name"] else f"{url.split('://', 1)[0]}://{entry['name']}"
        with open_read(source) as src, atomic_write(os.path.join(local, name)) as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
    with open(marker, "w") as handle:
        handle.write(url)
    return local


def upload_dir(local_dir: str, url: str) -> None:
    """Copy the files of a local directory tree to ``url`` (local or remote), each atomically."""
    for root, _, files in os.walk(local_dir):
        relative = os.path.relpath(root, local_dir)
        for name in sorted(files):
            parts = [] if relative == "." else relative.split(os.sep)
            with open(os.path.join(root, name), "rb") as src, atomic_write(join(url, *parts, name)) as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
