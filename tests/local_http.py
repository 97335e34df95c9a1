"""A threaded HTTP server on 127.0.0.1 in a daemon thread: the lifecycle shared by the tests'
local stand-ins for remote services (``fake_dataflow.FakeDataflow``, ``fault_proxy.FaultProxy``).

A subclass says how to build its server (``_make_server``, bound to port 0); the base starts it,
reports its port, stops it and is a context manager.
"""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer
from typing import Any

__all__ = ["LocalHttpService"]


class LocalHttpService:
    """Lifecycle of one local HTTP server run in a daemon thread."""

    thread_name = "local-http"
    not_running = "the local server is not running"

    def __init__(self) -> None:
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def _make_server(self) -> ThreadingHTTPServer:
        """A server bound to ``(127.0.0.1 or localhost, 0)``, not yet serving."""
        raise NotImplementedError

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError(self.not_running)
        return int(self._server.server_address[1])

    def start(self) -> Any:
        if self._server is None:
            self._server = self._make_server()
            self._thread = threading.Thread(target=self._server.serve_forever, name=self.thread_name, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
