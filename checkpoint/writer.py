"""Checkpoints persisted by a process of their own, so that training never waits for them.

At a step boundary the training process copies its arrays into a shared-memory buffer (a few
``np.concatenate`` calls, see :class:`_CopyPlan`); a copier thread sends this process a short
message and waits for the answer, blocked without the GIL. The writer packs the files
(safetensors), hashes, writes and commits them through :class:`CheckpointStore` - the same
crash-safe format as a synchronous save, fsynced when the message asks for a durable one - appends
the ``checkpoint-saved`` event and answers. None of that Python runs on the training process's
interpreter, so it never holds the training thread's GIL.

Given a deferred snapshot (a callable), the copier thread also makes and copies the arrays, once
released (:meth:`CheckpointWriter.release`: the job does that as its backward pass starts, which
holds no GIL): the training thread goes on meanwhile, and waits in
:meth:`CheckpointWriter.wait_copied` only if it reaches the optimizer step before the copy is done.

Safety:

- The buffer is written only while no persist is in flight: :meth:`CheckpointWriter.submit` refuses
  to start while the previous one is unacknowledged, so one checkpoint never starts before the last
  one finished.
- The writer is forked from the training process if that has one thread (a worker forked from the
  supervisor's fork server does, when it starts), else started with exec; a forked one closes
  every descriptor but its socket, so it holds none of the worker's locks or files.
- The writer dies with the training process (``PR_SET_PDEATHSIG``). A SIGKILLed worker leaves at
  most a torn checkpoint: no manifest, so not a checkpoint. When the worker exits normally it waits
  for the writer to finish first.

The protocol, over a ``SOCK_SEQPACKET`` socket pair, one message each way per checkpoint:

- training process -> writer: a pickled ``{"step", "layout", "meta", "digests", "event", "pause",
  "durable"}``, with a memfd attached when the buffer is new. ``layout`` (``[[file, name, dtype,
  shape, offset], ...]``) is sent when it changes and is None otherwise.
- writer -> training process: a kind (saved, paused or failed), the step and the seconds the
  persist took, packed; then the checkpoint's name, or for a failure the error message.
"""

from __future__ import annotations

import mmap
import os
import pickle
import queue
import select
import shlex
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from rundir.children import die_with, project_pythonpath
from rundir.journal import append_record

from .state import StateArrays, pack_chunks
from .storage import LocalStorage
from .store import CheckpointStore

__all__ = ["CheckpointWriter", "Saved", "WriterError"]

_ALIGN = 64
_MAX_MESSAGE = 1 << 20


class WriterError(RuntimeError):
    """The writer process failed a checkpoint, or is gone; the message says why."""


class Saved(NamedTuple):
    step: int
    name: str
    seconds: float  # from the message's arrival to the commit, in the writer
    paused: bool = False  # the writer stopped between the files as asked, and stays stopped


# The writer's answer: saved, paused (the name is empty), or failed (then a UTF-8 message follows).
_REPLY = struct.Struct("<Bqd")
_SAVED, _PAUSED, _FAILED = 0, 1, 2


def _reply(kind: int, step: int, seconds: float = 0.0, text: str = "") -> bytes:
    return _REPLY.pack(kind, step, seconds) + text.encode("utf-8")


# -- the training process's side ---------------------------------------------------------------------


_Key = tuple[tuple[str, str, np.dtype[Any], tuple[int, ...]], ...]


