"""GCP: the preemption flag and the host maintenance event, by long poll.

Every request carries ``Metadata-Flavor: Google`` (the server refuses it otherwise, and signs every
answer with the same header). ``instance/preempted`` reads ``FALSE`` until the VM is to be reclaimed,
then ``TRUE`` (30 s ahead; the deadline is not in the protocol, so it is counted from the answer);
``instance/maintenance-event`` reads ``NONE`` until e.g. ``TERMINATE_ON_HOST_MAINTENANCE``. The first
read is plain, to learn the value and its ``ETag``; each later one is
``?wait_for_change=true&last_etag=E&timeout_sec=T``, which the server holds until the value changes
from ``E`` or ``T`` passes.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping
from urllib.parse import urlencode

from .base import NOTICE_WINDOW_S, Notice, NoticeKind, NoticeSource, ProtocolError, resolve_endpoint
from .transport import HttpTransport, Response, Transport

__all__ = [
    "GcpSource", "FLAVOR_HEADER", "FLAVOR", "INSTANCE_PATH", "PREEMPTED", "MAINTENANCE_EVENT",
    "parse_value", "interpret", "watch_query",
]

FLAVOR_HEADER = "Metadata-Flavor"
FLAVOR = "Google"
INSTANCE_PATH = "/computeMetadata/v1/instance/"
PREEMPTED = "preempted"
MAINTENANCE_EVENT = "maintenance-event"
_EVENT_VALUE = re.compile(r"[A-Z][A-Z_]{0,63}")


def parse_value(resp: Response) -> tuple[str, str | None]:
    """The value read and its ETag; an answer without Google's signature header is not the metadata server."""
    if resp.header(FLAVOR_HEADER) != FLAVOR:
        raise ProtocolError(f"answer without {FLAVOR_HEADER}: {FLAVOR} (status {resp.status})")
    if resp.status != 200:
        raise ProtocolError(f"answered {resp.status} {resp.body[:60]!r}")
    return resp.text().strip(), resp.header("etag")


def interpret(key: str, value: str, now: float, window_s: float) -> Notice | None:
    """What a value of ``key`` means: nothing, a preemption ``window_s`` ahead, or a maintenance warning."""
    if key == PREEMPTED:
        if value == "FALSE":
            return None
        if value == "TRUE":
            return Notice(NoticeSource.GCP, NoticeKind.PREEMPT, now + window_s, now, {"key": key, "value": value})
    elif key == MAINTENANCE_EVENT:
        if value == "NONE":
            return None
        if _EVENT_VALUE.fullmatch(value):
            return Notice(NoticeSource.GCP, NoticeKind.MAINTENANCE, None, now, {"key": key, "value": value})
    raise ProtocolError(f"{key} read {value[:60]!r}")


def watch_query(etag: str | None, wait_s: int) -> str:
    """A plain read until the ETag is known; a long poll on it after."""
    if etag is None:
        return ""
    return "?" + urlencode({"wait_for_change": "true", "last_etag": etag, "timeout_sec": str(wait_s)})


class GcpSource:
    """Long-polls one key (``preempted`` or ``maintenance-event``); the watcher runs one of each."""

    source = NoticeSource.GCP
    headers: Mapping[str, str] = {FLAVOR_HEADER: FLAVOR}

    def __init__(self, key: str = PREEMPTED, endpoint: str | None = None, *, wait_s: int = 30,
                 window_s: float = NOTICE_WINDOW_S[NoticeSource.GCP], interval_s: float = 0.5,
                 timeout_s: float = 2.0, transport: Transport | None = None,
                 clock: Callable[[], float] = time.time, environ: Mapping[str, str] | None = None) -> None:
        if key not in (PREEMPTED, MAINTENANCE_EVENT):
            raise ValueError(f"not a watched key: {key!r}")
        env = os.environ if environ is None else environ
        self.key = key
        self.base = resolve_endpoint(NoticeSource.GCP, endpoint, env)
        self.wait_s = wait_s
        self.window_s = window_s
        self.interval_s = interval_s
        self.timeout_s = timeout_s  # on top of wait_s for a long poll
        self.transport: Transport = transport or HttpTransport()
        self.clock = clock
        self.etag: str | None = None

    def poll(self) -> list[Notice]:
        etag, self.etag = self.etag, None  # a failed read starts over with a plain one
        timeout = self.timeout_s + (self.wait_s if etag is not None else 0)
        resp = self.transport.request("GET", self.base + INSTANCE_PATH + self.key + watch_query(etag, self.wait_s),
                                      self.headers, timeout_s=timeout)
        value, new_etag = parse_value(resp)
        notice = interpret(self.key, value, self.clock(), self.window_s)
        self.etag = new_etag
        return [notice] if notice is not None else []

    def close(self) -> None:
        self.transport.abort()
