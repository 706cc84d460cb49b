"""chaos/campaign.py's pure parts as tables: dealing fault kinds out evenly, the trials' seeds, the JUnit
XML (one testcase per trial, a failure carrying its replay command), the JSON totals, the summary table
rendered into a Console of width 100, and the campaign's verdict. The trials themselves run end to end
in the nightly CI (docs/nightly-ci.md)."""

from __future__ import annotations

import io
import random
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from chaos.campaign import (
    Trial,
    campaign_json,
    campaign_parser,
    campaign_verdict,
    deal_kinds,
    draw_schedules,
    junit_xml,
    summary_table,
    trial_seeds,
)
from chaos.faults import FaultKind
from chaos.report import ChaosReport
from chaos.simulate import SIMULATION_DEFAULTS
from model.job import BUILTIN
from runner.trace import Verdict, compare
from tests.helpers.factories import rec, trace_of

KINDS = list(FaultKind)

# -- dealing the kinds ------------------------------------------------------------------------------------


Deal = Callable[[int, int, int, Sequence[Any]], list[list[Any]]]


def deal_problems(deal: Deal, trials: int, per_trial: int, kinds: Sequence[Any]) -> list[str]:
    """What is wrong with ``deal`` over 20 seeds: a hand of the wrong size or kind, a kind dealt more
    than once more than another, or the same hands whatever the seed."""
    problems, deals = [], []
    for seed in range(20):
        hands = deal(seed, trials, per_trial, kinds)
        deals.append(tuple(map(tuple, hands)))
        if [len(h) for h in hands] != [per_trial] * trials or not {k for h in hands for k in h} <= set(kinds):
            problems.append(f"seed {seed}: hands {hands}")
        counts = Counter(k for h in hands for k in h)
        if trials * per_trial >= len(kinds) and max(counts[k] for k in kinds) - min(counts[k] for k in kinds) > 1:
            problems.append(f"seed {seed}: uneven {dict(counts)}")
        if deal(seed, trials, per_trial, kinds) != hands:
            problems.append(f"seed {seed}: not reproducible")
    if len(kinds) > 1 and len(set(deals)) == 1:
        problems.append("the same deal for every seed: not shuffled")
    return problems


@pytest.mark.parametrize(("trials", "per_trial", "kinds"), [
    (10, 3, KINDS),  # 30 faults, 6 kinds: 5 each
    (7, 2, KINDS),  # 14 faults: 2 or 3 each
    (1, 1, KINDS),
    (4, 5, ["a", "b"]),
    (5, 6, KINDS[:1]),
])
def test_deal_kinds(trials: int, per_trial: int, kinds: list[Any]) -> None:
    assert deal_problems(deal_kinds, trials, per_trial, kinds) == []


def deal_by_choice(seed: int, trials: int, per_trial: int, kinds: Sequence[Any]) -> list[list[Any]]:
    rng = random.Random(seed)
    return [[rng.choice(kinds) for _ in range(per_trial)] for _ in range(trials)]


def deal_in_order(seed: int, trials: int, per_trial: int, kinds: Sequence[Any]) -> list[list[Any]]:
    pool = [kinds[i % len(kinds)] for i in range(trials * per_trial)]
    return [pool[i * per_trial:(i + 1) * per_trial] for i in range(trials)]


def deal_unseeded(seed: int, trials: int, per_trial: int, kinds: Sequence[Any]) -> list[list[Any]]:
    return deal_kinds(random.randrange(2**31), trials, per_trial, kinds)


@pytest.mark.parametrize(("broken", "caught"), [(deal_by_choice, "uneven"), (deal_in_order, "not shuffled"),
                                                (deal_unseeded, "not reproducible")])
def test_a_broken_deal_is_caught(broken: Deal, caught: str) -> None:
    assert any(caught in p for p in deal_problems(broken, 10, 3, KINDS))


def test_trial_seeds_are_seeded_and_stable_as_trials_are_added() -> None:
    seeds = trial_seeds(42, 10)
    assert seeds == trial_seeds(42, 10) and len(set(seeds)) == 10
    assert all(0 <= s < 2**31 for s in seeds)
    assert trial_seeds(42, 4) == seeds[:4]  # trial 3 replays the same whether the campaign had 4 or 10
    assert trial_seeds(43, 10) != seeds
    assert trial_seeds(0, 0) == []


# -- the results ------------------------------------------------------------------------------------------

RECORDS = [rec(s, 2.0 - s / 10) for s in range(6)]
RUNS = {
    Verdict.PASS: trace_of(RECORDS),
    Verdict.DIVERGED: trace_of([rec(s, 3.0) for s in range(6)], "q" * 64),
    Verdict.INCOMPLETE: trace_of(RECORDS[:3], None),
}


def report(verdict: Verdict, *faults: str, missed: Sequence[str] = (), restarts: int = 1, lost: int = 2,
           latency: Sequence[float] = (1.5,), wall_s: float = 10.0) -> ChaosReport:
    hits = tuple({"kind": k, "target_step": 2, "hit_step": 2, "missed": False} for k in faults) + tuple(
        {"kind": k, "target_step": 4, "hit_step": None, "missed": True} for k in missed)
    return ChaosReport(job={}, comparison=compare(trace_of(RECORDS), RUNS[verdict]), faults=hits, restarts=restarts,
                       lost_steps=lost, restart_latency_s=tuple(latency), wall_s=wall_s, reference_compute_s=5.0,
                       epochs=(), replay=f"python -m runner --simulate-preemption --chaos-replay run-{verdict}.json")


