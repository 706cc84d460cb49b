"""chaos/child.py: a trial's spec round-trips through its file, the child's command line is the campaign's
own with ``--trial-child SPEC`` in front (so it parses the same options), a report is read back only
when whole, and ``child_main`` writes the trial's report (the supervised run stood in for here; whole
trials run in tests/e2e/test_campaign.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

import chaos.child
from chaos.child import CHILD_FLAG, TrialSpec, child_argv, child_main, read_report
from chaos.faults import FaultKind
from chaos.trial import TrialResult
from rundir.exitcodes import ExitCode
from runner.trace import Verdict
from tests.helpers.factories import chaos_report, schedule_of

SPEC = TrialSpec("trial-007", schedule_of((FaultKind.SIGKILL, 9), (FaultKind.HANG, 20), seed=42),
                 Path("/c/trial-007"), Path("/refs/abc"), Path("/c/reports/trial-007.json"))


def test_a_spec_round_trips(tmp_path: Path) -> None:
    SPEC.save(tmp_path / "specs" / "t.json")
    assert TrialSpec.load(tmp_path / "specs" / "t.json") == SPEC


def test_the_child_runs_the_campaigns_command_again() -> None:
    argv = ["--budget", "15m", "--epochs", "2", "--", "python", "train.py"]
    assert child_argv(("python", "-m", "runner", "campaign"), Path("/c/specs/t.json"), argv) == (
        "python", "-m", "runner", "campaign", CHILD_FLAG, "/c/specs/t.json", *argv)


@pytest.mark.parametrize(("text", "whole"), [
    ('{"verdict": "pass", "faults": []}', True),
    ('{"verdict": "pa', False),  # cut short
    ('{"faults": []}', False),  # not a report
    ("[1, 2]", False),
    (None, False),  # no file
])
def test_a_report_is_read_back_only_when_whole(tmp_path: Path, text: str | None, whole: bool) -> None:
    path = tmp_path / "r.json"
    if text is not None:
        path.write_text(text)
    assert (read_report(path) is not None) is whole


@pytest.mark.parametrize("verdict", [Verdict.PASS, Verdict.DIVERGED, Verdict.INCOMPLETE])
def test_child_main_writes_the_trials_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             verdict: Verdict) -> None:
    spec = TrialSpec("trial-001", SPEC.schedule, tmp_path / "trial-001", tmp_path / "ref",
                     tmp_path / "reports" / "trial-001.json")
    spec.save(tmp_path / "spec.json")
    ran: list[Any] = []

    def fake_trial(job: Any, ns: argparse.Namespace, schedule: Any, run_dir: Path, ref: Path, **kw: Any) -> TrialResult:
        ran.append((ns.chaos_seed, schedule, run_dir, ref))
        return TrialResult(chaos_report(verdict, "sigkill"), ExitCode.OK, run_dir / "chaos-schedule.json")

    monkeypatch.setattr(chaos.child, "run_any_trial", fake_trial)
    code = child_main(tmp_path / "spec.json", object(), argparse.Namespace(chaos_seed=3))  # type: ignore[arg-type]
    assert code == verdict.exit_code
    assert ran == [(3, SPEC.schedule, spec.run_dir, spec.reference)]
    report = json.loads(spec.report.read_text())
    assert (report["verdict"], report["outcome_code"]) == (verdict.value, 0)
    assert [p.name for p in spec.report.parent.iterdir()] == ["trial-001.json"]  # no temporary file left
