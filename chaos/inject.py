"""Arming faults and deciding when they fire; the supervisor carries out what this decides.

The :class:`Injector` follows the schedule one fault at a time. Each tick it looks at what the worker
did (steps, events, heartbeat phase) and returns actions - send this signal, corrupt that file, turn
a fake cloud's metadata server to preempted - to the supervisor, which owns the processes. Faults
that happen inside the worker are armed through the worker's environment before it starts.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rundir.classify import ExitClass
from rundir.contract import PAUSED_EVENT, PAUSED_PHASE, Arm, AttemptEnd, FileEffect, Observation, SendSignal
from rundir.events import EventKind
from rundir.paths import PathEscape, confined

from .faults import ARMED_KINDS, Fault, FaultKind
from .schedule import Schedule

__all__ = ["Injector", "FaultHit", "corrupt_file", "NoticeTrigger"]

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

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "target_step": self.target_step, "attempt": self.attempt,
                "hit_step": self.hit_step, "time": self.time, "effect": self.effect, "missed": self.missed,
                **({"deadline": self.deadline} if self.deadline is not None else {})}


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


class Injector:
    def __init__(self, schedule: Schedule, run_dir: Path, *, grace: float = 5.0,
                 notice: NoticeTrigger | None = None) -> None:
        self.schedule = schedule
        self.run_dir = Path(run_dir)
        self.grace = grace
        self.notice = notice
        self.pending: list[Fault] = list(schedule.faults)
        self.hits: list[FaultHit] = []
        # attempt, time, step, effect, deadline
        self._fired: tuple[int, float, int | None, str | None, float | None] | None = None

    @property
    def current(self) -> Fault | None:
        return self.pending[0] if self.pending else None

    def env_for(self, attempt: int) -> dict[str, str]:
        f = self.current
        if f is None or f.kind not in ARMED_KINDS:
            return {}
        return Arm(f.kind.value, f.step).to_env()

    def _fire(self, obs: Observation, effect: str | None = None) -> dict[str, Any]:
        f = self.current
        assert f is not None
        self._fired = (obs.attempt, time.time(), obs.last_step, effect, None)
        return {"fault": f.kind.value, "target_step": f.step}

    def on_tick(self, obs: Observation) -> Sequence[SendSignal | FileEffect]:
        f = self.current
        if f is None or self._fired is not None:
            return []
        reached = obs.last_step is not None and obs.last_step >= f.step
        if f.kind is FaultKind.SIGKILL and reached:
            return [SendSignal(signal.SIGKILL, fault=self._fire(obs))]
        if f.kind is FaultKind.SIGTERM and reached:
            return [SendSignal(signal.SIGTERM, kill_after=self.grace, fault=self._fire(obs))]
        if f.kind is FaultKind.HANG and reached:
            return [SendSignal(signal.SIGSTOP, fault=self._fire(obs))]
        if f.kind is FaultKind.NOTICE and reached:
            return [self._give_notice(f, obs)]
        paused = obs.phase == PAUSED_PHASE or any(e.get("event") == PAUSED_EVENT for e in obs.new_events)
        if f.kind is FaultKind.CHECKPOINT_WRITE and paused:
            return [SendSignal(signal.SIGKILL, fault=self._fire(obs))]
        if f.kind is FaultKind.CORRUPT_CHECKPOINT:
            for e in obs.new_events:
                step = e.get("step")
                if e.get("event") == EventKind.CHECKPOINT_SAVED and isinstance(step, int) and step >= f.step:
                    return self._corrupt(f, obs, e.get("name"))
        return []

    def _corrupt(self, f: Fault, obs: Observation, name: object) -> list[SendSignal | FileEffect]:
        """Corrupt the file of checkpoint ``name`` (from the worker's event) that the fault names, then
        SIGKILL the worker. Both names are confined: the checkpoint to the checkpoints directory, the
        file to the checkpoint (the schedule's loader checked the file's name already)."""

        def apply() -> str:
            try:
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
        return [FileEffect(apply, fault=fault), SendSignal(signal.SIGKILL, fault=fault)]

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
            self.hits.append(FaultHit(f.kind.value, f.step, attempt, step, t, effect, deadline=deadline))
        elif f.kind is FaultKind.CRASH and result.exit_class is ExitClass.CRASHED:
            self.hits.append(FaultHit(f.kind.value, f.step, result.attempt, result.last_step, result.ended))
        elif not completed:
            return  # the attempt died of something else: the fault is still due
        else:
            self.hits.append(FaultHit(f.kind.value, f.step, None, None, None, missed=True))
        self.pending.pop(0)
        self._fired = None
        if completed:  # the job is done: whatever is still scheduled can no longer hit
            self.hits.extend(FaultHit(p.kind.value, p.step, None, None, None, missed=True) for p in self.pending)
            self.pending.clear()
