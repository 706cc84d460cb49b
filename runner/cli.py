"""``python -m runner``: supervise a training job, simulate preemption, verify a resume.

    python -m runner --run-dir DIR [job options] [supervisor options] [-- CMD ...]
    python -m runner --simulate-preemption [--faults N] [--fault-kinds ...] [--chaos-seed S] ...
    python -m runner verify RUN_DIR REFERENCE_DIR [--json FILE]
    python -m runner campaign --trials N ...
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from .argparsing import OneLineParser, non_negative, positive, seconds
from .exitcodes import ExitCode, UserError

__all__ = ["main", "build_parser"]

_PR_SET_CHILD_SUBREAPER = 36

#: What the built-in job's fork server imports: the job's training module, and with it Paddle.
BUILTIN_PRELOAD = ("model.train",)


def add_supervisor_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("supervisor")
    g.add_argument("--max-restarts", type=non_negative, default=20, metavar="N",
                   help="restarts without progress allowed over the whole job (default 20); "
                        "restarts after progress are free")
    g.add_argument("--crash-loop", type=positive, default=3, metavar="N",
                   help="stop after N failures in a row with no new step (default 3)")
    g.add_argument("--hang-timeout", type=seconds, default=300.0, metavar="S",
                   help="kill and restart a worker silent for S seconds (default 300)")
    g.add_argument("--grace", type=seconds, default=30.0, metavar="S",
                   help="on SIGINT/SIGTERM, give the worker S seconds to checkpoint before SIGKILL (default 30)")
    g.add_argument("--standby", action=argparse.BooleanOptionalAction, default=None,
                   help="keep a warm spare worker (Paddle imported, data loaded, model built) ready to take "
                        "over on a restart; it waits in Worker.restore() (default: on for the built-in job, "
                        "off for a command after '--')")
    g.add_argument("--preload", type=module_list, default=None, metavar="M[,M...]|none",
                   help="import these modules once in a fork server and fork every worker from it, instead of "
                        "starting each with exec (default: model.train for the built-in job, none for a command "
                        "after '--', which must then be 'PYTHON -m M ...' or 'PYTHON FILE ...', PYTHON being "
                        "the path of this interpreter)")


def module_list(text: str) -> tuple[str, ...]:
    """``--preload``: comma-separated module names, or 'none'."""
    if text.strip() == "none":
        return ()
    names = tuple(n.strip() for n in text.split(","))
    bad = [n for n in names if not all(part.isidentifier() for part in n.split("."))]
    if bad:
        raise argparse.ArgumentTypeError(f"not a module name: {bad[0]!r}")
    return names


def build_parser() -> argparse.ArgumentParser:
    from model.__main__ import add_job_arguments

    p = OneLineParser(
        prog="python -m runner",
        description="Run a training job under a supervisor that restarts it from its newest checkpoint.",
        epilog="Subcommands: 'verify RUN_DIR REFERENCE_DIR' and 'campaign'. "
               "After '--', a command of your own that uses runner.worker replaces the built-in job.",
    )
    p.add_argument("--run-dir", type=Path, default=None, help="the job's state: checkpoints, journals, logs")
    add_job_arguments(p)
    add_supervisor_arguments(p)
    return p


def _split_command(argv: Sequence[str]) -> tuple[list[str], list[str] | None]:
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, None


def run_supervised(ns: argparse.Namespace, command: list[str] | None) -> int:
    from model.__main__ import job_argv, job_command

    from .forkserver import ForkServer, forkable
    from .lock import RunLock
    from .rundir import worker_env

    if ns.run_dir is None:
        raise UserError("--run-dir is required", ExitCode.USAGE)
    if command is not None and not command:
        raise UserError("nothing after '--': give the command to supervise", ExitCode.USAGE)
    run_dir = ns.run_dir.resolve()
    cmd = tuple(command) if command else job_command(run_dir, job_argv(ns))
    env = {"RUNNER_RUN_DIR": str(run_dir), "PYTHONPATH": _pythonpath()}
    preload = ns.preload if ns.preload is not None else () if command else BUILTIN_PRELOAD
    with RunLock(run_dir) as lock:
        # The fork server starts importing Paddle now, while this process imports the rest of itself.
        server = ForkServer.for_run(run_dir, preload, worker_env(env)) if preload and forkable(cmd) else None
        try:
            from .policy import RetryPolicy
            from .supervisor import Supervisor, WorkerSpec
            from .view import make_view

            spec = WorkerSpec(cmd=cmd, run_dir=run_dir, env=env, hang_timeout=ns.hang_timeout, grace=ns.grace,
                              policy=RetryPolicy(max_restarts=ns.max_restarts, crash_loop=ns.crash_loop),
                              standby=ns.standby if ns.standby is not None else command is None, preload=preload)
            outcome = Supervisor(spec, view=make_view(), lock=lock, fork_server=server).run()
        finally:
            if server is not None:
                server.close()
    if outcome.code is not ExitCode.OK:
        print(f"error: {outcome.message}", file=sys.stderr, flush=True)
    return int(outcome.code)


def _pythonpath() -> str:
    import os

    from .children import project_pythonpath

    return project_pythonpath(os.environ.get("PYTHONPATH"))


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
            from .commands import verify_main

            return verify_main(args[1:])
        if args and args[0] == "campaign":
            from .commands import campaign_main

            return campaign_main(args[1:])
        own, command = _split_command(args)
        if "--simulate-preemption" in own:
            from .commands import simulate_main

            return simulate_main([a for a in own if a != "--simulate-preemption"])
        ns = build_parser().parse_args(own)
        _become_subreaper()
        try:
            return run_supervised(ns, command)
        finally:
            _reap_all_children()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return int(exc.code)
