"""``campaign`` end to end with the paced test job (tests/jobs/paced.py, through tests/jobs/paced_campaign.py):
real trial processes, supervisors, workers and signals, a few seconds a trial.

- Trials run side by side give what they give one at a time: the same verdicts, faults and steps.
- A budget is filled and kept: trials that would not fit are not started, and the ones it cuts short are
  stopped and reported as not run (exit 4 when none finished), with nothing left running.
- Nights are compared: a slower restart (the test-only ``PACED_SLOW_RESUME_S``) and then a fault kind
  whose resume breaks (``PACED_BREAK_AFTER``) are flagged, in the exit code, the JSON, the console and
  the HTML page, which headless chromium renders.
- A trial that fails once and passes on its exact replay (``PACED_BREAK_ONCE``) is flaky, not passed.
- A campaign stopped by SIGTERM stops its trials, reports what finished, and keeps no night.

The sigterm and hang kinds are left out where results are compared run against run: hang costs the
hang timeout, and a SIGTERM that lands while the worker's checkpoint writer process is starting can kill
that process before it ignores the signal - a failure of the product that is timing-dependent, so it
would make a comparison of two runs fail for a reason other than the one under test.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO
from tests.helpers.processes import CHROMIUM, describe, finish, processes_using, run, screenshot, start, wait_for
from tests.helpers.readers import loss_trace

pytestmark = pytest.mark.e2e

CAMPAIGN = REPO / "tests" / "jobs" / "paced_campaign.py"
COMPARABLE_KINDS = ("--fault-kinds", "sigkill", "crash", "checkpoint-write", "corrupt-checkpoint")
TWO_KINDS = ("--fault-kinds", "sigkill", "crash", "--faults-per-trial", 1)  # one fault, so one kind, a trial


class Campaign:
    def __init__(self, proc: subprocess.CompletedProcess[str], out: Path, took: float) -> None:
        self.proc, self.out, self.took = proc, out, took
        self.data: dict[str, Any] = json.loads((out.parent / f"{out.name}.json").read_text())

    @property
    def trials(self) -> list[dict[str, Any]]:
        return self.data["trials"]

    def regressions(self) -> list[str]:
        return [r["kind"] for r in self.data.get("trend", {}).get("regressions", [])]


@pytest.fixture(scope="module")
def reference_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("references")


def campaign(base: Path, name: str, *args: object, cache: Path, env: dict[str, str] | None = None,
             timeout: float = 300) -> Campaign:
    out = base / name
    cmd = [sys.executable, str(CAMPAIGN), "--out", out, "--reference-cache", cache, "--json", base / f"{name}.json",
           "--junit", base / f"{name}.xml", *args]
    t0 = time.monotonic()
    proc = run([str(a) for a in cmd], env=env, timeout=timeout)
    c = Campaign(proc, out, time.monotonic() - t0)
    assert not processes_using([out]), "a trial's process outlived its campaign"
    return c


def comparable(t: dict[str, Any]) -> tuple[Any, ...]:
    """What must not depend on what ran beside a trial (where a signal landed, and timings, may)."""
    faults = tuple((f["kind"], f["target_step"], f["attempt"], f["missed"]) for f in t["faults"])
    return (t["trial"], t["seed"], t["verdict"], t["bit_exact"], t["steps_compared"], t["first_divergent_step"],
            t["restarts"], faults)


def test_trials_run_side_by_side_give_what_they_give_one_at_a_time(tmp_path: Path, reference_cache: Path) -> None:
    serial = campaign(tmp_path, "serial", "--trials", 4, "--jobs", 1, *COMPARABLE_KINDS, cache=reference_cache)
    parallel = campaign(tmp_path, "parallel", "--trials", 4, "--jobs", 2, *COMPARABLE_KINDS, cache=reference_cache)
    for c in (serial, parallel):
        assert c.proc.returncode == 0, describe(c.proc)
    assert (serial.data["campaign"]["jobs"], parallel.data["campaign"]["jobs"]) == (1, 2)
    assert [comparable(t) for t in parallel.trials] == [comparable(t) for t in serial.trials]
    assert all(t["verdict"] == "pass" and t["restarts"] == 3 for t in parallel.trials)
    for a, b in zip(serial.trials, parallel.trials):
        assert loss_trace(a["run_dir"]) == loss_trace(b["run_dir"])  # the same stitched losses, bit for bit
    # Side by side for real: the second trial started before the first ended.
    spans = [(json.loads(Path(t["run_dir"], "events.jsonl").read_text().splitlines()[0])["time"],
              json.loads(Path(t["run_dir"], "events.jsonl").read_text().splitlines()[-1])["time"])
             for t in parallel.trials[:2]]
    assert spans[1][0] < spans[0][1], spans
    assert "jobs: 2 trials at once (--jobs)" in parallel.proc.stdout


def test_a_budget_is_filled_and_kept(tmp_path: Path, reference_cache: Path) -> None:
    c = campaign(tmp_path, "budget", "--budget", "25s", "--jobs", 2, *COMPARABLE_KINDS, cache=reference_cache)
    assert c.proc.returncode == 0, describe(c.proc)
    n = c.data["totals"]
    assert n["run"] >= 3 and n["passed"] == n["run"], n
    # A trial starts only while a typical one fits: at most the last ones, slower than typical on a busy
    # machine, are cut short (the rule itself is tests/test_budget.py's).
    assert n["not_run"] <= 2, n
    assert c.data["campaign"]["budget_s"] == 25 and c.data["campaign"]["trials"] is None
    assert c.took < 25 + 20, c.took  # the reports after the budget take seconds


def test_trials_the_budget_cuts_short_are_not_run(tmp_path: Path, reference_cache: Path) -> None:
    # Every resumed attempt sleeps 60 s: no trial can finish within 10 s.
    c = campaign(tmp_path, "short", "--budget", "10s", "--jobs", 2, *TWO_KINDS, "--html", tmp_path / "short.html",
                 cache=reference_cache, env={"PACED_SLOW_RESUME_S": "60"})
    assert c.proc.returncode == 4, describe(c.proc)
    assert [t["status"] for t in c.trials] == ["not-run", "not-run"]
    assert c.data["totals"]["verdict"] == "incomplete" and c.data["totals"]["run"] == 0
    assert "no trial finished within the budget" in c.proc.stdout
    cases = ET.parse(tmp_path / "short.xml").getroot().findall("testsuite/testcase")
    assert [c_.find("skipped") is not None for c_ in cases] == [True, True]
    assert c.took < 10 + 30, c.took  # stopped (SIGTERM, the worker's grace), not waited for


def test_a_slower_restart_and_then_a_newly_failing_kind_are_flagged(tmp_path: Path, reference_cache: Path) -> None:
    history = ("--history", tmp_path / "history", "--fail-on-regression", "--trials", 4, "--jobs", 2, *TWO_KINDS)
    first = campaign(tmp_path, "night-1", *history, cache=reference_cache)
    assert first.proc.returncode == 0, describe(first.proc)
    assert first.data["trend"]["nights"] == [] and "no earlier nights" in first.proc.stdout

    slow = campaign(tmp_path, "night-2", *history, "--html", tmp_path / "night-2.html", cache=reference_cache,
                    env={"PACED_SLOW_RESUME_S": "2.5"})
    assert slow.proc.returncode == 5, describe(slow.proc)  # every trial passed, but it regressed
    assert all(t["status"] == "passed" for t in slow.trials)
    assert "restart-latency" in slow.regressions() and "kind-newly-fails" not in slow.regressions()
    assert "REGRESSION the median restart latency went up to" in " ".join(slow.proc.stdout.split())
    assert "the median restart latency went up to" in (tmp_path / "night-2.html").read_text()

    broken = campaign(tmp_path, "night-3", *history, "--html", tmp_path / "night-3.html", cache=reference_cache,
                      env={"PACED_BREAK_AFTER": "sigkill"})
    assert broken.proc.returncode == 3, describe(broken.proc)  # a failed trial outranks a regression
    assert len(broken.data["trend"]["nights"]) == 2
    flags = broken.data["trend"]["regressions"]
    assert {f["kind"] for f in flags} >= {"pass-rate-drop", "kind-newly-fails"}
    assert [f["message"].split()[0] for f in flags if f["kind"] == "kind-newly-fails"] == ["sigkill"]
    failed = [t for t in broken.trials if t["status"] != "passed"]
    assert failed and all(t["kinds"] == ["sigkill"] and t["status"] == "failed" for t in failed)
    assert all(t["replayed"]["verdict"] == "diverged" for t in failed)  # it fails on its replay too
    html = (tmp_path / "night-3.html").read_text()
    for t in failed:
        assert t["replay"] in html
    assert "sigkill newly fails" in html
    assert sorted(p.name for p in (tmp_path / "history").iterdir())[0].startswith("chaos-")
    assert len(list((tmp_path / "history").iterdir())) == 3
    if CHROMIUM is not None:
        shot = screenshot(tmp_path / "night-3.html", tmp_path / "night-3.png")
        assert float(shot[..., :3].std()) > 0.05, "the page rendered blank"


def test_a_trial_that_passes_on_its_replay_is_flaky(tmp_path: Path, reference_cache: Path) -> None:
    c = campaign(tmp_path, "flaky", "--trials", 1, "--jobs", 1, "--fault-kinds", "sigkill", "--faults-per-trial", 1,
                 "--html", tmp_path / "flaky.html", cache=reference_cache,
                 env={"PACED_BREAK_ONCE": str(tmp_path / "broke-once")})
    assert c.proc.returncode == 3, describe(c.proc)  # flaky is not a pass
    (t,) = c.trials
    assert (t["status"], t["verdict"], t["replayed"]["verdict"]) == ("flaky", "diverged", "pass")
    assert Path(t["replayed"]["run_dir"]).is_dir()
    (case,) = ET.parse(tmp_path / "flaky.xml").getroot().findall("testsuite/testcase")
    failure = case.find("failure")
    assert failure is not None and failure.get("type") == "Flaky"
    assert "FLAKY trial-001" in c.proc.stdout and "1 flaky" in c.proc.stdout
    assert 'class="badge flaky">FLAKY' in (tmp_path / "flaky.html").read_text()


def test_a_stopped_campaign_stops_its_trials_and_reports_what_finished(tmp_path: Path,
                                                                      reference_cache: Path) -> None:
    out = tmp_path / "stopped"
    cmd = [sys.executable, str(CAMPAIGN), "--out", out, "--reference-cache", reference_cache, "--json",
           tmp_path / "stopped.json", "--history", tmp_path / "history", "--trials", 6, "--jobs", 2, *TWO_KINDS]
    proc = start([str(a) for a in cmd], env={"PACED_SLOW_RESUME_S": "60"})  # no trial can finish
    wait_for(lambda: len(processes_using([out / "trial-002"])) > 1, timeout=120, proc=proc,
             what="two trials to be running")
    proc.send_signal(signal.SIGTERM)  # as a cancelled CI job is
    done = finish(proc, timeout=60)
    assert done.returncode == 130, describe(done)
    assert not processes_using([out]), "a trial's process outlived its campaign"
    data = json.loads((tmp_path / "stopped.json").read_text())
    assert [t["status"] for t in data["trials"]] == ["not-run", "not-run"]
    assert all("the campaign was stopped" in t["reason"] for t in data["trials"])
    assert not (tmp_path / "history").exists()  # a night cut short is not kept
    assert "stopped: the reports cover the 0 trials that finished" in done.stdout
