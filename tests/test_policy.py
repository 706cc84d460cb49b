"""The retry policy as pure functions of the attempt history, and the tenacity loop built from them,
driven by a fake attempt function and a sleep that only records (nothing here really waits)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from tenacity import RetryCallState

from rundir.classify import ExitClass
from runner.policy import (
    AttemptResult,
    RetryPolicy,
    WorkerFailed,
    build_retrying,
    give_up_reason,
    no_progress_streak,
    stop_after_unproductive_restarts,
    stop_on_crash_loop,
    unproductive_restarts,
    wait_backoff,
)
from tests.helpers.factories import attempt_result

C = ExitClass


def result(attempt: int = 1, cls: ExitClass = C.CRASHED, *, progress: bool = False, **fields: Any) -> AttemptResult:
    """Attempt ``attempt``'s result: it made progress only if the test says so."""
    return attempt_result(cls, attempt=attempt, made_progress=progress, **fields)


def history(*spec: tuple[ExitClass, bool]) -> list[AttemptResult]:
    """``history((CRASHED, True), (KILLED, False))``: attempts numbered from 1."""
    return [result(i, cls, progress=p) for i, (cls, p) in enumerate(spec, 1)]


def call_state(hist: Sequence[AttemptResult]) -> RetryCallState:
    """What tenacity hands a strategy after an attempt raised ``WorkerFailed(hist)``."""
    rs = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    if hist:
        exc = WorkerFailed(hist)
        rs.set_exception((WorkerFailed, exc, None))
    return rs


P, N = True, False  # made progress / did not


# -- pure functions of the history ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "streak"),
    [
        ((), 0),
        (((C.CRASHED, P),), 0),
        (((C.CRASHED, N),), 1),
        (((C.CRASHED, N), (C.KILLED, N), (C.HUNG, N)), 3),
        (((C.CRASHED, N), (C.KILLED, N), (C.HUNG, P)), 0),
        (((C.CRASHED, N), (C.KILLED, P), (C.HUNG, N), (C.CRASHED, N)), 2),
        (((C.KILLED, P), (C.PREEMPTED, N)), 1),  # a preemption without progress is in the streak too
        # an exit for want of space is no failure of the job's: the supervisor waited for space
        (((C.RESOURCE, N), (C.RESOURCE, N), (C.RESOURCE, N)), 0),
        (((C.CRASHED, N), (C.RESOURCE, N), (C.CRASHED, N)), 2),  # nor does it break a streak
        (((C.CRASHED, N), (C.RESOURCE, P)), 0),  # it may have made progress before the disk filled
    ],
)
def test_no_progress_streak(spec: tuple[tuple[ExitClass, bool], ...], streak: int) -> None:
    assert no_progress_streak(history(*spec)) == streak


@pytest.mark.parametrize(
    ("spec", "count"),
    [
        ((), 0),
        (((C.CRASHED, P), (C.KILLED, P), (C.HUNG, P)), 0),  # restarts after progress are free
        (((C.CRASHED, N), (C.KILLED, P), (C.HUNG, N)), 2),  # counted over the whole job, not in a row
        (((C.CRASHED, N), (C.KILLED, N), (C.HUNG, N), (C.PREEMPTED, N)), 4),
        (((C.BAD_INPUT, N),), 0),  # not retriable: no restart spent
        (((C.USER_STOPPED, N),), 0),
        (((C.COMPLETED, N),), 0),
        (((C.RESOURCE, N),) * 5, 0),  # restarted after the wait for space, not from the budget
        (((C.NON_FINITE, N),), 0),  # never retried
    ],
)
def test_unproductive_restarts(spec: tuple[tuple[ExitClass, bool], ...], count: int) -> None:
    assert unproductive_restarts(history(*spec)) == count


