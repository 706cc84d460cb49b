"""The supervisor's decisions, as tables: a real :class:`Supervisor` with a fake launcher and a fake
clock (tests/supervisor_fakes.py), so no Paddle and no worker process.

Each row scripts the workers (steps, heartbeats, exits, a signal to the supervisor), runs the job
and compares what the supervisor did: exit classes, signals and their times, events, back-offs,
its exit code. The ticks are binary fractions, so every time is exact. A broken ``decide`` must
fail a row: see the mutants at the end.
"""

from __future__ import annotations

import io
import json
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from rundir.classify import ExitClass
from rundir.contract import FileEffect, Observation, SendSignal
from rundir.events import EventKind
from rundir.exitcodes import ExitCode
from rundir.names import ENV_STANDBY, EVENTS, LOSSES
from runner import supervisor as supervisor_mod
from runner.policy import RetryPolicy
from runner.standby import go_line
from runner.supervisor import Outcome, Supervisor, WorkerSpec
from runner.view import PlainView
from tests.supervisor_fakes import (
    MUTANTS,
    SILENT,
    Beat,
    Clock,
    Decide,
    Exit,
    FakeLauncher,
    FakeWorker,
    Fallback,
    Freeze,
    Runaway,
    Script,
    SignalSupervisor,
    Started,
    Step,
    SupervisorRecords,
    training,
)

TICK = 0.125  # the supervisor's ticks in these tests: exact in binary, so times add up exactly
CHAOS_TICK = 0.03125


@pytest.fixture(autouse=True)
def exact_ticks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor_mod, "TICK", TICK)
    monkeypatch.setattr(supervisor_mod, "CHAOS_TICK", CHAOS_TICK)


# -- one supervised run --------------------------------------------------------------------------------


@dataclass
class Run(SupervisorRecords):
    outcome: Outcome
    launcher: FakeLauncher
    clock: Clock
    run_dir: Path
    said: str  # what the view printed

    def worker(self, attempt: int) -> FakeWorker:
        (w,) = [w for w in self.launcher.workers if w.attempt == attempt]
        return w

    def signals(self, attempt: int) -> list[tuple[float, str]]:
        return [(t, signal.Signals(s).name) for t, s in self.worker(attempt).signals]


def supervise(tmp_path: Path, scripts: Sequence[Script], *, hang_timeout: float = 5.0, startup_timeout: float = 20.0,
              grace: float = 3.0,
              standby: bool = False, spare: Script = SILENT, chaos: FakeChaos | None = None,
              crash_loop: int = 3, max_restarts: int = 20, on_sleep: Callable[[Supervisor], None] | None = None) -> Run:
    clock = Clock()
    run_dir = tmp_path / "run"
    launcher = FakeLauncher(run_dir, clock, scripts, spare)
    spec = WorkerSpec(cmd=("fake-worker",), run_dir=run_dir, hang_timeout=hang_timeout,
                      startup_timeout=startup_timeout, grace=grace,
                      policy=RetryPolicy(max_restarts=max_restarts, crash_loop=crash_loop, backoff_initial=0.5,
                                         backoff_max=30.0, jitter=0.0), standby=standby)
    out = io.StringIO()
    sup = Supervisor(spec, view=PlainView(out=out), chaos=chaos, sleep=clock.sleep, launcher=launcher,
                     clock=clock)
    launcher.request_stop = sup.request_stop
    if on_sleep is not None:
        clock.on_sleep = lambda: on_sleep(sup)
    outcome = sup.run()
    assert launcher.opened and launcher.closed
    assert all(w.returncode is not None for w in launcher.workers), "a worker was left running"
    return Run(outcome, launcher, clock, run_dir, out.getvalue())


# -- hangs ---------------------------------------------------------------------------------------------

HUNG_THEN_DONE = training(3, 5)


@dataclass(frozen=True)
class HangCase:
    first: Script
    classes: tuple[ExitClass, ...]
    killed_at: float | None  # seconds into attempt 1 when it was killed as hung
    silent_s: float | None = None
    hang_timeout: float = 5.0
    startup_timeout: float = 20.0


