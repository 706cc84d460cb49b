"""``python -m runner``: supervise a training job, simulate preemption, verify a resume.

    python -m runner --run-dir DIR [job options] [supervisor options] [-- CMD ...]
    python -m runner --simulate-preemption [--faults N] [--fault-kinds ...] [--chaos-seed S] ... [-- CMD ...]
    python -m runner verify RUN_DIR REFERENCE_DIR [--json FILE]
    python -m runner campaign --trials N ... [-- CMD ...]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rundir.argparsing import OneLineParser
from rundir.children import project_pythonpath
from rundir.errors import print_error
from rundir.exitcodes import ExitCode, UserError
from rundir.names import ENV_RUN_DIR

from .adapter import JobAdapter
from .options import add_node_arguments, add_supervisor_arguments, node_spec, notice_settings, standby_env

if TYPE_CHECKING:
    from rundir.contract import Chaos

    from .launcher import Launcher
    from .nodes import NodeSpec
    from .remote_sync import RemoteTier

__all__ = ["main", "build_parser", "builtin_job", "job_for", "COMMANDS"]

_PR_SET_CHILD_SUBREAPER = 36


def builtin_job() -> JobAdapter:
    """The built-in job: the only place the runner names it."""
    from model.job import BUILTIN

    return BUILTIN


def job_for(command: list[str] | None) -> JobAdapter:
    """The job the chaos commands prove: the built-in one, or the command after '--'."""
    if command is None:
        return builtin_job()
    from .command import CommandJob

    return CommandJob(command)


#: The commands ``python -m runner --help`` lists, each with an example; each has its own ``--help``.
COMMANDS = """\
commands (each has its own --help):
  python -m runner --run-dir DIR [options] [-- CMD ...]
      supervise a job; after '--', a command of your own (using runner.Job or runner.worker) replaces the built-in job
      e.g. python -m runner --run-dir runs/mnist --epochs 5
  python -m runner --simulate-preemption [options] [-- CMD ...]
      kill the job at random points, recover it, prove the result equals an uninterrupted run
      e.g. python -m runner --simulate-preemption --faults 6 --chaos-seed 1
  python -m runner verify RUN_DIR REFERENCE_DIR
      compare a run's stitched loss trace with an uninterrupted run's, bit for bit
      e.g. python -m runner verify runs/chaos-1 runs/references/KEY
  python -m runner campaign (--trials N | --budget TIME) [options] [-- CMD ...]
      many seeded chaos trials, several at once, with JUnit, HTML and nightly trends
      e.g. python -m runner campaign --budget 15m --html chaos.html --history runs/chaos-history
