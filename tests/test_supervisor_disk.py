"""The supervisor and a full disk, and a job that computes a NaN: as tables, with the fake launcher
and clock of tests/supervisor_fakes.py and a fake file system's free space.

A worker's exit 74 is waited out - the supervisor waits for space, says so once, restarts when it is
back, and gives up with exit 74 after ``disk_wait`` - and is never a crash loop; exit 76 is never
retried. The supervisor's own events survive a full disk: dropped, with one warning."""

from __future__ import annotations

import errno
import io
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rundir.classify import ExitClass
from rundir.events import EventKind, Source
from rundir.exitcodes import ExitCode
from rundir.journal import read_records
from rundir.names import ENV_STANDBY, EVENTS
from runner import runfiles
from runner import supervisor as supervisor_mod
from runner.launcher import Worker
from runner.policy import RetryPolicy
from runner.runfiles import EventSink
from runner.supervisor import Outcome, Supervisor, WorkerSpec
from runner.view import PlainView
from tests.supervisor_fakes import Clock, Exit, FakeLauncher, Script, SupervisorRecords, training

MiB = 1 << 20
FULL_LINE = "error: no space left on device writing /run/losses.jsonl"
NAN_LINE = "error: the loss is nan at step 41; the last good checkpoint is step-000000040"
R, D, C, N = ExitClass.RESOURCE, ExitClass.COMPLETED, ExitClass.CRASHED, ExitClass.NON_FINITE


@pytest.fixture(autouse=True)
def exact_ticks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor_mod, "TICK", 0.125)


class StartFails(FakeLauncher):
    """A launcher whose start of attempt ``fails`` raises ENOSPC once (its log on a full disk)."""

    fails = 2

    def start(self, env: Mapping[str, str], log: Path, *, stdin_pipe: bool = False) -> Worker:
        if env.get("RUNNER_ATTEMPT") == str(self.fails):
            self.fails = -1
            raise OSError(errno.ENOSPC, "No space left on device", str(log))
        return super().start(env, log, stdin_pipe=stdin_pipe)


@dataclass
class Run(SupervisorRecords):
    outcome: Outcome
    clock: Clock
    run_dir: Path
    said: str


def supervise(tmp_path: Path, scripts: Sequence[Script], free: Callable[[float], int], *, disk_wait: float = 60.0,
              launcher: type[FakeLauncher] = FakeLauncher, standby: bool = False,
              on_sleep: Callable[[Supervisor], None] | None = None) -> Run:
    """Run ``scripts`` with ``free(t)`` bytes free on the run directory's file system at fake time t."""
    clock, out = Clock(), io.StringIO()
    run_dir = tmp_path / "run"
    spec = WorkerSpec(cmd=("fake-worker",), run_dir=run_dir, standby=standby, disk_wait=disk_wait,
                      policy=RetryPolicy(crash_loop=3, backoff_initial=0.5, jitter=0.0))
    fake = launcher(run_dir, clock, scripts)
    sup = Supervisor(spec, view=PlainView(out=out), sleep=clock.sleep, launcher=fake, clock=clock,
                     free=lambda path: free(clock.now))
    if on_sleep is not None:
        clock.on_sleep = lambda: on_sleep(sup)
    return Run(sup.run(), clock, run_dir, out.getvalue())


def full_until(t: float) -> Callable[[float], int]:
    return lambda now: 0 if now < t else 50 * MiB


FULL_AT_4 = training(0, 2, end=74, said=FULL_LINE)  # steps 0-2 from 1 s, exit 74 at 4 s
FULL_AT_START = Script(((1.0, Exit(74, FULL_LINE)),))  # no step: the disk was full before it began


@dataclass(frozen=True)
class DiskCase:
    scripts: tuple[Script, ...]
    free: Callable[[float], int]
    code: ExitCode
    classes: tuple[ExitClass, ...]
    slept: tuple[float, ...]  # the waits for space, and back-offs
    said: tuple[str, ...]  # lines the supervisor said, in order (each a part of one)
    events: tuple[EventKind, ...]  # the supervisor's disk and restart events, in order
    disk_wait: float = 60.0
    launcher: type[FakeLauncher] = FakeLauncher


