"""chaos/pool.py with stand-in trial processes (``sh -c 'sleep ...'``, a Python that holds memory): K run at
once and no more, a process's peak memory is measured over its whole tree, the budget stops what runs
(SIGTERM, then SIGKILL for a tree that ignores it) and says it stopped them, and nothing is left running
after a Ctrl-C. The queue hands out replays before fresh trials, made only when about to start."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import psutil
import pytest

from chaos.pool import Done, Pool, Task, TaskQueue, drive
from tests.helpers.processes import gone, wait_for


def sh(tmp: Path, name: str, script: str) -> Task:
    return Task(name, ("sh", "-c", script), tmp / f"{name}.log")


class CountingPool(Pool):
    """A pool that remembers the most processes it ran at once."""

    most = 0

    def start(self, task: Task) -> None:
        super().start(task)
        self.most = max(self.most, self.running)


def run_all(tasks: list[Task], *, jobs: int, deadline: float | None = None,
            pool: Pool | None = None) -> tuple[list[Done], Pool]:
    pool = pool or CountingPool(stop_grace=2.0)
    done: list[Done] = []
    queue = TaskQueue(lambda i: tasks[i - 1], len(tasks))
    drive(queue, pool, jobs=lambda: jobs, on_done=done.append, deadline=deadline, interval=0.02)
    return done, pool


@pytest.mark.parametrize("jobs", [1, 2, 3])
def test_k_trials_run_at_once_and_no_more(tmp_path: Path, jobs: int) -> None:
    tasks = [sh(tmp_path, f"t{i}", f"sleep 0.3; exit {i}") for i in range(4)]
    done, pool = run_all(tasks, jobs=jobs)
    assert isinstance(pool, CountingPool) and pool.most == jobs
    assert sorted((d.task.name, d.returncode, d.stopped) for d in done) == [
        (f"t{i}", i, False) for i in range(4)]
    assert all(d.wall_s >= 0.25 for d in done)


def test_the_output_goes_to_the_log(tmp_path: Path) -> None:
    run_all([sh(tmp_path, "t", "echo out; echo err >&2")], jobs=1)
    assert (tmp_path / "t.log").read_text().split() == ["out", "err"]


def test_the_peak_memory_of_the_whole_tree_is_measured(tmp_path: Path) -> None:
    hold = f"{sys.executable} -c 'x = bytearray(80 << 20); import time; time.sleep(1.5)'"
    (d,) = run_all([sh(tmp_path, "mem", f"{hold} & {hold}; wait")], jobs=1)[0]  # two children, 80 MiB each
    assert d.peak_rss > 160 << 20


def test_the_budget_stops_what_runs_and_says_so(tmp_path: Path) -> None:
    t0 = time.monotonic()
    done, _ = run_all([sh(tmp_path, f"t{i}", "sleep 30") for i in range(3)], jobs=2, deadline=t0 + 0.8)
    assert sorted((d.task.name, d.stopped) for d in done) == [("t0", True), ("t1", True)]  # t2 never started
    assert time.monotonic() - t0 < 6


def test_a_tree_that_ignores_sigterm_is_killed(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    task = sh(tmp_path, "stubborn", f"trap '' TERM; sleep 60 & echo $$ $! > {pids}; wait; wait")
    pool = Pool(stop_grace=0.5)
    pool.start(task)
    wait_for(lambda: pids.is_file() and len(pids.read_text().split()) == 2, timeout=10)
    time.sleep(0.1)  # the shell is waiting now
    (d,) = pool.stop_all()
    assert d.stopped and pool.running == 0
    for pid in map(int, pids.read_text().split()):
        wait_for(lambda pid=pid: gone(pid), timeout=5, what=f"pid {pid} to be gone")


def test_nothing_is_left_running_after_a_ctrl_c(tmp_path: Path) -> None:
    pool = Pool(stop_grace=1.0)
    started: list[int] = []

    def interrupt(d: Done) -> None:
        raise KeyboardInterrupt

    tasks = [sh(tmp_path, "quick", "exit 0"), sh(tmp_path, "slow", "sleep 30")]
    real_start = pool.start

    def start(task: Task) -> None:
        real_start(task)
        started.extend(p.pid for p in psutil.Process().children())

    pool.start = start  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        drive(TaskQueue(lambda i: tasks[i - 1], 2), pool, jobs=lambda: 2, on_done=interrupt, deadline=None,
              interval=0.02)
    assert pool.running == 0
    for pid in started:
        wait_for(lambda pid=pid: gone(pid), timeout=5, what=f"pid {pid} to be gone")


def test_the_queue_hands_out_replays_first_and_makes_trials_on_demand() -> None:
    made: list[int] = []

    def make(i: int) -> Task:
        made.append(i)
        return Task(f"trial-{i}", (), Path("log"))

    q = TaskQueue(make, 3)
    assert len(q) == 3 and made == []
    assert q.pop().name == "trial-1" and made == [1]
    q.push_front(Task("trial-1-replay", (), Path("log")))
    assert len(q) == 3
    assert [q.pop().name for _ in range(3)] == ["trial-1-replay", "trial-2", "trial-3"]
    assert len(q) == 0 and q.made == 3
    with pytest.raises(IndexError):
        q.pop()
