"""The run-directory files one worker writes: its lock, the heartbeat, the loss journal, its event
records, ``job.json`` and ``final.json``. Each is a thin effect; what goes in a record is decided by a
plain function beside it (:func:`loss_record`, :func:`beat_due`, :func:`config_conflict`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rundir.errors import writing
from rundir.events import EventKind, Source, record_event
from rundir.exitcodes import ExitCode, UserError
from rundir.journal import JsonlWriter, loss_problem, read_journal
from rundir.lock import RunLock
from rundir.names import ENV_ATTEMPT, FINAL, HEARTBEAT, JOB, LOSSES, WORKER_LOCK

__all__ = [
    "HEARTBEAT_EVERY_S",
    "TRAIN_PHASE",
    "worker_lock",
    "attempt_number",
    "beat_due",
    "Heartbeat",
    "loss_record",
    "LossJournal",
    "EventLog",
    "AttemptFiles",
    "config_conflict",
    "bind_config",
    "read_final",
    "write_final",
]

#: While training, the heartbeat is rewritten at most this often: each step's journal line already
#: shows the supervisor that the worker is alive.
HEARTBEAT_EVERY_S = 0.5
TRAIN_PHASE = "train"

_WORKER_IN_USE = "run directory {run_dir} is in use by another worker"


def worker_lock(run_dir: Path) -> RunLock:
    """The run directory's worker lock: held by the attempt that trains, so that a standby spare
    never trains next to a live worker (exit 69; 73 if the directory is not writable)."""
    return RunLock(run_dir, WORKER_LOCK, in_use=_WORKER_IN_USE, record_pid=False)


def attempt_number(env: Mapping[str, str], run_dir: Path) -> int:
    """The supervisor's attempt number; run by hand, one more than the journal's last attempt."""
    if env.get(ENV_ATTEMPT):
        return int(env[ENV_ATTEMPT])
    seen = [int(r.get("attempt", 0)) for r in read_journal(run_dir / LOSSES, loss_problem).records[-1:]]
    return (max(seen) + 1) if seen else 1


def beat_due(last: tuple[str, float] | None, phase: str, now: float, every_s: float) -> bool:
    """Whether to rewrite the heartbeat: always for a new phase; while training (``last`` is the phase
    last written and when) only once ``every_s`` has passed."""
    return last is None or phase != TRAIN_PHASE or last[0] != phase or now - last[1] >= every_s


class Heartbeat:
    """The ``heartbeat`` file: one JSON object (pid, attempt, phase, step, time), rewritten in place."""

    def __init__(self, path: Path, *, pid: int, attempt: int, every_s: float = HEARTBEAT_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.pid, self.attempt, self.every_s = pid, attempt, every_s
        self._clock = clock
        self._last: tuple[str, float] | None = None  # the phase last written, and when
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def beat(self, phase: str, step: int | None = None) -> None:
        """Write ``phase`` now."""
        rec = {"pid": self.pid, "attempt": self.attempt, "phase": phase, "step": step, "time": time.time()}
        data = json.dumps(rec).encode()
        with writing(self.path):
            os.pwrite(self._fd, data, 0)
            os.ftruncate(self._fd, len(data))
        self._last = (phase, self._clock())

    def training(self, step: int) -> None:
        """A training step is done: write it if :func:`beat_due` says so."""
        if beat_due(self._last, TRAIN_PHASE, self._clock(), self.every_s):
            self.beat(TRAIN_PHASE, step)

    def close(self) -> None:
        os.close(self._fd)


def loss_record(step: int, *, loss: float, epoch: int, batch: int, acc: float | None, lr: float | None,
                attempt: int, at: float, dt: float, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One line of ``losses.jsonl``; ``loss_hex`` is the loss exactly, for the bit-exact comparison.
    ``extra`` fields come first: the ones above always mean what they say."""
    loss = float(loss)
    return {**(extra or {}), "step": step, "epoch": epoch, "batch": batch, "loss": loss, "loss_hex": loss.hex(),
            "acc": None if acc is None else float(acc), "lr": None if lr is None else float(lr),
            "attempt": attempt, "time": at, "dt": dt}


