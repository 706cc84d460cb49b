"""Checkpoints persisted by a process of their own, so that training never waits for them.

At a step boundary the training process copies its arrays into a shared-memory buffer (a few
``np.concatenate`` calls: :mod:`checkpoint.snapshot_buffer`); a copier thread sends the writer
process (:mod:`checkpoint.writer_process`) a short message (:mod:`checkpoint.writer_protocol`) and
waits for the answer, blocked without the GIL. The writer packs the files (safetensors), hashes,
writes and commits them through :class:`CheckpointStore` - the same crash-safe format as a
synchronous save, fsynced when the message asks for a durable one - appends the ``checkpoint-saved``
event and answers. None of that Python runs on the training process's interpreter, so it never holds
the training thread's GIL.

Given a deferred snapshot (a callable), the copier thread also makes and copies the arrays, once
released (:meth:`CheckpointWriter.release`: the job does that as its backward pass starts, which
holds no GIL): the training thread goes on meanwhile, and waits in
:meth:`CheckpointWriter.wait_copied` only if it reaches the optimizer step before the copy is done.

Safety:

- The buffer is written only while no persist is in flight: :meth:`CheckpointWriter.submit` refuses
  to start while the previous one is unacknowledged, so one checkpoint never starts before the last
  one finished.
- The writer dies with the training process. A SIGKILLed worker leaves at most a torn checkpoint: no
  manifest, so not a checkpoint. When the worker exits normally it waits for the writer to finish
  first.

This module is the training process's side; the rest of the writer lives in the modules named above.
"""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .snapshot_buffer import SnapshotBuffer
from .state import StateArrays
from .writer_process import WriterProcess, start_writer
from .writer_protocol import MAX_MESSAGE, Request, Saved, WriterError, pack_request, unpack_reply

__all__ = ["CheckpointWriter", "Saved", "WriterError"]


#: What submit() hands the copier thread: (step, state or a callable making it, event fields, stall,
#: pause event, durable).
_Job = tuple[int, Any, Mapping[str, Any], float, Any, bool]


class CheckpointWriter:
    """Starts the writer process and hands it one snapshot at a time through shared memory.

    :meth:`submit` copies the arrays into the buffer on the caller's thread - or, for a deferred
    snapshot, leaves that to the copier thread - and returns; the copier thread sends the message and
    takes the writer's answer, which :meth:`wait` hands back. One checkpoint is in flight at a time,
    so the buffer is only ever touched by one thread at once."""

    def __init__(self, root: Path, *, keep: int, events: Path) -> None:
        self._sock, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with child:
            self._proc: WriterProcess = start_writer(child, root, keep=keep, events=events)
        self._buffer = SnapshotBuffer()
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
            state = self._buffer.copy(state)  # type: ignore[arg-type]
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

    def _send(self, step: int, state: StateArrays, event: Mapping[str, Any], pause: Mapping[str, Any] | None,
              durable: bool) -> None:
        msg = pack_request(Request(step, self._buffer.take_layout(), state.meta, state.digests, event, pause,
                                   durable))
        fd = self._buffer.take_fd()
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
                        state = self._buffer.copy(state())
                    finally:
                        self._copying.release()
                self._send(step, state, event, pause, durable)
                self._result = self._answer()
            except BaseException as exc:  # a failed capture, copy, send or save: wait() raises it
                self._result = exc
            self._done.release()

    def _answer(self) -> Saved:
        try:
            data = self._sock.recv(MAX_MESSAGE)
        except OSError as exc:
            raise WriterError(f"checkpoint writer (pid {self.pid}) is gone: {exc.strerror}") from None
        if not data:
            code = self._proc.wait()
            raise WriterError(f"checkpoint writer (pid {self.pid}) exited with {code} before finishing")
        return unpack_reply(data)

    def committed(self) -> bool:
        """The checkpoint in flight is done (its :meth:`wait` returns at once); no side effects, so
        that it may be asked between any two steps."""
        return self._in_flight is not None and not self._done.locked()

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
        self._buffer.drop()