def test_give_up_reason_crash_loop_names_the_step_after_the_last_completed_one() -> None:
    h = [result(1, C.CRASHED, progress=True, last_step=2), result(2, C.CRASHED, last_step=2),
         result(3, C.CRASHED, last_step=2), result(4, C.CRASHED, last_step=2)]
    reason = give_up_reason(h, RetryPolicy(crash_loop=3))
    assert reason == ("crash loop: 3 attempts in a row died without completing a new step; "
                      "it keeps dying at step 3 (crashed)")


def test_give_up_reason_crash_loop_without_steps_names_the_resume_step() -> None:
    # Died right after restoring step 30, before finishing any step.
    h = [result(i, C.KILLED, resumed_from=30, last_step=None) for i in (1, 2)]
    reason = give_up_reason(h, RetryPolicy(crash_loop=2))
    assert reason.startswith("crash loop: 2 attempts in a row")
    assert "it keeps dying at step 30 (killed)" in reason


def test_give_up_reason_crash_loop_before_restoring_does_not_say_step_none() -> None:
    # Died in start-up (e.g. an import error): it never said where it resumed, nor finished a step.
    h = [result(i, C.CRASHED, resumed_from=None, last_step=None) for i in (1, 2, 3)]
    reason = give_up_reason(h, RetryPolicy(crash_loop=3))
    assert "None" not in reason
    assert "it keeps dying at start-up, before restoring (crashed)" in reason


def test_give_up_reason_restart_budget() -> None:
    h = history((C.CRASHED, N), (C.CRASHED, P), (C.KILLED, N), (C.CRASHED, P), (C.HUNG, N))
    reason = give_up_reason(h, RetryPolicy(max_restarts=2, crash_loop=3))
    assert reason.startswith("restart budget spent: 3 restarts without progress")
    assert "--max-restarts 2" in reason


# -- the stop strategies -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "limit", "stop"),
    [
        (((C.CRASHED, N), (C.CRASHED, N)), 3, False),
        (((C.CRASHED, N), (C.CRASHED, N), (C.CRASHED, N)), 3, True),
        (((C.CRASHED, N), (C.CRASHED, N), (C.CRASHED, P)), 3, False),
        (((C.CRASHED, N),), 1, True),
    ],
)
def test_stop_on_crash_loop(spec: tuple[tuple[ExitClass, bool], ...], limit: int, stop: bool) -> None:
    assert stop_on_crash_loop(limit)(call_state(history(*spec))) is stop


@pytest.mark.parametrize(
    ("unproductive", "limit", "stop"),
    [(0, 0, False), (1, 0, True), (2, 2, False), (3, 2, True)],
)
def test_stop_after_unproductive_restarts(unproductive: int, limit: int, stop: bool) -> None:
    spec = [(C.CRASHED, P)] + [(C.CRASHED, N), (C.KILLED, P)] * unproductive
    assert stop_after_unproductive_restarts(limit)(call_state(history(*spec))) is stop


def test_strategies_without_a_worker_failure_do_not_stop_or_wait() -> None:
    rs = call_state(())
    assert not stop_on_crash_loop(1)(rs)
    assert not stop_after_unproductive_restarts(0)(rs)
    assert wait_backoff(0.5, 30.0, 0.5, random.Random(0))(rs) == 0.0


# -- the wait strategy ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        ((C.CRASHED, P),),
        ((C.CRASHED, N), (C.KILLED, N), (C.HUNG, P)),
        ((C.PREEMPTED, N),),  # a clean preemption: restart at once
        ((C.CRASHED, N), (C.PREEMPTED, N)),
    ],
)
def test_wait_is_zero_after_progress_or_preemption(spec: tuple[tuple[ExitClass, bool], ...]) -> None:
    assert wait_backoff(0.5, 30.0, 0.5, random.Random(1))(call_state(history(*spec))) == 0.0


