"""chaos/campaign.py's pure parts as tables: dealing fault kinds out evenly (the same first hands
whatever the count), the trials' seeds and plans, the options and the exit code. The results are
tests/test_results.py's; whole campaigns run in tests/e2e/test_campaign.py."""

from __future__ import annotations

import argparse
import random
import re
import shlex
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from chaos.campaign import MAX_TRIALS, campaign_exit, campaign_main, campaign_parser, deal_kinds, planner, trial_seeds
from chaos.faults import RANK_KINDS, FaultKind
from chaos.simulate import SIMULATION_DEFAULTS
from model.job import BUILTIN
from rundir.exitcodes import ExitCode, UserError
from runner.trace import Verdict
from tests.helpers import REPO

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


# -- the plan, the options, the exit code -----------------------------------------------------------------


def test_dealing_for_more_trials_deals_the_same_first_hands() -> None:
    """A budget does not know how many trials it will run: trial i's kinds must not depend on it."""
    assert deal_kinds(5, 200, 3, KINDS)[:7] == deal_kinds(5, 7, 3, KINDS)


def plan_ns(**over: Any) -> argparse.Namespace:
    ns = campaign_parser(BUILTIN).parse_args(["--trials", "4"])
    return argparse.Namespace(**{**vars(ns), **over})


def test_a_trials_plan_does_not_depend_on_the_limit() -> None:
    few, many = planner(plan_ns(), 75, 15, 4), planner(plan_ns(), 75, 15, MAX_TRIALS)
    for i in range(1, 5):
        assert few(i) == many(i)
        assert few(i).name == f"trial-{i:03d}" and len(few(i).schedule.faults) == 3
    assert few(1).seed == trial_seeds(0, 1)[0]


def test_a_plan_that_cannot_fit_is_a_bad_configuration_said_at_once() -> None:
    with pytest.raises(UserError, match="cannot fit") as e:
        planner(plan_ns(faults_per_trial=40), 75, 15, 4)
    assert e.value.code is ExitCode.BAD_CONFIG


@pytest.mark.parametrize(("argv", "error"), [
    ([], "give --trials N, --budget TIME, or both"),
    (["--trials", "0"], "--trials: must be 1 or more"),
    (["--budget", "soon"], "not a duration"),
    (["--trials", "2", "--jobs", "0"], "--jobs: must be 1 or more"),
    (["--trials", "2", "--fail-on-regression"], "--fail-on-regression needs --history DIR"),
    (["--trials", "2", "--history", "h", "--history-window", "0"], "must be 1 or more"),
])
def test_bad_options_are_one_line(argv: list[str], error: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        campaign_main(argv, BUILTIN)
    assert e.value.code == ExitCode.USAGE
    err = capsys.readouterr().err
    assert error in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("verdict", "ran", "regressions", "fail", "code"), [
    (Verdict.PASS, 5, 0, True, 0),
    (Verdict.PASS, 5, 2, False, 0),  # regressions are reported; they fail the run only when asked
    (Verdict.PASS, 5, 2, True, ExitCode.REGRESSED),
    (Verdict.DIVERGED, 5, 2, True, ExitCode.VERIFY_FAILED),  # a failed trial says more than a trend
    (Verdict.INCOMPLETE, 5, 0, False, ExitCode.INCOMPLETE),
    (Verdict.PASS, 0, 0, False, ExitCode.INCOMPLETE),  # nothing finished within the budget
])
def test_the_exit_code(verdict: Verdict, ran: int, regressions: int, fail: bool, code: int) -> None:
    assert campaign_exit(verdict, ran, regressions, fail) == code


def test_the_child_flag_is_hidden() -> None:
    assert "--trial-child" not in campaign_parser(BUILTIN).format_help()


def test_the_campaign_takes_the_simulations_defaults_and_its_own() -> None:
    ns = campaign_parser(BUILTIN).parse_args(["--trials", "4"])
    assert {k: getattr(ns, k) for k in SIMULATION_DEFAULTS} == SIMULATION_DEFAULTS
    assert (ns.trials, ns.faults_per_trial, ns.out, ns.junit, ns.json, ns.plot) == (4, 3, None, None, None, None)
    assert (ns.budget, ns.jobs, ns.html, ns.history, ns.history_window, ns.fail_on_regression) == (
        None, None, None, None, 7, False)
    assert campaign_parser(BUILTIN).parse_args(["--budget", "15m"]).budget == 900


# -- the nightly workflow and the docs ---------------------------------------------------------------------


def campaign_commands(text: str) -> list[list[str]]:
    """Each ``python -m runner campaign ...`` command in ``text`` (shell or YAML; in Markdown, its code
    blocks), its continuation lines joined and its variables replaced by a value, split as the shell would."""
    if "```" in text:
        text = "\n".join(text.split("```")[1::2])
    joined = re.sub(r"\\\n\s*", " ", text)
    joined = re.sub(r"\n\s+--", " --", joined)  # YAML folds a plain scalar's indented lines
    cmds = []
    for line in joined.splitlines():
        if "python -m runner campaign" not in line:
            continue
        line = re.sub(r"\$\{\{[^}]*\}\}|\$\{[^}]*\}|\$\([^)]*\)|\$\w+", "1", line)
        cmds.append(shlex.split(line.split("python -m runner campaign", 1)[1]))
    return cmds


@pytest.mark.parametrize("path", [".github/workflows/nightly.yml", "docs/nightly-ci.md"])
def test_the_nightly_commands_parse(path: str) -> None:
    cmds = campaign_commands((REPO / path).read_text())
    assert cmds
    for argv in cmds:
        ns = campaign_parser(BUILTIN).parse_args(argv)
        assert ns.budget and ns.html and ns.history and ns.fail_on_regression, argv


def test_the_workflow_keeps_the_history_between_nights() -> None:
    wf = (REPO / ".github/workflows/nightly.yml").read_text()
    assert "actions/cache/restore@" in wf and "actions/cache/save@" in wf and "path: chaos-history" in wf
    assert "restore-keys: chaos-history-" in wf
    assert "chaos.html" in wf.split("name: Upload results")[1]


def test_a_command_with_a_flag_the_campaign_lacks_is_caught() -> None:
    (argv,) = campaign_commands("python -m runner campaign --budget 5m --frobnicate \\\n  --html x")
    with pytest.raises(SystemExit):
        campaign_parser(BUILTIN).parse_args(argv)


@pytest.mark.parametrize(("nproc", "aimed"), [(1, False), (2, True)])
def test_a_gangs_campaign_aims_its_faults_at_ranks(nproc: int, aimed: bool) -> None:
    ns = campaign_parser(BUILTIN).parse_args(["--trials", "3", "--nproc-per-node", str(nproc)])
    plan = planner(ns, 75, 15, 3)
    faults = [f for i in (1, 2, 3) for f in plan(i).schedule.faults]
    ranked = [f for f in faults if "rank" in f.detail]
    assert bool(ranked) is aimed
    assert all(f.kind in RANK_KINDS and f.detail["rank"] in (0, 1) for f in ranked)
    if aimed:  # every fault of a gang's default kinds is aimed at a rank
        assert ranked == faults
