"""Acting on a preemption notice, as pure functions over values: whether to act, how long the worker
may take to save its state, whether that fits before the deadline, and the line that tells whoever
reruns the job what happened.

A notice that takes the machine away (``terminate``, ``stop``, ``preempt``, a scheduler's signal) is
acted on once: the worker is sent SIGTERM with a grace that ends :data:`NOTICE_MARGIN_S` before the
deadline (never more than ``--grace``), saves a durable checkpoint at the step it reached and exits
75; the supervisor does not restart it on a machine that is going away, but exits 75 itself, meaning
"preempted, state saved, run me elsewhere". An early warning (AWS rebalance, maintenance) is only
reported unless ``--act-on-rebalance``. A notice that comes while already stopping for one is
recorded, not acted on twice.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .notice import Notice, NoticeChoice, NoticeKind, notice_deadline_ok
from .notice.detect import choice_from_env

__all__ = [
    "NoticeSettings", "Reaction", "respond", "Preemption", "preemption", "stop_grace", "SaveCost",
    "deadline_check", "Commit", "commit_figures", "describe_notice", "preempted_message", "steps_lost",
    "NOTICE_MARGIN_S", "MIN_GRACE_S",
]

#: The worker's grace ends this long before the deadline: the supervisor still records, approves
#: (Azure) and exits, and a deadline read off a clock of another machine may be early.
NOTICE_MARGIN_S = 2.0
#: However close the deadline, the worker gets this long to finish its step and save.
MIN_GRACE_S = 1.0

_SCHEDULERS = frozenset({NoticeChoice.K8S, NoticeChoice.SLURM})


@dataclass(frozen=True)
class NoticeSettings:
    """Where to watch for a preemption notice (``--notice``, ``--notice-signal``, ``--metadata-url``,
    ``--act-on-rebalance``, ``--notice-poll``). The default watches nothing."""

    choice: NoticeChoice = NoticeChoice.NONE
    signal: int = signal.SIGTERM
    metadata_url: str | None = None
    act_on_early: bool = False
    poll_s: float | None = None  # poll every S seconds instead of each source's own interval

    def notice_signals(self, environ: Mapping[str, str]) -> frozenset[int]:
        """The signals that are a notice when they reach the supervisor: under Kubernetes or Slurm
        (named, or found in the environment by ``auto``), ``--notice-signal`` and SIGTERM, which both
        schedulers send when they take the machine. Elsewhere none: SIGTERM stops the job (exit 130)."""
        choice = choice_from_env(environ) if self.choice is NoticeChoice.AUTO else self.choice
        return frozenset({self.signal, signal.SIGTERM}) if choice in _SCHEDULERS else frozenset()


class Reaction(StrEnum):
    """What the supervisor does with a notice."""

    ACT = "act"  # stop the worker, let it save, exit 75
    REPORT = "report"  # an early warning: recorded and shown only
    RECORD = "record"  # already stopping for a notice: recorded, not acted on twice


def respond(notice: Notice, *, stopping: bool, act_on_early: bool) -> Reaction:
    if notice.early and not act_on_early:
        return Reaction.REPORT
    return Reaction.RECORD if stopping else Reaction.ACT


@dataclass(frozen=True)
class Preemption:
    """A notice acted on. ``received_at`` and ``deadline_at`` are on the supervisor's monotonic clock."""

    notice: Notice
    received_at: float
    deadline_at: float | None


def preemption(notice: Notice, now: float, wall_now: float) -> Preemption:
    """The notice acted on at ``now`` (monotonic), its deadline moved from the wall clock to ours."""
    deadline_at = None if notice.deadline is None else now + (notice.deadline - wall_now)
    return Preemption(notice, now, deadline_at)


def stop_grace(grace: float, deadline_at: float | None, now: float, margin_s: float = NOTICE_MARGIN_S,
               min_grace_s: float = MIN_GRACE_S) -> float:
    """The worker's time to save before SIGKILL: ``--grace``, cut to end ``margin_s`` before the
    deadline, but never under ``min_grace_s`` (nor over ``grace``)."""
    if deadline_at is None:
        return grace
    return min(grace, max(min_grace_s, deadline_at - now - margin_s))


