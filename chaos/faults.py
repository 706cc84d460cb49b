"""The kinds of fault chaos can inject, and how each one hits.

=================== ==========================================================================
kind                what happens (``step`` is the fault's target, a global step index)
=================== ==========================================================================
sigkill             hard preemption: SIGKILL once the worker has completed ``step``, no notice
sigterm             preemption notice: SIGTERM once ``step`` is done; SIGKILL after the grace
checkpoint-write    the worker is armed to stop between files of the checkpoint taken after
                    ``step`` steps; it is SIGKILLed there, leaving a torn checkpoint on disk
corrupt-checkpoint  once the checkpoint after ``step`` steps is committed, one of its files is
                    truncated or gets a flipped byte (bad storage), then the worker is SIGKILLed
hang                SIGSTOP once ``step`` is done: only the heartbeat timeout can catch it
crash               the worker is armed to raise a simulated device error inside step ``step``
instance-loss       the machine is lost once ``step`` is done and it has put a checkpoint in the
                    store: the supervisor, its workers and all they started are SIGKILLed at once
                    and the run directory is deleted; a new supervisor starts on a new, empty
                    directory with the same ``--store``
store-outage        once ``step`` is done the store refuses connections (``refuse``) or holds them
                    unanswered (``hang``) for ``seconds``; training goes on, uploads are retried
=================== ==========================================================================

The last two need a remote store (``STORE_KINDS``) and happen to the machine, not in it: the chaos
run, not the supervisor, carries them out (:mod:`chaos.fleet`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = ["FaultKind", "Fault", "ARMED_KINDS", "CHECKPOINT_KINDS", "STORE_KINDS"]


class FaultKind(StrEnum):
    SIGKILL = "sigkill"
    SIGTERM = "sigterm"
    CHECKPOINT_WRITE = "checkpoint-write"
    CORRUPT_CHECKPOINT = "corrupt-checkpoint"
    HANG = "hang"
    CRASH = "crash"
    INSTANCE_LOSS = "instance-loss"
    STORE_OUTAGE = "store-outage"


#: Faults the worker must be armed for before it starts (they happen inside it).
ARMED_KINDS = frozenset({FaultKind.CHECKPOINT_WRITE, FaultKind.CRASH})
#: Faults that target a checkpoint, so their step must be one where a checkpoint is taken.
CHECKPOINT_KINDS = frozenset({FaultKind.CHECKPOINT_WRITE, FaultKind.CORRUPT_CHECKPOINT})
#: Faults that need a remote store, carried out to the machine by the chaos run.
STORE_KINDS = frozenset({FaultKind.INSTANCE_LOSS, FaultKind.STORE_OUTAGE})


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    step: int
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "step": self.step, "detail": dict(self.detail)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Fault:
        return cls(FaultKind(d["kind"]), int(d["step"]), dict(d.get("detail", {})))
