"""The checkpoint session of one worker: the writer process, the cadence, durability, the stall a
checkpoint costs the training thread, and the two ways to checkpoint - synchronously in this process
(:meth:`CheckpointSession.save`, ``checkpoint(wait=True)``) or handed to the writer process while
training goes on (:meth:`CheckpointSession.checkpoint`, deferred or not).

The training thread's step time never includes checkpoint time: every stall, synchronous save and
wait for a deferred copy is taken out of the step it fell in (:meth:`CheckpointSession.step_done`)
and counted as the checkpoint's cost in the :class:`Cadence` instead.

A snapshot whose arrays hold a NaN or an infinity is never committed: checked here before a
synchronous save, in the writer process before an asynchronous one (off the training thread). Either
way the job stops with :class:`rundir.errors.NonFiniteError` naming the step and the last good
checkpoint (:func:`non_finite_message`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, NoReturn, Protocol

from checkpoint.cadence import DEFAULT_DURABLE_EVERY_S, Cadence, durable_due, upload_due
from checkpoint.state import StateArrays, non_finite, pack_chunks
from checkpoint.storage import Data, LocalStorage
from checkpoint.store import CheckpointStore
from checkpoint.writer import CheckpointWriter, Saved
from checkpoint.writer_protocol import NonFiniteState
from rundir.errors import NonFiniteError
from rundir.events import EventKind

from .faults import Beat, FaultPoints
from .files import TRAIN_PHASE, EventLog

__all__ = ["Snapshot", "Writer", "Uploads", "CheckpointSession", "CHECKPOINT_PHASE", "UPLOAD_PHASE",
           "non_finite_message"]

CHECKPOINT_PHASE = "checkpoint"
#: The worker waits for its last upload: a phase of its own, so the supervisor gives it the start-up
#: timeout, not the hang timeout of a worker silent between steps.
UPLOAD_PHASE = "uploading"


def non_finite_message(what: str, last_good: str | None) -> str:
    """The one line of a non-finite stop: ``what`` (``"the loss is nan at step 41"``) and the
    checkpoint a rerun would resume from."""
    if last_good is None:
        return f"{what}; no checkpoint was saved before it"
    return f"{what}; the last good checkpoint is {last_good}"


class Snapshot(Protocol):
    """The training state at a step boundary. Its arrays may be live views of the training tensors:
    the worker copies them before ``checkpoint()`` returns, or, for a deferred checkpoint, before
    ``before_update()`` returns; ``arrays()`` then runs on another thread, meanwhile."""

    def arrays(self) -> StateArrays: ...


class Writer(Protocol):
    """What the session needs of :class:`checkpoint.writer.CheckpointWriter` (a fake stands in in tests)."""

    @property
    def pid(self) -> int: ...
    def submit(self, step: int, state: StateArrays | Callable[[], StateArrays], *, event: Mapping[str, Any],
               started: float, pause: Mapping[str, Any] | None = None, durable: bool = True,
               held: bool = False) -> float: ...
    def release(self) -> None: ...
    def committed(self) -> bool: ...
    def wait_copied(self, timeout: float | None = None) -> bool: ...
    def wait(self, timeout: float | None = None) -> Saved | None: ...
    def close(self, timeout: float = 30.0) -> None: ...


class Uploads(Protocol):
    """What the session needs of :class:`checkpoint.uploader.Uploader` (a fake stands in in tests)."""

    @property
    def every_s(self) -> float: ...
    def notify(self, name: str, step: int, committed: float | None = None) -> None: ...
    def check(self) -> None: ...
    def settle(self, name: str, step: int, timeout: float | None = None) -> Any: ...
    def close(self) -> None: ...


class CheckpointSession:
    """Checkpoints of one worker into ``storage``, one at a time.

    ``storage`` is the local tier, the one the writer process commits to. With :attr:`uploads` (the
    worker's uploader, once it has a remote store), a checkpoint due for the store (every
    ``uploads.every_s`` seconds, the first of the attempt, and a ``final`` one) is made durable and,
    once committed, handed to the uploader: :meth:`_committed` is where both paths, this process's
    saves and the writer's answers, arrive. ``start_writer`` makes the writer process; ``clock`` is
    ``time.monotonic``."""

    def __init__(self, storage: LocalStorage, *, keep: int, events: EventLog, beat: Beat, faults: FaultPoints,
                 start_writer: Callable[[], Writer] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = CheckpointStore(storage, keep=keep, between_files=self._between_files)
        self.cadence = Cadence()
        #: Asynchronous checkpoints are fsynced at least this often (see :func:`durable_due`);
        #: synchronous ones always are.
        self.durable_every_s = DEFAULT_DURABLE_EVERY_S
        self._events, self._beat, self._faults, self._clock = events, beat, faults, clock
        self._start: Callable[[], Writer] = start_writer or partial(
            CheckpointWriter, storage.root, keep=keep, events=events.path)
        self._writer: Writer | None = None
        self._last_durable: float | None = None
        self._backward_calls = False  # the job calls before_backward()
        self._persisting = False  # a checkpoint handed to the writer may not be committed yet
        self._saving_step = 0  # of the synchronous save under way, for the fault point between its files
        self._last_step = clock()  # when the last step ended, less the checkpoint time since
        self.uploads: Uploads | None = None
        self._last_upload: float | None = None  # when the last checkpoint due for the store was taken
        self._in_flight: tuple[bool, bool] = (False, False)  # the asynchronous one's (durable, for the store)
        self._newest_durable: Saved | None = None
        self._sent: str | None = None  # the newest checkpoint handed to the uploader

    @property
    def writer(self) -> Writer | None:
        """The writer process, once started."""
        return self._writer

    def start_writer(self) -> Writer:
        if self._writer is None:
            self._writer = self._start()
        return self._writer

    def close(self) -> None:
        """Stop the writer, letting it finish the checkpoint it has; then the uploader, letting it
        finish the newest checkpoint it was given (raises ``StoreError`` if it was fenced)."""
        if self._writer is not None:
            if self.uploads is not None:
                try:
                    self.flush()  # so that the checkpoint in flight reaches the uploader
                except Exception:
                    pass  # nobody asked for this checkpoint's result
            self._writer.close()  # it finishes the checkpoint it has, if any
            self._writer = None
        uploads, self.uploads = self.uploads, None
        if uploads is not None:
            self._beat(UPLOAD_PHASE)
            uploads.close()

    def settle_uploads(self) -> None:
        """The job ends: hand the newest durable checkpoint to the uploader if it was not, and wait
        until it is in the store (or the drain time passed)."""
        newest = self._newest_durable
        if self.uploads is None or newest is None:
            return
        if self._sent != newest.name:
            self._send(newest)
        self._beat(UPLOAD_PHASE, step=newest.step)
        self.uploads.settle(newest.name, newest.step)

    # -- step time -------------------------------------------------------------------------------------

    def steps_start(self) -> None:
        """Training starts (or resumes) now."""
        self._last_step = self._clock()

    def step_done(self) -> float:
        """A step ended now: its time, checkpoint time left out, recorded in the cadence."""
        now = self._clock()
        dt, self._last_step = now - self._last_step, now
        writer = self._writer
        beside = self._persisting and writer is not None and not writer.committed()
        self._persisting = beside  # once committed, the steps after it have nothing beside them
        self.cadence.record_step(dt, beside_persist=beside)
        if self.uploads is not None:
            self._poll_uploads()
        return dt

    def _poll_uploads(self) -> None:
        """Between steps, with a remote store: a checkpoint the writer has committed goes to the
        uploader now, not at the next checkpoint; a fenced uploader stops the job here."""
        writer = self._writer
        if self._in_flight[1] and writer is not None and writer.committed():
            self.flush()
        assert self.uploads is not None
        self.uploads.check()

    def _stalled(self, seconds: float) -> None:
        self._last_step += seconds  # a step's dt excludes checkpoint time

    # -- checkpoints -----------------------------------------------------------------------------------

    def save(self, step: int, files: Mapping[str, Data], meta: Mapping[str, Any], *, final: bool = False) -> str:
        """Durably save ``files`` as the checkpoint after ``step`` steps, in this process."""
        t0 = self._clock()
        self.flush()
        upload = self._for_store(t0, final)
        self._beat(CHECKPOINT_PHASE, step=step)
        name = self._save(step, files, meta, t0, upload=upload)
        self._beat(TRAIN_PHASE, step=step)
        return name

    def _for_store(self, now: float, final: bool) -> bool:
        """Whether the checkpoint taken at ``now`` goes to the remote store (see :func:`upload_due`)."""
        if self.uploads is None:
            return False
        self.uploads.check()
        due = final or upload_due(now, self._last_upload, self.uploads.every_s)
        if due:
            self._last_upload = now
        return due

    def checkpoint(self, step: int, capture: Callable[[], Snapshot], *, wait: bool, deferred: bool,
                   final: bool = False) -> None:
        """See :meth:`runner.worker.Worker.checkpoint`. ``final``: the last before the worker stops
        (a preemption): durable, and uploaded whenever it is due or not."""
        t0 = self._clock()
        self.flush()
        snapshot = capture()
        upload = self._for_store(t0, final)
        if wait:
            self._beat(CHECKPOINT_PHASE, step=step)
            now = snapshot.arrays().complete()
            bad = non_finite(now.files)
            if bad is not None:
                self.stop_non_finite(step, f"the parameters are not finite at step {step} ({bad})")
            files, meta = pack_chunks(now)
            self._save(step, files, meta, t0, upload=upload)
            self._beat(TRAIN_PHASE, step=step)
            return
        durable = upload or final or durable_due(t0, self._last_durable, self.durable_every_s)
        if durable:
            self._last_durable = t0
        self._in_flight = (durable, upload)
        event = dict(self._events.ids(), asynchronous=True, deferred=deferred, durable=durable)
        pause = self._faults.writer_pause(step)  # chaos: the writer stops for good, a torn checkpoint on disk
        state = snapshot.arrays if deferred else snapshot.arrays()
        stall = self.start_writer().submit(step, state, event=event, started=t0, pause=pause, durable=durable,
                                           held=deferred and self._backward_calls)
        self._persisting = True
        self._stalled(stall)
        self.cadence.record_checkpoint(step, stall)
        if pause is not None:
            self.flush()  # returns once the writer has stopped, a torn checkpoint on disk
            self._faults.paused(step)

    def before_backward(self) -> None:
        """Let a deferred copy run now; from now on, deferred copies wait for this call."""
        self._backward_calls = True
        if self._writer is not None:
            self._writer.release()  # at once if nothing is held

    def before_update(self) -> None:
        """Wait for a deferred copy; the wait counts as checkpoint cost, not step time."""
        writer = self._writer
        if writer is None or writer.wait_copied(0):
            return
        t0 = self._clock()
        writer.wait_copied()
        waited = self._clock() - t0
        self._stalled(waited)
        self.cadence.add_cost(waited)

    def flush(self) -> None:
        """Wait for the checkpoint being written in the background, if any; raise its error
        (:class:`NonFiniteError` for a snapshot the writer refused as not finite)."""
        if self._writer is not None:
            try:
                saved = self._writer.wait()
            except NonFiniteState as exc:
                self.stop_non_finite(exc.step, f"the parameters are not finite at step {exc.step} ({exc.what})")
            if saved is not None:
                durable, upload = self._in_flight
                self._committed(saved, durable=durable, upload=upload)
            self._in_flight = (False, False)
            self._persisting = False

    def last_good(self) -> str | None:
        """The newest committed checkpoint's name: what a rerun resumes from (it is verified then)."""
        committed = self.store.committed()
        return committed[-1] if committed else None

    def stop_non_finite(self, step: int, what: str) -> NoReturn:
        """A non-finite value at ``step``: record it and raise :class:`NonFiniteError`. Nothing of it
        was committed; the checkpoint being written, taken before it, is finished first."""
        self.flush()  # a snapshot in flight that is not finite either came first, and raises here
        last = self.last_good()
        self._events.record(EventKind.NON_FINITE, step=step, what=what, last_good=last)
        raise NonFiniteError(non_finite_message(what, last))

    def _save(self, step: int, files: Mapping[str, Data], meta: Mapping[str, Any], t0: float, *,
              upload: bool = False) -> str:
        self._saving_step = step
        name = self.store.save(step, files, meta)
        self._last_durable = t0
        took = self._clock() - t0
        self._stalled(took)
        self.cadence.record_checkpoint(step, took)
        self._committed(Saved(step, name, took), durable=True, upload=upload)
        self._events.record(EventKind.CHECKPOINT_SAVED, step=step, name=name, persist_s=round(took, 6),
                            stall_s=round(took, 6), asynchronous=False, durable=True)
        return name

    def _committed(self, saved: Saved, *, durable: bool, upload: bool) -> None:
        """A checkpoint is committed in the local store (by this process or the writer); one due for
        the remote store goes to the uploader."""
        self.cadence.record_persist(saved.seconds)
        if self.uploads is None or saved.paused:
            return
        if durable:
            self._newest_durable = saved
        if upload:
            self._send(saved)

    def _send(self, saved: Saved) -> None:
        assert self.uploads is not None
        self.uploads.notify(saved.name, saved.step)
        self._sent = saved.name

    def _between_files(self, fname: str) -> None:
        self._faults.between_files(self._saving_step, fname)
