"""One job on two "machines" on localhost: two real supervisors, each one node (``--nnodes 2
--node-rank R --master 127.0.0.1:PORT --etcd URL``) with a run directory of its own, one rank each,
etcd started by the tests (Debian's ``etcd-server``; skipped where it is missing).

- a rank SIGKILLed on node 1, then another on node 0: each time both supervisors restart the whole
  job from the same checkpoint, and node 0's run equals, bit for bit, an uninterrupted two-rank run
  on one machine (the same job: two ranks are two ranks, wherever they run);
- a supervisor SIGTERMed (its machine preempted): both nodes checkpoint at the same step, the other
  node waits for it, and the job goes on when the same command runs again; when the nodes then
  hold different newest checkpoints, they agree on the newest one both committed and
  finish bit-exactly, and with the agreement broken on purpose (``--break-resume node-step``) they
  refuse to train (exit 78) instead of training on from different states.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from checkpoint.store import checkpoint_name
from rundir.exitcodes import ExitCode
from runner.rankexit import read_records
from tests.etcd_server import free_port
from tests.helpers.processes import Started, describe, finish, run, runner_cmd, seeded_run_dir, wait_for
from tests.helpers.readers import assert_bit_exact, events, final, losses

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

JOB = ("--epochs", 2, "--checkpoint-every-steps", 4, "--dropout", 0.1, "--jitter", 0.02)
STEPS = 30
TIMEOUT = 300.0


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted two-rank run of ``JOB`` on one machine."""
    ref = tmp_path_factory.mktemp("nodes-reference") / "run"
    p = run(runner_cmd(ref, *JOB, "--nproc-per-node", 2), timeout=TIMEOUT)
    assert p.returncode == 0, describe(p, run_dir=ref)
    return ref


@pytest.fixture(scope="module")
def reference4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted four-rank run of ``JOB`` on one machine."""
    ref = tmp_path_factory.mktemp("nodes-reference4") / "run"
    p = run(runner_cmd(ref, *JOB, "--nproc-per-node", 4), timeout=TIMEOUT)
    assert p.returncode == 0, describe(p, run_dir=ref)
    return ref


class Nodes:
    """Two nodes' run directories and the command that starts each one's supervisor."""

    def __init__(self, tmp: Path, reference: Path, etcd_url: str, per_node: int = 1) -> None:
        self.dirs = [seeded_run_dir(tmp / f"node{r}", reference) for r in range(2)]
        self.master = f"127.0.0.1:{free_port()}"
        self.etcd = etcd_url
        self.per_node = per_node

    def cmd(self, node: int, *extra: object) -> list[str]:
        return runner_cmd(self.dirs[node], *JOB, "--nproc-per-node", self.per_node, "--nnodes", 2, "--node-rank",
                          node, "--master", self.master, "--etcd", self.etcd, *extra)

    def start(self, procs: Started, *extra: object) -> list[subprocess.Popen[str]]:
        return [procs.start(self.cmd(n, *extra)) for n in range(2)]

    def finish(self, started: list[subprocess.Popen[str]]) -> list[subprocess.CompletedProcess[str]]:
        return [finish(p, TIMEOUT) for p in started]


def ranks_of(run_dir: Path, attempt: int) -> Path:
    return run_dir / "logs" / f"attempt-{attempt:03d}-ranks"


def reached(run_dir: Path, step: int, attempt: int | None = None) -> bool:
    return any(r["step"] >= step and attempt in (None, r["attempt"]) for r in losses(run_dir))


def kill_rank(nodes: Nodes, node: int, attempt: int, at: int, proc: subprocess.Popen[str], local: int = 0) -> None:
    """SIGKILL node ``node``'s rank ``local`` (of its own) in ``attempt`` once that attempt journaled step ``at``."""
    d, n = nodes.dirs[node], nodes.per_node
    wait_for(lambda: len(read_records(ranks_of(d, attempt))) == n and reached(d, at, attempt), timeout=TIMEOUT,
             proc=proc, what=f"node {node}, attempt {attempt}, step {at}", interval=0.005)
    ranks = read_records(ranks_of(d, attempt))
    assert sorted(ranks) == list(range(node * n, node * n + n))  # global ranks, node by node
    os.kill(ranks[node * n + local].pid, signal.SIGKILL)