class LossJournal:
    """``losses.jsonl``: one record per completed step, on disk for the supervisor when written."""

    def __init__(self, path: Path, *, attempt: int) -> None:
        self.attempt = attempt
        self._journal = JsonlWriter(path)

    def write(self, step: int, *, loss: float, epoch: int, batch: int, acc: float | None, lr: float | None,
              dt: float, extra: Mapping[str, Any] | None = None) -> None:
        self._journal.write(loss_record(step, loss=loss, epoch=epoch, batch=batch, acc=acc, lr=lr,
                                        attempt=self.attempt, at=time.time(), dt=dt, extra=extra))

    def close(self) -> None:
        self._journal.close()


class EventLog:
    """This process's records in ``events.jsonl``: the worker's, tagged with its attempt and pid, and
    a standby spare's one word, that it is ready. ``attempt`` is 0 until the spare is an attempt."""

    def __init__(self, path: Path, *, pid: int, attempt: int = 0) -> None:
        self.path, self.pid, self.attempt = path, pid, attempt

    def ids(self) -> dict[str, Any]:
        """The fields that say which worker wrote a record."""
        return {"source": Source.WORKER.value, "attempt": self.attempt, "pid": self.pid}

    def record(self, kind: EventKind, **fields: Any) -> None:
        rec = {"attempt": self.attempt, "pid": self.pid}
        rec.update(fields)
        record_event(self.path, Source.WORKER, kind, **rec)

    def standby_ready(self) -> None:
        record_event(self.path, Source.STANDBY, EventKind.STANDBY_READY, pid=self.pid)


class AttemptFiles:
    """What the run's worker holds open while it trains: the worker lock, the heartbeat and the loss
    journal. A standby spare holds none of them until the supervisor hands it the run."""

    def __init__(self, lock: RunLock, heartbeat: Heartbeat, losses: LossJournal) -> None:
        self.lock, self.heartbeat, self.losses = lock, heartbeat, losses

    @classmethod
    def open(cls, lock: RunLock, run_dir: Path, *, pid: int, attempt: int) -> AttemptFiles:
        """Open the heartbeat and the journal for ``attempt``; ``lock`` is already held."""
        return cls(lock, Heartbeat(run_dir / HEARTBEAT, pid=pid, attempt=attempt),
                   LossJournal(run_dir / LOSSES, attempt=attempt))

    def close(self) -> None:
        self.losses.close()
        self.heartbeat.close()
        self.lock.release()


def _write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``path`` whole or not at all; a failed write (a full disk) names ``path`` and leaves no
    temporary file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with writing(path):
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(obj, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, path)


def config_conflict(have: Mapping[str, Any], want: Mapping[str, Any]) -> str | None:
    """The first key (in sorted order) whose value differs between two configurations, or None."""
    diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
    return diff[0] if diff else None


def bind_config(run_dir: Path, config: Mapping[str, Any]) -> None:
    """Record the job's configuration in ``job.json``, or refuse (exit 78) one that differs from it."""
    path = run_dir / JOB
    want = json.loads(json.dumps(dict(config)))  # as it reads back from JSON: tuples are lists
    if not path.exists():
        _write_json_atomic(path, want)
        return
    try:
        have = json.loads(path.read_text())
    except ValueError:
        raise UserError(f"{path}: not valid JSON", ExitCode.BAD_CONFIG) from None
    k = config_conflict(have, want)
    if k is not None:
        raise UserError(f"{run_dir} holds a run with {k}={have.get(k)!r}, not {want.get(k)!r}; use a new --run-dir",
                        ExitCode.BAD_CONFIG)


def read_final(run_dir: Path) -> dict[str, Any] | None:
    """``final.json``, the completion record, if the run finished."""
    try:
        data = json.loads((run_dir / FINAL).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_final(run_dir: Path, summary: Mapping[str, Any], *, attempt: int) -> None:
    _write_json_atomic(run_dir / FINAL, dict(summary, attempt=attempt, time=time.time()))
