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

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

import numpy as np  # noqa: E402

from runner.worker import Worker, run_guarded  # noqa: E402
from tests.jobs.least_squares import EVERY, Snapshot, problem, resume, sgd_step  # noqa: E402


def train(ns: argparse.Namespace) -> int:
    with Worker(ns.run_dir or os.environ["RUNNER_RUN_DIR"]) as w:
        w.bind_config({"job": "sgd-test", "steps": ns.steps, "nan_loss_at": ns.nan_loss_at,
                       "nan_params_at": ns.nan_params_at})
        if w.finished() is not None:
            return 0
        data, target = problem()
        step, weights, rng = resume(w.restore(total_steps=ns.steps))
        while step < ns.steps:
            weights, loss = sgd_step(data, target, weights, rng)
            if step == ns.nan_params_at:
                weights = weights * np.nan
            w.report_step(step, loss=float("nan") if step == ns.nan_loss_at else loss)
            step += 1
            if step % EVERY == 0 or w.preemption_requested:
                w.checkpoint(step, partial(Snapshot, weights.copy(), step, rng.bit_generator.state), wait=ns.sync)
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
