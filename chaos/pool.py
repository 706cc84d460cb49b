"""Run a campaign's trials as child processes, several at once, within a time budget.

Each trial is a process of its own (the supervisor it runs installs signal handlers and a wakeup fd,
which only the main thread of a process may), started in a new session so that a terminal's Ctrl-C
reaches only the campaign, which then stops them. :class:`Pool` starts, polls and stops them and
measures each one's peak memory (the RSS of its whole process tree: supervisor, fork server,
workers, spare, checkpoint writer); :func:`drive` asks :func:`chaos.budget.next_move` what to do
each tick. A trial stopped because the budget ran out is :attr:`Done.stopped`: not run, not failed.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from .budget import Move, next_move, typical_duration

__all__ = ["Task", "Done", "Pool", "TaskQueue", "drive", "tree_rss"]


@dataclass(frozen=True)
class Task:
    """One trial process: its command line, the file its output goes to, and a name to tell it by."""

    name: str
    argv: tuple[str, ...]
    log: Path


@dataclass(frozen=True)
class Done:
    task: Task
    returncode: int | None
    wall_s: float
    peak_rss: int  # bytes, the process tree's largest total seen
    stopped: bool = False  # stopped when the budget ran out


def tree_rss(proc: psutil.Process) -> int:
    """The RSS of ``proc`` and all its descendants, in bytes (shared pages counted in each: an upper bound)."""
    total = 0
    try:
        members = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in members:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


class _Running:
    def __init__(self, task: Task, proc: subprocess.Popen[bytes], started: float) -> None:
        self.task, self.proc, self.started = task, proc, started
        self.peak = 0
        try:
            self.ps: psutil.Process | None = psutil.Process(proc.pid)
        except psutil.Error:
            self.ps = None

    def sample(self) -> None:
        if self.ps is not None:
            self.peak = max(self.peak, tree_rss(self.ps))

    def tree(self) -> list[psutil.Process]:
        try:
            return self.ps.children(recursive=True) if self.ps is not None else []
        except psutil.Error:
            return []


class Pool:
    """The trial processes running now. ``stop_grace``: how long a stopped trial may take to stop its
    own workers (its supervisor gives them the ``--grace``) before the whole tree is killed."""

    def __init__(self, *, stop_grace: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 env: dict[str, str] | None = None) -> None:
        self.stop_grace = stop_grace
        self._clock = clock
        self._env = env
        self._running: list[_Running] = []

    @property
    def running(self) -> int:
        return len(self._running)

    def start(self, task: Task) -> None:
        task.log.parent.mkdir(parents=True, exist_ok=True)
        with open(task.log, "wb") as log:
            proc = subprocess.Popen(list(task.argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, env=self._env)
        self._running.append(_Running(task, proc, self._clock()))

    def _done(self, r: _Running, stopped: bool = False) -> Done:
        return Done(r.task, r.proc.returncode, self._clock() - r.started, r.peak, stopped)

    def poll(self) -> list[Done]:
        """Measure the running trials; return those that ended since the last call."""
        ended = []
        for r in list(self._running):
            if r.proc.poll() is None:
                r.sample()
                continue
            self._running.remove(r)
            ended.append(self._done(r))
        return ended

    def stop_all(self) -> list[Done]:
        """Stop every running trial: SIGTERM (its supervisor stops its workers), then after
        ``stop_grace`` SIGKILL to whatever is left of its tree. Each is returned as stopped, except
        one that had ended already."""
        trees = {id(r): r.tree() for r in self._running}
        signalled = set()
        for r in self._running:
            if r.proc.poll() is None:
                r.proc.send_signal(signal.SIGTERM)
                signalled.add(id(r))
        deadline = self._clock() + self.stop_grace
        for r in self._running:
            try:
                r.proc.wait(timeout=max(0.0, deadline - self._clock()))
            except subprocess.TimeoutExpired:
                r.proc.kill()
                r.proc.wait()
            for p in trees[id(r)] + r.tree():
                try:
                    p.kill()
                except psutil.Error:
                    pass
        done = [self._done(r, stopped=id(r) in signalled) for r in self._running]
        self._running.clear()
        return done


class TaskQueue:
    """Tasks to start: replays pushed to the front, then fresh trials made on demand by ``make(i)`` for
    i = 1..``limit`` (a trial's files are written only when it is about to start)."""

    def __init__(self, make: Callable[[int], Task], limit: int) -> None:
        self._make, self._limit, self._next = make, limit, 1
        self._front: deque[Task] = deque()

    def __len__(self) -> int:
        return len(self._front) + max(0, self._limit - self._next + 1)

    def push_front(self, task: Task) -> None:
        self._front.appendleft(task)

    def pop(self) -> Task:
        if self._front:
            return self._front.popleft()
        if self._next > self._limit:
            raise IndexError("no more tasks")
        self._next += 1
        return self._make(self._next - 1)

    @property
    def made(self) -> int:
        """Fresh trials handed out so far."""
        return self._next - 1


def drive(queue: TaskQueue, pool: Pool, *, jobs: Callable[[], int], on_done: Callable[[Done], None],
          deadline: float | None, clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep, interval: float = 0.2) -> None:
    """Start, wait and stop as :func:`chaos.budget.next_move` says until it says done. ``deadline``: when
    the budget runs out, on ``clock`` (None: no budget). On any exit (Ctrl-C too) nothing is left running."""
    durations: list[float] = []
    try:
        while True:
            for d in pool.poll():
                if not d.stopped:
                    durations.append(d.wall_s)
                on_done(d)
            remaining = None if deadline is None else deadline - clock()
            move = next_move(queued=len(queue), running=pool.running, jobs=jobs(), remaining=remaining,
                             typical=typical_duration(durations))
            if move is Move.START:
                pool.start(queue.pop())
            elif move is Move.STOP:
                for d in pool.stop_all():
                    on_done(d)
            elif move is Move.DONE:
                return
            else:
                sleep(interval)
    finally:
        if pool.running:
            pool.stop_all()

