"""The pure functions of :mod:`runner.watch`, as tables: what a tick's reading does to the watch,
and what to do next. A broken ``decide`` (tests/supervisor_fakes.py) must fail a row of the table."""

from __future__ import annotations

import signal
from dataclasses import replace
from typing import Any

import pytest

from rundir.contract import FileEffect, SendSignal
from runner.watch import Action, Decision, Reading, Watch, arm_kill, begin, decide, observe
from tests.supervisor_fakes import MUTANTS, Decide

W0 = begin(1, 42, 100.0, heartbeat=None, high_water=-1)
STEPPED = replace(W0, last_step=0, heartbeat=7, heartbeat_moved=True, last_alive=101.0)
DecideKw = dict[str, Any]


def kw(hang_timeout: float = 10.0, stop_requested: bool = False, want_spare: bool = False,
       startup_timeout: float = 60.0) -> DecideKw:
    return {"hang_timeout": hang_timeout, "stop_requested": stop_requested, "want_spare": want_spare,
            "startup_timeout": startup_timeout}


def hung(silent: float, reason: str) -> Decision:
    return Decision(Action.KILL_HUNG, silent_s=silent, reason=reason)


BUSY = replace(STEPPED, cpu_s=5.0, busy_at=111.0)  # training, its CPU time moved at 111
IDLE = replace(STEPPED, cpu_s=5.0, busy_at=100.5)  # training, its CPU time last moved at 100.5
NO_CPU = "no heartbeat or step for {:.1f} s"
DECIDE_CASES: dict[str, tuple[Watch, float, DecideKw, Decision]] = {
    "fresh": (W0, 100.0, kw(), Decision(Action.CONTINUE)),
    "start-up-silent-past-the-hang-timeout-is-slow-not-stuck": (W0, 110.5, kw(), Decision(Action.CONTINUE)),
    "start-up-silent-exactly-the-startup-timeout": (W0, 160.0, kw(), Decision(Action.CONTINUE)),
    "start-up-past-the-startup-timeout": (W0, 160.5, kw(),
                                          hung(60.5, "silent for 60.5 s in start-up (the limit is 60 s)")),
    "start-up-stopped": (replace(W0, stopped=True), 110.5, kw(), hung(10.5, "stopped and silent for 10.5 s")),
    "silent-exactly-the-timeout": (STEPPED, 111.0, kw(), Decision(Action.CONTINUE)),
    "silent-past-the-timeout-cpu-unknown": (STEPPED, 111.5, kw(), hung(10.5, NO_CPU.format(10.5))),
    "silence-counts-from-the-last-sign-of-life": (STEPPED, 110.5, kw(), Decision(Action.CONTINUE)),
    "silent-past-a-short-timeout": (STEPPED, 104.0, kw(hang_timeout=2.5), hung(3.0, NO_CPU.format(3.0))),
    "silent-but-busy-is-slow-not-stuck": (BUSY, 111.5, kw(), Decision(Action.CONTINUE)),
    "silent-and-idle": (IDLE, 111.5, kw(), hung(10.5, "no heartbeat, step or CPU progress for 10.5 s")),
    "silent-and-stopped": (replace(BUSY, stopped=True), 111.5, kw(), hung(10.5, "stopped and silent for 10.5 s")),
    "busy-but-silent-past-the-startup-timeout": (replace(BUSY, busy_at=170.0), 171.5, kw(),
                                                 hung(70.5, "silent for 70.5 s in training (the limit is 60 s)")),
    "idle-in-a-checkpoint-is-slow-not-stuck": (replace(IDLE, phase="checkpoint"), 111.5, kw(),
                                               Decision(Action.CONTINUE)),
    "a-checkpoint-past-the-startup-timeout": (
        replace(IDLE, phase="checkpoint"), 161.5, kw(),
        hung(60.5, "silent for 60.5 s in phase 'checkpoint' (the limit is 60 s)")),
    "stop": (W0, 100.0, kw(stop_requested=True), Decision(Action.STOP)),
    "stop-before-hang": (W0, 200.0, kw(stop_requested=True), Decision(Action.STOP)),
    "stop-starts-no-spare": (STEPPED, 102.0, kw(stop_requested=True, want_spare=True), Decision(Action.STOP)),
    "no-spare-before-the-first-step": (W0, 100.0, kw(want_spare=True), Decision(Action.CONTINUE)),
    "spare-after-the-first-step": (STEPPED, 102.0, kw(want_spare=True), Decision(Action.CONTINUE, spawn_spare=True)),
    "no-spare-wanted": (STEPPED, 102.0, kw(), Decision(Action.CONTINUE)),
    "hung-starts-no-spare": (STEPPED, 120.0, kw(want_spare=True), hung(19.0, NO_CPU.format(19.0))),
    "kill-at-not-yet": (replace(STEPPED, kill_at=103.0), 102.5, kw(), Decision(Action.CONTINUE)),
    "kill-at-reached": (replace(STEPPED, kill_at=103.0), 103.0, kw(), Decision(Action.KILL_AFTER_CHAOS)),
    "kill-at-with-a-spare": (replace(STEPPED, kill_at=103.0), 104.0, kw(want_spare=True),
                             Decision(Action.KILL_AFTER_CHAOS, spawn_spare=True)),
    "hang-before-kill-at": (replace(STEPPED, kill_at=103.0), 111.5, kw(), hung(10.5, NO_CPU.format(10.5))),
}


