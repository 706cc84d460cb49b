"""Uploads to the remote store, run by a process of their own beside the worker; this is the
worker's side of it.

The worker tells its uploader (:mod:`checkpoint.upload_process`) the name of each committed,
durable local checkpoint that is due for the store, one JSON line on the uploader's stdin, and
reads the outcomes from its stdout when it likes; nothing here waits, except :meth:`Uploader.settle`
(the job's end: the newest checkpoint must be in the store before ``final.json``) and
:meth:`Uploader.close` (the worker stops: the uploader finishes the newest checkpoint it was given,
within the drain time, then exits). The uploads' Python - hashing, HTTP, retries - runs on the
uploader's interpreter, so it never takes the training thread's GIL; the training thread pays for a
``write`` of a line and a ``read`` of the pipe.

An outcome is one :class:`UploadResult` line. A fatal one - this writer was fenced off by a newer
supervisor, or the store holds another job's data - makes :meth:`Uploader.check` raise
:class:`~checkpoint.objects.StoreError` (exit 77): the worker stops. A failed upload that may
succeed later (the store is away) is not fatal: the uploader tries again, and training goes on.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rundir.children import project_pythonpath
from rundir.events import EventKind
from rundir.journal import append_record

from .objects import StoreError
from .sync import UploadSettings

__all__ = ["UploadRequest", "UploadResult", "Uploader", "UploaderGone"]

_COMMAND = [sys.executable, "-m", "checkpoint.upload_process"]
#: How much longer than its drain time an uploader may take to exit before it is killed (a call to the
#: store that hangs outlasts the drain time).
EXIT_MARGIN_S = 1.0


@dataclass(frozen=True)
class UploadRequest:
    """Upload the local checkpoint ``name`` (committed at ``committed``, seconds since the epoch) for
    attempt ``attempt``, in whose name the uploader records what becomes of it."""

    name: str
    step: int
    committed: float
    attempt: int = 0

    def line(self) -> bytes:
        return (json.dumps(asdict(self)) + "\n").encode()

    @classmethod
    def parse(cls, line: bytes) -> UploadRequest:
        d = json.loads(line)
        return cls(str(d["name"]), int(d["step"]), float(d["committed"]), int(d.get("attempt") or 0))


@dataclass(frozen=True)
class UploadResult:
    """What became of an upload. ``ok``: committed in the store. Otherwise ``error`` says why, and
    ``retry_in_s`` when the uploader will try again (None: it gave up on this checkpoint). ``fatal``:
    the uploader stops, and so must the worker. ``last``: the uploader's last word before it exits."""

    name: str | None = None
    step: int | None = None
    ok: bool = False
    error: str | None = None
    retry_in_s: float | None = None
    fatal: bool = False
    last: bool = False

    @property
    def settled(self) -> bool:
        """Nothing more will happen to this checkpoint: committed, given up, or fatal."""
        return self.ok or self.retry_in_s is None

    def line(self) -> bytes:
        return (json.dumps(asdict(self)) + "\n").encode()

    @classmethod
    def parse(cls, line: bytes) -> UploadResult:
        d = json.loads(line)
        return cls(**{k: d.get(k) for k in ("name", "step", "error", "retry_in_s")}, ok=bool(d.get("ok")),
                   fatal=bool(d.get("fatal")), last=bool(d.get("last")))


class UploaderGone(RuntimeError):
    """The uploader process exited while the worker still needed it (a bug, or it was killed)."""


