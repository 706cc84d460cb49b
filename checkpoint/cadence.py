"""How often to checkpoint: every K steps, or chosen by Young's formula from measured costs.

Young (1974): the interval that minimises lost work plus checkpoint overhead is
``T = sqrt(2 * C * MTBF)``, with ``C`` the time a checkpoint costs the job and ``MTBF`` the mean time
between failures. ``C`` is measured as the run goes (the stall an asynchronous checkpoint causes on
the training thread, and what the steps beside its persist lose to the writer); the MTBF is given,
or estimated from the run's own history of failures (:func:`failure_history`, read from the
supervisor's records in ``events.jsonl``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rundir.classify import ExitClass
from rundir.events import EventKind, Source

__all__ = ["young_interval_s", "interval_steps", "estimate_mtbf", "failure_history", "durable_due", "upload_due",
           "Cadence",
           "DEFAULT_MTBF_S", "DEFAULT_DURABLE_EVERY_S", "MIN_COST_S"]

DEFAULT_MTBF_S = 3600.0  # no failures seen yet and none given: assume one an hour
MIN_COST_S = 1e-3
#: How old the newest durable checkpoint may get while checkpoints are frequent (see durable_due).
DEFAULT_DURABLE_EVERY_S = 10.0  # a floor, so that a free-looking checkpoint does not mean "every step" blindly


def young_interval_s(cost_s: float, mtbf_s: float) -> float:
    return math.sqrt(2.0 * max(cost_s, 0.0) * max(mtbf_s, 0.0))


def interval_steps(cost_s: float, mtbf_s: float, step_s: float, persist_s: float = 0.0) -> int:
    """Young's interval in steps; never shorter than a background persist, so they never queue."""
    if step_s <= 0:
        return 1
    t = young_interval_s(max(cost_s, MIN_COST_S), mtbf_s)
    return max(1, round(t / step_s), math.ceil(persist_s / step_s))


def durable_due(now: float, last_durable: float | None, every_s: float) -> bool:
    """Whether a checkpoint taken at ``now`` should be fsynced. Every checkpoint survives its process
    being killed; only a durable one survives the machine going down, and it costs four fsyncs.
    Frequent checkpoints are made durable once every ``every_s`` seconds (0: all of them)."""
    return last_durable is None or every_s <= 0 or now - last_durable >= every_s


def upload_due(now: float, last: float | None, every_s: float) -> bool:
    """Whether a checkpoint taken at ``now`` goes to the remote store: the first one of an attempt (the
    last attempt's newest may never have got there), then one every ``every_s`` seconds (0: all)."""
    return last is None or every_s <= 0 or now - last >= every_s


def estimate_mtbf(elapsed_s: float, failures: int, given: float | None = None) -> float:
    """The MTBF to plan with: the one given, else the run's own so far, else ``DEFAULT_MTBF_S``."""
    if given is not None:
        return given
    if failures > 0 and elapsed_s > 0:
        return elapsed_s / failures
    return DEFAULT_MTBF_S


#: How attempts end without a failure: the job finished, or the user stopped it.
_NOT_FAILED = frozenset({ExitClass.COMPLETED.value, ExitClass.USER_STOPPED.value})


def failure_history(events: Iterable[Mapping[str, Any]], now: float) -> tuple[float, int]:
    """(seconds from the run's first ``attempt-spawned`` to ``now``, attempts that ended in a failure),
    from the supervisor's event records; the records of other sources are not its word on attempts."""
    first: float | None = None
    failures = 0
    for e in events:
        if e.get("source") != Source.SUPERVISOR.value:
            continue
        kind = e.get("event")
        if kind == EventKind.ATTEMPT_SPAWNED.value and first is None:
            first = float(e["time"])
        elif kind == EventKind.ATTEMPT_EXITED.value and e.get("exit_class") not in _NOT_FAILED:
            failures += 1
    return (now - first if first is not None else 0.0), failures


def _average(old: float, new: float) -> float:
    """A moving average of step times: the first sample as it is, then 0.9 old + 0.1 new."""
    return new if old == 0 else 0.9 * old + 0.1 * new


@dataclass
class Cadence:
    """Decides, step by step, whether a checkpoint is due. ``every``: a fixed K, 0 for never (the
    job's own epoch-end checkpoints still happen), or ``"auto"``."""

    every: int | str = 0
    mtbf_s: float = DEFAULT_MTBF_S
    step_s: float = 0.0  # moving average of step time
    idle_step_s: float = 0.0  # ... of the steps with no persist running beside them
    busy_step_s: float = 0.0  # ... of the steps with one running beside them (the writer takes CPU and memory)
    cost_s: float = 0.0  # moving average of the checkpoint stall
    persist_s: float = 0.0  # moving average of the time to persist one checkpoint
    last: int = 0  # steps done at the last checkpoint
    checkpoints: int = 0  # checkpoints recorded
    stall_total_s: float = 0.0  # everything they cost the training thread, deferred waits included

    def record_step(self, dt: float, *, beside_persist: bool = False) -> None:
        """A step took ``dt`` seconds; ``beside_persist``: a checkpoint was being persisted meanwhile."""
        self.step_s = _average(self.step_s, dt)
        if beside_persist:
            self.busy_step_s = _average(self.busy_step_s, dt)
        else:
            self.idle_step_s = _average(self.idle_step_s, dt)

    def slowdown_s(self) -> float:
        """What the steps beside one persist lose to it, by the averages: the share of a step's time it
        takes, over the persist's length. Part of a checkpoint's cost that the stall does not show: with a
        large state the writer's hashing and copying slow training down while it runs."""
        if self.busy_step_s <= 0 or self.idle_step_s <= 0:
            return 0.0
        return max(0.0, 1.0 - self.idle_step_s / self.busy_step_s) * self.persist_s

    def record_checkpoint(self, steps_done: int, stall_s: float, persist_s: float | None = None) -> None:
        self.last = steps_done
        self.checkpoints += 1
        self.stall_total_s += max(stall_s, 0.0)
        self.cost_s = stall_s if self.cost_s == 0 else 0.7 * self.cost_s + 0.3 * stall_s
        if persist_s is not None:
            self.record_persist(persist_s)

    def add_cost(self, extra_s: float) -> None:
        """More cost of the latest checkpoint, found later (a deferred copy the job waited for):
        added to the average whole, which overstates it a little - the safe side."""
        self.cost_s += max(extra_s, 0.0)
        self.stall_total_s += max(extra_s, 0.0)

    def record_persist(self, persist_s: float) -> None:
        """How long the writer took to persist one checkpoint (from the snapshot to the commit)."""
        self.persist_s = persist_s if self.persist_s == 0 else 0.7 * self.persist_s + 0.3 * persist_s

    def interval(self) -> int | None:
        if self.every == "auto":
            if self.step_s == 0:
                return None
            return interval_steps(self.cost_s + self.slowdown_s(), self.mtbf_s, self.step_s, self.persist_s)
        return int(self.every) or None

    def due(self, steps_done: int) -> bool:
        k = self.interval()
        if k is None:
            return False
        if self.every == "auto":
            return steps_done - self.last >= k
        return steps_done % k == 0
