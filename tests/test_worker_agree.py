"""The step the nodes of a gang resume from (runner/worker/agree.py): the round's decision as a table,
and whole agreements played by threads, one per rank, over a stand-in for the all-reduce."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from runner.worker.agree import NO_SAY, Round, StepAgreement, resume_problem, round_outcome


@pytest.mark.parametrize(("lo", "hi", "offer", "want"), [
    (16, 16, 16, Round.AGREED),
    (-1, -1, -1, Round.AGREED),  # nobody has a checkpoint: from scratch
    (16, 24, 24, Round.WALK_BACK),  # above the lowest: try an older one
    (16, 24, 16, Round.HOLD),  # the lowest: wait for the others to come down
    (-1, 24, 24, Round.WALK_BACK),
    (-1, 24, -1, Round.HOLD),
])
def test_a_round_agrees_walks_back_or_holds(lo: int, hi: int, offer: int, want: Round) -> None:
    assert round_outcome(lo, hi, offer) is want


class AllReduce:
    """The collective of :meth:`model.parallel.Gang._extremes` for ``n`` threads: the lowest and the
    highest offer, ranks with no say left out; ``rounds`` counts them."""

    def __init__(self, n: int) -> None:
        self.offers: list[int] = [0] * n
        self.barrier = threading.Barrier(n, timeout=10)
        self.rounds = 0

    def extremes(self, rank: int, offer: int) -> tuple[int, int]:
        self.offers[rank] = offer
        self.barrier.wait()
        said = [o for o in self.offers if o != NO_SAY]
        out = min(said), max(said)
        if self.barrier.wait() == 0:
            self.rounds += 1
        return out


def leader_walk(agreement: StepAgreement, steps: Sequence[int]) -> int:
    """A node's leader as ``Worker.restore`` walks its checkpoints, newest first, with the check."""
    for step in sorted(steps, reverse=True):
        if agreement.offer(step):
            return step
    agreement.offer(-1)
    return -1


def play(nodes: Sequence[Sequence[int]], per_node: int = 1) -> tuple[list[int], int]:
    """Each node's committed steps; every rank's resulting step (rank order) and the rounds taken."""
    n = len(nodes) * per_node
    net = AllReduce(n)
    out = [0] * n

    def rank(r: int) -> None:
        agreement = StepAgreement(lambda offer: net.extremes(r, offer))
        node, local = divmod(r, per_node)
        out[r] = leader_walk(agreement, nodes[node]) if local == 0 else agreement.follow()

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    return out, net.rounds


@pytest.mark.parametrize(("nodes", "want"), [
    ([[24, 16, 8], [24, 16, 8]], 24),  # the usual case: one round
    ([[24, 16, 8], [16, 8]], 16),  # node 1 died before committing 24
    ([[8], [24, 16, 8]], 8),
    ([[24, 8], [16, 8]], 8),  # the newest step both hold
    ([[24, 16], [16, 8], [24, 16, 8]], 16),  # three nodes
    ([[], [16, 8]], -1),  # one node has nothing: every node starts afresh
    ([[24], [16]], -1),  # nothing in common
    ([[], []], -1),
])
@pytest.mark.parametrize("per_node", [1, 2])
def test_the_nodes_agree_on_the_newest_step_every_node_committed(nodes: list[list[int]], want: int,
                                                                  per_node: int) -> None:
    steps, rounds = play(nodes, per_node)
    assert steps == [want] * (len(nodes) * per_node)
    assert rounds <= 1 + sum(len(s) for s in nodes)
    common = set.intersection(*(set(s) for s in nodes))
    assert want == max(common, default=-1)


def test_the_usual_agreement_takes_one_round() -> None:
    assert play([[24, 16], [24, 16]])[1] == 1


@pytest.mark.parametrize(("loaded", "problem"), [
    ({0: 24, 1: 24}, None),
    ({0: -1, 1: -1}, None),
    ({0: 24}, None),
    ({0: 24, 1: 16}, "node 0 from step 24, node 1 from step 16"),
    ({0: 24, 1: -1, 2: 24}, "node 1 from scratch"),
])
def test_nodes_that_loaded_different_steps_are_refused(loaded: dict[int, int], problem: str | None) -> None:
    got = resume_problem(loaded)
    assert (got is None) if problem is None else (got is not None and problem in got)


def test_without_the_agreement_nodes_resume_apart_and_the_check_catches_it() -> None:
    """The broken variant (``--break-resume node-step``): each node takes its own newest checkpoint."""
    nodes = [[24, 16, 8], [16, 8]]
    apart = {n: max(s) for n, s in enumerate(nodes)}
    assert resume_problem(apart) is not None
    agreed, _ = play(nodes)
    assert resume_problem(dict(enumerate(agreed))) is None