HANG_CASES = {
    "silent-after-step-2": HangCase(training(0, 2, end=None), (ExitClass.HUNG, ExitClass.COMPLETED), 8.125, 5.125),
    # slow is not stuck: start-up has its own deadline; a busy worker is alive; a stopped one is not
    "silent-from-the-start": HangCase(SILENT, (ExitClass.HUNG, ExitClass.COMPLETED), 20.125, 20.125),
    "a-slow-start-up-is-not-stuck": HangCase(Script(((0.5, Started(0)), (12.0, Step(0)), (13.0, Exit(0)))),
                                             (ExitClass.COMPLETED,), None),
    "stopped-in-start-up": HangCase(Script(((0.5, Started(0)), (1.0, Freeze()))),
                                    (ExitClass.HUNG, ExitClass.COMPLETED), 5.125, 5.125),
    "busy-slow-steps-are-not-stuck": HangCase(replace(training(0, 3, every=8.0), busy=True), (ExitClass.COMPLETED,),
                                              None),
    "busy-but-silent-past-the-startup-timeout": HangCase(replace(training(0, 2, end=None), busy=True),
                                                         (ExitClass.HUNG, ExitClass.COMPLETED), 23.125, 20.125),
    "heartbeats-without-steps-are-life": HangCase(
        training(0, 2, end=None, extra=[(3.0 + 4 * i, Beat()) for i in range(1, 5)] + [(20.0, Exit(0))]),
        (ExitClass.COMPLETED,), None),
    "steps-without-heartbeats-are-life": HangCase(training(0, 4, every=4.5, beats=False), (ExitClass.COMPLETED,),
                                                  None),
    "steps-the-timeout-apart": HangCase(training(0, 3, every=5.0), (ExitClass.COMPLETED,), None),
    # silent 5 s at the tick at 6 s, not more: the step comes on the next tick
    "silent-for-exactly-the-timeout": HangCase(training(0, 3, every=5.125), (ExitClass.COMPLETED,), None),
    "a-longer-timeout": HangCase(training(0, 3, every=9.0), (ExitClass.COMPLETED,), None, hang_timeout=10.0),
    "a-shorter-timeout": HangCase(training(0, 3, every=3.0), (ExitClass.HUNG, ExitClass.COMPLETED), 3.125, 2.125,
                                  hang_timeout=2.0),
}


def check_hang(tmp_path: Path, case: HangCase) -> None:
    run = supervise(tmp_path, [case.first, HUNG_THEN_DONE], hang_timeout=case.hang_timeout,
                    startup_timeout=case.startup_timeout)
    assert run.classes == list(case.classes)
    assert run.outcome.code is ExitCode.OK
    hangs = run.events(EventKind.HANG_DETECTED)
    if case.killed_at is None:
        assert hangs == [] and run.signals(1) == []
    else:
        assert run.signals(1) == [(case.killed_at, "SIGKILL")]
        assert [(h["attempt"], h["silent_s"]) for h in hangs] == [(1, case.silent_s)]


@pytest.mark.parametrize("case", HANG_CASES.values(), ids=HANG_CASES.keys())
def test_hang_detection(tmp_path: Path, case: HangCase) -> None:
    check_hang(tmp_path, case)


# -- restarts: crash loops, progress, bad input --------------------------------------------------------


@dataclass(frozen=True)
class RestartCase:
    scripts: tuple[Script, ...]
    code: ExitCode
    classes: tuple[ExitClass, ...]
    delays: tuple[float, ...]  # each restart's back-off
    message: str
    crash_loop: int = 3
    max_restarts: int = 20


BOOM = training(0, 0, end=None).ops[:1] + ((1.0, Exit(1, "RuntimeError: boom")),)
CRASH = Script(BOOM)
C, K, P, B, D = ExitClass.CRASHED, ExitClass.KILLED, ExitClass.PREEMPTED, ExitClass.BAD_INPUT, ExitClass.COMPLETED

