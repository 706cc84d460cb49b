"""The warm standby with real processes, and the asynchronous/auto checkpoint cadence end to end.

A spare (``python -m model`` with ``RUNNER_STANDBY=1``, stdin a pipe; under the supervisor a fork
of its fork server) warms up and then touches nothing
until it gets its go line; it never trains next to a live worker; under the supervisor every restart
after a warm spare is ready is warm and bit-exact; without standby, or after the spare died, restarts
are cold and still exact; no spare outlives the supervisor.

The job trains 45 steps in well under a second while a spare needs seconds to import Paddle, so each
worker to be killed is first SIGSTOPped and only SIGKILLed once the spare reports ready. One
uninterrupted ``python -m model --epochs 3`` run is the reference for every trace (the checkpoint
cadence does not change the trace). Every wait is bounded; nothing is timed."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from checkpoint.storage import LocalStorage
from checkpoint.store import CheckpointStore, checkpoint_name
from rundir.exitcodes import ExitCode
from runner.worker import ENV_STANDBY, EVENTS, FINAL, HEARTBEAT, LOSSES, WORKER_LOCK
from tests.helpers.processes import (
    Started,
    describe,
    finish,
    job_cmd,
    processes_using,
    run_job,
    runner_cmd,
    seeded_run_dir,
    wait_for,
    wait_for_worker,
    wait_gone,
)
from tests.helpers.readers import assert_bit_exact, events, losses
from tests.helpers.readers import resumed_from as started_from

pytestmark = pytest.mark.e2e

EPOCHS = ("--epochs", 3)
STEPS = 45  # 3 epochs of 15 steps
JOB = (*EPOCHS, "--checkpoint-every-steps", 5)
READY_TIMEOUT = 180.0  # a spare imports Paddle and builds the model: seconds, more on a busy machine
STEP_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ref = tmp_path_factory.mktemp("standby-reference") / "run"
    p = run_job(ref, *EPOCHS)
    assert p.returncode == 0, describe(p)
    assert [r["step"] for r in losses(ref)] == list(range(STEPS))
    return ref


def assert_nothing_left(run_dir: Path, *pids: int, timeout: float = 30.0) -> None:
    for pid in pids:
        wait_gone(pid, timeout)
    wait_for(lambda: not processes_using([run_dir]), timeout=timeout, interval=0.05,
             what=f"every process naming {run_dir} to exit")


def spawned(run_dir: Path) -> list[dict]:
    return events(run_dir, "attempt-spawned", source="supervisor")


def spares(run_dir: Path) -> list[int]:
    return [e["pid"] for e in events(run_dir, "standby-spawned", source="supervisor")]


def ready_spare(run_dir: Path, n: int) -> int | None:
    """The pid of the supervisor's ``n``-th spare once it has logged standby-ready, else None."""
    pids = spares(run_dir)
    if len(pids) < n:
        return None
    ready = {e["pid"] for e in events(run_dir, "standby-ready", source="standby")}
    return pids[n - 1] if pids[n - 1] in ready else None


def wait_ready_spare(run_dir: Path, n: int, sup: subprocess.Popen) -> int:
    return wait_for(lambda: ready_spare(run_dir, n), timeout=READY_TIMEOUT, proc=sup, interval=0.02,
                    what=f"spare {n} to be ready")


def run_killing_the_first_worker(
    run_dir: Path, procs: Started, *flags: object
) -> tuple[subprocess.CompletedProcess[str], int]:
    """Supervise the job with ``flags``, SIGKILL attempt 1's worker once it reached step 7, and let
    the run finish; its result (asserted to be exit 0) and the killed pid."""
    sup = procs.start(runner_cmd(run_dir, *JOB, *flags))
    pid = wait_for_worker(run_dir, 1, 7, sup, timeout=STEP_TIMEOUT)
    os.kill(pid, signal.SIGKILL)
    p = finish(sup)
    assert p.returncode == 0, describe(p, run_dir=run_dir)
    return p, pid


