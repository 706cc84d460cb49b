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
notice              a cloud's preemption notice (opt-in): once ``step`` is done, the fake metadata
                    server of ``detail["cloud"]`` (aws, gcp or azure) says the machine goes in
                    ``detail["window_s"]`` s; the supervisor saves, exits 75, and a new one goes on
instance-loss       the machine is lost once ``step`` is done and it has put a checkpoint in the
                    store: the supervisor, its workers and all they started are SIGKILLed at once
                    and the run directory is deleted; a new supervisor starts on a new, empty
                    directory with the same ``--store``
store-outage        once ``step`` is done the store refuses connections (``refuse``) or holds them
                    unanswered (``hang``) for ``seconds``; training goes on, uploads are retried
=================== ==========================================================================

The default kinds (:data:`DEFAULT_KINDS`) are the ones that are always safe to run; disk-full is
not - it needs root, and the ``mount`` it needs may be refused (a container) - so it runs only when
named (``--fault-kinds disk-full``); nor is a notice, which starts a new supervisor each time.
The last two need a remote store (``STORE_KINDS``) and happen to the machine, not in it: the chaos
run, not the supervisor, carries them out (:mod:`chaos.fleet`); they are drawn by default only when
a ``--store`` is given.

In a gang of ranks (``--nproc-per-node N``) every fault that happens inside the gang is aimed at one
rank (:data:`RANK_KINDS`); a notice, a full disk and a store outage happen to the whole machine; an
instance loss is not for a gang (:data:`GANG_REFUSED`). ``docs/multi-rank.md`` has the table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = ["FaultKind", "Fault", "ARMED_KINDS", "CHECKPOINT_KINDS", "RANK_KINDS", "OPT_IN_KINDS", "DEFAULT_KINDS",
           "FILLER", "NOTICE_CLOUDS", "NOTICE_WINDOW_S", "STORE_KINDS", "GANG_REFUSED", "gang_refusal"]


class FaultKind(StrEnum):
    SIGKILL = "sigkill"
    SIGTERM = "sigterm"
    CHECKPOINT_WRITE = "checkpoint-write"
    CORRUPT_CHECKPOINT = "corrupt-checkpoint"
    HANG = "hang"
    CRASH = "crash"
    DISK_FULL = "disk-full"
    NOTICE = "notice"
    INSTANCE_LOSS = "instance-loss"
    STORE_OUTAGE = "store-outage"


#: Faults the worker must be armed for before it starts (they happen inside it).
ARMED_KINDS = frozenset({FaultKind.CHECKPOINT_WRITE, FaultKind.CRASH})
#: Faults that target a checkpoint, so their step must be one where a checkpoint is taken.
CHECKPOINT_KINDS = frozenset({FaultKind.CHECKPOINT_WRITE, FaultKind.CORRUPT_CHECKPOINT})
#: Faults that a schedule for a gang of ranks aims at one rank (``detail["rank"]``): the signal (a
#: SIGSTOP for a hang) goes to that rank alone; the crash and the stop in a checkpoint write are armed
#: in it alone (rank 0 stops between the files it commits, another rank in the middle of its part);
#: a corrupt-checkpoint damages one of rank 0's files, or rank R's part of the checkpoint. The
#: others reach the whole gang (see ``docs/multi-rank.md``).
RANK_KINDS = frozenset({FaultKind.SIGKILL, FaultKind.SIGTERM, FaultKind.CRASH, FaultKind.HANG,
                        FaultKind.CHECKPOINT_WRITE, FaultKind.CORRUPT_CHECKPOINT})
#: Faults that need a remote store, carried out to the machine by the chaos run.
STORE_KINDS = frozenset({FaultKind.INSTANCE_LOSS, FaultKind.STORE_OUTAGE})
#: Faults that run only when named (``--fault-kinds``): disk-full needs what not every machine allows
#: (root, a mount); a notice ends the supervisor, and starting a new one (a fork server that imports
#: Paddle again) costs a few seconds a notice.
OPT_IN_KINDS = frozenset({FaultKind.DISK_FULL, FaultKind.NOTICE})
#: What a chaos run draws from unless told otherwise, in a fixed order (a seed's schedule depends on
#: it); the store kinds are added where there is a store (see ``chaos.simulate``).
DEFAULT_KINDS = tuple(k for k in FaultKind if k not in OPT_IN_KINDS and k not in STORE_KINDS)
#: Kinds a gang of ranks does not take, and why: asked for by name with ``--nproc-per-node`` N > 1,
#: chaos refuses them (exit 78); a gang's default kinds leave them out.
GANG_REFUSED: Mapping[FaultKind, str] = {
    FaultKind.INSTANCE_LOSS: "a new machine restores rank 0's checkpoints from the store, but not the other ranks' "
                             "parts, which stay on the lost machine's disk: the gang could only start over from "
                             "step 0",
}


def gang_refusal(kinds: Iterable[FaultKind], ranks: int) -> str | None:
    """Why a gang of ``ranks`` cannot take these fault kinds (:data:`GANG_REFUSED`), or None."""
    if ranks <= 1:
        return None
    refused = [k for k in dict.fromkeys(kinds) if k in GANG_REFUSED]
    if not refused:
        return None
    return "; ".join(f"{k.value} is not for a gang of ranks (--nproc-per-node {ranks}): {GANG_REFUSED[k]}"
                     for k in refused)


#: The file the disk-full fault fills the run directory's file system with; nothing reads it.
FILLER = ".chaos-filler"
#: The clouds a notice comes from, and its window from notice to reclaim, scaled down from minutes.
NOTICE_CLOUDS = ("aws", "gcp", "azure")
NOTICE_WINDOW_S = 5.0


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