RESTART_CASES = {
    "crash-loop-gives-up": RestartCase((CRASH,), ExitCode.GAVE_UP, (C, C, C), (0.5, 1.0),
                                       "giving up: crash loop: 3 attempts in a row died without completing a new "
                                       "step; it keeps dying at step 0 (crashed); last error: RuntimeError: boom"),
    "crash-loop-of-two": RestartCase((CRASH,), ExitCode.GAVE_UP, (C, C), (0.5,), "crash loop: 2 attempts",
                                     crash_loop=2),
    "restart-budget-spent": RestartCase((CRASH,), ExitCode.GAVE_UP, (C, C, C), (0.5, 1.0),
                                        "restart budget spent: 3 restarts without progress (--max-restarts 2)",
                                        crash_loop=10, max_restarts=2),
    "restarts-after-progress-are-free": RestartCase(
        tuple(training(2 * k, 2 * k + 1, end=1) for k in range(5)) + (training(10, 12),),
        ExitCode.OK, (C, C, C, C, C, D), (0.0,) * 5, "job completed after 6 attempt(s), 5 restart(s)"),
    "killed-and-preempted-restart-at-once": RestartCase(
        (training(0, 2, end=-9), training(3, 4, end=75), training(5, 6)), ExitCode.OK, (K, P, D), (0.0, 0.0),
        "job completed after 3 attempt(s)"),
    "a-preemption-without-progress-is-not-backed-off": RestartCase(
        (Script(((1.0, Exit(75)),)), training(0, 1)), ExitCode.OK, (P, D), (0.0,), "job completed"),
    "back-off-resets-after-progress": RestartCase(
        (CRASH, training(0, 1, end=1), CRASH, training(2, 3)), ExitCode.OK, (C, C, C, D), (0.5, 0.0, 0.5),
        "job completed"),
}
for code in (ExitCode.USAGE, ExitCode.BAD_DATA, ExitCode.LOCKED, ExitCode.UNWRITABLE, ExitCode.BAD_CONFIG):
    RESTART_CASES[f"bad-input-{int(code)}-not-retried"] = RestartCase(
        (Script(((1.0, Exit(int(code), "error: bad data /x.npz")),)),), code, (B,), (),
        f"the worker rejected its input (exit {int(code)}), not retrying: bad data /x.npz")


def check_restarts(tmp_path: Path, case: RestartCase) -> None:
    run = supervise(tmp_path, case.scripts, crash_loop=case.crash_loop, max_restarts=case.max_restarts)
    assert run.outcome.code is case.code
    assert run.classes == list(case.classes)
    assert [e["delay_s"] for e in run.events(EventKind.RESTART)] == list(case.delays)
    assert run.clock.slept == list(case.delays)
    assert case.message in run.outcome.message
    kind = {ExitCode.OK: EventKind.JOB_COMPLETED, ExitCode.GAVE_UP: EventKind.GAVE_UP}.get(case.code, EventKind.STOPPED)
    assert len(run.events(kind)) == 1
    (last,) = run.events(EventKind.SUPERVISOR_EXIT)
    assert (last["code"], last["attempts"]) == (int(case.code), len(case.classes))


@pytest.mark.parametrize("case", RESTART_CASES.values(), ids=RESTART_CASES.keys())
def test_restart_policy(tmp_path: Path, case: RestartCase) -> None:
    check_restarts(tmp_path, case)


# -- chaos: when its actions are carried out -----------------------------------------------------------


class FakeChaos:
    """Returns ``actions`` on the first tick that saw step ``at_step`` or later; arms nothing."""

    def __init__(self, at_step: int, actions: Callable[[], Sequence[SendSignal | FileEffect]]) -> None:
        self.at_step, self.actions = at_step, actions
        self.fired = False
        self.ticks: list[Observation] = []
        self.ends: list[ExitClass] = []

    def env_for(self, attempt: int) -> dict[str, str]:
        return {"FAKE_CHAOS_ATTEMPT": str(attempt)}

    def on_tick(self, obs: Observation) -> Sequence[SendSignal | FileEffect]:
        self.ticks.append(obs)
        if self.fired or obs.last_step is None or obs.last_step < self.at_step:
            return []
        self.fired = True
        return self.actions()

    def on_exit(self, result: Any) -> None:
        self.ends.append(result.exit_class)


CORRUPT = {"fault": "corrupt-checkpoint", "target_step": 3}


def corrupt(run_dir: Path) -> list[SendSignal | FileEffect]:
    def apply() -> str:
        (run_dir / "corrupted").write_text("x")
        return "corrupted a file"

    return [FileEffect(apply, fault=CORRUPT), SendSignal(signal.SIGKILL, fault=CORRUPT)]


@dataclass(frozen=True)
class ChaosCase:
    actions: Callable[[Path], Sequence[SendSignal | FileEffect]]
    first: Script
    signals: tuple[tuple[float, str], ...]  # what attempt 1 got, when
    classes: tuple[ExitClass, ...]
    faults: tuple[dict[str, Any], ...]  # the chaos-fault events, less time and source


