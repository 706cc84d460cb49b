"""When to restart a failed worker, and how long to wait first: tenacity strategies over history.

Every attempt's result is kept; a failure raises :class:`WorkerFailed` carrying the whole history, so
each strategy is a pure function of it:

* retry only the retriable exit classes (see :mod:`rundir.classify`);
* an attempt *made progress* if it completed a step no earlier attempt had reached; restarts after
  such attempts are free;
* stop on a crash loop: ``crash_loop`` consecutive failures without progress (an exit for want of
  space is not one: the supervisor waits for space, see :mod:`runner.diskwait`);
* stop when ``max_restarts`` restarts without progress have been spent over the whole job;
* wait nothing after progress or a clean preemption, then back off exponentially with jitter.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tenacity import RetryCallState, Retrying, retry_if_exception
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from rundir.classify import ExitClass

__all__ = [
    "AttemptResult",
    "WorkerFailed",
    "RetryPolicy",
    "no_progress_streak",
    "unproductive_restarts",
    "stop_on_crash_loop",
    "stop_after_unproductive_restarts",
    "wait_backoff",
    "give_up_reason",
    "build_retrying",
]


@dataclass(frozen=True)
class AttemptResult:
    attempt: int
    pid: int
    exit_class: ExitClass
    returncode: int
    signal: str | None
    resumed_from: int | None  # the step the attempt resumed from, if it said
    last_step: int | None  # the highest step it completed
    made_progress: bool
    started: float  # wall clock
    ended: float
    peak_rss_mb: float = 0.0
    cpu_s: float = 0.0
    error: str | None = None  # the last line the worker printed


class WorkerFailed(Exception):
    def __init__(self, history: Sequence[AttemptResult]) -> None:
        super().__init__(history[-1].exit_class.value)
        self.history = tuple(history)

    @property
    def result(self) -> AttemptResult:
        return self.history[-1]


@dataclass(frozen=True)
class RetryPolicy:
    max_restarts: int = 20
    crash_loop: int = 3
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    jitter: float = 0.5


def no_progress_streak(history: Sequence[AttemptResult]) -> int:
    """Failures in a row, newest last, that completed no new step. An exit for want of space
    (``RESOURCE``) is none: the supervisor waited for space before its restart."""
    n = 0
    for r in reversed(history):
        if r.made_progress:
            break
        if r.exit_class is not ExitClass.RESOURCE:
            n += 1
    return n


def unproductive_restarts(history: Sequence[AttemptResult]) -> int:
    return sum(1 for r in history if not r.made_progress and r.exit_class.retriable)


def _history(rs: RetryCallState) -> tuple[AttemptResult, ...]:
    exc = rs.outcome.exception() if rs.outcome is not None else None
    return exc.history if isinstance(exc, WorkerFailed) else ()


class stop_on_crash_loop(stop_base):
    """Stop after ``limit`` failures in a row that completed no new step."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def __call__(self, rs: RetryCallState) -> bool:
        return no_progress_streak(_history(rs)) >= self.limit


class stop_after_unproductive_restarts(stop_base):
    """Stop once ``limit`` restarts without progress were used, counted over the whole job."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def __call__(self, rs: RetryCallState) -> bool:
        return unproductive_restarts(_history(rs)) > self.limit


class wait_backoff(wait_base):
    """0 s after progress or a preemption; otherwise ``initial * 2**(streak-1)`` capped, plus jitter."""

    def __init__(self, initial: float, maximum: float, jitter: float, rng: random.Random | None = None) -> None:
        self.initial, self.maximum, self.jitter = initial, maximum, jitter
        self.rng = rng or random.Random()

    def __call__(self, rs: RetryCallState) -> float:
        history = _history(rs)
        streak = no_progress_streak(history)
        if not history or streak == 0 or history[-1].exit_class is ExitClass.PREEMPTED:
            return 0.0
        base = min(self.maximum, self.initial * 2 ** (streak - 1))
        return base + self.rng.uniform(0, self.jitter * base)


def give_up_reason(history: Sequence[AttemptResult], policy: RetryPolicy) -> str:
    """One line saying why the policy stopped, naming the step where the job keeps dying."""
    last = history[-1]
    where = last.resumed_from if last.last_step is None else last.last_step + 1
    # No step and no resume: it died in start-up, before it restored (not "at step None").
    at = f"at step {where}" if where is not None else "at start-up, before restoring"
    if no_progress_streak(history) >= policy.crash_loop:
        return (f"crash loop: {policy.crash_loop} attempts in a row died without completing a new step; "
                f"it keeps dying {at} ({last.exit_class.value})")
    spent = unproductive_restarts(history)
    return f"restart budget spent: {spent} restarts without progress (--max-restarts {policy.max_restarts})"


def build_retrying(
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], None] = time.sleep,
    before_sleep: Callable[[RetryCallState], None] | None = None,
    rng: random.Random | None = None,
) -> Retrying:
    return Retrying(
        retry=retry_if_exception(lambda e: isinstance(e, WorkerFailed) and e.result.exit_class.retriable),
        stop=stop_on_crash_loop(policy.crash_loop) | stop_after_unproductive_restarts(policy.max_restarts),
        wait=wait_backoff(policy.backoff_initial, policy.backoff_max, policy.jitter, rng),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
