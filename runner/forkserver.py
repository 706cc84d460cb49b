"""Workers forked from a process that imported the job's modules once.

Starting a worker with ``exec`` pays for the interpreter and the framework's import: about 2 s of
CPU for Paddle on a 2-core machine. A standby spare paying it while the worker trains slows the
worker's steps for those seconds. So the supervisor starts this server once per run; it imports
the modules it is told to (``model.train`` for the built-in job), then forks each worker on request,
and a new spare costs a fork and the job's own set-up.

A forked worker is what ``python -m MODULE ARGS`` or ``python SCRIPT ARGS`` would have been: its own
session, the environment, stdin and log it was given, ``sys.argv``, and ``__main__`` run by
:mod:`runpy`. It dies with the server (``PR_SET_PDEATHSIG``), which dies with the supervisor. The
server forks from its only Python thread and runs no framework code after the imports, so a child
starts single-threaded, with no native thread pool made yet.

The protocol, over a ``SOCK_SEQPACKET`` socket pair, pickled tuples:

- supervisor -> server: ``(kind, target, args, env, title)`` (see :class:`ForkTarget`; the title
  is the worker's command line, which ``ps`` then shows) with the worker's stdin and log attached.
  The socket's end stops the server, and with it any worker left.
- server -> supervisor: ``("ready", seconds)`` once the modules are imported, or ``("failed",
  message)``; per request ``("started", pid)`` or ``("refused", message)``; and ``("exited", pid,
  returncode, cpu_s, peak_rss_mb)`` when a worker it forked has exited and been reaped.
"""

from __future__ import annotations

import gc
import importlib
import os
import pickle
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import setproctitle

from rundir.children import die_with, project_pythonpath

__all__ = ["ForkTarget", "forkable", "environment", "open_devices", "DEVICE_FILES", "ForkServer", "ForkServerError",
           "Exit"]

_MAX_MESSAGE = 1 << 20


class ForkServerError(RuntimeError):
    """The fork server could not start a worker: it failed its imports, refused, or is gone."""


@dataclass(frozen=True)
class ForkTarget:
    """What a worker command runs: ``python -m target args`` (kind "module") or ``python target
    args`` (kind "path")."""

    kind: str
    target: str
    args: tuple[str, ...]


@dataclass(frozen=True)
class Exit:
    returncode: int  # negative: killed by that signal
    cpu_s: float
    peak_rss_mb: float


def _same_program(a: str, b: str) -> bool:
    # By path, not by the file it resolves to: a virtual environment's python is a link to its base
    # interpreter, with other packages.
    found = shutil.which(a)
    return found is not None and os.path.abspath(found) == os.path.abspath(b)


def forkable(cmd: Sequence[str], python: str = sys.executable) -> ForkTarget | None:
    """The target of ``cmd`` if a fork of a ``python`` process can run it: ``python -m M ...`` or
    ``python FILE ...`` with no interpreter options, ``python`` found at the same path. None for
    anything else, which is started with exec."""
    if len(cmd) < 2 or not _same_program(cmd[0], python):
        return None
    if cmd[1] == "-m":
        return ForkTarget("module", cmd[2], tuple(cmd[3:])) if len(cmd) >= 3 and cmd[2] else None
    if cmd[1].startswith("-"):
        return None
    return ForkTarget("path", cmd[1], tuple(cmd[2:]))


def _send(sock: socket.socket, msg: tuple[Any, ...]) -> None:
    sock.send(pickle.dumps(msg))


# -- the server ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Launch:
    """In a forked child: what to become."""

    target: ForkTarget
    env: dict[str, str]
    title: str
    stdin: int
    log: int
    server: int


#: Device files a GPU or accelerator driver keeps open once initialized. A fork of a process that
#: initialized one cannot use it (CUDA and ROCm are not fork-safe), and Paddle's GPU builds
#: initialize their devices on import.
DEVICE_FILES = ("/dev/nvidia", "/dev/dri/", "/dev/kfd", "/dev/accel", "/dev/davinci")


def open_devices(paths: Iterable[str]) -> list[str]:
    """Which of ``paths`` (what this process's descriptors point at) are accelerator devices."""
    return sorted({p for p in paths if p.startswith(DEVICE_FILES)})


def _open_files() -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return out


