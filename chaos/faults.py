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
disk-full           once ``step`` is done, a file (:data:`FILLER`) fills the run directory's file
                    system: the worker exits 74 at its next write that needs space, and the
                    supervisor waits for space; a few seconds later the filler is removed, and
                    the run goes on. Opt-in (root only: the simulation mounts a 64 MiB tmpfs on
                    the run directory, so that only the trial's own disk fills)
=================== ==========================================================================

The default kinds (:data:`DEFAULT_KINDS`) are the ones that are always safe to run; disk-full is
not - it needs root, and the ``mount`` it needs may be refused (a container) - so it runs only when
named (``--fault-kinds disk-full``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = ["FaultKind", "Fault", "ARMED_KINDS", "CHECKPOINT_KINDS", "RANK_KINDS", "OPT_IN_KINDS", "DEFAULT_KINDS",
           "FILLER"]


class FaultKind(StrEnum):
    SIGKILL = "sigkill"
    SIGTERM = "sigterm"
    CHECKPOINT_WRITE = "checkpoint-write"
    CORRUPT_CHECKPOINT = "corrupt-checkpoint"
    HANG = "hang"
    CRASH = "crash"
    DISK_FULL = "disk-full"


#: Faults the worker must be armed for before it starts (they happen inside it).
ARMED_KINDS = frozenset({FaultKind.CHECKPOINT_WRITE, FaultKind.CRASH})
#: Faults that target a checkpoint, so their step must be one where a checkpoint is taken.
CHECKPOINT_KINDS = frozenset({FaultKind.CHECKPOINT_WRITE, FaultKind.CORRUPT_CHECKPOINT})
#: Faults that a schedule for a gang of ranks aims at one rank (``detail["rank"]``): the signal goes
#: to that rank alone, the crash is armed in it alone; the others reach the whole gang.
RANK_KINDS = frozenset({FaultKind.SIGKILL, FaultKind.SIGTERM, FaultKind.CRASH})
#: Faults that run only when named: they need what not every machine allows (root, a mount).
OPT_IN_KINDS = frozenset({FaultKind.DISK_FULL})
#: What a chaos run draws from unless told otherwise, in a fixed order (a seed's schedule depends on it).
DEFAULT_KINDS = tuple(k for k in FaultKind if k not in OPT_IN_KINDS)
#: The file the disk-full fault fills the run directory's file system with; nothing reads it.
FILLER = ".chaos-filler"


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