WAIT_SAID = "disk full at {run}: waiting up to 60 s for space (0 MiB free, need 1 MiB)"
DF, DR, RS, GU = EventKind.DISK_FULL, EventKind.DISK_SPACE_RETURNED, EventKind.RESTART, EventKind.GAVE_UP
DISK_CASES = {
    "waits-for-space-then-restarts": DiskCase(
        (FULL_AT_4, training(3, 5)), full_until(10.0), ExitCode.OK, (R, D), (0.25, 0.5, 1.0, 2.0, 4.0),
        (WAIT_SAID, "space is back at {run} (50 MiB free after 7.8 s): restarting", "job completed"),
        (DF, DR, RS)),
    "space-there-at-once-restarts-at-once": DiskCase(
        (FULL_AT_4, training(3, 5)), full_until(0.0), ExitCode.OK, (R, D), (),
        ("attempt 1 could not write (exit 74), yet {run} has 50 MiB free: restarting",), (RS,)),
    "exits-74-in-a-row-are-no-crash-loop": DiskCase(
        (FULL_AT_START,) * 4 + (training(0, 1),), full_until(0.0), ExitCode.OK, (R, R, R, R, D), (0.5, 1.0, 2.0),
        ("job completed after 5 attempt(s)",), (RS, RS, RS, RS)),
    "gives-up-after-disk-wait": DiskCase(
        (FULL_AT_4,), full_until(1e9), ExitCode.IO_ERROR, (R,), (0.25, 0.5, 1.0, 2.0, 4.0, 2.25),
        ("disk full at {run}: waiting up to 10 s",
         "giving up: disk full at {run}: no space for 10 s (0 MiB free, need 1 MiB); free some space and rerun the "
         "same command to continue; last error: no space left on device writing /run/losses.jsonl"),
        (DF, GU), disk_wait=10.0),
    "disk-wait-0-gives-up-at-once": DiskCase(
        (FULL_AT_4,), full_until(0.0), ExitCode.IO_ERROR, (R,), (), ("giving up: the worker could not write",),
        (GU,), disk_wait=0.0),
    "a-crash-after-the-wait-is-a-crash": DiskCase(
        (FULL_AT_4, Script(((1.0, Exit(1, "boom")),)), training(3, 4)), full_until(5.0), ExitCode.OK, (R, C, D),
        (0.25, 0.5, 1.0, 0.5), ("restarting in 0.50 s after crashed (exit 1)",), (DF, DR, RS, RS)),
    "a-log-that-cannot-be-created-is-waited-out": DiskCase(
        (FULL_AT_4, training(3, 4)), full_until(0.0), ExitCode.OK, (R, D), (0.5,),
        ("cannot start attempt 2: no space left on device writing {run}/logs/attempt-002.log",), (RS, RS),
        launcher=StartFails),
    "non-finite-is-never-retried": DiskCase(
        (training(0, 40, end=76, said=NAN_LINE),), full_until(0.0), ExitCode.NON_FINITE, (N,), (),
        ("the job computed a non-finite value, not retrying: the loss is nan at step 41; the last good checkpoint "
         "is step-000000040",), (EventKind.STOPPED,)),
}


def check_disk(tmp_path: Path, case: DiskCase) -> None:
    run = supervise(tmp_path, case.scripts, case.free, disk_wait=case.disk_wait, launcher=case.launcher)
    assert run.outcome.code is case.code
    assert run.classes == list(case.classes)
    assert run.clock.slept == list(case.slept)
    at = 0
    heard = f"{run.said}error: {run.outcome.message}\n"  # the view's lines, then the command's last line
    for part in case.said:
        part = part.format(run=run.run_dir)
        found = heard.find(part, at)
        assert found >= 0, f"{part!r} not said (in order) in:\n{heard}"
        at = found
    kinds = (DF, DR, RS, GU, EventKind.STOPPED)
    got = [EventKind(e["event"]) for e in read_records(run.run_dir / EVENTS)
           if e.get("source") == "supervisor" and e.get("event") in kinds]
    assert got == list(case.events)
    assert run.said.count("disk full at") <= 1 + ("giving up: disk full" in run.said)  # said once
    (last,) = run.events(EventKind.SUPERVISOR_EXIT)
    assert last["code"] == int(case.code)


