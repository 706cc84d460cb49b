"""Jobs of one's own on ``runner.Job``, end to end: each example survives every fault kind bit for bit
under ``python -m runner --simulate-preemption -- CMD``; a resume that leaves out any part of the state
fails verification where it resumed; a loader with worker processes, killed mid-epoch, reads on at the
exact sample; SIGTERM reaches the job and not its loader processes; campaigns and replays take a
command too.

The tiny job (``tests/jobs/tiny_job.py``) runs 10 batches an epoch; crashed by the chaos arm at step 13
with a checkpoint every 4 steps, it resumes from step 12: epoch 1, batch 2.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.runs import ChaosRuns
from tests.helpers import REPO
from tests.helpers.processes import child_env, describe, run_runner, wait_for
from tests.helpers.readers import resumed_from_step

pytestmark = pytest.mark.e2e

# The examples' steps take a few milliseconds and the supervisor looks every 20 ms, so a signal fault
# (sigkill, sigterm, hang) lands a few steps after its target: chaos seed 1678 puts them in the first half of
# each example's ~45 steps and the faults armed inside the worker last, so none is still pending when the job
# ends. The hang timeout is a little more than the simulation's 3 s, for a worker slow to start on a busy
# machine.
ALL_KINDS = ("--fault-kinds", "sigkill", "sigterm", "crash", "checkpoint-write", "corrupt-checkpoint", "hang",
             "--faults", 6, "--chaos-seed", 1678, "--hang-timeout", 6)
EXAMPLES = ("mlp_dropout", "cnn_augment", "seq_gru", "scalable")
TINY = "tests/jobs/tiny_job.py"
RESUMED_FROM = 12


@pytest.fixture(scope="module")
def chaos_runs(tmp_path_factory: pytest.TempPathFactory) -> ChaosRuns:
    return ChaosRuns(tmp_path_factory.mktemp("job-api-chaos"), tmp_path_factory.mktemp("job-api-references"))


def tiny(run_dir: Path, *args: object, env: dict[str, str] | None = None, arm: dict[str, Any] | None = None,
         timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
    """The tiny job alone, no supervisor: ``python tests/jobs/tiny_job.py --run-dir RUN_DIR ARGS``."""
    return subprocess.run([sys.executable, TINY, "--run-dir", str(run_dir), *map(str, args)], cwd=REPO,
                          env=child_env({"RUNNER_CHECKPOINT_EVERY": "4", **(env or {})}, arm), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def verify(run_dir: Path, ref: Path, out: Path) -> dict[str, Any]:
    p = run_runner("verify", run_dir, ref, "--json", out)
    assert p.returncode in (0, 3, 4), describe(p)
    return json.loads(out.read_text())


def sample_ids(run_dir: Path) -> dict[int, list[int]]:
    """The samples each step trained on, the latest attempt's for a step done twice."""
    out: dict[int, list[int]] = {}
    for line in (run_dir / "ids.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out[rec["step"]] = rec["ids"]
    return out


# -- the examples under chaos ----------------------------------------------------------------------------------


@pytest.mark.parametrize("example", EXAMPLES)
def test_each_example_survives_every_fault_kind_bit_exactly(chaos_runs: ChaosRuns, example: str) -> None:
    run = chaos_runs.simulate(example, *ALL_KINDS, "--", sys.executable, f"examples/{example}.py")
    assert run.proc.returncode == 0, describe(run.proc)
    r = run.report
    assert (r["verdict"], r["bit_exact"]) == ("pass", True), describe(run.proc)
    assert r["comparison"]["params_equal"] is True
    assert sorted(f["kind"] for f in r["faults"]) == sorted(map(str, ALL_KINDS[1:7]))
    assert [f for f in r["faults"] if f["missed"]] == [], r["faults"]
    assert r["restarts"] >= 6 and r["job"]["job"] == f"{example}.py"
    assert r["job"]["command"] == [sys.executable, f"examples/{example}.py"]
    assert all(n["steps_lost"] == 0 for n in r.get("notices", [])), r.get("notices")


# -- each part of the state, left out of a resume, is caught where it resumed -----------------------------

# A step's loss is computed before its update: a part only the update reads (the optimizer's moments, the
# learning rate) shows in the loss of the step after the resume.
FIRST_WRONG = {"model": 0, "paddle-rng": 0, "numpy-rng": 0, "sampler": 0, "position": 0, "optimizer": 1,
               "scheduler": 1}


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str | None, Path]:
    """The tiny job uninterrupted (None), and crashed at step 13 then resumed: correctly ("") and
    leaving out each part (by name)."""
    base = tmp_path_factory.mktemp("tiny")
    ref, crashed = base / "reference", base / "crashed"
    p = tiny(ref)
    assert p.returncode == 0, p.stderr
    p = tiny(crashed, arm={"kind": "crash", "step": 13})
    assert p.returncode == 1 and "simulated device error in step 13" in p.stderr, p.stderr
    runs: dict[str | None, Path] = {None: ref}
    for part in ["", *FIRST_WRONG]:
        runs[part] = shutil.copytree(crashed, base / f"resumed-{part or 'correctly'}")
        p = tiny(runs[part], env={"TINY_JOB_BREAK": part} if part else None)
        assert p.returncode == 0, p.stderr
    return runs


