"""A fake Dataflow service (REST API v1b3) on 127.0.0.1, enough for Beam's DataflowRunner to submit.

Beam 2.77's ``DataflowApplicationClient`` talks to Dataflow through google-cloud-dataflow-client.
With ``--dataflow_endpoint`` containing ``localhost`` it picks that client's REST transport
(any other endpoint has its scheme stripped and goes over gRPC), and with ``--no_auth`` it sends
anonymous credentials. So:

    with FakeDataflow() as fake:
        pipeline_options = [..., "--runner", "DataflowRunner", "--dataflow_endpoint", fake.url, "--no_auth"]
        ...
        (request,) = fake.created_jobs          # the job-creation body Beam sent, as JSON

``fake.url`` is ``http://localhost:PORT`` (the server listens on 127.0.0.1 only), because the
word ``localhost`` in the endpoint is what makes Beam use HTTP rather than gRPC.

What it answers (everything under ``/v1b3/projects/{project}/locations/{location}``, and the
same paths without ``/locations/{location}``):

* ``POST   jobs``                 jobs.create: records the body, answers the job with an id, the
                                   client request id echoed (Beam checks it) and ``create_state``;
* ``GET    jobs``                 jobs.list (Beam's ``--update`` looks the job up by name);
* ``GET    jobs/{id}``            jobs.get: the state is the next of ``states`` (the last one
                                   repeats), so a job can go PENDING -> RUNNING -> DONE;
* ``PUT    jobs/{id}``            jobs.update (cancel / drain: ``requestedState``);
* ``GET    jobs/{id}/messages``   messages.list: ``messages`` (one page);
* ``GET    jobs/{id}/metrics``    metrics: none.

Anything else is answered 404 and recorded in ``unhandled`` (tests assert it stays empty).
``on_create(job)`` runs when a job is created, e.g. to play the part of the workers.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import threading
import urllib.parse
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable

from local_http import LocalHttpService

__all__ = ["FakeDataflow", "RecordedRequest"]

HOST = "127.0.0.1"
_PREFIX = r"^/v1b3/projects/(?P<project>[^/]+)(?:/locations/(?P<location>[^/]+))?/jobs"
_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(_PREFIX + r"$"), "_create_job"),
    ("GET", re.compile(_PREFIX + r"$"), "_list_jobs"),
    ("GET", re.compile(_PREFIX + r"/(?P<job_id>[^/:]+)$"), "_get_job"),
    ("PUT", re.compile(_PREFIX + r"/(?P<job_id>[^/:]+)$"), "_update_job"),
    ("GET", re.compile(_PREFIX + r"/(?P<job_id>[^/:]+)/messages$"), "_list_messages"),
    ("GET", re.compile(_PREFIX + r"/(?P<job_id>[^/:]+)/metrics$"), "_get_metrics"),
]
TERMINAL_STATES = {
    "JOB_STATE_DONE", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_UPDATED", "JOB_STATE_DRAINED",
}


class RecordedRequest(dict):
    """One request: ``method``, ``path``, ``query`` (dict of lists) and ``body`` (parsed JSON or None)."""

    @property
    def method(self) -> str:
        return self["method"]

    @property
    def path(self) -> str:
        return self["path"]

    @property
    def body(self) -> Any:
        return self["body"]


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class FakeDataflow(LocalHttpService):
    """The fake service; start/stop it or use it as a context manager.

    Args:
        create_state: ``currentState`` of the job in the creation reply. Real Dataflow answers
            a new job without a meaningful state; a terminal one (e.g. ``JOB_STATE_DONE``)
            makes Beam's ``wait_until_finish`` return without polling.
        states: the states that successive ``jobs.get`` calls report for a job.
        messages: job messages (``{"time", "messageImportance", "messageText"}``) listed for every job.
        on_create: called with the stored job (a dict) after a job is created, before the reply.
    """

    thread_name = "fake-dataflow"
    not_running = "the fake Dataflow service is not running"

    def __init__(
        self,
        create_state: str = "JOB_STATE_PENDING",
        states: Iterable[str] = ("JOB_STATE_RUNNING", "JOB_STATE_DONE"),
        messages: Iterable[dict[str, Any]] = (),
        on_create: Callable[[dict[str, Any]], None] | None = None,
    ):
        super().__init__()
        self.create_state = create_state
        self.states = list(states) or ["JOB_STATE_DONE"]
        self.messages = list(messages)
        self.on_create = on_create
        self.requests: list[RecordedRequest] = []
        self.unhandled: list[RecordedRequest] = []
        self.jobs: dict[str, dict[str, Any]] = {}
        self._state_iters: dict[str, Iterable[str]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    # ---- lifecycle (start, stop, port, ``with``: LocalHttpService)

    @property
    def url(self) -> str:
        """The ``--dataflow_endpoint`` for Beam (``localhost``: see the module docstring)."""
        return f"http://localhost:{self.port}"

    def _make_server(self) -> ThreadingHTTPServer:
        fake = self

        class Handler(_Handler):
            service = fake

        server = ThreadingHTTPServer((HOST, 0), Handler)
        server.daemon_threads = True
        return server

    # ---- what was received

    @property
    def created_jobs(self) -> list[dict[str, Any]]:
        """The bodies of the jobs.create requests, in order."""
        return [r.body for r in self.requests if r.get("route") == "_create_job"]

    def calls(self) -> list[str]:
        """``"METHOD route"`` per request, e.g. ``"POST _create_job"``, for asserting the sequence."""
        return [f"{r.method} {r.get('route', '?')}" for r in self.requests]

    # ---- the API

    def _job_view(self, job: dict[str, Any]) -> dict[str, Any]:
        view = copy.deepcopy(job)
        view.pop("steps", None)  # jobs.get's default view (JOB_VIEW_SUMMARY) leaves these out
        view.get("environment", {}).pop("sdkPipelineOptions", None)
        return view

    def _create_job(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict) or not body.get("name"):
            return _error(HTTPStatus.BAD_REQUEST, "a job needs a name")
        now = _now()
        job_id = f"{datetime.now(timezone.utc):%Y-%m-%d_%H_%M_%S}-{next(self._ids):019d}"
        job = {
            **copy.deepcopy(body),
            "id": job_id,
            "projectId": params["project"],
            "location": params.get("location") or "us-central1",
            "currentState": self.create_state,
            "currentStateTime": now,
            "createTime": now,
        }
        with self._lock:
            self.jobs[job_id] = job
            self._state_iters[job_id] = itertools.chain(self.states, itertools.repeat(self.states[-1]))
        if self.on_create is not None:
            self.on_create(job)
        return HTTPStatus.OK, self._job_view(job)

    def _find(self, params: dict[str, str]) -> dict[str, Any] | None:
        job = self.jobs.get(params["job_id"])
        if job is None or job["projectId"] != params["project"]:
            return None
        if params.get("location") and job["location"] != params["location"]:
            return None
        return job

    def _get_job(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        with self._lock:
            job = self._find(params)
            if job is None:
                return _error(HTTPStatus.NOT_FOUND, f"job {params['job_id']} not found")
            if job["currentState"] not in TERMINAL_STATES:
                state = next(self._state_iters[job["id"]])
                if state != job["currentState"]:
                    job["currentState"], job["currentStateTime"] = state, _now()
            return HTTPStatus.OK, self._job_view(job)

    def _list_jobs(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        with self._lock:
            jobs = [
                self._job_view(job) for job in self.jobs.values()
                if job["projectId"] == params["project"] and job["location"] == (params.get("location") or job["location"])
            ]
        return HTTPStatus.OK, {"jobs": jobs}

    def _update_job(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        with self._lock:
            job = self._find(params)
            if job is None:
                return _error(HTTPStatus.NOT_FOUND, f"job {params['job_id']} not found")
            requested = (body or {}).get("requestedState")
            final = {
                "JOB_STATE_CANCELLED": "JOB_STATE_CANCELLED", "JOB_STATE_DRAINING": "JOB_STATE_DRAINED",
                "JOB_STATE_DONE": "JOB_STATE_DONE",
            }
            # the client sends enums as integers (enum-encoding=int): 5 = CANCELLED, 9 = DRAINING, 2 = DONE
            requested = {5: "JOB_STATE_CANCELLED", 9: "JOB_STATE_DRAINING", 2: "JOB_STATE_DONE"}.get(requested, requested)
            if requested not in final:
                return _error(HTTPStatus.BAD_REQUEST, f"cannot request state {requested!r}")
            job["requestedState"] = requested
            job["currentState"], job["currentStateTime"] = final[requested], _now()
            return HTTPStatus.OK, self._job_view(job)

    def _list_messages(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        if self._find(params) is None:
            return _error(HTTPStatus.NOT_FOUND, f"job {params['job_id']} not found")
        start = (query.get("startTime") or [""])[0]
        messages = [
            {"id": str(i), **m} for i, m in enumerate(self.messages) if not start or m.get("time", "") > start
        ]
        return HTTPStatus.OK, {"jobMessages": messages}

    def _get_metrics(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        if self._find(params) is None:
            return _error(HTTPStatus.NOT_FOUND, f"job {params['job_id']} not found")
        return HTTPStatus.OK, {"metricTime": _now(), "metrics": []}


def _error(status: HTTPStatus, message: str) -> tuple[int, Any]:
    return status, {"error": {"code": int(status), "message": message, "status": status.name}}


class _Handler(BaseHTTPRequestHandler):
    service: FakeDataflow
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's requests session expects

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def _handle(self) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        record = RecordedRequest(
            method=self.command,
            path=parsed.path,
            query=urllib.parse.parse_qs(parsed.query, keep_blank_values=True),
            body=body,
        )
        service = self.service
        for method, pattern, name in _ROUTES:
            match = pattern.match(parsed.path)
            if match and method == self.command:
                record["route"] = name
                with service._lock:
                    service.requests.append(record)
                params = {k: urllib.parse.unquote(v) for k, v in match.groupdict().items() if v is not None}
                try:
                    status, reply = getattr(service, name)(params, record["query"], body)
                except Exception as error:  # a bug here must show in the test, not hang the client
                    status, reply = _error(HTTPStatus.INTERNAL_SERVER_ERROR, f"fake Dataflow: {error!r}")
                break
        else:
            with service._lock:
                service.requests.append(record)
                service.unhandled.append(record)
            status, reply = _error(HTTPStatus.NOT_FOUND, f"fake Dataflow: no route for {self.command} {parsed.path}")
        data = json.dumps(reply).encode("utf-8")
        self.send_response(int(status))
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle
