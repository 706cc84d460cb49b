"""A gang of ranks as one worker: ``python -m paddle.distributed.launch --nproc_per_node N`` started
by :class:`GangLauncher`, watched and stopped as a whole by :class:`GangProcess`.

Paddle's launcher runs the ranks (gloo on CPU) and stops its pod when one fails, but only at its
next poll (up to 2 s), and restarts nothing outside elastic mode. Here each rank runs under
:mod:`runner.rankexit`, so the supervisor sees a rank die the moment it does (a pidfd per
wrapper), kills the rest of the gang at once - they would only hang in their next collective -
and reports the exit of the rank that failed first. The supervisor then restarts the whole gang
through its retry policy, from the newest checkpoint every rank committed.

Each attempt's ranks log to ``logs/attempt-NNN-ranks/workerlog.R`` (Paddle's ``--log_dir``), beside
the launcher's own ``logs/attempt-NNN.log``, to which a line naming the first failed rank is added.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

from rundir.classify import signal_name

from .launcher import Worker
from .process import Usage, Vitals, WorkerProcess
from .rankexit import RankRecord, failed, first_failure, read_records
from .runfiles import last_error_line

__all__ = ["GangLauncher", "GangProcess", "gang_command", "gang_state", "ranks_dir_for", "deliver"]

#: How often to look for wrappers not yet seen while the launcher starts them.
_DISCOVER_S = 0.05


def ranks_dir_for(log: Path) -> Path:
    """The attempt's folder of rank logs and records, beside its log: ``attempt-NNN-ranks``."""
    return log.with_name(f"{log.stem}-ranks")


def gang_command(cmd: Sequence[str], nproc: int, ranks_dir: Path, launch: Sequence[str] = ()) -> tuple[str, ...]:
    """Paddle's launcher running ``cmd`` as each of ``nproc`` ranks, each under :mod:`runner.rankexit`;
    ``launch``: more of the launcher's options (a node's, see :mod:`runner.nodes`). The launcher
    takes an executable that is not a ``.py`` file as it is."""
    return (sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(nproc), *launch,
            "--log_dir", str(ranks_dir), sys.executable, "-m", "runner.rankexit", str(ranks_dir), *cmd)


_STATE_ORDER = ("stopped", "tracing-stop", "disk-sleep", "running")
_STOPPED = frozenset(_STATE_ORDER[:2])


def gang_state(states: Sequence[str]) -> str | None:
    """The gang's process state, from its ranks' (psutil's names): stopped if any rank is (the rest
    wait for it in a collective), else blocked on I/O if any is, else running if any is, else the
    first; None for no rank."""
    for s in _STATE_ORDER:
        if s in states:
            return s
    return states[0] if states else None


def deliver(proc: Worker, sig: int, rank: int | None) -> None:
    """Send ``sig`` to ``proc``; to its rank ``rank`` alone where ``proc`` is a gang and a rank is
    named (a chaos fault aimed at one rank)."""
    if rank is not None and isinstance(proc, GangProcess):
        proc.send_rank(rank, sig)
    else:
        proc.send(sig)


class GangLauncher:
    """Starts each attempt's worker as a gang of ``nproc`` ranks of ``cmd`` (no warm spares)."""

    def __init__(self, cmd: Sequence[str], nproc: int) -> None:
        self.cmd, self.nproc = tuple(cmd), nproc

    def open(self) -> None:
        pass

    def start(self, env: Mapping[str, str], log: Path, *, stdin_pipe: bool = False) -> Worker:
        ranks_dir = ranks_dir_for(log)
        proc = WorkerProcess.start(gang_command(self.cmd, self.nproc, ranks_dir), env=env, log_path=log)
        return GangProcess(proc, ranks_dir, self.nproc, log)

    def close(self) -> None:
        pass


class GangProcess:
    """The launcher and its ranks, as one :class:`~runner.launcher.Worker`: its pid is the
    launcher's; its return code is the first failed rank's (:func:`~runner.rankexit.first_failure`)."""

    def __init__(self, launcher: WorkerProcess, ranks_dir: Path, size: int, log: Path) -> None:
        self.launcher, self.ranks_dir, self.size, self.log = launcher, ranks_dir, size, log
        self.world = size  # the job's ranks: more than this gang's where it is one node of several
        self.first_rank = 0  # the global rank of this gang's first: Paddle names the logs by local rank
        self.records: dict[int, RankRecord] = {}
        self._fds: dict[int, int] = {}  # a pidfd per rank whose wrapper is alive: readable once it exits
        self._children: dict[int, int] = {}  # a pidfd of each such rank's process: signalled without a pid race
        self._cpu: dict[int, float] = {}  # each rank's CPU time when last read
        self._rss: float = 0.0
        self._stopped: tuple[int, ...] = ()  # the ranks stopped (state T) when last read
        self.returncode: int | None = None
        self.usage: Usage | None = None
        self.failed_rank: int | None = None

    @property
    def pid(self) -> int:
        return self.launcher.pid

    @property
    def forked(self) -> bool:
        return False

    def _discover(self) -> None:
        """Read the wrappers' records; watch each new wrapper's pid."""
        for rank, rec in read_records(self.ranks_dir).items():
            known = self.records.get(rank)
            self.records[rank] = rec if known is None or known.returncode is None else known
            if known is None and rec.returncode is None:
                try:
                    self._fds[rank] = os.pidfd_open(rec.wrapper)
                    self._children[rank] = os.pidfd_open(rec.pid)
                except ProcessLookupError:  # gone already: its record says how, or it was killed
                    self._ended(rank)

    def _ended(self, rank: int, *, ours: bool = False) -> None:
        """Rank ``rank``'s wrapper exited: take its record. One gone without a word was killed; if
        not by us (``ours``: while we ended the gang), that is how the rank failed."""
        for fds in (self._fds, self._children):
            fd = fds.pop(rank, None)
            if fd is not None:
                os.close(fd)
        rec = read_records(self.ranks_dir).get(rank)
        if rec is not None and rec.returncode is not None:
            self.records[rank] = rec
        elif not ours:
            old = self.records[rank]
            self.records[rank] = RankRecord(rank, old.pid, old.wrapper, -signal.SIGKILL, time.monotonic())

    def wait(self, timeout: float, wake_fds: Sequence[int] = ()) -> bool:
        """Up to ``timeout`` s: True once the gang is over - the launcher exited, or a rank failed
        and the rest were killed."""
        deadline = time.monotonic() + timeout
        while self.returncode is None:
            if len(self.records) < self.size:
                self._discover()
            left = deadline - time.monotonic()
            step = left if len(self.records) == self.size else min(left, _DISCOVER_S)
            own = [fd for fd in (self.launcher.pidfd, *self._fds.values()) if fd is not None]
            ready, _, _ = select.select([*own, *wake_fds], [], [], max(0.0, step))
            for rank, fd in list(self._fds.items()):
                if fd in ready:
                    self._ended(rank)
            if any(failed(r.returncode) for r in self.records.values() if r.returncode is not None):
                self._finish(kill=True)
            elif self.launcher.wait(0):
                self._finish(kill=False)
            elif (ready and not set(ready) <= set(own)) or time.monotonic() >= deadline:
                return False
        return True

    def _finish(self, *, kill: bool, hung: Sequence[int] = ()) -> None:
        """The gang is over: kill what is left of it, reap the launcher, and settle the exit.
        ``hung``: the ranks found stopped when the supervisor ended the gang (none failed by itself)."""
        if kill:
            self._signal_all(signal.SIGKILL)
            self.launcher.kill()
        self._signal_ranks(signal.SIGKILL)  # whatever the launcher left behind
        self._discover()
        for rank in list(self._fds):
            self._ended(rank, ours=True)
        first, code = first_failure(self.records, self.launcher.returncode, self.size)
        self.failed_rank = first
        self.returncode = code if code is not None else -signal.SIGKILL
        lu = self.launcher.usage  # the ranks' share: their CPU time and RSS as last read by vitals()
        self.usage = Usage(max(self._rss, lu.peak_rss_mb if lu else 0.0),
                           sum(self._cpu.values()) + (lu.cpu_s if lu else 0.0))
        if hung:
            self.failed_rank = hung[0]
            self._say(f"rank {hung[0]} of {self.world} was stopped (hung) when the gang was ended", hung[0])
        elif first is not None and failed(code or 0):
            self._say_first_failed(first)

    def _say_first_failed(self, rank: int) -> None:
        """Add a line to the attempt's log naming the rank that failed first, its log, and its last
        line if it exited with an error: the supervisor shows the attempt log's last line."""
        rc = self.records[rank].returncode
        assert rc is not None
        how = f"killed by {signal_name(rc)}" if rc < 0 else f"exit {rc}"
        last = last_error_line(self.ranks_dir / f"workerlog.{rank - self.first_rank}") if rc > 0 else None
        self._say(f"rank {rank} of {self.world} failed first ({how})", rank, last)

    def _say(self, what: str, rank: int, last: str | None = None) -> None:
        """Add ``what`` to the attempt's log, with rank ``rank``'s log (Paddle names it by local rank)."""
        self._note(f"{what}; its log: workerlog.{rank - self.first_rank} in {self.ranks_dir.name}"
                   + (f": {last}" if last else ""))

    def _note(self, line: str) -> None:
        """Add a line to the attempt's log."""
        try:
            with open(self.log, "a") as f:
                f.write(line + "\n")
        except OSError:
            pass

    def poll(self) -> bool:
        return self.wait(0)

    def tell(self, data: bytes) -> bool:
        return False

    def vitals(self) -> Vitals | None:
        """The ranks' CPU time together, and the gang's state (:func:`gang_state`): the launcher
        and the wrappers only wait, and are left out."""
        if self.returncode is not None:
            return None
        if len(self.records) < self.size:
            self._discover()
        states, stopped = [], []
        for rank, rec in sorted(self.records.items()):
            try:
                p = psutil.Process(rec.pid)
                with p.oneshot():
                    t, status = p.cpu_times(), p.status()
                    self._rss = max(self._rss, p.memory_info().rss / 2**20)
            except (psutil.Error, OSError):
                continue
            self._cpu[rank] = t.user + t.system
            states.append(status)
            if status in _STOPPED:
                stopped.append(rank)
        self._stopped = tuple(stopped)
        state = gang_state(states) or (self.launcher.vitals() or Vitals(0.0, "sleeping")).state
        return Vitals(sum(self._cpu.values()), state)

    def _signal_ranks(self, sig: int) -> None:
        """Signal every rank, and its wrapper, not known to have exited (through pidfds: a pid
        the kernel gave to another process since is never signalled)."""
        for fd in (*self._children.values(), *self._fds.values()):
            try:
                signal.pidfd_send_signal(fd, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def _signal_all(self, sig: int) -> None:
        self.launcher.send(sig)  # its group and every descendant it still has
        self._signal_ranks(sig)  # and the ranks, wherever they are now

    def send(self, sig: int) -> None:
        if self.returncode is None:
            self._signal_all(sig)

    def send_rank(self, rank: int, sig: int) -> None:
        """Signal rank ``rank`` alone (a chaos fault aimed at it); nothing if it is not running."""
        if len(self.records) < self.size:
            self._discover()
        fd = self._children.get(rank)
        if fd is not None:
            try:
                signal.pidfd_send_signal(fd, sig)
            except ProcessLookupError:
                pass

    def stop(self, grace: float) -> bool:
        """SIGTERM to every rank (each checkpoints at the step the gang agrees on), up to ``grace``
        s, then SIGKILL. True if the gang ended in time."""
        self.send(signal.SIGTERM)
        self.send(signal.SIGCONT)
        if self.wait(grace):
            return True
        self.kill()
        return False

    def kill(self) -> None:
        """End the gang now (the supervisor judged it hung, or it outlived its grace): the ranks
        found stopped when last read are named as the ones that ended it."""
        if self.returncode is None:
            self._finish(kill=True, hung=self._stopped)

    def kill_leftovers(self) -> None:
        self.launcher.kill_leftovers()  # the ranks were killed when the gang ended
