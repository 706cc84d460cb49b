"""Helpers for the tests that train a tiny Paddle model: the model, its steps, and what a checkpoint reads."""

from __future__ import annotations

from typing import Any

import numpy as np


def tiny(paddle):
    paddle.seed(1)
    model = paddle.nn.Sequential(paddle.nn.Linear(6, 8), paddle.nn.ReLU(), paddle.nn.Linear(8, 3))
    sched = paddle.optimizer.lr.PolynomialDecay(learning_rate=0.05, decay_steps=20, end_lr=0.001)
    opt = paddle.optimizer.Adam(learning_rate=sched, parameters=model.parameters())
    return model, opt, sched


def train_steps(paddle, model, opt, sched, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(n):
        x = paddle.to_tensor(rng.standard_normal((5, 6)).astype("float32"))
        y = paddle.to_tensor(rng.integers(0, 3, size=(5,)).astype("int64"))
        loss = paddle.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.clear_grad()
        sched.step()


def tensors(model, opt) -> dict[str, Any]:
    """Every tensor a checkpoint reads, by the names the arrays get."""
    out = dict(model.state_dict())
    out.update({k: v for k, v in opt.state_dict().items() if k != "LR_Scheduler"})
    return out


def live_arrays(live) -> dict[str, np.ndarray]:
    m = live.model_arrays()
    o, _ = live.optimizer_arrays()
    return {**m, **o}


def address(a: np.ndarray) -> int:
    return int(a.__array_interface__["data"][0])
