"""A gang of two ranks on CPU (``python -m runner --nproc-per-node 2``, gloo), with real processes:

- a rank SIGKILLed from outside at a random step: the supervisor kills the other, classifies the
  gang's exit by the rank that failed, restarts the whole gang from the newest checkpoint every rank
  committed, and ``python -m runner verify`` finds the run equal to an uninterrupted two-rank run,
  losses and final parameters, bit for bit;
- a SIGTERM to the supervisor: every rank checkpoints at the same step (each rank's part named in
  the one manifest), every rank exits 75, the supervisor 130, no step is lost, and a rerun finishes
  bit-exactly.

Small on purpose (2 epochs of 15 steps; a gang starts in ~5 s on two cores); dropout and input jitter
make every rank draw from its own RNGs, which its part of each checkpoint must bring back."""

from __future__ import annotations

import json
import os
import random
import signal
import sys
from pathlib import Path

import pytest

from checkpoint.storage import LocalStorage
from checkpoint.store import CheckpointStore, checkpoint_name
from rundir.exitcodes import ExitCode
from runner.rankexit import read_records
from runner.worker.ranks import RankParts, gang_record, part_key
from tests.helpers.processes import Started, describe, finish, run, runner_cmd, seeded_run_dir, wait_for
from tests.helpers.readers import assert_bit_exact, events, losses

pytestmark = pytest.mark.e2e

JOB = ("--epochs", 2, "--checkpoint-every-steps", 4, "--dropout", 0.1, "--jitter", 0.02, "--nproc-per-node", 2)
STEPS = 30
TIMEOUT = 300.0


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted two-rank run of ``JOB``: what every interrupted one must equal."""
    ref = tmp_path_factory.mktemp("gang-reference") / "run"
    p = run(runner_cmd(ref, *JOB), timeout=TIMEOUT)
    assert p.returncode == 0, describe(p, run_dir=ref)
    assert [r["step"] for r in losses(ref)] == list(range(STEPS))
    assert {r["ranks"] for r in losses(ref)} == {2}
    return ref


def ranks_of(run_dir: Path, attempt: int) -> Path:
    return run_dir / "logs" / f"attempt-{attempt:03d}-ranks"


def reached(run_dir: Path, step: int) -> bool:
    return any(r["step"] >= step for r in losses(run_dir))


def verify(run_dir: Path, reference: Path) -> None:
    p = run([sys.executable, "-m", "runner", "verify", str(run_dir), str(reference)], timeout=120)
    assert p.returncode == 0 and "PASS" in p.stdout, describe(p)


def test_a_rank_killed_at_a_random_step_restarts_the_gang_and_the_run_is_bit_exact(
        reference: Path, tmp_path: Path, procs: Started) -> None:
    run_dir = seeded_run_dir(tmp_path / "run", reference)
    at = random.Random().randrange(2, STEPS - 4)
    proc = procs.start(runner_cmd(run_dir, *JOB))
    wait_for(lambda: len(read_records(ranks_of(run_dir, 1))) == 2 and reached(run_dir, at), timeout=TIMEOUT,
             proc=proc, what=f"step {at}", interval=0.005)
    victim = read_records(ranks_of(run_dir, 1))[1]
    os.kill(victim.pid, signal.SIGKILL)
    p = finish(proc, TIMEOUT)
    assert p.returncode == 0, describe(p, run_dir=run_dir)

    exits = [e for e in events(run_dir) if e["event"] == "attempt-exited"]
    assert exits[0]["exit_class"] == "killed" and exits[0]["signal"] == "SIGKILL", exits[0]
    assert exits[-1]["exit_class"] == "completed" and len(exits) >= 2
    log = (run_dir / "logs" / "attempt-001.log").read_text()
    assert "rank 1 of 2 failed first (killed by SIGKILL)" in log
    for attempt in range(1, len(exits) + 1):  # each attempt's ranks logged on their own
        assert (ranks_of(run_dir, attempt) / "workerlog.0").is_file()
        assert (ranks_of(run_dir, attempt) / "workerlog.1").is_file()
    assert_bit_exact(run_dir, reference, STEPS)
    verify(run_dir, reference)


def test_sigterm_makes_every_rank_checkpoint_at_the_same_step_and_nothing_is_lost(
        reference: Path, tmp_path: Path, procs: Started) -> None:
    run_dir = seeded_run_dir(tmp_path / "run", reference)
    at = random.Random().randrange(2, STEPS - 6)
    proc = procs.start(runner_cmd(run_dir, *JOB))
    wait_for(lambda: reached(run_dir, at), timeout=TIMEOUT, proc=proc, what=f"step {at}", interval=0.005)
    proc.send_signal(signal.SIGTERM)
    p = finish(proc, TIMEOUT)
    assert p.returncode == ExitCode.INTERRUPTED, describe(p, run_dir=run_dir)

    ranks = read_records(ranks_of(run_dir, 1))
    assert {r.returncode for r in ranks.values()} == {ExitCode.PREEMPTED}, ranks
    preempted = [e for e in events(run_dir) if e["event"] == "preempted"]
    assert len(preempted) == 1
    step = preempted[0]["step"]
    assert max(r["step"] for r in losses(run_dir)) == step - 1  # every step done is in the checkpoint
    store = CheckpointStore(LocalStorage(run_dir))
    ckpt = store.verify(checkpoint_name(step))
    record = gang_record(ckpt.meta)
    assert isinstance(record, dict) and record["world_size"] == 2, record
    assert (run_dir / part_key(step, 1)).is_file()  # rank 1's part of the very same step
    RankParts(LocalStorage(run_dir), 2).check(ckpt)
    exited = [e for e in events(run_dir) if e["event"] == "attempt-exited"]
    assert exited[0]["returncode"] == ExitCode.PREEMPTED

    p = run(runner_cmd(run_dir, *JOB), timeout=TIMEOUT)  # the same command again
    assert p.returncode == 0, describe(p, run_dir=run_dir)
    started = [e for e in events(run_dir) if e["event"] == "attempt-started"]
    assert started[-1]["resumed_from_step"] == step
    assert_bit_exact(run_dir, reference, STEPS)
    verify(run_dir, reference)


def test_a_gang_whose_ranks_resume_with_rank_0s_rngs_is_caught(reference: Path, tmp_path: Path,
                                                                 procs: Started) -> None:
    """The per-rank part is load-bearing: with each rank's own RNGs left out on resume
    (``--break-resume rank-rng``), rank 1 goes on with rank 0's, and the verifier says so."""
    run_dir = seeded_run_dir(tmp_path / "run", reference)
    proc = procs.start(runner_cmd(run_dir, *JOB, "--break-resume", "rank-rng"))
    wait_for(lambda: len(read_records(ranks_of(run_dir, 1))) == 2 and reached(run_dir, 9), timeout=TIMEOUT,
             proc=proc, what="step 9", interval=0.005)
    os.kill(read_records(ranks_of(run_dir, 1))[1].pid, signal.SIGKILL)
    p = finish(proc, TIMEOUT)
    assert p.returncode == 0, describe(p, run_dir=run_dir)
    resumed = [e["resumed_from_step"] for e in events(run_dir) if e["event"] == "attempt-started"]
    assert resumed[0] == 0 and resumed[-1] >= 8, resumed
    p = run([sys.executable, "-m", "runner", "verify", str(run_dir), str(reference)], timeout=120)
    assert p.returncode == ExitCode.VERIFY_FAILED, describe(p)
    assert f"at step {resumed[-1]}" in p.stdout  # the first step after the resume


