"""One machine of a chaos run with a remote store: a supervisor in a process of its own,
``python -m runner --run-dir DIR --store URL ...``, which chaos can lose whole.

Inside the machine, the supervisor injects its part of the schedule as ever (an :class:`Injector`
given by ``--chaos-schedule``), and appends the fate of each fault to ``--chaos-hits``, a file
outside the run directory: the run directory is lost with the machine, what chaos did is not.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from argparse import Namespace
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

from rundir.contract import AttemptEnd
from rundir.events import EventKind
from rundir.exitcodes import ExitCode, UserError
from rundir.journal import append_record, event_problem, iter_records, loss_problem

from .inject import Injector
from .schedule import Schedule, ScheduleError

__all__ = ["Machine", "RecordingInjector", "machine_chaos", "supervisor_argv"]


class RecordingInjector(Injector):
    """An :class:`Injector` that also appends each fault's fate, as it is known, to ``hits_path``."""

    def __init__(self, schedule: Schedule, run_dir: Path, hits_path: Path | None, *, grace: float) -> None:
        super().__init__(schedule, run_dir, grace=grace)
        self.hits_path = hits_path

    def on_exit(self, result: AttemptEnd) -> None:
        known = len(self.hits)
        super().on_exit(result)
        if self.hits_path is not None:
            for hit in self.hits[known:]:
                append_record(self.hits_path, hit.to_json())


def machine_chaos(schedule_path: Path, hits_path: Path | None, run_dir: Path, *, grace: float) -> Injector:
    """The chaos of ``python -m runner --chaos-schedule FILE [--chaos-hits FILE]``."""
    try:
        schedule = Schedule.load(schedule_path)
    except ScheduleError as exc:
        raise UserError(str(exc), ExitCode.BAD_CONFIG) from None
    return RecordingInjector(schedule, run_dir, hits_path, grace=grace)


def supervisor_argv(ns: Namespace) -> list[str]:
    """The supervisor's options in ``ns`` as ``python -m runner`` takes them."""
    argv = ["--max-restarts", str(ns.max_restarts), "--crash-loop", str(ns.crash_loop),
            "--hang-timeout", repr(ns.hang_timeout), "--startup-timeout", repr(ns.startup_timeout),
            "--grace", repr(ns.grace), "--upload-every", repr(ns.upload_every)]
    if ns.standby is not None:
        argv.append("--standby" if ns.standby else "--no-standby")
    if ns.preload is not None:
        argv += ["--preload", ",".join(ns.preload) or "none"]
    if getattr(ns, "nproc_per_node", 1) > 1:  # a gang on each machine
        argv += ["--nproc-per-node", str(ns.nproc_per_node)]
    return argv


class Machine:
    """A supervisor process and everything under it, on one run directory."""

    def __init__(self, index: int, run_dir: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.index, self.run_dir, self.proc, self.log = index, Path(run_dir), proc, log
        self.started = time.time()
        self._offset = 0
        self._last: int | None = None
        self._events_offset = 0
        self._uploads = 0

    @classmethod
    def start(cls, index: int, run_dir: Path, argv: Sequence[str], env: Mapping[str, str], log: Path) -> Machine:
        with open(log, "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "runner", "--run-dir", str(run_dir), *argv],
                                    env=dict(env), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        return cls(index, run_dir, proc, log)

    @property
    def name(self) -> str:
        return self.run_dir.name

    def last_step(self) -> int | None:
        """The last step this machine journaled (steps restored from the store do not count)."""
        for offset, rec in iter_records(self.run_dir / "losses.jsonl", self._offset, check=loss_problem):
            self._offset = offset
            if float(rec.get("time") or 0.0) >= self.started:
                self._last = max(self._last or 0, int(rec["step"]))
        return self._last

    def uploads(self) -> int:
        """How many checkpoints this machine has committed in the store so far."""
        for offset, rec in iter_records(self.run_dir / "events.jsonl", self._events_offset, check=event_problem):
            self._events_offset = offset
            if rec.get("event") == EventKind.CHECKPOINT_UPLOADED and float(rec.get("time") or 0.0) >= self.started:
                self._uploads += 1
        return self._uploads

    def poll(self) -> int | None:
        return self.proc.poll()

    def lose(self) -> int:
        """SIGKILL the supervisor and every process under it at once, as a reclaimed VM's are; returns
        how many there were."""
        try:
            procs = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.Error:
            procs = []
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        psutil.wait_procs(procs, timeout=10.0)
        return len(procs)