@pytest.mark.parametrize(("w", "now", "kwargs", "expected"), DECIDE_CASES.values(), ids=DECIDE_CASES.keys())
def test_decide(w: Watch, now: float, kwargs: DecideKw, expected: Decision) -> None:
    assert decide(w, now, **kwargs) == expected


BEAT = {"attempt": 1, "phase": "checkpoint-write"}
OBSERVE_CASES: dict[str, tuple[Watch, Reading, Watch]] = {
    "nothing-new": (STEPPED, Reading(heartbeat=7), STEPPED),
    "no-heartbeat-file-yet": (W0, Reading(), W0),
    "a-step": (W0, Reading(steps=[{"step": 0}]),
               replace(W0, last_step=0, last_alive=105.0, heartbeat_moved=True)),
    "the-highest-step": (STEPPED, Reading(steps=[{"step": 4}, {"step": 2}], heartbeat=7),
                         replace(STEPPED, last_step=4, last_alive=105.0)),
    "a-heartbeat-with-its-phase": (STEPPED, Reading(heartbeat=8, beat=BEAT),
                                   replace(STEPPED, heartbeat=8, last_alive=105.0, phase="checkpoint-write")),
    "another-attempts-heartbeat-is-life-but-no-phase": (STEPPED, Reading(heartbeat=8, beat={**BEAT, "attempt": 0}),
                                                        replace(STEPPED, heartbeat=8, last_alive=105.0)),
    "the-heartbeat-file-gone": (STEPPED, Reading(heartbeat=None), replace(STEPPED, heartbeat=None, last_alive=105.0)),
    "resumed": (W0, Reading(events=[{"event": "attempt-started", "resumed_from_step": 30}]),
                replace(W0, resumed_from=30)),
    "resumed-from-scratch": (W0, Reading(events=[{"event": "attempt-started", "resumed_from_step": None}]),
                             replace(W0, resumed_from=0)),
    "other-events-are-not-life": (W0, Reading(events=[{"event": "checkpoint-saved"}]), W0),
    "the-first-cpu-reading": (W0, Reading(cpu_s=1.0, state="running"), replace(W0, cpu_s=1.0, busy_at=105.0)),
    "cpu-moved": (IDLE, Reading(heartbeat=7, cpu_s=5.5, state="sleeping"), replace(IDLE, cpu_s=5.5, busy_at=105.0)),
    "cpu-still": (IDLE, Reading(heartbeat=7, cpu_s=5.0, state="sleeping"), IDLE),
    "blocked-on-io-is-busy": (IDLE, Reading(heartbeat=7, cpu_s=5.0, state="disk-sleep"), replace(IDLE, busy_at=105.0)),
    "stopped": (IDLE, Reading(heartbeat=7, cpu_s=5.0, state="stopped"), replace(IDLE, stopped=True)),
    "continued": (replace(IDLE, stopped=True), Reading(heartbeat=7, cpu_s=5.0, state="sleeping"), IDLE),
}


@pytest.mark.parametrize(("w", "reading", "expected"), OBSERVE_CASES.values(), ids=OBSERVE_CASES.keys())
def test_observe(w: Watch, reading: Reading, expected: Watch) -> None:
    assert observe(w, reading, 105.0) == expected


@pytest.mark.parametrize(("high_water", "last_step", "progress"), [
    (-1, None, False), (-1, 0, True), (5, 5, False), (5, 6, True), (5, 3, False),
])
def test_made_progress(high_water: int, last_step: int | None, progress: bool) -> None:
    w = replace(begin(2, 1, 0.0, heartbeat=None, high_water=high_water), last_step=last_step)
    assert w.made_progress is progress


NOOP = FileEffect(lambda: "")


@pytest.mark.parametrize(("before", "actions", "kill_at"), [
    (None, [], None),
    (None, [SendSignal(signal.SIGKILL)], None),
    (None, [NOOP], None),
    (None, [SendSignal(signal.SIGTERM, kill_after=2.0)], 52.0),
    (None, [SendSignal(signal.SIGTERM, kill_after=2.0), SendSignal(signal.SIGTERM, kill_after=0.5)], 50.5),
    (51.0, [SendSignal(signal.SIGSTOP)], 51.0),
    (51.0, [SendSignal(signal.SIGTERM, kill_after=5.0)], 55.0),
])
def test_arm_kill(before: float | None, actions: list[SendSignal | FileEffect], kill_at: float | None) -> None:
    assert arm_kill(replace(W0, kill_at=before), actions, 50.0).kill_at == kill_at


@pytest.mark.parametrize("mutant", MUTANTS.values(), ids=MUTANTS.keys())
def test_a_broken_decide_fails_the_decide_table(mutant: Decide) -> None:
    wrong = [name for name, (w, now, kwargs, expected) in DECIDE_CASES.items() if mutant(w, now, **kwargs) != expected]
    assert wrong, "no row of DECIDE_CASES tells this mutant from decide"
