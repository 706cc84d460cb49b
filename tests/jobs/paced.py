"""A test job for chaos campaigns: least squares by minibatch SGD (NumPy only) at a steady pace, with
test-only ways to go wrong that a whole campaign picks up from its environment.

    python tests/jobs/paced.py RUN_DIR [--steps N] [--step-time S]

It checkpoints every 5 steps through ``Worker.checkpoint`` and resumes bit for bit, unless told:

- ``PACED_SLOW_RESUME_S=S``: an attempt that resumed from a checkpoint sleeps S seconds before its
  first step (a slower restart);
- ``PACED_BREAK_AFTER=KIND``: an attempt that follows one ended by a chaos fault of KIND (the
  supervisor's ``chaos-fault`` record in ``events.jsonl`` names it) resumes wrongly (its weights nudged);
- ``PACED_BREAK_ONCE=FILE``: the first resume anywhere that manages to create FILE resumes wrongly;
  every later one is right (a failure its replay does not repeat: flaky).

:data:`PACED` is its adapter for the campaign (:class:`runner.adapter.JobAdapter`), and
``tests/jobs/paced_campaign.py`` the campaign's command line with it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere


from rundir.journal import read_records  # noqa: E402
from rundir.names import EVENTS  # noqa: E402
from runner.worker import Worker, run_guarded  # noqa: E402
from tests.jobs.least_squares import EVERY, Snapshot, problem, resume, sgd_step  # noqa: E402

__all__ = ["PACED", "PacedJob", "SCRIPT"]

SCRIPT = Path(__file__).resolve()
def _ended_by(run_dir: Path, attempt: int) -> set[str]:
    """The chaos faults the supervisor recorded against ``attempt``."""
    return {str(e.get("fault")) for e in read_records(run_dir / EVENTS)
            if e.get("event") == "chaos-fault" and e.get("attempt") == attempt}


def _break_resume(run_dir: Path, attempt: int) -> bool:
    kind = os.environ.get("PACED_BREAK_AFTER")
    if kind and kind in _ended_by(run_dir, attempt - 1):
        return True
    once = os.environ.get("PACED_BREAK_ONCE")
    if once:
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return True
        except FileExistsError:
            return False
    return False


def train(ns: argparse.Namespace) -> int:
    run_dir = Path(ns.run_dir)
    with Worker(run_dir) as w:
        w.bind_config({"job": "paced-test", "steps": ns.steps, "step_time": ns.step_time})
        if w.finished() is not None:
            return 0
        data, target = problem()
        ckpt = w.restore(total_steps=ns.steps)
        step, weights, rng = resume(ckpt)
        if ckpt is not None:
            time.sleep(float(os.environ.get("PACED_SLOW_RESUME_S", "0")))
            if _break_resume(run_dir, w.attempt):
                weights = weights + 1e-3
        while step < ns.steps:
            time.sleep(ns.step_time)
            weights, loss = sgd_step(data, target, weights, rng)
            w.report_step(step, loss=loss)
            step += 1
            if step % EVERY == 0 or w.preemption_requested:
                w.checkpoint(step, partial(Snapshot, weights.copy(), step, rng.bit_generator.state))
            if w.preemption_requested:
                return 75
        w.complete(steps=step, params_sha256=hashlib.sha256(weights.tobytes()).hexdigest())
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="paced.py")
    p.add_argument("run_dir")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--step-time", type=float, default=0.04)
    ns = p.parse_args(argv)
    return run_guarded(lambda: train(ns))


class PacedJob:
    """The paced job as the campaign sees it: one epoch of ``--steps`` steps, a checkpoint every 5."""

    preload: tuple[str, ...] = ()

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--steps", type=int, default=40, help="steps to train (default %(default)s)")
        p.add_argument("--step-time", type=float, default=0.04, help="seconds per step (default %(default)s)")

    def argv(self, ns: argparse.Namespace, *, reference: bool = False) -> list[str]:
        return ["--steps", str(ns.steps), "--step-time", str(ns.step_time)]

    def command(self, run_dir: Path, argv: Sequence[str]) -> tuple[str, ...]:
        return (sys.executable, str(SCRIPT), str(run_dir), *argv)

    def env(self, ns: argparse.Namespace) -> dict[str, str]:
        return {}  # its options travel on its command line

    def identity(self, ns: argparse.Namespace) -> dict[str, Any]:
        return {"job": "paced-test", "steps": ns.steps, "step_time": ns.step_time}

    def cache_key(self, ns: argparse.Namespace) -> str:
        return "paced"

    def prepared(self, ref_dir: Path) -> Sequence[Path]:
        return []

    def total_steps(self, ref_dir: Path, ns: argparse.Namespace) -> tuple[int, int]:
        return ns.steps, ns.steps


PACED = PacedJob()

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
