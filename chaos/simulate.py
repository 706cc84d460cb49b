"""``python -m runner --simulate-preemption``: kill the job at random points, recover it, and prove
the stitched result equals an uninterrupted run; exit with the verdict's code (0 pass, 3 diverged,
4 incomplete). Also the options every chaos command shares."""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from rundir.argparsing import OneLineParser
from rundir.exitcodes import ExitCode, UserError
from runner.adapter import JobAdapter
from runner.options import add_supervisor_arguments, write_json
from runner.view import make_console, make_view

from .faults import DEFAULT_KINDS, GANG_REFUSED, OPT_IN_KINDS, STORE_KINDS, FaultKind, gang_refusal
from .report import ReportView
from .schedule import Schedule, ScheduleError, checkpoint_steps, draw_schedule
from .tmpfs import refuse_unless_mountable
from .trial import ensure_reference

__all__ = ["simulate_main", "chaos_parser", "chosen_kinds", "refuse_for_gang", "SIMULATION_DEFAULTS"]

DEFAULT_FAULTS = 6
#: What a simulation uses in place of the supervisor's defaults: a checkpoint every 5 steps, a hang
#: judged after 3 s of silence and idleness, 120 s for a start-up on a busy machine, 5 s for a
#: SIGTERMed worker to save its state, 30 s of waiting for disk space, no cloud to watch (a
#: ``notice`` fault brings its own), and with a store an upload every half second (a simulated job
#: trains for seconds, not hours).
SIMULATION_DEFAULTS = {"checkpoint_every_steps": 5, "hang_timeout": 3.0, "startup_timeout": 120.0, "grace": 5.0,
                       "disk_wait": 30.0, "notice": "none", "upload_every": 0.5}


def _kind_list(text: str) -> list[str]:
    kinds = [k.value for k in FaultKind]
    out = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in out if k not in kinds]
    if bad or not out:
        what = bad[0] if bad else text
        raise argparse.ArgumentTypeError(f"unknown fault kind {what!r}; choose from {', '.join(kinds)}")
    return out


def chosen_kinds(ns: argparse.Namespace) -> list[FaultKind]:
    """The fault kinds of ``--fault-kinds`` (comma- or space-separated), each once; by default all but
    the opt-in ones (disk-full and notice: see :mod:`chaos.faults`), and those that need a store only
    with ``--store`` (for a gang of ranks, of those only the ones it takes: :data:`~chaos.faults.GANG_REFUSED`)."""
    if not ns.fault_kinds:
        store_kinds = [k for k in FaultKind if k in STORE_KINDS] if getattr(ns, "store", None) else []
        gang = getattr(ns, "nproc_per_node", 1) > 1
        return [k for k in (*DEFAULT_KINDS, *store_kinds) if not (gang and k in GANG_REFUSED)]
    flat = [k for group in ns.fault_kinds for k in group]
    return [FaultKind(k) for k in dict.fromkeys(flat)]


def refuse_for_gang(kinds: Iterable[FaultKind], ns: argparse.Namespace) -> None:
    """Exit 78 now, before any run, for a fault kind that a gang of ranks does not take."""
    problem = gang_refusal(kinds, getattr(ns, "nproc_per_node", 1))
    if problem is not None:
        raise UserError(problem, ExitCode.BAD_CONFIG)