@pytest.mark.parametrize("streak", range(1, 10))
def test_wait_is_exponential_with_bounded_jitter(streak: int) -> None:
    initial, maximum, jitter = 0.5, 30.0, 0.5
    base = min(maximum, initial * 2 ** (streak - 1))
    rs = call_state(history((C.KILLED, P), *[(C.CRASHED, N)] * streak))
    wait = wait_backoff(initial, maximum, jitter, random.Random(streak))
    delays = [wait(rs) for _ in range(200)]
    assert all(base <= d <= base * (1 + jitter) for d in delays), (base, min(delays), max(delays))
    assert len(set(delays)) > 1  # jittered, not fixed


def test_wait_without_jitter_is_exactly_the_capped_exponential() -> None:
    wait = wait_backoff(0.5, 3.0, 0.0, random.Random(0))
    got = [wait(call_state(history(*[(C.CRASHED, N)] * k))) for k in range(1, 6)]
    assert got == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_wait_is_deterministic_with_an_injected_rng() -> None:
    rs = call_state(history((C.CRASHED, N), (C.HUNG, N)))
    a = [wait_backoff(0.5, 30.0, 0.5, random.Random(42))(rs) for _ in range(3)]
    w1, w2 = wait_backoff(0.5, 30.0, 0.5, random.Random(42)), wait_backoff(0.5, 30.0, 0.5, random.Random(42))
    assert [w1(rs) for _ in range(5)] == [w2(rs) for _ in range(5)]
    assert a[0] == a[1] == a[2]
    assert 1.0 <= a[0] <= 1.5


# -- the retry loop, as the supervisor drives it ---------------------------------------------------------


@dataclass
class Drive:
    outcome: str  # "completed", or the exit class of the attempt the loop gave up on
    history: list[AttemptResult]
    delays: list[float]
    exc: WorkerFailed | None = None
    calls: int = 0
    slept_before: list[int] = field(default_factory=list)  # attempt numbers after which it slept


def drive(policy: RetryPolicy, script: Sequence[tuple[ExitClass, bool]], *, seed: int = 0) -> Drive:
    """Run ``build_retrying`` over a fake attempt function that plays ``script`` one attempt at a time,
    the way :meth:`runner.supervisor.Supervisor._retry_loop` does. Runs past the script fail the test."""
    delays: list[float] = []
    hist: list[AttemptResult] = []
    slept_before: list[int] = []

    def before_sleep(rs: RetryCallState) -> None:
        slept_before.append(hist[-1].attempt)

    retrying = build_retrying(policy, sleep=delays.append, before_sleep=before_sleep, rng=random.Random(seed))
    it = iter(script)

    def attempt_fn() -> AttemptResult:
        try:
            cls, progress = next(it)
        except StopIteration:
            pytest.fail(f"the policy ran attempt {len(hist) + 1}, past the script's {len(script)}")
        n = len(hist) + 1
        return result(n, cls, progress=progress, last_step=(10 * n if progress else None))

    try:
        for attempt in retrying:
            with attempt:
                r = attempt_fn()
                hist.append(r)
                if r.exit_class is not C.COMPLETED:
                    raise WorkerFailed(hist)
    except WorkerFailed as exc:
        return Drive(exc.result.exit_class.value, hist, delays, exc, len(hist), slept_before)
    return Drive("completed", hist, delays, None, len(hist), slept_before)


@pytest.mark.parametrize("cls", [C.PREEMPTED, C.KILLED, C.CRASHED, C.HUNG])
def test_retriable_classes_are_retried(cls: ExitClass) -> None:
    d = drive(RetryPolicy(), [(cls, P), (cls, P), (C.COMPLETED, P)])
    assert d.outcome == "completed"
    assert d.calls == 3
    assert d.delays == [0.0, 0.0]  # progress each time: straight back
    assert d.slept_before == [1, 2]


@pytest.mark.parametrize("cls", [C.BAD_INPUT, C.USER_STOPPED])
def test_bad_input_and_user_stop_are_not_retried(cls: ExitClass) -> None:
    d = drive(RetryPolicy(), [(cls, N)])
    assert d.outcome == cls.value
    assert d.calls == 1
    assert d.delays == []
    assert d.exc is not None and d.exc.history == tuple(d.history)