def test_a_correct_resume_passes(tiny_runs: dict[str | None, Path], tmp_path: Path) -> None:
    assert resumed_from_step(tiny_runs[""], 2) == RESUMED_FROM
    v = verify(tiny_runs[""], tiny_runs[None], tmp_path / "v.json")
    assert (v["verdict"], v["bit_exact"], v["steps_compared"]) == ("pass", True, 30)


@pytest.mark.parametrize("part", list(FIRST_WRONG))
def test_a_resume_that_leaves_out_a_part_diverges_where_it_resumed(tiny_runs: dict[str | None, Path], part: str,
                                                                  tmp_path: Path) -> None:
    assert resumed_from_step(tiny_runs[part], 2) == RESUMED_FROM
    v = verify(tiny_runs[part], tiny_runs[None], tmp_path / "v.json")
    assert (v["verdict"], v["bit_exact"], v["params_equal"]) == ("diverged", False, False), v
    assert v["first_divergent_step"] == RESUMED_FROM + FIRST_WRONG[part], v


# -- loader processes -------------------------------------------------------------------------------------------


def test_a_loader_with_workers_killed_mid_epoch_reads_on_at_the_exact_sample(tmp_path: Path) -> None:
    ref, run = tmp_path / "reference", tmp_path / "run"
    p = tiny(ref, "--workers", 2)
    assert p.returncode == 0, p.stderr
    p = tiny(run, "--workers", 2, arm={"kind": "crash", "step": 15})
    assert p.returncode == 1, p.stderr
    assert sorted(sample_ids(run)) == list(range(16))  # step 15 read its batch, then crashed
    p = tiny(run, "--workers", 2, timeout=120)
    assert p.returncode == 0, p.stderr
    assert resumed_from_step(run, 2) == RESUMED_FROM
    assert sample_ids(run) == sample_ids(ref)  # every step read the reference's samples, across the kill
    all_reads = [json.loads(line)["step"] for line in (run / "ids.jsonl").read_text().splitlines()]
    assert all_reads == [*range(16), *range(RESUMED_FROM, 30)]  # nothing read twice but the steps redone
    assert verify(run, ref, tmp_path / "v.json")["verdict"] == "pass"


def test_sigterm_preempts_a_job_with_loader_processes_which_ignore_it(tmp_path: Path) -> None:
    ref, run = tmp_path / "reference", tmp_path / "run"
    args = ("--workers", "2", "--sleep", "0.05")  # the same arguments throughout: they are the job's identity
    assert tiny(ref, *args).returncode == 0
    proc = subprocess.Popen([sys.executable, TINY, "--run-dir", str(run), *args], cwd=REPO,
                            env=child_env({"RUNNER_CHECKPOINT_EVERY": "0"}), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for(lambda: (run / "losses.jsonl").exists() and (run / "losses.jsonl").read_text().count("\n") >= 14,
             proc=proc, what="14 steps", timeout=120)
    os.killpg(proc.pid, signal.SIGTERM)  # the whole group, as the supervisor does
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err
    steps = [json.loads(line)["step"] for line in (run / "losses.jsonl").read_text().splitlines()]
    done = steps[-1] + 1
    assert done in (int(name.split("-")[1]) for name in os.listdir(run / "checkpoints")), "no preemption checkpoint"
    p = tiny(run, *args, env={"RUNNER_CHECKPOINT_EVERY": "0"})
    assert p.returncode == 0, p.stderr
    assert resumed_from_step(run, 2) == done  # no step lost
    assert verify(run, ref, tmp_path / "v.json")["verdict"] == "pass"


# -- campaigns and replays on a command -----------------------------------------------------------------------


def test_a_campaign_runs_on_a_command(chaos_runs: ChaosRuns, tmp_path: Path) -> None:
    out = tmp_path / "campaign"
    p = run_runner("campaign", "--trials", 2, "--faults-per-trial", 2, "--fault-kinds", "sigkill", "crash",
                   "--reference-cache", chaos_runs.reference_cache, "--out", out, "--json", out / "c.json",
                   "--", sys.executable, TINY, "--epochs", 2)
    assert p.returncode == 0, describe(p)
    totals = json.loads((out / "c.json").read_text())["totals"]
    assert (totals["trials"], totals["passed"]) == (2, 2)


def test_a_command_jobs_replay_line_replays_it(chaos_runs: ChaosRuns, tmp_path: Path) -> None:
    source = chaos_runs.simulate("tiny-sigkill", "--fault-kinds", "sigkill", "--faults", 2,
                                 "--", sys.executable, TINY, "--epochs", 2)
    assert source.proc.returncode == 0, describe(source.proc)
    argv = shlex.split(source.report["replay"])
    cut = argv.index("--")
    assert argv[:4] == ["python", "-m", "runner", "--simulate-preemption"]
    assert argv[cut + 1 :] == [sys.executable, TINY, "--epochs", "2"]
    replay = run_runner(*argv[3:cut], "--reference-cache", chaos_runs.reference_cache, "--run-dir",
                        tmp_path / "replay", "--json-report", tmp_path / "r.json", *argv[cut:])
    assert replay.returncode == 0, describe(replay)
    r = json.loads((tmp_path / "r.json").read_text())
    assert [(f["kind"], f["target_step"]) for f in r["faults"]] == [
        (f["kind"], f["target_step"]) for f in source.report["faults"]]
    assert "reference: reusing" in replay.stdout  # the same command: the same reference
