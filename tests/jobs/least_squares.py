"""The problem the NumPy test jobs (``sgd.py``, ``paced.py``) train on: least squares by minibatch SGD,
its checkpoint (the weights, and the batch generator's state in the manifest) and its resume."""

from __future__ import annotations

from typing import Any

import numpy as np
from safetensors.numpy import load

from checkpoint.state import StateArrays
from checkpoint.store import Checkpoint

__all__ = ["EVERY", "STATE", "Snapshot", "problem", "resume", "sgd_step"]

EVERY = 5  # steps between checkpoints
STATE = "state.safetensors"


class Snapshot:
    def __init__(self, weights: np.ndarray, step: int, rng: dict[str, Any]) -> None:
        self.weights, self.step, self.rng = weights, step, rng

    def arrays(self) -> StateArrays:
        return StateArrays({STATE: {"weights": self.weights}}, {"step": self.step, "rng": self.rng})


def problem() -> tuple[np.ndarray, np.ndarray]:
    """The data and its targets (the same in every process)."""
    data = np.random.default_rng(0).normal(size=(256, 8))
    return data, data @ np.arange(8.0)


def resume(ckpt: Checkpoint | None) -> tuple[int, np.ndarray, np.random.Generator]:
    """(steps done, weights, batch generator): afresh, or as ``ckpt`` left them."""
    rng = np.random.default_rng(1)
    if ckpt is None:
        return 0, np.zeros(8), rng
    rng.bit_generator.state = ckpt.meta["rng"]
    return int(ckpt.meta["step"]), load(ckpt.files[STATE])["weights"], rng


def sgd_step(data: np.ndarray, target: np.ndarray, weights: np.ndarray, rng: np.random.Generator
             ) -> tuple[np.ndarray, float]:
    """One minibatch step: the new weights, and the loss before the update."""
    idx = rng.integers(0, len(data), 32)
    err = data[idx] @ weights - target[idx]
    return weights - 0.05 * data[idx].T @ err / len(idx), float(err @ err / len(idx))
