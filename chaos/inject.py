"""Arming faults and deciding when they fire; the supervisor carries out what this decides.

The :class:`Injector` follows the schedule one fault at a time. Each tick it looks at what the worker
did (steps, events, heartbeat phase) and returns actions - send this signal, corrupt that file, turn
a fake cloud's metadata server to preempted - to the supervisor, which owns the processes. Faults
that happen inside the worker are armed through the worker's environment before it starts.

A disk-full fault fills the run directory's file system; the injector frees it again at a later tick
(:data:`FREE_AFTER_S` after the fill, once the filled worker is gone - the supervisor, waiting for
space, ticks chaos meanwhile - or :data:`FREE_ANYWAY_S` after it whatever happened).
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rundir.classify import ExitClass
from rundir.contract import (
    DISK_WAIT_PHASE,
    PAUSED_EVENT,
    PAUSED_PHASE,
    Arm,
    AttemptEnd,
    FileEffect,
    Observation,
    SendSignal,
)
from rundir.events import EventKind
from rundir.paths import PathEscape, confined
from runner.worker.ranks import part_key

from .faults import ARMED_KINDS, FILLER, Fault, FaultKind
from .schedule import Schedule

__all__ = ["Injector", "FaultHit", "corrupt_file", "fill_disk", "free_disk", "FREE_AFTER_S", "FREE_ANYWAY_S",
           "MAX_FILL", "NoticeTrigger"]

#: A filled disk is freed this long after the fill, at a tick where the filled worker is gone ...
FREE_AFTER_S = 2.0
#: ... or this long after it, at any tick.
FREE_ANYWAY_S = 30.0
#: A file system with more free than this is not a chaos tmpfs: the disk-full fault leaves it alone.
MAX_FILL = 256 << 20
_MiB = 1 << 20

#: Turns the fake metadata server of a ``notice`` fault to preempted (the trial owns the servers);
#: returns what it did and when the machine is reclaimed (seconds since the epoch).
NoticeTrigger = Callable[[Fault], tuple[str, float | None]]


@dataclass(frozen=True)
class FaultHit:
    """What became of one scheduled fault."""

    kind: str
    target_step: int
    attempt: int | None
    hit_step: int | None  # the last step the worker had completed when it hit
    time: float | None
    effect: str | None = None
    missed: bool = False
    deadline: float | None = None  # notice: when the fake cloud reclaims the machine
    rank: int | None = None  # the rank of a gang it was aimed at

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "target_step": self.target_step, "attempt": self.attempt,
                "hit_step": self.hit_step, "time": self.time, "effect": self.effect, "missed": self.missed,
                **({"deadline": self.deadline} if self.deadline is not None else {}),
                **({"rank": self.rank} if self.rank is not None else {})}


def corrupt_file(path: Path, mode: str, position: float) -> str:
    """Truncate ``path`` at, or flip the byte at, ``position`` (a fraction of its length). Only a
    regular file: anything else (a FIFO would block the supervisor) is left alone, and said so."""
    if not path.is_file():
        return f"not applied: {path.parent.name}/{path.name} is not a regular file"
    data = bytearray(path.read_bytes())
    at = min(len(data) - 1, int(len(data) * position)) if data else 0
    if mode == "truncate":
        path.write_bytes(bytes(data[:at]))
        return f"truncated {path.parent.name}/{path.name} to {at} of {len(data)} bytes"
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    return f"flipped byte {at} of {path.parent.name}/{path.name}"


def fill_disk(path: Path) -> str:
    """Fill the file system of ``path``'s directory with the file ``path``: allocate what is free,
    then write until nothing more fits. Not on a file system with more than :data:`MAX_FILL` free."""
    free = shutil.disk_usage(path.parent).free
    if free > MAX_FILL:
        return f"not applied: {free // _MiB} MiB free is more than a chaos tmpfs holds"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.posix_fallocate(fd, 0, max(1, free))
        except OSError:
            pass  # more than fits by a page or so, or not supported: the writes below fill it
        block, size = bytes(_MiB), _MiB
        while size >= 512:
            try:
                os.pwrite(fd, block[:size], os.fstat(fd).st_size)
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                size //= 2
        filled = os.fstat(fd).st_size
    finally:
        os.close(fd)
    return f"filled the disk with {FILLER}: {filled / _MiB:.1f} MiB, {shutil.disk_usage(path.parent).free} bytes left"


def free_disk(path: Path) -> str:
    """Remove the filler at ``path``; says how much is free then."""
    try:
        path.unlink()
    except FileNotFoundError:
        return f"{FILLER} was gone already"
    return f"removed {FILLER}: {shutil.disk_usage(path.parent).free / _MiB:.1f} MiB free"


def _rank(f: Fault) -> int | None:
    """The rank of a gang a fault is aimed at; None: the whole worker."""
    rank = f.detail.get("rank")
    return rank if isinstance(rank, int) else None


class Injector:
    """``clock``: monotonic seconds, when to free a filled disk (fake in tests); ``notice``: what
    turns a fake cloud to preempted."""

    def __init__(self, schedule: Schedule, run_dir: Path, *, grace: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, notice: NoticeTrigger | None = None) -> None:
        self.schedule = schedule
        self.run_dir = Path(run_dir)
        self.grace = grace
        self.notice = notice
        self.pending: list[Fault] = list(schedule.faults)
        self.hits: list[FaultHit] = []
        # attempt, time, step, effect, deadline
        self._fired: tuple[int, float, int | None, str | None, float | None] | None = None
        self._clock = clock
        self._filled: tuple[float, int] | None = None  # when the disk was filled, and in which attempt

    @property
    def current(self) -> Fault | None:
        return self.pending[0] if self.pending else None

    def env_for(self, attempt: int) -> dict[str, str]:
        f = self.current
        if f is None or f.kind not in ARMED_KINDS:
            return {}
        return Arm(f.kind.value, f.step, _rank(f)).to_env()

    def _fire(self, obs: Observation, effect: str | None = None) -> dict[str, Any]:
        f = self.current
        assert f is not None
        self._fired = (obs.attempt, time.time(), obs.last_step, effect, None)
        rank = _rank(f)
        return {"fault": f.kind.value, "target_step": f.step, **({"rank": rank} if rank is not None else {})}

    def on_tick(self, obs: Observation) -> Sequence[SendSignal | FileEffect]:
        return [*self._free_due(obs), *self._due(obs)]

    def _due(self, obs: Observation) -> Sequence[SendSignal | FileEffect]:
        f = self.current
        if f is None or self._fired is not None:
            return []
        reached = obs.last_step is not None and obs.last_step >= f.step
        if f.kind is FaultKind.DISK_FULL and reached:
            return [self._fill(f, obs)]
        if f.kind is FaultKind.SIGKILL and reached:
            return [SendSignal(signal.SIGKILL, fault=self._fire(obs), rank=_rank(f))]
        if f.kind is FaultKind.SIGTERM and reached:
            return [SendSignal(signal.SIGTERM, kill_after=self.grace, fault=self._fire(obs), rank=_rank(f))]
        if f.kind is FaultKind.HANG and reached:
            return [SendSignal(signal.SIGSTOP, fault=self._fire(obs), rank=_rank(f))]
        if f.kind is FaultKind.NOTICE and reached:
            return [self._give_notice(f, obs)]
        paused = obs.phase == PAUSED_PHASE or any(e.get("event") == PAUSED_EVENT for e in obs.new_events)
        if f.kind is FaultKind.CHECKPOINT_WRITE and paused:
            return [SendSignal(signal.SIGKILL, fault=self._fire(obs), rank=_rank(f))]
        if f.kind is FaultKind.CORRUPT_CHECKPOINT:
            for e in obs.new_events:
                step = e.get("step")
                if e.get("event") == EventKind.CHECKPOINT_SAVED and isinstance(step, int) and step >= f.step:
                    return self._corrupt(f, obs, e.get("name"), step)
        return []

    def _fill(self, f: Fault, obs: Observation) -> FileEffect:
        """Fill the run directory's file system (see :func:`fill_disk`); freed by :meth:`_free_due`."""

        def apply() -> str:
            try:
                what = fill_disk(self.run_dir / FILLER)
            except OSError as exc:
                what = f"not applied: {exc.strerror or exc}"
            self._fired = (obs.attempt, time.time(), obs.last_step, what, None)
            if not what.startswith("not applied"):
                self._filled = (self._clock(), obs.attempt)
            return what

        return FileEffect(apply, fault=self._fire(obs))

    def _free_due(self, obs: Observation) -> list[FileEffect]:
        """Remove the filler, if it is time: see the module's docstring."""
        if self._filled is None:
            return []
        at, attempt = self._filled
        waited = self._clock() - at
        gone = obs.phase == DISK_WAIT_PHASE or obs.attempt != attempt
        if waited < FREE_ANYWAY_S and not (gone and waited >= FREE_AFTER_S):
            return []
        self._filled = None
        return [FileEffect(lambda: free_disk(self.run_dir / FILLER), fault={"fault": FaultKind.DISK_FULL.value,
                                                                             "freed": True})]

    def _corrupt(self, f: Fault, obs: Observation, name: object, step: int) -> list[SendSignal | FileEffect]:
        """Corrupt the file of checkpoint ``name`` after ``step`` steps (from the worker's event) that
        the fault names - in a gang, rank R's part of it where the fault is aimed at a rank R > 0 -
        then SIGKILL the worker (that rank). Both names are confined: the checkpoint to the checkpoints
        directory, the file to the checkpoint (the schedule's loader checked the file's name already)."""
        rank = _rank(f)

        def apply() -> str:
            try:
                if rank:
                    path = confined(self.run_dir, part_key(step, rank))
                else:
                    ckpt = confined(self.run_dir / "checkpoints", name)
                    path = confined(ckpt, f.detail.get("file", "model.safetensors"))
                what = corrupt_file(path, str(f.detail.get("mode", "flip-byte")), float(f.detail.get("position", 0.5)))
            except PathEscape as exc:
                what = f"not applied: {exc}"
            except OSError as exc:
                what = f"not applied: {exc.strerror or exc}"
            self._fired = (obs.attempt, time.time(), obs.last_step, what, None)
            return what

        fault = self._fire(obs)
        return [FileEffect(apply, fault=fault), SendSignal(signal.SIGKILL, fault=fault, rank=rank)]

    def _give_notice(self, f: Fault, obs: Observation) -> FileEffect:
        """The cloud's notice, through the trial's fake metadata server; the supervisor must hear it."""

        def apply() -> str:
            what, deadline = self.notice(f) if self.notice is not None else ("not applied: no metadata server", None)
            self._fired = (obs.attempt, time.time(), obs.last_step, what, deadline)
            return what

        return FileEffect(apply, fault=self._fire(obs))

    def on_exit(self, result: AttemptEnd) -> None:
        f = self.current
        if f is None:
            return
        completed = result.exit_class is ExitClass.COMPLETED
        if self._fired is not None:
            attempt, t, step, effect, deadline = self._fired
            self.hits.append(FaultHit(f.kind.value, f.step, attempt, step, t, effect, deadline=deadline, rank=_rank(f)))
        elif f.kind is FaultKind.CRASH and result.exit_class is ExitClass.CRASHED:
            self.hits.append(FaultHit(f.kind.value, f.step, result.attempt, result.last_step, result.ended,
                                      rank=_rank(f)))
        elif not completed:
            return  # the attempt died of something else: the fault is still due
        else:
            self.hits.append(FaultHit(f.kind.value, f.step, None, None, None, missed=True, rank=_rank(f)))
        self.pending.pop(0)
        self._fired = None
        if completed:  # the job is done: whatever is still scheduled can no longer hit
            self.hits.extend(FaultHit(p.kind.value, p.step, None, None, None, missed=True) for p in self.pending)
            self.pending.clear()