def _nbytes(dtype: np.dtype[Any], shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _views(mm: mmap.mmap, layout: list[list[Any]]) -> list[np.ndarray]:
    """Views of the buffer's arrays, in the layout's order: ``[file, name, dtype, shape, offset]``."""
    buf = np.frombuffer(mm, dtype=np.uint8)
    return [buf[off : off + _nbytes(np.dtype(dt), tuple(shape))].view(dt).reshape(shape)
            for _, _, dt, shape, off in layout]


def _static(a: np.ndarray) -> bool:
    """A read-only array that owns its memory cannot change (unless made writable again, which
    :meth:`_CopyPlan.copy` checks each time): once in the buffer, it need not be copied again."""
    return not a.flags.writeable and a.base is None


class _CopyPlan:
    """How one list of arrays goes into the buffer, made once and reused while the same array objects
    come back (the live views of training tensors do, every step): each run of arrays that lie back
    to back in the buffer is one ``np.concatenate`` into it, so the copy costs a few calls, not one
    per tensor; static arrays are copied only when they are new; the rest one by one."""

    def __init__(self, names: list[tuple[str, str]], arrays: list[np.ndarray], dsts: list[np.ndarray],
                 offsets: list[int], flat: np.ndarray) -> None:
        self.names = names
        static = [i for i, a in enumerate(arrays) if _static(a)]
        self.static = [(i, dsts[i]) for i in static]
        self.static_key = [(arrays[i].dtype, arrays[i].shape) for i in static]
        self.copied: list[np.ndarray | None] = [None] * len(static)
        self.live = [i for i, a in enumerate(arrays) if not _static(a)]
        self.held = [arrays[i] for i in self.live]  # held, so that their ids stay theirs
        self.live_key = [(id(a), a.shape) for a in self.held]
        self.runs: list[tuple[list[np.ndarray], np.ndarray]] = []
        self.singles: list[tuple[np.ndarray, np.ndarray]] = []
        run: list[np.ndarray] = []
        start = end = 0
        for i in sorted(self.live, key=offsets.__getitem__):
            a = arrays[i]
            if not a.flags.c_contiguous:
                self.singles.append((dsts[i], a))
                continue
            if run and offsets[i] != _aligned(end):
                self.runs.append((run, flat[start:end]))
                run = []
            if not run:
                start = end = offsets[i]
            if offsets[i] > end:
                run.append(np.zeros(offsets[i] - end, dtype=np.uint8))
            run.append(a.reshape(-1).view(np.uint8))
            end = offsets[i] + a.nbytes
        if run:
            self.runs.append((run, flat[start:end]))

    def fits(self, names: list[tuple[str, str]], arrays: list[np.ndarray]) -> bool:
        return (names == self.names and [(id(arrays[i]), arrays[i].shape) for i in self.live] == self.live_key
                and [(arrays[i].dtype, arrays[i].shape) for i, _ in self.static] == self.static_key)

    def copy(self, arrays: list[np.ndarray]) -> None:
        for srcs, dst in self.runs:
            np.concatenate(srcs, out=dst)
        for dst, src in self.singles:
            np.copyto(dst, src, casting="no")
        for k, (i, dst) in enumerate(self.static):
            src = arrays[i]
            if src is not self.copied[k] or not _static(src):
                np.copyto(dst, src, casting="no")
                self.copied[k] = src if _static(src) else None


#: What submit() hands the copier thread: (step, state or a callable making it, event fields, stall,
#: pause event, durable).
_Job = tuple[int, Any, Mapping[str, Any], float, Any, bool]


class CheckpointWriter:
    """Starts the writer process and hands it one snapshot at a time through shared memory.

    :meth:`submit` copies the arrays into the buffer on the caller's thread - or, for a deferred
    snapshot, leaves that to the copier thread - and returns; the copier thread sends the message and
    takes the writer's answer, which :meth:`wait` hands back. One checkpoint is in flight at a time,
    so the buffer and the plan are only ever touched by one thread at once."""

    def __init__(self, root: Path, *, keep: int, events: Path) -> None:
        self._sock, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        args = [str(child.fileno()), str(os.getpid()), str(root), str(keep), str(events)]
        with child:
            self._proc: subprocess.Popen[bytes] | _ForkedWriter
            if _single_threaded():
                self._proc = _ForkedWriter.start(args, keep_fd=child.fileno())
            else:
                env = dict(os.environ, PYTHONPATH=project_pythonpath(os.environ.get("PYTHONPATH")))
                self._proc = subprocess.Popen([sys.executable, "-m", "checkpoint.writer", *args],
                                              pass_fds=[child.fileno()], stdin=subprocess.DEVNULL, env=env)
        self._mm: mmap.mmap | None = None
        self._fd_unsent: int | None = None  # a new buffer the writer has not been given yet
        self._key: _Key = ()
        self._layout: list[list[Any]] = []  # of the arrays last copied
        self._plan: _CopyPlan | None = None
        self._layout_unsent = True  # the writer has not been told the layout of the buffer yet
        self._in_flight: int | None = None
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        # Plain locks used as gates (their C calls cost far less than an Event's Python): each is held
        # from submit() until what it stands for has happened, then released by the copier thread, and
        # waited for by acquiring and releasing it at once.
        self._copying = threading.Lock()  # held: a deferred copy is under way
        self._held: _Job | None = None  # a job waiting for release()
        self._done = threading.Lock()  # held: the writer has not answered for the checkpoint in flight
        self._result: Saved | BaseException | None = None
        self._thread: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def busy(self) -> bool:
        return self._in_flight is not None

    def _buffer(self, size: int) -> mmap.mmap:
        """The buffer, made at least ``size`` bytes."""
        if self._mm is not None and len(self._mm) >= size:
            return self._mm
        size = max(size + size // 2, mmap.PAGESIZE)
        fd = os.memfd_create("checkpoint-snapshot", os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        self._release()
        self._mm = mmap.mmap(fd, size)
        if self._fd_unsent is not None:
            os.close(self._fd_unsent)
        self._fd_unsent = fd
        return self._mm

    def submit(self, step: int, state: StateArrays | Callable[[], StateArrays], *, event: Mapping[str, Any],
               started: float, pause: Mapping[str, Any] | None = None, durable: bool = True,
               held: bool = False) -> float:
        """Have ``state`` persisted; returns at once, with the stall: seconds since ``started``
        (``time.monotonic()``).

        ``state``: the arrays (its ``late`` part included) are copied into the buffer now, on this
        thread. A callable making them: it runs on the writer's copier thread, which copies its
        arrays while the caller goes on; the caller must not change them before :meth:`wait_copied`
        returns. ``event``: the fields of the ``checkpoint-saved`` record the writer appends.
        ``pause``: an event to append before stopping between the files for good (chaos testing's
        torn checkpoint). ``durable``: see :meth:`CheckpointStore.save`. ``held``: a callable waits
        for :meth:`release` (or :meth:`wait_copied`) before it runs."""
        if self._in_flight is not None:
            raise RuntimeError("a checkpoint is still being written; call wait() first")
        deferred = callable(state)
        if not deferred:
            state = self._copy(state)  # type: ignore[arg-type]
        stall = time.monotonic() - started
        self._in_flight = step
        self._done.acquire()
        if deferred:
            self._copying.acquire()
        if self._thread is None:
            self._thread = threading.Thread(target=self._copy_loop, name="checkpoint-copier", daemon=True)
            self._thread.start()
        job = (step, state, event, stall, pause, durable)  # the event's fields are merged on the copier thread
        if deferred and held:
            self._held = job  # not even queued: the copier thread stays asleep until release()
        else:
            self._jobs.put(job)
        return stall

    def _copy(self, state: StateArrays) -> StateArrays:
        """Copy ``state``'s arrays into the buffer; returns it completed (its ``late`` part merged)."""
        state = state.complete()
        arrays = [a for items in state.files.values() for a in items.values()]
        names = [(f, n) for f, items in state.files.items() for n in items]
        plan = self._plan
        if plan is None or not plan.fits(names, arrays):
            key = tuple((f, n, a.dtype, a.shape) for (f, n), a in zip(names, arrays))
            if key != self._key or self._mm is None:
                # The arrays that change go first, back to back, so that they copy in one run.
                offsets, offset = [0] * len(arrays), 0
                for i in sorted(range(len(arrays)), key=lambda i: _static(arrays[i])):
                    offsets[i] = offset
                    offset += _aligned(arrays[i].nbytes)
                self._layout = [[f, n, dt.str, list(shape), off] for (f, n, dt, shape), off in zip(key, offsets)]
                self._buffer(offset)
                self._key = key
                self._layout_unsent = True
            assert self._mm is not None
            plan = self._plan = _CopyPlan(names, arrays, _views(self._mm, self._layout),
                                          [row[4] for row in self._layout], np.frombuffer(self._mm, dtype=np.uint8))
        plan.copy(arrays)
        return state

    def _send(self, step: int, state: StateArrays, event: Mapping[str, Any], pause: Mapping[str, Any] | None,
              durable: bool) -> None:
        layout, self._layout_unsent = (self._layout if self._layout_unsent else None), False
        msg = pickle.dumps({"step": step, "layout": layout, "meta": dict(state.meta), "digests": dict(state.digests),
                            "event": event, "pause": pause, "durable": durable}, protocol=pickle.HIGHEST_PROTOCOL)
        fd, self._fd_unsent = self._fd_unsent, None
        try:
            if fd is not None:
                socket.send_fds(self._sock, [msg], [fd])
            else:
                self._sock.send(msg)
        except OSError as exc:
            raise WriterError(f"checkpoint writer (pid {self.pid}) is gone: {exc.strerror}") from None
        finally:
            if fd is not None:
                os.close(fd)

    def _copy_loop(self) -> None:
        """The copier thread: copy a deferred state once released, send the message, and take the
        answer - blocked in ``recv`` without the GIL, so the training thread never waits for it."""
        while True:
            step, state, event, stall, pause, durable = self._jobs.get()
            try:
                event = dict(event, stall_s=round(stall, 6))
                if callable(state):
                    try:
                        state = self._copy(state())
                    finally:
                        self._copying.release()
                self._send(step, state, event, pause, durable)
                self._result = self._answer()
            except BaseException as exc:  # a failed capture, copy, send or save: wait() raises it
                self._result = exc
            self._done.release()

    def _answer(self) -> Saved:
        try:
            data = self._sock.recv(_MAX_MESSAGE)
        except OSError as exc:
            raise WriterError(f"checkpoint writer (pid {self.pid}) is gone: {exc.strerror}") from None
        if not data:
            code = self._proc.wait()
            raise WriterError(f"checkpoint writer (pid {self.pid}) exited with {code} before finishing")
        kind, step, seconds = _REPLY.unpack_from(data)
        if kind == _FAILED:
            raise WriterError(data[_REPLY.size :].decode("utf-8", "replace"))
        return Saved(step, data[_REPLY.size :].decode("utf-8"), seconds, kind == _PAUSED)

    @property
    def held(self) -> bool:
        """A deferred :meth:`submit` waits for :meth:`release`."""
        return self._held is not None

    def release(self) -> None:
        """Let a held deferred :meth:`submit` run now (nothing happens if there is none)."""
        job, self._held = self._held, None
        if job is not None:
            self._jobs.put(job)

    @staticmethod
    def _passed(gate: threading.Lock, timeout: float | None) -> bool:
        if not gate.acquire(timeout=-1 if timeout is None else timeout):
            return False
        gate.release()
        return True

    def wait_copied(self, timeout: float | None = None) -> bool:
        """Block until the arrays of a deferred :meth:`submit` are in the buffer (True), or for
        ``timeout`` seconds (False), releasing it if held. At once when there are none."""
        if not self._copying.locked():
            return True
        self.release()
        return self._passed(self._copying, timeout)

    def wait(self, timeout: float | None = None) -> Saved | None:
        """Block until the checkpoint in flight, if any, is committed; raise its error. With a
        ``timeout``, None also when it is still being written."""
        if self._in_flight is None:
            return None
        if self._done.locked():
            self.release()
            if not self._passed(self._done, timeout):
                return None
        result, self._result, self._in_flight = self._result, None, None
        if isinstance(result, BaseException):
            raise result
        return result

    def close(self, timeout: float = 30.0) -> None:
        """Let the writer finish what it has, then stop it (killing it after ``timeout`` seconds)."""
        try:
            self.wait(timeout)
        except Exception:
            pass  # nobody asked for this checkpoint's result
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._sock.close()
        self._release()

    def _release(self) -> None:
        # Dropped, not closed: the mapping goes with the last view of it, and a view may outlive the
        # buffer (in the traceback of a WriterError the caller holds), where close() would raise.
        self._plan = None
        self._key = ()
        self._mm = None


def _single_threaded() -> bool:
    """True if this process has one thread, native ones included: then it may fork safely."""
    try:
        return threading.active_count() == 1 and len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


class _ForkedWriter:
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
    def start(cls, args: list[str], *, keep_fd: int) -> _ForkedWriter:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, which leaves through os._exit
            code = 1
            try:
                import gc

                import setproctitle

                gc.freeze()  # objects of the parent's are never collected here: their finalizers would close our files
                setproctitle.setproctitle(shlex.join([sys.executable, "-m", "checkpoint.writer", *args]))
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, 0)
                os.close(devnull)
                os.closerange(3, keep_fd)  # the parent's lock, journal and sockets are not ours to hold
                os.closerange(keep_fd + 1, 1 << 20)
                code = main(args)
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


# -- the writer process -------------------------------------------------------------------------------


def _files(mm: mmap.mmap, layout: list[list[Any]]) -> dict[str, dict[str, np.ndarray]]:
    """The buffer's arrays by file and name."""
    files: dict[str, dict[str, np.ndarray]] = {}
    for (fname, name, *_), view in zip(layout, _views(mm, layout)):
        files.setdefault(fname, {})[name] = view
    return files


def serve(sock: socket.socket, root: Path, keep: int, events: Path) -> int:
    store = CheckpointStore(LocalStorage(root), keep=keep)
    mm: mmap.mmap | None = None
    layout: list[list[Any]] = []
    files: dict[str, dict[str, np.ndarray]] | None = None  # views of the buffer, by the layout
    while True:
        msg, fds, _, _ = socket.recv_fds(sock, _MAX_MESSAGE, 1)
        if not msg:
            return 0  # the training process is done with us
        t0 = time.monotonic()
        for fd in fds:
            mm = mmap.mmap(fd, 0, prot=mmap.PROT_READ)  # the old mapping goes with its last view
            os.close(fd)
            files = None
        req = pickle.loads(msg)  # from the process that started us, over a private socket pair
        if req["layout"] is not None:
            layout, files = req["layout"], None
        pause = req.get("pause")

        def between_files(fname: str, pause: Mapping[str, Any] | None = pause, step: int = req["step"]) -> None:
            if pause is not None:
                append_record(events, dict(pause, time=time.time(), after_file=fname))
                sock.send(_reply(_PAUSED, step))
                while True:
                    time.sleep(3600)

        store.between_files = between_files
        try:
            assert mm is not None, "a checkpoint arrived without a buffer"
            if files is None:
                files = _files(mm, layout)
            chunks, meta = pack_chunks(StateArrays(files, req["meta"], req["digests"]))
            name = store.save(int(req["step"]), chunks, meta, durable=bool(req.get("durable", True)))
        except Exception as exc:
            sock.send(_reply(_FAILED, req["step"], text=f"checkpoint after step {req['step']}: {exc}"))
            continue
        took = time.monotonic() - t0
        append_record(events, dict(req["event"], time=time.time(), event="checkpoint-saved", step=req["step"],
                                   name=name, persist_s=round(took, 6), writer_pid=os.getpid()))
        sock.send(_reply(_SAVED, req["step"], took, name))


def main(argv: list[str]) -> int:
    fd, parent, root, keep, events = argv
    die_with(int(parent), exit_code=0)
    # SIGTERM and Ctrl-C reach the worker's whole process group: the worker decides what happens (it
    # waits for this process, then checkpoints); this process ends with it either way.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=int(fd))
    return serve(sock, Path(root), int(keep), Path(events))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
