"""The commands beside plain supervision: ``verify``, ``--simulate-preemption`` and ``campaign``."""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from .argparsing import OneLineParser
from .exitcodes import ExitCode, UserError
from .journal import read_records
from .rundir import EVENTS, FINAL, LOSSES
from .trace import Comparison, compare, load_trace

__all__ = ["verify_main", "simulate_main", "ensure_reference", "run_trial", "TrialResult", "job_total_steps"]

DEFAULT_FAULTS = 6
DEFAULT_CHECKPOINT_EVERY = 5


# -- verify --------------------------------------------------------------------------------------------


def _trace_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise UserError(f"{what} {path}: no such directory", ExitCode.BAD_DATA)
    if not (path / LOSSES).is_file():
        raise UserError(f"{what} {path}: no {LOSSES} (not a run directory)", ExitCode.BAD_DATA)
    return path


def verify_dirs(run_dir: Path, reference_dir: Path) -> Comparison:
    return compare(load_trace(_trace_dir(reference_dir, "reference")), load_trace(_trace_dir(run_dir, "run")))


def _write_json(path: Path, obj: Any) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj, indent=1) + "\n")
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}", ExitCode.UNWRITABLE) from None


def verify_main(argv: Sequence[str]) -> int:
    p = OneLineParser(prog="python -m runner verify",
                                description="Compare a run's stitched loss trace with a reference, bit for bit.")
    p.add_argument("run_dir", type=Path)
    p.add_argument("reference_dir", type=Path)
    p.add_argument("--json", type=Path, default=None, help="also write the comparison as JSON")
    ns = p.parse_args(argv)
    from .view import make_console

    c = verify_dirs(ns.run_dir, ns.reference_dir)
    console = make_console()
    style = "bold green" if c.bit_exact else "bold red"
    console.print(f"[{style}]{c.verdict.upper()}[/] {c.explain()}", highlight=False)
    if c.missing or c.extra:
        console.print(f"{len(c.missing)} reference steps missing from the run, {len(c.extra)} extra", highlight=False)
    if ns.json:
        _write_json(ns.json, c.to_json())
    return ExitCode.OK if c.bit_exact else ExitCode.VERIFY_FAILED


# -- the reference run -----------------------------------------------------------------------------------


