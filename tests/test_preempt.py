"""Acting on a preemption notice, as tables of pure decisions: act or only report, the worker's grace
against the deadline, whether saving fits a cloud's window, notice-to-commit, the closing line. Broken
variants of the decisions must fail a row (the mutants at the end)."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import pytest

from runner import preempt
from runner.notice import Notice, NoticeChoice, NoticeKind, NoticeSource
from runner.notice.base import parse_iso_time
from runner.preempt import (
    MIN_GRACE_S,
    NOTICE_MARGIN_S,
    Commit,
    NoticeSettings,
    Reaction,
    SaveCost,
    commit_figures,
    deadline_check,
    describe_notice,
    preempted_message,
    preemption,
    respond,
    steps_lost,
    stop_grace,
)

T0 = parse_iso_time("2026-12-01T10:02:00Z")
TERMINATE = Notice(NoticeSource.AWS, NoticeKind.TERMINATE, T0, T0 - 120, {"action": "terminate"})
REBALANCE = Notice(NoticeSource.AWS, NoticeKind.REBALANCE, None, T0 - 300, {"noticeTime": "x"})
MAINTENANCE = Notice(NoticeSource.GCP, NoticeKind.MAINTENANCE, None, T0, {"value": "TERMINATE_ON_HOST_MAINTENANCE"})
USR1 = Notice(NoticeSource.SLURM, NoticeKind.SIGNAL, None, T0, {"signal": "SIGUSR1", "SLURM_JOB_ID": "7"})


# -- act, report or record -----------------------------------------------------------------------------

RESPOND = {
    "a-notice-is-acted-on": (TERMINATE, False, False, Reaction.ACT),
    "a-second-while-stopping-is-recorded": (TERMINATE, True, False, Reaction.RECORD),
    "a-rebalance-is-reported": (REBALANCE, False, False, Reaction.REPORT),
    "maintenance-is-reported": (MAINTENANCE, False, False, Reaction.REPORT),
    "a-rebalance-with-act-on-rebalance": (REBALANCE, False, True, Reaction.ACT),
    "reported-even-while-stopping": (REBALANCE, True, False, Reaction.REPORT),
    "acted-on-early-while-stopping-is-recorded": (REBALANCE, True, True, Reaction.RECORD),
    "a-scheduler-signal-is-acted-on": (USR1, False, False, Reaction.ACT),
}


@pytest.mark.parametrize(("notice", "stopping", "act_on_early", "want"), RESPOND.values(), ids=RESPOND.keys())
def test_respond(notice: Notice, stopping: bool, act_on_early: bool, want: Reaction) -> None:
    assert respond(notice, stopping=stopping, act_on_early=act_on_early) is want


# -- the worker's grace --------------------------------------------------------------------------------

GRACE = {  # (--grace, seconds from now to the deadline or None, grace given)
    "no-deadline-the-flag": (30.0, None, 30.0),
    "far-deadline-the-flag": (30.0, 120.0, 30.0),
    "near-deadline-ends-the-margin-before": (30.0, 10.0, 10.0 - NOTICE_MARGIN_S),
    "exactly-flag-plus-margin": (30.0, 32.0, 30.0),
    "past-deadline-the-minimum": (30.0, -5.0, MIN_GRACE_S),
    "inside-the-margin-the-minimum": (30.0, 2.5, MIN_GRACE_S),
    "a-short-flag-wins-over-the-minimum": (0.5, 1.0, 0.5),
}


@pytest.mark.parametrize(("grace", "left", "want"), GRACE.values(), ids=GRACE.keys())
def test_stop_grace(grace: float, left: float | None, want: float) -> None:
    now = 1000.0
    assert stop_grace(grace, None if left is None else now + left, now) == pytest.approx(want)


def test_a_notice_deadline_moves_from_the_wall_clock_to_the_monotonic_one() -> None:
    p = preemption(TERMINATE, now=50.0, wall_now=T0 - 100)
    assert (p.received_at, p.deadline_at) == (50.0, 150.0)
    assert preemption(REBALANCE, 50.0, T0).deadline_at is None


# -- does saving fit the window? -----------------------------------------------------------------------

CHECKS = {  # (window, --grace, step_s, checkpoint_s, ok, said)
    "fits": (120.0, 30.0, 0.5, 2.0, True, "it fits, 115.5 s to spare"),
    "too-slow-for-the-window": (30.0, 60.0, 1.0, 28.0, False, "more than the window less a 2 s margin"),
    "too-slow-for-grace": (120.0, 10.0, 1.0, 20.0, False, "more than --grace 10 s"),
    "just-fits-the-margin": (30.0, 30.0, 0.0, 28.0, True, "0.0 s to spare"),
}


@pytest.mark.parametrize(("window", "grace", "step_s", "ckpt_s", "ok", "said"), CHECKS.values(), ids=CHECKS.keys())
def test_deadline_check(window: float, grace: float, step_s: float, ckpt_s: float, ok: bool, said: str) -> None:
    got, text = deadline_check("aws", window, grace, SaveCost(step_s, ckpt_s, 3_200_000_000))
    assert got is ok
    assert said in text
    assert text.startswith(f"an aws notice gives {window:g} s; finishing a step ({step_s:.2f} s) and a durable "
                           f"checkpoint (3.2 GB, {ckpt_s:.2f} s)")


@pytest.mark.parametrize(("size", "said"), [(None, "size unknown"), (512, "512 bytes"), (162_710, "162.7 kB"),
                                            (3_500_000, "3.5 MB")])
def test_checkpoint_sizes_are_said_plainly(size: int | None, said: str) -> None:
    assert f"({said}, " in deadline_check("gcp", 30.0, 30.0, SaveCost(0.1, 0.1, size))[1]


# -- notice to commit ----------------------------------------------------------------------------------

def test_commit_figures() -> None:
    before = Commit(41, "step-000000041", T0 - 110.0, True)
    assert commit_figures(TERMINATE, before) == {"notice_to_commit_s": 10.0, "deadline_slack_s": 110.0,
                                                 "before_deadline": True}
    late = Commit(41, "step-000000041", T0 + 1.5, True)
    assert commit_figures(TERMINATE, late)["before_deadline"] is False
    assert commit_figures(TERMINATE, late)["deadline_slack_s"] == -1.5
    assert commit_figures(USR1, Commit(3, "step-000000003", T0 + 2, True)) == {
        "notice_to_commit_s": 2.0, "deadline_slack_s": None, "before_deadline": None}
    assert commit_figures(TERMINATE, None)["before_deadline"] is False  # never committed


# -- what the supervisor says --------------------------------------------------------------------------

@pytest.mark.parametrize(("notice", "said"), [
    (TERMINATE, "aws notice (terminate at 10:02:00Z)"),
    (USR1, "slurm notice (SIGUSR1)"),
    (MAINTENANCE, "gcp notice (maintenance: TERMINATE_ON_HOST_MAINTENANCE)"),
    (REBALANCE, "aws notice (rebalance)"),
])
def test_describe_notice(notice: Notice, said: str) -> None:
    assert describe_notice(notice) == said


@pytest.mark.parametrize(("last_step", "saved", "lost"), [(40, 41, 0), (40, 42, 0), (None, 35, 0), (None, None, 0),
                                                          (40, 35, 6), (3, None, 4)])
def test_steps_lost(last_step: int | None, saved: int | None, lost: int) -> None:
    assert steps_lost(last_step, saved) == lost


def test_the_closing_lines() -> None:
    assert preempted_message(TERMINATE, saved_step=41, lost=0, exit_how="preempted (exit 75)") == (
        "preempted by aws notice (terminate at 10:02:00Z): state saved at step 41; rerun on another machine to "
        "continue")
    assert preempted_message(USR1, saved_step=None, lost=0, exit_how="killed (SIGTERM)") == (
        "preempted by slurm notice (SIGUSR1): state saved at step 0 (no checkpoint yet); rerun on another machine "
        "to continue")
    assert preempted_message(TERMINATE, saved_step=35, lost=6, exit_how="killed (SIGKILL)") == (
        "preempted by aws notice (terminate at 10:02:00Z): the worker did not save its state in time (killed "
        "(SIGKILL)); its newest checkpoint is at step 35, 6 steps to recompute; rerun on another machine to continue")


# -- which signals are a notice ------------------------------------------------------------------------

SIGNALS = {
    "k8s-sigterm": (NoticeChoice.K8S, signal.SIGTERM, {}, {signal.SIGTERM}),
    "slurm-usr1-and-sigterm": (NoticeChoice.SLURM, signal.SIGUSR1, {}, {signal.SIGUSR1, signal.SIGTERM}),
    "auto-in-a-slurm-job": (NoticeChoice.AUTO, signal.SIGUSR1, {"SLURM_JOB_ID": "7"}, {signal.SIGUSR1, signal.SIGTERM}),
    "auto-in-a-pod": (NoticeChoice.AUTO, signal.SIGTERM, {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, {signal.SIGTERM}),
    "auto-elsewhere-none": (NoticeChoice.AUTO, signal.SIGTERM, {}, set()),
    "a-cloud-none": (NoticeChoice.AWS, signal.SIGUSR1, {"SLURM_JOB_ID": "7"}, set()),
    "none-none": (NoticeChoice.NONE, signal.SIGTERM, {"KUBERNETES_SERVICE_HOST": "x"}, set()),
}


@pytest.mark.parametrize(("choice", "sig", "env", "want"), SIGNALS.values(), ids=SIGNALS.keys())
def test_notice_signals(choice: NoticeChoice, sig: int, env: dict[str, str], want: set[int]) -> None:
    assert NoticeSettings(choice=choice, signal=sig).notice_signals(env) == want


# -- mutants: broken decisions fail a row --------------------------------------------------------------

_respond, _stop_grace = respond, stop_grace  # the real ones, for the mutants to call while patched in

def _acts_on_everything(notice: Notice, *, stopping: bool, act_on_early: bool) -> Reaction:
    return Reaction.ACT


def _acts_twice(notice: Notice, *, stopping: bool, act_on_early: bool) -> Reaction:
    return _respond(notice, stopping=False, act_on_early=act_on_early)


def _grace_ignores_the_deadline(grace: float, deadline_at: float | None, now: float, *a: Any, **k: Any) -> float:
    return grace


def _grace_without_margin(grace: float, deadline_at: float | None, now: float, *a: Any, **k: Any) -> float:
    return _stop_grace(grace, deadline_at, now, 0.0)


def _grace_without_floor(grace: float, deadline_at: float | None, now: float, *a: Any, **k: Any) -> float:
    return _stop_grace(grace, deadline_at, now, NOTICE_MARGIN_S, 0.0)


MUTANTS: dict[str, tuple[str, Callable[..., Any], Callable[[], None]]] = {
    "acts-on-early-warnings": ("respond", _acts_on_everything,
                               lambda: test_respond(*RESPOND["a-rebalance-is-reported"])),
    "acts-twice": ("respond", _acts_twice, lambda: test_respond(*RESPOND["a-second-while-stopping-is-recorded"])),
    "grace-ignores-the-deadline": ("stop_grace", _grace_ignores_the_deadline,
                                   lambda: test_stop_grace(*GRACE["near-deadline-ends-the-margin-before"])),
    "grace-without-margin": ("stop_grace", _grace_without_margin,
                             lambda: test_stop_grace(*GRACE["near-deadline-ends-the-margin-before"])),
    "grace-without-floor": ("stop_grace", _grace_without_floor,
                            lambda: test_stop_grace(*GRACE["past-deadline-the-minimum"])),
}


@pytest.mark.parametrize("name", MUTANTS)
def test_a_broken_decision_fails_its_row(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    attr, broken, row = MUTANTS[name]
    row()  # passes with the real one ...
    monkeypatch.setitem(globals(), attr, broken)
    monkeypatch.setattr(preempt, attr, broken)
    with pytest.raises(AssertionError):  # ... and fails with the broken one
        row()
