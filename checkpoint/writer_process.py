"""The checkpoint writer process: how it is started, and its loop of packing, writing and committing.

It is forked from the training process if that has one thread (a worker forked from the supervisor's
fork server does, when it starts), else started with exec (``python -m checkpoint.writer_process``).
A forked one closes every descriptor but its socket, so it holds none of the worker's locks or files.
It dies with the training process (``PR_SET_PDEATHSIG``) and ignores SIGTERM and SIGINT: the worker
decides what happens then. Each request (:mod:`checkpoint.writer_protocol`) names a snapshot in the
shared buffer (:mod:`checkpoint.snapshot_buffer`); the writer packs its files (safetensors), writes and
commits them through :class:`CheckpointStore`, appends the ``checkpoint-saved`` event and answers.
A snapshot holding a NaN or an infinity is refused before anything is written; a write that fails
(a full disk) is answered with its errno and path, and leaves no uncommitted files behind.
"""

from __future__ import annotations

import mmap
import os
import select
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np

from rundir.children import die_with, project_pythonpath
from rundir.events import EventKind
from rundir.journal import append_record

from .snapshot_buffer import Layout, buffer_files
from .state import StateArrays, pack_chunks, scan
from .storage import LocalStorage
from .store import CheckpointStore
from .writer_protocol import MAX_MESSAGE, ReplyKind, Request, pack_reply, unpack_request

__all__ = ["ForkedWriter", "WriterProcess", "main", "serve", "single_threaded", "start_writer"]

#: How the writer is run when started with exec; a forked one shows the same command line.
_COMMAND = [sys.executable, "-m", "checkpoint.writer_process"]
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def single_threaded() -> bool:
    """True if this process has one thread, native ones included: then it may fork safely."""
    try:
        return threading.active_count() == 1 and len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


class ForkedWriter:
    """A writer process forked from this one, with what of Popen's interface is used here.

    Forking skips the interpreter's start and the imports, about 0.4 s of CPU that a new worker
    would otherwise spend beside its training. Only a single-threaded process forks: a fork copies
    only the calling thread, and any lock another thread held would stay locked in the child."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._pidfd = os.pidfd_open(pid)
        self._lock = threading.Lock()  # the copier thread and close() may both wait

    @classmethod
    def start(cls, args: list[str], *, keep_fd: int) -> ForkedWriter:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, which leaves through os._exit
            code = 1
            try:
                code = _forked_main(args, keep_fd)
            except BaseException:  # noqa: BLE001 - reported in the worker's log, as an exec'd writer would
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        return cls(pid)

    def wait(self, timeout: float | None = None) -> int:
        with self._lock:
            if self.returncode is None:
                ready, _, _ = select.select([self._pidfd], [], [], timeout)
                if not ready:
                    raise subprocess.TimeoutExpired(f"checkpoint writer {self.pid}", timeout or 0.0)
                _, status = os.waitpid(self.pid, 0)
                self.returncode = os.waitstatus_to_exitcode(status)
                os.close(self._pidfd)
            return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            os.kill(self.pid, signal.SIGKILL)


def _forked_main(args: list[str], keep_fd: int) -> int:  # pragma: no cover - runs in a forked child
    import gc

    import setproctitle

    gc.freeze()  # objects of the parent's are never collected here: their finalizers would close our files
    setproctitle.setproctitle(shlex.join([*_COMMAND, *args]))
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.closerange(3, keep_fd)  # the parent's lock, journal and sockets are not ours to hold
    os.closerange(keep_fd + 1, 1 << 20)
    return main(args)


#: The writer process as its starter sees it: a Popen, or a :class:`ForkedWriter`.
WriterProcess: TypeAlias = "subprocess.Popen[bytes] | ForkedWriter"


def start_writer(sock: socket.socket, root: Path, *, keep: int, events: Path) -> WriterProcess:
    """Start a writer that serves the other end of ``sock`` (a socket pair's child end, which the
    caller closes afterwards): forked if this process has one thread, else with exec."""
    args = [str(sock.fileno()), str(os.getpid()), str(root), str(keep), str(events)]
    if single_threaded():
        return ForkedWriter.start(args, keep_fd=sock.fileno())
    env = dict(os.environ, PYTHONPATH=project_pythonpath(os.environ.get("PYTHONPATH")))
    # The new process starts with SIGTERM and SIGINT blocked (a signal mask outlives exec) until
    # main() ignores them: one sent to the worker's group while it imports would end it. This
    # thread holds them off for the fork alone; another thread, or this one after, takes them.
    held = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        return subprocess.Popen([*_COMMAND, *args], pass_fds=[sock.fileno()], stdin=subprocess.DEVNULL, env=env)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


# -- in the writer process ----------------------------------------------------------------------------------


def _pause_hook(sock: socket.socket, events: Path, req: Request) -> Callable[[str], None]:
    """What the store calls between a checkpoint's files: nothing, or - when the request asks for a
    pause - record it, answer, and stop here for good (chaos testing's torn checkpoint)."""
    pause: Mapping[str, Any] | None = req.pause

    def between_files(fname: str) -> None:
        if pause is not None:
            append_record(events, dict(pause, time=time.time(), after_file=fname))
            sock.send(pack_reply(ReplyKind.PAUSED, req.step))
            while True:
                time.sleep(3600)

    return between_files


class _Mapped:
    """The buffer as this process has it mapped, and views of it by the layout last sent."""

    def __init__(self) -> None:
        self.mm: mmap.mmap | None = None
        self.layout: Layout = []
        self.files: dict[str, dict[str, np.ndarray]] | None = None  # made when first needed

    def update(self, fds: list[int], layout: Layout | None) -> None:
        for fd in fds:
            self.mm = mmap.mmap(fd, 0, prot=mmap.PROT_READ)  # the old mapping goes with its last view
            os.close(fd)
            self.files = None
        if layout is not None:
            self.layout, self.files = layout, None

    def arrays(self) -> dict[str, dict[str, np.ndarray]]:
        assert self.mm is not None, "a checkpoint arrived without a buffer"
        if self.files is None:
            self.files = buffer_files(self.mm, self.layout)
        return self.files


def serve(sock: socket.socket, root: Path, keep: int, events: Path) -> int:
    """Persist each snapshot the training process sends, until it closes its end."""
    store = CheckpointStore(LocalStorage(root), keep=keep)
    mapped = _Mapped()
    while True:
        msg, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 1)
        if not msg:
            return 0  # the training process is done with us
        t0 = time.monotonic()
        req = unpack_request(msg)
        mapped.update(fds, req.layout)
        store.between_files = _pause_hook(sock, events, req)
        sock.send(_persist(store, mapped.arrays(), req, events, t0))


