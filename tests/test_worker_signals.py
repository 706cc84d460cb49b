"""A preemption notice during a worker's start-up: SIGTERM waits, blocked, until ``Worker.restore()``
takes it, so a framework that installs a handler of its own while it is imported (Paddle's aborts
the process) never sees it, and the job exits 75 like one preempted while training. Each case runs in
a child process, its signals its own; a worker that does not hold the signals must fail the case."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A job whose "framework import" puts in a handler of its own (here the default one: the process ends),
# with a SIGTERM arriving meanwhile. As the built-in job does, it blocks the signals first thing, before
# a thread is started (NumPy, imported with the worker API, starts one) that would take them.
JOB = textwrap.dedent("""
    import os, signal, sys, threading, time
    if sys.argv[2] != "no-block-first":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()  # as NumPy's BLAS starts one
    from runner.worker import Worker
    from runner.worker.api import Worker as W
    if sys.argv[2] == "no-unblock":
        W._hold_signals = lambda self, hold: None  # restore() that never lets the signal in
    with Worker(sys.argv[1]) as w:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the framework's own handler, as Paddle's import does
        os.kill(os.getpid(), signal.SIGTERM)
        w.restore()
        print("preemption requested:", w.preemption_requested, flush=True)
        sys.exit(75 if w.preemption_requested else 0)
""")


def run_job(tmp_path: Path, variant: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", JOB, str(tmp_path / "run"), variant], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def test_a_sigterm_during_start_up_waits_for_restore_and_asks_for_a_preemption(tmp_path: Path) -> None:
    p = run_job(tmp_path, "sound")
    assert p.returncode == 75, p.stdout + p.stderr
    assert "preemption requested: True" in p.stdout


@pytest.mark.parametrize(("variant", "returncode"), [
    ("no-unblock", 0),  # the signal stays pending: the notice is never heard
    ("no-block-first", -15),  # NumPy's thread takes it, and the framework's handler ends the process
])
def test_without_the_hold_the_notice_is_lost_or_kills(tmp_path: Path, variant: str, returncode: int) -> None:
    p = run_job(tmp_path, variant)
    assert p.returncode == returncode, p.stdout + p.stderr


def test_signals_are_let_in_when_a_job_ends_before_restore(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        import signal, sys
        from runner.worker import Worker
        with Worker(sys.argv[1]) as w:
            assert signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, [])
        assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
        print("unblocked")
    """)
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], cwd=REPO, capture_output=True, text=True,
                       timeout=60, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0 and "unblocked" in p.stdout, p.stdout + p.stderr
