"""Store outages for chaos: a TCP proxy on 127.0.0.1 in front of an S3 endpoint, and a directory
store moved aside. Both are real failures as a client meets them - no client code is patched.

:class:`FaultProxy` forwards bytes both ways while up. Taken down, it ``refuse``s - each new
connection is reset as it arrives, and the open ones are cut - or it ``hang``s - connections are
accepted and held unanswered, so calls wait on their timeouts. When it comes back up, the held
connections are reset, as a load balancer's idle ones would be, and the clients' retries go through.

:class:`DirectoryOutage` moves a ``file://`` store's directory aside for the outage: every call
finds it missing, as it would a bucket that is gone.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

__all__ = ["DirectoryOutage", "FaultProxy", "Outage", "endpoint_address"]

UP = "up"


class Outage(Protocol):
    def down(self, mode: str) -> None: ...
    def up(self) -> None: ...
    def close(self) -> None: ...


def endpoint_address(url: str) -> tuple[str, int] | None:
    """Host and port of a plain-HTTP endpoint URL; None for HTTPS (a proxy on 127.0.0.1 would fail
    its certificate check) or anything else."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        return None
    return parts.hostname, parts.port or 80


def _reset(sock: socket.socket) -> None:
    """Close with a reset (RST), waking any thread of ours waiting on it (a read shutdown sends the
    peer nothing; the close with a zero linger sends the reset)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass
    sock.close()


class FaultProxy:
    """Forwards 127.0.0.1:``port`` to ``target`` until told otherwise."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.mode = UP
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name="fault-proxy", daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def down(self, mode: str) -> None:
        """``refuse`` or ``hang`` from now on; open connections are cut either way."""
        if mode not in ("refuse", "hang"):
            raise ValueError(f"unknown outage mode {mode!r}")
        self.mode = mode
        self._cut()

    def up(self) -> None:
        self.mode = UP
        self._cut()  # the held ones

    def close(self) -> None:
        self._closed = True
        _reset(self._listener)
        self._cut()

    def _cut(self) -> None:
        with self._lock:
            socks, self._open = self._open, set()
        for s in socks:
            _reset(s)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.mode == "refuse":
                _reset(client)
                continue
            if self.mode == "hang":
                with self._lock:
                    self._open.add(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5.0)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            threading.Thread(target=self._relay, args=(client, upstream), daemon=True).start()

    def _relay(self, a: socket.socket, b: socket.socket) -> None:
        """Copy bytes both ways until one side closes, or an outage cuts them."""
        peer = {a: b, b: a}
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [])
                for src in ready:
                    data = src.recv(65536)
                    if not data:
                        return
                    peer[src].sendall(data)
        except (OSError, ValueError):
            pass  # cut by an outage (a closed socket), or a side went away
        finally:
            with self._lock:
                self._open.difference_update((a, b))
            for s in (a, b):
                s.close()


class DirectoryOutage:
    """A ``file://`` store's directory, moved aside while it is down (any mode: it is missing)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.aside = self.root.with_name(f".{self.root.name}.outage-{os.getpid()}")

    def down(self, mode: str) -> None:
        if self.root.exists():
            os.rename(self.root, self.aside)

    def up(self) -> None:
        if self.aside.exists():
            os.rename(self.aside, self.root)

    def close(self) -> None:
        self.up()
