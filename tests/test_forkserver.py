"""The fork server with real processes: what a command becomes when forked, how its exit is reported,
and that workers die with the server. Which commands can be forked is a table.

The servers here preload a small module of the test's, not Paddle; the built-in job forked from a server
that preloaded Paddle is in tests/e2e/test_standby.py."""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from runner import forkserver
from runner.forkserver import ForkServer, ForkServerError, ForkTarget, environment, forkable, open_devices
from runner.process import WorkerProcess
from tests.helpers import REPO
from tests.helpers.processes import wait_gone

PY = sys.executable


@pytest.mark.parametrize(
    ("cmd", "expected"),
    [
        ([PY, "-m", "model", "--epochs", "2"], ForkTarget("module", "model", ("--epochs", "2"))),
        ([PY, "-m", "pkg.mod"], ForkTarget("module", "pkg.mod", ())),
        ([PY, "train.py", "-m", "x"], ForkTarget("path", "train.py", ("-m", "x"))),
        ([PY, "-u", "-m", "model"], None),  # interpreter options: exec
        ([PY, "-c", "print(1)"], None),
        ([PY, "-m"], None),
        ([PY], None),
        (["/bin/sh", "-c", "true"], None),  # another program
        (["no-such-program-here", "-m", "model"], None),
    ],
)
def test_which_commands_a_fork_can_run(cmd: list[str], expected: ForkTarget | None) -> None:
    assert forkable(cmd, PY) == expected


def test_a_link_to_the_interpreter_is_another_program(tmp_path: Path) -> None:
    # A virtual environment's python is such a link, and it sees other packages: exec it.
    (tmp_path / "bin").mkdir()
    link = tmp_path / "bin" / "python"
    link.symlink_to(os.path.realpath(PY))
    assert forkable([str(link), "-m", "m"], PY) is None
    assert forkable([str(link), "-m", "m"], str(link)) == ForkTarget("module", "m", ())


JOB = """\
import json, os, sys, time
cmd = sys.argv[1] if len(sys.argv) > 1 else "report"
if cmd == "report":
    line = sys.stdin.readline()
    print(json.dumps({"argv": sys.argv, "env": os.environ.get("JOB_VALUE"), "name": __name__,
                      "stdin": line, "sid": os.getsid(0), "pid": os.getpid(), "preloaded": "envsetter" in sys.modules,
                      "path0": sys.path[0], "set": os.environ.get("SET_ON_IMPORT"),
                      "unset": os.environ.get("UNSET_ON_IMPORT")}), flush=True)
    sys.exit(int(os.environ.get("JOB_EXIT", "0")))
if cmd == "sleep":
    print("sleeping", flush=True)
    time.sleep(60)
if cmd == "raise":
    raise ValueError("the job failed")
"""


# Preloaded: changes the environment on import, as Paddle does (it sets OMP_NUM_THREADS).
ENV_SETTER = """\
import os
os.environ.setdefault("SET_ON_IMPORT", "by-import")
os.environ.pop("UNSET_ON_IMPORT", None)
"""


@pytest.fixture
def job(tmp_path: Path) -> Path:
    path = tmp_path / "jobs" / "forkjob.py"
    path.parent.mkdir()
    path.write_text(JOB)
    (path.parent / "envsetter.py").write_text(ENV_SETTER)
    return path


@pytest.fixture
def server(tmp_path: Path, job: Path) -> Iterator[ForkServer]:
    env = dict(os.environ, PYTHONPATH=str(job.parent), UNSET_ON_IMPORT="x")
    env.pop("SET_ON_IMPORT", None)
    s = ForkServer(("envsetter",), env=env, log_path=tmp_path / "server.log")
    yield s
    s.close()


def start(server: ForkServer, target: ForkTarget, log: Path, *, stdin_pipe: bool = False,
          **env: str) -> WorkerProcess:
    return WorkerProcess.fork(server, target, env=dict(os.environ, **env), log_path=log, stdin_pipe=stdin_pipe)


