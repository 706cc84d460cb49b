"""A job of the README's shape (NumPy only) whose checkpoint after ``SLOW_AT`` steps takes ``SLOW_S``
seconds to write, as on a slow disk: the end-to-end tests give it a preemption notice in the middle of
that write. ``python slow_save_job.py RUN_DIR`` (or under the supervisor, ``RUNNER_RUN_DIR``)."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import overload

import numpy as np
from safetensors.numpy import load, save

from rundir.exitcodes import ExitCode, UserError
from runner.worker import Worker

STEPS, EVERY, SLOW_AT, SLOW_S = 60, 10, 30, 2.0


class SlowParts(Sequence[memoryview]):
    """A file's bytes that take ``SLOW_S`` seconds to come, the first time they are read."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.slept = False

    def __len__(self) -> int:
        return 1

    @overload
    def __getitem__(self, i: int) -> memoryview: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[memoryview]: ...

    def __getitem__(self, i: int | slice) -> memoryview | Sequence[memoryview]:
        if isinstance(i, slice):
            return [memoryview(self.data)][i]
        if i != 0:
            raise IndexError(i)
        return memoryview(self.data)

    def __iter__(self) -> Iterator[memoryview]:
        if not self.slept:
            self.slept = True
            time.sleep(SLOW_S)  # a signal meanwhile is only recorded: the write goes on
        yield memoryview(self.data)


def train(run_dir: str) -> int:
    with Worker(run_dir) as w:
        w.bind_config({"job": "slow-save", "steps": STEPS})
        if w.finished() is not None:
            return ExitCode.OK
        data = np.random.default_rng(0).normal(size=(256, 8))
        target = data @ np.arange(8.0)
        ckpt = w.restore(total_steps=STEPS)
        rng = np.random.default_rng(1)
        if ckpt is None:
            step, weights = 0, np.zeros(8)
        else:
            step, weights = ckpt.meta["step"], load(ckpt.files["state.safetensors"])["weights"]
            rng.bit_generator.state = ckpt.meta["rng"]
        while step < STEPS:
            idx = rng.integers(0, len(data), 32)
            err = data[idx] @ weights - target[idx]
            weights = weights - 0.05 * data[idx].T @ err / len(idx)
            w.report_step(step, loss=float(err @ err / len(idx)))
            step += 1
            time.sleep(0.02)
            if step % EVERY == 0 or w.preemption_requested:
                blob = save({"weights": weights})
                w.save_checkpoint(step, {"state.safetensors": SlowParts(blob) if step == SLOW_AT else blob},
                                  {"step": step, "rng": rng.bit_generator.state})
            if w.preemption_requested:
                w.event("preempted", step=step)
                return ExitCode.PREEMPTED
        w.complete(steps=step, params_sha256=hashlib.sha256(weights.tobytes()).hexdigest())
    return ExitCode.OK


if __name__ == "__main__":
    try:
        sys.exit(train(os.environ.get("RUNNER_RUN_DIR") or sys.argv[1]))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.code)
