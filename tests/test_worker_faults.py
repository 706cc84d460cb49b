"""The fault points chaos arms inside a worker (runner/worker/faults.py): which armed kind fires at
which point and step, as a table, and what each point does then - with a ``sleep`` that raises, so
that a paused worker's wait for its SIGKILL ends the test instead."""

from __future__ import annotations

from pathlib import Path

import pytest

from rundir.contract import ARM_CHECKPOINT_WRITE, ARM_CRASH, PAUSED_EVENT, PAUSED_PHASE, Arm
from rundir.events import EventKind
from rundir.names import EVENTS
from runner.worker.faults import FaultPoint, FaultPoints, SimulatedDeviceError, fires
from runner.worker.files import EventLog
from tests.helpers.readers import jsonl

STEP, FILES, WRITER = FaultPoint.STEP, FaultPoint.CHECKPOINT_FILES, FaultPoint.CHECKPOINT_WRITER


@pytest.mark.parametrize(("arm", "point", "step", "want"), [
    (None, STEP, 5, False),  # nothing armed
    (None, WRITER, 5, False),
    (Arm(ARM_CRASH, 3), STEP, 2, False),  # before its step
    (Arm(ARM_CRASH, 3), STEP, 3, True),
    (Arm(ARM_CRASH, 3), STEP, 7, True),  # at the first point at or after its step
    (Arm(ARM_CRASH, 3), FILES, 3, False),  # a crash is not a stop in a checkpoint
    (Arm(ARM_CRASH, 3), WRITER, 3, False),
    (Arm(ARM_CHECKPOINT_WRITE, 4), STEP, 4, False),  # nor the other way round
    (Arm(ARM_CHECKPOINT_WRITE, 4), FILES, 3, False),
    (Arm(ARM_CHECKPOINT_WRITE, 4), FILES, 4, True),
    (Arm(ARM_CHECKPOINT_WRITE, 4), WRITER, 4, True),
    (Arm(ARM_CHECKPOINT_WRITE, 4), WRITER, 6, True),
    (Arm("hang", 0), STEP, 9, False),  # faults the supervisor carries out arm no point here
    (Arm("hang", 0), WRITER, 9, False),
])
def test_fires(arm: Arm | None, point: FaultPoint, step: int, want: bool) -> None:
    assert fires(arm, point, step) is want


def test_every_point_has_a_kind() -> None:
    for point in FaultPoint:
        fires(Arm(ARM_CRASH, 0), point, 0)  # a point left out of the table would raise KeyError


def test_the_paused_event_is_the_event_kind_of_the_contract() -> None:
    assert EventKind.CHAOS_PAUSED.value == PAUSED_EVENT


class Stop(Exception):
    """Raised by the fake sleep: the worker would wait here for ever."""


class Beats:
    def __init__(self) -> None:
        self.phases: list[tuple[str, int | None]] = []

    def __call__(self, phase: str, step: int | None = None) -> None:
        self.phases.append((phase, step))


def never(seconds: float) -> None:
    raise Stop


@pytest.fixture
def log(tmp_path: Path) -> EventLog:
    return EventLog(tmp_path / EVENTS, pid=42, attempt=2)


def test_a_crash_raises_in_the_first_step_at_or_after_its_own_and_once(log: EventLog) -> None:
    points = FaultPoints(log, Beats(), arm=Arm(ARM_CRASH, 3), sleep=never)
    points.step(2)
    with pytest.raises(SimulatedDeviceError, match="step 4"):
        points.step(4)
    points.step(5)  # disarmed: the attempt is over anyway, and a rerun of the step must not fail again
    assert points.arm is None


def test_a_synchronous_checkpoint_armed_to_pause_stops_between_its_files(log: EventLog) -> None:
    beats = Beats()
    points = FaultPoints(log, beats, arm=Arm(ARM_CHECKPOINT_WRITE, 4), sleep=never)
    points.between_files(3, "a.bin")  # before its step: goes on
    assert beats.phases == [] and jsonl(log.path) == []
    with pytest.raises(Stop):
        points.between_files(4, "a.bin")
    assert beats.phases == [(PAUSED_PHASE, 4)]
    (paused,) = jsonl(log.path)
    assert (paused["source"], paused["event"], paused["attempt"], paused["pid"], paused["step"],
            paused["after_file"]) == ("worker", PAUSED_EVENT, 2, 42, 4, "a.bin")


def test_an_asynchronous_checkpoint_armed_to_pause_hands_the_writer_its_record(log: EventLog) -> None:
    beats = Beats()
    points = FaultPoints(log, beats, arm=Arm(ARM_CHECKPOINT_WRITE, 4), sleep=never)
    assert points.writer_pause(3) is None
    assert points.writer_pause(4) == {"source": "worker", "event": PAUSED_EVENT, "attempt": 2, "pid": 42, "step": 4}
    assert FaultPoints(log, beats, arm=Arm(ARM_CRASH, 4)).writer_pause(4) is None
    with pytest.raises(Stop):
        points.paused(4)  # once the writer has stopped: the heartbeat says so, and the worker waits
    assert beats.phases == [(PAUSED_PHASE, 4)]
    assert jsonl(log.path) == []  # the writer appends the record, not this process
