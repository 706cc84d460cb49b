"""chaos/results.py from hand-made trial records: the campaign's verdict, JUnit XML (one testcase per trial;
a failure carries its replay command, a flaky trial is a failure of its own type, a trial the budget cut
short is skipped), the JSON totals, and the console's tables rendered into a Console of width 120."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from rich.console import Console

from chaos.results import TABLE_ROWS, campaign_json, campaign_verdict, junit_xml, kinds_table, summary_table, verdict_of
from runner.trace import Verdict
from tests.helpers.factories import chaos_report, trial_record

FIVE = [
    trial_record(1, chaos_report(Verdict.PASS, "sigkill", "hang", wall_s=10.0)),
    trial_record(2, chaos_report(Verdict.DIVERGED, "sigterm", restarts=2, lost=0, latency=(1.0, 3.0), wall_s=12.5),
                 replayed="diverged"),
    trial_record(3, chaos_report(Verdict.INCOMPLETE, "crash", missed=["hang"], restarts=0, latency=(), wall_s=2.5)),
    trial_record(4, chaos_report(Verdict.DIVERGED, "sigkill", wall_s=5.0), replayed="pass"),
    trial_record(5, None, kinds=["hang", "crash"]),
]


def render(renderable: Any) -> list[str]:
    out = io.StringIO()
    Console(file=out, width=120).print(renderable)
    return [line.rstrip() for line in out.getvalue().splitlines()]


@pytest.mark.parametrize(("verdicts", "want"), [
    ([], Verdict.PASS),
    ([Verdict.PASS, Verdict.PASS], Verdict.PASS),
    ([Verdict.PASS, Verdict.INCOMPLETE], Verdict.INCOMPLETE),
    ([Verdict.INCOMPLETE, Verdict.DIVERGED, Verdict.PASS], Verdict.DIVERGED),  # a divergence outranks the rest
])
def test_campaign_verdict(verdicts: list[Verdict], want: Verdict) -> None:
    assert campaign_verdict(verdicts) is want


@pytest.mark.parametrize(("trials", "want"), [
    (FIVE, Verdict.DIVERGED),
    (FIVE[:1] + FIVE[3:4], Verdict.DIVERGED),  # flaky is not a pass: its first verdict counts
    (FIVE[:1] + FIVE[4:], Verdict.PASS),  # a trial not run counts for nothing
    (FIVE[4:], Verdict.INCOMPLETE),  # nothing ran
    ([], Verdict.INCOMPLETE),
])
def test_the_verdict_of_the_trials(trials: list[dict[str, Any]], want: Verdict) -> None:
    assert verdict_of(trials) is want


def test_junit_has_one_testcase_per_trial() -> None:
    root = ET.fromstring(junit_xml(FIVE))
    (suite,) = root
    assert (root.tag, root.get("tests"), root.get("failures"), root.get("time")) == ("testsuites", "5", "3", "30.000")
    assert [suite.get(k) for k in ("name", "tests", "failures", "errors", "skipped")] == [
        "chaos-campaign", "5", "3", "0", "1"]
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [
        "trial-001 seed=1001 faults=sigkill,hang", "trial-002 seed=1002 faults=sigterm",
        "trial-003 seed=1003 faults=crash,hang", "trial-004 seed=1004 faults=sigkill",
        "trial-005 seed=1005 faults=hang,crash"]  # not run: the kinds it was scheduled with
    assert [c.get("time") for c in cases] == ["10.000", "12.500", "2.500", "5.000", "0.000"]
    assert cases[0].find("failure") is None and cases[0].find("skipped") is None
    kinds = [(f.get("type") if (f := c.find("failure")) is not None else None) for c in cases]
    assert kinds == [None, "ResumeMismatch", "RunIncomplete", "Flaky", None]
    skipped = cases[4].find("skipped")
    assert skipped is not None and "time budget" in (skipped.get("message") or "")
    for case, t in zip(cases, FIVE):
        out = case.find("system-out")
        assert out is not None and out.text == f"run dir: {t['run_dir']}\nreplay: {t['replay']}\n"


def test_a_failure_carries_its_verdict_its_replay_and_its_record() -> None:
    cases = ET.fromstring(junit_xml(FIVE)).findall("testsuite/testcase")
    failure = cases[1].find("failure")
    assert failure is not None
    t = FIVE[1]
    assert failure.get("message") == f"DIVERGED {t['reason']}; its replay: DIVERGED; replay: {t['replay']}"
    assert json.loads(failure.text or "")["trial"] == "trial-002"
    flaky = cases[3].find("failure")
    assert flaky is not None and "FLAKY: it passed on its exact replay" in (flaky.get("message") or "")


def test_campaign_json_totals_add_up() -> None:
    d = campaign_json(FIVE, {"seed": 7})
    assert d["campaign"] == {"seed": 7} and "trend" not in d
    assert [(t["trial"], t["status"]) for t in d["trials"]] == [
        ("trial-001", "passed"), ("trial-002", "failed"), ("trial-003", "failed"), ("trial-004", "flaky"),
        ("trial-005", "not-run")]
    assert d["totals"] == {"trials": 5, "run": 4, "passed": 1, "failed": 2, "flaky": 1, "not_run": 1,
                           "pass_rate": 0.25, "verdict": "diverged", "diverged": 2, "incomplete": 1, "faults": 6,
                           "restarts": 4, "lost_steps": 6, "restart_latency_median_s": 1.5,
                           "goodput_mean": round((0.5 + 0.4 + 2.0 + 1.0) / 4, 4), "goodput_median": 0.75}
    assert campaign_json(FIVE, {}, {"regressions": []})["trend"] == {"regressions": []}


def test_campaign_json_of_no_trials() -> None:
    totals = campaign_json([], {})["totals"]
    assert (totals["trials"], totals["pass_rate"], totals["restart_latency_median_s"], totals["goodput_mean"],
            totals["verdict"]) == (0, None, None, None, "incomplete")


def test_the_summary_table_renders_a_row_per_trial() -> None:
    lines = render(summary_table(FIVE))
    assert "chaos campaign" in lines[0]
    header = next(line for line in lines if "trial" in line and "verdict" in line)
    columns = ("trial", "seed", "faults", "restarts", "lost steps", "goodput", "verdict")
    assert [w for w in columns if w not in header] == []
    rows = {line.split()[1]: line for line in lines if "trial-0" in line}
    assert list(rows) == ["trial-001", "trial-002", "trial-003", "trial-004", "trial-005"]
    assert all(w in rows["trial-001"] for w in ("1001", "sigkill, hang", "1.50 s", "0.500", "pass"))
    assert all(w in rows["trial-002"] for w in ("sigterm", "2.00 s", "0.400", "diverged"))
    assert all(w in rows["trial-003"] for w in ("crash, hang?", " - ", "2.000", "incomplete"))  # missed: "?"
    assert "flaky" in rows["trial-004"] and "not run" in rows["trial-005"]


def test_past_the_limit_the_table_lists_only_what_did_not_pass() -> None:
    many = [trial_record(i, chaos_report(Verdict.PASS, "sigkill")) for i in range(1, TABLE_ROWS + 2)]
    many[7] = trial_record(8, chaos_report(Verdict.DIVERGED, "hang"))
    lines = render(summary_table(many))
    assert [line.split()[1] for line in lines if "trial-0" in line] == ["trial-008"]
    assert f"({TABLE_ROWS} passed trials not shown)" in " ".join(lines[:2])


def test_the_kinds_table() -> None:
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in render(kinds_table(FIVE)) if line.startswith("│")]
    assert cells == [["sigkill", "2", "1", "1", "0", "50.0%"], ["sigterm", "1", "0", "0", "1", "0.0%"],
                     ["hang", "2", "1", "0", "1", "50.0%"], ["crash", "1", "0", "0", "1", "0.0%"]]
