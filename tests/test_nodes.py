"""One job on several machines (runner/nodes.py): the generation's pure parts as tables, and a node's
gang handle around the stand-in launcher of tests/test_gang.py, with a dictionary for etcd."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.etcd import Entry, EtcdError
from runner.gang import ranks_dir_for
from runner.nodes import (
    Generation,
    NodeGangLauncher,
    NodeGangProcess,
    NodeSpec,
    describe_after,
    failed_elsewhere,
    launch_args,
    moved_on,
    next_generation,
    parse_generation,
)
from runner.process import WorkerProcess
from tests.helpers import REPO
from tests.helpers.processes import wait_gone
from tests.test_gang import LAUNCHER, SLEEP, STOPPABLE, wait_started

SPEC = NodeSpec(nnodes=2, node_rank=1, master="10.0.0.1:6170", etcd="http://10.0.0.1:2379")
#: The stand-in launcher as node 1 of 2 runs it: its ranks are the job's ranks 2 and 3.
NODE_LAUNCHER = LAUNCHER.replace("PADDLE_TRAINER_ID=str(r)", "PADDLE_TRAINER_ID=str(r + 2)")
assert NODE_LAUNCHER != LAUNCHER


class FakeKV:
    """etcd's compare-and-swap over a dictionary; ``down``: every call fails as an unreachable etcd's."""

    def __init__(self) -> None:
        self.data: dict[str, Entry] = {}
        self.revision = 0
        self.down = False

    def get(self, key: str) -> Entry | None:
        if self.down:
            raise EtcdError("etcd at test: connection refused")
        return self.data.get(key)

    def swap(self, key: str, value: str, expected: int) -> bool:
        if self.down:
            raise EtcdError("etcd at test: connection refused")
        have = self.data.get(key)
        if (have.mod_revision if have else 0) != expected:
            return False
        self.revision += 1
        self.data[key] = Entry(value, self.revision)
        return True

    def generation(self) -> Generation:
        return parse_generation(self.data.get(SPEC.key))


@pytest.mark.parametrize(("entry", "want"), [
    (None, Generation()),
    (Entry('{"generation": 3}', 7), Generation(3, 7)),
    (Entry('{"generation": 4, "after": {"node": 1, "rank": 1, "returncode": -9}}', 9),
     Generation(4, 9, {"node": 1, "rank": 1, "returncode": -9})),
    (Entry("not json", 5), Generation(0, 5)),  # damaged: written over by the next failure
    (Entry('{"after": 1}', 5), Generation(0, 5)),
])
def test_the_generation_is_read_from_its_entry(entry: Entry | None, want: Generation) -> None:
    assert parse_generation(entry) == want


def test_the_next_generation_says_what_ended_this_one() -> None:
    raw = json.loads(next_generation(Generation(3, 7), node=1, rank=2, returncode=-9))
    assert raw["generation"] == 4 and {k: raw["after"][k] for k in ("node", "rank", "returncode")} == \
        {"node": 1, "rank": 2, "returncode": -9}


@pytest.mark.parametrize(("mine", "now", "want"), [
    (Generation(3, 7), Generation(3, 7), False),
    (Generation(3, 7), Generation(4, 9), True),
    (Generation(0, 0), Generation(1, 2), True),
])
def test_an_attempt_is_over_once_the_generation_moves_on(mine: Generation, now: Generation, want: bool) -> None:
    assert moved_on(mine, now) is want


@pytest.mark.parametrize(("after", "want"), [
    ({"node": 1, "returncode": -signal.SIGKILL}, True),
    ({"node": 1, "returncode": 1}, True),
    ({"node": 1, "returncode": 78}, True),
    ({}, True),  # nobody said why: treated as a failure (the ranks here could only hang)
    ({"node": 1, "returncode": 75}, False),  # a stop: every rank stops at the same step by itself
    ({"node": 1, "returncode": -signal.SIGTERM}, False),
])
def test_only_a_failure_elsewhere_kills_this_nodes_ranks(after: dict[str, object], want: bool) -> None:
    assert failed_elsewhere(after) is want


def test_the_launcher_joins_the_master_as_this_node_in_this_generation() -> None:
    assert launch_args(SPEC, Generation(5, 11)) == (
        "--nnodes", "2", "--rank", "1", "--master", "10.0.0.1:6170", "--job_id", "generation-5")
    assert SPEC.key == "/preempt-runner/10.0.0.1:6170/generation"


@pytest.mark.parametrize(("after", "want"), [
    ({"node": 1, "rank": 3, "returncode": -9}, "rank 3 on node 1 (killed by SIGKILL)"),
    ({"node": 0, "rank": None, "returncode": 75}, "node 0 (exit 75)"),
])
def test_what_ended_a_generation_reads_as_a_line(after: dict[str, object], want: str) -> None:
    assert describe_after(after) == want


@pytest.fixture
def gangs() -> Iterator[list[NodeGangProcess]]:
    started: list[NodeGangProcess] = []
    yield started
    for g in started:
        g.kill()


def start(tmp_path: Path, gangs: list[NodeGangProcess], kv: FakeKV, *codes: str) -> NodeGangProcess:
    log = tmp_path / "logs" / "attempt-001.log"
    ranks = ranks_dir_for(log)
    ready = tmp_path / "ready"
    ready.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO), READY_DIR=str(ready))
    proc = WorkerProcess.start([sys.executable, "-c", NODE_LAUNCHER, str(ranks), str(len(codes)), *codes], env=env,
                               log_path=log, cwd=REPO)
    g = NodeGangProcess(proc, ranks, len(codes), log, spec=SPEC, kv=kv, generation=kv.generation())
    gangs.append(g)
    return g


def test_a_failure_elsewhere_ends_this_nodes_gang_at_once_with_that_failures_exit(
        tmp_path: Path, gangs: list[NodeGangProcess]) -> None:
    kv = FakeKV()
    g = start(tmp_path, gangs, kv, SLEEP, SLEEP)
    wait_started(g)
    assert not g.wait(0.3)
    assert kv.swap(SPEC.key, next_generation(Generation(), 0, 0, -signal.SIGKILL), 0)  # node 0's rank 0 died
    t0 = time.monotonic()
    assert g.wait(30)
    assert time.monotonic() - t0 < 5  # not the 120 s the ranks would sleep, nor gloo's timeout
    assert g.returncode == -signal.SIGKILL and g.elsewhere is not None and g.elsewhere["node"] == 0
    for r in g.records.values():
        wait_gone(r.pid)
    assert kv.generation().number == 1  # this node did not move it on again
    assert "the job failed on another node: rank 0 on node 0 (killed by SIGKILL)" in g.log.read_text()


def test_a_gang_blind_to_the_generation_would_run_on(tmp_path: Path, gangs: list[NodeGangProcess],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above bites: a node that never reads the generation keeps its ranks (here, asleep;
    in a real job, hung in a collective)."""
    monkeypatch.setattr(NodeGangProcess, "_check_generation", lambda self: None)
    kv = FakeKV()
    g = start(tmp_path, gangs, kv, SLEEP, SLEEP)
    wait_started(g)
    kv.swap(SPEC.key, next_generation(Generation(), 0, 0, -signal.SIGKILL), 0)
    assert not g.wait(1.0)


