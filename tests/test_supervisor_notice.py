"""The supervisor on a preemption notice, as a table: a real :class:`Supervisor` with the fake launcher
and clock (tests/supervisor_fakes.py), notices handed in as a watcher thread would at given fake
times. A notice stops the worker with a grace cut to the deadline, and the supervisor exits 75
instead of restarting; an early warning is only reported; a second notice is recorded, not acted on;
under Kubernetes or Slurm a signal to the supervisor is the notice. A broken ``decide`` that ignores
notices must fail a row."""

from __future__ import annotations

import io
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from rundir.classify import ExitClass
from rundir.events import EventKind
from rundir.exitcodes import ExitCode
from rundir.names import EVENTS
from runner import supervisor as supervisor_mod
from runner.notice import Notice, NoticeChoice, NoticeKind, NoticeSource
from runner.policy import RetryPolicy
from runner.preempt import NoticeSettings
from runner.supervisor import Outcome, Supervisor, WorkerSpec
from runner.view import PlainView
from runner.watch import Decision, Watch, decide
from tests.supervisor_fakes import (
    WALL0,
    Clock,
    Exit,
    FakeLauncher,
    Runaway,
    Script,
    SignalSupervisor,
    SupervisorRecords,
    training,
)

TICK = 0.125


@pytest.fixture(autouse=True)
def exact_ticks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor_mod, "TICK", TICK)


@dataclass(frozen=True)
class Give:
    """A notice handed in at fake time ``at``, ``left`` seconds before its deadline (None: no deadline)."""

    at: float
    kind: NoticeKind = NoticeKind.TERMINATE
    left: float | None = 10.0
    source: NoticeSource = NoticeSource.AWS
    key: str = "1"

    def notice(self, clock: Clock) -> Notice:
        now = clock.wall()
        return Notice(self.source, self.kind, None if self.left is None else now + self.left, now, {"id": self.key})


@dataclass
class Run(SupervisorRecords):
    outcome: Outcome
    launcher: FakeLauncher
    run_dir: Path
    said: str

    def signals(self, attempt: int) -> list[tuple[float, str]]:
        (w,) = [w for w in self.launcher.workers if w.attempt == attempt]
        return [(t, signal.Signals(s).name) for t, s in w.signals]


def supervise(tmp_path: Path, scripts: Sequence[Script], gives: Sequence[Give] = (), *, grace: float = 3.0,
              settings: NoticeSettings = NoticeSettings(NoticeChoice.AWS),
              on_sleep: Callable[[Supervisor], None] | None = None, signals_are_signals: bool = True) -> Run:
    clock = Clock()
    run_dir = tmp_path / "run"
    launcher = FakeLauncher(run_dir, clock, scripts)
    spec = WorkerSpec(cmd=("fake-worker",), run_dir=run_dir, hang_timeout=5.0, startup_timeout=20.0, grace=grace,
                      policy=RetryPolicy(crash_loop=3, backoff_initial=0.5, backoff_max=30.0, jitter=0.0),
                      standby=False, notice=settings)
    out = io.StringIO()
    sup = Supervisor(spec, view=PlainView(out=out), sleep=clock.sleep, launcher=launcher, clock=clock)
    sup.notices._sources_for = lambda *a: []  # watch nothing: the notices come from the table
    sup.notices.wall = clock.wall
    # A signal from a script reaches the supervisor as from the kernel: through its handler.
    launcher.request_stop = (lambda s: sup._on_signal(s, None)) if signals_are_signals else sup.request_stop
    for g in gives:
        clock.at(g.at, lambda g=g: sup.notices.deliver(g.notice(clock)))
    if on_sleep is not None:
        clock.on_sleep = lambda: on_sleep(sup)
    outcome = sup.run()
    assert launcher.opened and launcher.closed
    assert all(w.returncode is not None for w in launcher.workers), "a worker was left running"
    return Run(outcome, launcher, run_dir, out.getvalue())


def deadline_text(left: float, at: float) -> str:
    import time

    return time.strftime("%H:%M:%SZ", time.gmtime(WALL0 + at + left))


@dataclass(frozen=True)
class NoticeCase:
    first: Script
    gives: tuple[Give, ...]
    code: ExitCode
    classes: tuple[ExitClass, ...]
    signals: tuple[tuple[float, str], ...]  # what attempt 1 got, when (seconds after its start)
    reactions: tuple[str, ...]  # of the preemption-notice records, in order
    grace_s: float | None = None  # stop-requested's grace
    message: str = ""
    settings: NoticeSettings = NoticeSettings(NoticeChoice.AWS)
    handled: dict[str, Any] = field(default_factory=dict)  # fields of notice-handled


