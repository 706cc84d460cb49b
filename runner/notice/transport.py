"""The thin HTTP edge the notice sources stand on: one request, one :class:`Response`, every status an
answer, every failure to get one a :class:`TransportError`.

``http.client`` rather than ``urllib``: a metadata server is link-local, so no proxy from the
environment may be used and no redirect followed; the connect timeout is kept short and apart from the
read timeout (a long poll waits on the read); and :meth:`HttpTransport.abort` shuts the sockets in
flight so that a watcher blocked in a long poll or on a hung server stops at once.
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

__all__ = ["Response", "Transport", "TransportError", "HttpTransport", "MAX_BODY"]

#: The most a metadata answer may weigh; more is garbage.
MAX_BODY = 1 << 20


@dataclass(frozen=True)
class Response:
    """An HTTP answer; header names are lower-cased."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


class TransportError(Exception):
    """No answer: refused, unreachable, timed out, aborted, or not HTTP."""


class Transport(Protocol):
    def request(self, method: str, url: str, headers: Mapping[str, str] | None = None,
                body: bytes | None = None, timeout_s: float = 2.0) -> Response: ...

    def abort(self) -> None: ...


class HttpTransport:
    """Requests over ``http.client``, one connection each, which :meth:`abort` can cut from any thread."""

    def __init__(self, connect_timeout_s: float = 1.0, max_body: int = MAX_BODY) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.max_body = max_body
        self._lock = threading.Lock()
        self._live: set[http.client.HTTPConnection] = set()
        self._aborted = False

    def request(self, method: str, url: str, headers: Mapping[str, str] | None = None,
                body: bytes | None = None, timeout_s: float = 2.0) -> Response:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TransportError(f"not an http URL: {url!r}")
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = cls(parts.hostname, parts.port, timeout=min(self.connect_timeout_s, timeout_s))
        with self._lock:
            if self._aborted:
                raise TransportError("aborted")
            self._live.add(conn)
        try:
            conn.connect()
            if self._aborted:  # abort() ran while we connected
                raise TransportError("aborted")
            assert conn.sock is not None
            conn.sock.settimeout(timeout_s)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            conn.request(method, target, body=body, headers=dict(headers or {}))
            r = conn.getresponse()
            data = r.read(self.max_body + 1)
            if len(data) > self.max_body:
                raise TransportError(f"{method} {url}: answer over {self.max_body} bytes")
            return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise TransportError(f"{method} {url}: {type(e).__name__}: {e}") from e
        finally:
            with self._lock:
                self._live.discard(conn)
            conn.close()

    def abort(self) -> None:
        """Fail every request in flight, and every later one."""
        with self._lock:
            self._aborted = True
            live = list(self._live)
        for conn in live:
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