FAULT = {"fault": "f", "target_step": 3}
STEPS = training(0, 9)  # a step a second from 1 s; step 3 at 4 s
CHAOS_CASES = {
    "sigkill-at-step-3": ChaosCase(lambda d: [SendSignal(signal.SIGKILL, fault=FAULT)], STEPS,
                                   ((4.0, "SIGKILL"),), (K, D), ({"signal": "SIGKILL", **FAULT},)),
    "sigterm-obeyed": ChaosCase(lambda d: [SendSignal(signal.SIGTERM, kill_after=2.0, fault=FAULT)], STEPS,
                                ((4.0, "SIGTERM"),), (P, D), ({"signal": "SIGTERM", **FAULT},)),
    "sigterm-ignored-killed-after-2s": ChaosCase(
        lambda d: [SendSignal(signal.SIGTERM, kill_after=2.0, fault=FAULT)], replace(STEPS, on_term=None),
        ((4.0, "SIGTERM"), (6.0, "SIGKILL")), (K, D), ({"signal": "SIGTERM", **FAULT},)),
    "sigterm-ignored-the-last-kill-after-wins": ChaosCase(
        lambda d: [SendSignal(signal.SIGTERM, kill_after=2.0), SendSignal(signal.SIGTERM, kill_after=1.0)],
        replace(STEPS, on_term=None), ((4.0, "SIGTERM"), (4.0, "SIGTERM"), (5.0, "SIGKILL")), (K, D),
        ({"signal": "SIGTERM"}, {"signal": "SIGTERM"})),
    "sigstop-is-a-hang": ChaosCase(lambda d: [SendSignal(signal.SIGSTOP, fault=FAULT)], STEPS,
                                   ((4.0, "SIGSTOP"), (9.03125, "SIGKILL")), (ExitClass.HUNG, D),
                                   ({"signal": "SIGSTOP", **FAULT},)),
    "file-effect-then-sigkill": ChaosCase(
        corrupt, STEPS, ((4.0, "SIGKILL"),), (K, D),
        ({"effect": "corrupted a file", **CORRUPT}, {"signal": "SIGKILL", **CORRUPT})),
}


def check_chaos(tmp_path: Path, case: ChaosCase) -> None:
    chaos = FakeChaos(3, lambda: case.actions(tmp_path / "run"))
    run = supervise(tmp_path, [case.first, training(3, 9)], chaos=chaos)
    assert run.signals(1) == list(case.signals)
    assert run.classes == list(case.classes) == chaos.ends
    faults = [{k: v for k, v in e.items() if k not in ("time", "source", "event", "attempt", "pid", "last_step")}
              for e in run.events(EventKind.CHAOS_FAULT)]
    assert faults == list(case.faults)
    assert {(e["attempt"], e["last_step"]) for e in run.events(EventKind.CHAOS_FAULT)} == {(1, 3)}
    assert run.worker(1).env["FAKE_CHAOS_ATTEMPT"] == "1" and run.worker(2).env["FAKE_CHAOS_ATTEMPT"] == "2"
    assert run.outcome.code is ExitCode.OK
    assert (run.run_dir / "corrupted").exists() is (case.actions is corrupt)


@pytest.mark.parametrize("case", CHAOS_CASES.values(), ids=CHAOS_CASES.keys())
def test_chaos_actions_are_carried_out_on_time(tmp_path: Path, case: ChaosCase) -> None:
    check_chaos(tmp_path, case)


def test_chaos_sees_each_tick_what_was_new(tmp_path: Path) -> None:
    chaos = FakeChaos(99, lambda: [])
    supervise(tmp_path, [training(0, 2)], chaos=chaos)
    assert [(o.attempt, o.pid) for o in chaos.ticks] == [(1, 4000)] * len(chaos.ticks)
    assert len(chaos.ticks) == 4.0 / CHAOS_TICK - 1  # every tick until it exits at 4 s
    assert [s["step"] for o in chaos.ticks for s in o.new_steps] == [0, 1, 2]
    assert [e["event"] for o in chaos.ticks for e in o.new_events] == ["attempt-started"]
    assert {o.phase for o in chaos.ticks} == {None, "train"}


# -- a stop signal to the supervisor -------------------------------------------------------------------


@dataclass(frozen=True)
class StopCase:
    first: Script
    signals: tuple[tuple[float, str], ...]
    returncode: int
    by: str


