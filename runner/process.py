"""The one place that starts worker processes and sends them signals.

A worker runs in its own session and process group, dies with the supervisor (``PR_SET_PDEATHSIG``),
and is reaped with ``wait4`` as soon as its pidfd becomes readable, which also yields its peak RSS
and CPU time. Stopping is SIGTERM, a grace period, then SIGKILL to the whole tree.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

__all__ = ["WorkerProcess", "Usage"]

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if the supervisor dies, so does the worker.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass(frozen=True)
class Usage:
    peak_rss_mb: float
    cpu_s: float


class WorkerProcess:
    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.pidfd = os.pidfd_open(self.pid)
        self.returncode: int | None = None
        self.usage: Usage | None = None
        self.started = time.monotonic()

    @classmethod
    def start(
        cls, cmd: Sequence[str], *, env: Mapping[str, str], log_path: Path, cwd: Path | None = None,
        stdin_pipe: bool = False,
    ) -> WorkerProcess:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                list(cmd), env=dict(env), cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
                start_new_session=True, preexec_fn=_die_with_parent,
            )
        return cls(popen)

    def tell(self, data: bytes) -> bool:
        """Write ``data`` to the worker's stdin (a spare's go message); False if it is gone."""
        if self.popen.stdin is None:
            return False
        try:
            self.popen.stdin.write(data)
            self.popen.stdin.flush()
        except (BrokenPipeError, OSError):
            return False
        return True

    def wait(self, timeout: float, wake_fds: Sequence[int] = ()) -> bool:
        """Wait up to ``timeout`` s for the worker to exit (or a wake fd); True once it has exited."""
        if self.returncode is not None:
            return True
        ready, _, _ = select.select([self.pidfd, *wake_fds], [], [], timeout)
        if self.pidfd in ready:
            self._reap()
        return self.returncode is not None

    def _reap(self) -> None:
        pid, status, ru = os.wait4(self.pid, 0)
        self.returncode = os.waitstatus_to_exitcode(status)
        self.popen.returncode = self.returncode  # keep Popen from reaping again
        self.usage = Usage(peak_rss_mb=ru.ru_maxrss / 1024.0, cpu_s=ru.ru_utime + ru.ru_stime)
        os.close(self.pidfd)
        if self.popen.stdin is not None:
            try:
                self.popen.stdin.close()
            except OSError:
                pass

    def send(self, sig: int) -> None:
        """Signal the worker's whole process group (and any descendant that left it)."""
        if self.returncode is not None:
            return
        targets = set()
        try:
            targets = {p.pid for p in psutil.Process(self.pid).children(recursive=True)}
        except psutil.Error:
            pass
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass
        for pid in targets:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def kill_leftovers(self) -> None:
        """After the worker exited: SIGKILL whatever it left running in its process group."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self) -> None:
        """SIGKILL the tree and reap the worker."""
        self.send(signal.SIGKILL)
        while not self.wait(1.0):
            pass

    def stop(self, grace: float, wake_fds: Sequence[int] = ()) -> bool:
        """SIGTERM, wait up to ``grace`` s for a clean exit, then SIGKILL. True if it exited in time."""
        self.send(signal.SIGTERM)
        self.send(signal.SIGCONT)  # a stopped worker cannot act on SIGTERM
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if self.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
                return True
        self.kill()
        return False