def trials(*reports: ChaosReport) -> list[Trial]:
    return [Trial(i, 1000 + i, Path(f"/c/trial-{i:03d}"), r, Path(f"/c/trial-{i:03d}/chaos-schedule.json"))
            for i, r in enumerate(reports, start=1)]


THREE = trials(report(Verdict.PASS, "sigkill", "hang", wall_s=10.0),
               report(Verdict.DIVERGED, "sigterm", restarts=2, lost=0, latency=(1.0, 3.0), wall_s=12.5),
               report(Verdict.INCOMPLETE, "crash", missed=["hang"], restarts=0, latency=(), wall_s=2.5))


def test_junit_has_one_testcase_per_trial_and_a_failure_carries_the_replay() -> None:
    root = ET.fromstring(junit_xml(THREE))
    (suite,) = root
    assert (root.tag, root.get("tests"), root.get("failures"), root.get("time")) == ("testsuites", "3", "2", "25.000")
    assert (suite.get("name"), suite.get("tests"), suite.get("failures"), suite.get("errors")) == (
        "chaos-campaign", "3", "2", "0")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [
        "trial-001 seed=1001 faults=sigkill,hang", "trial-002 seed=1002 faults=sigterm",
        "trial-003 seed=1003 faults=crash,hang"]
    assert [c.get("time") for c in cases] == ["10.000", "12.500", "2.500"]
    assert cases[0].find("failure") is None
    for case, t, kind in ((cases[1], THREE[1], "ResumeMismatch"), (cases[2], THREE[2], "RunIncomplete")):
        failure = case.find("failure")
        assert failure is not None and failure.get("type") == kind
        assert failure.get("message") == f"{t.report.judgement.line()}; replay: {t.report.replay}"
    for case, t in zip(cases, THREE):
        out = case.find("system-out")
        assert out is not None and out.text == f"run dir: {t.run_dir}\nreplay: {t.report.replay}\n"


def test_campaign_json_totals() -> None:
    d = campaign_json(THREE, {"seed": 7})
    assert d["campaign"] == {"seed": 7}
    assert [(t["trial"], t["seed"], t["verdict"]) for t in d["trials"]] == [
        ("trial-001", 1001, "pass"), ("trial-002", 1002, "diverged"), ("trial-003", 1003, "incomplete")]
    assert d["totals"] == {"trials": 3, "passed": 1, "failed": 2, "diverged": 1, "incomplete": 1, "faults": 5,
                           "restarts": 3, "lost_steps": 4, "restart_latency_median_s": 1.5,
                           "goodput_mean": round((0.5 + 0.4 + 2.0) / 3, 4)}


def test_campaign_json_of_no_trials() -> None:
    totals = campaign_json([], {})["totals"]
    assert (totals["trials"], totals["restart_latency_median_s"], totals["goodput_mean"]) == (0, None, None)


def test_the_summary_table_renders_a_row_per_trial() -> None:
    out = io.StringIO()
    Console(file=out, width=100).print(summary_table(THREE))
    lines = [line.rstrip() for line in out.getvalue().splitlines()]
    assert "chaos campaign" in lines[0]
    header = next(line for line in lines if "trial" in line and "verdict" in line)
    columns = ("trial", "seed", "faults", "restarts", "lost steps", "goodput", "verdict")
    assert [w for w in columns if w not in header] == []
    rows = {line.split()[1]: line for line in lines if "trial-0" in line}
    assert list(rows) == ["trial-001", "trial-002", "trial-003"]
    assert all(w in rows["trial-001"] for w in ("1001", "sigkill, hang", "1.50 s", "0.500", "pass"))
    assert all(w in rows["trial-002"] for w in ("sigterm", "2.00 s", "0.400", "diverged"))
    assert all(w in rows["trial-003"] for w in ("crash, hang?", " - ", "2.000", "incomplete"))  # missed: "?"


@pytest.mark.parametrize(("verdicts", "want"), [
    ([], Verdict.PASS),
    ([Verdict.PASS, Verdict.PASS], Verdict.PASS),
    ([Verdict.PASS, Verdict.INCOMPLETE], Verdict.INCOMPLETE),
    ([Verdict.INCOMPLETE, Verdict.DIVERGED, Verdict.PASS], Verdict.DIVERGED),  # a divergence outranks the rest
])
def test_campaign_verdict(verdicts: list[Verdict], want: Verdict) -> None:
    assert campaign_verdict(verdicts) is want


def test_the_campaign_takes_the_simulations_defaults_and_its_own() -> None:
    ns = campaign_parser(BUILTIN).parse_args(["--trials", "4"])
    assert {k: getattr(ns, k) for k in SIMULATION_DEFAULTS} == SIMULATION_DEFAULTS
    assert (ns.trials, ns.faults_per_trial, ns.out, ns.junit, ns.json, ns.plot) == (4, 3, None, None, None, None)


@pytest.mark.parametrize(("nproc", "aimed"), [(1, False), (2, True)])
def test_a_gangs_campaign_aims_its_signals_and_crashes_at_ranks(nproc: int, aimed: bool) -> None:
    ns = campaign_parser(BUILTIN).parse_args(["--trials", "3", "--nproc-per-node", str(nproc)])
    schedules = draw_schedules(ns, [11, 12, 13], 75, 15)
    ranked = [f for s in schedules for f in s.faults if "rank" in f.detail]
    assert bool(ranked) is aimed
    assert all(f.kind in (FaultKind.SIGKILL, FaultKind.SIGTERM, FaultKind.CRASH) and f.detail["rank"] in (0, 1)
               for f in ranked)
