"""The seed's training recipe as a supervised job: Adam, polynomial LR decay, shuffled epochs.

Resumes at any step, not only at epoch ends: the checkpoint carries the model, Adam's moments and
beta powers, the LR scheduler, every RNG state, the epoch's sample order and the position in it.
``break_resume`` leaves one of those out on purpose; it exists to prove the verifier catches it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, NamedTuple

import numpy as np
import paddle
import paddle.nn.functional as F

from checkpoint import paddle_state as ps
from checkpoint.state import RngState, StateArrays, TrainState
from checkpoint.store import Checkpoint
from rundir.exitcodes import ExitCode
from runner.worker import Worker
from runner.worker.ranks import Rank, RankWorker

from .config import AUTO, TrainConfig, steps_per_epoch
from .data import Dataset
from .net import MnistCNN
from .parallel import Solo, side_for

__all__ = ["train", "build", "warm_up", "plain_step"]


def build(cfg: TrainConfig, side: int, total_steps: int) -> tuple[MnistCNN, paddle.optimizer.Adam]:
    paddle.seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    model = MnistCNN(side, dropout=cfg.dropout)
    model.train()
    sched = paddle.optimizer.lr.PolynomialDecay(learning_rate=cfg.lr, decay_steps=total_steps, end_lr=cfg.end_lr)
    opt = paddle.optimizer.Adam(learning_rate=sched, parameters=model.parameters())
    return model, opt


class _Snapshot(NamedTuple):
    """The job's state at a step boundary. What the next forward and backward passes may change -
    the RNG states, the data generator, the position - is taken at once; the rest is read by
    :meth:`arrays` - on the writer's copier thread, for a deferred checkpoint - until the job calls
    ``worker.before_update()``: the model's and optimizer's tensors change only in the optimizer
    step, and the LR scheduler right after it."""

    live: ps.LiveArrays
    step: int
    epoch: int
    batch: int
    order: np.ndarray
    rng_later: Callable[[], RngState]
    data_state: Mapping[str, Any]
    extra: Mapping[str, Any]  # more metadata: a gang's record of its ranks' parts

    def arrays(self) -> StateArrays:
        return TrainState(step=self.step, epoch=self.epoch, batch=self.batch, model=self.live.model_arrays(),
                          optimizer=self.live.optimizer_tensor_arrays(), lr_scheduler=self.live.scheduler_state(),
                          rng=self._rng, order=self.order, extra=self.extra).arrays(rng_late=False)

    def _rng(self) -> RngState:
        arrays, meta = self.rng_later()
        return arrays, {**meta, "data": self.data_state}


def _capture(live: ps.LiveArrays, rngs: ps.RngSnapshots, step: int, epoch: int, batch: int,
             order: np.ndarray, data_state: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> _Snapshot:
    return _Snapshot(live, step, epoch, batch, order, rngs.snapshot(), data_state, extra or {})


def _frozen(order: np.ndarray) -> np.ndarray:
    """The epoch's order, read-only: a checkpoint writer copies it once per epoch, not every step."""
    order.flags.writeable = False
    return order


def _epoch_order(data_rng: np.random.Generator, n: int) -> tuple[np.ndarray, Mapping[str, Any]]:
    """The next epoch's sample order, and the data generator's state after drawing it. The generator
    draws nothing else, so that state holds for every checkpoint until the next epoch: it is read
    once per epoch, not at every checkpoint."""
    return _frozen(data_rng.permutation(n)), data_rng.bit_generator.state


def _jittered(x: np.ndarray, std: float) -> np.ndarray:
    """``x`` with Gaussian noise from NumPy's global generator (augmentation); ``x`` itself if ``std`` is 0."""
    if std <= 0:
        return x
    return (x + np.random.normal(0.0, std, size=x.shape)).astype(x.dtype)


def warm_up(cfg: TrainConfig, data: Dataset, steps: int = 2) -> None:
    """Train a throwaway model for a few steps, so that the first real step does not pay Paddle's
    first-use costs (about 20 ms here): a standby spare does this while it waits. Its parameters
    are named in a name space of their own, and :func:`build` reseeds every RNG after it, so the run
    is the same with or without it."""
    with paddle.utils.unique_name.guard():
        model, opt = build(cfg, data.side, steps)
        for b in range(steps):
            logits, _ = plain_step(model, opt, data.train_x[b * cfg.batch_size : (b + 1) * cfg.batch_size],
                                   data.train_y[b * cfg.batch_size : (b + 1) * cfg.batch_size])
            logits.numpy()


def plain_step(model: MnistCNN, opt: paddle.optimizer.Adam, xb: np.ndarray, yb: np.ndarray
               ) -> tuple[paddle.Tensor, float]:
    """One training step with no worker around it (the spare's warm-up, the bare side of the
    benchmarks): forward, backward, update, scheduler; the logits and the loss."""
    logits = model(paddle.to_tensor(xb))
    loss = F.cross_entropy(logits, paddle.to_tensor(yb))
    loss.backward()
    opt.step()
    opt.clear_grad()
    opt._learning_rate.step()
    return logits, float(loss)


