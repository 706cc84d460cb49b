"""Fake cloud metadata servers that speak the real preemption-notice protocols, on 127.0.0.1.

Each fake refuses what the real server refuses (AWS: no token, a stale token, a token PUT without its
lifetime header; GCP: no ``Metadata-Flavor: Google``; Azure: no ``Metadata: true``, no api-version),
answers "nothing yet" until :meth:`FakeMetadataServer.preempt` schedules the reclaim (``after_s`` from
now, ``window_s`` from the notice to the deadline, scaled down from the clouds' minutes to seconds),
and records every request it saw. Its :class:`Mode` can make it hang, answer garbage in the protocol's
envelope, or answer bytes that are not HTTP at all, to prove that a watcher survives those.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from enum import StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

__all__ = ["Mode", "SeenRequest", "Reply", "FakeMetadataServer", "FakeAws", "FakeGcp", "FakeAzure"]


class Mode(StrEnum):
    NORMAL = "normal"
    HANG = "hang"          # take the request, never answer (until closed or set back)
    GARBAGE = "garbage"    # 200 with the protocol's signature headers and a body that is no answer
    NOT_HTTP = "not-http"  # bytes that are not an HTTP response, then close


_F = TypeVar("_F", bound="FakeMetadataServer")

GARBAGE_BODY = b"\x00\xff<html>not what you asked for{"


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str  # with its query
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    @property
    def route(self) -> str:
        return urlsplit(self.path).path

    @property
    def query(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)


def _json(status: int, doc: Any) -> Reply:
    return Reply(status, json.dumps(doc).encode(), {"Content-Type": "application/json"})


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self.server.fake._serve(self)

    do_PUT = do_POST = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeMetadataServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up mid-answer is the point of some tests


class FakeMetadataServer:
    """The shared machinery: the server thread, the request log, the modes, the preemption schedule."""

    #: Headers on every answer (the protocol's signature).
    signature: Mapping[str, str] = {}

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.mode = Mode.NORMAL
        self.flip_at: float | None = None
        self.deadline: float | None = None
        self._cond = threading.Condition()
        self._closing = False
        self._seen: list[SeenRequest] = []
        self._replies: list[tuple[SeenRequest, int]] = []
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.01},
                                        name=f"{type(self).__name__}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def preempt(self, after_s: float = 0.0, window_s: float = 5.0) -> None:
        """Give the notice ``after_s`` from now, with the reclaim ``window_s`` after it."""
        with self._cond:
            self.flip_at = self.clock() + after_s
            self.deadline = self.flip_at + window_s
            self._cond.notify_all()

    def flip(self) -> None:
        self.preempt(0.0)

    @property
    def preempted(self) -> bool:
        return self.flip_at is not None and self.clock() >= self.flip_at

    def set_mode(self, mode: Mode) -> None:
        with self._cond:
            self.mode = mode
            self._cond.notify_all()

    @property
    def requests(self) -> list[SeenRequest]:
        """Every request, in the order it arrived (an unanswered one too)."""
        with self._cond:
            return list(self._seen)

    @property
    def replies(self) -> list[tuple[SeenRequest, int]]:
        """Every request answered in the protocol, with its status."""
        with self._cond:
            return list(self._replies)

    def statuses(self, route: str) -> list[int]:
        return [status for r, status in self.replies if r.route == route]

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(2.0)

    def __enter__(self: _F) -> _F:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def answer(self, req: SeenRequest) -> Reply:
        raise NotImplementedError

    def wait_until(self, done: Callable[[], bool], timeout_s: float) -> bool:
        """Block a handler until ``done()`` or ``timeout_s`` or close; ``done()``'s last value."""
        end = time.monotonic() + timeout_s
        with self._cond:
            while not done() and not self._closing and time.monotonic() < end:
                self._cond.wait(min(0.05, max(0.0, end - time.monotonic())))
            return done()

    def _serve(self, h: _Handler) -> None:
        n = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(n) if n > 0 else b""
        req = SeenRequest(h.command, h.path, tuple(h.headers.items()), body)
        with self._cond:
            self._seen.append(req)
            mode = self.mode
        h.close_connection = True
        if mode is Mode.HANG:
            self.wait_until(lambda: self.mode is not Mode.HANG, timeout_s=3600)
            return  # the connection closes unanswered
        if mode is Mode.NOT_HTTP:
            try:
                h.wfile.write(b"\x16\x03\x01 not an http answer\r\n\r\n")
            except OSError:
                pass
            return
        reply = Reply(200, GARBAGE_BODY) if mode is Mode.GARBAGE else self.answer(req)
        with self._cond:
            self._replies.append((req, reply.status))
        try:
            h.send_response(reply.status)
            for k, v in {**self.signature, **reply.headers}.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(reply.body)))
            h.end_headers()
            h.wfile.write(reply.body)
        except OSError:
            pass  # the client gave up (or was closed) before the answer


