"""The supervisor with real processes and real signals: ``python -m runner`` restarts a worker that was
SIGKILLed, preempted, hung or crash-looping, refuses bad input and a second supervisor, stops cleanly
on SIGTERM, and a rerun after the supervisor itself was SIGKILLed finishes the job bit-exactly.

One uninterrupted ``python -m model`` run of the same configuration is the reference for every trace;
the supervised runs reuse its prepared data. Every wait has a timeout."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from checkpoint.storage import LocalStorage
from checkpoint.store import CheckpointStore, checkpoint_name
from rundir.exitcodes import ExitCode
from rundir.lock import LOCK_FILE
from tests.helpers.processes import (
    Started,
    describe,
    finish,
    gone,
    job_cmd,
    processes_using,
    run,
    runner_cmd,
    seeded_run_dir,
    wait_for,
    wait_for_worker,
    wait_gone,
)
from tests.helpers.readers import assert_bit_exact, events, losses

pytestmark = pytest.mark.e2e

JOB = ("--epochs", 3, "--checkpoint-every-steps", 5)
STEPS = 45  # 3 epochs of 15 steps
# The hang timeout also covers the restarted worker's start-up, and a worker started cold writes no
# heartbeat while it imports Paddle (1.5-2.3 s here, more on a busy machine): with 2 s, the restart was
# itself killed as hung (seen before the warm spare existed; the spare hides it while it is ready in time).
# 4 s keeps the test valid for a cold restart too.
HANG_TIMEOUT = 4.0


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run of ``JOB`` without the supervisor: the trace every supervised run must equal."""
    ref = tmp_path_factory.mktemp("supervisor-reference") / "run"
    p = run(job_cmd(ref, *JOB))
    assert p.returncode == 0, describe(p)
    assert [r["step"] for r in losses(ref)] == list(range(STEPS))
    return ref


def run_dir_for(tmp_path: Path, reference: Path) -> Path:
    return seeded_run_dir(tmp_path / "run", reference)


def attempts_exited(run_dir: Path) -> list[dict]:
    return events(run_dir, "attempt-exited", source="supervisor")


def assert_nothing_left(run_dir: Path, *pids: int, timeout: float = 10.0) -> None:
    """``pids`` and every process naming ``run_dir`` (workers, a warm spare) are gone, or go within
    ``timeout`` (a process killed by PR_SET_PDEATHSIG takes a moment to exit). So is every worker the
    supervisor recorded starting."""
    for pid in (*pids, *spawned_pids(run_dir)):
        wait_gone(pid, timeout)
    deadline = time.monotonic() + timeout
    while (left := processes_using([run_dir])) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not left, f"processes left behind: {[(p.pid, p.info['cmdline']) for p in left]}"


def spawned_pids(run_dir: Path) -> list[int]:
    """Every worker the supervisor started: the attempts and any warm standby spares."""
    return [e["pid"] for e in events(run_dir, source="supervisor") if "pid" in e and e["event"].endswith("spawned")]


# -- the worker fails; the supervisor recovers --------------------------------------------------------


def test_worker_sigkilled_twice_resumes_bit_exact(tmp_path: Path, reference: Path, procs: Started) -> None:
    run_dir = run_dir_for(tmp_path, reference)
    sup = procs.start(runner_cmd(run_dir, *JOB))
    killed = []
    # Kill each attempt after it made progress past everything before it, off a checkpoint boundary.
    for attempt, min_step in ((1, 7), (2, 18)):
        pid = wait_for_worker(run_dir, attempt, min_step, sup)
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
    p = finish(sup)
    assert p.returncode == 0, describe(p, run_dir=run_dir)

    exits = attempts_exited(run_dir)
    assert [(e["attempt"], e["pid"], e["exit_class"], e["signal"]) for e in exits[:2]] == [
        (1, killed[0], "killed", "SIGKILL"), (2, killed[1], "killed", "SIGKILL")]
    assert [(e["attempt"], e["exit_class"]) for e in exits] == [(1, "killed"), (2, "killed"), (3, "completed")]
    assert all(e["made_progress"] for e in exits)
    assert [e["delay_s"] for e in events(run_dir, "restart")] == [0.0, 0.0]  # progress: no backoff
    resumed = [e["resumed_from_step"] for e in events(run_dir, "attempt-started", source="worker")]
    assert resumed[0] == 0 and 0 < resumed[1] < resumed[2] and all(r % 5 == 0 for r in resumed)
    assert Counter(r["attempt"] for r in losses(run_dir)).keys() == {1, 2, 3}
    assert_bit_exact(run_dir, reference, STEPS)
    assert "job completed after 3 attempt(s), 2 restart(s)" in p.stdout
    assert p.stderr == ""
    assert_nothing_left(run_dir, *killed)


