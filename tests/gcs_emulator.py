"""A local Google Cloud Storage for tests: gcp-storage-emulator on 127.0.0.1, in memory.

The tests start it themselves (nothing to install or run beforehand, no network, no credentials):

    with GcsEmulator() as emulator, emulator.activated():
        spanwise_io.write_bytes(emulator.url("a/b.txt"), b"...")   # gs://<bucket>/a/b.txt

or, in a conftest.py (``tests/`` is on ``sys.path`` under pytest's default import mode)::

    from gcs_emulator import gcs_emulator_fixtures
    gcs_emulator_server, gcs = gcs_emulator_fixtures()

which gives a session-scoped server fixture (``gcs_emulator_server``) and a per-test fixture
(``gcs``) that points gcsfs, fsspec and google-cloud-storage at the emulator for that test, empties
the bucket before it, and undoes everything after it.

``activated()`` sets, for its duration:

* ``STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT``: read by gcsfs on every request and by
  google-cloud-storage (which Beam's ``apache_beam.io.gcp.gcsio`` uses) when a client is built;
* ``NO_GCE_CHECK=true``: no probe of the GCE metadata server while looking for credentials;
* ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` and ``FSSPEC_GS_TOKEN=anon`` for child processes,
  plus the same two settings in this process (see below), where the variables come too late
  because gcsfs/fsspec read them once, at import;
* Beam's cached GCS credentials to "none, connect anonymously" (see 5 below).

Quirks found and handled here (emulator gaps, or gcsfs/Beam defaults that assume real GCS;
the production code needs no change for them):

1. gcsfs >= 2026 registers ``ExtendedGcsFileSystem`` for ``gs://`` unless
   ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT`` is false *when gcsfs is imported*. That class asks the
   gRPC Storage Control API for the bucket's layout on every ``open``/``mv``; against the
   emulator (HTTP only) each lookup retries a TLS handshake for 60 s before falling back. So
   while active, ``gs``/``gcs`` are registered to the plain ``gcsfs.core.GCSFileSystem``
   (whatever the import order was) and the previous registration is restored afterwards.
2. ``spanwise_io.filesystem`` builds ``fsspec.filesystem("gs")`` with no token; gcsfs then tries
   Application Default Credentials, its token cache and the metadata server before anonymous.
   ``fsspec.config.conf["gs"]["token"] = "anon"`` makes it anonymous at once.
3. The emulator has no ``objects.move`` (``POST .../o/SRC/moveTo/o/DST``) route and answers 501;
   gcsfs's ``mv`` tries that API first, treats 501 as retriable and backs off ~30 s (6 tries)
   before falling back to copy+delete, for every ``spanwise_io.rename``. ``install_emulator_patches``
   adds the route (copy, then delete the source, answering the new object's resource like GCS).
4. fsspec caches filesystem instances (keyed by class and arguments, not by
   ``STORAGE_EMULATOR_HOST``) and gcsfs caches directory listings per instance; both are cleared
   when activating and deactivating so nothing leaks from one test (or emulator) to the next.
5. Beam's ``auth.get_service_credentials`` retries ``google.auth.default()`` with exponential
   backoff (~25 s without credentials) before connecting anonymously, the first time Beam's GCS
   IO is used in a process. ``activated()`` pre-sets its cache to "no credentials" (restored
   after); google-cloud-storage then uses anonymous credentials with ``STORAGE_EMULATOR_HOST``.
6. The emulator answers 501 to ``DELETE`` on a resumable-upload session URI, which is how
   gcsfs cancels an upload (``GCSFile.discard``); gcsfs retries 501 for ~30 s. The patch adds
   it: drop the session and answer 499, as GCS does.
7. gcsfs's ``info`` races two requests and cancels the loser, so the single-threaded emulator
   writes to closed sockets; socketserver would print a BrokenPipeError traceback each time.
   Those are silenced (and the emulator's per-request "Content handled as string" warning).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http import HTTPStatus
from typing import Any, Callable, Iterator

DEFAULT_BUCKET = "spanwise-test"
HOST = "127.0.0.1"

__all__ = [
    "DEFAULT_BUCKET",
    "GcsEmulator",
    "install_emulator_patches",
    "clear_gcsfs_caches",
    "gcs_emulator_fixtures",
]


# --------------------------------------------------------------------------- emulator patches


def _move_object(request: Any, response: Any, storage: Any, *args: Any, **kwargs: Any) -> None:
    """``POST /storage/v1/b/BUCKET/o/SRC/moveTo/o/DST``: the JSON API's objects.move."""
    from gcp_storage_emulator.exceptions import Conflict, NotFound
    from gcp_storage_emulator.handlers import objects

    params = request.params
    bucket = params["bucket_name"]
    try:
        moved = objects._copy(
            request.base_url, storage, bucket, params["object_id"], bucket, params["dest_object_id"]
        )
        storage.delete_file(bucket, params["object_id"])
    except NotFound:
        response.status = HTTPStatus.NOT_FOUND
        return
    except Conflict as err:
        objects._handle_conflict(response, err)
        return
    response.json(moved)


