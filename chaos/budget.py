"""How much a campaign runs, and how many trials at once: pure decisions over plain numbers.

- :func:`parse_duration` reads ``--budget`` (``90s``, ``15m``, ``1h``, ``1h30m``, or bare seconds).
- :func:`choose_jobs` picks how many trials run at once: one per core (a trial is mostly one busy
  worker process), and no more than the available memory holds at a trial's measured peak RSS.
- :func:`next_move` is the scheduler's one decision each tick: start a trial, wait, stop the running
  ones (the budget is spent), or finish. A trial is started only if the typical trial so far
  (:func:`typical_duration`) fits in the time left, so the budget is filled without starting trials
  that are bound to be cut off.
"""

from __future__ import annotations

import argparse
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["parse_duration", "format_duration", "JobsChoice", "choose_jobs", "Move", "next_move",
           "typical_duration", "MEMORY_HEADROOM"]

_NUMBER = r"(\d+(?:\.\d+)?)"
_DURATION = re.compile(rf"(?:{_NUMBER}h)?(?:{_NUMBER}m)?(?:{_NUMBER}s)?")
#: The share of the available memory that trials may take together; the rest is left to the machine.
MEMORY_HEADROOM = 0.8


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``1h``, ``1h30m`` or ``90`` (seconds) as seconds; more than 0."""
    t = text.strip().lower()
    m = _DURATION.fullmatch(t)
    if re.fullmatch(_NUMBER, t):
        seconds = float(t)
    elif t and m:
        h, mins, secs = (float(g) if g else 0.0 for g in m.groups())
        seconds = h * 3600 + mins * 60 + secs
    else:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (for example 90s, 15m, 1h or 1h30m)")
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """``4s``, ``2m05s``, ``1h02m``: short, for a progress line."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


_GiB = float(1 << 30)


@dataclass(frozen=True)
class JobsChoice:
    """How many trials run at once, and why."""

    jobs: int
    cores: int
    available_bytes: int | None  # None: not measured yet
    peak_bytes: int | None  # a trial's peak RSS (the whole process tree); None: not measured yet
    asked: bool = False  # --jobs gave it

    @property
    def by_memory(self) -> int | None:
        """Trials the available memory holds at the measured peak, or None before a trial was measured."""
        if not self.available_bytes or not self.peak_bytes:
            return None
        return max(1, int(self.available_bytes * MEMORY_HEADROOM // self.peak_bytes))

    def line(self) -> str:
        what = f"jobs: {self.jobs} trial{'s' if self.jobs != 1 else ''} at once"
        if self.asked:
            return f"{what} (--jobs)"
        if self.by_memory is None:
            return f"{what} until a trial's memory is measured ({self.cores} cores)"
        assert self.available_bytes and self.peak_bytes
        return (f"{what} ({self.cores} cores; {self.available_bytes / _GiB:.1f} GiB available, a trial peaks at "
                f"{self.peak_bytes / _GiB:.2f} GiB, so memory holds {self.by_memory})")


def choose_jobs(cores: int, available_bytes: int | None, peak_bytes: int | None) -> JobsChoice:
    """One trial per core, fewer if memory holds fewer; one at a time until a trial was measured."""
    probe = JobsChoice(1, max(1, cores), available_bytes, peak_bytes)
    by_memory = probe.by_memory
    if by_memory is None:
        return probe
    return JobsChoice(max(1, min(max(1, cores), by_memory)), max(1, cores), available_bytes, peak_bytes)


class Move(StrEnum):
    START = "start"  # start the next queued trial
    WAIT = "wait"  # let the running trials go on
    STOP = "stop"  # the budget is spent: stop the running trials (they are not run)
    DONE = "done"  # nothing runs and nothing more will start


def typical_duration(durations: Sequence[float]) -> float | None:
    """The median wall time of the trials finished so far (run side by side, as the next one will be)."""
    return statistics.median(durations) if durations else None


def next_move(*, queued: int, running: int, jobs: int, remaining: float | None, typical: float | None) -> Move:
    """What the scheduler does now. ``remaining``: seconds left of the budget (None: no budget);
    ``typical``: a trial's usual wall time (None: none finished yet, so one is started)."""
    if remaining is not None and remaining <= 0:
        return Move.STOP if running else Move.DONE
    fits = remaining is None or typical is None or typical <= remaining
    if queued and running < jobs and fits:
        return Move.START
    return Move.WAIT if running else Move.DONE
