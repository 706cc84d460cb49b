"""The campaign's side of its trial processes: make each trial's task when it is about to start, read
what it reported when it ends, replay a trial that did not pass once (its exact schedule, in a new
run directory), and choose how many run at once.

Each trial ends up as one JSON record (see :mod:`chaos.stats`): its report, and ``trial``, ``index``,
``seed``, ``run_dir``, ``kinds``, ``status``, ``process_s`` (its process's wall time), ``peak_rss_mb``
and, for one that did not pass, ``replayed``. A trial the budget cut short is not run; so is a replay,
and a trial whose replay never ran stays failed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from .budget import JobsChoice, choose_jobs
from .child import TrialSpec, child_argv, read_report
from .pool import Done, Task, TaskQueue
from .schedule import SCHEDULE_FILE, Schedule
from .stats import TrialStatus, trial_status

__all__ = ["TrialPlan", "Dispatch", "usable_cores", "STOPPED", "INTERRUPTED", "NOT_REPLAYED"]

STOPPED = "not run: stopped when the time budget ran out"
INTERRUPTED = "not run: the campaign was stopped (SIGINT or SIGTERM) first"
NOT_REPLAYED = "not replayed: the campaign ended first"
_MiB = float(1 << 20)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass(frozen=True)
class TrialPlan:
    index: int
    seed: int
    schedule: Schedule

    @property
    def name(self) -> str:
        return f"trial-{self.index:03d}"


class Dispatch:
    """``plan(i)``: trial i's seed and schedule; ``replay_for(schedule_path)``: the command that replays
    a trial; ``jobs``: as ``--jobs`` asked, or None to choose; ``say``: a line for the person watching."""

    def __init__(self, *, out: Path, reference: Path, program: Sequence[str], argv: Sequence[str],
                 plan: Callable[[int], TrialPlan], replay_for: Callable[[Path], str], jobs: int | None,
                 say: Callable[[str], None], replays: bool = True, cores: int | None = None) -> None:
        self.out, self.reference, self.program, self.argv = out, reference, tuple(program), tuple(argv)
        self.plan, self.replay_for, self.say, self.replays = plan, replay_for, say, replays
        cores = cores or usable_cores()
        self.choice = JobsChoice(jobs, cores, None, None, asked=True) if jobs else choose_jobs(cores, None, None)
        self.records: dict[str, dict[str, Any]] = {}  # by trial name, in the order they started
        self._specs: dict[str, TrialSpec] = {}
        self.queue: TaskQueue | None = None  # set by the campaign: a failed trial's replay goes to its front
        self.peak_rss = 0

    def jobs(self) -> int:
        return self.choice.jobs

    def _task(self, spec: TrialSpec) -> Task:
        spec_path = self.out / "specs" / f"{spec.name}.json"
        spec.save(spec_path)
        self._specs[spec.name] = spec
        return Task(spec.name, child_argv(self.program, spec_path, self.argv), self.out / f"{spec.name}.supervisor.log")

    def task(self, i: int) -> Task:
        """Trial ``i``'s task; its record starts as not run."""
        p = self.plan(i)
        run_dir = self.out / p.name
        self.records[p.name] = {"trial": p.name, "index": p.index, "seed": p.seed, "run_dir": str(run_dir),
                                "kinds": list(dict.fromkeys(f.kind.value for f in p.schedule.faults)),
                                "status": TrialStatus.NOT_RUN.value, "verdict": None, "reason": STOPPED,
                                "replay": self.replay_for(run_dir / SCHEDULE_FILE)}
        report = self.out / "reports" / f"{p.name}.json"
        return self._task(TrialSpec(p.name, p.schedule, run_dir, self.reference, report))

    def _replay_task(self, name: str) -> Task:
        spec = self._specs[name]
        replay = f"{name}-replay"
        return self._task(TrialSpec(replay, spec.schedule, self.out / replay, self.reference,
                                    self.out / "reports" / f"{replay}.json"))

    def _measured(self, d: Done) -> None:
        self.peak_rss = max(self.peak_rss, d.peak_rss)
        if self.choice.asked or d.stopped or not d.peak_rss:
            return
        choice = choose_jobs(self.choice.cores, psutil.virtual_memory().available, self.peak_rss)
        if choice.jobs != self.choice.jobs or self.choice.by_memory is None:
            self.say(choice.line())
        self.choice = choice

    def on_done(self, d: Done) -> None:
        self._measured(d)
        name = d.task.name
        if name.endswith("-replay"):
            self._replayed(name.removesuffix("-replay"), d)
            return
        rec = self.records[name]
        rec.update(process_s=round(d.wall_s, 3), peak_rss_mb=round(d.peak_rss / _MiB, 1))
        if d.stopped:
            self.say(f"{name}: not run (stopped: the time budget ran out)")
            return
        report = read_report(self._specs[name].report)
        if report is None:
            report = {"verdict": "incomplete", "reason": f"its process exited {d.returncode} without a report "
                                                         f"(see {d.task.log})"}
        rec.update(report)
        rec["status"] = trial_status(rec["verdict"]).value
        if rec["status"] != TrialStatus.PASSED and self.replays and self.queue is not None:
            self.queue.push_front(self._replay_task(name))
        self.say(self._line(rec))

    def _replayed(self, name: str, d: Done) -> None:
        rec = self.records[name]
        report = None if d.stopped else read_report(self._specs[f"{name}-replay"].report)
        if report is None:
            reason = NOT_REPLAYED if d.stopped else f"its process exited {d.returncode} without a report"
            rec["replayed"] = {"verdict": None, "reason": reason, "run_dir": str(self.out / f"{name}-replay")}
        else:
            rec["replayed"] = {"verdict": report["verdict"], "reason": report.get("reason"),
                               "run_dir": str(self.out / f"{name}-replay")}
        rec["status"] = trial_status(rec["verdict"], rec["replayed"]["verdict"]).value
        self.say(f"{name} replayed: {rec['replayed']['verdict'] or 'no result'}, so {rec['status']}")

    @staticmethod
    def _line(rec: dict[str, Any]) -> str:
        faults = len(rec.get("faults") or [])
        return f"{rec['trial']}: {rec['verdict']} ({faults} faults, {rec.get('restarts', 0)} restarts)"

    def trials(self, *, interrupted: bool = False) -> list[dict[str, Any]]:
        """Every trial that started, in trial order; a failed one never replayed says so, and with
        ``interrupted`` one not run says the campaign was stopped."""
        out = []
        for rec in self.records.values():
            if interrupted and rec["status"] == TrialStatus.NOT_RUN:
                rec["reason"] = INTERRUPTED
            if rec["status"] == TrialStatus.FAILED and "replayed" not in rec and self.replays:
                rec["replayed"] = {"verdict": None, "reason": NOT_REPLAYED, "run_dir": None}
            out.append(rec)
        return sorted(out, key=lambda r: r["index"])