def reference_key(identity: dict[str, Any], data: str | None) -> str:
    from model.data import cache_key

    blob = json.dumps({"identity": identity, "data": cache_key(data)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def ensure_reference(ns: argparse.Namespace, cache: Path, console: Console) -> Path:
    """An uninterrupted run of the job, reused when one with the same configuration exists."""
    from model.__main__ import job_argv, job_command, job_identity

    ref = cache / reference_key(job_identity(ns), ns.data)
    if (ref / FINAL).is_file():
        console.print(f"reference: reusing {ref}", highlight=False)
        return ref
    shutil.rmtree(ref, ignore_errors=True)  # a reference must never be a resumed run
    try:
        ref.mkdir(parents=True)
    except OSError as exc:
        raise UserError(f"cannot create reference directory {ref}: {exc.strerror}", ExitCode.UNWRITABLE) from None
    console.print(f"reference: running the uninterrupted job in {ref}", highlight=False)
    clean = argparse.Namespace(**{**vars(ns), "break_resume": None})
    cmd = list(job_command(ref, job_argv(clean)))
    with open(ref / "reference.log", "wb") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        lines = (ref / "reference.log").read_text(errors="replace").strip().splitlines()
        last = lines[-1] if lines else f"exit {rc}"
        shutil.rmtree(ref, ignore_errors=True)
        code = ExitCode(rc) if rc in ExitCode._value2member_map_ else ExitCode.CRASHED
        raise UserError(f"the reference run failed: {last.removeprefix('error: ')}", code)
    return ref


def job_total_steps(ref: Path, epochs: int) -> tuple[int, int]:
    """(steps per epoch, total steps) of the job, from the reference's prepared data."""
    import numpy as np

    from model.config import TrainConfig, steps_per_epoch
    from model.data import CACHE

    with np.load(ref / CACHE, allow_pickle=False) as z:
        n = len(z["train_y"])
    per = steps_per_epoch(n, TrainConfig.batch_size)
    return per, per * epochs


# -- one chaos trial --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialResult:
    report: Any  # runner.report.ChaosReport
    outcome_code: ExitCode
    schedule_path: Path


def replay_command(ns: argparse.Namespace, schedule_path: Path) -> str:
    from model.__main__ import job_argv

    argv = ["python", "-m", "runner", "--simulate-preemption", "--chaos-replay", str(schedule_path),
            *job_argv(ns)]
    return shlex.join(argv)


def run_trial(ns: argparse.Namespace, schedule: Any, run_dir: Path, ref: Path, *, view: Any) -> TrialResult:
    """Run the job under the supervisor with ``schedule``'s faults and verify it against ``ref``."""
    from chaos.inject import Injector
    from chaos.schedule import SCHEDULE_FILE
    from model.__main__ import job_argv, job_command, job_identity
    from model.data import CACHE

    from .cli import BUILTIN_PRELOAD
    from .policy import RetryPolicy
    from .report import build_report
    from .supervisor import Supervisor, WorkerSpec

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if any(run_dir.iterdir()):
            raise UserError(f"run directory {run_dir} already holds a run; choose a new --run-dir",
                            ExitCode.BAD_CONFIG)
        schedule_path = run_dir / SCHEDULE_FILE
        schedule.save(schedule_path)
        shutil.copyfile(ref / CACHE, run_dir / CACHE)  # the data is prepared once, by the reference
    except OSError as exc:
        raise UserError(f"run directory {run_dir} is not writable: {exc.strerror}", ExitCode.UNWRITABLE) from None
    from .cli import _pythonpath

    spec = WorkerSpec(
        cmd=job_command(run_dir, job_argv(ns)), run_dir=run_dir,
        env={"PYTHONPATH": _pythonpath()}, hang_timeout=ns.hang_timeout, grace=ns.grace,
        policy=RetryPolicy(max_restarts=ns.max_restarts, crash_loop=ns.crash_loop), standby=ns.standby is not False,
        preload=ns.preload if ns.preload is not None else BUILTIN_PRELOAD,
    )
    injector = Injector(schedule, run_dir, grace=ns.grace)
    outcome = Supervisor(spec, view=view, chaos=injector).run()
    reference, run = load_trace(ref), load_trace(run_dir)
    job = {**job_identity(ns), "chaos_seed": schedule.seed, "checkpoint_every_steps": ns.checkpoint_every_steps,
           "run_dir": str(run_dir), "reference_dir": str(ref)}
    report = build_report(
        job=job, reference=reference, run=run, comparison=compare(reference, run),
        events=read_records(run_dir / EVENTS), records=read_records(run_dir / LOSSES),
        hits=[h.to_json() for h in injector.hits], wall_s=outcome.wall_s,
        replay=replay_command(ns, schedule_path),
    )
    return TrialResult(report, outcome.code, schedule_path)


# -- --simulate-preemption ----------------------------------------------------------------------------------


def add_chaos_arguments(p: argparse.ArgumentParser) -> None:
    from chaos.faults import FaultKind

    kinds = [k.value for k in FaultKind]

    def kind_list(text: str) -> list[str]:
        out = [k.strip() for k in text.split(",") if k.strip()]
        bad = [k for k in out if k not in kinds]
        if bad or not out:
            what = bad[0] if bad else text
            raise argparse.ArgumentTypeError(f"unknown fault kind {what!r}; choose from {', '.join(kinds)}")
        return out

    g = p.add_argument_group("chaos")
    g.add_argument("--fault-kinds", type=kind_list, nargs="+", default=None, metavar="KIND",
                   help=f"kinds to draw from (default all): {', '.join(kinds)}")
    g.add_argument("--chaos-seed", type=int, default=0, help="seed of the fault schedule (default 0)")


def _kinds(ns: argparse.Namespace) -> list[Any]:
    from chaos.faults import FaultKind

    if not ns.fault_kinds:
        return list(FaultKind)
    flat = [k for group in ns.fault_kinds for k in group]
    return [FaultKind(k) for k in dict.fromkeys(flat)]


def _common_parser(prog: str, description: str) -> argparse.ArgumentParser:
    from model.__main__ import add_job_arguments

    from .cli import add_supervisor_arguments

    p = OneLineParser(prog=prog, description=description)
    add_job_arguments(p)
    add_supervisor_arguments(p)
    add_chaos_arguments(p)
    p.set_defaults(checkpoint_every_steps=DEFAULT_CHECKPOINT_EVERY, hang_timeout=3.0, grace=5.0)
    p.add_argument("--reference-cache", type=Path, default=Path("runs/references"),
                   help="where uninterrupted reference runs are kept and reused (default runs/references)")
    return p


def simulate_main(argv: Sequence[str]) -> int:
    from chaos.schedule import Schedule, ScheduleError, checkpoint_steps, draw_schedule

    from .report import ReportView
    from .view import make_console, make_view

    p = _common_parser("python -m runner --simulate-preemption",
                       "Kill the job at random points, recover it, and prove the result equals an uninterrupted run.")
    p.add_argument("--faults", type=int, default=DEFAULT_FAULTS, help=f"faults to inject (default {DEFAULT_FAULTS})")
    p.add_argument("--chaos-replay", type=Path, default=None, metavar="FILE",
                   help="replay the faults of a saved chaos-schedule.json instead of drawing them")
    p.add_argument("--run-dir", type=Path, default=None, help="a new directory for the chaos run")
    p.add_argument("--json-report", type=Path, default=None, metavar="FILE", help="also write the report as JSON")
    ns = p.parse_args(argv)
    if ns.faults < 0:
        p.error("--faults must be 0 or more")
    console = make_console()
    run_dir = (ns.run_dir or Path("runs") / time.strftime("chaos-%Y%m%d-%H%M%S")).resolve()
    ref = ensure_reference(ns, ns.reference_cache.resolve(), console)
    per, total = job_total_steps(ref, ns.epochs)
    try:
        if ns.chaos_replay is not None:
            schedule = Schedule.load(ns.chaos_replay)
            if schedule.total_steps != total:
                raise ScheduleError(f"chaos schedule {ns.chaos_replay} is for a job of {schedule.total_steps} steps, "
                                    f"this one has {total}")
        else:
            schedule = draw_schedule(ns.chaos_seed, ns.faults, _kinds(ns), total,
                                     checkpoint_steps(total, per, max(0, ns.checkpoint_every_steps)))
    except ScheduleError as exc:
        raise UserError(str(exc), ExitCode.BAD_CONFIG) from None
    console.print(f"chaos run in {run_dir}: {len(schedule.faults)} faults over {total} steps", highlight=False)
    trial = run_trial(ns, schedule, run_dir, ref, view=make_view(console))
    console.print(ReportView(trial.report))
    if ns.json_report:
        _write_json(ns.json_report, trial.report.to_json())
    return ExitCode.OK if trial.report.verdict == "pass" else ExitCode.VERIFY_FAILED


def campaign_main(argv: Sequence[str]) -> int:
    from .campaign import campaign_main as main

    return main(argv)