STEPS = training(0, 9)  # a step a second from 1 s; step 2 at 3 s
AT = 3.5  # after step 2: three steps done
CASES = {
    "a-notice-stops-the-worker-and-exits-75": NoticeCase(
        STEPS, (Give(AT),), ExitCode.PREEMPTED, (ExitClass.PREEMPTED,), ((AT, "SIGTERM"),),
        ("act",), 3.0,
        f"preempted by aws notice (terminate at {deadline_text(10.0, AT)}): state saved at step 3; rerun on another "
        "machine to continue",
        handled={"saved_step": 3, "steps_lost": 0, "notice_to_commit_s": 0.0, "before_deadline": True,
                 "deadline_slack_s": 10.0, "returncode": 75, "notice": "aws", "notice_kind": "terminate"}),
    "the-grace-ends-before-the-deadline": NoticeCase(
        replace(STEPS, on_term=None), (Give(AT, left=4.0),), ExitCode.PREEMPTED, (ExitClass.KILLED,),
        ((AT, "SIGTERM"), (AT, "SIGCONT"), (5.5, "SIGKILL")), ("act",), 2.0,
        "the worker did not save its state in time (killed (SIGKILL)); its newest checkpoint is at step 0 (no "
        "checkpoint yet), 5 steps to recompute",
        handled={"saved_step": None, "steps_lost": 5, "checkpoint": None, "before_deadline": False}),
    "a-second-notice-is-recorded-not-acted-on": NoticeCase(
        STEPS, (Give(AT), Give(AT, key="2")), ExitCode.PREEMPTED, (ExitClass.PREEMPTED,),
        ((AT, "SIGTERM"),), ("act", "record"), 3.0, "state saved at step 3"),
    "an-early-warning-is-reported-only": NoticeCase(
        STEPS, (Give(AT, NoticeKind.REBALANCE, left=None),), ExitCode.OK, (ExitClass.COMPLETED,), (), ("report",)),
    "act-on-rebalance": NoticeCase(
        STEPS, (Give(AT, NoticeKind.REBALANCE, left=None),), ExitCode.PREEMPTED, (ExitClass.PREEMPTED,),
        ((AT, "SIGTERM"),), ("act",), 3.0,
        "preempted by aws notice (rebalance): state saved at step 3",
        settings=NoticeSettings(NoticeChoice.AWS, act_on_early=True)),
    "a-notice-in-start-up-before-any-step": NoticeCase(
        STEPS, (Give(0.25),), ExitCode.PREEMPTED, (ExitClass.PREEMPTED,), ((0.25, "SIGTERM"),),
        ("act",), 3.0, "state saved at step 0 (no checkpoint yet)",
        handled={"last_step": None, "steps_lost": 0, "checkpoint": None}),
    "k8s-sigterm-to-the-supervisor-is-the-notice": NoticeCase(
        training(0, 9, extra=((AT, SignalSupervisor(signal.SIGTERM)),)), (), ExitCode.PREEMPTED,
        (ExitClass.PREEMPTED,), ((AT, "SIGTERM"),), ("act",), 3.0,
        "preempted by k8s notice (SIGTERM): state saved at step 3", settings=NoticeSettings(NoticeChoice.K8S)),
    "slurm-usr1-is-the-notice": NoticeCase(
        training(0, 9, extra=((AT, SignalSupervisor(signal.SIGUSR1)),)), (), ExitCode.PREEMPTED,
        (ExitClass.PREEMPTED,), ((AT, "SIGTERM"),), ("act",), 3.0,
        "preempted by slurm notice (SIGUSR1)", settings=NoticeSettings(NoticeChoice.SLURM, signal=signal.SIGUSR1)),
    "k8s-sigint-is-still-the-users-stop": NoticeCase(
        training(0, 9, extra=((AT, SignalSupervisor(signal.SIGINT)),)), (), ExitCode.INTERRUPTED,
        (ExitClass.USER_STOPPED,), ((AT, "SIGTERM"),), (), 3.0, "stopped by SIGINT",
        settings=NoticeSettings(NoticeChoice.K8S)),
    "sigterm-without-a-scheduler-is-the-users-stop": NoticeCase(
        training(0, 9, extra=((AT, SignalSupervisor(signal.SIGTERM)),)), (), ExitCode.INTERRUPTED,
        (ExitClass.USER_STOPPED,), ((AT, "SIGTERM"),), (), 3.0, "stopped by SIGTERM"),
}


