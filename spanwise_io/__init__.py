"""One small I/O layer for local paths and ``gs://`` URLs, over fsspec/gcsfs.

The bottom of the house: every package may import it; it imports no other package of spanwise.

Every path argument of spanwise may be local or ``gs://``. Code calls these helpers instead of
``open``/``os`` so the two behave the same. Writes are atomic: local files are written to a
temporary name and renamed; a GCS object only becomes visible when its upload completes.

Retries, and which layer does what (remote paths only; local I/O errors are not retried):

* gcsfs retries every single HTTP request (``GCSFileSystem._request``): 6 tries in all, sleeping
  ``min(2**n + U(0, 1), 32)`` s (1-2, 2-3, 4-5, 8-9, 16-17 s), on HTTP 408, 429, 500-504 (502
  arrives as requests' ``ProxyError``), refused/reset/dropped connections and bodies cut short
  (``aiohttp.ClientError``), and checksum mismatches; never on 404 (``FileNotFoundError``),
  403 (``OSError``) or other 4xx.
* What that leaves open, and this module covers by retrying whole operations (``_retry``:
  ``RETRY_ATTEMPTS`` tries, exponential backoff with jitter, only on ``is_transient`` errors):
  a request that is still failing after gcsfs's 6 tries; steps between requests, such as
  reopening a file at an offset (``open_read`` returns a reader that does that); operations of
  several requests whose state gcsfs cannot resume: a resumable upload whose session was lost
  (404/410) is redone from the start, which is safe because nothing is visible before the
  upload completes; and requests that are not idempotent when a reply is lost after the change
  was made: a move retried after it succeeded finds no source (``rename`` then checks that the
  target is there), a delete retried likewise finds nothing (``remove`` treats that as done).
* Plain gcsfs calls hide some failures: its ``isdir`` answers False on any ``OSError``
  (connection resets included), so ``isdir`` here asks ``info`` and treats only
  ``FileNotFoundError`` as "no".

``write_bytes`` and ``upload_dir`` (gcsfs's resumable upload, 2+ requests) are redone whole on
failure. ``atomic_write`` streams through gcsfs, so only gcsfs's per-request retries apply to it:
its caller holds the data, which cannot be replayed here.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import logging
import os
import posixpath
import random
import time
import uuid
from typing import IO, Callable, Iterator, TypeVar

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
    "glob",
    "COMPRESSIONS",
    "damage",
    "compression_of",
    "open_decompressed",
    "copy_dir_to_local",
    "upload_dir",
    "is_transient",
]

_LOG = logging.getLogger(__name__)
_T = TypeVar("_T")

# Whole-operation retries, on top of gcsfs's per-request ones (module docstring). Tests lower them.
RETRY_ATTEMPTS = 4
RETRY_INITIAL_DELAY = 1.0  # seconds before the 2nd try; doubled for each further try
RETRY_MAX_DELAY = 16.0

_TRANSIENT_STATUS = frozenset({408, 429, *range(500, 600)})
_TRANSIENT_ERRNOS = frozenset(
    {errno.ECONNRESET, errno.ECONNABORTED, errno.ECONNREFUSED, errno.EPIPE, errno.ETIMEDOUT}
)
_PERMANENT = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)


def _http_status(error: BaseException) -> int | None:
    """The HTTP status an error carries: aiohttp ``ClientResponseError.status``, gcsfs
    ``HttpError.code``, google.api_core ``.code``, requests ``HTTPError.response.status_code``."""
    for get in (
        lambda: getattr(error, "status", None),
        lambda: getattr(error, "code", None),
        lambda: getattr(getattr(error, "response", None), "status_code", None),
    ):
        value = get()
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
            return value
    return None


def is_transient(error: BaseException) -> bool:
    """True for errors that a later try may not meet: HTTP 408/429/5xx, dropped or reset
    connections, timeouts, bodies cut short. False for 404, 403, other 4xx and local errors."""
    if isinstance(error, _PERMANENT):
        return False
    status = _http_status(error)
    if status is not None:
        return status in _TRANSIENT_STATUS
    if isinstance(error, (ConnectionError, TimeoutError)):  # resets, refusals, broken pipes; asyncio.TimeoutError
        return True
    if isinstance(error, OSError) and error.errno in _TRANSIENT_ERRNOS:
        return True
    return _is_transient_client_error(error)


def _is_transient_client_error(error: BaseException) -> bool:
    """HTTP client errors without a status: aiohttp's and requests' connection errors, gcsfs's
    checksum mismatch (a body that arrived damaged)."""
    with contextlib.suppress(ImportError):
        import aiohttp

        if isinstance(error, aiohttp.ClientError) and not isinstance(error, ValueError):  # not InvalidURL
            return True
    with contextlib.suppress(ImportError):
        import requests.exceptions

        if isinstance(error, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                              requests.exceptions.ChunkedEncodingError)):
            return True
    with contextlib.suppress(ImportError):
        from gcsfs.retry import ChecksumError

        if isinstance(error, ChecksumError):
            return True
    return False


def _is_lost_upload_session(error: BaseException) -> bool:
    """A resumable upload session that GCS no longer knows (404/410 on its URI): start anew."""
    return (isinstance(error, FileNotFoundError) or _http_status(error) == 410) and "upload_id=" in str(error)


def _retry(
    operation: Callable[[], _T],
    what: str,
    transient: Callable[[BaseException], bool] = is_transient,
    before_retry: Callable[[], None] | None = None,
) -> _T:
    """``operation()``, tried again on transient errors: ``RETRY_ATTEMPTS`` tries in all, waiting
    ``RETRY_INITIAL_DELAY * 2**n`` s (at most ``RETRY_MAX_DELAY``) times a jitter in [0.5, 1]."""
    attempt = 1
    while True:
        try:
            return operation()
        except Exception as error:
            if attempt >= RETRY_ATTEMPTS or not transient(error):
                raise
            delay = min(RETRY_MAX_DELAY, RETRY_INITIAL_DELAY * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            _LOG.warning(
                "%s failed (%s: %s); try %d of %d in %.2f s",
                what, type(error).__name__, str(error)[:200], attempt + 1, RETRY_ATTEMPTS, delay,
            )
            if before_retry is not None:
                before_retry()
            time.sleep(delay)
            attempt += 1


def _forget_listings(fs: fsspec.AbstractFileSystem) -> None:
    """Drop gcsfs's cached listings: a failed call may have changed the bucket (its reply was
    lost) without gcsfs updating its cache."""
    with contextlib.suppress(Exception):
        fs.invalidate_cache()


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


def _call(path: str, what: str, operation: Callable[[], _T]) -> _T:
    """``operation()``; for a remote ``path``, retried on transient errors."""
    return _retry(operation, f"{what} {path}") if is_remote(path) else operation()


def exists(path: str) -> bool:
    fs = filesystem(path)
    return _call(path, "exists", lambda: fs.exists(path))  # gcsfs: only a 404 means False


def isdir(path: str) -> bool:
    fs = filesystem(path)
    if not is_remote(path):
        return fs.isdir(path)

    def remote_isdir() -> bool:
        try:
            return fs.info(path)["type"] == "directory"
        except FileNotFoundError:
            return False

    return _call(path, "isdir", remote_isdir)


def listdir(path: str) -> list[str]:
    """Names (not full paths) of the entries directly under ``path``, sorted."""
    fs = filesystem(path)
    entries = _call(path, "list", lambda: fs.ls(path, detail=False))
    return sorted(posixpath.basename(str(e).rstrip("/")) for e in entries)


def makedirs(path: str) -> None:
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)


def size(path: str) -> int:
    fs = filesystem(path)
    return int(_call(path, "size", lambda: fs.size(path)))


def glob(pattern: str) -> list[tuple[str, int]]:
    """The files (not folders) a pattern matches, as ``(path, size)``, sorted by path.

    ``*``, ``?`` and ``[...]`` match within one path segment and ``**`` across segments (fsspec's
    rules, the same locally and on GCS). A pattern without wildcards is one file, if it exists.
    Remote paths keep their ``gs://`` prefix.
    """
    fs = filesystem(pattern)
    found = _call(pattern, "glob", lambda: fs.glob(pattern, detail=True))
    protocol = str(pattern).split("://", 1)[0] if is_remote(pattern) else None
    out = []
    for name, info in found.items():
        if info.get("type") != "file":
            continue
        path = f"{protocol}://{name}" if protocol and "://" not in name else name
        out.append((path, int(info.get("size") or 0)))
    return sorted(out)


# Compressed inputs are recognised by their file name's last suffix.
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".zstd": "zstd"}


def compression_of(path: str) -> str | None:
    """``gzip``, ``bz2``, ``zstd`` or None (not compressed), from the file name."""
    return COMPRESSIONS.get(os.path.splitext(str(path).rstrip("/"))[1].lower())


def open_decompressed(path: str, compression: str | None) -> IO[bytes]:
    """Open ``path`` for binary reading, decompressing ``gzip``, ``bz2`` or ``zstd`` on the fly.

    The result is buffered (fast ``readline``); only an uncompressed file is seekable.
    """
    raw = open_read(path)
    if compression is None:
        return raw
    try:
        if compression == "gzip":
            import gzip

            stream: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="rb")
        elif compression == "bz2":
            import bz2

            stream = bz2.BZ2File(raw, mode="rb")
        elif compression == "zstd":
            stream = _ZstdFrames(raw)
        else:
            raise ValueError(f"unknown compression {compression!r} for {path}")
    except BaseException:
        raw.close()
        raise
    return _Decompressed(stream, raw)


# What the decompressors raise when the compressed data is cut short or corrupt (``damage``).
_CUT_SHORT = "Compressed file ended before the end-of-stream marker was reached"


def damage(error: BaseException) -> str | None:
    """How a compressed file is damaged, from the error its decompressor raised; None if the
    error says nothing about the data (a network or disk error, say).

    gzip and bz2 raise ``EOFError`` for a file cut short and ``OSError``/``zlib.error`` for
    corrupt data; zstd raises ``ZstdError`` (and ``_ZstdFrames`` an ``EOFError`` when cut short).
    """
    import gzip
    import zlib

    if isinstance(error, EOFError):
        return "cut short (its compressed data ends before the end-of-stream marker)"
    if isinstance(error, (gzip.BadGzipFile, zlib.error)) or (
        type(error) is OSError and str(error) == "Invalid data stream"  # bz2
    ) or type(error).__name__ == "ZstdError":
        return f"corrupt data ({error})"
    return None


class _ZstdFrames(io.RawIOBase):
    """A zstd stream's decompressed bytes, frame after frame, that notices a file cut short.

    ``zstandard``'s ``stream_reader`` ends quietly where the input ends, inside a frame or not,
    so a truncated ``.zst`` file would lose its last rows without a word; here an input that
    ends inside a frame raises ``EOFError``, as gzip and bz2 do.
    """

    def __init__(self, source: IO[bytes]) -> None:
        import zstandard

        self._source = source
        self._context = zstandard.ZstdDecompressor()
        self._frame: object | None = None
        self._pending = memoryview(b"")
        self._ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        while not len(self._pending) and not self._ended:
            chunk = self._source.read(1 << 16)
            if not chunk:
                self._ended = True
                if self._frame is not None and not self._frame.eof:  # type: ignore[attr-defined]
                    raise EOFError(_CUT_SHORT)
                break
            self._pending = memoryview(self._decompress(chunk))
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count

    def _decompress(self, data: bytes) -> bytes:
        out = []
        while data:
            if self._frame is None or self._frame.eof:  # type: ignore[attr-defined]
                self._frame = self._context.decompressobj()
            out.append(self._frame.decompress(data))  # type: ignore[attr-defined]
            data = self._frame.unused_data if self._frame.eof else b""  # type: ignore[attr-defined]
        return b"".join(out)


class _Decompressed(io.BufferedReader):
    """A decompressing stream that closes the file under it too (gzip and bz2 leave it open)."""

    def __init__(self, stream: IO[bytes], source: IO[bytes]) -> None:
        super().__init__(stream, buffer_size=1 << 16)  # type: ignore[arg-type]
        self._source = source

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._source.close()


def open_read(path: str) -> IO[bytes]:
    """Open for binary reading (seekable). Remote files use read-ahead (fast sequential reads)
    and survive transient errors: a failed read reopens the object at the same offset."""
    if is_remote(path):
        return io.BufferedReader(_RetryingReader(path), buffer_size=1 << 16)
    return open(path, "rb")


def read_bytes(path: str) -> bytes:
    with open_read(path) as handle:
        return handle.read()


class _RetryingReader(io.RawIOBase):
    """A remote object opened for reading whose reads are retried by ``_retry``.

    gcsfs retries each range request on its own; when it gives up, or the error comes from
    outside a request, the gcsfs file is dropped and reopened at the same offset. A reopened
    object must be the same generation: one replaced meanwhile is an error, never mixed bytes.
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        self.name = path
        self._fs = filesystem(path)
        self._file: IO[bytes] | None = None
        self._generation: object = None
        self._size = 0
        self._pos = 0
        self._file = _retry(self._open, f"open {path}")
        self._generation = self._file.details.get("generation")  # type: ignore[attr-defined]
        self._size = int(self._file.size)  # type: ignore[attr-defined]

    def _open(self) -> IO[bytes]:
        handle = self._fs.open(self.name, "rb", cache_type="readahead")
        generation = handle.details.get("generation")
        if self._generation is not None and generation != self._generation:
            handle.close()
            raise OSError(f"{self.name} was replaced while being read (generation {self._generation} -> {generation})")
        return handle

    def _drop(self) -> None:
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()
            self._file = None

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = max(self._size - self._pos, 0)

        def attempt() -> bytes:
            if self._file is None:
                self._file = self._open()
            self._file.seek(self._pos)
            return self._file.read(size)

        data = _retry(attempt, f"read {self.name}", before_retry=self._drop)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: "bytearray | memoryview") -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def close(self) -> None:
        self._drop()
        super().close()


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
        try:
            handle.close()  # the upload completes, and the object appears, only here
        except BaseException:
            _abort_remote_write(handle)  # nor may a later close() (``__del__``) try again
            raise
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
    def write() -> None:
        with atomic_write(path) as handle:
            handle.write(data)

    _upload(path, write)