class FakeAws(FakeMetadataServer):
    """IMDSv2 only ("http-tokens required"): every GET needs a live token from ``PUT /latest/api/token``."""

    def __init__(self, action: str = "terminate", clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        self.action = action
        self.rebalance_at: float | None = None
        self.tokens: dict[str, float] = {}  # token -> expiry, by the clock

    def rebalance(self, after_s: float = 0.0) -> None:
        self.rebalance_at = self.clock() + after_s

    def revoke_tokens(self) -> None:
        """Every token stops working at once (the next GET with one is a 401)."""
        with self._cond:
            self.tokens.clear()

    def answer(self, req: SeenRequest) -> Reply:
        if req.route == "/latest/api/token":
            return self._token(req)
        if req.method != "GET":
            return Reply(405)
        with self._cond:
            expiry = self.tokens.get(req.header("X-aws-ec2-metadata-token") or "")
        if expiry is None or self.clock() >= expiry:
            return Reply(401)
        now = self.clock()
        if req.route == "/latest/meta-data/spot/instance-action" and self.preempted:
            assert self.deadline is not None
            return _json(200, {"action": self.action, "time": _iso(self.deadline)})
        if req.route == "/latest/meta-data/events/recommendations/rebalance" and self.rebalance_at is not None \
                and now >= self.rebalance_at:
            return _json(200, {"noticeTime": _iso(self.rebalance_at)})
        if req.route == "/latest/meta-data/":
            return Reply(200, b"ami-id\nevents/\ninstance-id\nspot/\n")
        return Reply(404, b"Not Found")

    def _token(self, req: SeenRequest) -> Reply:
        if req.method != "PUT":
            return Reply(405)
        ttl = req.header("X-aws-ec2-metadata-token-ttl-seconds") or ""
        if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
            return Reply(400)
        token = secrets.token_urlsafe(32)
        with self._cond:
            self.tokens[token] = self.clock() + int(ttl)
        return Reply(200, token.encode(), {"X-aws-ec2-metadata-token-ttl-seconds": ttl})


class FakeGcp(FakeMetadataServer):
    """``instance/preempted`` and ``instance/maintenance-event``, with ``wait_for_change`` long polls."""

    signature = {"Metadata-Flavor": "Google"}
    PREFIX = "/computeMetadata/v1/instance/"

    def __init__(self, default_wait_s: float = 30.0, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        self.default_wait_s = default_wait_s
        self.maintenance = "NONE"

    def set_maintenance(self, value: str) -> None:
        with self._cond:
            self.maintenance = value
            self._cond.notify_all()

    def value(self, key: str) -> str | None:
        if key == "preempted":
            return "TRUE" if self.preempted else "FALSE"
        return self.maintenance if key == "maintenance-event" else None

    @staticmethod
    def etag(value: str) -> str:
        return hashlib.sha1(value.encode()).hexdigest()[:16]

    def answer(self, req: SeenRequest) -> Reply:
        if req.header("Metadata-Flavor") != "Google":
            return Reply(403, b"Missing Metadata-Flavor:Google header.")
        key = req.route.removeprefix(self.PREFIX) if req.route.startswith(self.PREFIX) else ""
        start = self.value(key)
        if start is None:
            return Reply(404, b"Not Found")
        q = req.query
        if q.get("wait_for_change") == "true":
            last = q.get("last_etag", self.etag(start))
            try:
                wait_s = float(q.get("timeout_sec", self.default_wait_s))
            except ValueError:
                return Reply(400, b"bad timeout_sec")
            self.wait_until(lambda: self.etag(self.value(key) or "") != last, wait_s)
        value = self.value(key) or ""
        return Reply(200, value.encode(), {"ETag": self.etag(value), "Content-Type": "application/text"})


class FakeAzure(FakeMetadataServer):
    """Scheduled Events, the VM's name, and the approval POST (``approvals`` keeps the EventIds)."""

    def __init__(self, vm_name: str = "vm-under-test", event_type: str = "Preempt",
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        self.vm_name = vm_name
        self.event_type = event_type
        self.events: list[tuple[float, dict[str, Any]]] = []  # (visible from, event)
        self.approvals: list[str] = []

    def preempt(self, after_s: float = 0.0, window_s: float = 5.0) -> None:
        super().preempt(after_s, window_s)
        self.add_event(self.event_type, after_s=after_s, window_s=window_s)

    def add_event(self, event_type: str, resources: list[str] | None = None, after_s: float = 0.0,
                  window_s: float = 5.0) -> str:
        at = self.clock() + after_s
        event = {"EventId": str(uuid.uuid4()).upper(), "EventStatus": "Scheduled", "EventType": event_type,
                 "ResourceType": "VirtualMachine", "Resources": resources or [self.vm_name],
                 "NotBefore": formatdate(at + window_s, usegmt=True), "Description": "fake event",
                 "EventSource": "Platform", "DurationInSeconds": -1}
        with self._cond:
            self.events.append((at, event))
        return str(event["EventId"])

    def document(self) -> dict[str, Any]:
        now = self.clock()
        with self._cond:
            visible = [dict(e) for at, e in self.events if now >= at]
            incarnation = 1 + len(visible) + len(self.approvals)
        return {"DocumentIncarnation": incarnation, "Events": visible}

    def answer(self, req: SeenRequest) -> Reply:
        if req.header("Metadata") != "true":
            return _json(400, {"error": "Bad request. Required metadata header not specified"})
        if req.route == "/metadata/versions":
            return _json(200, {"apiVersions": ["2020-07-01", "2021-02-01"]})
        if "api-version" not in req.query:
            return _json(400, {"error": "Bad request. api-version was not specified in the request"})
        if req.route == "/metadata/instance/compute/name" and req.method == "GET":
            return Reply(200, self.vm_name.encode(), {"Content-Type": "text/plain"})
        if req.route != "/metadata/scheduledevents":
            return _json(404, {"error": "Not found"})
        if req.method == "GET":
            return _json(200, self.document())
        return self._approve(req) if req.method == "POST" else Reply(405)

    def _approve(self, req: SeenRequest) -> Reply:
        try:
            ids = [s["EventId"] for s in json.loads(req.body)["StartRequests"]]
        except (ValueError, KeyError, TypeError):
            return _json(400, {"error": "Bad request. StartRequests expected"})
        with self._cond:
            known = {str(e["EventId"]): e for _, e in self.events}
            if not ids or any(i not in known for i in ids):
                return _json(400, {"error": "Bad request. Unknown EventId"})
            for i in ids:
                self.approvals.append(i)
                known[i].update(EventStatus="Started", NotBefore="")
        return Reply(200)
