"""``python -m runner --simulate-preemption`` and ``python -m runner verify`` end to end: real workers, real
signals, a real supervisor. The chaos runs are shared through one session (see ``chaos_runs``) and all use
one reference cache, so each job's uninterrupted reference is trained once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chaos.faults import STORE_KINDS, FaultKind
from chaos.schedule import SCHEDULE_FILE, Schedule
from tests.chaos_helpers import ChaosRun, ChaosRuns, describe, events, resumed_from_step, run_runner

pytestmark = pytest.mark.e2e

# 3 epochs of 15 steps fit one fault of each kind (MIN_GAP apart, checkpoint faults on checkpoints).
ALL_KINDS = ("--epochs", 3, "--faults", 6, "--dropout", 0.25, "--jitter", 0.05)  # Paddle and NumPy draw every step
# The hang fault costs --hang-timeout seconds; a little more than the default 3 s keeps a worker that is
# slow to import Paddle on a busy machine from being taken for a hung one.
HANG_TIMEOUT = ("--hang-timeout", 6)
# Chaos seed 0 puts the one SIGKILL at step 14, after the checkpoint at step 10: the resumed attempt
# restores a checkpoint, which is what a broken resume gets wrong.
ONE_SIGKILL = ("--epochs", 2, "--fault-kinds", "sigkill", "--faults", 1, "--chaos-seed", 0, "--hang-timeout", 60)


@pytest.fixture(scope="session")
def reference_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("reference-cache")


@pytest.fixture(scope="session")
def chaos_runs(tmp_path_factory: pytest.TempPathFactory, reference_cache: Path) -> ChaosRuns:
    return ChaosRuns(tmp_path_factory.mktemp("chaos-runs"), reference_cache)


def all_kinds_run(runs: ChaosRuns) -> ChaosRun:
    return runs.simulate("all-kinds", *ALL_KINDS, *HANG_TIMEOUT)


def broken_run(runs: ChaosRuns, kind: str) -> ChaosRun:
    return runs.simulate(f"broken-{kind}", *ONE_SIGKILL, "--break-resume", kind)


def error_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


# -- the real thing ---------------------------------------------------------------------------------------------


def test_every_fault_kind_is_survived_bit_exactly(chaos_runs: ChaosRuns) -> None:
    run = all_kinds_run(chaos_runs)
    assert run.proc.returncode == 0, describe(run.proc)
    r = run.report
    assert (r["verdict"], r["bit_exact"], r["first_divergent_step"]) == ("pass", True, None), describe(run.proc)
    assert r["steps_compared"] == 45
    assert r["comparison"]["params_equal"] is True
    assert r["comparison"]["missing_steps"] == 0 and r["comparison"]["extra_steps"] == 0

    faults = r["faults"]
    # Every kind but those that need a store (tests/e2e/test_remote_store.py has them).
    assert sorted(f["kind"] for f in faults) == sorted(k.value for k in FaultKind if k not in STORE_KINDS)
    assert [f for f in faults if f["missed"]] == []
    for f in faults:
        assert f["attempt"] is not None and f["hit_step"] is not None and f["time"] is not None, f
        # Signals fire once the target step is done; the armed faults stop the worker just before it.
        assert f["hit_step"] >= f["target_step"] - 1, f
    attempts = [f["attempt"] for f in faults]
    assert attempts == sorted(attempts) and len(set(attempts)) == 6, "one fault per attempt, in order"
    (corrupt,) = [f for f in faults if f["kind"] == "corrupt-checkpoint"]
    assert corrupt["effect"].startswith(("truncated step-", "flipped byte"))

    # The schedule the run followed is the one saved in its directory.
    schedule = Schedule.load(run.run_dir / SCHEDULE_FILE)
    assert [(f.kind.value, f.step) for f in schedule.faults] == [(f["kind"], f["target_step"]) for f in faults]
    assert schedule.seed == 0 and schedule.total_steps == 45

    assert r["restarts"] >= 6
    assert len(r["restart_latency_s"]) >= 6 and all(x > 0 for x in r["restart_latency_s"])
    assert r["lost_steps"] >= 0
    assert 0 < r["goodput"] < 1 and r["wall_s"] > 0
    assert r["job"]["epochs"] == 3 and r["job"]["chaos_seed"] == 0

    # Every way to die happened, and the corrupted checkpoint was noticed and skipped on restore.
    exits = {e["exit_class"] for e in events(run.run_dir, "attempt-exited")}
    assert {"hung", "killed", "preempted", "crashed", "completed"} <= exits
    assert events(run.run_dir, "checkpoint-fallback"), "no restore fell back past the corrupted checkpoint"
    assert "PASS bit-exact: 45 steps" in run.proc.stdout


# -- the verifier catches broken resumes --------------------------------------------------------------------

# A step's loss is computed before its update: a wrong data position shows in the loss of the first resumed
# step, a missing optimizer state only in that step's update, so in the loss of the step after it.
FIRST_WRONG_STEP = {"data-position": 0, "optimizer": 1}


@pytest.mark.parametrize("kind", list(FIRST_WRONG_STEP))
def test_a_broken_resume_fails_verification_where_it_resumed(chaos_runs: ChaosRuns, kind: str) -> None:
    run = broken_run(chaos_runs, kind)
    assert run.proc.returncode == 3, describe(run.proc)
    r = run.report
    assert (r["verdict"], r["bit_exact"]) == ("diverged", False)
    assert [(f["kind"], f["missed"]) for f in r["faults"]] == [("sigkill", False)]
    assert r["restarts"] == 1
    resumed = resumed_from_step(run.run_dir, 2)
    assert resumed > 0, "the second attempt restored no checkpoint: nothing for a broken resume to break"
    assert r["first_divergent_step"] == resumed + FIRST_WRONG_STEP[kind]
    assert r["comparison"]["params_equal"] is False
    assert f"DIVERGED at step {r['first_divergent_step']}: reference loss" in run.proc.stdout


# -- replay ------------------------------------------------------------------------------------------------


def test_replay_reproduces_the_schedule(chaos_runs: ChaosRuns) -> None:
    source = broken_run(chaos_runs, "optimizer")
    schedule_file = source.run_dir / SCHEDULE_FILE
    assert schedule_file.is_file(), describe(source.proc)
    assert source.report["replay"].startswith(f"python -m runner --simulate-preemption --chaos-replay {schedule_file}")
    # The same faults, this time with a correct resume; --chaos-seed and --faults do not apply to a replay.
    replay = chaos_runs.simulate("replay", "--chaos-replay", schedule_file, "--epochs", 2, "--chaos-seed", 99,
                                 "--faults", 4, "--hang-timeout", 60)
    assert replay.proc.returncode == 0, describe(replay.proc)
    assert (replay.run_dir / SCHEDULE_FILE).read_bytes() == schedule_file.read_bytes()
    r = replay.report
    assert r["verdict"] == "pass"
    assert [(f["kind"], f["target_step"]) for f in r["faults"]] == [
        (f["kind"], f["target_step"]) for f in source.report["faults"]]
    assert r["job"]["chaos_seed"] == 0  # the seed the schedule was drawn from


@pytest.mark.parametrize(
    ("what", "message"),
    [
        ("other-job", "is for a job of 30 steps, this one has 45"),
        ("missing", "no such file"),
        ("garbled", "not a valid schedule"),
    ],
    ids=["other-job", "missing", "garbled"],
)
def test_a_replay_that_does_not_fit_is_refused(chaos_runs: ChaosRuns, tmp_path: Path, what: str,
                                               message: str) -> None:
    all_kinds_run(chaos_runs)  # its 3-epoch reference is in the cache: no training here
    schedule_file = {
        "other-job": broken_run(chaos_runs, "optimizer").run_dir / SCHEDULE_FILE,  # 2 epochs, 30 steps
        "missing": tmp_path / "nope.json",
        "garbled": tmp_path / "garbled.json",
    }[what]
    (tmp_path / "garbled.json").write_text("[1, 2")
    run_dir = tmp_path / "run"
    p = run_runner("--simulate-preemption", "--epochs", 3, "--chaos-replay", schedule_file,
                   "--reference-cache", chaos_runs.reference_cache, "--run-dir", run_dir)
    assert p.returncode == 78, describe(p)
    (line,) = error_lines(p)
    assert line.startswith("error: chaos schedule") and message in line
    assert not run_dir.exists()


# -- verify ------------------------------------------------------------------------------------------------


def test_verify_passes_a_passing_run(chaos_runs: ChaosRuns, tmp_path: Path) -> None:
    run = all_kinds_run(chaos_runs)
    out = tmp_path / "out" / "verify.json"
    p = run_runner("verify", run.run_dir, run.reference_dir, "--json", out)
    assert p.returncode == 0, describe(p)
    assert "PASS bit-exact: 45 steps" in p.stdout
    d = json.loads(out.read_text())
    assert (d["verdict"], d["bit_exact"], d["first_divergent_step"], d["steps_compared"]) == ("pass", True, None, 45)
    assert d["params_equal"] is True


def test_verify_fails_a_broken_run_at_its_first_divergent_step(chaos_runs: ChaosRuns, tmp_path: Path) -> None:
    run = broken_run(chaos_runs, "optimizer")
    out = tmp_path / "verify.json"
    p = run_runner("verify", run.run_dir, run.reference_dir, "--json", out)
    assert p.returncode == 3, describe(p)
    d = json.loads(out.read_text())
    assert (d["verdict"], d["bit_exact"]) == ("diverged", False)
    assert d["first_divergent_step"] == run.report["first_divergent_step"] == resumed_from_step(run.run_dir, 2) + 1
    assert d["reference_value"] != d["run_value"]
    assert f"DIVERGED at step {d['first_divergent_step']}: reference loss" in p.stdout


@pytest.mark.parametrize("which", ["run", "reference"])
def test_verify_a_missing_directory(chaos_runs: ChaosRuns, tmp_path: Path, which: str) -> None:
    good = broken_run(chaos_runs, "optimizer").run_dir
    missing = tmp_path / "no-such-run"
    args = (missing, good) if which == "run" else (good, missing)
    p = run_runner("verify", *args, "--json", tmp_path / "v.json")
    assert p.returncode == 65, describe(p)
    assert error_lines(p) == [f"error: {which} {missing}: no such directory"]
    assert not (tmp_path / "v.json").exists()


def test_verify_a_directory_without_a_loss_journal(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / "losses.jsonl").write_text("")
    p = run_runner("verify", tmp_path / "empty", tmp_path / "ref")
    assert p.returncode == 65, describe(p)
    (line,) = error_lines(p)
    assert line.startswith("error: run ") and "no losses.jsonl" in line


# -- the run directory must be new ---------------------------------------------------------------------------


def test_a_non_empty_run_dir_is_refused(chaos_runs: ChaosRuns, tmp_path: Path) -> None:
    broken_run(chaos_runs, "optimizer")  # its 2-epoch reference is in the cache: no training here
    run_dir = tmp_path / "taken"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "notes.txt").write_text("mine\n")
    (run_dir / "checkpoints" / "keep").write_bytes(b"\x00\x01")
    before = sorted((str(p.relative_to(run_dir)), p.is_file() and p.read_bytes()) for p in run_dir.rglob("*"))
    p = run_runner("--simulate-preemption", *ONE_SIGKILL, "--reference-cache", chaos_runs.reference_cache,
                   "--run-dir", run_dir)
    assert p.returncode == 78, describe(p)
    assert error_lines(p) == [f"error: run directory {run_dir} already holds a run; choose a new --run-dir"]
    after = sorted((str(p.relative_to(run_dir)), p.is_file() and p.read_bytes()) for p in run_dir.rglob("*"))
    assert after == before, "the run directory was changed"