def _persist(store: CheckpointStore, arrays: dict[str, dict[str, np.ndarray]], req: Request, events: Path,
             t0: float) -> bytes:
    """Check, write and commit one snapshot, record it, and return the answer: saved; refused, its
    arrays not finite (nothing written); or failed, with the errno and path of an ``OSError`` (a
    full disk) so that the training process can name them."""
    bad, digests = scan(arrays, req.digests)  # one read of the state for both
    if bad is not None:
        return pack_reply(ReplyKind.NON_FINITE, req.step, text=bad)
    try:
        chunks, meta = pack_chunks(StateArrays(arrays, {**req.meta, **digests}))
        name = store.save(req.step, chunks, meta, durable=req.durable)
        took = time.monotonic() - t0
        append_record(events, dict(req.event, time=time.time(), event=EventKind.CHECKPOINT_SAVED.value,
                                   step=req.step, name=name, persist_s=round(took, 6), writer_pid=os.getpid()))
    except OSError as exc:
        if exc.errno and exc.filename:
            return pack_reply(ReplyKind.FAILED, req.step, text=os.fsdecode(exc.filename), err=exc.errno)
        return pack_reply(ReplyKind.FAILED, req.step, text=f"checkpoint after step {req.step}: {exc}")
    except Exception as exc:
        return pack_reply(ReplyKind.FAILED, req.step, text=f"checkpoint after step {req.step}: {exc}")
    return pack_reply(ReplyKind.SAVED, req.step, took, name)


def main(argv: list[str]) -> int:
    """``SOCKET_FD PARENT_PID ROOT KEEP EVENTS``: serve the socket, dying with the parent."""
    fd, parent, root, keep, events = argv
    die_with(int(parent), exit_code=0)
    # SIGTERM and Ctrl-C reach the worker's whole process group: the worker decides what happens (it
    # waits for this process, then checkpoints); this process ends with it either way.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # blocked since exec, if started that way
    sock = socket.socket(fileno=int(fd))
    return serve(sock, Path(root), int(keep), Path(events))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
