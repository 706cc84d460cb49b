"""Waiting out a full disk. A worker that exits 74 found no space, no quota or a failing disk for a
write; restarting it at once would only fail again, spending the restart budget in a crash loop. The
supervisor waits for space instead, then restarts, and gives up (exit 74) after ``--disk-wait``.

*Enough* space is twice the newest checkpoint plus 1 MiB (:func:`need_bytes`): room for the next
checkpoint while the older ones are still there (they are pruned only after it commits), for the one
after it, and for the journals and logs. Free space is what ``shutil.disk_usage`` reports for the run
directory's file system. A quota or a failing disk does not show there: the restart then comes at
once, and each further exit 74 of the same stretch (no step gained between them) waits longer first
(:func:`restart_delay`), all within the same bound.

What to do is a pure function of free bytes, needed bytes and seconds waited (:func:`decide`); the
polling with back-off, the events and the one line on the terminal are :class:`DiskWait`'s.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from enum import Enum
from pathlib import Path

from rundir.events import EventKind

from .launcher import Record

__all__ = ["DiskAction", "decide", "poll_delay", "restart_delay", "need_bytes", "checkpoint_bytes", "free_bytes",
           "mib", "give_up_message", "DiskWait", "HEADROOM", "DEFAULT_DISK_WAIT_S"]

MiB = 1 << 20
#: Room for the journals, the events and the logs, beside twice the newest checkpoint.
HEADROOM = MiB
#: ``--disk-wait``'s default: how long one stretch of exits for want of space may wait in all.
DEFAULT_DISK_WAIT_S = 600.0
_POLL_FIRST, _POLL_MAX = 0.25, 5.0
_RESTART_FIRST, _RESTART_MAX = 0.5, 30.0


class DiskAction(Enum):
    WAIT = "wait"  # not enough space yet: look again after a while
    RESTART = "restart"  # enough space: start the next attempt
    GIVE_UP = "give-up"  # waited as long as allowed: stop with exit 74


def decide(free: int, need: int, waited_s: float, limit_s: float) -> DiskAction:
    """What to do ``waited_s`` seconds into a stretch of exits for want of space: give up once the
    bound is reached (so ``--disk-wait 0`` never restarts), restart once ``free >= need``, else wait."""
    if waited_s >= limit_s:
        return DiskAction.GIVE_UP
    return DiskAction.RESTART if free >= need else DiskAction.WAIT


def poll_delay(polls: int) -> float:
    """Seconds before looking at the free space again, after ``polls`` looks: 0.25 s doubling to 5 s."""
    return min(_POLL_MAX, _POLL_FIRST * 2**polls)


def restart_delay(restarts: int) -> float:
    """Seconds before the ``restarts+1``-th restart of one stretch: none for the first; then 0.5 s
    doubling to 30 s, for a quota or a failing disk that free space does not show."""
    return 0.0 if restarts <= 0 else min(_RESTART_MAX, _RESTART_FIRST * 2 ** (restarts - 1))


def need_bytes(checkpoint: int) -> int:
    """Enough free space: twice the newest checkpoint's size, plus :data:`HEADROOM`."""
    return 2 * max(0, checkpoint) + HEADROOM


def checkpoint_bytes(run_dir: Path) -> int:
    """The size of the newest committed checkpoint (one with a manifest) in ``run_dir``; 0 if none."""
    root = Path(run_dir) / "checkpoints"
    try:
        names = sorted((e.name for e in os.scandir(root) if e.name.startswith("step-")), reverse=True)
        for name in names:
            if (root / name / "MANIFEST.json").is_file():
                return sum(e.stat().st_size for e in os.scandir(root / name) if e.is_file())
    except OSError:
        pass
    return 0


def free_bytes(path: Path) -> int:
    """Bytes free for an unprivileged user on ``path``'s file system."""
    return shutil.disk_usage(path).free


def mib(n: int) -> str:
    """``n`` bytes as ``"0.1 MiB"``, ``"4 MiB"``."""
    return f"{round(n / MiB, 1):g} MiB"


