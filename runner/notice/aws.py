"""AWS: the spot interruption notice and the rebalance recommendation, through IMDSv2.

Every read carries a session token got with ``PUT /latest/api/token`` (its lifetime asked for in
``X-aws-ec2-metadata-token-ttl-seconds``, the token sent back in ``X-aws-ec2-metadata-token``); the
token is renewed before it expires and at once on a 401. ``spot/instance-action`` answers 404 until
the instance is to be reclaimed, then ``{"action": "terminate"|"stop"|"hibernate", "time": ISO}``
(two minutes ahead); ``events/recommendations/rebalance`` answers 404 until ``{"noticeTime": ISO}``,
an early warning that the instance is at raised risk. AWS suggests polling every 5 s.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .base import Notice, NoticeKind, NoticeSource, ProtocolError, parse_iso_time, resolve_endpoint
from .transport import HttpTransport, Response, Transport

__all__ = [
    "AwsSource", "Token", "TOKEN_PATH", "ACTION_PATH", "REBALANCE_PATH", "TTL_HEADER", "TOKEN_HEADER",
    "parse_token", "token_usable", "renew_margin_s", "parse_instance_action", "parse_rebalance",
]

TOKEN_PATH = "/latest/api/token"
ACTION_PATH = "/latest/meta-data/spot/instance-action"
REBALANCE_PATH = "/latest/meta-data/events/recommendations/rebalance"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
MAX_TTL_S = 21600

_ACTIONS: Mapping[str, NoticeKind] = {
    "terminate": NoticeKind.TERMINATE, "stop": NoticeKind.STOP, "hibernate": NoticeKind.STOP,
}


@dataclass(frozen=True)
class Token:
    value: str
    expires_at: float


def renew_margin_s(ttl_s: int) -> float:
    """How long before its expiry a token is renewed: a quarter of its life, at most a minute."""
    return min(60.0, ttl_s / 4)


def token_usable(token: Token | None, now: float, margin_s: float) -> bool:
    return token is not None and now < token.expires_at - margin_s


def parse_token(resp: Response, now: float, ttl_s: int) -> Token:
    """The answer to the token PUT; the lifetime the server grants (echoed in the TTL header) wins."""
    value = resp.text().strip()
    if resp.status != 200 or not value or len(value) > 4096 or any(c.isspace() for c in value):
        raise ProtocolError(f"token request answered {resp.status} {resp.body[:60]!r}")
    granted = resp.header(TTL_HEADER)
    try:
        ttl = int(granted) if granted is not None else ttl_s
    except ValueError:
        ttl = ttl_s
    return Token(value, now + ttl)


def _json_object(resp: Response) -> dict[str, object]:
    try:
        doc = json.loads(resp.body)
    except ValueError:
        raise ProtocolError(f"not JSON: {resp.body[:60]!r}") from None
    if not isinstance(doc, dict):
        raise ProtocolError(f"not a JSON object: {resp.body[:60]!r}")
    return doc


def parse_instance_action(resp: Response, now: float) -> Notice | None:
    """``spot/instance-action``: None while 404, a notice with the action's time as its deadline after."""
    if resp.status == 404:
        return None
    if resp.status != 200:
        raise ProtocolError(f"instance-action answered {resp.status}")
    doc = _json_object(resp)
    action, when = doc.get("action"), doc.get("time")
    if not isinstance(action, str) or action not in _ACTIONS or not isinstance(when, str):
        raise ProtocolError(f"not an instance action: {resp.body[:80]!r}")
    return Notice(NoticeSource.AWS, _ACTIONS[action], parse_iso_time(when), now,
                  {"action": action, "time": when})


def parse_rebalance(resp: Response, now: float) -> Notice | None:
    """``events/recommendations/rebalance``: None while 404, an early warning without a deadline after."""
    if resp.status == 404:
        return None
    if resp.status != 200:
        raise ProtocolError(f"rebalance answered {resp.status}")
    when = _json_object(resp).get("noticeTime")
    if not isinstance(when, str):
        raise ProtocolError(f"not a rebalance recommendation: {resp.body[:80]!r}")
    parse_iso_time(when)  # a garbled time is garbage, not a notice
    return Notice(NoticeSource.AWS, NoticeKind.REBALANCE, None, now, {"noticeTime": when})


class AwsSource:
    """Polls both AWS paths each round, with one IMDSv2 token kept fresh."""

    source = NoticeSource.AWS

    def __init__(self, endpoint: str | None = None, *, ttl_s: int = MAX_TTL_S, interval_s: float = 5.0,
                 timeout_s: float = 2.0, transport: Transport | None = None,
                 clock: Callable[[], float] = time.time, environ: Mapping[str, str] | None = None) -> None:
        if not 1 <= ttl_s <= MAX_TTL_S:
            raise ValueError(f"token ttl must be 1..{MAX_TTL_S} s, got {ttl_s}")
        env = os.environ if environ is None else environ
        self.base = resolve_endpoint(NoticeSource.AWS, endpoint, env)
        self.ttl_s = ttl_s
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.transport: Transport = transport or HttpTransport()
        self.clock = clock
        self.token: Token | None = None

    def poll(self) -> list[Notice]:
        found = []
        for path, parse in ((ACTION_PATH, parse_instance_action), (REBALANCE_PATH, parse_rebalance)):
            notice = parse(self._get(path), self.clock())
            if notice is not None:
                found.append(notice)
        return found

    def close(self) -> None:
        self.transport.abort()

    def _get(self, path: str) -> Response:
        """GET with a token; a 401 means the token went stale: one more try with a new one."""
        for _ in range(2):
            resp = self.transport.request("GET", self.base + path, self._auth_headers(), timeout_s=self.timeout_s)
            if resp.status != 401:
                return resp
            self.token = None
        raise ProtocolError(f"GET {path} answered 401 with a fresh token")

    def _auth_headers(self) -> dict[str, str]:
        now = self.clock()
        if not token_usable(self.token, now, renew_margin_s(self.ttl_s)):
            resp = self.transport.request("PUT", self.base + TOKEN_PATH, {TTL_HEADER: str(self.ttl_s)},
                                          timeout_s=self.timeout_s)
            self.token = parse_token(resp, now, self.ttl_s)
        assert self.token is not None
        return {TOKEN_HEADER: self.token.value}