def test_worker_sigterm_is_a_preemption_with_no_step_lost(tmp_path: Path, reference: Path,
                                                          procs: Started) -> None:
    run_dir = run_dir_for(tmp_path, reference)
    sup = procs.start(runner_cmd(run_dir, *JOB))
    pid = wait_for_worker(run_dir, 1, 7, sup)
    os.kill(pid, signal.SIGTERM)
    p = finish(sup)
    assert p.returncode == 0, describe(p, run_dir=run_dir)

    exits = attempts_exited(run_dir)
    assert [(e["attempt"], e["returncode"], e["exit_class"]) for e in exits] == [
        (1, 75, "preempted"), (2, 0, "completed")], describe(p, run_dir=run_dir)
    (pre,) = events(run_dir, "preempted", source="worker")
    saved = [e["step"] for e in events(run_dir, "checkpoint-saved") if e["attempt"] == 1]
    assert pre["attempt"] == 1 and saved[-1] == pre["step"] and pre["step"] > 7  # its state, saved on the way out
    (started2,) = [e for e in events(run_dir, "attempt-started") if e["attempt"] == 2]
    assert started2["resumed_from_step"] == pre["step"]
    # Zero steps lost or redone: every step is journalled exactly once.
    steps = [r["step"] for r in losses(run_dir)]
    assert steps == list(range(STEPS))
    assert max(r["step"] for r in losses(run_dir) if r["attempt"] == 1) == pre["step"] - 1
    assert [e["delay_s"] for e in events(run_dir, "restart")] == [0.0]
    assert_bit_exact(run_dir, reference, STEPS)
    assert "attempt 1 ended: preempted (exit 75)" in p.stdout
    assert_nothing_left(run_dir, pid)


def test_hung_worker_is_killed_and_restarted(tmp_path: Path, reference: Path, procs: Started) -> None:
    run_dir = run_dir_for(tmp_path, reference)
    sup = procs.start(runner_cmd(run_dir, *JOB, "--hang-timeout", HANG_TIMEOUT))
    pid = wait_for_worker(run_dir, 1, 7, sup)
    os.kill(pid, signal.SIGSTOP)
    p = finish(sup)
    assert p.returncode == 0, describe(p, run_dir=run_dir)

    (hang,) = events(run_dir, "hang-detected")
    assert (hang["attempt"], hang["pid"]) == (1, pid)
    assert HANG_TIMEOUT <= hang["silent_s"] < HANG_TIMEOUT + 5
    exits = attempts_exited(run_dir)
    assert [(e["attempt"], e["exit_class"], e["signal"]) for e in exits] == [
        (1, "hung", "SIGKILL"), (2, "completed", None)]
    assert_bit_exact(run_dir, reference, STEPS)
    assert "hung (stopped and silent for" in p.stdout and "killing the worker" in p.stdout
    assert_nothing_left(run_dir, pid)


def test_bad_input_is_not_retried(tmp_path: Path, procs: Started) -> None:
    run_dir = tmp_path / "run"
    missing = tmp_path / "missing.json.gz"
    p = finish(procs.start(runner_cmd(run_dir, "--epochs", 1, "--data", missing)))
    assert p.returncode == ExitCode.BAD_DATA == 65, describe(p, run_dir=run_dir)

    assert len(events(run_dir, "attempt-spawned")) == 1
    assert [(e["exit_class"], e["returncode"]) for e in attempts_exited(run_dir)] == [("bad-input", 65)]
    assert events(run_dir, "restart") == []
    worker_error = f"bad data {missing}: no such file"  # the worker's own error line, passed on once
    assert (p.stdout + p.stderr).count(worker_error) == 1, p.stdout + p.stderr
    (line,) = p.stderr.splitlines()
    assert line.startswith("error: the worker rejected its input (exit 65), not retrying: "), line
    assert worker_error in line
    assert_nothing_left(run_dir)


CRASH_LOOP_JOB = """\
    import os

    from runner.worker import Worker

    STEPS, BAD_STEP, FROM_ZERO = 10, 3, {from_zero}

    with Worker(os.environ["RUNNER_RUN_DIR"]) as w:
        ckpt = w.restore(total_steps=STEPS)
        start = 0 if ckpt is None or FROM_ZERO else ckpt.step
        for step in range(start, STEPS):
            if step == BAD_STEP:
                raise RuntimeError(f"deterministic bug in step {{step}}")
            w.report_step(step, loss=1.0 / (step + 1))
            w.save_checkpoint(step + 1, {{"x.bin": b"state %d" % step}}, {{"step": step + 1}})
        w.complete(steps=STEPS)
"""


