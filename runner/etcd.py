"""A few calls of etcd's v3 API, through its JSON gateway (``/v3/kv/...``), with the standard library.

The supervisors of a job that spans several machines share one small record in etcd (see
:mod:`runner.nodes`): reading it, and replacing it only if nobody replaced it since (a transaction
comparing its ``mod_revision``), is all they need. Paddle's own etcd master needs the ``etcd3``
package (gRPC, and a protobuf older than Paddle's), so the gateway's JSON is spoken here instead:
it is etcd's own API, not a protocol of ours.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Entry", "KeyValue", "Etcd", "EtcdError"]


class EtcdError(OSError):
    """etcd could not be reached, or answered something that is not its API's."""


@dataclass(frozen=True)
class Entry:
    """A key's value and the revision that last changed it (the token of a compare-and-swap)."""

    value: str
    mod_revision: int


class KeyValue(Protocol):
    """What the coordination of nodes needs of a key-value store (etcd, or a test's fake)."""

    def get(self, key: str) -> Entry | None: ...

    def swap(self, key: str, value: str, expected: int) -> bool:
        """Put ``value`` only if ``key``'s ``mod_revision`` is still ``expected`` (0: the key must
        not exist); True if it was put."""
        ...


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode()


class Etcd:
    """etcd at ``url`` (``http://HOST:PORT``); each call waits up to ``timeout`` seconds."""

    def __init__(self, url: str, timeout: float = 2.0) -> None:
        self.url, self.timeout = url.rstrip("/"), timeout

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(f"{self.url}/v3/{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                out = json.loads(resp.read())
        except (OSError, ValueError) as exc:  # URLError and timeouts are OSErrors
            raise EtcdError(f"etcd at {self.url}: {exc}") from None
        if not isinstance(out, dict) or "header" not in out:
            raise EtcdError(f"etcd at {self.url} answered {str(out)[:120]!r}")
        return out

    def get(self, key: str) -> Entry | None:
        kvs = self._call("kv/range", {"key": _b64(key)}).get("kvs") or []
        if not kvs:
            return None
        kv = kvs[0]
        return Entry(_unb64(kv.get("value", "")), int(kv["mod_revision"]))

    def put(self, key: str, value: str) -> None:
        self._call("kv/put", {"key": _b64(key), "value": _b64(value)})

    def swap(self, key: str, value: str, expected: int) -> bool:
        target = ({"target": "CREATE", "create_revision": "0"} if expected == 0
                  else {"target": "MOD", "mod_revision": str(expected)})
        out = self._call("kv/txn", {"compare": [{"key": _b64(key), "result": "EQUAL", **target}],
                                    "success": [{"request_put": {"key": _b64(key), "value": _b64(value)}}]})
        return bool(out.get("succeeded"))

    def healthy(self) -> bool:
        """True if etcd answers."""
        try:
            self._call("kv/range", {"key": _b64("/")})
        except EtcdError:
            return False
        return True