STOP_AT_2_5 = ((2.5, SignalSupervisor(signal.SIGTERM)),)
STOP_CASES = {
    "sigterm-worker-saves-and-exits": StopCase(training(0, 9, extra=STOP_AT_2_5), ((2.5, "SIGTERM"), ), 75,
                                               "SIGTERM"),
    "sigint": StopCase(training(0, 9, extra=((2.5, SignalSupervisor(signal.SIGINT)),)), ((2.5, "SIGTERM"),), 75,
                       "SIGINT"),
    "worker-ignores-sigterm-killed-after-grace": StopCase(
        training(0, 9, extra=STOP_AT_2_5, on_term=None), ((2.5, "SIGTERM"), (2.5, "SIGCONT"), (5.5, "SIGKILL")),
        -signal.SIGKILL, "SIGTERM"),
}


def check_stop(tmp_path: Path, case: StopCase) -> None:
    run = supervise(tmp_path, [case.first], grace=3.0)
    assert run.outcome.code is ExitCode.INTERRUPTED
    assert run.outcome.message == f"stopped by {case.by}; rerun the same command to continue"
    assert run.signals(1) == list(case.signals)
    assert run.classes == [ExitClass.USER_STOPPED]
    assert run.worker(1).returncode == case.returncode
    (req,) = run.events(EventKind.STOP_REQUESTED)
    assert (req["attempt"], req["signal"], req["grace_s"]) == (1, case.by, 3.0)
    assert run.events(EventKind.RESTART) == []
    assert [e["exit_class"] for e in run.events(EventKind.STOPPED)] == ["user-stopped"]


@pytest.mark.parametrize("case", STOP_CASES.values(), ids=STOP_CASES.keys())
def test_stop_signal(tmp_path: Path, case: StopCase) -> None:
    check_stop(tmp_path, case)


def test_stop_while_backing_off_starts_no_other_worker(tmp_path: Path) -> None:
    run = supervise(tmp_path, [CRASH], on_sleep=lambda sup: sup.request_stop(signal.SIGTERM))
    assert run.outcome.code is ExitCode.INTERRUPTED
    assert len(run.launcher.workers) == 1
    assert [e["exit_class"] for e in run.events(EventKind.STOPPED)] == ["crashed"]
    assert run.events(EventKind.STOP_REQUESTED) == []


# -- the warm spare ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StandbyCase:
    scripts: tuple[Script, ...]
    standby: bool
    spare: Script
    warm: tuple[bool, ...]  # attempt-spawned's warm, per attempt
    spawned_at: tuple[float, ...]  # clock times the spares were started
    lost: int = 0


DIES_AT_1_5 = Script(((1.5, Exit(1)),))
STANDBY_CASES = {
    "spare-after-the-first-step-takes-over": StandbyCase(
        (training(0, 3, end=-9), training(4, 6)), True, SILENT, (False, True), (1.0, 6.0)),
    "no-spare-without-standby": StandbyCase((training(0, 3, end=-9), training(4, 6)), False, SILENT, (False, False),
                                            ()),
    "no-spare-before-a-first-step": StandbyCase((CRASH, training(0, 1)), True, SILENT, (False, False),
                                                (2.5,)),
    "a-dead-spare-is-lost-and-the-attempt-cold": StandbyCase(
        (training(0, 3, end=-9), training(4, 6)), True, DIES_AT_1_5, (False, False), (1.0, 6.0), lost=1),
}


def check_standby(tmp_path: Path, case: StandbyCase) -> None:
    run = supervise(tmp_path, case.scripts, standby=case.standby, spare=case.spare)
    assert run.outcome.code is ExitCode.OK
    assert [e["warm"] for e in run.events(EventKind.ATTEMPT_SPAWNED)] == list(case.warm)
    spares = [w for w in run.launcher.workers if ENV_STANDBY in w.env]
    assert [w.spawned_at for w in spares] == list(case.spawned_at)
    assert [e["pid"] for e in run.events(EventKind.STANDBY_SPAWNED)] == [w.pid for w in spares]
    assert [e["returncode"] for e in run.events(EventKind.STANDBY_LOST)] == [1] * case.lost
    for n, warm in enumerate(case.warm, 1):
        w = run.worker(n)
        assert (ENV_STANDBY in w.env) is warm
        assert w.told == ([json.loads(go_line(n, {}))] if warm else [])
    idle = [w for w in spares if w.attempt is None and w.returncode != 1]
    assert len(idle) == (1 if case.spawned_at else 0)
    for w in idle:  # discarded when the run ends
        assert w.signals == [(run.clock.now - w.spawned_at, signal.SIGKILL)]