def _cancel_resumable_upload(request: Any, response: Any, storage: Any, *args: Any, **kwargs: Any) -> None:
    """``DELETE`` on a resumable upload session URI: cancel it (GCS answers 499)."""
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.storage import RESUMABLE_DIR

    upload_id = (request.query.get("upload_id") or [None])[0]
    try:
        if upload_id is None:
            raise NotFound
        storage.delete_resumable_file_obj(upload_id)
    except NotFound:
        response.status = HTTPStatus.NOT_FOUND
        return
    storage._delete_file(RESUMABLE_DIR, storage.safe_id(upload_id))
    response.status = _CLIENT_CLOSED_REQUEST


class _ClientClosedRequest:
    """The 499 status GCS sends for a cancelled upload (not in ``http.HTTPStatus``)."""

    value = 499
    phrase = "Client Closed Request"


_CLIENT_CLOSED_REQUEST = _ClientClosedRequest()
_MOVE_ROUTE_MARK = "moveTo"


def install_emulator_patches() -> None:
    """Add the routes gcsfs needs and the emulator lacks (idempotent; this process only)."""
    from gcp_storage_emulator import server, settings

    if any(_MOVE_ROUTE_MARK in regex for regex, _ in server.HANDLERS):
        return
    # The router stops at the first route whose pattern matches (then 501 if the method is
    # missing), so: moveTo goes before the generic ``.../o/OBJECT`` route, and DELETE joins the
    # existing resumable-upload route.
    move_routes = [
        (
            rf"^{re.escape(prefix)}/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)"
            rf"/{_MOVE_ROUTE_MARK}/o/(?P<dest_object_id>.*[^/]+)$",
            {"POST": _move_object},
        )
        for prefix in (settings.API_ENDPOINT, "")
    ]
    upload_path = f"{settings.UPLOAD_API_ENDPOINT}/b/some-bucket/o"
    handlers, patched = [], False
    for regex, methods in server.HANDLERS:
        if not patched and re.fullmatch(regex, upload_path) and "PUT" in methods:
            methods, patched = {**methods, "DELETE": _cancel_resumable_upload}, True
        handlers.append((regex, methods))
    if not patched:
        raise RuntimeError("gcp-storage-emulator's routes changed: no resumable upload route to patch")
    server.HANDLERS = (*move_routes, *handlers)
    logging.getLogger("gcp_storage_emulator.server").addFilter(_drop_noise)


def _drop_noise(record: logging.LogRecord) -> bool:
    # Logged at WARNING for every JSON-less reply (health check, wipe): noise in test output.
    return "Content handled as string" not in record.getMessage()