def _upload(path: str, write: Callable[[], None]) -> None:
    """Run ``write()`` (a whole ``atomic_write``); for a remote path, redo it from the start on a
    transient error or a lost upload session.

    Redoing is safe: the object appears only when an upload completes, and a repeated upload of
    the same bytes leaves the same object. (Uploads go through gcsfs's resumable upload, raw
    bytes; its one-request multipart upload, ``pipe_file``/``put_file`` below 50 MiB, is not
    used: the emulator drops a final ``\\r`` of the data there, as gcsfs ends the part with a bare LF.)
    """
    if not is_remote(path):
        write()
        return
    fs = filesystem(path)
    _retry(
        write,
        f"upload {path}",
        transient=lambda error: is_transient(error) or _is_lost_upload_session(error),
        before_retry=lambda: _forget_listings(fs),
    )


def rename(src: str, dst: str) -> None:
    """Move ``src`` to ``dst`` (the move API or a copy and delete on GCS, ``os.replace`` locally)."""
    if not is_remote(src):
        os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
        os.replace(src, dst)
        return
    fs = filesystem(src)
    if not exists(src):
        raise FileNotFoundError(src)
    try:
        _retry(lambda: fs.mv(src, dst), f"move {src} to {dst}", before_retry=lambda: _forget_listings(fs))
    except FileNotFoundError:
        # ``src`` was there a moment ago: a try whose reply was lost (gcsfs retries requests
        # too) moved it already.
        _forget_listings(fs)
        if exists(dst) and not exists(src):
            _LOG.info("move %s to %s: already done by an earlier try", src, dst)
            return
        raise


