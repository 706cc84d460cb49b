"""Slow is not stuck, with real processes: a start-up slower than the hang timeout, and a step that
burns the CPU for longer than it, are left alone; a worker that goes silent and idle is still caught
(the CPU test is what makes the first two safe). No Paddle: a small job of its own on the worker API."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from rundir.exitcodes import ExitCode
from tests.helpers.processes import Started, describe, finish, runner_cmd
from tests.helpers.readers import events

pytestmark = pytest.mark.e2e

HANG_TIMEOUT = 1.5

JOB = """\
    import os
    import time

    def spin(seconds):  # busy on the CPU, silent: a slow import, a slow step on a starved core
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass

    spin({startup_s})  # before the worker API even exists: no heartbeat file yet
    from runner.worker import Worker

    STEPS = 4
    with Worker(os.environ["RUNNER_RUN_DIR"]) as w:
        ckpt = w.restore(total_steps=STEPS)
        for step in range(ckpt.step if ckpt else 0, STEPS):
            if step == 2:
                spin({busy_s})
                if not os.path.exists(os.environ["RUNNER_RUN_DIR"] + "/slept"):
                    open(os.environ["RUNNER_RUN_DIR"] + "/slept", "w").close()
                    time.sleep({idle_s})  # silent and idle: stuck
            w.report_step(step, loss=1.0 / (step + 1))
            w.save_checkpoint(step + 1, {{"x.bin": b"state %d" % step}}, {{"step": step + 1}})
        w.complete(steps=STEPS)
"""


@pytest.mark.parametrize(("startup_s", "busy_s", "idle_s", "hangs"), [
    (3.0, 0.0, 0.0, 0),  # start-up twice the hang timeout: slow, not stuck
    (0.0, 3.0, 0.0, 0),  # a step busy for twice the hang timeout: slow, not stuck
    (0.0, 0.0, 60.0, 1),  # a step silent and idle: stuck, killed and restarted once
], ids=["slow-start-up", "busy-step", "idle-step-is-a-hang"])
def test_slow_is_not_stuck(tmp_path: Path, procs: Started, startup_s: float, busy_s: float, idle_s: float,
                           hangs: int) -> None:
    run_dir = tmp_path / "run"
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(JOB).format(startup_s=startup_s, busy_s=busy_s, idle_s=idle_s))
    cmd = runner_cmd(run_dir, "--hang-timeout", HANG_TIMEOUT, "--startup-timeout", 30, "--no-standby",
                     command=[sys.executable, script])
    p = finish(procs.start(cmd))
    assert p.returncode == ExitCode.OK, describe(p, run_dir=run_dir)
    hung = events(run_dir, "hang-detected")
    assert len(hung) == hangs, describe(p, run_dir=run_dir)
    if hangs:
        assert hung[0]["reason"].startswith("no heartbeat, step or CPU progress for"), hung
