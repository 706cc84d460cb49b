"""``python -m model``: train the seed's MNIST CNN in this process, resuming from the run directory.

Exit codes: 0 done, 75 preempted with state saved (SIGTERM/SIGINT), 65 bad data, 73 run directory
not writable, 69 run directory in use, 74 a write found the disk full (or over quota, or failing),
76 a NaN or infinite loss or parameter, 77 the remote store (--store) cannot be used or a newer
supervisor fenced this job off, 78 run directory holds another configuration, 1 a crash.
"""

from __future__ import annotations

import argparse
import signal
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from checkpoint.cadence import DEFAULT_DURABLE_EVERY_S
from rundir.argparsing import (
    OneLineParser,
    add_store_arguments,
    fraction,
    non_negative,
    non_negative_float,
    positive,
    seconds,
    seconds_or_zero,
)
from rundir.exitcodes import ExitCode

from .config import AUTO, BREAK_RESUME_KINDS, JOB_NAME, TrainConfig

if TYPE_CHECKING:
    from runner.worker.ranks import Rank


def add_job_arguments(p: argparse.ArgumentParser) -> None:
    """The built-in job's options, shared with ``python -m runner`` which passes them through."""
    p.add_argument("--epochs", type=positive, default=5, help="epochs to train (default %(default)s)")
    p.add_argument("--seed", type=non_negative, default=0, help="seed for init and shuffling (default %(default)s)")
    p.add_argument("--data", default=None,
                   help="a .json.gz file or an IDX directory (default: scikit-learn's bundled digits)")
    p.add_argument("--checkpoint-every-steps", "--checkpoint-every", type=every_steps, default=0, metavar="K|auto",
                   dest="checkpoint_every_steps",
                   help="also checkpoint every K steps, or 'auto': Young's interval sqrt(2*cost*MTBF) from the "
                        "measured checkpoint cost (default %(default)s; 0: at epoch ends only)")
    p.add_argument("--mtbf", type=seconds, default=None, metavar="S",
                   help="with 'auto': the expected seconds between failures (default: estimated from the run)")
    p.add_argument("--durable-every", type=seconds_or_zero, default=DEFAULT_DURABLE_EVERY_S, metavar="S",
                   dest="durable_every",
                   help="fsync a checkpoint at least every S seconds (default %(default)g); the others survive the "
                        "worker being killed, not the machine going down. 0: fsync every one")
    p.add_argument("--sync-checkpoints", action="store_true",
                   help="write checkpoints on the training thread instead of in the background")
    p.add_argument("--dropout", type=fraction, default=0.0, metavar="P",
                   help="dropout before the classifier, drawing from Paddle's generator every step "
                        "(default %(default)g)")
    p.add_argument("--jitter", type=non_negative_float, default=0.0, metavar="STD",
                   help="Gaussian noise on the inputs, drawing from NumPy's global generator every step "
                        "(default %(default)g)")
    p.add_argument("--break-resume", choices=BREAK_RESUME_KINDS, default=None,
                   help="deliberately resume wrongly (to test the verifier); never for real runs")


def every_steps(text: str) -> int:
    return AUTO if text == "auto" else non_negative(text)


def job_argv(ns: argparse.Namespace) -> list[str]:
    """The job options in ``ns`` as command-line arguments for ``python -m model``."""
    every = "auto" if ns.checkpoint_every_steps == AUTO else str(ns.checkpoint_every_steps)
    argv = ["--epochs", str(ns.epochs), "--seed", str(ns.seed), "--checkpoint-every-steps", every]
    if ns.mtbf is not None:
        argv += ["--mtbf", str(ns.mtbf)]
    if ns.durable_every != DEFAULT_DURABLE_EVERY_S:
        argv += ["--durable-every", str(ns.durable_every)]
    if ns.sync_checkpoints:
        argv += ["--sync-checkpoints"]
    if ns.data is not None:
        argv += ["--data", ns.data]
    if ns.dropout:
        argv += ["--dropout", str(ns.dropout)]
    if ns.jitter:
        argv += ["--jitter", str(ns.jitter)]
    if ns.break_resume is not None:
        argv += ["--break-resume", ns.break_resume]
    return argv


def job_command(run_dir: Path, job_args: Sequence[str]) -> tuple[str, ...]:
    """The command line of the built-in job on ``run_dir``, as the supervisor starts it."""
    return (sys.executable, "-m", "model", "--run-dir", str(run_dir), *job_args)


def job_config(ns: argparse.Namespace) -> TrainConfig:
    return TrainConfig(epochs=ns.epochs, seed=ns.seed, checkpoint_every_steps=ns.checkpoint_every_steps,
                       break_resume=ns.break_resume, sync_checkpoints=ns.sync_checkpoints, mtbf_s=ns.mtbf,
                       durable_every_s=ns.durable_every, dropout=ns.dropout, jitter=ns.jitter)


def job_identity(ns: argparse.Namespace, world_size: int = 1) -> dict[str, object]:
    """What makes two runs comparable: the job, its data, every setting that changes the trace, and
    the number of ranks, if more than one (a gang's gradients are means of the ranks' means)."""
    from .data import source_id

    ranks = {"world_size": world_size} if world_size > 1 else {}
    return {"job": JOB_NAME, "data": source_id(ns.data), **job_config(ns).identity(), **ranks}


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message=".*ccache.*")
    p = OneLineParser(prog="python -m model", description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", required=True, help="where checkpoints, the loss journal and logs go")
    add_job_arguments(p)
    add_store_arguments(p)  # here only: under the supervisor, its --store reaches the worker by the environment
    ns = p.parse_args(argv)
    from runner.worker import run_guarded

    return run_guarded(lambda: run(ns))


def run(ns: argparse.Namespace) -> int:
    # SIGTERM and SIGINT wait, blocked in this thread and every thread started from now on (NumPy's
    # and Paddle's), until Worker.restore() takes them: Paddle's import installs a handler that
    # aborts the process, and a notice during start-up must end in exit 75 like any other.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    from runner.worker import Worker  # no Paddle yet: the heartbeat starts before the slow import
    from runner.worker.ranks import Rank

    from .data import prepare

    rank = Rank.from_env()  # rank 0 of 1 unless paddle.distributed.launch started this process
    if not rank.node_leader:  # the first rank of each node holds the node's run directory
        return run_rank(ns, rank)
    store = getattr(ns, "store", None)
    with Worker(ns.run_dir, store=store, upload_every=getattr(ns, "upload_every", None) if store else None) as worker:
        cfg = job_config(ns)
        worker.bind_config(job_identity(ns, rank.size))
        if worker.finished() is not None:
            print(f"{ns.run_dir}: already complete", flush=True)
            return ExitCode.OK
        worker.heartbeat("loading-data")
        data = prepare(ns.data, worker.run_dir)
        worker.heartbeat("importing")
        from .train import train

        return int(train(cfg, data, worker, rank))


def run_rank(ns: argparse.Namespace, rank: Rank) -> int:
    """A rank of a gang other than its node's first: that one binds the configuration, journals and commits."""
    from runner.worker.files import read_final
    from runner.worker.ranks import RankWorker

    from .data import prepare

    with RankWorker(ns.run_dir, rank) as worker:
        if read_final(worker.run_dir) is not None:
            return ExitCode.OK  # rank 0 says so, and exits too
        data = prepare(ns.data, worker.run_dir)
        from .train import train

        return int(train(job_config(ns), data, worker, rank))


if __name__ == "__main__":
    sys.exit(main())
