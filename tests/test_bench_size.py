"""The size benchmark's own arithmetic: what the steps beside a persist lost, read off one run's records."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.bench_size import persist_slowdown


def run(step_s: list[float], persists: list[tuple[float, float]], warmup: int = 1) -> dict[str, Any]:
    """A run whose steps took ``step_s`` from time 0, with persists as (start, end) in the same clock; a first
    and a last persist (the warm-up's and the epoch end's) are added around them, as a real run has."""
    ends, t = [], 0.0
    for dt in step_s:
        t += dt
        ends.append(t)
    records = [(-10.0, -9.0), *persists, (t + 1, t + 2)]
    return {"step_ends": ends, "warmup": warmup,
            "persist": [{"end": hi, "persist_s": hi - lo} for lo, hi in records]}


@pytest.mark.parametrize(("steps", "persists", "want"), [
    ([1.0] * 10, [(2.5, 4.5)], 0.0),  # steps no slower beside the persist: it cost nothing
    ([1.0, 1, 1, 1.5, 1.5, 1, 1, 1, 1, 1], [(3.1, 5.9)], 1.0),  # two steps half a second slower each
    ([1.0, 1, 1, 1.5, 1.5, 1, 1, 1.2, 1.2, 1], [(3.1, 5.9), (8.1, 10.3)], 0.7),  # the mean over two
    ([1.0, 1, 1, 1.5, 1, 1, 1, 1, 1, 9], [(3.2, 3.8)], 0.5),  # the last step (the epoch end's) left out
])
def test_persist_slowdown_is_what_the_overlapping_steps_lost_per_checkpoint(
        steps: list[float], persists: list[tuple[float, float]], want: float) -> None:
    got, n = persist_slowdown(run(steps, persists))
    assert got == pytest.approx(want) and n == len(persists)


def test_a_run_with_no_persist_between_its_ends_lost_nothing() -> None:
    assert persist_slowdown(run([1.0] * 5, [])) == (0.0, 0)
