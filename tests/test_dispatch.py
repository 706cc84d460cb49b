"""chaos/dispatch.py with the trial processes stood in for: each ending is a :class:`chaos.pool.Done` and the
report its child would have written. A trial passes, fails and is replayed first in line, turns flaky when
its replay passes, is not run when the budget stopped it, fails with the name of its log when its process
wrote no report; the number of trials at once is chosen once a trial's memory is measured, and said."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import chaos.dispatch
from chaos.child import CHILD_FLAG, TrialSpec
from chaos.dispatch import INTERRUPTED, NOT_REPLAYED, STOPPED, Dispatch, TrialPlan
from chaos.faults import FaultKind
from chaos.pool import Done, Task, TaskQueue
from runner.trace import Verdict
from tests.helpers.factories import chaos_report, schedule_of

GiB = 1 << 30
PROGRAM = ("python", "-m", "runner", "campaign")


def plan(i: int) -> TrialPlan:
    return TrialPlan(i, 100 + i, schedule_of((FaultKind.SIGKILL, 9), (FaultKind.HANG, 20), (FaultKind.SIGKILL, 30)))


class Campaign:
    """A dispatch, its queue, and what it said."""

    def __init__(self, out: Path, *, jobs: int | None = 2, replays: bool = True) -> None:
        self.said: list[str] = []
        self.d = Dispatch(out=out, reference=out / "ref", program=PROGRAM, argv=["--trials", "5"], plan=plan,
                          replay_for=lambda p: f"replay {p}", jobs=jobs, say=self.said.append, replays=replays, cores=2)
        self.queue = self.d.queue = TaskQueue(self.d.task, 5)

    def start(self) -> Task:
        return self.queue.pop()

    def end(self, task: Task, verdict: Verdict | None, *, stopped: bool = False, peak: int = GiB,
            rc: int = 0) -> None:
        """``task``'s process ended having reported ``verdict`` (None: no report)."""
        if verdict is not None:
            spec = TrialSpec.load(Path(task.argv[task.argv.index(CHILD_FLAG) + 1]))
            spec.report.parent.mkdir(parents=True, exist_ok=True)
            spec.report.write_text(json.dumps(chaos_report(verdict, "sigkill", "hang").to_json()))
        self.d.on_done(Done(task, rc, 8.0, peak, stopped))

    def status(self) -> dict[str, Any]:
        return {t["trial"]: (t["status"], (t.get("replayed") or {}).get("verdict")) for t in self.d.trials()}


def test_a_task_runs_the_campaign_again_for_one_trial(tmp_path: Path) -> None:
    c = Campaign(tmp_path)
    task = c.start()
    spec_path = tmp_path / "specs" / "trial-001.json"
    assert task == Task("trial-001", (*PROGRAM, CHILD_FLAG, str(spec_path), "--trials", "5"),
                        tmp_path / "trial-001.supervisor.log")
    spec = TrialSpec.load(spec_path)
    assert (spec.schedule, spec.run_dir, spec.reference) == (plan(1).schedule, tmp_path / "trial-001", tmp_path / "ref")
    (rec,) = c.d.trials()
    assert rec == {"trial": "trial-001", "index": 1, "seed": 101, "run_dir": str(tmp_path / "trial-001"),
                   "kinds": ["sigkill", "hang"], "status": "not-run", "verdict": None, "reason": STOPPED,
                   "replay": f"replay {tmp_path / 'trial-001' / 'chaos-schedule.json'}"}


def test_passed_failed_flaky_and_not_run(tmp_path: Path) -> None:
    c = Campaign(tmp_path)
    t1, t2, t3, t4, t5 = (c.start() for _ in range(5))
    c.end(t1, Verdict.PASS)
    c.end(t2, Verdict.DIVERGED)
    r2 = c.start()
    assert r2.name == "trial-002-replay"  # first in line
    assert TrialSpec.load(Path(r2.argv[r2.argv.index(CHILD_FLAG) + 1])).schedule == plan(2).schedule  # exactly
    c.end(t3, Verdict.INCOMPLETE)
    r3 = c.start()
    c.end(r2, Verdict.PASS)
    c.end(r3, Verdict.INCOMPLETE)
    c.end(t4, None, stopped=True)
    c.end(t5, Verdict.DIVERGED)
    c.end(c.start(), None, stopped=True)  # trial 5's replay: the budget ran out
    assert c.status() == {"trial-001": ("passed", None), "trial-002": ("flaky", "pass"),
                          "trial-003": ("failed", "incomplete"), "trial-004": ("not-run", None),
                          "trial-005": ("failed", None)}
    rec5 = c.d.trials()[4]
    assert rec5["replayed"]["reason"] == NOT_REPLAYED and rec5["verdict"] == "diverged"
    assert (rec5["process_s"], rec5["peak_rss_mb"]) == (8.0, 1024.0)
    assert "trial-002 replayed: pass, so flaky" in c.said and "trial-004: not run (stopped: the time budget ran out)" \
        in c.said


def test_a_process_that_wrote_no_report_failed(tmp_path: Path) -> None:
    c = Campaign(tmp_path, replays=False)
    t = c.start()
    c.end(t, None, rc=1)
    (rec,) = c.d.trials()
    assert (rec["status"], rec["verdict"]) == ("failed", "incomplete") and "replayed" not in rec
    assert rec["reason"] == f"its process exited 1 without a report (see {t.log})"
    assert len(c.queue) == 4  # no replay queued


def test_a_failed_trial_never_replayed_says_so(tmp_path: Path) -> None:
    c = Campaign(tmp_path)
    c.end(c.start(), Verdict.DIVERGED)  # the campaign ends before its replay starts
    assert c.d.trials()[0]["replayed"] == {"verdict": None, "reason": NOT_REPLAYED, "run_dir": None}


def test_jobs_are_chosen_once_a_trial_is_measured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chaos.dispatch.psutil, "virtual_memory", lambda: SimpleNamespace(available=16 * GiB))
    c = Campaign(tmp_path, jobs=None)
    assert c.d.jobs() == 1 and "until a trial's memory is measured" in c.d.choice.line()
    c.end(c.start(), Verdict.PASS, stopped=True, peak=GiB // 2)  # cut short: it may not have peaked yet
    assert c.d.jobs() == 1
    c.end(c.start(), Verdict.PASS, peak=GiB)
    assert c.d.jobs() == 2 and c.said[-2].startswith("jobs: 2 trials at once (2 cores; 16.0 GiB available")
    c.end(c.start(), Verdict.PASS, peak=8 * GiB)  # a bigger trial: memory holds only one
    assert c.d.jobs() == 1 and c.d.peak_rss == 8 * GiB


def test_jobs_asked_for_are_kept(tmp_path: Path) -> None:
    c = Campaign(tmp_path, jobs=5)
    c.end(c.start(), Verdict.PASS, peak=8 * GiB)
    assert c.d.jobs() == 5 and not any(s.startswith("jobs:") for s in c.said)


def test_trials_a_stopped_campaign_never_finished_say_so(tmp_path: Path) -> None:
    c = Campaign(tmp_path)
    t1, _ = c.start(), c.start()
    c.end(t1, Verdict.PASS)
    assert [(t["status"], t["reason"]) for t in c.d.trials(interrupted=True)][1] == ("not-run", INTERRUPTED)
    assert c.d.trials(interrupted=True)[0]["status"] == "passed"
