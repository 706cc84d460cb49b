"""The fault points chaos can arm inside a worker (:class:`rundir.contract.Arm`, from the attempt's
environment): a crash in a training step, and a stop for good in the middle of a checkpoint write,
between its files, which leaves a torn checkpoint for the supervisor to find after its SIGKILL.

Whether a point fires is a plain function of the arm, the point and the step (:func:`fires`); what
happens then is in :class:`FaultPoints`. Chaos itself is not imported: it sits above the worker API.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum
from typing import Any, NoReturn, Protocol

from rundir.contract import ARM_CHECKPOINT_WRITE, ARM_CRASH, PAUSED_PHASE, Arm
from rundir.events import EventKind

from .files import EventLog

__all__ = ["SimulatedDeviceError", "FaultPoint", "fires", "Beat", "FaultPoints"]


class SimulatedDeviceError(RuntimeError):
    """Raised inside a training step by the ``crash`` chaos fault."""


class FaultPoint(Enum):
    """Where in the worker an armed fault can happen."""

    STEP = "step"  # a training step is reported
    CHECKPOINT_FILES = "checkpoint-files"  # between a synchronous checkpoint's files, in this process
    CHECKPOINT_WRITER = "checkpoint-writer"  # between an asynchronous checkpoint's files, in the writer


#: The armed kind that fires at each point.
_KIND_AT = {
    FaultPoint.STEP: ARM_CRASH,
    FaultPoint.CHECKPOINT_FILES: ARM_CHECKPOINT_WRITE,
    FaultPoint.CHECKPOINT_WRITER: ARM_CHECKPOINT_WRITE,
}


def fires(arm: Arm | None, point: FaultPoint, step: int) -> bool:
    """Whether ``arm`` fires at ``point`` in ``step``: its kind is the point's, at or after its step."""
    return arm is not None and arm.fires(_KIND_AT[point], step)


class Beat(Protocol):
    def __call__(self, phase: str, step: int | None = None) -> None: ...


class FaultPoints:
    """The armed fault, if any, and what each point does when it fires. ``sleep`` is the wait of a
    paused worker (for ever: the supervisor SIGKILLs it); tests put in one that raises."""

    def __init__(self, events: EventLog, beat: Beat, *, arm: Arm | None = None,
                 sleep: Callable[[float], Any] = time.sleep) -> None:
        self.arm = arm
        self._events, self._beat, self._sleep = events, beat, sleep

    def step(self, step: int) -> None:
        """A training step is done: the ``crash`` fault raises here, once."""
        if fires(self.arm, FaultPoint.STEP, step):
            self.arm = None
            raise SimulatedDeviceError(f"simulated device error in step {step} (chaos fault 'crash')")

    def between_files(self, step: int, fname: str) -> None:
        """A synchronous checkpoint of ``step`` has written ``fname``: stop here, torn, if armed."""
        if fires(self.arm, FaultPoint.CHECKPOINT_FILES, step):
            self._beat(PAUSED_PHASE, step=step)
            self._events.record(EventKind.CHAOS_PAUSED, step=step, after_file=fname)
            self._stay()

    def writer_pause(self, step: int) -> dict[str, Any] | None:
        """For an asynchronous checkpoint of ``step``: the record the writer appends before it stops
        between the files for good, if armed (see ``CheckpointWriter.submit``)."""
        if not fires(self.arm, FaultPoint.CHECKPOINT_WRITER, step):
            return None
        ids = self._events.ids()
        return {"source": ids["source"], "event": EventKind.CHAOS_PAUSED.value, "attempt": ids["attempt"],
                "pid": ids["pid"], "step": step}

    def paused(self, step: int) -> NoReturn:
        """The writer has stopped with a torn checkpoint of ``step``: say so, and wait for the kill."""
        self._beat(PAUSED_PHASE, step=step)
        self._stay()

    def _stay(self) -> NoReturn:
        while True:
            self._sleep(3600)
