"""The :class:`Worker` facade: one object for the job, each of its jobs done by a part -
:mod:`.files` (lock, heartbeat, journals, ``job.json``, ``final.json``), :mod:`.session` (checkpoints),
:mod:`.faults` (what chaos arms), :mod:`.standby` (the spare's handshake)."""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from checkpoint.cadence import Cadence, estimate_mtbf, failure_history
from checkpoint.storage import Data, LocalStorage
from checkpoint.store import Checkpoint, CheckpointStore
from rundir.argparsing import DEFAULT_UPLOAD_EVERY_S
from rundir.contract import Arm
from rundir.errors import as_resource_error
from rundir.events import EventKind
from rundir.exitcodes import ExitCode, UserError
from rundir.journal import read_records
from rundir.names import ENV_STANDBY, ENV_STORE, EVENTS

from .faults import FaultPoints
from .files import (
    TRAIN_PHASE,
    AttemptFiles,
    EventLog,
    attempt_number,
    bind_config,
    read_final,
    worker_lock,
    write_final,
)
from .session import CheckpointSession, Snapshot
from .standby import holder_for, restore_from, wait_for_go

if TYPE_CHECKING:  # the remote store's code is imported only by a worker that has one
    from checkpoint.sync import UploadSettings
    from checkpoint.uploader import Uploader

__all__ = ["Worker"]


def _say(line: str) -> None:
    """Print a line of the worker's own to its log; if that fails (a full disk), the error names the log."""
    try:
        print(line, flush=True)
    except OSError as exc:
        try:
            exc.filename = os.readlink(f"/proc/self/fd/{sys.stdout.fileno()}")
        except (OSError, ValueError, AttributeError):
            pass
        raise