def check_notice(tmp_path: Path, case: NoticeCase) -> None:
    run = supervise(tmp_path, [case.first, training(3, 9)], case.gives, settings=case.settings)
    assert run.outcome.code is case.code, run.outcome.message
    assert run.classes == list(case.classes)
    assert len(run.launcher.workers) == len(case.classes), "restarted on a machine that is going away"
    assert run.signals(1) == list(case.signals)
    assert [e["reaction"] for e in run.events(EventKind.PREEMPTION_NOTICE)] == list(case.reactions)
    stops = run.events(EventKind.STOP_REQUESTED)
    assert [s["grace_s"] for s in stops] == ([case.grace_s] if case.grace_s is not None else [])
    assert case.message in run.outcome.message
    assert run.events(EventKind.RESTART) == []
    handled = run.events(EventKind.NOTICE_HANDLED)
    if case.code is ExitCode.PREEMPTED:
        (h,) = handled
        assert {k: h.get(k) for k in case.handled} == case.handled
        (stopped,) = run.events(EventKind.STOPPED)
        assert stopped["reason"] == run.outcome.message
        (last,) = run.events(EventKind.SUPERVISOR_EXIT)
        assert last["code"] == 75
    else:
        assert handled == []


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_notice(tmp_path: Path, case: NoticeCase) -> None:
    check_notice(tmp_path, case)


def test_a_notice_while_backing_off_starts_no_other_worker(tmp_path: Path) -> None:
    crash = Script(((0.5, Exit(1, "RuntimeError: boom")),))
    run = supervise(tmp_path, [crash], on_sleep=lambda sup: sup.notices.deliver(Give(0).notice(Clock())))
    assert run.outcome.code is ExitCode.PREEMPTED
    assert len(run.launcher.workers) == 1
    assert "state saved at step 0 (no checkpoint yet)" in run.outcome.message
    (h,) = run.events(EventKind.NOTICE_HANDLED)
    assert "attempt" not in h and h["steps_lost"] == 0


def test_the_source_and_the_deadline_check_are_said_once(tmp_path: Path) -> None:
    run = supervise(tmp_path, [training(0, 5)])
    (found,) = run.events(EventKind.NOTICE_SOURCE_DETECTED)
    assert (found["choice"], found["reason"]) == ("aws", "--notice aws")
    assert run.said.count("notice source: aws") == 1
    assert run.events(EventKind.NOTICE_DEADLINE_CHECK) == []  # no checkpoint, no cost: nothing to say yet


def test_no_notice_source_says_nothing(tmp_path: Path) -> None:
    run = supervise(tmp_path, [training(0, 2)], settings=NoticeSettings())
    assert run.events(EventKind.NOTICE_SOURCE_DETECTED) == [] and "notice" not in run.said
    assert run.outcome.code is ExitCode.OK


# -- a broken decide fails a row -----------------------------------------------------------------------

def ignores_notices(w: Watch, now: float, **kwargs: Any) -> Decision:
    return decide(w, now, **{**kwargs, "preempt": False})


def test_a_decide_that_ignores_notices_fails_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    case = CASES["a-notice-stops-the-worker-and-exits-75"]
    check_notice(tmp_path / "sound", case)
    monkeypatch.setattr(supervisor_mod, "decide", ignores_notices)
    with pytest.raises((AssertionError, Runaway)):
        check_notice(tmp_path / "broken", case)


def test_a_rerun_says_at_start_up_when_saving_cannot_beat_the_deadline(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / EVENTS).write_text(  # an earlier supervisor's run: its checkpoints took 150 s to commit
        '{"time": 1.0, "source": "supervisor", "event": "attempt-spawned", "attempt": 1}\n'
        '{"time": 2.0, "source": "worker", "event": "checkpoint-saved", "attempt": 1, "step": 5, '
        '"name": "step-000000005", "durable": true, "persist_s": 150.0}\n')
    run = supervise(tmp_path, [training(5, 7)])
    assert run.outcome.code is ExitCode.OK
    (check,) = run.events(EventKind.NOTICE_DEADLINE_CHECK)
    (spawned,) = [e for e in run.events(EventKind.ATTEMPT_SPAWNED) if e["attempt"] == 2]
    assert check["ok"] is False and check["checkpoint_s"] == 150.0 and check["time"] <= spawned["time"]
    assert "warning: an aws notice gives 120 s; finishing a step (0.00 s) and a durable checkpoint (size unknown, " \
           "150.00 s) takes 150.00 s, more than the window less a 2 s margin" in run.said


def test_a_notice_too_close_to_save_in_time_is_said(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / EVENTS).write_text(
        '{"time": 1.0, "source": "supervisor", "event": "attempt-spawned", "attempt": 1}\n'
        '{"time": 2.0, "source": "worker", "event": "checkpoint-saved", "attempt": 1, "step": 5, '
        '"name": "step-000000005", "durable": true, "persist_s": 5.0}\n')
    run = supervise(tmp_path, [training(5, 9)], [Give(AT, left=6.0)])
    assert run.outcome.code is ExitCode.PREEMPTED
    (notice,) = run.events(EventKind.PREEMPTION_NOTICE)
    assert (notice["deadline_ok"], notice["save_s"], notice["seconds_left"]) == (False, 6.0, 6.0)  # a step, a save
    assert "warning: 6.0 s left, and saving the state has taken up to 6.00 s: it may not commit before the " \
           "deadline" in run.said
