"""A gang as one worker (runner/gang.py). The pure parts as tables; the gang handle around a stand-in
for Paddle's launcher that starts real ranks under the real wrapper and, unlike Paddle's, never stops
them itself: whatever ends the gang early here is the handle's own doing."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.gang import GangLauncher, GangProcess, deliver, gang_command, gang_state, ranks_dir_for
from runner.process import WorkerProcess
from runner.rankexit import read_records
from tests.helpers import REPO
from tests.helpers.processes import wait_for, wait_gone

#: Starts ranks as Paddle's launcher does (own sessions, rank variables), each under the wrapper, and
#: waits for all of them, however long, then exits with the first non-zero code in rank order. A SIGTERM
#: it passes on to them.
LAUNCHER = """
import os, signal, subprocess, sys, time
d, n, codes = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
procs = [subprocess.Popen([sys.executable, "-m", "runner.rankexit", d, sys.executable, "-c", codes[r]],
                          env=dict(os.environ, PADDLE_TRAINER_ID=str(r), PADDLE_TRAINERS_NUM=str(n)),
                          start_new_session=True) for r in range(n)]
signal.signal(signal.SIGTERM, lambda *a: [os.killpg(p.pid, signal.SIGTERM) for p in procs if p.poll() is None])
while any(p.poll() is None for p in procs):
    time.sleep(0.05)