@pytest.mark.parametrize(("from_zero", "preload"), [(False, None), (True, None), (False, "runner.worker")],
                         ids=["resumes-from-checkpoint", "restarts-from-zero", "forked-from-a-fork-server"])
def test_crash_loop_gives_up_naming_the_step(tmp_path: Path, procs: Started, from_zero: bool,
                                              preload: str | None) -> None:
    run_dir = tmp_path / "run"
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(CRASH_LOOP_JOB).format(from_zero=from_zero))
    flags = ("--preload", preload) if preload else ()
    p = finish(procs.start(runner_cmd(run_dir, "--crash-loop", 3, *flags, command=[sys.executable, script])))
    assert p.returncode == ExitCode.GAVE_UP == 70, describe(p, run_dir=run_dir)
    # A command of one's own is started with exec unless --preload says what to import first.
    assert {e["forked"] for e in events(run_dir, "attempt-spawned")} == {preload is not None}

    # Attempt 1 completes steps 0-2 (new: progress, so it does not count); attempts 2, 3 and 4 complete
    # nothing new, and the third of those in a row is the crash loop.
    exits = attempts_exited(run_dir)
    assert [(e["attempt"], e["exit_class"], e["made_progress"]) for e in exits] == [
        (1, "crashed", True), (2, "crashed", False), (3, "crashed", False), (4, "crashed", False)]
    assert [e["last_step"] for e in exits] == [2, *([2] * 3 if from_zero else [None] * 3)]
    delays = [e["delay_s"] for e in events(run_dir, "restart")]
    assert delays[0] == 0.0 and 0.5 <= delays[1] <= 0.75 and 1.0 <= delays[2] <= 1.5, delays
    reason = ("giving up: crash loop: 3 attempts in a row died without completing a new step; "
              "it keeps dying at step 3 (crashed); last error: RuntimeError: deterministic bug in step 3")
    assert p.stderr.splitlines() == [f"error: {reason}"]
    (gave_up,) = events(run_dir, "gave-up")
    assert gave_up["reason"] == reason
    assert sorted({r["step"] for r in losses(run_dir)}) == [0, 1, 2]
    assert_nothing_left(run_dir)


# -- one supervisor per run directory, and stopping it -------------------------------------------------


def test_second_supervisor_is_refused(tmp_path: Path, procs: Started) -> None:
    run_dir = (tmp_path / "run").resolve()
    # A worker that only sleeps (no Paddle): the first supervisor just has to be alive and hold the lock.
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)", str(run_dir)]
    first = procs.start(runner_cmd(run_dir, command=sleeper))
    wait_for(lambda: events(run_dir, "attempt-spawned"), timeout=30, proc=first, what="the first worker")
    # and its last record of its own start: where it watches for a preemption notice (found in the background)
    wait_for(lambda: events(run_dir, "notice-source-detected"), timeout=30, proc=first, what="notice detection")
    assert (run_dir / LOCK_FILE).read_text().strip() == str(first.pid)
    before = (run_dir / "events.jsonl").read_bytes()

    second = finish(procs.start(runner_cmd(run_dir, "--epochs", 1)), timeout=60)
    assert second.returncode == ExitCode.LOCKED == 69, describe(second, run_dir=run_dir)
    assert second.stderr.splitlines() == [f"error: run directory {run_dir} is in use by supervisor pid {first.pid}"]
    assert second.stdout == ""
    assert (run_dir / "events.jsonl").read_bytes() == before  # it touched nothing
    assert first.poll() is None

    (spawned,) = events(run_dir, "attempt-spawned")
    first.send_signal(signal.SIGTERM)
    p = finish(first, timeout=60)
    assert p.returncode == ExitCode.INTERRUPTED, describe(p, run_dir=run_dir)
    assert_nothing_left(run_dir, spawned["pid"])


