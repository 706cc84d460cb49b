"""The one place that starts worker processes and sends them signals.

A worker runs in its own session and process group and dies with the supervisor
(``PR_SET_PDEATHSIG``). One started with exec is reaped with ``wait4`` as soon as its pidfd becomes
readable, which also yields its peak RSS and CPU time; one forked by the fork server
(:mod:`runner.forkserver`) is reaped there, and the server reports the same. Stopping is SIGTERM,
a grace period, then SIGKILL to the whole tree.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import psutil

from rundir.children import die_with

from .forkserver import ForkServer, ForkTarget

__all__ = ["WorkerProcess", "Usage", "Vitals", "read_vitals"]


@dataclass(frozen=True)
class Usage:
    peak_rss_mb: float
    cpu_s: float


@dataclass(frozen=True)
class Vitals:
    """A live worker's CPU time so far (user + system) and its process state, in psutil's names."""

    cpu_s: float
    state: str


def read_vitals(pid: int) -> Vitals | None:
    """``pid``'s vitals, or None if they cannot be read (it is gone). Two reads of ``/proc``: cheap
    enough for every tick."""
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            t = p.cpu_times()
            return Vitals(t.user + t.system, p.status())
    except (psutil.Error, OSError):
        return None


class WorkerProcess:
    """A worker started here with exec (:meth:`start`) or forked by the run's fork server
    (:meth:`fork`). An exec'd worker is reaped here; a forked one by the server, which reports how
    it exited."""

    def __init__(self, pid: int, *, stdin: int | None = None, popen: subprocess.Popen[bytes] | None = None,
                 server: ForkServer | None = None) -> None:
        self.pid = pid
        self.popen = popen
        self.server = server
        self._stdin = stdin  # the write end of the worker's stdin, if it has a pipe
        try:
            self.pidfd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:  # a forked worker already exited and was reaped by the server
            self.pidfd = None
        self.returncode: int | None = None
        self.usage: Usage | None = None
        self.started = time.monotonic()

    @property
    def forked(self) -> bool:
        return self.server is not None

    @classmethod
    def start(
        cls, cmd: Sequence[str], *, env: Mapping[str, str], log_path: Path, cwd: Path | None = None,
        stdin_pipe: bool = False,
    ) -> WorkerProcess:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        r, w = os.pipe2(os.O_CLOEXEC) if stdin_pipe else (subprocess.DEVNULL, None)
        try:
            with open(log_path, "ab") as log:
                popen = subprocess.Popen(
                    list(cmd), env=dict(env), cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=r,
                    # Runs in the child between fork and exec: if the supervisor dies, so does the worker.
                    start_new_session=True, preexec_fn=partial(die_with, os.getpid()),
                )
        except BaseException:
            if w is not None:
                os.close(w)
            raise
        finally:
            if w is not None:
                os.close(r)
        return cls(popen.pid, stdin=w, popen=popen)

    @classmethod
    def fork(cls, server: ForkServer, target: ForkTarget, *, env: Mapping[str, str], log_path: Path,
             stdin_pipe: bool = False, title: str = "", timeout: float = 300.0) -> WorkerProcess:
        """Have ``server`` fork the worker; raises :class:`~runner.forkserver.ForkServerError` if it
        did not, or did not answer within ``timeout`` seconds (its imports included)."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if stdin_pipe:
            r, w = os.pipe2(os.O_CLOEXEC)
        else:
            r, w = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC), None
        try:
            with open(log_path, "ab") as log:
                pid = server.spawn(target, env, stdin=r, log=log.fileno(), title=title, timeout=timeout)
        except BaseException:
            if w is not None:
                os.close(w)
            raise
        finally:
            os.close(r)
        return cls(pid, stdin=w, server=server)

    def tell(self, data: bytes) -> bool:
        """Write ``data`` to the worker's stdin (a spare's go message); False if it is gone."""
        if self._stdin is None:
            return False
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._stdin, view):]
        except OSError:
            return False
        return True

    def wait(self, timeout: float, wake_fds: Sequence[int] = ()) -> bool:
        """Wait up to ``timeout`` s for the worker to exit (or a wake fd); True once it has exited."""
        if self.returncode is not None:
            return True
        if self.server is not None and self.server.alive:
            return self._wait_forked(self.server, timeout, wake_fds)
        fds = [*wake_fds] if self.pidfd is None else [self.pidfd, *wake_fds]
        ready, _, _ = select.select(fds, [], [], timeout)
        if self.pidfd is None or self.pidfd in ready:
            self._reap()
        return self.returncode is not None

    def poll(self) -> bool:
        """True if the worker has exited, or can only die: one whose fork server is gone is dying with
        it (``PR_SET_PDEATHSIG``), so it is killed and reaped here rather than left to finish dying."""
        if self.server is not None and not self.server.alive:
            self.kill()
        return self.wait(0)

    def _wait_forked(self, server: ForkServer, timeout: float, wake_fds: Sequence[int]) -> bool:
        deadline = time.monotonic() + timeout
        while server.alive:
            server.pump()
            done = server.exit_of(self.pid)
            if done is not None:
                self._exited(done.returncode, Usage(peak_rss_mb=done.peak_rss_mb, cpu_s=done.cpu_s))
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready, _, _ = select.select([server.fileno(), *wake_fds], [], [], left)
            if ready and server.fileno() not in ready:
                return False
        return self.wait(max(0.0, deadline - time.monotonic()), wake_fds)  # the server is gone

    def _reap(self) -> None:
        if self.server is None:
            _, status, ru = os.wait4(self.pid, 0)
            self._exited(os.waitstatus_to_exitcode(status), Usage(ru.ru_maxrss / 1024.0, ru.ru_utime + ru.ru_stime))
            return
        # Its server died, and took it along (PR_SET_PDEATHSIG). As a subreaper we may have
        # inherited it: then its status is ours to read.
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = 0, 0
        self._exited(os.waitstatus_to_exitcode(status) if pid else -signal.SIGKILL, Usage(0.0, 0.0))

    def _exited(self, returncode: int, usage: Usage) -> None:
        self.returncode = returncode
        self.usage = usage
        if self.popen is not None:
            self.popen.returncode = returncode  # keep Popen from reaping again
        for fd in (self.pidfd, self._stdin):
            if fd is not None:
                os.close(fd)
        self.pidfd = self._stdin = None

    def vitals(self) -> Vitals | None:
        """Its CPU time and state now; None once it has exited or where they cannot be read."""
        return None if self.returncode is not None else read_vitals(self.pid)

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
            # No such group yet: a worker just forked has not called setsid(). The signal must not be lost.
            targets.add(self.pid)
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
