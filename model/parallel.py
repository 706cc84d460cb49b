"""The built-in job alone (:class:`Solo`) or as a gang of data-parallel ranks (:class:`Gang`).

The training loop (:mod:`model.train`) asks one of these for everything that differs between the
two: the model it runs, its part of each batch, what the step's loss is and whether to checkpoint or
stop, the restore and the checkpoint. :class:`Solo` does exactly what the job always did, so a
single process trains bit for bit as before.

A gang is started by ``paddle.distributed.launch`` (gloo on CPU). Each rank:

- takes the contiguous slice :func:`rank_slice` of the global batch of 100, in the epoch's order:
  the global batch and the sample order depend neither on restarts nor on the gang's size;
  ``paddle.DataParallel`` averages the ranks' gradients, so a gang of N ranks is compared with a
  reference of N ranks (the mean of N per-rank means is not the one mean of a single process);
- after every step, joins one all-reduce of ``[loss, correct, samples, stop asked, checkpoint due]``:
  the journal's loss is the mean of the ranks' losses (rank 0 adds its own as ``rank0_loss``),
  a SIGTERM that reached any rank makes every rank checkpoint and stop at the same step, and
  rank 0's cadence decides for all;
- draws its dropout and jitter from its own RNGs, seeded from (seed, rank) once the model is built,
  and saves them in its part of each checkpoint (:mod:`runner.worker.ranks` has the protocol).

On several machines (nodes) each node's first rank is a :class:`Worker` on that node's run directory
(each node has its own disk): it journals, heartbeats and commits the node's checkpoints, the
replicated state included, and the node's other ranks write their parts beside them. On a restart
the nodes' leaders agree on the newest step every node committed (:mod:`runner.worker.agree`).
"""

from __future__ import annotations

import json
import random
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import paddle
import paddle.distributed as dist
from safetensors.numpy import load as st_load

from checkpoint import paddle_state as ps
from checkpoint.state import RngState, params_digest
from checkpoint.store import Checkpoint, CorruptCheckpoint
from checkpoint.tensorfile import serialize
from rundir.events import EventKind
from rundir.exitcodes import ExitCode, UserError
from runner.worker import Snapshot, Worker
from runner.worker.agree import NO_SAY, StepAgreement, resume_problem
from runner.worker.ranks import PartDigest, Rank, RankWorker, gang_meta, resumed_apart

__all__ = ["rank_slice", "Agreed", "Solo", "Gang", "side_for", "encode_rng", "decode_rng"]

_META = "meta.json"


def rank_slice(n: int, rank: int, size: int) -> slice:
    """Rank ``rank``'s contiguous part of a batch of ``n``: the first ``n % size`` ranks take one
    more, as ``numpy.array_split`` does. Every rank needs at least one sample."""
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def encode_rng(state: RngState) -> bytes:
    """A rank's RNG states as one safetensors file: the arrays, and the rest as JSON in an array."""
    arrays, meta = state
    return serialize({**arrays, _META: np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)})


def decode_rng(data: bytes) -> RngState:
    arrays = st_load(data)
    meta = json.loads(arrays.pop(_META).tobytes())
    return arrays, meta


class Agreed(NamedTuple):
    """What a step came to for the whole gang: checkpoint now, and/or stop after it."""

    checkpoint: bool
    preempt: bool


@dataclass
class Solo:
    """One process: the worker as the job has always used it."""

    worker: Worker

    def before_build(self) -> None:
        pass

    def wrap(self, model: paddle.nn.Layer, seed: int) -> paddle.nn.Layer:
        return model

    def local(self, idx: np.ndarray) -> np.ndarray:
        return idx

    def set_cadence(self, every: int | str, mtbf_s: float | None, durable_every_s: float) -> None:
        self.worker.set_cadence(every, mtbf_s)
        self.worker.durable_every_s = durable_every_s

    def restore(self, total: int) -> tuple[Checkpoint | None, RngState | None]:
        return self.worker.restore(total_steps=total), None

    def before_backward(self) -> None:
        self.worker.before_backward()

    def before_update(self) -> None:
        self.worker.before_update()

    def step_done(self, step: int, loss: paddle.Tensor, logits: paddle.Tensor, y: np.ndarray, *, epoch: int,
                  batch: int, lr: float) -> Agreed:
        acc = float((logits.numpy().argmax(axis=1) == y).mean())
        self.worker.report_step(step, loss=float(loss), epoch=epoch, batch=batch, acc=acc, lr=lr)
        return Agreed(self.worker.checkpoint_due(step + 1), self.worker.preemption_requested)

    def checkpoint(self, step: int, capture: Callable[[Mapping[str, Any]], Snapshot], rngs: ps.RngSnapshots, *,
                   wait: bool) -> None:
        self.worker.checkpoint(step, lambda: capture({}), wait=wait, deferred=not wait)

    def preempted(self, step: int) -> None:
        self.worker.event(EventKind.PREEMPTED, step=step)

    def complete(self, step: int, model: paddle.nn.Layer) -> None:
        self.worker.complete(steps=step, params_sha256=params_digest(ps.model_arrays(model)))