def remove(path: str) -> None:
    """Delete a file if it exists (no error if it does not)."""
    _remove(path, recursive=False)


def remove_tree(path: str) -> None:
    """Delete a directory tree if it exists (no error if it does not)."""
    _remove(path, recursive=True)


def _remove(path: str, recursive: bool) -> None:
    fs = filesystem(path)
    if not exists(path):
        return

    def attempt() -> None:
        try:
            fs.rm(path, recursive=recursive)
        except FileNotFoundError:
            pass  # gone already: a try whose reply was lost deleted it

    if is_remote(path):
        _retry(attempt, f"delete {path}", before_retry=lambda: _forget_listings(fs))
    else:
        attempt()


def copy_dir_to_local(url: str, cache_root: str | None = None) -> str:
    """Copy the files directly under a remote directory into a local cache; return its path.

    The cache folder is named from the URL and the listing (names, sizes, generations/etags), so
    a second call reuses the copy while a re-uploaded file gets a fresh one.
    """
    fs = filesystem(url)
    if not isdir(url):
        raise ValueError(f"{url} is not a directory")
    listing = _call(url, "list", lambda: fs.ls(url, detail=True))
    entries = sorted((e for e in listing if e["type"] == "file"), key=lambda e: e["name"])
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
            _upload(join(url, *parts, name), lambda: _copy_file(os.path.join(root, name), join(url, *parts, name)))


def _copy_file(source: str, target: str) -> None:
    with open(source, "rb") as src, atomic_write(target) as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