def _import(preload: Sequence[str], sock: socket.socket) -> dict[str, str | None] | None:
    """Import the modules; what they changed in the environment (None: unset), or None if one failed
    or left a device open."""
    t0 = time.monotonic()
    before = dict(os.environ)
    for name in preload:
        try:
            importlib.import_module(name)
        except BaseException as exc:  # noqa: BLE001 - reported; the supervisor then starts workers with exec
            _send(sock, ("failed", f"importing {name}: {type(exc).__name__}: {exc}"))
            return None
    devices = open_devices(_open_files())
    if devices:
        _send(sock, ("failed", f"importing {', '.join(preload)} opened {', '.join(devices)}: a forked worker "
                               "could not use the device"))
        return None
    # Objects made so far are never collected: a child's collections then neither walk them nor
    # touch (and so copy) the pages they live on.
    gc.freeze()
    _send(sock, ("ready", time.monotonic() - t0))
    changed: dict[str, str | None] = {k: v for k, v in os.environ.items() if before.get(k) != v}
    changed.update((k, None) for k in before.keys() - os.environ.keys())
    return changed


def environment(given: Mapping[str, str], changed: Mapping[str, str | None]) -> dict[str, str]:
    """A forked worker's environment: the one it was given, with what the preloaded modules changed
    on import (Paddle sets ``OMP_NUM_THREADS``, read later by its OpenMP runtime) as an exec'd
    worker's own imports would have changed it."""
    env = dict(given)
    for k, v in changed.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def _serve(sock: socket.socket, preload: Sequence[str]) -> _Launch | int:
    """Fork a worker per request until the socket ends; returns the child's launch in a child."""
    changed = _import(preload, sock)
    if changed is None:
        return 1
    me = os.getpid()
    children: dict[int, int] = {}  # pidfd -> pid
    while True:
        ready, _, _ = select.select([sock.fileno(), *children], [], [])
        for fd in ready:
            if fd != sock.fileno():
                pid = children.pop(fd)
                os.close(fd)
                _, status, ru = os.wait4(pid, 0)
                _send(sock, ("exited", pid, os.waitstatus_to_exitcode(status), ru.ru_utime + ru.ru_stime,
                             ru.ru_maxrss / 1024.0))
                continue
            msg, fds, _, _ = socket.recv_fds(sock, _MAX_MESSAGE, 2)
            if not msg:
                return 0  # the supervisor is done; workers still here die with this process
            kind, target, args, env, title = pickle.loads(msg)  # from the supervisor, over a private socket pair
            if len(fds) != 2:
                for f in fds:
                    os.close(f)
                _send(sock, ("refused", f"expected stdin and log descriptors, got {len(fds)}"))
                continue
            sys.stdout.flush()
            sys.stderr.flush()
            try:
                pid = os.fork()
            except OSError as exc:
                pid = -1
                _send(sock, ("refused", f"fork: {exc.strerror}"))
            if pid == 0:
                sock.close()
                for f in children:
                    os.close(f)
                return _Launch(ForkTarget(kind, target, tuple(args)), environment(env, changed), title, fds[0],
                               fds[1], me)
            for f in fds:
                os.close(f)
            if pid > 0:
                children[os.pidfd_open(pid)] = pid
                _send(sock, ("started", pid))


def _become(launch: _Launch) -> None:
    """In the child: take the worker's session, descriptors, environment and arguments."""
    os.setsid()
    die_with(launch.server)
    setproctitle.setproctitle(launch.title)
    os.dup2(launch.stdin, 0)
    os.dup2(launch.log, 1)
    os.dup2(launch.log, 2)
    for fd in {launch.stdin, launch.log} - {0, 1, 2}:
        os.close(fd)
    os.environ.clear()
    os.environ.update(launch.env)
    t = launch.target
    sys.argv = [t.target, *t.args]
    if t.kind == "path":
        sys.path[0] = os.path.dirname(os.path.abspath(t.target))


def _run(launch: _Launch) -> int:
    import runpy

    _become(launch)
    t = launch.target
    if t.kind == "module":
        runpy.run_module(t.target, run_name="__main__", alter_sys=True)
    else:
        runpy.run_path(t.target, run_name="__main__")
    return 0