@pytest.mark.parametrize("case", DISK_CASES.values(), ids=DISK_CASES.keys())
def test_a_full_disk(tmp_path: Path, case: DiskCase) -> None:
    check_disk(tmp_path, case)


def test_the_restart_after_a_wait_says_why(tmp_path: Path) -> None:
    run = supervise(tmp_path, (FULL_AT_4, training(3, 5)), full_until(10.0))
    (restart,) = run.events(EventKind.RESTART)
    assert (restart["after_attempt"], restart["exit_class"], restart["made_progress"]) == (1, "resource", True)
    (full,) = run.events(EventKind.DISK_FULL)
    assert (full["attempt"], full["free_bytes"], full["need_bytes"], full["limit_s"]) == (1, 0, MiB, 60.0)
    (back,) = run.events(EventKind.DISK_SPACE_RETURNED)
    assert (back["free_bytes"], back["waited_s"]) == (50 * MiB, 7.75)


# Broken on purpose: the supervisor without its wait - an exit 74 is an ordinary crash - gives up in a
# crash loop where it should have waited.
def test_without_the_wait_exits_74_would_be_a_crash_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    case = DISK_CASES["exits-74-in-a-row-are-no-crash-loop"]
    monkeypatch.setattr(supervisor_mod, "classify_exit", lambda rc, **kw: C if rc == 74 else D if rc == 0 else C)
    with pytest.raises(AssertionError):
        check_disk(tmp_path, case)


# -- the supervisor's own events on a full disk ---------------------------------------------------------------


def test_an_event_sink_drops_what_it_cannot_write_and_says_so_once_per_run_of_them(tmp_path: Path) -> None:
    said: list[str] = []
    sink = EventSink(Path("/dev/full"), Source.SUPERVISOR, said.append)
    for _ in range(3):
        sink.record(EventKind.RESTART, n=1)
    assert sink.dropped == 3
    assert said == ["warning: cannot write /dev/full (no space left on device): dropping events until it can be "
                    "written"]
    sink.path = tmp_path / "events.jsonl"  # space again
    sink.record(EventKind.RESTART, n=2)
    assert [r["n"] for r in read_records(sink.path)] == [2]
    sink.path = Path("/dev/full")
    sink.record(EventKind.RESTART, n=3)
    assert len(said) == 2  # a new run of drops is said again


def test_the_supervisor_runs_on_when_its_events_cannot_be_written(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "events.jsonl")

    monkeypatch.setattr(runfiles, "record_event", full)
    run = supervise(tmp_path, (FULL_AT_4, training(3, 5)), full_until(10.0))
    assert run.outcome.code is ExitCode.OK and len(run.outcome.history) == 2
    assert run.said.count("warning: cannot write") == 1
    assert "dropping events until it can be written" in run.said


def test_a_stop_while_waiting_for_space_ends_the_run(tmp_path: Path) -> None:
    run = supervise(tmp_path, (FULL_AT_4, training(3, 5)), full_until(1e9),
                    on_sleep=lambda sup: sup.request_stop(signal.SIGTERM))
    assert run.outcome.code is ExitCode.INTERRUPTED and len(run.outcome.history) == 1
    assert [e["exit_class"] for e in run.events(EventKind.STOPPED)] == ["resource"]


class SpareFails(FakeLauncher):
    """A launcher that cannot start a warm spare: its log is on a full disk."""

    def start(self, env: Mapping[str, str], log: Path, *, stdin_pipe: bool = False) -> Worker:
        if env.get(ENV_STANDBY) == "1":
            raise OSError(errno.ENOSPC, "No space left on device", str(log))
        return super().start(env, log, stdin_pipe=stdin_pipe)


def test_a_spare_that_cannot_start_is_lost_once_per_attempt(tmp_path: Path) -> None:
    run = supervise(tmp_path, (training(0, 5, end=-9), training(6, 9)), full_until(0.0), launcher=SpareFails,
                    standby=True)
    assert run.outcome.code is ExitCode.OK and run.classes == [ExitClass.KILLED, D]
    lost = run.events(EventKind.STANDBY_LOST)
    assert len(lost) == 2  # not at every tick: once for each attempt
    assert lost[0]["pid"] is None and "No space left on device" in lost[0]["error"]