def wait(proc: WorkerProcess, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while not proc.wait(0.2):
        assert time.monotonic() < deadline, f"worker {proc.pid} still running"
    assert proc.returncode is not None
    return proc.returncode


@pytest.mark.parametrize("kind", ["path", "module"])
def test_a_forked_worker_is_the_command_it_stands_for(server: ForkServer, job: Path, tmp_path: Path,
                                                       kind: str) -> None:
    target = ForkTarget(kind, str(job) if kind == "path" else "forkjob", ("report", "--flag"))
    log = tmp_path / "w.log"
    proc = start(server, target, log, stdin_pipe=True, JOB_VALUE="given", JOB_EXIT="7", UNSET_ON_IMPORT="x")
    assert proc.forked and psutil.Process(proc.pid).ppid() == server.pid
    assert proc.tell(b"the go line\n")
    assert wait(proc) == 7
    out = json.loads(log.read_text().splitlines()[-1])
    assert out["argv"][1:] == ["report", "--flag"] and out["argv"][0].endswith("forkjob.py")
    assert out["env"] == "given" and out["stdin"] == "the go line\n" and out["name"] == "__main__"
    assert out["sid"] == out["pid"] == proc.pid  # its own session, so its signals reach only it
    assert out["preloaded"]  # imported once, by the server
    # What the import did to the environment holds in the fork, as it would in an exec'd worker.
    assert out["set"] == "by-import" and out["unset"] is None
    if kind == "path":
        assert out["path0"] == str(job.parent)
    assert proc.usage is not None and proc.usage.cpu_s > 0 and proc.usage.peak_rss_mb > 1
    assert server.import_s is not None


@pytest.mark.parametrize(
    ("given", "changed", "want"),
    [
        ({"A": "1"}, {}, {"A": "1"}),
        ({"A": "1"}, {"OMP_NUM_THREADS": "1"}, {"A": "1", "OMP_NUM_THREADS": "1"}),
        ({"A": "1", "B": "2"}, {"B": None}, {"A": "1"}),
        ({"A": "1"}, {"A": "3", "C": None}, {"A": "3"}),
    ],
)
def test_a_forked_workers_environment(given: dict, changed: dict, want: dict) -> None:
    assert environment(given, changed) == want


@pytest.mark.parametrize(
    ("paths", "want"),
    [
        (["/dev/null", "pipe:[123]", "/tmp/x.log", "socket:[9]"], []),
        (["/dev/nvidiactl", "/dev/nvidia0", "/dev/nvidia-uvm", "/dev/null"],
         ["/dev/nvidia-uvm", "/dev/nvidia0", "/dev/nvidiactl"]),
        (["/dev/dri/renderD128", "/dev/kfd"], ["/dev/dri/renderD128", "/dev/kfd"]),
        (["/dev/accel/accel0", "/dev/davinci0", "/dev/davinci_manager"],
         ["/dev/accel/accel0", "/dev/davinci0", "/dev/davinci_manager"]),
        (["/home/dev/nvidia-notes.txt", "/dev/driver"], []),
    ],
)
def test_which_open_files_make_a_fork_unusable(paths: list[str], want: list[str]) -> None:
    assert open_devices(paths) == want


def test_a_server_whose_imports_opened_a_device_refuses_to_fork(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forkserver, "_open_files", lambda: ["/dev/null", "/dev/nvidiactl"])
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        assert forkserver._serve(theirs, ["json"]) == 1  # no fork: it returns, it does not serve
        kind, message = pickle.loads(ours.recv(1 << 16))
    assert kind == "failed"
    assert message == "importing json opened /dev/nvidiactl: a forked worker could not use the device"


def test_exits_are_reported_as_exec_would_give_them(server: ForkServer, job: Path, tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    raised = start(server, ForkTarget("path", str(job), ("raise",)), log)
    assert wait(raised) == 1
    assert "ValueError: the job failed" in log.read_text()
    sleeper = start(server, ForkTarget("path", str(job), ("sleep",)), tmp_path / "s.log")
    deadline = time.monotonic() + 30
    while "sleeping" not in (tmp_path / "s.log").read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    sleeper.send(signal.SIGTERM)
    assert wait(sleeper) == -signal.SIGTERM


def test_workers_die_with_the_server(server: ForkServer, job: Path, tmp_path: Path) -> None:
    procs = [start(server, ForkTarget("path", str(job), ("sleep",)), tmp_path / f"s{i}.log") for i in range(2)]
    server.proc.kill()
    for p in procs:
        wait_gone(p.pid)
        assert wait(p) == -signal.SIGKILL
    with pytest.raises(ForkServerError):
        start(server, ForkTarget("path", str(job), ("report",)), tmp_path / "late.log")


def test_closing_the_server_kills_what_it_still_runs(server: ForkServer, job: Path, tmp_path: Path) -> None:
    p = start(server, ForkTarget("path", str(job), ("sleep",)), tmp_path / "s.log")
    server.close()
    wait_gone(p.pid)
    assert server.proc.returncode == 0


def test_a_failed_preload_is_reported_not_hidden(tmp_path: Path, job: Path) -> None:
    s = ForkServer(("no_such_module_here",), env=dict(os.environ), log_path=tmp_path / "server.log")
    try:
        with pytest.raises(ForkServerError, match="importing no_such_module_here: ModuleNotFoundError"):
            start(s, ForkTarget("path", str(job), ("report",)), tmp_path / "w.log")
        assert not s.alive
    finally:
        s.close()


def test_a_server_stuck_in_its_imports_is_given_up_on(tmp_path: Path, job: Path) -> None:
    (job.parent / "stuck.py").write_text("import time\ntime.sleep(600)\n")
    s = ForkServer(("stuck",), env=dict(os.environ, PYTHONPATH=str(job.parent)), log_path=tmp_path / "server.log")
    try:
        with pytest.raises(ForkServerError, match="the fork server did not answer in 1 s"):
            s.spawn(ForkTarget("path", str(job), ()), dict(os.environ), stdin=0, log=1, timeout=1.0)
        assert not s.alive
    finally:
        s.close(timeout=0.5)
    assert s.proc.returncode == -signal.SIGKILL  # it did not stop on its own; close() killed it


def test_workers_forked_in_turn_each_report_their_own_exit(server: ForkServer, job: Path, tmp_path: Path) -> None:
    procs = [start(server, ForkTarget("path", str(job), ("report",)), tmp_path / f"w{i}.log", JOB_EXIT=str(i))
             for i in range(4)]
    assert [wait(p) for p in reversed(procs)] == [3, 2, 1, 0]


def test_a_bad_preload_flag_exits_2_with_one_line(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    p = subprocess.run([PY, "-m", "runner", "--run-dir", str(run_dir), "--preload", "model train"], cwd=REPO,
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.splitlines() == [
        "error: argument --preload: not a module name: 'model train' (see python -m runner --help)"]
    assert not run_dir.exists()