def give_up_message(run_dir: Path, free: int, need: int, limit_s: float) -> str:
    """The one line of a stop after ``--disk-wait``: the disk stayed full, or it had space and the
    worker still could not write (a quota, a failing disk)."""
    if free < need:
        return (f"disk full at {run_dir}: no space for {limit_s:g} s ({mib(free)} free, need {mib(need)}); "
                "free some space and rerun the same command to continue")
    return (f"the worker could not write in {run_dir} for {limit_s:g} s although {mib(free)} is free "
            "(a quota, or an I/O error?); rerun the same command once it is fixed")


class DiskWait:
    """The waits of one supervisor. A *stretch* is a run of exits for want of space with no step
    gained in between; ``limit_s`` bounds each stretch's waiting in all. ``sleep`` and ``clock`` are
    the supervisor's (interruptible; fake in tests); ``stopped`` says the user asked to stop; ``tick``
    runs at each look (chaos sees the wait there); ``free`` is :func:`free_bytes` unless faked."""

    def __init__(self, run_dir: Path, limit_s: float, *, sleep: Callable[[float], None], clock: Callable[[], float],
                 record: Record, note: Callable[[str], None], stopped: Callable[[], bool],
                 tick: Callable[[int], None] | None = None, free: Callable[[Path], int] | None = None) -> None:
        self.run_dir, self.limit_s = Path(run_dir), limit_s
        self._sleep, self._clock, self._record, self._note = sleep, clock, record, note
        self._stopped, self._tick, self._free = stopped, tick, free or free_bytes
        self.since: float | None = None  # when the stretch began
        self.restarts = 0  # restarts in this stretch
        self.last: tuple[int, int] = (0, 0)  # free and needed bytes at the last look

    def wait(self, attempt: int, made_progress: bool) -> DiskAction | None:
        """After attempt ``attempt`` exited 74: RESTART once there is enough space, GIVE_UP when the
        stretch has waited ``limit_s``; None if the user asked to stop meanwhile."""
        if made_progress or self.since is None:
            self.since, self.restarts = self._clock(), 0
        if self.restarts:
            self._sleep(min(restart_delay(self.restarts), max(0.0, self.limit_s - (self._clock() - self.since))))
        need = need_bytes(checkpoint_bytes(self.run_dir))
        polls, said = 0, False
        while not self._stopped():
            if self._tick is not None:
                self._tick(attempt)  # first: a change it makes (chaos freeing the disk) is seen at once
            free, waited = self._look(), self._clock() - self.since
            self.last = (free, need)
            action = decide(free, need, waited, self.limit_s)
            if action is DiskAction.GIVE_UP:
                return action
            if action is DiskAction.RESTART:
                self._restarting(attempt, free, need, waited, said)
                return action
            if not said:
                self._record(EventKind.DISK_FULL, attempt=attempt, path=str(self.run_dir), free_bytes=free,
                             need_bytes=need, limit_s=self.limit_s, waited_s=round(waited, 3))
                self._note(f"disk full at {self.run_dir}: waiting up to {self.limit_s:g} s for space "
                           f"({mib(free)} free, need {mib(need)})")
                said = True
            self._sleep(min(poll_delay(polls), max(0.0, self.limit_s - waited)))
            polls += 1
        return None

    def _look(self) -> int:
        try:
            return self._free(self.run_dir)
        except OSError:
            return 0  # the run directory's file system cannot even be asked: no space to count on

    def _restarting(self, attempt: int, free: int, need: int, waited: float, waited_here: bool) -> None:
        self.restarts += 1
        if waited_here:
            self._record(EventKind.DISK_SPACE_RETURNED, attempt=attempt, path=str(self.run_dir), free_bytes=free,
                         need_bytes=need, waited_s=round(waited, 3))
            self._note(f"space is back at {self.run_dir} ({mib(free)} free after {waited:.1f} s): restarting")
        else:
            self._note(f"attempt {attempt} could not write (exit 74), yet {self.run_dir} has {mib(free)} free: "
                       "restarting")