def stop_at(run_dir: Path, attempt: int, min_step: int, sup: subprocess.Popen) -> int:
    """SIGSTOP attempt ``attempt``'s worker once it reached ``min_step``; returns its pid."""
    pid = wait_for_worker(run_dir, attempt, min_step, sup, timeout=STEP_TIMEOUT)
    os.kill(pid, signal.SIGSTOP)
    return pid


# -- a spare started by hand ------------------------------------------------------------------------------


def interrupted_copy(reference: Path, dst: Path, at: int = 15) -> Path:
    """The reference as if it had been killed after ``at`` steps: no final.json, checkpoints up to
    ``at``, the journal up to there. A worker started on it would train steps ``at`` to the end."""
    shutil.copytree(reference, dst)
    (dst / FINAL).unlink()
    for d in (dst / "checkpoints").iterdir():
        if int(d.name.split("-")[1]) > at:
            shutil.rmtree(d)
    lines = (dst / LOSSES).read_bytes().splitlines(keepends=True)
    (dst / LOSSES).write_bytes(b"".join(x for x in lines if json.loads(x)["step"] < at))
    return dst


def snapshot(run_dir: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(run_dir)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def start_spare(run_dir: Path, tmp_path: Path, procs: Started) -> subprocess.Popen:
    out = open(tmp_path / "spare.out", "wb")  # the child keeps its own copy of the fd
    proc = procs.start(job_cmd(run_dir, *EPOCHS), env={ENV_STANDBY: "1"}, stdin=subprocess.PIPE, stdout=out,
                       stderr=subprocess.STDOUT, text=False)  # the go line is bytes
    out.close()
    return proc


def spare_output(tmp_path: Path) -> str:
    return (tmp_path / "spare.out").read_text(errors="replace")


def wait_standby_ready(run_dir: Path, proc: subprocess.Popen) -> dict:
    (ready,) = wait_for(lambda: [e for e in events(run_dir, "standby-ready") if e.get("pid") == proc.pid],
                        timeout=READY_TIMEOUT, proc=proc, interval=0.02, what="the spare to be ready")
    return ready


def exit_code(proc: subprocess.Popen, timeout: float = 60.0) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the spare (pid {proc.pid}) did not exit within {timeout} s") from None


def test_a_spare_writes_only_standby_ready_until_its_go_line_and_eof_ends_it(
    reference: Path, tmp_path: Path, procs: Started
) -> None:
    run_dir = interrupted_copy(reference, tmp_path / "run")
    before = snapshot(run_dir)
    events_before = (run_dir / EVENTS).read_bytes()
    spare = start_spare(run_dir, tmp_path, procs)

    ready = wait_standby_ready(run_dir, spare)
    assert ready["source"] == "standby" and ready["event"] == "standby-ready"
    # Warm and waiting: give it time to do anything it should not, then look.
    assert spare.poll() is None
    try:
        spare.wait(timeout=1.5)
    except subprocess.TimeoutExpired:
        pass
    assert spare.poll() is None, "the spare exited without a go line or EOF:\n" + spare_output(tmp_path)
    after = snapshot(run_dir)
    assert set(after) == set(before), "the waiting spare created or removed files"
    for name in before:
        if name != EVENTS:
            assert after[name] == before[name], f"the waiting spare changed {name}"
    for name in (HEARTBEAT, LOSSES):
        assert after[name] == before[name]
    new = after[EVENTS][0]
    assert new.startswith(events_before)
    (line,) = new[len(events_before):].splitlines()
    assert json.loads(line) == ready
    # Nor does it hold the worker lock while it waits.
    fd = os.open(run_dir / WORKER_LOCK, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)

    assert spare.stdin is not None
    spare.stdin.close()  # EOF: the supervisor no longer needs it
    assert exit_code(spare) == 0, spare_output(tmp_path)
    after_exit = snapshot(run_dir)
    assert {k: v for k, v in after_exit.items() if k != EVENTS} == {k: v for k, v in before.items() if k != EVENTS}
    assert after_exit[EVENTS] == after[EVENTS]
    assert "Traceback" not in spare_output(tmp_path)


def test_a_spare_never_trains_next_to_a_live_worker(
    reference: Path, tmp_path: Path, procs: Started
) -> None:
    run_dir = interrupted_copy(reference, tmp_path / "run")
    spare = start_spare(run_dir, tmp_path, procs)
    wait_standby_ready(run_dir, spare)
    losses_before = (run_dir / LOSSES).read_bytes()
    hb_before = (run_dir / HEARTBEAT).read_bytes()
    ckpts_before = sorted(p.name for p in (run_dir / "checkpoints").iterdir())

    fd = os.open(run_dir / WORKER_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a live worker holds the run
        assert spare.stdin is not None
        spare.stdin.write(json.dumps({"attempt": 7, "env": {}}).encode() + b"\n")
        spare.stdin.flush()
        code = exit_code(spare)
    finally:
        os.close(fd)
    out = spare_output(tmp_path)
    assert code == ExitCode.LOCKED == 69, out
    assert f"error: run directory {run_dir} is in use by another worker" in out
    assert "Traceback" not in out
    assert (run_dir / LOSSES).read_bytes() == losses_before  # not one step
    assert (run_dir / HEARTBEAT).read_bytes() == hb_before
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ckpts_before
    assert not (run_dir / FINAL).exists()
    assert not [e for e in events(run_dir) if e.get("attempt") == 7]


# -- under the supervisor -------------------------------------------------------------------------------


def test_three_sigkills_each_restart_warm_and_bit_exact(
    reference: Path, tmp_path: Path, procs: Started
) -> None:
    run_dir = seeded_run_dir(tmp_path / "run", reference)
    sup = procs.start(runner_cmd(run_dir, *JOB))
    killed = []
    for attempt, min_step in ((1, 7), (2, 18), (3, 29)):
        pid = stop_at(run_dir, attempt, min_step, sup)
        wait_ready_spare(run_dir, attempt, sup)  # the standby-ready count shows a warm spare
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
    p = finish(sup)
    assert p.returncode == 0, describe(p, run_dir=run_dir)

    att = spawned(run_dir)
    assert [(e["attempt"], e["warm"]) for e in att] == [(1, False), (2, True), (3, True), (4, True)]
    # Every worker and spare is a fork of the one server, which imported Paddle once.
    (server,) = events(run_dir, "fork-server-started")
    (ready,) = events(run_dir, "fork-server-ready")
    assert ready["pid"] == server["pid"] and ready["import_s"] > 0
    assert all(e["forked"] for e in att + events(run_dir, "standby-spawned"))
    spare_pids = spares(run_dir)
    assert len(spare_pids) in (3, 4)  # a 4th spare may have started warming during the last attempt
    assert [e["pid"] for e in att[1:]] == spare_pids[:3]  # each restart is the spare that was ready
    ready = {e["pid"] for e in events(run_dir, "standby-ready", source="standby")}
    assert set(spare_pids[:3]) <= ready
    started = {e["attempt"]: e for e in events(run_dir, "attempt-started", source="worker")}
    assert [started[n]["pid"] for n in (2, 3, 4)] == spare_pids[:3]
    exits = events(run_dir, "attempt-exited", source="supervisor")
    assert [(e["attempt"], e["pid"], e["exit_class"]) for e in exits] == [
        (1, killed[0], "killed"), (2, killed[1], "killed"), (3, killed[2], "killed"), (4, spare_pids[2], "completed")]
    assert events(run_dir, "standby-lost") == []
    # The spare's log became the attempt's.
    logs = run_dir / "logs"
    for n in (1, 2, 3):
        assert not (logs / f"standby-{n:03d}.log").exists()
        assert (logs / f"attempt-{n + 1:03d}.log").is_file()
        assert events(run_dir, "attempt-spawned", source="supervisor")[n]["log"] == f"logs/attempt-{n + 1:03d}.log"

    assert_bit_exact(run_dir, reference, STEPS)
    # The supervisor exited 0: no spare is left behind, the one warming for a 5th attempt included.
    assert_nothing_left(run_dir, *killed, *spare_pids)


@pytest.mark.parametrize("preload", [None, "none"], ids=["forked", "exec"])
def test_no_standby_restarts_cold_and_exact(reference: Path, tmp_path: Path, procs: Started,
                                            preload: str | None) -> None:
    run_dir = seeded_run_dir(tmp_path / "run", reference)
    _, pid = run_killing_the_first_worker(run_dir, procs, "--no-standby", *(("--preload", preload) if preload else ()))

    forked = preload is None
    assert [(e["attempt"], e["warm"], e["forked"]) for e in spawned(run_dir)] == [
        (1, False, forked), (2, False, forked)]
    assert len(events(run_dir, "fork-server-ready")) == int(forked)
    assert events(run_dir, "standby-spawned") == [] and events(run_dir, "standby-ready") == []
    assert not list((run_dir / "logs").glob("standby-*.log"))
    exits = events(run_dir, "attempt-exited", source="supervisor")
    assert [(e["attempt"], e["exit_class"]) for e in exits] == [(1, "killed"), (2, "completed")]
    assert_bit_exact(run_dir, reference, STEPS)
    assert_nothing_left(run_dir, pid)


def test_a_fork_server_that_cannot_import_is_replaced_by_exec(
    reference: Path, tmp_path: Path, procs: Started
) -> None:
    run_dir = seeded_run_dir(tmp_path / "run", reference)
    p, pid = run_killing_the_first_worker(run_dir, procs, "--preload", "model.train,no_such_module_here")

    (failed,) = events(run_dir, "fork-server-failed")
    assert "importing no_such_module_here: ModuleNotFoundError" in failed["error"]
    assert "no_such_module_here" in p.stdout + p.stderr  # said once, not hidden
    assert events(run_dir, "fork-server-ready") == []
    assert not [e for e in spawned(run_dir) + events(run_dir, "standby-spawned") if e["forked"]]
    exits = events(run_dir, "attempt-exited", source="supervisor")
    assert [(e["attempt"], e["exit_class"]) for e in exits][:1] == [(1, "killed")]
    assert exits[-1]["exit_class"] == "completed"
    assert_bit_exact(run_dir, reference, STEPS)
    assert_nothing_left(run_dir, pid)


def test_a_fork_server_killed_mid_run_takes_its_workers_and_exec_takes_over(
    reference: Path, tmp_path: Path, procs: Started
) -> None:
    run_dir = seeded_run_dir(tmp_path / "run", reference)
    sup = procs.start(runner_cmd(run_dir, *JOB))
    worker = stop_at(run_dir, 1, 7, sup)
    spare = wait_ready_spare(run_dir, 1, sup)
    (server,) = events(run_dir, "fork-server-started")
    os.kill(server["pid"], signal.SIGKILL)  # as the OOM killer would
    wait_gone(worker)  # both die with it
    wait_gone(spare)
    p = finish(sup)
    assert p.returncode == 0, describe(p, run_dir=run_dir)

    (failed,) = events(run_dir, "fork-server-failed")
    assert failed["error"] == "the fork server exited"
    exits = events(run_dir, "attempt-exited", source="supervisor")
    assert [(e["attempt"], e["exit_class"]) for e in exits] == [(1, "killed"), (2, "completed")]
    assert [(e["attempt"], e["forked"]) for e in spawned(run_dir)] == [(1, True), (2, False)]
    (lost,) = events(run_dir, "standby-lost")
    assert lost["pid"] == spare
    assert_bit_exact(run_dir, reference, STEPS)
    assert_nothing_left(run_dir, worker, spare)


def test_a_spare_that_died_is_replaced_by_a_cold_start(
    reference: Path, tmp_path: Path, procs: Started
) -> None:
    run_dir = seeded_run_dir(tmp_path / "run", reference)
    sup = procs.start(runner_cmd(run_dir, *JOB))
    worker = stop_at(run_dir, 1, 7, sup)
    spare = wait_ready_spare(run_dir, 1, sup)
    os.kill(spare, signal.SIGKILL)  # dies while it waits for its go line
    wait_gone(spare)
    os.kill(worker, signal.SIGKILL)
    p = finish(sup)
    assert p.returncode == 0, describe(p, run_dir=run_dir)

    (lost,) = events(run_dir, "standby-lost")
    assert lost["pid"] == spare and lost["returncode"] == -signal.SIGKILL
    att = spawned(run_dir)
    assert [(e["attempt"], e["warm"]) for e in att] == [(1, False), (2, False)]
    assert att[1]["pid"] != spare
    exits = events(run_dir, "attempt-exited", source="supervisor")
    assert [(e["attempt"], e["exit_class"]) for e in exits] == [(1, "killed"), (2, "completed")]
    assert_bit_exact(run_dir, reference, STEPS)
    assert_nothing_left(run_dir, worker, *spares(run_dir))


def test_supervisor_sigterm_leaves_no_spare_and_a_durable_checkpoint(
    reference: Path, tmp_path: Path, procs: Started
) -> None:
    run_dir = seeded_run_dir(tmp_path / "run", reference)
    sup = procs.start(runner_cmd(run_dir, *JOB))
    worker = stop_at(run_dir, 1, 7, sup)
    spare = wait_ready_spare(run_dir, 1, sup)
    sup.send_signal(signal.SIGTERM)  # forwards SIGTERM (and SIGCONT) to the stopped worker
    p = finish(sup)
    assert p.returncode == ExitCode.INTERRUPTED == 130, describe(p, run_dir=run_dir)
    assert_nothing_left(run_dir, worker, spare)

    (ex,) = events(run_dir, "attempt-exited", source="supervisor")
    assert (ex["pid"], ex["returncode"], ex["exit_class"]) == (worker, 75, "user-stopped")
    (pre,) = events(run_dir, "preempted", source="worker")
    saved = [e for e in events(run_dir, "checkpoint-saved") if e["attempt"] == 1]
    assert saved[-1]["step"] == pre["step"] and saved[-1]["asynchronous"] is False  # waited for, not queued
    latest = CheckpointStore(LocalStorage(run_dir)).load_latest()
    assert latest is not None and latest.name == checkpoint_name(pre["step"])
    assert [e["warm"] for e in spawned(run_dir)] == [False]  # the spare never got the run


# -- asynchronous checkpoints at the "auto" cadence --------------------------------------------------------


def test_auto_cadence_checkpoints_between_epoch_ends_and_resumes_exactly(reference: Path, tmp_path: Path) -> None:
    run_dir = seeded_run_dir(tmp_path / "run", reference)
    args = (*EPOCHS, "--checkpoint-every", "auto", "--mtbf", 5)
    crashed = run_job(run_dir, *args, arm={"kind": "crash", "step": 22})
    assert crashed.returncode == 1, describe(crashed)
    saved = [e for e in events(run_dir, "checkpoint-saved") if e["attempt"] == 1]
    assert saved, "no checkpoint before the crash"
    assert [e["step"] for e in saved if e["step"] % 15], "auto checkpointed only at epoch ends"
    assert all(e["asynchronous"] for e in saved)  # none of them was the last step or a preemption

    p = run_job(run_dir, *args)
    assert p.returncode == 0, describe(p)
    resumed = started_from(run_dir)
    assert resumed[0] == 0 and max(e["step"] for e in saved) <= resumed[1] <= 22
    steps = [e["step"] for e in events(run_dir, "checkpoint-saved")]
    assert [s for s in steps if s % 15], steps
    assert_bit_exact(run_dir, reference, STEPS)