def verify(run_dir: Path, reference: Path) -> None:
    p = run([sys.executable, "-m", "runner", "verify", str(run_dir), str(reference)], timeout=120)
    assert p.returncode == 0 and "PASS" in p.stdout, describe(p)


def test_a_rank_killed_on_either_node_restarts_the_job_on_both_and_it_ends_bit_exact(
        reference: Path, tmp_path: Path, procs: Started, etcd_url: str) -> None:
    nodes = Nodes(tmp_path, reference, etcd_url)
    started = nodes.start(procs)
    first = random.Random().randrange(2, 12)
    kill_rank(nodes, 1, 1, first, started[1])  # rank 1, on node 1
    second = random.Random().randrange(first + 2, STEPS - 4)
    kill_rank(nodes, 0, 2, second, started[0])  # rank 0, on node 0: the job's journal and verdict
    for node, p in enumerate(nodes.finish(started)):
        assert p.returncode == 0, describe(p, run_dir=nodes.dirs[node])

    for node, d in enumerate(nodes.dirs):
        exits = [(e["exit_class"], e["returncode"]) for e in events(d) if e["event"] == "attempt-exited"]
        assert exits == [("killed", -signal.SIGKILL)] * 2 + [("completed", 0)], (node, exits)
    node0, node1 = ((d / "logs" / "attempt-001.log").read_text() for d in nodes.dirs)
    assert "rank 1 of 2 failed first (killed by SIGKILL); its log: workerlog.0 in attempt-001-ranks" in node1
    assert "the job failed on another node: rank 1 on node 1 (killed by SIGKILL)" in node0
    node0, node1 = ((d / "logs" / "attempt-002.log").read_text() for d in nodes.dirs)
    assert "rank 0 of 2 failed first (killed by SIGKILL)" in node0
    assert "the job failed on another node: rank 0 on node 0 (killed by SIGKILL)" in node1
    resumed = [[e["resumed_from_step"] for e in events(d) if e["event"] == "attempt-started"] for d in nodes.dirs]
    assert resumed[0] == resumed[1], resumed  # every restart from the same checkpoint on both nodes
    assert_bit_exact(nodes.dirs[0], reference, STEPS)
    verify(nodes.dirs[0], reference)
    assert final(nodes.dirs[1])["params_sha256"] == final(reference)["params_sha256"]


