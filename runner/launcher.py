"""How workers are started: a :class:`Launcher` gives the supervisor a :class:`Worker` handle, and
the supervisor never asks how the process came to be.

Two launchers: :class:`ExecLauncher` starts each worker with exec; :class:`ForkLauncher` has the
run's fork server (:mod:`runner.forkserver`) fork it, and falls back to exec, once and for the rest
of the run, if the server fails. :func:`launcher_for` picks one from a worker's command, as the
supervisor always has. A fake stands in for either in the supervisor's unit tests.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from rundir.events import EventKind
from rundir.names import worker_env

from .forkserver import ForkServer, ForkServerError, ForkTarget, forkable
from .process import Usage, Vitals, WorkerProcess

__all__ = ["Worker", "Launcher", "Record", "ExecLauncher", "ForkLauncher", "launcher_for"]


class Worker(Protocol):
    """A started worker: the one handle through which the supervisor waits for it, talks to it and
    signals it (:class:`runner.process.WorkerProcess`, or a test's fake)."""

    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | None: ...  # once it has exited; negative: killed by that signal
    @property
    def usage(self) -> Usage | None: ...  # peak RSS and CPU time, once it has exited
    @property
    def forked(self) -> bool: ...  # started by a fork server, not exec

    def wait(self, timeout: float, wake_fds: Sequence[int] = ()) -> bool:
        """Up to ``timeout`` s, less if a wake fd becomes readable; True once it has exited."""
        ...

    def poll(self) -> bool:
        """True if it has exited, or can only die (then it is made to, and reaped)."""
        ...

    def tell(self, data: bytes) -> bool:
        """Write to its stdin pipe; False if it has none or is gone."""
        ...

    def vitals(self) -> Vitals | None:
        """Its CPU time and process state now; None if they cannot be read (a fake may not say)."""
        ...

    def send(self, sig: int) -> None: ...

    def stop(self, grace: float) -> bool:
        """SIGTERM, up to ``grace`` s, then SIGKILL; True if it exited in time."""
        ...

    def kill(self) -> None: ...  # SIGKILL and reap

    def kill_leftovers(self) -> None: ...  # after it exited: whatever it left running


class Launcher(Protocol):
    """Starts the run's workers. ``open`` and ``close`` bracket the run (the supervisor holds the run
    directory's lock in between); ``start`` may be called for the attempts and for warm spares."""

    def open(self) -> None: ...
    def start(self, env: Mapping[str, str], log: Path, *, stdin_pipe: bool = False) -> Worker: ...
    def close(self) -> None: ...


class Record(Protocol):
    """Append one of the supervisor's events to the run's ``events.jsonl``."""

    def __call__(self, kind: EventKind, /, **fields: Any) -> None: ...


class ExecLauncher:
    """Each worker is ``cmd`` started with exec."""

    def __init__(self, cmd: Sequence[str]) -> None:
        self.cmd = tuple(cmd)

    def open(self) -> None:
        pass

    def start(self, env: Mapping[str, str], log: Path, *, stdin_pipe: bool = False) -> Worker:
        return WorkerProcess.start(self.cmd, env=env, log_path=log, stdin_pipe=stdin_pipe)

    def close(self) -> None:
        pass


class ForkLauncher:
    """Workers forked by the run's fork server, started on first use unless one is given.

    A server that fails to fork a worker (its imports failed, it refused, it is gone, or it did not
    answer within ``timeout``) costs no attempt: it is closed, ``fork-server-failed`` is recorded,
    and this worker and all later ones start with exec."""

    def __init__(self, cmd: Sequence[str], target: ForkTarget, preload: Sequence[str], *, run_dir: Path,
                 env: Mapping[str, str], timeout: float, record: Record, note: Callable[[str], None],
                 server: ForkServer | None = None) -> None:
        self.target, self.preload, self.run_dir, self.env = target, tuple(preload), Path(run_dir), dict(env)
        self.timeout = timeout  # a server still importing is given the time a worker's start-up is
        self.title = shlex.join(cmd)
        self.exec = ExecLauncher(cmd)
        self.server = server
        self.failed = False
        self._record, self._note = record, note

    def open(self) -> None:
        if self.server is not None:
            self._record(EventKind.FORK_SERVER_STARTED, pid=self.server.pid, preload=list(self.preload))

    def _server(self) -> ForkServer:
        if self.server is None:
            self.server = ForkServer.for_run(self.run_dir, self.preload, worker_env(self.env))
            self._record(EventKind.FORK_SERVER_STARTED, pid=self.server.pid, preload=list(self.preload))
        return self.server

    def start(self, env: Mapping[str, str], log: Path, *, stdin_pipe: bool = False) -> Worker:
        if self.failed:
            return self.exec.start(env, log, stdin_pipe=stdin_pipe)
        server = self._server()
        ready = server.import_s is not None
        try:
            proc = WorkerProcess.fork(server, self.target, env=env, log_path=log, stdin_pipe=stdin_pipe,
                                      title=self.title, timeout=self.timeout)
        except ForkServerError as exc:
            self._record(EventKind.FORK_SERVER_FAILED, pid=server.pid, error=str(exc))
            self._note(f"{exc}; starting workers with exec")
            server.close()
            self.failed = True
            return self.exec.start(env, log, stdin_pipe=stdin_pipe)
        if not ready and server.import_s is not None:
            self._record(EventKind.FORK_SERVER_READY, pid=server.pid, import_s=round(server.import_s, 3))
        return proc

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


def launcher_for(cmd: Sequence[str], preload: Sequence[str], *, run_dir: Path, env: Mapping[str, str],
                 timeout: float, record: Record, note: Callable[[str], None],
                 server: ForkServer | None = None) -> Launcher:
    """Fork from a server that imported ``preload`` where ``cmd`` is this interpreter running Python
    (see :func:`~runner.forkserver.forkable`); exec otherwise, or when nothing is to be preloaded.
    ``server``: one the caller started already; ignored where workers start with exec."""
    target = forkable(cmd) if preload else None
    if target is None:
        return ExecLauncher(cmd)
    return ForkLauncher(cmd, target, preload, run_dir=run_dir, env=env, timeout=timeout, record=record, note=note,
                        server=server)