@pytest.mark.parametrize("case", STANDBY_CASES.values(), ids=STANDBY_CASES.keys())
def test_standby(tmp_path: Path, case: StandbyCase) -> None:
    check_standby(tmp_path, case)


# -- mutants: a broken decide fails the tables ---------------------------------------------------------

Check = Callable[[Path, Any], None]
#: For each broken decide, a row of the tables above that it must fail.
CAUGHT_BY: dict[str, list[tuple[Check, Any]]] = {
    "ignores-hang-timeout": [(check_hang, HANG_CASES["silent-after-step-2"]),
                             (check_chaos, CHAOS_CASES["sigstop-is-a-hang"])],
    "hang-from-the-spawn": [(check_hang, HANG_CASES["heartbeats-without-steps-are-life"])],
    "hangs-at-the-timeout": [(check_hang, HANG_CASES["silent-for-exactly-the-timeout"])],
    "ignores-cpu-progress": [(check_hang, HANG_CASES["busy-slow-steps-are-not-stuck"])],
    "ignores-startup-timeout": [(check_hang, HANG_CASES["silent-from-the-start"])],
    "hang-timeout-in-startup": [(check_hang, HANG_CASES["a-slow-start-up-is-not-stuck"])],
    "ignores-stopped": [(check_hang, HANG_CASES["stopped-in-start-up"])],
    "ignores-stop": [(check_stop, STOP_CASES["sigterm-worker-saves-and-exits"])],
    "ignores-kill-at": [(check_chaos, CHAOS_CASES["sigterm-ignored-killed-after-2s"])],
    "never-spawns-a-spare": [(check_standby, STANDBY_CASES["spare-after-the-first-step-takes-over"])],
    "spawns-a-spare-at-once": [(check_standby, STANDBY_CASES["no-spare-before-a-first-step"])],
}


def test_every_broken_decide_has_a_row_that_catches_it() -> None:
    assert sorted(CAUGHT_BY) == sorted(MUTANTS)


@pytest.mark.parametrize(("name", "check", "case"),
                         [(name, check, case) for name, rows in CAUGHT_BY.items() for check, case in rows],
                         ids=[f"{name}-{i}" for name, rows in CAUGHT_BY.items() for i in range(len(rows))])
def test_a_broken_decide_fails_a_supervisor_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str,
                                                  check: Check, case: Any) -> None:
    check(tmp_path / "sound", case)  # the row passes with the real decide ...
    broken: Decide = MUTANTS[name]
    monkeypatch.setattr(supervisor_mod, "decide", broken)
    with pytest.raises((AssertionError, Runaway)):  # ... and fails with the broken one
        check(tmp_path / "broken", case)


# -- malformed journals ----------------------------------------------------------------------------------


@pytest.mark.parametrize("line", ['{"step": "x"}', '{"step": 3}', "[1, 2]", '{"attempt": "one", "event": "x"}'])
def test_malformed_journal_records_are_skipped_not_fatal(tmp_path: Path, line: str) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in (LOSSES, EVENTS):  # left by an earlier run, or crafted
        (run_dir / name).write_text(line + "\n")
    run = supervise(tmp_path, [training(0, 2)])
    assert run.outcome.code is ExitCode.OK
    assert run.classes == [ExitClass.COMPLETED]


# -- loud fallbacks ------------------------------------------------------------------------------------

FALLBACK_REASON = "checkpoint step-000000010 is corrupt (model.safetensors: sha256 mismatch); falling back"


@pytest.mark.parametrize(("resumed", "warnings"), [
    (5, [f"warning: {FALLBACK_REASON}"]),
    (0, [f"warning: {FALLBACK_REASON}",
         "warning: attempt 2 found no valid checkpoint and restarts from step 0 (10 steps to recompute)"]),
])
def test_a_fallback_is_said_on_the_terminal(tmp_path: Path, resumed: int, warnings: list[str]) -> None:
    second = Script(((0.25, Fallback(FALLBACK_REASON)), *training(resumed, 12).ops))
    run = supervise(tmp_path, [training(0, 9, end=1), second])
    assert run.outcome.code is ExitCode.OK
    said = [line.split("] ", 1)[1] for line in run.said.splitlines() if "warning:" in line]
    assert said == warnings


def test_a_restart_from_zero_without_a_fallback_is_not_a_warning(tmp_path: Path) -> None:
    run = supervise(tmp_path, [training(0, 3, end=1), training(0, 5)])  # no checkpoint yet: nothing was lost
    assert "warning:" not in run.said
