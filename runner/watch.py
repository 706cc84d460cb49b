"""Watching one attempt, as pure functions over values: what the supervisor knows of it, and what to
do next.

Each tick the supervisor reads what the worker appended to the run directory (a :class:`Reading`),
folds it into the attempt's :class:`Watch` with :func:`observe`, and asks :func:`decide` what to
do. Both are pure, so the rules are tested as tables; :mod:`runner.supervisor` carries them out.

A worker shows it is alive by a *sign of life*: a heartbeat whose file changed, or a new step.
:func:`observe` is the one place that turns readings into ``last_alive``; :func:`decide` only
compares silences with limits. A new sign (the worker's CPU time moving, say) is a new field of
:class:`Reading` read in :func:`observe`; a new limit (a separate deadline for start-up, before the
first sign, using ``spawned_at`` and ``heartbeat_moved``) is a new keyword of :func:`decide`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from rundir.contract import FileEffect, SendSignal
from rundir.events import EventKind

__all__ = ["Watch", "Reading", "Action", "Decision", "begin", "observe", "decide", "silent_for", "arm_kill"]


@dataclass(frozen=True)
class Watch:
    """The attempt being watched, as of the last tick. Times are monotonic seconds."""

    attempt: int
    pid: int
    spawned_at: float
    last_alive: float  # the time of the last sign of life (the spawn, before the first)
    heartbeat: int | None  # the heartbeat file's mtime (ns) when last read; None: no file
    high_water_before: int  # the highest step any earlier attempt completed
    last_step: int | None = None  # the highest step this attempt completed
    phase: str | None = None  # the phase its heartbeat last named
    resumed_from: int | None = None  # the step it said it resumed from
    heartbeat_moved: bool = False  # a sign of life seen since the spawn: start-up is over
    kill_at: float | None = None  # when to SIGKILL it, once chaos asked for that (``kill_after``)

    @property
    def made_progress(self) -> bool:
        """It completed a step no earlier attempt had reached."""
        return self.last_step is not None and self.last_step > self.high_water_before


@dataclass(frozen=True)
class Reading:
    """What was read this tick: the attempt's new records, and the heartbeat file."""

    steps: Sequence[dict[str, Any]] = ()  # new records in losses.jsonl of this attempt
    events: Sequence[dict[str, Any]] = ()  # new records in events.jsonl this attempt's worker wrote
    heartbeat: int | None = None  # the heartbeat file's mtime (ns) now; None: no file
    beat: Mapping[str, Any] | None = None  # its content, read when it changed or a step came


class Action(Enum):
    """What to do with the watched worker after a tick.

    CONTINUE: keep watching (and hand chaos the tick). STOP: the user signalled the supervisor:
    SIGTERM, ``grace`` seconds, then SIGKILL; the attempt is USER_STOPPED. KILL_HUNG: silent for
    longer than the hang timeout: SIGKILL; the attempt is HUNG. KILL_AFTER_CHAOS: a chaos signal's
    ``kill_after`` ran out with the worker still alive: SIGKILL; classed by its exit status.
    """

    CONTINUE = "continue"
    STOP = "stop"
    KILL_HUNG = "kill-hung"
    KILL_AFTER_CHAOS = "kill-after-chaos"


@dataclass(frozen=True)
class Decision:
    """An :class:`Action`, and whether to start the warm spare first. The spare rides along instead
    of being an action of its own: it is started on a tick that goes on, or that ends in chaos's
    kill, but never on one that stops or kills a hung worker."""

    action: Action
    spawn_spare: bool = False
    silent_s: float | None = None  # KILL_HUNG: how long the worker gave no sign of life


def begin(attempt: int, pid: int, now: float, *, heartbeat: int | None, high_water: int) -> Watch:
    """The watch of an attempt just spawned; ``heartbeat`` is the file's mtime before it (another
    attempt's, if any), so that only a change counts as this one's sign of life."""
    return Watch(attempt=attempt, pid=pid, spawned_at=now, last_alive=now, heartbeat=heartbeat,
                 high_water_before=high_water)


def observe(w: Watch, r: Reading, now: float) -> Watch:
    """``w`` updated with what was read at ``now``."""
    resumed_from = w.resumed_from
    for e in r.events:
        if e.get("event") == EventKind.ATTEMPT_STARTED:
            resumed_from = int(e.get("resumed_from_step") or 0)
    last_step = w.last_step
    for rec in r.steps:
        last_step = int(rec["step"]) if last_step is None else max(last_step, int(rec["step"]))
    w = replace(w, resumed_from=resumed_from, last_step=last_step)
    if r.heartbeat == w.heartbeat and not r.steps:
        return w  # no sign of life
    phase = w.phase
    if r.beat is not None and r.beat.get("attempt") == w.attempt:
        phase = r.beat.get("phase")
    return replace(w, heartbeat=r.heartbeat, last_alive=now, heartbeat_moved=True, phase=phase)


def silent_for(w: Watch, now: float) -> float:
    """Seconds since the worker's last sign of life."""
    return now - w.last_alive


def decide(w: Watch, now: float, *, hang_timeout: float, stop_requested: bool, want_spare: bool) -> Decision:
    """What to do after the tick at ``now``. ``want_spare``: standby is on and no spare is up; one is
    started after the first step, so that it does not slow the worker's start-up."""
    if stop_requested:
        return Decision(Action.STOP)
    silent = silent_for(w, now)
    if silent > hang_timeout:
        return Decision(Action.KILL_HUNG, silent_s=silent)
    spare = want_spare and w.last_step is not None
    if w.kill_at is not None and now >= w.kill_at:
        return Decision(Action.KILL_AFTER_CHAOS, spawn_spare=spare)
    return Decision(Action.CONTINUE, spawn_spare=spare)


def arm_kill(w: Watch, actions: Sequence[SendSignal | FileEffect], now: float) -> Watch:
    """``w`` with the kill deadline chaos's signals asked for at ``now`` (the last one's, if several);
    unchanged if none did."""
    kill_at = w.kill_at
    for a in actions:
        if isinstance(a, SendSignal) and a.kill_after is not None:
            kill_at = now + a.kill_after
    return replace(w, kill_at=kill_at)