def test_a_failure_here_moves_the_generation_on_and_says_which_rank(tmp_path: Path,
                                                                      gangs: list[NodeGangProcess]) -> None:
    kv = FakeKV()
    g = start(tmp_path, gangs, kv, SLEEP, SLEEP)
    wait_started(g)
    os.kill(g.records[3].pid, signal.SIGKILL)
    assert g.wait(30)
    assert g.returncode == -signal.SIGKILL and g.elsewhere is None
    gen = kv.generation()
    assert gen.number == 1 and gen.after is not None
    assert (gen.after["node"], gen.after["rank"], gen.after["returncode"]) == (1, 3, -signal.SIGKILL)
    # of the job's 4 ranks; its log is named by its place on this node, as Paddle's launcher names it
    assert "rank 3 of 4 failed first (killed by SIGKILL); its log: workerlog.1 in attempt-001-ranks" in \
        g.log.read_text()


def test_a_failure_here_after_one_elsewhere_takes_the_first_ones_exit(tmp_path: Path,
                                                                      gangs: list[NodeGangProcess]) -> None:
    """Both nodes saw the job fail (here a rank dies of SIGUSR1, as one would of a collective's error
    once its peer is gone): the node that wrote first is the cause; this one's attempt ends with
    that failure's exit."""
    kv = FakeKV()
    g = start(tmp_path, gangs, kv, SLEEP, SLEEP)
    wait_started(g)
    g._next_poll = time.monotonic() + 3600  # this node has not read the generation since
    kv.swap(SPEC.key, next_generation(Generation(), 0, 0, -signal.SIGKILL), 0)
    os.kill(g.records[2].pid, signal.SIGUSR1)  # a failure of this node's own, seen after the other
    assert g.wait(30)
    assert g.returncode == -signal.SIGKILL and g.elsewhere is not None and g.elsewhere["node"] == 0
    assert kv.generation().number == 1
    assert "the job failed on another node: rank 0 on node 0 (killed by SIGKILL); this node's ranks failed after it" \
        in g.log.read_text()