"""


def build_parser(job: JobAdapter | None = None) -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m runner",
        description="Run a training job under a supervisor that restarts it from its newest checkpoint.",
        epilog=COMMANDS, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run-dir", type=Path, default=None, help="the job's state: checkpoints, journals, logs")
    (job or builtin_job()).add_arguments(p)
    add_supervisor_arguments(p)
    add_node_arguments(p)
    # A chaos simulation that loses machines runs each one as this command (chaos/machine.py).
    p.add_argument("--chaos-schedule", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--chaos-hits", type=Path, default=None, help=argparse.SUPPRESS)
    return p


def _split_command(argv: Sequence[str]) -> tuple[list[str], list[str] | None]:
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, None


def run_supervised(ns: argparse.Namespace, command: list[str] | None, job: JobAdapter) -> int:
    from rundir.lock import RunLock
    from rundir.names import worker_env

    from .forkserver import ForkServer, forkable

    if ns.run_dir is None:
        raise UserError("--run-dir is required", ExitCode.USAGE)
    if command is not None and not command:
        raise UserError("nothing after '--': give the command to supervise", ExitCode.USAGE)
    run_dir = ns.run_dir.resolve()
    cmd = tuple(command) if command else job.command(run_dir, job.argv(ns))
    env = {ENV_RUN_DIR: str(run_dir), "PYTHONPATH": project_pythonpath(os.environ.get("PYTHONPATH")),
           **standby_env(ns)}
    nodes = node_spec(ns)
    if nodes is not None and ns.store is not None:
        raise UserError("--store with --nnodes is not supported: every node would write the same prefix",
                        ExitCode.USAGE)
    gang = ns.nproc_per_node > 1 or nodes is not None
    preload = () if gang else ns.preload if ns.preload is not None else () if command else job.preload
    with RunLock(run_dir) as lock:
        remote = _attach_store(ns, run_dir)  # a store that cannot be used: one line, exit 77, nothing started
        if remote is not None:
            env.update(remote.env())
        # The fork server starts importing Paddle now, while this process imports the rest of itself.
        server = ForkServer.for_run(run_dir, preload, worker_env(env)) if preload and forkable(cmd) else None
        try:
            from .policy import RetryPolicy
            from .supervisor import Supervisor, WorkerSpec
            from .view import make_view

            if remote is not None:
                remote.restore()  # an empty run directory is filled from the store
            spec = WorkerSpec(cmd=cmd, run_dir=run_dir, env=env, hang_timeout=ns.hang_timeout,
                              startup_timeout=ns.startup_timeout, grace=ns.grace,
                              policy=RetryPolicy(max_restarts=ns.max_restarts, crash_loop=ns.crash_loop),
                              standby=not gang and (ns.standby if ns.standby is not None else command is None),
                              preload=preload, disk_wait=ns.disk_wait, notice=notice_settings(ns))
            launcher = _gang_launcher(cmd, ns.nproc_per_node, nodes) if gang else None
            outcome = Supervisor(spec, view=make_view(), lock=lock, fork_server=server, launcher=launcher,
                                 chaos=_machine_chaos(ns, run_dir)).run()
        finally:
            if server is not None:
                server.close()
        if remote is not None:
            remote.finish()
    if outcome.code is not ExitCode.OK:
        print_error(outcome.message)
    return int(outcome.code)


def _gang_launcher(cmd: tuple[str, ...], nproc: int, nodes: NodeSpec | None) -> Launcher:
    """The gang's launcher: on one machine, or as one node of several (etcd must answer: else exit 78)."""
    from .gang import GangLauncher

    if nodes is None:
        return GangLauncher(cmd, nproc)
    from .etcd import Etcd
    from .nodes import NodeGangLauncher

    kv = Etcd(nodes.etcd)
    if not kv.healthy():
        raise UserError(f"etcd at {nodes.etcd} does not answer (--etcd)", ExitCode.BAD_CONFIG)
    return NodeGangLauncher(cmd, nproc, nodes, kv)


def _attach_store(ns: argparse.Namespace, run_dir: Path) -> RemoteTier | None:
    if ns.store is None:
        return None
    from .remote_sync import RemoteTier

    return RemoteTier.attach(ns.store, run_dir, upload_every=ns.upload_every, grace=ns.grace,
                             note=lambda m: print(m, flush=True))


def _machine_chaos(ns: argparse.Namespace, run_dir: Path) -> Chaos | None:
    if ns.chaos_schedule is None:
        return None
    from chaos.machine import machine_chaos

    return machine_chaos(ns.chaos_schedule, ns.chaos_hits, run_dir, grace=ns.grace)


def _become_subreaper() -> None:
    # Orphaned grandchildren of a worker are reparented to us, so nothing escapes cleanup.
    try:
        ctypes.CDLL(None).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _reap_all_children() -> None:
    import psutil

    for child in psutil.Process().children(recursive=True):
        try:
            child.kill()
        except psutil.Error:
            pass


def main(argv: Sequence[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message=".*ccache.*")
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] == "verify":
            from .verify import verify_main

            return verify_main(args[1:])
        if args and args[0] == "campaign":
            from chaos.campaign import campaign_main

            own, command = _split_command(args[1:])
            return campaign_main(own, job_for(command), command=command or ())
        own, command = _split_command(args)
        if "--simulate-preemption" in own:
            from chaos.simulate import simulate_main

            return simulate_main([a for a in own if a != "--simulate-preemption"], job_for(command))
        job = builtin_job()
        ns = build_parser(job).parse_args(own)
        _become_subreaper()
        try:
            return run_supervised(ns, command, job)
        finally:
            _reap_all_children()
    except UserError as exc:
        print_error(str(exc))
        return int(exc.code)
