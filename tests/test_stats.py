"""chaos/stats.py as tables over trial records: a trial's status, the tally, the pass rate per fault
kind, the pooled restart latencies, the slowest and failing trials, and the night's summary."""

from __future__ import annotations

from typing import Any

import pytest

from chaos.stats import (
    Tally,
    TrialStatus,
    by_kind,
    failing,
    night_summary,
    restart_latencies,
    slowest,
    tally,
    trial_status,
)


def trial(name: str, status: str, kinds: list[str], *, latency: list[float] = (), goodput: float | None = 0.5,
          wall: float = 10.0) -> dict[str, Any]:
    t: dict[str, Any] = {"trial": name, "status": status, "kinds": kinds}
    if status != "not-run":
        t.update(restart_latency_s=list(latency), goodput=goodput, wall_s=wall, verdict="pass")
    return t


TRIALS = [
    trial("trial-001", "passed", ["sigkill", "hang"], latency=[0.1, 0.3], goodput=0.8, wall=8),
    trial("trial-002", "failed", ["sigterm", "sigkill"], latency=[0.2], goodput=0.4, wall=20),
    trial("trial-003", "flaky", ["crash"], latency=[0.5], goodput=0.6, wall=12),
    trial("trial-004", "not-run", ["sigkill"]),
    trial("trial-005", "passed", ["sigkill", "sigkill"], latency=[], goodput=0.7, wall=9),
]


@pytest.mark.parametrize(("verdict", "replay", "status"), [
    ("pass", None, TrialStatus.PASSED),
    ("pass", "diverged", TrialStatus.PASSED),  # a pass is never replayed; its replay would not matter
    ("diverged", None, TrialStatus.FAILED),  # not replayed (no time left)
    ("diverged", "diverged", TrialStatus.FAILED),
    ("incomplete", "incomplete", TrialStatus.FAILED),
    ("diverged", "pass", TrialStatus.FLAKY),
    ("incomplete", "pass", TrialStatus.FLAKY),
    (None, None, TrialStatus.NOT_RUN),
])
def test_trial_status(verdict: str | None, replay: str | None, status: TrialStatus) -> None:
    assert trial_status(verdict, replay) is status


def test_tally() -> None:
    n = tally(TRIALS)
    assert (n.passed, n.failed, n.flaky, n.not_run, n.run, n.trials) == (2, 1, 1, 1, 4, 5)
    assert n.pass_rate == 0.5  # a flaky trial is not a pass; a trial not run is in no rate
    assert tally([]).pass_rate is None and Tally(not_run=3).pass_rate is None
    assert n.to_json() == {"trials": 5, "run": 4, "passed": 2, "failed": 1, "flaky": 1, "not_run": 1,
                           "pass_rate": 0.5}


def test_pass_rate_per_kind() -> None:
    rates = {k.kind: (k.tally.run, k.tally.passed, k.tally.failed, k.tally.flaky, k.tally.pass_rate)
             for k in by_kind(TRIALS)}
    assert rates == {
        "sigkill": (3, 2, 1, 0, 2 / 3),  # trials 1, 2 and 5 (twice in 5: counted once); 4 did not run
        "sigterm": (1, 0, 1, 0, 0.0),
        "hang": (1, 1, 0, 0, 1.0),
        "crash": (1, 0, 0, 1, 0.0),
    }
    assert [k.kind for k in by_kind(TRIALS)] == ["sigkill", "sigterm", "hang", "crash"]  # FaultKind's order


def test_kinds_come_from_the_faults_when_not_listed() -> None:
    t = {"trial": "t", "status": "passed", "faults": [{"kind": "hang"}, {"kind": "weird"}]}
    assert [k.kind for k in by_kind([t])] == ["hang", "weird"]  # an unknown kind goes last


def test_restart_latencies_are_pooled_over_finished_trials() -> None:
    assert restart_latencies(TRIALS) == [0.1, 0.3, 0.2, 0.5]


def test_slowest_and_failing() -> None:
    assert [t["trial"] for t in slowest(TRIALS, 2)] == ["trial-002", "trial-003"]
    assert [t["trial"] for t in slowest(TRIALS, 10)] == ["trial-002", "trial-003", "trial-005", "trial-001"]
    assert [t["trial"] for t in failing(TRIALS)] == ["trial-002", "trial-003"]


def test_night_summary() -> None:
    s = night_summary(TRIALS, when="2025-01-02T03:17:00+00:00", seed=20250102)
    assert {k: s[k] for k in ("format", "time", "seed", "trials", "passed", "failed", "flaky", "not_run",
                              "pass_rate", "restart_latency_median_s", "goodput_median", "failed_trials",
                              "flaky_trials")} == {
        "format": 1, "time": "2025-01-02T03:17:00+00:00", "seed": 20250102, "trials": 5, "passed": 2, "failed": 1,
        "flaky": 1, "not_run": 1, "pass_rate": 0.5, "restart_latency_median_s": 0.25, "goodput_median": 0.65,
        "failed_trials": ["trial-002"], "flaky_trials": ["trial-003"]}
    assert s["kinds"]["sigkill"] == {"trials": 3, "run": 3, "passed": 2, "failed": 1, "flaky": 0, "not_run": 0,
                                     "pass_rate": 0.6667}


def test_night_summary_of_nothing() -> None:
    s = night_summary([], when="t", seed=None)
    assert (s["trials"], s["pass_rate"], s["restart_latency_median_s"], s["goodput_median"], s["kinds"]) == (
        0, None, None, None, {})