def test_a_gang_that_completes_leaves_the_generation_alone(tmp_path: Path, gangs: list[NodeGangProcess]) -> None:
    kv = FakeKV()
    g = start(tmp_path, gangs, kv, "pass", "pass")
    assert g.wait(30)
    assert g.returncode == 0 and kv.generation() == Generation()


def test_a_stopped_gang_moves_the_generation_on_so_the_other_nodes_start_the_next(
        tmp_path: Path, gangs: list[NodeGangProcess]) -> None:
    kv = FakeKV()
    g = start(tmp_path, gangs, kv, STOPPABLE, STOPPABLE)
    wait_started(g)
    assert g.stop(grace=30)
    assert g.returncode == 75 and kv.generation().number == 1


def test_a_stop_elsewhere_lets_this_nodes_ranks_stop_by_themselves(tmp_path: Path,
                                                                    gangs: list[NodeGangProcess]) -> None:
    """The other node stopped (its ranks exited 75 after the barrier every rank joins): this node's
    ranks are stopping at that step too, and are not killed while they finish."""
    kv = FakeKV()
    g = start(tmp_path, gangs, kv, STOPPABLE, STOPPABLE)
    wait_started(g)
    kv.swap(SPEC.key, next_generation(Generation(), 0, 0, 75), 0)
    assert not g.wait(1.0)  # still running: nothing killed them
    assert "the job is stopping on another node: rank 0 on node 0 (exit 75)" in g.log.read_text()
    for r in g.records.values():
        os.kill(r.pid, signal.SIGTERM)  # as the step's collective would tell them
    assert g.wait(30)
    assert g.returncode == 75 and kv.generation().number == 1


def test_without_etcd_the_gang_still_runs_and_ends_and_the_log_says_why_nobody_was_told(
        tmp_path: Path, gangs: list[NodeGangProcess]) -> None:
    kv = FakeKV()
    g = start(tmp_path, gangs, kv, SLEEP, "import sys; sys.exit(3)")
    kv.down = True
    assert g.wait(30)
    assert g.returncode == 3
    text = g.log.read_text()
    assert "cannot tell the other nodes that the job failed here" in text


def test_the_node_launcher_starts_paddles_launcher_as_this_node_in_the_current_generation(tmp_path: Path) -> None:
    kv = FakeKV()
    kv.swap(SPEC.key, json.dumps({"generation": 6}), 0)
    launcher = NodeGangLauncher(["true"], 2, SPEC, kv)
    log = tmp_path / "logs" / "attempt-001.log"
    log.parent.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    g = launcher.start({**env, "PADDLE_NOT_A_REAL_VAR": "1"}, log)
    try:
        assert isinstance(g, NodeGangProcess) and g.generation.number == 6
        cmd = psutil_cmdline(g.pid)
        i = cmd.index("--nnodes")
        assert cmd[i:i + 8] == ["--nnodes", "2", "--rank", "1", "--master", "10.0.0.1:6170", "--job_id",
                                "generation-6"]
    finally:
        g.kill()


def psutil_cmdline(pid: int) -> list[str]:
    import psutil

    return psutil.Process(pid).cmdline()
