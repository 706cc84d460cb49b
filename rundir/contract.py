"""What chaos and the supervisor say to each other, and what chaos arms inside a worker.

Chaos decides; the supervisor acts. Each tick the supervisor hands chaos an :class:`Observation`
of the attempt it watches, and carries out the :class:`SendSignal` and :class:`FileEffect` values
it gets back. Faults that must happen inside the worker (a crash in a step, a stop in the middle of
a checkpoint write) are armed through the worker's environment as an :class:`Arm`.
Standard library only: the worker, chaos and the supervisor all import it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .classify import ExitClass

__all__ = [
    "ENV_CHAOS_ARM",
    "PAUSED_PHASE",
    "PAUSED_EVENT",
    "DISK_WAIT_PHASE",
    "ARM_CRASH",
    "ARM_CHECKPOINT_WRITE",
    "Arm",
    "SendSignal",
    "FileEffect",
    "Observation",
    "AttemptEnd",
    "Chaos",
]

#: The environment variable that arms a fault inside the worker: ``{"kind": K, "step": N}``.
ENV_CHAOS_ARM = "RUNNER_CHAOS_ARM"
#: The heartbeat phase, and the event, of a worker stopped by chaos in the middle of a checkpoint write.
PAUSED_PHASE = "checkpoint-write-paused"
PAUSED_EVENT = "chaos-paused-in-checkpoint-write"
#: The phase of the ticks chaos gets while the supervisor waits for disk space, no worker running
#: (pid 0): a fault that filled the disk can free it there.
DISK_WAIT_PHASE = "disk-wait"

ARM_CRASH = "crash"
ARM_CHECKPOINT_WRITE = "checkpoint-write"


@dataclass(frozen=True)
class Arm:
    """A fault armed inside the worker: ``kind`` happens at the first of its points at or after ``step``;
    in a gang of ranks, in rank ``rank`` only (None: rank 0, the only one of a single process)."""

    kind: str
    step: int
    rank: int | None = None

    def to_env(self) -> dict[str, str]:
        d: dict[str, Any] = {"kind": self.kind, "step": self.step}
        if self.rank is not None:
            d["rank"] = self.rank
        return {ENV_CHAOS_ARM: json.dumps(d)}

    @classmethod
    def from_env(cls, env: Mapping[str, str], rank: int = 0) -> Arm | None:
        """The fault armed for rank ``rank`` (0 for a single process), if any."""
        raw = env.get(ENV_CHAOS_ARM)
        if not raw:
            return None
        d = json.loads(raw)
        if int(d.get("rank") or 0) != rank:
            return None
        return cls(str(d["kind"]), int(d["step"]), None if d.get("rank") is None else int(d["rank"]))

    def fires(self, kind: str, step: int) -> bool:
        return self.kind == kind and step >= self.step


@dataclass(frozen=True)
class SendSignal:
    """Send ``sig`` to the worker; if ``kill_after`` is set, SIGKILL it if still alive that much later.
    ``rank``: to that rank of a gang alone (None: the whole worker, every rank)."""

    sig: int
    kill_after: float | None = None
    fault: dict[str, Any] | None = None  # what to record in events.jsonl
    rank: int | None = None


@dataclass(frozen=True)
class FileEffect:
    """Change files in the run directory (e.g. corrupt a checkpoint), or the world around the worker
    (a fake cloud's preemption notice); ``apply`` returns a description."""

    apply: Callable[[], str]
    fault: dict[str, Any] | None = None


@dataclass(frozen=True)
class Observation:
    """What the supervisor saw of the attempt since the last tick."""

    attempt: int
    pid: int
    new_steps: Sequence[dict[str, Any]]
    new_events: Sequence[dict[str, Any]]
    last_step: int | None
    phase: str | None


class AttemptEnd(Protocol):
    """How an attempt ended, as far as chaos needs to know."""

    @property
    def attempt(self) -> int: ...
    @property
    def exit_class(self) -> ExitClass: ...
    @property
    def last_step(self) -> int | None: ...
    @property
    def ended(self) -> float: ...


class Chaos(Protocol):
    def env_for(self, attempt: int) -> dict[str, str]: ...
    def on_tick(self, obs: Observation) -> Sequence[SendSignal | FileEffect]: ...
    def on_exit(self, result: AttemptEnd) -> None: ...