def test_supervisor_sigterm_stops_worker_with_a_checkpoint(tmp_path: Path, reference: Path,
                                                           procs: Started) -> None:
    run_dir = run_dir_for(tmp_path, reference)
    sup = procs.start(runner_cmd(run_dir, *JOB))
    pid = wait_for_worker(run_dir, 1, 7, sup)
    sup.send_signal(signal.SIGTERM)
    p = finish(sup, timeout=60)
    assert p.returncode == ExitCode.INTERRUPTED == 130, describe(p, run_dir=run_dir)
    assert p.stderr.splitlines() == ["error: stopped by SIGTERM; rerun the same command to continue"]

    (req,) = events(run_dir, "stop-requested")
    assert (req["attempt"], req["signal"]) == (1, "SIGTERM")
    (ex,) = attempts_exited(run_dir)
    assert (ex["attempt"], ex["pid"], ex["returncode"], ex["exit_class"]) == (1, pid, 75, "user-stopped")
    (pre,) = events(run_dir, "preempted", source="worker")
    assert pre["step"] == ex["last_step"] + 1 > 7
    store = CheckpointStore(LocalStorage(run_dir))
    assert store.committed()[-1] == checkpoint_name(pre["step"])
    latest = store.load_latest()
    assert latest is not None and latest.step == pre["step"]  # and it verifies
    assert events(run_dir, "restart") == []
    (sup_exit,) = events(run_dir, "supervisor-exit")
    assert sup_exit["code"] == 130
    assert_nothing_left(run_dir, pid)


DIES_AT_START_JOB = """\
import os

from runner.worker import Worker

with Worker(os.environ["RUNNER_RUN_DIR"]) as w:
    w.restore(total_steps=10)
    raise RuntimeError("dies before its first step")
"""


def test_supervisor_sigterm_while_backing_off_starts_no_other_worker(tmp_path: Path, procs: Started) -> None:
    run_dir = tmp_path / "run"
    script = tmp_path / "job.py"
    script.write_text(DIES_AT_START_JOB)
    sup = procs.start(runner_cmd(run_dir, "--crash-loop", 10, command=[sys.executable, script]))
    # Backoff after 1, 2, 3 failures without progress: 0.5, 1 and 2 s (plus jitter). Stop it in the third.
    (restart,) = wait_for(lambda: [e for e in events(run_dir, "restart") if e["after_attempt"] == 3],
                          timeout=60, proc=sup, what="the third restart's backoff")
    assert restart["delay_s"] >= 2.0
    t0 = time.monotonic()
    sup.send_signal(signal.SIGTERM)
    p = finish(sup, timeout=60)
    waited = time.monotonic() - t0
    assert p.returncode == ExitCode.INTERRUPTED, describe(p, run_dir=run_dir)
    assert waited < restart["delay_s"] - 0.5, "the backoff was not interrupted"
    # No attempt 4: a worker started only to be stopped at once would be wasted (and must checkpoint).
    assert [e["attempt"] for e in events(run_dir, "attempt-spawned")] == [1, 2, 3]
    assert [e["exit_class"] for e in attempts_exited(run_dir)] == ["crashed"] * 3
    (stopped,) = events(run_dir, "stopped")
    assert stopped["reason"] == "stopped by SIGTERM; rerun the same command to continue"
    assert p.stderr.splitlines() == ["error: stopped by SIGTERM; rerun the same command to continue"]
    assert_nothing_left(run_dir)


def test_supervisor_sigkilled_takes_worker_down_and_rerun_continues(tmp_path: Path, reference: Path,
                                                                    procs: Started) -> None:
    run_dir = run_dir_for(tmp_path, reference)
    cmd = runner_cmd(run_dir, *JOB)
    sup = procs.start(cmd)
    pid = wait_for_worker(run_dir, 1, 7, sup)
    sup.kill()
    sup.communicate(timeout=30)
    assert sup.returncode == -signal.SIGKILL
    wait_gone(pid)  # PR_SET_PDEATHSIG: the worker died with it
    assert gone(pid)
    assert_nothing_left(run_dir)  # nor any other worker, the warm spare included
    assert attempts_exited(run_dir) == []  # nobody was left to record its end

    p = finish(procs.start(cmd))
    assert p.returncode == 0, describe(p, run_dir=run_dir)
    assert [e["attempt"] for e in events(run_dir, "attempt-spawned")] == [1, 2]
    started = {e["attempt"]: e["resumed_from_step"] for e in events(run_dir, "attempt-started", source="worker")}
    assert started[1] == 0 and started[2] >= 5 and started[2] % 5 == 0  # its newest checkpoint
    assert [(e["attempt"], e["exit_class"]) for e in attempts_exited(run_dir)] == [(2, "completed")]
    assert_bit_exact(run_dir, reference, STEPS)
    assert_nothing_left(run_dir)
