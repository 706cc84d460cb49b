"""The warm spare's in-memory checkpoint with real processes: workers SIGKILLed at random steps are
replaced by a spare that restores from the copy it held (``restored_from: memory`` in
``attempt-started``), for the built-in job (its bytes) and for a ``runner.Job`` (put into the job's
objects while it waited: ``preapplied``), and the stitched run is bit-exact; with
``--standby-memory off`` it restores from disk, as before; and a spare whose held copy had a byte
changed after it was verified is caught by the bit-exact comparison.

As in test_standby.py, each worker to be killed is first SIGSTOPped at its step and only SIGKILLed
once the spare is ready and has had time to read the newest checkpoint (nothing commits meanwhile).
Every wait is bounded; nothing is timed."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.helpers.processes import (
    Started,
    describe,
    finish,
    run,
    run_job,
    runner_cmd,
    seeded_run_dir,
    wait_for,
    wait_for_worker,
)
from tests.helpers.readers import assert_bit_exact, events, losses

pytestmark = pytest.mark.e2e

READY_TIMEOUT = 180.0
STEP_TIMEOUT = 120.0
HOLD_S = 1.0  # a ready spare reads the newest checkpoint within a poll (50 ms) and its read

MODEL_STEPS = 45  # the built-in job: 3 epochs of 15 steps
TINY = [sys.executable, str(REPO / "tests" / "jobs" / "tiny_job.py"), "--epochs", "3"]
TINY_STEPS = 30  # 3 epochs of 10 batches


@pytest.fixture(scope="module")
def model_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ref = tmp_path_factory.mktemp("memory-reference") / "run"
    p = run_job(ref, "--epochs", 3)
    assert p.returncode == 0, describe(p)
    return ref


@pytest.fixture(scope="module")
def tiny_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ref = tmp_path_factory.mktemp("memory-tiny-reference") / "run"
    p = run([*TINY, "--run-dir", str(ref)])
    assert p.returncode == 0, describe(p)
    assert len(losses(ref)) == TINY_STEPS
    return ref


def kill_at(run_dir: Path, sup: subprocess.Popen, steps: list[int]) -> list[int]:
    """SIGKILL attempt k's worker once it reached ``steps[k-1]`` and the k-th spare is ready and holds the
    newest checkpoint; the killed pids."""
    killed = []
    for attempt, min_step in enumerate(steps, start=1):
        pid = wait_for_worker(run_dir, attempt, min_step, sup, timeout=STEP_TIMEOUT)
        os.kill(pid, signal.SIGSTOP)
        wait_for(lambda n=attempt: len(events(run_dir, "standby-ready", source="standby")) >= n,
                 timeout=READY_TIMEOUT, proc=sup, interval=0.02, what=f"spare {attempt} to be ready")
        time.sleep(HOLD_S)
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
    return killed


def random_steps(seed: int, bounds: list[tuple[int, int]]) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(lo, hi) for lo, hi in bounds]


def started(run_dir: Path) -> list[tuple[int, str | None, bool]]:
    return [(e["attempt"], e["restored_from"], e["preapplied"]) for e in events(run_dir, "attempt-started")]


@pytest.mark.parametrize("seed", [1, 2])
def test_the_built_in_job_restores_from_the_spares_memory_bit_exact(
    model_reference: Path, tmp_path: Path, procs: Started, seed: int
) -> None:
    run_dir = seeded_run_dir(tmp_path / "run", model_reference)
    sup = procs.start(runner_cmd(run_dir, "--epochs", 3, "--checkpoint-every-steps", 4))
    kill_at(run_dir, sup, random_steps(seed, [(4, 12), (17, 27), (31, 40)]))
    p = finish(sup)
    assert p.returncode == 0, describe(p, run_dir=run_dir)
    assert [e["warm"] for e in events(run_dir, "attempt-spawned")] == [False, True, True, True]
    assert started(run_dir) == [(1, None, False), (2, "memory", False), (3, "memory", False), (4, "memory", False)]
    newest = [e["resumed_from_step"] for e in events(run_dir, "attempt-started")][1:]
    assert all(s > 0 for s in newest)
    assert_bit_exact(run_dir, model_reference, MODEL_STEPS)


def supervise_tiny(run_dir: Path, procs: Started, *flags: object, env: dict[str, str] | None = None
                   ) -> subprocess.Popen:
    run_dir.mkdir(parents=True, exist_ok=True)
    return procs.start(runner_cmd(run_dir, "--standby", "--preload", "paddle", *flags,
                                  command=[*TINY, "--sleep", 0.02]),
                       env={"RUNNER_CHECKPOINT_EVERY": "3", **(env or {})})


@pytest.mark.parametrize(("flags", "want"), [((), ("memory", True)), (("--standby-memory", "off"), ("disk", False))],
                         ids=["memory", "off"])
def test_a_runner_job_spare_preapplies_the_checkpoint_bit_exact(
    tiny_reference: Path, tmp_path: Path, procs: Started, flags: tuple[str, ...], want: tuple[str, bool]
) -> None:
    run_dir = tmp_path / "run"
    sup = supervise_tiny(run_dir, procs, *flags)
    kill_at(run_dir, sup, random_steps(3, [(4, 12), (16, 25)]))
    p = finish(sup)
    assert p.returncode == 0, describe(p, run_dir=run_dir)
    assert started(run_dir) == [(1, None, False), (2, *want), (3, *want)]
    assert_bit_exact(run_dir, tiny_reference, TINY_STEPS)


def test_a_held_copy_changed_after_verification_is_caught(tiny_reference: Path, tmp_path: Path,
                                                          procs: Started) -> None:
    """The broken variant: a spare whose copy in memory differs from the checkpoint it verified."""
    run_dir = tmp_path / "run"
    sup = supervise_tiny(run_dir, procs, env={"TINY_JOB_FLIP_HELD": "1"})
    kill_at(run_dir, sup, [8])
    p = finish(sup)
    assert p.returncode == 0, describe(p, run_dir=run_dir)
    assert started(run_dir) == [(1, None, False), (2, "memory", True)]
    with pytest.raises(AssertionError, match="diverges"):
        assert_bit_exact(run_dir, tiny_reference, TINY_STEPS)
