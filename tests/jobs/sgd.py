"""A test job: least squares by minibatch SGD (NumPy only), with test-only ways to go wrong.

    python tests/jobs/sgd.py [RUN_DIR] [--steps N] [--nan-loss-at K] [--nan-params-at K] [--sync]

It checkpoints every 5 steps through ``Worker.checkpoint`` (asynchronously, in the writer process,
unless ``--sync``) and resumes bit for bit. ``--nan-loss-at K`` reports a NaN loss for step K (the
weights stay finite); ``--nan-params-at K`` makes the weights NaN in step K's update, so the next
checkpoint holds them and the next loss is NaN. ``--steps`` makes it long enough to fill a small disk
with its journal. RUN_DIR defaults to ``$RUNNER_RUN_DIR``, as under the supervisor.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

import numpy as np  # noqa: E402
from safetensors.numpy import load  # noqa: E402

from checkpoint.state import StateArrays  # noqa: E402
from runner.worker import Worker, run_guarded  # noqa: E402

EVERY = 5
STATE = "state.safetensors"


class _Snapshot:
    def __init__(self, weights: np.ndarray, step: int, rng: dict[str, Any]) -> None:
        self.weights, self.step, self.rng = weights, step, rng

    def arrays(self) -> StateArrays:
        return StateArrays({STATE: {"weights": self.weights}}, {"step": self.step, "rng": self.rng})


def train(ns: argparse.Namespace) -> int:
    with Worker(ns.run_dir or os.environ["RUNNER_RUN_DIR"]) as w:
        w.bind_config({"job": "sgd-test", "steps": ns.steps, "nan_loss_at": ns.nan_loss_at,
                       "nan_params_at": ns.nan_params_at})
        if w.finished() is not None:
            return 0
        data = np.random.default_rng(0).normal(size=(256, 8))
        target = data @ np.arange(8.0)
        ckpt = w.restore(total_steps=ns.steps)
        rng = np.random.default_rng(1)
        step, weights = 0, np.zeros(8)
        if ckpt is not None:
            step, weights = int(ckpt.meta["step"]), load(ckpt.files[STATE])["weights"]
            rng.bit_generator.state = ckpt.meta["rng"]
        while step < ns.steps:
            idx = rng.integers(0, len(data), 32)
            err = data[idx] @ weights - target[idx]
            loss = float(err @ err / len(idx))
            weights = weights - 0.05 * data[idx].T @ err / len(idx)
            if step == ns.nan_params_at:
                weights = weights * np.nan
            w.report_step(step, loss=float("nan") if step == ns.nan_loss_at else loss)
            step += 1
            if step % EVERY == 0 or w.preemption_requested:
                w.checkpoint(step, partial(_Snapshot, weights.copy(), step, rng.bit_generator.state), wait=ns.sync)
            if w.preemption_requested:
                return 75
        w.complete(steps=step, params_sha256=hashlib.sha256(weights.tobytes()).hexdigest())
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="sgd.py")
    p.add_argument("run_dir", nargs="?", default=None)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--nan-loss-at", type=int, default=None)
    p.add_argument("--nan-params-at", type=int, default=None)
    p.add_argument("--sync", action="store_true")
    ns = p.parse_args(argv)
    return run_guarded(lambda: train(ns))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