def test_nodes_holding_different_checkpoints_resume_from_one_both_committed_or_refuse(
        reference: Path, tmp_path: Path, procs: Started, etcd_url: str) -> None:
    nodes = Nodes(tmp_path, reference, etcd_url)
    started = nodes.start(procs)
    at = random.Random().randrange(9, STEPS - 14)
    wait_for(lambda: reached(nodes.dirs[0], at), timeout=TIMEOUT, proc=started[0], what=f"step {at}",
             interval=0.005)
    started[0].send_signal(signal.SIGTERM)  # node 0's machine is preempted
    p0 = finish(started[0], TIMEOUT)
    assert p0.returncode == ExitCode.INTERRUPTED, describe(p0, run_dir=nodes.dirs[0])
    stops = [[e["step"] for e in events(d) if e["event"] == "preempted"] for d in nodes.dirs]
    wait_for(lambda: [e["step"] for e in events(nodes.dirs[1]) if e["event"] == "preempted"], timeout=60)
    stops[1] = [e["step"] for e in events(nodes.dirs[1]) if e["event"] == "preempted"]
    assert len(stops[0]) == 1 and stops[0] == stops[1], stops  # both nodes checkpointed at the same step
    # Node 1 waits for node 0 to come back: node 0's machine returns, runs the same command, and the
    # job goes on; then node 1's machine is preempted, and node 0 waits in its turn.
    started[0] = procs.start(nodes.cmd(0))
    wait_for(lambda: reached(nodes.dirs[0], stops[0][0] + 2), timeout=TIMEOUT, proc=started[0],
             what="the job to go on", interval=0.005)
    started[1].send_signal(signal.SIGTERM)
    p1 = finish(started[1], TIMEOUT)
    assert p1.returncode == ExitCode.INTERRUPTED, describe(p1, run_dir=nodes.dirs[1])
    wait_for(lambda: len([e for e in events(nodes.dirs[0]) if e["event"] == "preempted"]) == 2, timeout=60)
    stops = [[e["step"] for e in events(d) if e["event"] == "preempted"] for d in nodes.dirs]
    assert len(stops[0]) == 2 and stops[0] == stops[1], stops
    step = stops[0][1]
    started[0].send_signal(signal.SIGTERM)
    p0 = finish(started[0], TIMEOUT)
    assert p0.returncode == ExitCode.INTERRUPTED, describe(p0, run_dir=nodes.dirs[0])

    # Node 1 lost its newest checkpoint: the nodes now hold different newest ones.
    shutil.rmtree(nodes.dirs[1] / "checkpoints" / checkpoint_name(step))
    older = max(int(c.name.removeprefix("step-")) for c in (nodes.dirs[1] / "checkpoints").glob("step-*"))

    broken = nodes.finish(nodes.start(procs, "--break-resume", "node-step"))
    refusal = f"node 0 from step {step}, node 1 from step {older}"
    for node, p in enumerate(broken):
        assert p.returncode == ExitCode.BAD_CONFIG, describe(p, run_dir=nodes.dirs[node])
        # Each node's ranks refused; the node whose refusal etcd recorded first names it, the other
        # may name that node's instead ("the job failed on another node").
        rank_logs = "".join(f.read_text(errors="replace") for f in (nodes.dirs[node] / "logs").glob("*-ranks/*"))
        assert refusal in rank_logs, rank_logs[-2000:]
    assert any(refusal in p.stderr for p in broken), [p.stderr[-500:] for p in broken]

    for node, p in enumerate(nodes.finish(nodes.start(procs))):
        assert p.returncode == 0, describe(p, run_dir=nodes.dirs[node])
    for d in nodes.dirs:
        started_at = [e["resumed_from_step"] for e in events(d) if e["event"] == "attempt-started"]
        assert started_at[-1] == older, started_at
    fallbacks = [e["reason"] for e in events(nodes.dirs[0]) if e["event"] == "checkpoint-fallback"]
    assert any("newer than the newest step every node committed" in r for r in fallbacks), fallbacks
    assert_bit_exact(nodes.dirs[0], reference, STEPS)
    verify(nodes.dirs[0], reference)


def test_two_ranks_per_node_are_four_ranks_and_a_killed_one_restarts_the_job_bit_exact(
        reference4: Path, tmp_path: Path, procs: Started, etcd_url: str) -> None:
    """``--nproc-per-node 2`` on each of two nodes: global ranks 0-1 on node 0, 2-3 on node 1,
    node 1's second rank killed (one that writes a part beside its node's checkpoints); equal to a
    four-rank run on one machine."""
    nodes = Nodes(tmp_path, reference4, etcd_url, per_node=2)
    started = nodes.start(procs)
    kill_rank(nodes, 1, 1, random.Random().randrange(5, STEPS - 6), started[1], local=1)
    for node, p in enumerate(nodes.finish(started)):
        assert p.returncode == 0, describe(p, run_dir=nodes.dirs[node])
    assert "rank 3 of 4 failed first (killed by SIGKILL); its log: workerlog.1 in attempt-001-ranks" in (
        nodes.dirs[1] / "logs" / "attempt-001.log").read_text()
    resumed = [[e["resumed_from_step"] for e in events(d) if e["event"] == "attempt-started"] for d in nodes.dirs]
    assert resumed[0] == resumed[1] and resumed[0][-1] > 0, resumed
    assert_bit_exact(nodes.dirs[0], reference4, STEPS)
    verify(nodes.dirs[0], reference4)
