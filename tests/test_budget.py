"""chaos/budget.py as tables: reading ``--budget``, choosing how many trials run at once, and the
scheduler's one decision per tick; a scheduler that starts trials bound to be cut off is caught."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import pytest

from chaos.budget import (
    MEMORY_HEADROOM,
    JobsChoice,
    Move,
    choose_jobs,
    format_duration,
    next_move,
    parse_duration,
    typical_duration,
)

GiB = 1 << 30


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("15m", 900), ("1h", 3600), ("1h30m", 5400), ("2m30s", 150), ("90", 90), ("2.5m", 150),
    (" 5M ", 300), ("1h0m1s", 3601),
])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("text", "says"), [
    ("0s", "more than 0"), ("0", "more than 0"), ("", "not a duration"), ("m", "not a duration"),
    ("15 minutes", "not a duration"), ("1m1h", "not a duration"), ("-5m", "not a duration"), ("1d", "not a duration"),
])
def test_bad_durations(text: str, says: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=says):
        parse_duration(text)


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (4.4, "4s"), (59.6, "1m00s"), (125, "2m05s"),
                                               (3720, "1h02m"), (-3, "0s")])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(("cores", "available", "peak", "jobs"), [
    (2, None, None, 1),  # nothing measured yet: one at a time
    (2, 16 * GiB, None, 1),
    (2, 16 * GiB, 1 * GiB, 2),  # the cores bound it
    (8, 4 * GiB, 1 * GiB, 3),  # memory bounds it: 4 GiB * 0.8 / 1 GiB
    (8, 1 * GiB, 2 * GiB, 1),  # memory holds less than one: still one
    (1, 64 * GiB, GiB // 2, 1),
    (0, 64 * GiB, GiB, 1),  # no cores reported
])
def test_choose_jobs(cores: int, available: int | None, peak: int | None, jobs: int) -> None:
    assert choose_jobs(cores, available, peak).jobs == jobs


def test_the_choice_says_why() -> None:
    assert choose_jobs(2, None, None).line() == "jobs: 1 trial at once until a trial's memory is measured (2 cores)"
    line = choose_jobs(2, 16 * GiB, GiB).line()
    assert line == ("jobs: 2 trials at once (2 cores; 16.0 GiB available, a trial peaks at 1.00 GiB, so memory "
                    f"holds {int(16 * MEMORY_HEADROOM)})")
    assert JobsChoice(3, 2, None, None, asked=True).line() == "jobs: 3 trials at once (--jobs)"


def test_typical_duration_is_the_median() -> None:
    assert typical_duration([]) is None
    assert typical_duration([10.0, 2.0, 30.0]) == 10.0  # one slow trial does not stop the others from starting


Decide = Callable[..., Move]


@pytest.mark.parametrize(("queued", "running", "jobs", "remaining", "typical", "move"), [
    (5, 0, 2, None, None, Move.START),  # no budget, nothing measured
    (5, 2, 2, None, 10.0, Move.WAIT),  # all slots busy
    (5, 1, 2, 100.0, 10.0, Move.START),  # a free slot and time for a typical trial
    (5, 1, 2, 5.0, 10.0, Move.WAIT),  # a typical trial would not fit: let the running one finish
    (5, 0, 2, 5.0, 10.0, Move.DONE),  # ... and with nothing running, that is the end
    (5, 0, 2, 5.0, None, Move.START),  # nothing measured yet: try one
    (0, 1, 2, 100.0, 10.0, Move.WAIT),  # nothing left to start
    (0, 0, 2, 100.0, 10.0, Move.DONE),
    (5, 2, 2, 0.0, 10.0, Move.STOP),  # the budget is spent: stop what runs
    (5, 0, 2, -1.0, 10.0, Move.DONE),
    (0, 0, 1, None, None, Move.DONE),
])
def test_next_move(queued: int, running: int, jobs: int, remaining: float | None, typical: float | None,
                   move: Move) -> None:
    assert next_move(queued=queued, running=running, jobs=jobs, remaining=remaining, typical=typical) is move


def simulate(decide: Decide, *, budget: float, durations: list[float], jobs: int) -> tuple[int, int]:
    """A campaign on a fake clock: trials of the given durations, ``jobs`` at once, one tick a second.
    Returns (trials finished, trials stopped by the budget)."""
    queue, running, done, stopped, now, finished = list(durations), [], 0, 0, 0.0, []
    while True:
        for end in [e for e in running if e <= now]:
            running.remove(end)
            done += 1
            finished.append(durations[done - 1])
        move = decide(queued=len(queue), running=len(running), jobs=jobs, remaining=budget - now,
                      typical=typical_duration(finished))
        if move is Move.START:
            running.append(now + queue.pop(0))
        elif move is Move.STOP:
            stopped += len(running)
            running.clear()
        elif move is Move.DONE:
            return done, stopped
        else:
            now += 1


def start_whenever_free(*, queued: int, running: int, jobs: int, remaining: float | None,
                        typical: float | None) -> Move:
    return next_move(queued=queued, running=running, jobs=jobs, remaining=remaining, typical=None)


def test_the_budget_is_filled_without_trials_bound_to_be_cut_off() -> None:
    assert simulate(next_move, budget=100, durations=[10.0] * 30, jobs=2) == (20, 0)
    assert simulate(next_move, budget=105, durations=[10.0] * 30, jobs=2) == (20, 0)
    assert simulate(start_whenever_free, budget=105, durations=[10.0] * 30, jobs=2) == (20, 2)  # broken: caught