sys.exit(next((p.returncode for p in procs if p.returncode), 0))
"""
#: A rank's code says it is ready (its signal handler set) with a file named after its rank.
READY = "import os; open(os.path.join(os.environ['READY_DIR'], os.environ['PADDLE_TRAINER_ID']), 'w').close()\n"
SLEEP = READY + "import time; time.sleep(120)"
#: Exits 75 on SIGTERM, deaf to the copies that follow (as a real rank is once its state is saved).
STOPPABLE = ("import signal, sys, time\n"
             "def stop(*a):\n"
             "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
             "    sys.exit(75)\n"
             "signal.signal(signal.SIGTERM, stop)\n" + READY +
             "time.sleep(120)\n")
DEAF = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + READY + "time.sleep(120)\n"
SPIN = READY + "import time\nt = time.time()\nwhile time.time() - t < 120: pass\n"


@pytest.mark.parametrize(("states", "want"), [
    (["sleeping", "stopped"], "stopped"),  # one rank stopped: the rest wait for it in a collective
    (["running", "tracing-stop"], "tracing-stop"),
    (["sleeping", "disk-sleep", "running"], "disk-sleep"),
    (["sleeping", "running"], "running"),
    (["sleeping", "sleeping"], "sleeping"),
    (["zombie"], "zombie"),
    ([], None),
])
def test_the_gangs_state_is_its_most_telling_ranks(states: list[str], want: str | None) -> None:
    assert gang_state(states) == want


def test_each_rank_runs_the_command_under_the_wrapper_with_its_logs_beside_the_attempts(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "attempt-007.log"
    ranks = ranks_dir_for(log)
    assert ranks == tmp_path / "logs" / "attempt-007-ranks"
    cmd = gang_command(["python", "-m", "model", "--run-dir", "r"], 3, ranks)
    assert cmd[:8] == (sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "3", "--log_dir",
                       str(ranks), sys.executable)
    assert cmd[8:] == ("-m", "runner.rankexit", str(ranks), "python", "-m", "model", "--run-dir", "r")


@pytest.fixture
def gangs(tmp_path: Path) -> Iterator[list[GangProcess]]:
    started: list[GangProcess] = []
    yield started
    for g in started:
        g.kill()


def start(tmp_path: Path, gangs: list[GangProcess], *codes: str) -> GangProcess:
    log = tmp_path / "logs" / "attempt-001.log"
    ranks = ranks_dir_for(log)
    ready = tmp_path / "ready"
    ready.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO), READY_DIR=str(ready))
    proc = WorkerProcess.start([sys.executable, "-c", LAUNCHER, str(ranks), str(len(codes)), *codes], env=env,
                               log_path=log, cwd=REPO)
    g = GangProcess(proc, ranks, len(codes), log)
    gangs.append(g)
    return g


def wait_started(g: GangProcess) -> None:
    ready = g.log.parent.parent / "ready"
    wait_for(lambda: g.vitals() is not None and len(g.records) == g.size and len(list(ready.iterdir())) == g.size,
             timeout=60)


def test_a_failed_rank_ends_the_gang_at_once_and_the_gang_exits_as_it_did(tmp_path: Path,
                                                                          gangs: list[GangProcess]) -> None:
    g = start(tmp_path, gangs, SLEEP, "import time, sys; time.sleep(0.5); print('boom', flush=True); sys.exit(3)")
    t0 = time.monotonic()
    assert g.wait(60)
    assert time.monotonic() - t0 < 30  # the launcher would have waited 120 s for rank 0
    assert (g.returncode, g.failed_rank) == (3, 1)
    wait_gone(read_records(g.ranks_dir)[0].pid)  # the survivor, killed
    wait_gone(g.pid)
    assert "rank 1 of 2 failed first (exit 3)" in (tmp_path / "logs" / "attempt-001.log").read_text()


def test_a_rank_killed_from_outside_is_the_cause_not_the_survivor_killed_after_it(
        tmp_path: Path, gangs: list[GangProcess]) -> None:
    g = start(tmp_path, gangs, SLEEP, SLEEP, SLEEP)
    wait_started(g)
    os.kill(g.records[2].pid, signal.SIGKILL)
    assert g.wait(60)
    assert (g.returncode, g.failed_rank) == (-signal.SIGKILL, 2)
    for r in g.records.values():
        wait_gone(r.pid)


def test_a_gang_that_finishes_exits_as_its_launcher(tmp_path: Path, gangs: list[GangProcess]) -> None:
    g = start(tmp_path, gangs, "pass", "import time; time.sleep(0.3)")
    assert g.wait(60)
    assert (g.returncode, g.failed_rank) == (0, None)
    assert g.usage is not None


def test_a_stop_reaches_every_rank_and_an_orderly_exit_ends_nothing_early(tmp_path: Path,
                                                                         gangs: list[GangProcess]) -> None:
    g = start(tmp_path, gangs, STOPPABLE, STOPPABLE)
    wait_started(g)
    assert g.stop(grace=30)
    assert g.returncode == 75
    assert {r.returncode for r in read_records(g.ranks_dir).values()} == {75}


def test_a_stop_that_runs_out_of_grace_kills_the_gang(tmp_path: Path, gangs: list[GangProcess]) -> None:
    g = start(tmp_path, gangs, DEAF, SLEEP)
    wait_started(g)
    assert not g.stop(grace=0.5)
    assert g.returncode is not None
    for r in g.records.values():
        wait_gone(r.pid)


def test_vitals_sum_the_ranks_cpu_and_a_stopped_rank_stops_the_gang(tmp_path: Path,
                                                                     gangs: list[GangProcess]) -> None:
    g = start(tmp_path, gangs, SPIN, SLEEP)
    wait_started(g)
    first = g.vitals()
    wait_for(lambda: (v := g.vitals()) is not None and first is not None and v.cpu_s > first.cpu_s + 0.2,
             timeout=60)
    os.kill(g.records[1].pid, signal.SIGSTOP)
    wait_for(lambda: (v := g.vitals()) is not None and v.state == "stopped", timeout=30)
    g.kill()
    assert g.vitals() is None and g.returncode is not None


def test_a_gang_ended_as_hung_names_the_rank_that_was_stopped(tmp_path: Path, gangs: list[GangProcess]) -> None:
    """A hang of one rank (chaos's SIGSTOP to it): the watch judges the whole gang hung and kills it;
    every rank then dies of that SIGKILL, so the rank named is the one found stopped, not the first
    of them to be reaped."""
    g = start(tmp_path, gangs, SLEEP, SLEEP, SLEEP)
    wait_started(g)
    deliver(g, signal.SIGSTOP, 2)
    wait_for(lambda: (v := g.vitals()) is not None and v.state == "stopped", timeout=30)
    g.kill()
    assert (g.returncode, g.failed_rank) == (-signal.SIGKILL, 2)
    log = (tmp_path / "logs" / "attempt-001.log").read_text()
    assert "rank 2 of 3 was stopped (hung) when the gang was ended; its log: workerlog.2 in attempt-001-ranks" in log
    assert "failed first" not in log


def test_a_signal_aimed_at_one_rank_reaches_that_rank_alone(tmp_path: Path, gangs: list[GangProcess]) -> None:
    g = start(tmp_path, gangs, SLEEP, SLEEP)
    wait_started(g)
    deliver(g, signal.SIGKILL, 1)
    assert g.wait(60)
    assert (g.returncode, g.failed_rank) == (-signal.SIGKILL, 1)  # rank 1 died of it; rank 0 was killed after


class Plain:
    """A worker that is not a gang: a signal aimed at a rank reaches all of it."""

    def __init__(self) -> None:
        self.sent: list[int] = []

    def send(self, sig: int) -> None:
        self.sent.append(sig)


def test_a_signal_aimed_at_a_rank_of_a_single_process_reaches_the_process() -> None:
    w = Plain()
    deliver(w, signal.SIGTERM, 1)  # type: ignore[arg-type]
    deliver(w, signal.SIGKILL, None)  # type: ignore[arg-type]
    assert w.sent == [signal.SIGTERM, signal.SIGKILL]


def test_the_gang_launcher_starts_paddles_launcher(tmp_path: Path) -> None:
    """Only the command is checked here; the end-to-end tests run the real one."""
    launcher = GangLauncher(["true"], 2)
    launcher.open()
    launcher.close()
    assert launcher.nproc == 2 and launcher.cmd == ("true",)