def chaos_parser(job: JobAdapter, prog: str, description: str) -> argparse.ArgumentParser:
    """The options of every chaos command: the job's, the supervisor's (with the simulation's
    defaults) and the chaos ones."""
    p = OneLineParser(prog=prog, description=description,
                      epilog="After '--', a command of your own that uses runner.Job is proven instead of the "
                             "built-in job: '... -- python my_job.py ARGS'.")
    job.add_arguments(p)
    add_supervisor_arguments(p, standby_default="on")
    p.set_defaults(**SIMULATION_DEFAULTS)
    g = p.add_argument_group("chaos")
    kinds = ", ".join(k.value for k in FaultKind)
    opt_in = ", ".join(k.value for k in FaultKind if k in OPT_IN_KINDS)
    g.add_argument("--fault-kinds", type=_kind_list, nargs="+", default=None, metavar="KIND",
                   help=f"kinds to draw from (default all but {opt_in}, which are asked for by name: disk-full "
                        f"needs root, a notice starts a new supervisor; instance-loss and store-outage only with "
                        f"--store, or named, when they use a directory store in the run directory): {kinds}")
    g.add_argument("--chaos-seed", type=int, default=0, help="seed of the fault schedule (default 0)")
    p.add_argument("--reference-cache", type=Path, default=Path("runs/references"),
                   help="where uninterrupted reference runs are kept and reused (default runs/references)")
    return p


def _replay(ns: argparse.Namespace) -> Schedule | None:
    """The schedule of ``--chaos-replay``, loaded and checked before anything runs."""
    if ns.chaos_replay is None:
        return None
    try:
        return Schedule.load(ns.chaos_replay)
    except ScheduleError as exc:
        raise UserError(str(exc), ExitCode.BAD_CONFIG) from None


def _schedule(ns: argparse.Namespace, replay: Schedule | None, total: int, per: int) -> Schedule:
    try:
        if replay is not None:
            if replay.total_steps != total:
                raise ScheduleError(f"chaos schedule {ns.chaos_replay} is for a job of {replay.total_steps} steps, "
                                    f"this one has {total}")
            aimed = [f.detail["rank"] for f in replay.faults if isinstance(f.detail.get("rank"), int)]
            if aimed and max(aimed) >= ns.nproc_per_node:
                raise ScheduleError(f"chaos schedule {ns.chaos_replay} aims at rank {max(aimed)}; this gang has "
                                    f"{ns.nproc_per_node} (--nproc-per-node)")
            return replay
        return draw_schedule(ns.chaos_seed, ns.faults, chosen_kinds(ns), total,
                             checkpoint_steps(total, per, max(0, ns.checkpoint_every_steps)), ranks=ns.nproc_per_node)
    except ScheduleError as exc:
        raise UserError(str(exc), ExitCode.BAD_CONFIG) from None


def simulate_main(argv: Sequence[str], job: JobAdapter) -> int:
    p = chaos_parser(job, "python -m runner --simulate-preemption",
                     "Kill the job at random points, recover it, and prove the result equals an uninterrupted run.")
    p.add_argument("--faults", type=int, default=DEFAULT_FAULTS, help=f"faults to inject (default {DEFAULT_FAULTS})")
    p.add_argument("--chaos-replay", type=Path, default=None, metavar="FILE",
                   help="replay the faults of a saved chaos-schedule.json instead of drawing them")
    p.add_argument("--run-dir", type=Path, default=None,
                   help="a new directory for the chaos run (default runs/chaos-TIME)")
    p.add_argument("--json-report", type=Path, default=None, metavar="FILE", help="also write the report as JSON")
    ns = p.parse_args(argv)
    if ns.faults < 0:
        p.error("--faults must be 0 or more")
    replay = _replay(ns)
    kinds = chosen_kinds(ns) if replay is None else [f.kind for f in replay.faults]
    refuse_unless_mountable(kinds)
    refuse_for_gang(kinds, ns)
    console = make_console()
    run_dir = (ns.run_dir or Path("runs") / time.strftime("chaos-%Y%m%d-%H%M%S")).resolve()
    ref = ensure_reference(job, ns, ns.reference_cache.resolve(), console)
    per, total = job.total_steps(ref, ns)
    schedule = _schedule(ns, replay, total, per)
    console.print(f"chaos run in {run_dir}: {len(schedule.faults)} faults over {total} steps", highlight=False)
    from .fleet import run_any_trial

    trial = run_any_trial(job, ns, schedule, run_dir, ref, view=make_view(console), store=ns.store)
    console.print(ReportView(trial.report))
    if ns.json_report:
        write_json(ns.json_report, trial.report.to_json())
    return trial.report.verdict.exit_code