class Uploader:
    """Starts the uploader process for one worker and talks to it over two pipes. A worker starts
    it as early as it can (a standby spare while it warms up), so that its imports and its first
    connection to the store are made before the first checkpoint.

    ``ids``: the fields that name the worker in ``events.jsonl`` (the uploader writes in its name,
    adding ``uploader_pid``; :attr:`attempt` goes with each request). ``events``: that file, for
    what this side must record itself."""

    def __init__(self, run_dir: Path, settings: UploadSettings, *, ids: Mapping[str, Any], events: Path) -> None:
        self.settings = settings
        self._ids = dict(ids)
        self._events = Path(events)
        env = dict(os.environ, PYTHONPATH=project_pythonpath(os.environ.get("PYTHONPATH")))
        args = [str(run_dir), settings.url, str(settings.generation), repr(settings.drain_s), json.dumps(self._ids),
                str(os.getpid())]
        self._proc = subprocess.Popen([*_COMMAND, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._w: int | None = self._proc.stdin.fileno()
        self._r = self._proc.stdout.fileno()
        os.set_blocking(self._w, False)
        os.set_blocking(self._r, False)
        self._unsent: UploadRequest | None = None
        self._newest: UploadRequest | None = None  # the newest request made
        self._buf = b""
        self._eof = False
        self.results: list[UploadResult] = []
        self.fatal: str | None = None
        self.attempt = int(self._ids.get("attempt") or 0)

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def every_s(self) -> float:
        return self.settings.every_s

    # -- telling ----------------------------------------------------------------------------------

    def notify(self, name: str, step: int, committed: float | None = None) -> None:
        """Have the local checkpoint ``name`` uploaded. Never blocks: if the pipe is full (the store
        has been away for long), the request waits here, and a newer one replaces it."""
        req = UploadRequest(name, step, time.time() if committed is None else committed, self.attempt)
        if self._unsent is None or req.step >= self._unsent.step:
            self._unsent = req
        if self._newest is None or req.step >= self._newest.step:
            self._newest = req
        self._send()

    def _send(self) -> None:
        if self._unsent is None or self._w is None:
            return
        try:
            os.write(self._w, self._unsent.line())  # one line, under PIPE_BUF: written whole or not at all
        except BlockingIOError:
            return
        except BrokenPipeError:
            self._unsent = None
            return
        self._unsent = None

    # -- hearing ----------------------------------------------------------------------------------

    def _pump(self) -> None:
        while not self._eof:
            try:
                data = os.read(self._r, 65536)
            except BlockingIOError:
                break
            if not data:
                self._eof = True
                break
            self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            if line.strip():
                r = UploadResult.parse(line)
                self.results.append(r)
                if r.fatal:
                    self.fatal = r.error or "the remote store refused an upload"

    def check(self) -> None:
        """Raise :class:`StoreError` if the uploader hit a fatal error, :class:`UploaderGone` if it is
        gone without saying why; otherwise send what waits to be sent. Cheap: one ``read``."""
        self._pump()
        if self.fatal is not None:
            raise StoreError(self.fatal)
        if self._eof and self._proc.poll() is not None:
            raise UploaderGone(f"the checkpoint uploader (pid {self.pid}) exited with {self._proc.returncode}")
        self._send()

    def settle(self, name: str, step: int, timeout: float | None = None) -> UploadResult | None:
        """Wait until checkpoint ``name`` (or a newer one) is in the store, or the uploader gave up on
        it; that result, or None after ``timeout`` seconds (default: the drain time) of failed
        tries. Raises as :meth:`check` does."""
        deadline = time.monotonic() + (self.settings.drain_s if timeout is None else timeout)
        while True:
            self.check()
            done = [r for r in self.results
                    if r.step is not None and (r.ok and r.step >= step or r.name == name and r.settled)]
            if done:
                return done[-1]
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            select.select([self._r], [], [], left)

    # -- stopping ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Let the uploader finish the newest checkpoint it was given (within the drain time), then
        stop it; raise :class:`StoreError` if it ended on a fatal error."""
        if self._w is not None:
            os.set_blocking(self._w, True)
            self._send()
            self._proc.stdin.close()  # type: ignore[union-attr]
            self._w = None
        deadline = time.monotonic() + self.settings.drain_s + EXIT_MARGIN_S
        while not self._eof and (left := deadline - time.monotonic()) > 0:
            select.select([self._r], [], [], left)
            self._pump()
        try:
            self._proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
            newest = self._newest
            if newest is not None and any(r.ok and (r.step or 0) >= newest.step for r in self.results):
                newest = None  # it got there: what was left was the journals' last lines
            self._record(EventKind.UPLOAD_FAILED, step=newest.step if newest else None,
                         name=newest.name if newest else None, retry_in_s=None, stopping=True, gave_up=True,
                         error=f"the uploader did not finish within {self.settings.drain_s:g} s of the worker "
                               "stopping; killed (a torn upload commits nothing)")
        self._proc.stdout.close()  # type: ignore[union-attr]
        if self.fatal is not None:
            raise StoreError(self.fatal)

    def _record(self, kind: EventKind, **fields: Any) -> None:
        ids = dict(self._ids, attempt=self.attempt)
        append_record(self._events, {"time": time.time(), "source": ids.pop("source", None), "event": kind.value,
                                     **ids, "uploader_pid": self.pid, **fields})
