"""A fault-injecting HTTP reverse proxy for the GCS emulator (tests only, stdlib only).

    with GcsEmulator() as emulator, FaultProxy(emulator.endpoint, status_503=0.2, reset=0.05) as proxy:
        with emulator.activated(), proxy.activated():
            ...  # every gcsfs request now goes 127.0.0.1:proxy -> 127.0.0.1:emulator
        assert proxy.injected > 0

It listens on 127.0.0.1 (a free port, one thread per client connection, HTTP/1.1 keep-alive
towards the client) and forwards each request to the emulator, unless the request is picked for
a fault:

* ``status_503`` / ``status_429``: answered at once with that status and a GCS-style JSON error
  body; the emulator never sees the request;
* ``reset``: the connection is reset (RST, no response) before anything is forwarded;
* ``reset_after``: the request *is* forwarded and carried out by the emulator, then the reply is
  cut: the status line, headers and half the body are sent before the RST (or nothing at all
  when the body is empty). This is the hard case for a client: the change happened, the client
  cannot know it, and a blind retry of a non-idempotent request (move, delete, a resumable
  upload chunk) meets a changed state.

Besides these random faults, ``add_rule`` gives chosen requests a chosen fault or status (e.g. a
403 for one object, or a 503 for the first 7 tries of a download: more than gcsfs's 6).

The pick is deterministic: request ``n`` (counting from 0) with a given method and path gets its
own ``random.Random(f"{seed}|{method}|{path}|{n}")``, so the same workload meets the same faults
whatever the thread interleaving (the random ``upload_id`` of resumable upload sessions is
blanked out of the path first; object names that are random, such as a temporary folder, still
change the draws from one run to the next). A retry of the same request is the next ``n``, so it
gets a fresh, independent draw. ``max_consecutive`` optionally caps how many times in a row one
method and path is faulted.

The emulator is single-threaded and HTTP/1.0 (one connection per request); requests are passed
to it one at a time, so a burst of parallel client requests can never overflow its listen
backlog of 5 (an overflow shows up as a 1 s SYN retransmit, not an error).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import re
import socket
import struct
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

from local_http import LocalHttpService

__all__ = ["FaultProxy", "FAULT_KINDS", "accept_resent_upload_chunks"]

FAULT_KINDS = ("status_503", "status_429", "reset", "reset_after")
_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade", "content-length",
}
_UPLOAD_ID = re.compile(r"(upload_id=)[^&]*")
_ERROR_REASONS = {
    503: ("Service Unavailable", "backendError"),
    429: ("Too Many Requests", "rateLimitExceeded"),
    500: ("Internal Server Error", "backendError"),
    403: ("Forbidden", "forbidden"),
    404: ("Not Found", "notFound"),
    400: ("Bad Request", "badRequest"),
}


class _Reset(Exception):
    """Raised inside the handler to drop the connection with an RST."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive towards the client, as GCS does
    disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms delayed-ACK stall
    server: "_Server"

    def do_GET(self) -> None:
        self._proxy()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return bytes(body)
                body += self.rfile.read(size)
                self.rfile.readline()  # CRLF after each chunk
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _proxy(self) -> None:
        proxy: FaultProxy = self.server.proxy
        body = self._read_body()
        fault = proxy._pick(self.command, self.path)
        try:
            if isinstance(fault, int):
                self._send_error_status(fault)
                return
            if fault in ("status_503", "status_429"):
                self._send_error_status(503 if fault == "status_503" else 429)
                return
            if fault == "reset":
                raise _Reset
            status, reason, headers, payload = proxy._forward(self.command, self.path, self.headers, body)
            self.send_response(status, reason)
            for name, value in headers:
                if name.lower() not in _HOP_BY_HOP:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            if fault == "reset_after":
                if not payload or self.command == "HEAD":
                    raise _Reset  # the change happened; the client hears nothing
                self.end_headers()
                self.wfile.write(payload[: len(payload) // 2])
                self.wfile.flush()
                raise _Reset
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
        except _Reset:
            self._reset()

    def _send_error_status(self, code: int) -> None:
        reason, gcs_reason = _ERROR_REASONS.get(code, ("Error", "error"))
        payload = json.dumps(
            {"error": {"code": code, "message": f"{reason} (injected by FaultProxy)",
                       "errors": [{"reason": gcs_reason, "message": reason}]}}
        ).encode()
        self.send_response(code, reason)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _reset(self) -> None:
        """Close with an RST (SO_LINGER 0): the client sees a reset, not a clean end of stream."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.wfile.flush()
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    proxy: "FaultProxy"

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hang up on purpose (gcsfs's info races two requests and cancels the loser) and
        # we reset connections on purpose: neither is worth a traceback.
        if isinstance(sys.exc_info()[1], (OSError, ValueError)):
            return
        super().handle_error(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with contextlib.suppress(OSError):
            super().shutdown_request(request)


class FaultProxy(LocalHttpService):
    """Reverse proxy on 127.0.0.1 in front of ``upstream`` (``http://127.0.0.1:PORT``).

    Args:
        upstream: the emulator's endpoint.
        status_503, status_429, reset, reset_after: the fraction of requests given each fault
            (see the module docstring); their sum must be <= 1.
        seed: makes the picks reproducible.
        max_consecutive: if set, a method and path is never faulted more than this many times
            in a row (the next request with them is forwarded untouched).
        should_fault: optional ``(method, path) -> bool``; requests it rejects are never faulted.
    """

    thread_name = "fault-proxy"
    not_running = "the proxy is not running"

    def __init__(
        self,
        upstream: str,
        *,
        status_503: float = 0.0,
        status_429: float = 0.0,
        reset: float = 0.0,
        reset_after: float = 0.0,
        seed: int = 0,
        max_consecutive: int | None = None,
        should_fault: Callable[[str, str], bool] | None = None,
    ) -> None:
        super().__init__()
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"upstream must be http://HOST:PORT, got {upstream!r}")
        self.upstream = (parts.hostname, parts.port)
        self.seed = seed
        self.max_consecutive = max_consecutive
        self.should_fault = should_fault
        self.set_rates(status_503=status_503, status_429=status_429, reset=reset, reset_after=reset_after)
        self.counts: Counter[str] = Counter()
        self.faults: list[tuple[str, str, str]] = []  # (kind, method, path) of every injected fault
        self.log: list[tuple[str, str]] = []  # (method, path) of every request
        self._seen: Counter[str] = Counter()
        self._in_a_row: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._upstream_lock = threading.Lock()
        self._rules: list[dict[str, Any]] = []

    # ---- configuration and counters

    def set_rates(self, **rates: float) -> None:
        """Change the fault rates (unnamed kinds keep their rate); ``set_rates()`` with all 0 turns faults off."""
        current = getattr(self, "rates", dict.fromkeys(FAULT_KINDS, 0.0))
        unknown = set(rates) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")
        merged = {**current, **{k: float(v) for k, v in rates.items()}}
        if any(v < 0 for v in merged.values()) or sum(merged.values()) > 1:
            raise ValueError(f"fault rates must be >= 0 and sum to <= 1, got {merged}")
        self.rates = merged

    def add_rule(self, fault: str | int, match: Callable[[str, str], bool], times: int | None = None) -> None:
        """Give requests for which ``match(method, path)`` is true ``fault`` (a kind of
        ``FAULT_KINDS`` or an HTTP status to answer with), the first ``times`` of them or all.
        Rules come before the random faults; ``clear_rules()`` removes them."""
        if not (isinstance(fault, int) or fault in FAULT_KINDS):
            raise ValueError(f"fault must be an HTTP status or one of {FAULT_KINDS}, got {fault!r}")
        with self._lock:
            self._rules.append({"fault": fault, "match": match, "left": times})

    def clear_rules(self) -> None:
        with self._lock:
            self._rules.clear()

    def requests_matching(self, match: Callable[[str, str], bool]) -> int:
        """How many requests so far satisfied ``match(method, path)``."""
        with self._lock:
            return sum(1 for method, path in self.log if match(method, path))

    @property
    def injected(self) -> int:
        """How many faults were injected so far (random ones and rules' alike)."""
        return len(self.faults)

    def _pick(self, method: str, path: str) -> str | int | None:
        key = method + "|" + _UPLOAD_ID.sub(r"\1", path)
        with self._lock:
            n = self._seen[key]
            self._seen[key] += 1
            self.counts["requests"] += 1
            self.log.append((method, path))
            for rule in self._rules:
                if rule["left"] != 0 and rule["match"](method, path):
                    if rule["left"] is not None:
                        rule["left"] -= 1
                    fault = rule["fault"]
                    name = f"status_{fault}" if isinstance(fault, int) else fault
                    self.counts[name] += 1
                    self.faults.append((name, method, path))
                    if fault == "reset_after":
                        self.counts["forwarded"] += 1
                    return fault
            draw = random.Random(f"{self.seed}|{key}|{n}").random()
            fault, edge = None, 0.0
            for kind in FAULT_KINDS:
                edge += self.rates[kind]
                if draw < edge:
                    fault = kind
                    break
            if fault is not None and self.should_fault is not None and not self.should_fault(method, path):
                fault = None
            if fault is not None and self.max_consecutive is not None and self._in_a_row[key] >= self.max_consecutive:
                fault = None
            if fault is None:
                self._in_a_row[key] = 0
                self.counts["forwarded"] += 1
            else:
                self._in_a_row[key] += 1
                self.counts[fault] += 1
                self.faults.append((fault, method, path))
                if fault == "reset_after":
                    self.counts["forwarded"] += 1
            return fault

    def _forward(self, method: str, path: str, headers: Any, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        out = {name: value for name, value in headers.items() if name.lower() not in _HOP_BY_HOP}
        if body or method in ("POST", "PUT", "PATCH"):
            out["Content-Length"] = str(len(body))
        # Host stays the proxy's: the emulator builds resumable-upload Location URLs from it,
        # so the later chunks of an upload come through the proxy as well.
        with self._upstream_lock:
            connection = http.client.HTTPConnection(*self.upstream, timeout=60)
            try:
                connection.request(method, path, body=body or None, headers=out)
                reply = connection.getresponse()
                payload = reply.read()
                return reply.status, reply.reason, reply.getheaders(), payload
            finally:
                connection.close()

    # ---- lifecycle (start, stop, port, ``with``: LocalHttpService)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _make_server(self) -> _Server:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.proxy = self
        return server

    # ---- pointing clients at it

    def env(self, emulator_env: dict[str, str]) -> dict[str, str]:
        """``emulator_env`` (``GcsEmulator.env()``) with ``STORAGE_EMULATOR_HOST`` pointing here."""
        return {**emulator_env, "STORAGE_EMULATOR_HOST": self.endpoint}

    @contextlib.contextmanager
    def activated(self) -> Iterator["FaultProxy"]:
        """Send this process's GCS traffic through the proxy (inside ``GcsEmulator.activated()``).

        gcsfs reads ``STORAGE_EMULATOR_HOST`` on every request; its cached instances (and their
        HTTP sessions and listing caches) are dropped on entry and exit all the same.
        """
        from gcs_emulator import clear_gcsfs_caches

        saved = os.environ.get("STORAGE_EMULATOR_HOST")
        os.environ["STORAGE_EMULATOR_HOST"] = self.endpoint
        clear_gcsfs_caches()
        try:
            yield self
        finally:
            clear_gcsfs_caches()
            if saved is None:
                os.environ.pop("STORAGE_EMULATOR_HOST", None)
            else:
                os.environ["STORAGE_EMULATOR_HOST"] = saved


@contextlib.contextmanager
def accept_resent_upload_chunks() -> Iterator[None]:
    """Make the in-process emulator take a re-sent resumable-upload chunk as GCS does.

    When the reply to a chunk is lost (``reset_after``), gcsfs sends the same chunk again. GCS
    ignores the bytes it already holds and answers 308 with the range received; the emulator
    answers 400 "Invalid Content-Range start", which gcsfs (rightly) does not retry. Inside this
    context the emulator drops the bytes it already has, as GCS does. (A re-sent *final* chunk
    still gets the emulator's 404, since it forgets a finished session; GCS would answer 200.
    ``spanwise_io`` redoes such an upload whole, as it must for a session that expired on GCS.)
    Affects ``GcsEmulator(mode="thread")`` servers in this process only.
    """
    from gcp_storage_emulator.storage import Storage

    original = Storage.add_to_resumable_upload

    def add_to_resumable_upload(self: Any, file_id: Any, content: Any, total_size: Any = None, expected_start: Any = None) -> Any:
        received = self.get_resumable_byte_count(file_id)
        if expected_start is not None and expected_start < received:
            content = (content or b"")[received - expected_start :]
            expected_start = received
        return original(self, file_id, content, total_size=total_size, expected_start=expected_start)

    Storage.add_to_resumable_upload = add_to_resumable_upload
    try:
        yield
    finally:
        Storage.add_to_resumable_upload = original
