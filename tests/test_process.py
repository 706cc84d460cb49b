"""runner/process.py: the one place that starts workers and signals them, with real processes: exit
status and usage, SIGTERM then SIGKILL, a stopped worker continued so it can act on SIGTERM, a go line
through stdin, and signals that reach a descendant which left the process group."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from rundir.names import worker_env
from runner.process import Vitals, WorkerProcess, read_vitals
from tests.helpers.processes import gone, wait_for, wait_gone

PY = sys.executable
WAIT = 60.0


def started(tmp_path: Path, code: str, *, stdin_pipe: bool = False) -> WorkerProcess:
    return WorkerProcess.start([PY, "-c", code], env=worker_env({}), log_path=tmp_path / "logs" / "w.log",
                               stdin_pipe=stdin_pipe)


def log(tmp_path: Path) -> str:
    return (tmp_path / "logs" / "w.log").read_text()


def wait_said(tmp_path: Path, what: str) -> None:
    wait_for(lambda: what in log(tmp_path), timeout=WAIT, what=f"the worker to say {what!r}")


def test_an_exit_status_its_usage_and_its_output_in_the_log(tmp_path: Path) -> None:
    w = started(tmp_path, "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)")
    assert w.wait(WAIT) and w.poll()
    assert w.returncode == 3 and w.usage is not None and w.usage.peak_rss_mb > 0 and w.usage.cpu_s >= 0
    assert sorted(log(tmp_path).split()) == ["err", "out"]
    assert not w.forked and w.vitals() is None  # gone: nothing to read


TERM_SAVES = "import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *a: sys.exit(75))\n" \
             "print('ready', flush=True)\ntime.sleep(60)"
TERM_IGNORED = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\n" \
               "time.sleep(60)"


def test_stop_is_sigterm_and_a_worker_that_saves_exits_in_time(tmp_path: Path) -> None:
    w = started(tmp_path, TERM_SAVES)
    wait_said(tmp_path, "ready")
    assert w.stop(grace=WAIT) is True
    assert w.returncode == 75


def test_stop_ends_with_sigkill_after_the_grace(tmp_path: Path) -> None:
    w = started(tmp_path, TERM_IGNORED)
    wait_said(tmp_path, "ready")
    assert w.stop(grace=0.3) is False
    assert w.returncode == -signal.SIGKILL


def test_a_stopped_worker_is_continued_so_it_can_act_on_sigterm(tmp_path: Path) -> None:
    w = started(tmp_path, TERM_SAVES)
    wait_said(tmp_path, "ready")
    os.kill(w.pid, signal.SIGSTOP)
    wait_for(lambda: (v := w.vitals()) is not None and v.state == "stopped", timeout=WAIT, what="stopped")
    assert w.stop(grace=WAIT) is True and w.returncode == 75


def test_tell_writes_to_its_stdin(tmp_path: Path) -> None:
    w = started(tmp_path, "import sys; sys.exit(len(sys.stdin.readline()))", stdin_pipe=True)
    assert w.tell(b"go 12345\n")
    assert w.wait(WAIT) and w.returncode == 9
    assert not w.tell(b"again\n")  # gone: nothing to tell


def test_tell_without_a_pipe_is_false(tmp_path: Path) -> None:
    w = started(tmp_path, "import sys; sys.exit(0)")
    assert not w.tell(b"go\n")
    w.wait(WAIT)


ESCAPES = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
print(child.pid, flush=True)
time.sleep(60)
"""


def test_send_reaches_a_descendant_that_left_the_process_group(tmp_path: Path) -> None:
    w = started(tmp_path, ESCAPES)
    wait_for(lambda: log(tmp_path).strip().isdigit(), timeout=WAIT, what="the grandchild's pid")
    grandchild = int(log(tmp_path))
    try:
        w.send(signal.SIGKILL)
        assert w.wait(WAIT) and w.returncode == -signal.SIGKILL
        wait_gone(grandchild)
    finally:
        if not gone(grandchild):
            os.kill(grandchild, signal.SIGKILL)


def test_read_vitals_of_a_live_process_and_of_none() -> None:
    v = read_vitals(os.getpid())
    assert isinstance(v, Vitals) and v.cpu_s > 0 and v.state in ("running", "sleeping", "disk-sleep")
    assert read_vitals(2**22 + 12345) is None  # above pid_max: no such process


def test_a_worker_that_already_exited_stops_at_once(tmp_path: Path) -> None:
    w = started(tmp_path, "pass")
    assert w.wait(WAIT)
    assert w.stop(grace=WAIT) is True and w.returncode == 0