def main(argv: Sequence[str]) -> int:
    """``python -m runner.forkserver FD PARENT LABEL MODULE...``: serve the supervisor ``PARENT`` on
    ``FD``; ``LABEL`` (the run directory) goes into the process title."""
    fd, parent, label, *preload = argv
    die_with(int(parent))
    setproctitle.setproctitle(f"runner fork server: {label}")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides what a Ctrl-C does
    with warnings.catch_warnings():  # a child leaves with the filters as they were
        warnings.filterwarnings("ignore", message=".*ccache.*")
        result = _serve(socket.socket(fileno=int(fd)), preload)
    if isinstance(result, int):
        # Nothing here needs finalizing, and tearing down an interpreter that imported Paddle takes
        # about 0.4 s, which the supervisor would wait for.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(result)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as in an exec'd worker: not the preloaded Paddle's abort
    return _run(result)


# -- the supervisor's side ----------------------------------------------------------------------------


class ForkServer:
    """The supervisor's handle on its fork server: start it, have it fork workers, hear of their exits.

    Single-threaded by design: the supervisor's monitor loop pumps messages, either when it selects
    on :meth:`fileno` or while :meth:`spawn` waits for its answer."""

    def __init__(self, preload: Sequence[str], *, env: Mapping[str, str], log_path: Path, label: str = "",
                 python: str = sys.executable) -> None:
        self.preload = tuple(preload)
        self._sock, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock.setblocking(False)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(env, PYTHONPATH=project_pythonpath(env.get("PYTHONPATH")))
        with child, open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [python, "-m", "runner.forkserver", str(child.fileno()), str(os.getpid()), label, *self.preload],
                pass_fds=[child.fileno()], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, start_new_session=True, preexec_fn=partial(die_with, os.getpid()),
            )
        self.pid = self.proc.pid
        self.import_s: float | None = None  # once ready
        self.error: str | None = None  # why it is of no more use, once it is not
        self._exits: dict[int, Exit] = {}
        self._started: list[tuple[str, Any]] = []

    @classmethod
    def for_run(cls, run_dir: Path, preload: Sequence[str], env: Mapping[str, str]) -> ForkServer:
        """The fork server of the run in ``run_dir``, logging to its ``logs/``."""
        return cls(preload, env=env, label=str(run_dir), log_path=run_dir / "logs" / f"forkserver-{os.getpid()}.log")

    @property
    def alive(self) -> bool:
        return self.error is None

    def fileno(self) -> int:
        return self._sock.fileno()

    def pump(self) -> None:
        """Take every message waiting, without blocking."""
        while self.alive:
            try:
                msg = self._sock.recv(_MAX_MESSAGE)
            except BlockingIOError:
                return
            except ConnectionResetError:
                # It exited with our request unread; the kernel reports that before the messages it
                # sent, which the next reads still return.
                continue
            except OSError as exc:
                self.error = f"fork server: {exc.strerror}"
                return
            if not msg:
                self.error = "the fork server exited"
                return
            kind, *rest = pickle.loads(msg)
            if kind == "exited":
                pid, rc, cpu, rss = rest
                self._exits[pid] = Exit(rc, cpu, rss)
            elif kind == "ready":
                self.import_s = rest[0]
            elif kind == "failed":
                self.error = rest[0]
            else:
                self._started.append((kind, rest[0]))

    def spawn(self, target: ForkTarget, env: Mapping[str, str], *, stdin: int, log: int, title: str = "",
              timeout: float = 300.0) -> int:
        """Have the server fork a worker running ``target``; its pid. Waits for the server's imports
        on the first call. Raises :class:`ForkServerError` if no worker was started."""
        if not self.alive:
            raise ForkServerError(self.error or "the fork server is gone")
        if not title:
            title = shlex.join(["python", *(["-m"] if target.kind == "module" else []), target.target, *target.args])
        req = pickle.dumps((target.kind, target.target, list(target.args), dict(env), title))
        try:
            socket.send_fds(self._sock, [req], [stdin, log])
        except OSError as exc:
            self.pump()  # it may have said why it is gone
            self.error = self.error or f"fork server: {exc.strerror}"
            raise ForkServerError(self.error) from None
        deadline = time.monotonic() + timeout
        while not self._started:
            left = deadline - time.monotonic()
            if not self.alive or left <= 0:
                self.error = self.error or f"the fork server did not answer in {timeout:g} s"
                raise ForkServerError(self.error)
            select.select([self._sock], [], [], left)
            self.pump()
        kind, value = self._started.pop(0)
        if kind != "started":
            raise ForkServerError(f"the fork server refused: {value}")
        return int(value)

    def exit_of(self, pid: int) -> Exit | None:
        """How worker ``pid`` exited, once the server has reaped it."""
        return self._exits.pop(pid, None)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the server; workers it still has are killed with it."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self.error = self.error or "closed"
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