def test_not_retried_even_after_progress_and_with_budget_left() -> None:
    d = drive(RetryPolicy(max_restarts=100), [(C.CRASHED, P), (C.BAD_INPUT, N)])
    assert (d.outcome, d.calls) == ("bad-input", 2)


@pytest.mark.parametrize("crash_loop", [1, 2, 3, 5])
def test_crash_loop_stops_after_n_failures_without_progress(crash_loop: int) -> None:
    # The first attempt makes progress, then every attempt dies at the same place.
    script = [(C.CRASHED, P)] + [(C.CRASHED, N)] * 20
    d = drive(RetryPolicy(crash_loop=crash_loop, max_restarts=100), script)
    assert d.outcome == "crashed"
    assert d.calls == 1 + crash_loop
    assert no_progress_streak(d.history) == crash_loop
    assert give_up_reason(d.history, RetryPolicy(crash_loop=crash_loop)).startswith("crash loop")
    # No wait after the attempt that made progress, then exponential backoff with jitter.
    assert len(d.delays) == crash_loop
    assert d.delays[0] == 0.0
    for k, delay in enumerate(d.delays[1:], 1):
        base = 0.5 * 2 ** (k - 1)
        assert base <= delay <= 1.5 * base


def test_crash_loop_streak_is_broken_by_progress() -> None:
    script = [(C.KILLED, N), (C.KILLED, N), (C.KILLED, P)] * 4 + [(C.COMPLETED, P)]
    d = drive(RetryPolicy(crash_loop=3, max_restarts=100), script)
    assert (d.outcome, d.calls) == ("completed", 13)


def test_restarts_with_progress_do_not_consume_the_budget() -> None:
    script = [(c, P) for c in [C.KILLED, C.CRASHED, C.HUNG, C.PREEMPTED, C.KILLED] * 10] + [(C.COMPLETED, P)]
    assert len(script) == 51
    d = drive(RetryPolicy(max_restarts=2, crash_loop=2), script)
    assert d.outcome == "completed"
    assert d.calls == 51
    assert d.delays == [0.0] * 50
    assert unproductive_restarts(d.history) == 0


@pytest.mark.parametrize("max_restarts", [0, 1, 2, 5])
def test_max_restarts_stops_once_spent(max_restarts: int) -> None:
    # Alternate: never a crash loop (crash_loop=2), but one unproductive restart in every two attempts.
    script = [(C.CRASHED, N), (C.CRASHED, P)] * 10
    d = drive(RetryPolicy(max_restarts=max_restarts, crash_loop=2), script)
    assert d.outcome == "crashed"
    assert unproductive_restarts(d.history) == max_restarts + 1
    assert d.calls == 2 * max_restarts + 1  # it gave up on the failure that would need restart max+1
    assert give_up_reason(d.history, RetryPolicy(max_restarts=max_restarts, crash_loop=2)).startswith(
        "restart budget spent"
    )


def test_preemptions_without_progress_are_retried_at_once_but_still_count() -> None:
    d = drive(RetryPolicy(crash_loop=3, max_restarts=100), [(C.PREEMPTED, N)] * 5)
    assert (d.outcome, d.calls) == ("preempted", 3)
    assert d.delays == [0.0, 0.0]


def test_the_loop_is_deterministic_with_a_seed() -> None:
    script = [(C.CRASHED, N)] * 4
    a = drive(RetryPolicy(crash_loop=4), script, seed=7)
    b = drive(RetryPolicy(crash_loop=4), script, seed=7)
    c = drive(RetryPolicy(crash_loop=4), script, seed=8)
    assert a.delays == b.delays
    assert a.delays != c.delays
    assert len(a.delays) == 3


def test_worker_failed_carries_a_snapshot_of_the_history() -> None:
    h = history((C.CRASHED, P))
    exc = WorkerFailed(h)
    h.append(result(2, C.KILLED))
    assert exc.history == (h[0],)
    assert exc.result is h[0]
    assert str(exc) == "crashed"