class Worker:
    """One attempt of a supervised job. Create it before importing the framework: it starts the
    heartbeat, takes the run directory's worker lock, starts the checkpoint writer process
    (:mod:`checkpoint.writer`) and turns SIGTERM/SIGINT into a request (:meth:`request_preemption`).

    A standby spare (``RUNNER_STANDBY=1``) warms up touching nothing shared, and waits in
    :meth:`restore` for the supervisor's word that the previous worker is gone.

    With a remote store - given by the supervisor through the environment (``RUNNER_STORE`` and the
    generation it took), or ``store=`` for a job run on its own, which then takes a generation
    itself and restores an empty run directory from the store - an uploader process sends durable
    checkpoints there every ``upload_every`` seconds, a preemption's checkpoint at once, and the
    last one before :meth:`complete` writes ``final.json`` (see :mod:`checkpoint.uploader`)."""

    def __init__(self, run_dir: Path | str, *, keep_checkpoints: int = 3, handle_signals: bool = True,
                 store: str | None = None, upload_every: float | None = None) -> None:
        self.run_dir = Path(run_dir)
        self._store, self._upload_every = store, upload_every
        self.pid = os.getpid()
        self.attempt = 0
        self._handle_signals = handle_signals
        self._preemption: str | None = None
        self._cadence_args: tuple[int | str, float | None] | None = None
        self.preapplied = False  # the checkpoint restore() returned is in the job's objects already
        self._files: AttemptFiles | None = None  # held while this is the run's worker
        self._events = EventLog(self.run_dir / EVENTS, pid=self.pid)
        self._faults = FaultPoints(self._events, self.heartbeat)
        self._session = CheckpointSession(LocalStorage(self.run_dir), keep=keep_checkpoints, events=self._events,
                                          beat=self.heartbeat, faults=self._faults)
        self._uploader: Uploader | None = None
        given = self._given_store(os.environ)
        if given is not None:
            self._start_uploads(given)  # now, so that its imports are done by the first checkpoint
        self.standby = os.environ.get(ENV_STANDBY) == "1"
        if self.standby:
            if not self.run_dir.is_dir():
                raise UserError(f"run directory {self.run_dir} does not exist", ExitCode.BAD_CONFIG)
            self._session.start_writer()  # a spare's waits with it
            return
        try:
            self._activate(os.environ)
        except OSError as exc:
            full = as_resource_error(exc)
            if full is None:
                raise
            raise full from exc

    def _activate(self, env: Mapping[str, str]) -> None:
        """Take the run directory: the worker lock, the heartbeat, the journal and the signals."""
        lock = worker_lock(self.run_dir)
        lock.acquire()
        # The checkpoint writer starts now, while the job imports its framework, so that it is ready
        # for the first checkpoint.
        self._session.start_writer()
        if self._uploader is None:
            own = self._own_store(env)  # an empty run directory is restored here, before anything is read
            if own is not None:
                self._start_uploads(own)
        self.attempt = self._events.attempt = attempt_number(env, self.run_dir)
        if self._uploader is not None:
            self._uploader.attempt = self.attempt
        self._faults.arm = Arm.from_env(env)
        self._files = AttemptFiles.open(lock, self.run_dir, pid=self.pid, attempt=self.attempt)
        self._take_signals()
        self._hold_signals(True)
        self.heartbeat("starting")

    def _given_store(self, env: Mapping[str, str]) -> UploadSettings | None:
        """The remote store the supervisor took a generation in, if any."""
        if not env.get(ENV_STORE):
            return None
        from checkpoint.sync import UploadSettings

        given = UploadSettings.from_env(env)
        if given is None:
            return None
        if self._store and self._store != given.url:
            raise UserError(f"store {self._store} differs from the supervisor's {given.url}", ExitCode.BAD_CONFIG)
        if self._upload_every is None:
            return given
        return UploadSettings(given.url, given.generation, self._upload_every, given.drain_s)

    def _own_store(self, env: Mapping[str, str]) -> UploadSettings | None:
        """Run on its own with a store: take a generation there, and restore the run directory from it
        if it is empty."""
        url = self._store or env.get(ENV_STORE)
        if not url:
            return None
        from checkpoint.sync import take_store

        every = DEFAULT_UPLOAD_EVERY_S if self._upload_every is None else self._upload_every
        attached = take_store(url, self.run_dir, every_s=every, warn=lambda msg: print(f"warning: {msg}", flush=True))
        if attached.restored is not None:
            print(attached.restored.line(url), flush=True)
            self._events.record(EventKind.STORE_RESTORED, url=url, generation=attached.settings.generation,
                                **attached.restored.to_event())
        return attached.settings

    def _start_uploads(self, settings: UploadSettings) -> None:
        from checkpoint.uploader import Uploader

        self._uploader = Uploader(self.run_dir, settings, ids=self._events.ids(), events=self._events.path)
        self._session.uploads = self._uploader

    @property
    def active(self) -> bool:
        """This is the run's worker: not (or no longer) a spare on standby."""
        return self._files is not None

    def _require_active(self) -> AttemptFiles:
        if self._files is None:
            raise RuntimeError("call Worker.restore() before training: a standby spare takes over the run there")
        return self._files

    # -- context -------------------------------------------------------------------------------------

    def __enter__(self) -> Worker:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close; a write that found the disk full, over quota or failing - the job's own, the
        journal's, the checkpoint writer's - leaves as a :class:`rundir.errors.ResourceError` (exit
        74) naming the file and the cause."""
        self.close()
        if ev is not None and not isinstance(ev, UserError):
            full = as_resource_error(ev)
            if full is not None:
                raise full from ev

    def close(self) -> None:
        try:
            self._session.close()  # raises StoreError if the uploader was fenced off
        finally:
            self._uploader = None
            if self._files is not None:
                self._files.close()
                self._files = None
                self._hold_signals(False)  # a job that ends before restore() leaves nothing blocked

    # -- preemption ----------------------------------------------------------------------------------

    def _take_signals(self) -> None:
        if self._handle_signals:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)

    def _hold_signals(self, hold: bool) -> None:
        """From the start until :meth:`restore`, SIGTERM and SIGINT wait, blocked (not lost): a framework
        imported meanwhile may put in a handler of its own that aborts the process (Paddle's does), and
        a preemption notice during start-up must end in exit 75 like one during training. Blocked
        signals stay blocked in a process started meanwhile; the checkpoint writer starts before."""
        if self._handle_signals:
            signal.pthread_sigmask(signal.SIG_BLOCK if hold else signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only record it: the training loop finishes its step and checkpoints at a safe point.
        self.request_preemption(signal.Signals(signum).name)

    def request_preemption(self, cause: str) -> None:
        """Ask the job to checkpoint at its next safe point and exit with ``ExitCode.PREEMPTED``.
        SIGTERM and SIGINT arrive here; so can a cloud provider's notice of a coming preemption."""
        self._preemption = cause

    @property
    def preemption_requested(self) -> bool:
        """True once a preemption was requested: checkpoint, then exit with ``ExitCode.PREEMPTED``."""
        return self._preemption is not None

    # -- the run directory -----------------------------------------------------------------------------

    def heartbeat(self, phase: str = TRAIN_PHASE, step: int | None = None) -> None:
        if self._files is not None:  # a spare on standby is not the run's worker yet
            self._files.heartbeat.beat(phase, step)

    def event(self, kind: EventKind | str, **fields: Any) -> None:
        """Append a worker record of ``kind`` (an :class:`EventKind`) to ``events.jsonl``."""
        self._events.record(EventKind(kind), **fields)

    def bind_config(self, config: Mapping[str, Any]) -> None:
        """Record the job's configuration, or refuse one that differs from the run directory's."""
        bind_config(self.run_dir, config)

    def finished(self) -> dict[str, Any] | None:
        """The completion record if this run already finished."""
        return read_final(self.run_dir)

    def complete(self, **summary: Any) -> None:
        """Mark the job done; a rerun sees :meth:`finished` and exits at once. With a remote store,
        the newest checkpoint is in the store first (or the drain time passed: the events say so)."""
        self.flush_checkpoints()
        self._session.settle_uploads()
        write_final(self.run_dir, summary, attempt=self.attempt)
        self.event(EventKind.JOB_COMPLETED, **summary)

    # -- training --------------------------------------------------------------------------------------

    def restore(self, total_steps: int | None = None, check: Callable[[Checkpoint], None] | None = None,
                preload: Callable[[Checkpoint], None] | None = None,
                release: Callable[[], None] | None = None) -> Checkpoint | None:
        """The newest verified checkpoint, falling back past torn or corrupt ones with a warning.

        ``total_steps``, if the job knows it, lets the supervisor show progress against it; ``check``,
        a further test a checkpoint must pass (see :meth:`checkpoint.store.CheckpointStore.load_latest`).
        A standby spare waits here until the supervisor hands it the run, holding the newest checkpoint
        in memory meanwhile (unless ``RUNNER_STANDBY_MEMORY`` is off; see :mod:`checkpoint.held`), and
        puts each one it holds into the job's objects at once with ``preload``, if given:
        :attr:`preapplied` then says the returned checkpoint (its files left out) is in them already;
        ``release`` lets them drop what they keep of one preloaded before a newer one is read."""
        holder = None
        if not self.active:
            holder = holder_for(self.store, os.environ, check=check, preload=preload, release=release)
            self._activate(wait_for_go(self._events, os.environ, idle=None if holder is None else holder.poll))
            if self._cadence_args is not None:
                # Set while warming up, before the failure this spare replaces: estimate the MTBF again.
                self.set_cadence(*self._cadence_args)
        self.heartbeat("restoring")
        # ``import paddle`` installs its own C-level SIGTERM handler, which aborts the process; the job
        # imports its framework after creating the Worker, so take the signals back before training,
        # and let in one that came meanwhile: it asks for a preemption like any other.
        self._take_signals()
        self._hold_signals(False)

        def warn(msg: str) -> None:
            _say(f"warning: {msg}")
            self.event(EventKind.CHECKPOINT_FALLBACK, reason=msg)

        found = restore_from(holder, lambda: self.store.load_latest(warn=warn, check=check))
        ckpt, self.preapplied = found.checkpoint, found.preapplied
        self.event(EventKind.ATTEMPT_STARTED, resumed_from_step=ckpt.step if ckpt else 0,
                   checkpoint=ckpt.name if ckpt else None, total_steps=total_steps, restored_from=found.source,
                   preapplied=found.preapplied)
        self._session.steps_start()
        return ckpt

    def report_step(
        self, step: int, *, loss: float, epoch: int = 0, batch: int = 0, acc: float | None = None,
        lr: float | None = None, extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Journal one completed step (global, 0-based) and beat the heart; ``extra``: more fields for
        its journal line (a gang's rank 0 adds its own loss beside the gang's mean). A NaN or infinite
        ``loss`` is not journaled: it raises :class:`rundir.errors.NonFiniteError` (exit 76) naming
        the step and the last good checkpoint, which the checkpoint in flight, if any, becomes first."""
        files = self._require_active()
        if not math.isfinite(loss):
            self._session.stop_non_finite(step, f"the loss is {float(loss)} at step {step}")
        self._faults.step(step)
        dt = self._session.step_done()
        files.losses.write(step, loss=loss, epoch=epoch, batch=batch, acc=acc, lr=lr, dt=dt, extra=extra)
        files.heartbeat.training(step)

    # -- checkpoints -----------------------------------------------------------------------------------

    @property
    def store(self) -> CheckpointStore:
        return self._session.store

    @property
    def cadence(self) -> Cadence:
        return self._session.cadence

    @property
    def durable_every_s(self) -> float:
        """Asynchronous checkpoints are fsynced at least this often; synchronous ones always are."""
        return self._session.durable_every_s

    @durable_every_s.setter
    def durable_every_s(self, seconds: float) -> None:
        self._session.durable_every_s = seconds

    def save_checkpoint(self, step: int, files: Mapping[str, Data], meta: Mapping[str, Any]) -> str:
        """Durably save a checkpoint taken after ``step`` completed steps, before returning."""
        self._require_active()
        return self._session.save(step, files, meta, final=self.preemption_requested)

    def checkpoint(self, step: int, capture: Callable[[], Snapshot], *, wait: bool = False,
                   deferred: bool = False) -> None:
        """Checkpoint after ``step`` completed steps. ``capture()`` runs now, on this thread; the
        snapshot's arrays are copied into shared memory, and a writer process packs, writes and
        commits them while training goes on. ``wait``: persist here and now, durably, before
        returning.

        ``deferred``: the snapshot's ``arrays()`` runs on the writer's copier thread, overlapping
        the next step's backward pass (see :meth:`before_backward`), so the training thread only
        pays for ``capture()``. The job promises that nothing those arrays read changes until it
        calls :meth:`before_update`, which waits for the copy: call it before every optimizer step.

        A checkpoint never starts while the previous one is unfinished. If the process is killed
        before the manifest is written, the unfinished checkpoint simply does not exist."""
        self._require_active()
        self._session.checkpoint(step, capture, wait=wait, deferred=deferred, final=self.preemption_requested)

    def before_backward(self) -> None:
        """Let a deferred checkpoint's copy run now: call it right before the backward pass. Paddle
        holds the GIL between the forward pass's many small operations, but not during the backward
        pass, so the copier thread's Python then runs beside training instead of between its
        operations. Once a job calls this, deferred copies wait for it (or for :meth:`before_update`)."""
        self._session.before_backward()

    def before_update(self) -> None:
        """Wait until a deferred checkpoint's arrays are copied (at once if there are none): call it
        before anything changes them, such as the optimizer step. The wait counts as checkpoint
        cost, not step time."""
        self._session.before_update()

    def flush_checkpoints(self) -> None:
        """Wait for the checkpoint being written in the background, if any; raise its error."""
        self._session.flush()

    def checkpoint_due(self, steps_done: int) -> bool:
        """Whether the cadence (every K steps, or Young's interval with ``"auto"``) asks for one now."""
        return self._session.cadence.due(steps_done)

    def set_cadence(self, every: int | str, mtbf_s: float | None = None) -> None:
        """Checkpoint every ``every`` steps (0: never), or ``"auto"``: Young's interval from the
        measured checkpoint cost and the MTBF, given or estimated from this run's failures."""
        self._cadence_args = (every, mtbf_s)
        elapsed, failures = failure_history(read_records(self.run_dir / EVENTS), time.time())
        self._session.cadence = Cadence(every=every, mtbf_s=estimate_mtbf(elapsed, failures, mtbf_s))
