"""The API a training job calls to be supervised: restore, report a step, checkpoint, heartbeat.

The job and the supervisor talk only through files in the run directory and the job's exit code:

``losses.jsonl``  one record per completed step per attempt (flushed every step)
``events.jsonl``  what happened: attempts, checkpoints, fallbacks, exits (shared with the supervisor)
``heartbeat``     rewritten on every phase change, and while training at most every
                  ``HEARTBEAT_EVERY_S``; the supervisor takes it and new steps as signs of life
``checkpoints/``  see :mod:`checkpoint.store`
``job.json``      the job's configuration, so a run directory is never resumed with another one
``final.json``    written when the job completes

A user's own script uses it the same way the built-in MNIST job does::

    with Worker(run_dir) as w:
        ckpt = w.restore()                 # a verified Checkpoint or None
        for step in ...:
            ...
            w.report_step(step, loss=loss, epoch=e, batch=b)
            if w.preemption_requested or step % k == 0:
                w.save_checkpoint(step + 1, files, meta)
            if w.preemption_requested:
                raise SystemExit(ExitCode.PREEMPTED)
        w.complete(params_sha256=...)
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Protocol

from checkpoint.cadence import DEFAULT_DURABLE_EVERY_S, Cadence, durable_due, estimate_mtbf
from checkpoint.state import StateArrays, pack_chunks
from checkpoint.storage import Data, LocalStorage
from checkpoint.store import Checkpoint, CheckpointStore
from checkpoint.writer import CheckpointWriter, Saved
from rundir.contract import ENV_CHAOS_ARM, PAUSED_EVENT, PAUSED_PHASE
from rundir.exitcodes import ExitCode, UserError
from rundir.journal import JsonlWriter, append_record, read_records
from rundir.names import ENV_ATTEMPT, ENV_STANDBY, EVENTS, FINAL, HEARTBEAT, JOB, LOSSES, WORKER_LOCK, read_heartbeat

__all__ = [
    "Worker",
    "SimulatedDeviceError",
    "Snapshot",
    "ENV_ATTEMPT",
    "ENV_CHAOS_ARM",
    "ENV_STANDBY",
    "LOSSES",
    "EVENTS",
    "HEARTBEAT",
    "FINAL",
    "JOB",
    "read_heartbeat",
    "HEARTBEAT_EVERY_S",
]

class Snapshot(Protocol):
    """The training state at a step boundary. Its arrays may be live views of the training tensors:
    the worker copies them before ``checkpoint()`` returns, or, for a deferred checkpoint, before
    ``before_update()`` returns; ``arrays()`` then runs on another thread, meanwhile."""

    def arrays(self) -> StateArrays: ...


class SimulatedDeviceError(RuntimeError):
    """Raised inside a training step by the ``crash`` chaos fault."""


#: While training, the heartbeat is rewritten at most this often: each step's journal line already
#: shows the supervisor that the worker is alive.
HEARTBEAT_EVERY_S = 0.5


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Worker:
    """One attempt of a supervised job. Create it before importing the framework: it starts the
    heartbeat, takes the run directory's worker lock, starts the checkpoint writer process
    (:mod:`checkpoint.writer`) and turns SIGTERM/SIGINT into a request."""

    def __init__(self, run_dir: Path | str, *, keep_checkpoints: int = 3, handle_signals: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.pid = os.getpid()
        self._preempt_signal: int | None = None
        self._last_report = time.monotonic()
        self._saving_step = 0
        self._keep = keep_checkpoints
        self._writer: CheckpointWriter | None = None
        self.cadence = Cadence()
        self._cadence_args: tuple[int | str, float | None] | None = None
        self._handle_signals = handle_signals
        #: Asynchronous checkpoints are fsynced at least this often (see :func:`durable_due`);
        #: synchronous ones always are.
        self.durable_every_s = DEFAULT_DURABLE_EVERY_S
        self._last_durable: float | None = None
        self._backward_calls = False  # the job calls before_backward()
        self._beat: tuple[str, float] = ("", 0.0)  # the phase last written to the heartbeat, and when
        self.store = CheckpointStore(
            LocalStorage(self.run_dir), keep=keep_checkpoints, between_files=self._between_files
        )
        # A standby spare warms up (imports, data, model) touching nothing shared, then waits in
        # restore() for the supervisor's word that the previous worker is gone.
        self.standby = os.environ.get(ENV_STANDBY) == "1"
        self.active = False
        if self.standby:
            if not self.run_dir.is_dir():
                raise UserError(f"run directory {self.run_dir} does not exist", ExitCode.BAD_CONFIG)
            self._start_writer()  # a spare's waits with it
            self.attempt = 0
            return
        self._activate(os.environ)

    def _activate(self, env: Mapping[str, str]) -> None:
        """Take the run directory: the worker lock, the heartbeat, the journal and the signals."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.run_dir / WORKER_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise UserError(
                f"run directory {self.run_dir} is not writable: {exc.strerror}", ExitCode.UNWRITABLE
            ) from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise UserError(
                f"run directory {self.run_dir} is in use by another worker", ExitCode.LOCKED
            ) from None
        # The checkpoint writer starts now, while the job imports its framework, so that it is ready
        # for the first checkpoint.
        self._start_writer()
        self.attempt = self._attempt_number(env)
        raw_arm = env.get(ENV_CHAOS_ARM)
        self._arm = json.loads(raw_arm) if raw_arm else None
        self._hb_fd = os.open(self.run_dir / HEARTBEAT, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._losses = JsonlWriter(self.run_dir / LOSSES)
        self.active = True
        self._take_signals()
        self.heartbeat("starting")

    def _require_active(self) -> None:
        if not self.active:
            raise RuntimeError("call Worker.restore() before training: a standby spare takes over the run there")

    def _wait_for_go(self) -> None:
        """Standby: block until the supervisor sends ``{"attempt": N, "env": {...}}`` on stdin."""
        append_record(self.run_dir / EVENTS, {"time": time.time(), "source": "standby", "event": "standby-ready",
                                              "pid": self.pid})
        line = sys.stdin.buffer.readline()
        if not line.strip():
            raise SystemExit(0)  # the supervisor no longer needs this spare
        go = json.loads(line)
        env = dict(os.environ)
        env.update({k: str(v) for k, v in go.get("env", {}).items()})
        env[ENV_ATTEMPT] = str(go["attempt"])
        self._activate(env)

    # -- context -------------------------------------------------------------------------------------

    def __enter__(self) -> Worker:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()  # it finishes the checkpoint it has, if any
            self._writer = None
        if self.active:
            self._losses.close()
            os.close(self._hb_fd)
            os.close(self._lock_fd)
            self.active = False

    # -- plumbing ------------------------------------------------------------------------------------

    def _attempt_number(self, env: Mapping[str, str]) -> int:
        if env.get(ENV_ATTEMPT):
            return int(env[ENV_ATTEMPT])
        # Run by hand: one more than the highest attempt the journal has seen.
        seen = [int(r.get("attempt", 0)) for r in read_records(self.run_dir / LOSSES)[-1:]]
        return (max(seen) + 1) if seen else 1

    def _take_signals(self) -> None:
        if self._handle_signals:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only record it: the training loop finishes its step and checkpoints at a safe point.
        self._preempt_signal = signum

    def _armed(self, kind: str, step: int) -> bool:
        return self._arm is not None and self._arm.get("kind") == kind and step >= int(self._arm["step"])

    def _between_files(self, fname: str) -> None:
        step = self._saving_step
        if self._armed("checkpoint-write", step):  # a synchronous checkpoint; see checkpoint() for the rest
            # Chaos: stop with a torn checkpoint on disk and wait for the supervisor's SIGKILL.
            self.heartbeat(PAUSED_PHASE, step=step)
            self.event(PAUSED_EVENT, step=step, after_file=fname)
            while True:
                time.sleep(3600)

    # -- the API -------------------------------------------------------------------------------------

    @property
    def preemption_requested(self) -> bool:
        """True once SIGTERM or SIGINT arrived: checkpoint, then exit with ``ExitCode.PREEMPTED``."""
        return self._preempt_signal is not None

    def heartbeat(self, phase: str = "train", step: int | None = None) -> None:
        if not self.active:
            return  # a spare on standby is not the run's worker yet
        rec = {"pid": self.pid, "attempt": self.attempt, "phase": phase, "step": step, "time": time.time()}
        data = json.dumps(rec).encode()
        os.pwrite(self._hb_fd, data, 0)
        os.ftruncate(self._hb_fd, len(data))
        self._beat = (phase, time.monotonic())

    def event(self, kind: str, **fields: Any) -> None:
        rec = {"time": time.time(), "source": "worker", "event": kind, "attempt": self.attempt, "pid": self.pid}
        rec.update(fields)
        append_record(self.run_dir / EVENTS, rec)

    def bind_config(self, config: Mapping[str, Any]) -> None:
        """Record the job's configuration, or refuse one that differs from the run directory's."""
        path = self.run_dir / JOB
        want = json.loads(json.dumps(dict(config)))
        if path.exists():
            try:
                have = json.loads(path.read_text())
            except ValueError:
                raise UserError(f"{path}: not valid JSON", ExitCode.BAD_CONFIG) from None
            diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
            if diff:
                k = diff[0]
                raise UserError(
                    f"{self.run_dir} holds a run with {k}={have.get(k)!r}, not {want.get(k)!r}; "
                    "use a new --run-dir",
                    ExitCode.BAD_CONFIG,
                )
        else:
            _write_json_atomic(path, want)

    def finished(self) -> dict[str, Any] | None:
        """The completion record if this run already finished."""
        try:
            data = json.loads((self.run_dir / FINAL).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def restore(self, total_steps: int | None = None) -> Checkpoint | None:
        """The newest verified checkpoint, falling back past torn or corrupt ones with a warning.

        ``total_steps``, if the job knows it, lets the supervisor show progress against it.
        A standby spare waits here until the supervisor hands it the run."""
        if not self.active:
            self._wait_for_go()
            if self._cadence_args is not None:
                # Set while warming up, before the failure this spare replaces: estimate the MTBF again.
                self.set_cadence(*self._cadence_args)
        self.heartbeat("restoring")
        # ``import paddle`` installs its own C-level SIGTERM handler, which aborts the process; the job
        # imports its framework after creating the Worker, so take the signals back before training.
        self._take_signals()

        def warn(msg: str) -> None:
            print(f"warning: {msg}", flush=True)
            self.event("checkpoint-fallback", reason=msg)

        ckpt = self.store.load_latest(warn=warn)
        self.event("attempt-started", resumed_from_step=ckpt.step if ckpt else 0,
                   checkpoint=ckpt.name if ckpt else None, total_steps=total_steps)
        self._last_report = time.monotonic()
        return ckpt

    def report_step(
        self, step: int, *, loss: float, epoch: int = 0, batch: int = 0, acc: float | None = None,
        lr: float | None = None,
    ) -> None:
        """Journal one completed step (global, 0-based) and beat the heart."""
        self._require_active()
        if self._armed("crash", step):
            self._arm = None
            raise SimulatedDeviceError(f"simulated device error in step {step} (chaos fault 'crash')")
        now = time.monotonic()
        rec_dt = now - self._last_report
        loss = float(loss)
        self._losses.write(
            {
                "step": step, "epoch": epoch, "batch": batch, "loss": loss, "loss_hex": loss.hex(),
                "acc": None if acc is None else float(acc), "lr": None if lr is None else float(lr),
                "attempt": self.attempt, "time": time.time(), "dt": rec_dt,
            }
        )
        self._last_report = now
        self.cadence.record_step(rec_dt)
        if self._beat[0] != "train" or now - self._beat[1] >= HEARTBEAT_EVERY_S:
            self.heartbeat("train", step=step)

    def save_checkpoint(self, step: int, files: Mapping[str, bytes], meta: Mapping[str, Any]) -> str:
        """Durably save a checkpoint taken after ``step`` completed steps, before returning."""
        self._require_active()
        t0 = time.monotonic()
        self.flush_checkpoints()
        self.heartbeat("checkpoint", step=step)
        self._saving_step = step
        name = self._save(step, files, meta, t0)
        self.heartbeat("train", step=step)
        return name

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
        t0 = time.monotonic()
        self.flush_checkpoints()
        snapshot = capture()
        if wait:
            self.heartbeat("checkpoint", step=step)
            self._persist(step, snapshot.arrays(), t0)
            self.heartbeat("train", step=step)
            return
        durable = durable_due(t0, self._last_durable, self.durable_every_s)
        if durable:
            self._last_durable = t0
        event = {"source": "worker", "attempt": self.attempt, "pid": self.pid, "asynchronous": True,
                 "deferred": deferred, "durable": durable}
        pause = None
        if self._armed("checkpoint-write", step):
            # Chaos: the writer stops for good with a torn checkpoint on disk; the supervisor kills us.
            pause = {"source": "worker", "event": PAUSED_EVENT, "attempt": self.attempt, "pid": self.pid,
                     "step": step}
        state = snapshot.arrays if deferred else snapshot.arrays()
        stall = self._start_writer().submit(step, state, event=event, started=t0, pause=pause, durable=durable,
                                            held=deferred and self._backward_calls)
        self._last_report += stall
        self.cadence.record_checkpoint(step, stall)
        if pause is not None:
            self.flush_checkpoints()  # returns once the writer has stopped, a torn checkpoint on disk
            self.heartbeat(PAUSED_PHASE, step=step)
            while True:
                time.sleep(3600)

    def before_backward(self) -> None:
        """Let a deferred checkpoint's copy run now: call it right before the backward pass. Paddle
        holds the GIL between the forward pass's many small operations, but not during the backward
        pass, so the copier thread's Python then runs beside training instead of between its
        operations. Once a job calls this, deferred copies wait for it (or for :meth:`before_update`)."""
        self._backward_calls = True
        if self._writer is not None:
            self._writer.release()  # at once if nothing is held

    def before_update(self) -> None:
        """Wait until a deferred checkpoint's arrays are copied (at once if there are none): call it
        before anything changes them, such as the optimizer step. The wait counts as checkpoint
        cost, not step time."""
        writer = self._writer
        if writer is None or writer.wait_copied(0):
            return
        t0 = time.monotonic()
        writer.wait_copied()
        waited = time.monotonic() - t0
        self._last_report += waited
        self.cadence.add_cost(waited)

    def _start_writer(self) -> CheckpointWriter:
        if self._writer is None:
            self._writer = CheckpointWriter(self.run_dir, keep=self._keep, events=self.run_dir / EVENTS)
        return self._writer

    def flush_checkpoints(self) -> None:
        """Wait for the checkpoint being written in the background, if any; raise its error."""
        if self._writer is not None:
            self._record(self._writer.wait())

    def _record(self, saved: Saved | None) -> None:
        if saved is not None:
            self.cadence.record_persist(saved.seconds)

    def _persist(self, step: int, state: StateArrays, t0: float) -> str:
        self._saving_step = step
        files, meta = pack_chunks(state)
        return self._save(step, files, meta, t0)

    def _save(self, step: int, files: Mapping[str, Data], meta: Mapping[str, Any], t0: float) -> str:
        name = self.store.save(step, files, meta)
        self._last_durable = t0
        took = time.monotonic() - t0
        self._last_report += took  # a step's dt excludes checkpoint time
        self.cadence.record_checkpoint(step, took, took)
        self.event("checkpoint-saved", step=step, name=name, persist_s=round(took, 6), stall_s=round(took, 6),
                   asynchronous=False, durable=True)
        return name

    def checkpoint_due(self, steps_done: int) -> bool:
        """Whether the cadence (every K steps, or Young's interval with ``"auto"``) asks for one now."""
        return self.cadence.due(steps_done)

    def set_cadence(self, every: int | str, mtbf_s: float | None = None) -> None:
        """Checkpoint every ``every`` steps (0: never), or ``"auto"``: Young's interval from the
        measured checkpoint cost and the MTBF, given or estimated from this run's failures."""
        self._cadence_args = (every, mtbf_s)
        elapsed, failures = self._failure_history()
        self.cadence = Cadence(every=every, mtbf_s=estimate_mtbf(elapsed, failures, mtbf_s))

    def _failure_history(self) -> tuple[float, int]:
        """(seconds since the run's first attempt, failed attempts so far), from events.jsonl."""
        first: float | None = None
        failures = 0
        for e in read_records(self.run_dir / EVENTS):
            if e.get("source") != "supervisor":
                continue
            if e.get("event") == "attempt-spawned" and first is None:
                first = float(e["time"])
            elif e.get("event") == "attempt-exited" and e.get("exit_class") not in ("completed", "user-stopped"):
                failures += 1
        return (time.time() - first if first is not None else 0.0), failures

    def complete(self, **summary: Any) -> None:
        """Mark the job done; a rerun sees :meth:`finished` and exits at once."""
        self.flush_checkpoints()
        _write_json_atomic(self.run_dir / FINAL, dict(summary, attempt=self.attempt, time=time.time()))
        self.event("job-completed", **summary)