class _Position(NamedTuple):
    """Where training is: the steps done, the epoch, the batch in it, the epoch's order, and the data
    generator's state after drawing that order."""

    step: int
    epoch: int
    batch: int
    order: np.ndarray
    data_state: Mapping[str, Any]


def _resume(cfg: TrainConfig, ckpt: Checkpoint | None, model: MnistCNN, opt: paddle.optimizer.Adam,
            data_rng: np.random.Generator, n: int) -> _Position:
    """Start afresh, or load the checkpoint's state into the model, the optimizer and every RNG (all
    but what ``break_resume`` leaves out on purpose); where training goes on from."""
    if ckpt is None:
        return _Position(0, 0, 0, *_epoch_order(data_rng, n))
    st = TrainState.from_checkpoint(ckpt)
    brk = cfg.break_resume
    ps.load_model(model, st.model)
    ps.load_optimizer(opt, None if brk == "optimizer" else st.optimizer,
                      None if brk == "lr-scheduler" else st.lr_scheduler)
    order = _frozen(st.order.copy())
    rng = st.rng_state()
    ps.set_rng_states(rng, skip=frozenset({brk.removesuffix("-rng")}) if brk in ("paddle-rng", "numpy-rng") else
                      frozenset())
    if brk == "data-rng":
        order, data_state = _epoch_order(data_rng, n)  # a fresh generator, as if its state was never saved
    else:
        data_rng.bit_generator.state = data_state = rng[1]["data"]
    batch = st.batch + 1 if brk == "data-position" else st.batch  # reads one batch ahead of where it stopped
    return _Position(st.step, st.epoch, batch, order, data_state)


def train(cfg: TrainConfig, data: Dataset, worker: Worker | RankWorker, rank: Rank | None = None) -> ExitCode:
    """Train, resuming from the run directory. ``rank``: this process's place in a gang of ranks
    started by ``paddle.distributed.launch`` (see :mod:`model.parallel`); alone by default."""
    rank = rank or Rank()
    n = len(data.train_x)
    per_epoch = steps_per_epoch(n, cfg.batch_size)
    total = per_epoch * cfg.epochs
    side = side_for(worker, rank, agree=cfg.break_resume != "node-step")
    if isinstance(worker, Worker) and worker.standby and not worker.active:
        warm_up(cfg, data)
    side.before_build()
    model, opt = build(cfg, data.side, total)
    net = side.wrap(model, cfg.seed)
    sched = opt._learning_rate
    data_rng = np.random.default_rng(cfg.seed)
    live, rngs = ps.LiveArrays(model, opt), ps.RngSnapshots()

    side.set_cadence("auto" if cfg.checkpoint_every_steps == AUTO else cfg.checkpoint_every_steps, cfg.mtbf_s,
                     cfg.durable_every_s)
    ckpt, own_rng = side.restore(total)
    step, epoch, batch, order, data_state = _resume(cfg, ckpt, model, opt, data_rng, n)
    if own_rng is not None and cfg.break_resume != "rank-rng":
        ps.set_rng_states(own_rng)  # this rank's own RNGs, over rank 0's that the checkpoint holds
    if isinstance(side, Solo) and side.worker.preemption_requested:  # stopped before its first step
        side.preempted(step)  # its checkpoint holds all there is
        return ExitCode.PREEMPTED

    while epoch < cfg.epochs:
        idx = side.local(order[batch * cfg.batch_size : (batch + 1) * cfg.batch_size])
        x = paddle.to_tensor(_jittered(data.train_x[idx], cfg.jitter))
        y = paddle.to_tensor(data.train_y[idx])
        logits = net(x)
        loss = F.cross_entropy(logits, y)
        lr = sched.get_lr()
        side.before_backward()  # a deferred checkpoint's copy runs beside the backward pass
        loss.backward()
        side.before_update()  # and is done by now
        opt.step()
        opt.clear_grad()
        sched.step()
        agreed = side.step_done(step, loss, logits, data.train_y[idx], epoch=epoch, batch=batch, lr=lr)
        step += 1
        batch += 1
        epoch_end = batch >= per_epoch
        if epoch_end:
            epoch, batch = epoch + 1, 0
            if epoch < cfg.epochs:
                order, data_state = _epoch_order(data_rng, n)
        last = epoch >= cfg.epochs
        if epoch_end or agreed.checkpoint or agreed.preempt:
            capture = partial(_capture, live, rngs, step, epoch, batch, order, data_state)
            side.checkpoint(step, capture, rngs, wait=cfg.sync_checkpoints or last or agreed.preempt)
        if agreed.preempt and not last:
            side.preempted(step)
            return ExitCode.PREEMPTED

    side.complete(step, model)
    return ExitCode.OK
