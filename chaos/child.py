"""One campaign trial in a process of its own: the campaign writes a :class:`TrialSpec` (the schedule,
the run directory, the reference, where the report goes) and runs its own command line again with
``--trial-child SPEC`` in front, so the child parses exactly the options the campaign did - the
same job, the same supervisor settings - and runs that one trial under the supervisor.

The child writes the trial's report as JSON (:meth:`chaos.report.ChaosReport.to_json`) to a temporary
name and renames it into place, so the campaign sees a whole report or none; none means the trial did
not finish (stopped, or its process failed: its log says why).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.adapter import JobAdapter
from runner.view import PlainView

from .fleet import run_any_trial
from .schedule import Schedule

__all__ = ["TrialSpec", "CHILD_FLAG", "child_argv", "child_main", "read_report"]

CHILD_FLAG = "--trial-child"


@dataclass(frozen=True)
class TrialSpec:
    name: str
    schedule: Schedule
    run_dir: Path
    reference: Path
    report: Path

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "schedule": self.schedule.to_json(), "run_dir": str(self.run_dir),
                "reference": str(self.reference), "report": str(self.report)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TrialSpec:
        return cls(d["name"], Schedule.from_json(d["schedule"]), Path(d["run_dir"]), Path(d["reference"]),
                   Path(d["report"]))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> TrialSpec:
        return cls.from_json(json.loads(Path(path).read_text()))


def child_argv(program: Sequence[str], spec_path: Path, argv: Sequence[str]) -> tuple[str, ...]:
    """The campaign's command line again, for one trial: ``PROGRAM --trial-child SPEC ARGV...``."""
    return (*program, CHILD_FLAG, str(spec_path), *argv)


def _write_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def child_main(spec_path: Path, job: JobAdapter, ns: argparse.Namespace) -> int:
    """Run the trial of ``spec_path`` with the campaign's options ``ns``; its supervisor's lines go to
    standard output (the campaign's log of the trial). Exits with the trial's verdict's code."""
    spec = TrialSpec.load(spec_path)
    store = f"{ns.store.rstrip('/')}/{spec.run_dir.name}" if getattr(ns, "store", None) else None  # one per trial
    trial = run_any_trial(job, ns, spec.schedule, spec.run_dir, spec.reference, view=PlainView(), store=store)
    _write_atomic(spec.report, dict(trial.report.to_json(), outcome_code=int(trial.outcome_code)))
    return trial.report.verdict.exit_code


def read_report(path: Path) -> dict[str, Any] | None:
    """A trial's report as its child wrote it, or None if there is none (or it cannot be read)."""
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) and "verdict" in d else None