def test_a_run_resumed_with_another_gang_size_is_refused(reference: Path, tmp_path: Path) -> None:
    run_dir = seeded_run_dir(tmp_path / "run", reference)
    (run_dir / "job.json").write_text((reference / "job.json").read_text())
    job = json.loads((run_dir / "job.json").read_text())
    assert job["world_size"] == 2
    p = run(runner_cmd(run_dir, *JOB[:-1], 1), timeout=TIMEOUT)  # one process on a two-rank run
    assert p.returncode == ExitCode.BAD_CONFIG, describe(p, run_dir=run_dir)
    assert "world_size" in p.stderr


def test_chaos_aims_signals_and_a_crash_at_single_ranks_and_the_gang_still_proves_exact(tmp_path: Path) -> None:
    """Seed 0's schedule for a gang of 2: SIGTERM to rank 1 alone at step 8 (the gang agrees and
    stops), SIGKILL to rank 1 at 19, a crash armed in rank 0 at 27."""
    run_dir = tmp_path / "chaos"
    p = run([sys.executable, "-m", "runner", "--simulate-preemption", "--nproc-per-node", "2", "--epochs", "2",
             "--faults", "3", "--fault-kinds", "sigkill", "sigterm", "crash", "--chaos-seed", "0",
             "--reference-cache", str(tmp_path / "refs"), "--run-dir", str(run_dir)], timeout=TIMEOUT)
    assert p.returncode == 0 and "PASS bit-exact" in p.stdout, describe(p, run_dir=run_dir)
    faults = [(e["fault"], e.get("rank")) for e in events(run_dir) if e["event"] == "chaos-fault"]
    assert faults == [("sigterm", 1), ("sigkill", 1)], faults  # the crash is armed inside rank 0, not sent
    exits = [(e["exit_class"], e["returncode"]) for e in events(run_dir) if e["event"] == "attempt-exited"]
    assert exits == [("preempted", ExitCode.PREEMPTED), ("killed", -signal.SIGKILL), ("crashed", 1),
                     ("completed", 0)], exits
    assert "rank 1 of 2 failed first (killed by SIGKILL)" in (run_dir / "logs" / "attempt-002.log").read_text()
    assert "simulated device error in step 27" in (run_dir / "logs" / "attempt-003.log").read_text()