@dataclass(frozen=True)
class SaveCost:
    """What saving the state at a notice costs, as measured: the worker first finishes the step it
    is in, then writes a durable checkpoint."""

    step_s: float
    checkpoint_s: float
    checkpoint_bytes: int | None = None

    @property
    def total_s(self) -> float:
        return self.step_s + self.checkpoint_s


def _size(n: int | None) -> str:
    if n is None:
        return "size unknown"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def deadline_check(source: str, window_s: float, grace_s: float, cost: SaveCost,
                   margin_s: float = NOTICE_MARGIN_S) -> tuple[bool, str]:
    """Whether the state can be saved within a notice's window (less the margin) and within
    ``--grace``, and the sentence that says so with the sizes and times."""
    fits_window = notice_deadline_ok(window_s, 0.0, cost.total_s, margin_s)
    fits_grace = cost.total_s <= grace_s
    article = "an" if source[:1] in ("a", "e", "i", "o", "u") else "a"
    what = (f"{article} {source} notice gives {window_s:g} s; finishing a step ({cost.step_s:.2f} s) and a durable "
            f"checkpoint ({_size(cost.checkpoint_bytes)}, {cost.checkpoint_s:.2f} s) takes {cost.total_s:.2f} s")
    if fits_window and fits_grace:
        return True, f"{what}: it fits, {window_s - margin_s - cost.total_s:.1f} s to spare"
    why = (f"more than the window less a {margin_s:g} s margin" if not fits_window
           else f"more than --grace {grace_s:g} s")
    return False, f"{what}, {why}: the state will not be saved in time (checkpoint less, or on a faster disk)"


@dataclass(frozen=True)
class Commit:
    """A checkpoint the worker committed, from its ``checkpoint-saved`` event (``time``: wall clock)."""

    step: int
    name: str
    time: float
    durable: bool


def commit_figures(notice: Notice, commit: Commit | None) -> dict[str, Any]:
    """Notice-to-commit time, and how the commit stands against the deadline (None: unknown)."""
    if commit is None:
        return {"notice_to_commit_s": None, "deadline_slack_s": None, "before_deadline": False}
    slack = None if notice.deadline is None else round(notice.deadline - commit.time, 3)
    return {"notice_to_commit_s": round(commit.time - notice.received, 3), "deadline_slack_s": slack,
            "before_deadline": None if slack is None else slack >= 0}


def describe_notice(notice: Notice) -> str:
    """``aws notice (terminate at 10:02:00Z)``, ``slurm notice (SIGUSR1)``."""
    if notice.kind is NoticeKind.SIGNAL:
        what = str(notice.detail.get("signal", "a signal"))
    elif notice.kind is NoticeKind.MAINTENANCE and notice.detail.get("value"):
        what = f"maintenance: {notice.detail['value']}"
    else:
        what = notice.kind.value
    if notice.deadline is not None and math.isfinite(notice.deadline):
        what += " at " + time.strftime("%H:%M:%SZ", time.gmtime(notice.deadline))
    return f"{notice.source.value} notice ({what})"


def steps_lost(last_step: int | None, saved_step: int | None) -> int:
    """Steps the attempt completed (``last_step``: the highest, 0-based) past its newest checkpoint
    (``saved_step``: steps done); 0 if it completed none."""
    if last_step is None:
        return 0
    return max(0, last_step + 1 - (saved_step or 0))


def preempted_message(notice: Notice, *, saved_step: int | None, lost: int, exit_how: str) -> str:
    """The supervisor's closing line after a notice (exit 75)."""
    head = f"preempted by {describe_notice(notice)}"
    saved = f"step {saved_step}" if saved_step else "step 0 (no checkpoint yet)"
    if lost == 0:
        return f"{head}: state saved at {saved}; rerun on another machine to continue"
    return (f"{head}: the worker did not save its state in time ({exit_how}); its newest checkpoint is at "
            f"{saved}, {lost} step{'s' if lost != 1 else ''} to recompute; rerun on another machine to continue")
