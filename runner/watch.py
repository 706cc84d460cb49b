"""Watching one attempt, as pure functions over values: what the supervisor knows of it, and what to
do next.

Each tick the supervisor reads what the worker appended to the run directory (a :class:`Reading`),
folds it into the attempt's :class:`Watch` with :func:`observe`, and asks :func:`decide` what to
do. Both are pure, so the rules are tested as tables; :mod:`runner.supervisor` carries them out.

A worker shows it is alive by a *sign of life*: a heartbeat whose file changed, or a new step.
Slow is not stuck, so a silent worker is judged hung only when it is also *idle*:

- while training (after its first step, in the ``train`` phase), when it has given no sign of life
  and used no CPU for ``hang_timeout`` (a starved CPU slows a step; it does not stop the clock of
  the process's CPU time), or when it is stopped (state ``T``, e.g. SIGSTOP);
- in start-up (interpreter, imports, data, restore) and in the other phases (a checkpoint being
  written), only past the generous ``startup_timeout``, or when it is stopped;
- in any phase, when it has been silent for ``startup_timeout`` however busy it is (a spinning loop).

Blocked in the kernel on I/O (state ``D``) counts as busy: a page cache dropped under memory
pressure makes imports wait on the disk. :func:`observe` is the one place that turns readings into
``last_alive`` and ``busy_at``; :func:`decide` only compares silences with limits. Hang limits do
not adapt to the measured step time: the CPU test already keeps a slow step alive, and a longer
limit would only delay catching a real hang.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from rundir.contract import FileEffect, SendSignal
from rundir.events import EventKind

__all__ = ["Watch", "Reading", "Action", "Decision", "begin", "observe", "decide", "silent_for", "arm_kill",
           "hung", "TRAIN_PHASE", "STOPPED_STATES", "BLOCKED_STATES"]

#: The heartbeat phase of a worker between steps.
TRAIN_PHASE = "train"
#: Process states of a worker that cannot make progress until someone continues it.
STOPPED_STATES = frozenset({"stopped", "tracing-stop"})
#: Process states of a worker blocked in the kernel (on I/O): waiting, not stuck.
BLOCKED_STATES = frozenset({"disk-sleep"})


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
    heartbeat_moved: bool = False  # a sign of life seen since the spawn
    kill_at: float | None = None  # when to SIGKILL it, once chaos asked for that (``kill_after``)
    cpu_s: float | None = None  # its CPU time (user + system) when last read; None: unknown
    busy_at: float | None = None  # when its CPU time last moved (or it was blocked on I/O)
    stopped: bool = False  # it was stopped (state T) when last read

    @property
    def training(self) -> bool:
        """Past start-up and in the phase where steps and heartbeats flow every step."""
        return self.last_step is not None and self.phase in (None, TRAIN_PHASE)

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
    cpu_s: float | None = None  # the worker's CPU time now; None: not read
    state: str | None = None  # its process state (psutil's names: running, sleeping, disk-sleep, stopped ...)


class Action(Enum):
    """What to do with the watched worker after a tick.

    CONTINUE: keep watching (and hand chaos the tick). STOP: the user signalled the supervisor:
    SIGTERM, ``grace`` seconds, then SIGKILL; the attempt is USER_STOPPED. KILL_HUNG: silent for
    longer than the hang timeout: SIGKILL; the attempt is HUNG. KILL_AFTER_CHAOS: a chaos signal's
    ``kill_after`` ran out with the worker still alive: SIGKILL; classed by its exit status.
    PREEMPT: a preemption notice (:mod:`runner.preempt`): SIGTERM, a grace that ends before the
    deadline, then SIGKILL; classed by its exit status (75: saved), and never restarted.
    """

    CONTINUE = "continue"
    STOP = "stop"
    PREEMPT = "preempt"
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
    reason: str | None = None  # KILL_HUNG: why it is judged hung, in a few words


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
    if r.state is not None or r.cpu_s is not None:
        moved = r.cpu_s is not None and w.cpu_s is not None and r.cpu_s > w.cpu_s
        busy = moved or r.state in BLOCKED_STATES
        w = replace(w, cpu_s=r.cpu_s if r.cpu_s is not None else w.cpu_s, stopped=r.state in STOPPED_STATES,
                    busy_at=now if busy or w.busy_at is None else w.busy_at)
    if r.heartbeat == w.heartbeat and not r.steps:
        return w  # no sign of life
    phase = w.phase
    if r.beat is not None and r.beat.get("attempt") == w.attempt:
        phase = r.beat.get("phase")
    return replace(w, heartbeat=r.heartbeat, last_alive=now, heartbeat_moved=True, phase=phase)


def silent_for(w: Watch, now: float) -> float:
    """Seconds since the worker's last sign of life."""
    return now - w.last_alive


def hung(w: Watch, now: float, *, hang_timeout: float, startup_timeout: float) -> str | None:
    """Why the worker is judged hung at ``now`` (see the module's docstring), or None if it is not."""
    silent = silent_for(w, now)
    if silent <= hang_timeout:
        return None
    if w.stopped:
        return f"stopped and silent for {silent:.1f} s"
    if silent > startup_timeout:
        what = "training" if w.training else "start-up" if w.last_step is None else f"phase {w.phase!r}"
        return f"silent for {silent:.1f} s in {what} (the limit is {startup_timeout:g} s)"
    if not w.training:
        return None  # slow start-up, or a long checkpoint: the start-up deadline applies
    if w.cpu_s is None:
        return f"no heartbeat or step for {silent:.1f} s"  # its CPU time cannot be read: silence decides
    idle = now - (w.busy_at if w.busy_at is not None else w.spawned_at)
    if idle > hang_timeout:
        return f"no heartbeat, step or CPU progress for {min(silent, idle):.1f} s"
    return None


def decide(w: Watch, now: float, *, hang_timeout: float, stop_requested: bool, want_spare: bool,
           startup_timeout: float, preempt: bool = False) -> Decision:
    """What to do after the tick at ``now``. ``want_spare``: standby is on and no spare is up; one is
    started after the first step, so that it does not slow the worker's start-up. ``preempt``: a
    notice is to be acted on; it goes before a stop (the machine is going away either way)."""
    if preempt:
        return Decision(Action.PREEMPT)
    if stop_requested:
        return Decision(Action.STOP)
    why = hung(w, now, hang_timeout=hang_timeout, startup_timeout=startup_timeout)
    if why is not None:
        return Decision(Action.KILL_HUNG, silent_s=silent_for(w, now), reason=why)
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
