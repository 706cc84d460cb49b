"""How often to checkpoint: Young's interval, the MTBF estimate, the step-by-step decision, a run's
failure history (and the worker's cadence planned with it), and the ``--checkpoint-every K|auto`` /
``--mtbf`` options.

Pure tables, no Paddle. The end-to-end check of ``--checkpoint-every auto`` is in
``tests/e2e/test_standby.py``."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import pytest

from checkpoint.cadence import (
    DEFAULT_MTBF_S,
    MIN_COST_S,
    Cadence,
    durable_due,
    estimate_mtbf,
    failure_history,
    interval_steps,
    young_interval_s,
)
from model.config import AUTO
from runner.worker import ENV_ATTEMPT, ENV_CHAOS_ARM, ENV_STANDBY, EVENTS, Worker
from tests.helpers.factories import write_jsonl
from tests.helpers.processes import run

# -- Young's formula -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cost_s", "mtbf_s", "want"),
    [
        (0.5, 100.0, 10.0),  # sqrt(2 * 0.5 * 100)
        (2.0, 9.0, 6.0),
        (1e-3, 5.0, 0.1),
        (0.02, 3600.0, 12.0),
        (0.0, 100.0, 0.0),  # a free checkpoint: as often as you like
        (1.0, 0.0, 0.0),
        (-1.0, 100.0, 0.0),  # nonsense is clamped, not a math domain error
        (1.0, -5.0, 0.0),
    ],
)
def test_young_interval_is_sqrt_2_c_m(cost_s: float, mtbf_s: float, want: float) -> None:
    assert young_interval_s(cost_s, mtbf_s) == pytest.approx(want)
    if cost_s > 0 and mtbf_s > 0:
        assert young_interval_s(cost_s, mtbf_s) == pytest.approx(math.sqrt(2 * cost_s * mtbf_s))


@pytest.mark.parametrize(
    ("cost_s", "mtbf_s", "step_s", "persist_s", "want"),
    [
        # T = 10 s in steps, rounded to the nearest step.
        (0.5, 100.0, 1.0, 0.0, 10),
        (0.5, 100.0, 0.3, 0.0, 33),  # 33.3
        (0.5, 100.0, 0.6, 0.0, 17),  # 16.7 rounds up
        (0.5, 100.0, 3.0, 0.0, 3),  # 3.3
        (0.5, 100.0, 7.0, 0.0, 1),  # 1.4
        # Never less than one step, however slow a step is.
        (0.5, 100.0, 30.0, 0.0, 1),  # 0.33 rounds to 0
        (0.5, 100.0, 1000.0, 0.0, 1),
        # Never shorter than one background persist (so they never queue up behind each other).
        (0.5, 100.0, 1.0, 25.0, 25),
        (0.5, 100.0, 1.0, 10.5, 11),  # ceil, not round
        (0.5, 100.0, 1.0, 9.5, 10),  # Young's 10 is already longer
        (0.5, 100.0, 30.0, 45.0, 2),  # ceil(1.5) beats the floor of 1
        # A checkpoint measured as (nearly) free costs at least MIN_COST_S: sqrt(2 * 1e-3 * 5) = 0.1 s.
        (0.0, 5.0, 0.01, 0.0, 10),
        (1e-6, 5.0, 0.01, 0.0, 10),
        (MIN_COST_S, 5.0, 0.01, 0.0, 10),
        (0.004, 5.0, 0.01, 0.0, 20),  # above the floor the measured cost counts: sqrt(0.04) = 0.2 s
        # No step time yet (or nonsense): one step.
        (0.5, 100.0, 0.0, 0.0, 1),
        (0.5, 100.0, -1.0, 50.0, 1),
    ],
)
def test_interval_steps(cost_s: float, mtbf_s: float, step_s: float, persist_s: float, want: int) -> None:
    got = interval_steps(cost_s, mtbf_s, step_s, persist_s)
    assert got == want and isinstance(got, int)


def test_interval_steps_persist_defaults_to_zero() -> None:
    assert interval_steps(0.5, 100.0, 1.0) == interval_steps(0.5, 100.0, 1.0, 0.0) == 10


# -- the MTBF to plan with --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("elapsed_s", "failures", "given", "want"),
    [
        (100.0, 4, 7.5, 7.5),  # the one given wins over the run's own history
        (0.0, 0, 7.5, 7.5),
        (100.0, 4, None, 25.0),  # elapsed / failures
        (90.0, 1, None, 90.0),
        (100.0, 0, None, DEFAULT_MTBF_S),  # no failure yet: the default
        (0.0, 3, None, DEFAULT_MTBF_S),  # no time yet: the default, not a division by zero
        (-5.0, 3, None, DEFAULT_MTBF_S),
    ],
)
def test_estimate_mtbf(elapsed_s: float, failures: int, given: float | None, want: float) -> None:
    assert estimate_mtbf(elapsed_s, failures, given) == pytest.approx(want)


def test_default_mtbf_is_an_hour() -> None:
    assert DEFAULT_MTBF_S == 3600.0
    assert estimate_mtbf(0.0, 0) == DEFAULT_MTBF_S


# -- Cadence.due -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("every", [4, 5, 15])
def test_fixed_cadence_is_every_k_steps(every: int) -> None:
    c = Cadence(every=every)
    due = [s for s in range(1, 46) if c.due(s)]
    assert due == list(range(every, 46, every))


def test_fixed_cadence_counts_from_zero_not_from_the_last_checkpoint() -> None:
    # Epoch-end checkpoints in between do not shift a fixed K: every multiple of K stays due.
    c = Cadence(every=4)
    c.record_step(0.01)
    c.record_checkpoint(15, 0.001, 0.002)
    assert [s for s in range(15, 30) if c.due(s)] == [16, 20, 24, 28]


def test_cadence_zero_is_never_due() -> None:
    c = Cadence(every=0)
    c.record_step(0.01)
    c.record_checkpoint(3, 0.001, 0.001)
    assert c.interval() is None
    assert not any(c.due(s) for s in range(0, 200))
    assert Cadence().every == 0 and not Cadence().due(7)  # the default


def test_auto_cadence_waits_for_a_step_time() -> None:
    c = Cadence(every="auto", mtbf_s=5.0)
    assert c.interval() is None
    assert not any(c.due(s) for s in range(0, 100))


def test_auto_cadence_uses_young_in_steps_since_the_last_checkpoint() -> None:
    c = Cadence(every="auto", mtbf_s=5.0)
    c.record_step(0.01)  # no checkpoint measured yet: cost is the floor, T = 0.1 s = 10 steps
    assert c.interval() == 10
    assert [s for s in range(1, 12) if c.due(s)] == [10, 11]

    c.record_checkpoint(10, 0.0005)  # a cheap one: still the floor
    assert c.last == 10 and c.interval() == 10
    assert [s for s in range(10, 25) if c.due(s)] == [20, 21, 22, 23, 24]

    # Relative to the last checkpoint, not multiples of the interval: an off-grid one moves the grid.
    c.record_checkpoint(13, 0.0005)
    assert [s for s in range(13, 25) if c.due(s)] == [23, 24]


def test_auto_cadence_follows_the_measured_cost_and_mtbf() -> None:
    c = Cadence(every="auto", mtbf_s=50.0)
    c.record_step(0.01)
    c.record_checkpoint(0, 0.004)  # T = sqrt(2 * 0.004 * 50) = 0.632 s = 63 steps
    assert c.cost_s == pytest.approx(0.004)
    assert c.interval() == interval_steps(0.004, 50.0, 0.01) == 63
    assert not c.due(62) and c.due(63)


def test_auto_cadence_is_never_shorter_than_a_persist() -> None:
    c = Cadence(every="auto", mtbf_s=5.0)
    c.record_step(0.01)
    c.record_checkpoint(0, 0.001, persist_s=0.5)  # Young says 10 steps; the writer needs 50
    assert c.persist_s == pytest.approx(0.5)
    assert c.interval() == 50
    assert not c.due(49) and c.due(50)


def test_cadence_moving_averages() -> None:
    c = Cadence(every="auto")
    c.record_step(0.01)
    assert c.step_s == pytest.approx(0.01)  # the first sample is taken as it is
    c.record_step(0.02)
    assert c.step_s == pytest.approx(0.011)  # then 0.9 old + 0.1 new

    c.record_checkpoint(5, 0.01)
    assert c.cost_s == pytest.approx(0.01) and c.persist_s == 0.0  # no persist time given: unchanged
    c.record_checkpoint(10, 0.02, persist_s=0.1)
    assert c.cost_s == pytest.approx(0.013)  # 0.7 old + 0.3 new
    assert c.persist_s == pytest.approx(0.1)
    c.record_checkpoint(15, 0.02, persist_s=0.2)
    assert c.persist_s == pytest.approx(0.13)
    assert c.last == 15
    c.add_cost(0.05)  # a deferred copy the job waited for: the whole wait, on top
    assert c.cost_s == pytest.approx(0.0151 + 0.05) and c.last == 15
    c.add_cost(-1.0)
    assert c.cost_s == pytest.approx(0.0651)


# -- the run's failure history ---------------------------------------------------------------------------


def sup(event: str, t: float, **kw: object) -> dict:
    return {"time": t, "source": "supervisor", "event": event, **kw}


def exited(t: float, exit_class: str | None) -> dict:
    return sup("attempt-exited", t, attempt=1, **({} if exit_class is None else {"exit_class": exit_class}))


HISTORY_CASES: dict[str, tuple[list[dict], tuple[float, int]]] = {
    # name: (records, (elapsed at now=100, failures))
    "a new run": ([], (0.0, 0)),
    "one attempt, still running": ([sup("attempt-spawned", 80)], (20.0, 0)),
    "the first spawn starts the run": ([sup("attempt-spawned", 10), sup("attempt-spawned", 50)], (90.0, 0)),
    "killed, crashed, hung, preempted and bad input are failures": (
        [sup("attempt-spawned", 0)] + [exited(t, c) for t, c in
                                       enumerate(["killed", "crashed", "hung", "preempted", "bad-input"], 1)],
        (100.0, 5)),
    "completed and user-stopped are not": ([sup("attempt-spawned", 0), exited(1, "completed"),
                                            exited(2, "user-stopped")], (100.0, 0)),
    "an exit of no known class is a failure": ([sup("attempt-spawned", 0), exited(1, None)], (100.0, 1)),
    "only the supervisor's records count": (
        [{"time": 5, "source": "worker", "event": "attempt-spawned"},
         {"time": 60, "source": "worker", "event": "attempt-exited", "exit_class": "killed"},
         {"time": 61, "source": "standby", "event": "standby-ready", "pid": 17},
         sup("attempt-spawned", 40)],
        (60.0, 0)),
    "other supervisor records do not": ([sup("attempt-spawned", 0), sup("restart", 1, exit_class="killed"),
                                         sup("hang-detected", 2)], (100.0, 0)),
}


@pytest.mark.parametrize("case", list(HISTORY_CASES))
def test_failure_history_reads_the_supervisors_attempts(case: str) -> None:
    records, want = HISTORY_CASES[case]
    assert failure_history(records, now=100.0) == pytest.approx(want)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in (ENV_ATTEMPT, ENV_CHAOS_ARM, ENV_STANDBY):
        monkeypatch.delenv(k, raising=False)


def write_events(run_dir: Path, records: list[dict], torn: str | None = None) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(run_dir / EVENTS, records, torn=torn)


def test_the_workers_auto_cadence_plans_with_the_runs_own_mtbf(tmp_path: Path, clean_env: None) -> None:
    run_dir = tmp_path / "run"
    now = time.time()
    write_events(run_dir, [
        sup("attempt-spawned", now - 100, attempt=1, pid=11, warm=False),  # the run's start
        exited(now - 90, "killed"),
        sup("attempt-spawned", now - 89, attempt=2, pid=12, warm=True),
        exited(now - 80, "crashed"),
        sup("attempt-spawned", now - 79, attempt=3, pid=13, warm=True),
        exited(now - 70, "completed"),  # not a failure
    ], torn='{"time": 1, "source": "supervisor", "event": "attempt-exi')  # a torn last line is skipped

    with Worker(run_dir, handle_signals=False) as w:
        w.set_cadence("auto")  # no MTBF given: the run's own, elapsed / failures
        assert w.cadence.every == "auto"
        assert w.cadence.mtbf_s == pytest.approx(100.0 / 2, abs=15)
        w.set_cadence("auto", 7.0)  # given: it wins
        assert w.cadence.mtbf_s == 7.0
        w.set_cadence(5)
        assert w.cadence.every == 5 and w.checkpoint_due(10) and not w.checkpoint_due(11)


@pytest.mark.parametrize("records", [[], [sup("attempt-spawned", 0.0)]], ids=["new run", "no failures"])
def test_without_failures_the_workers_auto_cadence_assumes_the_default(tmp_path: Path, clean_env: None,
                                                                        records: list[dict]) -> None:
    write_events(tmp_path / "run", [dict(r, time=time.time() - 20) for r in records])
    with Worker(tmp_path / "run", handle_signals=False) as w:
        w.set_cadence("auto")
        assert w.cadence.mtbf_s == DEFAULT_MTBF_S


# -- the command line --------------------------------------------------------------------------------------


def parse_model(*args: str):
    from model.__main__ import OneLineParser, add_job_arguments

    p = OneLineParser(prog="python -m model")
    p.add_argument("--run-dir", required=True)
    add_job_arguments(p)
    return p.parse_args(["--run-dir", "d", *args])


def parse_runner(*args: str):
    from runner.cli import build_parser

    return build_parser().parse_args(["--run-dir", "d", *args])


@pytest.mark.parametrize("parse", [parse_model, parse_runner], ids=["model", "runner"])
def test_checkpoint_every_is_an_alias_and_takes_auto(parse) -> None:
    assert parse().checkpoint_every_steps == 0  # default: epoch ends only
    assert parse("--checkpoint-every", "7").checkpoint_every_steps == 7
    assert parse("--checkpoint-every-steps", "7").checkpoint_every_steps == 7
    assert parse("--checkpoint-every", "0").checkpoint_every_steps == 0
    assert parse("--checkpoint-every", "auto").checkpoint_every_steps == AUTO
    assert parse("--checkpoint-every-steps", "auto").checkpoint_every_steps == AUTO
    ns = parse("--checkpoint-every", "auto", "--mtbf", "5")
    assert ns.mtbf == 5.0 and not ns.sync_checkpoints
    assert parse("--sync-checkpoints").sync_checkpoints


def test_runner_passes_the_cadence_on_to_the_job() -> None:
    from model.__main__ import job_argv, job_config

    ns = parse_runner("--epochs", "3", "--checkpoint-every", "auto", "--mtbf", "5", "--sync-checkpoints")
    argv = job_argv(ns)
    i = argv.index("--checkpoint-every-steps")
    assert argv[i + 1] == "auto"
    assert argv[argv.index("--mtbf") + 1] == "5.0"
    assert "--sync-checkpoints" in argv
    # What the runner passes on parses back to the same job.
    again = parse_model(*argv)
    assert (again.checkpoint_every_steps, again.mtbf, again.sync_checkpoints, again.epochs) == (AUTO, 5.0, True, 3)
    cfg = job_config(again)
    assert (cfg.checkpoint_every_steps, cfg.mtbf_s, cfg.sync_checkpoints) == (AUTO, 5.0, True)
    # The cadence does not change the trace, so it is not part of the job's identity.
    assert job_config(parse_runner("--epochs", "3")).identity() == cfg.identity()

    assert "--mtbf" not in job_argv(parse_runner())
    assert "--durable-every" not in job_argv(parse_runner())
    for given, want in (("0", 0.0), ("2.5", 2.5)):
        passed = parse_model(*job_argv(parse_runner("--epochs", "3", "--durable-every", given)))
        assert passed.durable_every == want and job_config(passed).durable_every_s == want
        assert job_config(passed).identity() == cfg.identity()  # nor does durability
    assert job_argv(parse_runner("--checkpoint-every", "4"))[-1] == "4"


def test_standby_flag() -> None:
    assert parse_runner().standby is None  # decided by whether a command follows '--'
    assert parse_runner("--standby").standby is True
    assert parse_runner("--no-standby").standby is False


@pytest.mark.parametrize(
    ("module", "args", "says"),
    [
        ("model", ["--checkpoint-every", "-1"], "must be 0 or more, got -1"),
        ("model", ["--checkpoint-every", "x"], "not an integer: 'x'"),
        ("model", ["--checkpoint-every-steps", "AUTO"], "not an integer: 'AUTO'"),
        ("model", ["--checkpoint-every", "2.5"], "not an integer: '2.5'"),
        ("model", ["--checkpoint-every", "auto", "--mtbf", "0"], "must be more than 0"),
        ("model", ["--mtbf", "soon"], "not a number of seconds: 'soon'"),
        ("runner", ["--checkpoint-every", "-1"], "must be 0 or more, got -1"),
        ("runner", ["--checkpoint-every", "x"], "not an integer: 'x'"),
        ("model", ["--durable-every", "-1"], "must be 0 or more, got -1"),
        ("runner", ["--durable-every", "often"], "not a number of seconds: 'often'"),
        ("runner", ["--durable-every", "nan"], "must be a finite number, got nan"),
    ],
)
def test_bad_cadence_values_exit_2_with_one_line(tmp_path: Path, module: str, args: list[str], says: str) -> None:
    run_dir = tmp_path / "run"
    p = run([sys.executable, "-m", module, "--run-dir", str(run_dir), *args], timeout=120)
    assert p.returncode == 2, (p.stdout, p.stderr)
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith(("error: argument --checkpoint-every", "error: argument --mtbf",
                                "error: argument --durable-every"))
    assert says in lines[0]
    assert p.stdout == ""
    assert not run_dir.exists()  # refused before touching anything


@pytest.mark.parametrize(
    ("now", "last_durable", "every_s", "want"),
    [
        (100.0, None, 10.0, True),  # the attempt's first checkpoint
        (100.0, 95.0, 10.0, False),
        (100.0, 90.0, 10.0, True),  # exactly the interval
        (100.0, 89.0, 10.0, True),
        (100.0, 99.9, 0.0, True),  # 0: every checkpoint
        (100.0, 50.0, float("inf"), False),  # only the first
    ],
)
def test_durable_due(now: float, last_durable: float | None, every_s: float, want: bool) -> None:
    assert durable_due(now, last_durable, every_s) is want


def test_cadence_totals_every_stall_for_the_record() -> None:
    c = Cadence(every=5)
    assert (c.checkpoints, c.stall_total_s) == (0, 0.0)
    c.record_checkpoint(5, 0.01)
    c.add_cost(0.03)  # the deferred copy the next step waited for belongs to the same checkpoint
    c.record_checkpoint(10, 0.02)
    c.add_cost(-1.0)  # a clock that went back adds nothing
    assert c.checkpoints == 2 and c.stall_total_s == pytest.approx(0.06)


@pytest.mark.parametrize(("idle", "busy", "persist_s", "want"), [
    ([], [], 4.0, 0.0),  # nothing measured yet
    ([1.0], [], 4.0, 0.0),  # no step beside a persist yet
    ([1.0], [1.0], 4.0, 0.0),  # steps no slower beside it: it costs nothing
    ([1.0], [2.0], 4.0, 2.0),  # half of each step's time lost, for 4 s
    ([1.0], [0.8], 4.0, 0.0),  # faster beside it (drift): never a negative cost
])
def test_the_slowdown_beside_a_persist(idle: list[float], busy: list[float], persist_s: float, want: float) -> None:
    c = Cadence(every="auto", persist_s=persist_s)
    for dt in idle:
        c.record_step(dt)
    for dt in busy:
        c.record_step(dt, beside_persist=True)
    assert c.slowdown_s() == pytest.approx(want)


def test_auto_cadence_counts_the_slowdown_beside_a_persist_as_cost() -> None:
    c = Cadence(every="auto", mtbf_s=100.0)
    c.record_step(1.0)
    c.record_checkpoint(0, 0.02, persist_s=2.0)  # Young from the stall alone: sqrt(2 * 0.02 * 100) = 2 s
    assert c.interval() == 2
    c.record_step(2.0, beside_persist=True)  # the steps beside the persist take twice as long: 1 s lost
    assert c.slowdown_s() == pytest.approx(1.0)
    assert c.interval() == round(math.sqrt(2 * 1.02 * 100) / c.step_s)  # 14 s at 1.1 s a step: 13