def _quiet_disconnects(httpd: Any) -> None:
    """Don't print a traceback when a client hangs up before reading its reply.

    gcsfs's ``info`` sends two requests at once (object, prefix) and cancels the loser, so the
    single-threaded emulator often writes to a closed socket: harmless, but socketserver prints
    a BrokenPipeError traceback to stderr each time.
    """
    default = httpd.handle_error

    def handle_error(request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        default(request, client_address)

    httpd.handle_error = handle_error


# --------------------------------------------------------------------------- client-side state


def _gcs_classes() -> list[type]:
    classes: list[type] = []
    try:
        import gcsfs
        import gcsfs.core
    except ImportError:  # pragma: no cover - gcsfs is a dependency
        return classes
    for cls in (gcsfs.core.GCSFileSystem, gcsfs.GCSFileSystem):
        if cls not in classes:
            classes.append(cls)
    return classes


def clear_gcsfs_caches() -> None:
    """Forget every cached gcsfs instance (and so its listing cache and HTTP session)."""
    for cls in _gcs_classes():
        for instance in list(getattr(cls, "_cache", {}).values()):
            with contextlib.suppress(Exception):
                instance.invalidate_cache()
        cls.clear_instance_cache()


def _beam_anonymous_credentials() -> Callable[[], None]:
    """Make Beam's GCS IO connect anonymously at once; return the undo.

    Without credentials, Beam's ``auth.get_service_credentials`` retries
    ``google.auth.default()`` with exponential backoff (~25 s) before connecting anonymously;
    google-cloud-storage then uses ``STORAGE_EMULATOR_HOST`` with anonymous credentials anyway.
    """
    try:
        from apache_beam.internal.gcp import auth
    except ImportError:  # pragma: no cover - Beam without the gcp extra
        return lambda: None
    creds = auth._Credentials
    with creds._credentials_lock:
        saved = (creds._credentials_init, creds._credentials)
        creds._credentials_init, creds._credentials = True, None

    def undo() -> None:
        with creds._credentials_lock:
            creds._credentials_init, creds._credentials = saved

    return undo


# --------------------------------------------------------------------------- the emulator


def _opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy


class GcsEmulator:
    """gcp-storage-emulator on 127.0.0.1 with a free port, in memory, with one bucket.

    Args:
        bucket: the bucket created at start (and kept by ``reset``).
        mode: ``"thread"`` runs the server in this process (starts in milliseconds);
            ``"subprocess"`` runs it in a child Python, isolated from this process's GIL and
            state (use it when the code under test forks or when timing matters).
    """

    def __init__(self, bucket: str = DEFAULT_BUCKET, mode: str = "thread"):
        if mode not in ("thread", "subprocess"):
            raise ValueError(f"mode must be 'thread' or 'subprocess', got {mode!r}")
        self.bucket = bucket
        self.mode = mode
        self.port: int | None = None
        self._server: Any = None
        self._process: subprocess.Popen | None = None

    # ---- lifecycle

    @property
    def endpoint(self) -> str:
        if self.port is None:
            raise RuntimeError("the emulator is not running")
        return f"http://{HOST}:{self.port}"

    def start(self) -> "GcsEmulator":
        if self.port is not None:
            return self
        if self.mode == "thread":
            self._start_thread()
        else:
            self._start_subprocess()
        self._wait_healthy()
        self.create_bucket(self.bucket)
        return self

    def _start_thread(self) -> None:
        from gcp_storage_emulator.server import create_server

        install_emulator_patches()
        # Port 0: the OS picks a free port when the server binds, so there is no race with
        # another process grabbing a port we probed.
        self._server = create_server(HOST, 0, in_memory=True)
        self._server.start()
        _quiet_disconnects(self._server._api._httpd)
        self.port = int(self._server._api._httpd.server_address[1])

    def _start_subprocess(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        line = self._process.stdout.readline() if self._process.stdout else ""
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"the GCS emulator subprocess did not start (said {line!r})")
        self.port = int(line.split()[1])

    def _wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with _opener().open(self.endpoint + "/", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the GCS emulator at {self.endpoint} did not answer in {timeout} s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            if self._process.stdout:
                self._process.stdout.close()
            self._process = None
        self.port = None

    def __enter__(self) -> "GcsEmulator":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---- admin (plain HTTP, no gcsfs, so it never touches client caches)

    def _http(self, method: str, path: str, body: dict | None = None) -> bytes:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.endpoint + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        with _opener().open(request, timeout=10) as reply:
            return reply.read()

    def create_bucket(self, name: str) -> None:
        try:
            self._http("POST", "/storage/v1/b", {"name": name})
        except urllib.error.HTTPError as error:
            if error.code != 409:  # already exists
                raise

    def reset(self) -> None:
        """Delete every object (and other buckets); keep the buckets that exist."""
        self._http("GET", "/wipe?keep-buckets=true")
        self.create_bucket(self.bucket)

    def url(self, *parts: str) -> str:
        """``gs://<bucket>/<parts joined by />``."""
        path = "/".join(p.strip("/") for p in parts if p)
        return f"gs://{self.bucket}/{path}" if path else f"gs://{self.bucket}"

    # ---- pointing clients at it

    def env(self) -> dict[str, str]:
        """The environment variables that point gcsfs / google-cloud-storage here."""
        return {
            "STORAGE_EMULATOR_HOST": self.endpoint,
            "NO_GCE_CHECK": "true",
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            "FSSPEC_GS_TOKEN": "anon",
            "GOOGLE_CLOUD_PROJECT": os.environ.get("GOOGLE_CLOUD_PROJECT", "spanwise-test"),
        }

    @contextlib.contextmanager
    def activated(self, setenv: Callable[[str, str], None] | None = None) -> Iterator["GcsEmulator"]:
        """Point this process (and children it starts) at the emulator; undo on exit.

        Args:
            setenv: e.g. ``monkeypatch.setenv``, which then also undoes the variables; by
                default they are set here and restored on exit.
        """
        import fsspec
        import fsspec.config
        from fsspec.registry import _registry as registry  # (``fsspec.registry`` is a read-only view)

        saved_env = {name: os.environ.get(name) for name in self.env()}
        for name, value in self.env().items():
            (setenv or os.environ.__setitem__)(name, value)

        import gcsfs.core

        saved_registry = {proto: registry.get(proto) for proto in ("gs", "gcs")}
        saved_conf = {proto: fsspec.config.conf.get(proto) for proto in ("gs", "gcs")}
        for proto in ("gs", "gcs"):
            fsspec.register_implementation(proto, gcsfs.core.GCSFileSystem, clobber=True)
            fsspec.config.conf[proto] = {**(saved_conf[proto] or {}), "token": "anon"}
        clear_gcsfs_caches()
        restore_beam = _beam_anonymous_credentials()
        try:
            yield self
        finally:
            restore_beam()
            clear_gcsfs_caches()
            for proto in ("gs", "gcs"):
                if saved_registry[proto] is None:
                    registry.pop(proto, None)
                else:
                    registry[proto] = saved_registry[proto]
                if saved_conf[proto] is None:
                    fsspec.config.conf.pop(proto, None)
                else:
                    fsspec.config.conf[proto] = saved_conf[proto]
            if setenv is None:
                for name, value in saved_env.items():
                    if value is None:
                        os.environ.pop(name, None)
                    else:
                        os.environ[name] = value


# --------------------------------------------------------------------------- pytest fixtures


def gcs_emulator_fixtures(
    bucket: str = DEFAULT_BUCKET,
    mode: str = "thread",
    server_name: str = "gcs_emulator_server",
    name: str = "gcs",
) -> tuple[Callable, Callable]:
    """Make ``(session-scoped server fixture, per-test fixture)`` to assign in a conftest/test module.

    The per-test fixture yields a running, activated ``GcsEmulator`` whose bucket is empty at
    the start of the test; after the test, the environment, fsspec registration/config and
    gcsfs caches are as before.
    """
    import pytest

    @pytest.fixture(scope="session", name=server_name)
    def _server() -> Iterator[GcsEmulator]:
        with GcsEmulator(bucket=bucket, mode=mode) as emulator:
            yield emulator

    @pytest.fixture(name=name)
    def _per_test(request: Any, monkeypatch: Any) -> Iterator[GcsEmulator]:
        emulator: GcsEmulator = request.getfixturevalue(server_name)
        emulator.reset()
        with emulator.activated(setenv=monkeypatch.setenv):
            yield emulator

    return _server, _per_test


# --------------------------------------------------------------------------- subprocess entry


def _serve() -> int:
    """Child-process mode: patch, bind a free port, print ``PORT n``, serve until terminated."""
    import signal

    from gcp_storage_emulator.server import create_server

    install_emulator_patches()
    server = create_server(HOST, 0, in_memory=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server.start()
    _quiet_disconnects(server._api._httpd)
    print(f"PORT {server._api._httpd.server_address[1]}", flush=True)
    try:
        while not stop.wait(0.2):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", action="store_true", help="run the emulator; print 'PORT n' when ready")
    if parser.parse_args().serve:
        sys.exit(_serve())
    parser.print_help()