class Gang:
    """Rank ``rank`` of a data-parallel gang; ``worker`` is the :class:`Worker` of its node's first
    rank (rank 0 on one machine), or another rank's :class:`RankWorker`."""

    def __init__(self, worker: Worker | RankWorker, rank: Rank, *, agree: bool = True,
                 break_step: bool = False) -> None:
        """``agree``: False only to prove the check after it: each node then resumes from its own
        newest checkpoint (``--break-resume node-step``). ``break_step``: ranks other than 0 load an
        older checkpoint than chosen, on purpose (``--break-resume rank-step``)."""
        self.worker, self.rank, self.agree, self.break_step = worker, rank, agree, break_step

    @property
    def _leader(self) -> Worker:
        assert isinstance(self.worker, Worker)
        return self.worker

    def before_build(self) -> None:
        dist.init_parallel_env()  # waits for every rank

    def wrap(self, model: paddle.nn.Layer, seed: int) -> paddle.nn.Layer:
        """Seed this rank's own RNGs (rank 0 keeps the job's), then wrap the model: its gradients
        are averaged over the gang in the backward pass."""
        if not self.rank.leader:
            s = seed + 7919 * self.rank.rank
            paddle.seed(s)
            np.random.seed(s)
            random.seed(s)
        return paddle.DataParallel(model)

    def local(self, idx: np.ndarray) -> np.ndarray:
        return idx[rank_slice(len(idx), self.rank.rank, self.rank.size)]

    def set_cadence(self, every: int | str, mtbf_s: float | None, durable_every_s: float) -> None:
        if isinstance(self.worker, Worker):
            Solo(self._leader).set_cadence(every, mtbf_s, durable_every_s)

    def restore(self, total: int) -> tuple[Checkpoint | None, RngState | None]:
        """Each node's leader picks the newest checkpoint every rank of its node committed, and the
        leaders agree on the newest step every node holds (one machine: rank 0's); each other rank
        loads its node's checkpoint of that step and its own part (its RNGs). Then every rank says
        which step it loaded, and all stop (exit 1) unless they agree (:func:`resumed_apart`)."""
        ckpt: Checkpoint | None = None
        own: RngState | None = None
        agreement = StepAgreement(self._extremes)
        if isinstance(self.worker, Worker):
            ckpt = self.worker.restore(total_steps=total, check=self._restore_check(agreement))
            if ckpt is None and self.agree:
                agreement.offer(-1)  # none left here: the others walk back to none as well
        elif self.agree:
            agreement.follow()
        step = self._node_step(ckpt.step if ckpt is not None else -1)
        if isinstance(self.worker, RankWorker):
            self.worker.take_signals()  # ``import paddle`` took SIGTERM for itself
            if step >= 0:
                ckpt, part = self.worker.load(self.worker.older(step) if self.break_step else step)
                own = decode_rng(part)
        self._agree(ckpt.step if ckpt is not None else -1)
        return ckpt, own

    def _agree(self, loaded: int) -> None:
        """Every rank's loaded step, gathered; each rank's log says them all, and a disagreement ends
        the attempt before its first step."""
        rows: list[paddle.Tensor] = []
        dist.all_gather(rows, paddle.to_tensor(np.array([loaded], dtype=np.int64)))
        steps = [int(t.numpy()[0]) for t in rows]
        print(f"rank {self.rank.rank} of {self.rank.size}: the ranks resumed from steps {steps}", file=sys.stderr,
              flush=True)
        problem = resumed_apart(steps)
        if problem is not None:
            raise RuntimeError(problem)

    def _restore_check(self, agreement: StepAgreement) -> Callable[[Checkpoint], None]:
        """What a checkpoint must pass to be loaded by this node's leader: every part of the node's
        ranks is there; and the nodes agree on its step (an older one: it is moved aside)."""
        parts = _parts_check(self._leader, self.rank)

        def check(ckpt: Checkpoint) -> None:
            parts(ckpt)
            if self.agree and not agreement.offer(ckpt.step):
                raise CorruptCheckpoint(f"{ckpt.name}: newer than the newest step every node committed")
        return check

    def _extremes(self, offer: int) -> tuple[int, int]:
        """One round of the agreement: the lowest and the highest offer over the gang."""
        mine = [NO_SAY, NO_SAY] if offer == NO_SAY else [offer, -offer]
        t = paddle.to_tensor(np.array(mine, dtype=np.int64))
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        hi, neg_lo = (int(v) for v in t.numpy())
        return -neg_lo, hi

    def _node_step(self, mine: int) -> int:
        """The step each node's leader loaded, gathered over the gang: this node's, which its other
        ranks load; the nodes' steps must be one (:func:`~runner.worker.agree.resume_problem`)."""
        rows: list[paddle.Tensor] = []
        own = mine if isinstance(self.worker, Worker) else NO_SAY
        dist.all_gather(rows, paddle.to_tensor(np.array([own], dtype=np.int64)))
        steps = [int(t.numpy()[0]) for t in rows]
        per = self.rank.per_node
        problem = resume_problem({n: steps[n * per] for n in range(self.rank.nodes)})
        if problem is not None:
            raise UserError(problem, ExitCode.BAD_CONFIG)
        return steps[self.rank.node * per]

    def before_backward(self) -> None:
        if isinstance(self.worker, Worker):
            self._leader.before_backward()

    def before_update(self) -> None:
        if isinstance(self.worker, Worker):
            self._leader.before_update()

    def step_done(self, step: int, loss: paddle.Tensor, logits: paddle.Tensor, y: np.ndarray, *, epoch: int,
                  batch: int, lr: float) -> Agreed:
        """The one collective of a step: sum the losses, the correct answers, the samples and the
        two flags; rank 0 journals the mean."""
        mine = float(loss)
        correct = float((logits.numpy().argmax(axis=1) == y).sum())
        due = self.rank.leader and self._leader.checkpoint_due(step + 1)
        t = paddle.to_tensor(np.array([mine, correct, len(y), self.worker.preemption_requested, due],
                                      dtype=np.float64))
        dist.all_reduce(t)
        total_loss, total_correct, samples, stop, ckpt = (float(v) for v in t.numpy())
        if isinstance(self.worker, Worker):
            own = {"rank0_loss": mine} if self.rank.leader else {"node": self.rank.node, "node_loss": mine}
            self.worker.report_step(step, loss=total_loss / self.rank.size, epoch=epoch, batch=batch,
                                    acc=total_correct / samples, lr=lr, extra={**own, "ranks": self.rank.size})
        else:
            self.worker.step_done(step)
        return Agreed(ckpt > 0, stop > 0)

    def checkpoint(self, step: int, capture: Callable[[Mapping[str, Any]], Snapshot], rngs: ps.RngSnapshots, *,
                   wait: bool) -> None:
        """Every rank but 0 writes its part durably; the all-gather of the parts' digests that follows
        is the barrier after which rank 0 commits the checkpoint naming them (sync or not)."""
        mine: PartDigest | None = None
        if isinstance(self.worker, RankWorker):
            mine = self.worker.save_part(step, encode_rng(rngs.snapshot()()))
        gathered = self._gather(mine)
        if isinstance(self.worker, Worker):
            parts = {r: d for r, d in gathered.items() if r in self.rank.part_ranks}
            meta = {"gang": gang_meta(self.rank.size, parts, node=self.rank.node, nodes=self.rank.nodes)}
            self.worker.checkpoint(step, lambda: capture(meta), wait=wait, deferred=not wait)

    def _gather(self, mine: PartDigest | None) -> dict[int, PartDigest]:
        """Each rank's part digest (rank 0 has none), by rank."""
        row = np.zeros(5, dtype=np.int64)
        if mine is not None:
            row[0] = mine.size
            row[1:] = np.frombuffer(bytes.fromhex(mine.sha256), dtype=np.int64)
        rows: list[paddle.Tensor] = []
        dist.all_gather(rows, paddle.to_tensor(row))
        out = {}
        for r, t in enumerate(rows[1:], start=1):
            a = t.numpy()
            out[r] = PartDigest(int(a[0]), a[1:].astype(np.int64).tobytes().hex())
        return out

    def preempted(self, step: int) -> None:
        """Every rank waits here until every node's leader has committed the stop's checkpoint, then all exit."""
        dist.barrier()
        if isinstance(self.worker, Worker):
            self._leader.event(EventKind.PREEMPTED, step=step)
        _deaf()

    def complete(self, step: int, model: paddle.nn.Layer) -> None:
        if isinstance(self.worker, Worker):
            Solo(self._leader).complete(step, model)
        _deaf()


def _deaf() -> None:
    """The rank's state is saved and it is on its way out: from now on SIGTERM and SIGINT are
    ignored. The launcher repeats its SIGTERM to the ranks left once one has exited, and Python
    puts the default action back while it finalizes: one arriving then would turn exit 75 into
    death by SIGTERM (an ignored signal stays ignored)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _parts_check(worker: Worker, rank: Rank) -> Callable[[Checkpoint], None]:
    from checkpoint.storage import LocalStorage
    from runner.worker.ranks import RankParts

    return RankParts(LocalStorage(worker.run_dir), rank.size, rank).check


def side_for(worker: Worker | RankWorker, rank: Rank, break_resume: str | None = None) -> Solo | Gang:
    """The job's side of the gang: :class:`Solo` for a single process. ``break_resume``, to prove the
    checks after a gang's restore: "rank-step" (ranks other than 0 resume from an older checkpoint
    than rank 0's) or "node-step" (the nodes skip their agreement on the step)."""
    if rank.size == 1:
        assert isinstance(worker, Worker)
        return Solo(worker)
    return Gang(worker, rank, agree=break_resume != "node-step", break_step=break_resume == "rank-step")
