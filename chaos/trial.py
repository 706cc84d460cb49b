"""One chaos trial: an uninterrupted reference run of the job (cached), then the job under the
supervisor with a schedule's faults, then the comparison and the report."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from rundir.children import project_pythonpath
from rundir.exitcodes import ExitCode, UserError
from rundir.journal import read_records
from rundir.names import ENV_RUN_DIR, EVENTS, FINAL, LOSSES, worker_env
from runner.adapter import JobAdapter
from runner.gang import GangLauncher, gang_command
from runner.options import notice_settings, standby_env
from runner.policy import RetryPolicy
from runner.supervisor import WorkerSpec
from runner.trace import compare, load_trace
from runner.view import View

from .clouds import CloudFakes, supervise_through_notices
from .inject import Injector
from .report import ChaosReport, build_report
from .schedule import SCHEDULE_FILE, Schedule
from .tmpfs import disk_for

__all__ = ["ensure_reference", "reference_key", "run_trial", "replay_command", "job_env", "TrialResult"]


def reference_key(job: JobAdapter, ns: argparse.Namespace) -> str:
    blob = json.dumps({"identity": job.identity(ns), "data": job.cache_key(ns)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def job_env(job: JobAdapter, ns: argparse.Namespace, run_dir: Path) -> dict[str, str]:
    """What a run of the job gets in its environment besides ours: the project on the path, the run
    directory (a job of one's own reads it there) and the job's own variables."""
    return {"PYTHONPATH": project_pythonpath(os.environ.get("PYTHONPATH")), ENV_RUN_DIR: str(run_dir),
            **standby_env(ns), **job.env(ns)}
def _ranks(ns: argparse.Namespace) -> int:
    """The gang's size, ``--nproc-per-node`` (1: a single process)."""
    return int(getattr(ns, "nproc_per_node", 1))


def ensure_reference(job: JobAdapter, ns: argparse.Namespace, cache: Path, console: Console) -> Path:
    """An uninterrupted run of the job, reused when one with the same configuration exists."""
    ref = cache / reference_key(job, ns)
    if (ref / FINAL).is_file():
        console.print(f"reference: reusing {ref}", highlight=False)
        return ref
    shutil.rmtree(ref, ignore_errors=True)  # a reference must never be a resumed run
    try:
        ref.mkdir(parents=True)
    except OSError as exc:
        raise UserError(f"cannot create reference directory {ref}: {exc.strerror}", ExitCode.UNWRITABLE) from None
    console.print(f"reference: running the uninterrupted job in {ref}", highlight=False)
    cmd = list(job.command(ref, job.argv(ns, reference=True)))
    if _ranks(ns) > 1:  # a gang's reference is a gang of the same size
        cmd = list(gang_command(cmd, _ranks(ns), ref / "reference-ranks"))
    with open(ref / "reference.log", "wb") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=worker_env(job_env(job, ns, ref))).returncode
    if rc != 0:
        lines = (ref / "reference.log").read_text(errors="replace").strip().splitlines()
        last = lines[-1] if lines else f"exit {rc}"
        shutil.rmtree(ref, ignore_errors=True)
        code = ExitCode(rc) if rc in ExitCode._value2member_map_ else ExitCode.CRASHED
        raise UserError(f"the reference run failed: {last.removeprefix('error: ')}", code)
    return ref


@dataclass(frozen=True)
class TrialResult:
    report: ChaosReport
    outcome_code: ExitCode
    schedule_path: Path


def replay_command(job: JobAdapter, ns: argparse.Namespace, schedule_path: Path) -> str:
    argv = ["python", "-m", "runner", "--simulate-preemption", "--chaos-replay", str(schedule_path), *job.argv(ns)]
    return shlex.join(argv)


def _prepare_run_dir(job: JobAdapter, schedule: Schedule, run_dir: Path, ref: Path) -> Path:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if any(run_dir.iterdir()):
            raise UserError(f"run directory {run_dir} already holds a run; choose a new --run-dir",
                            ExitCode.BAD_CONFIG)
        schedule_path = run_dir / SCHEDULE_FILE
        schedule.save(schedule_path)
        for f in job.prepared(ref):
            shutil.copyfile(f, run_dir / f.name)
    except OSError as exc:
        raise UserError(f"run directory {run_dir} is not writable: {exc.strerror}", ExitCode.UNWRITABLE) from None
    return schedule_path


def run_trial(job: JobAdapter, ns: argparse.Namespace, schedule: Schedule, run_dir: Path, ref: Path, *,
              view: View) -> TrialResult:
    """Run the job under the supervisor with ``schedule``'s faults and verify it against ``ref``; on
    a small tmpfs of its own if the schedule fills the disk (:mod:`chaos.tmpfs`); after a notice
    fault's exit 75, a new supervisor continues (:mod:`chaos.clouds`)."""
    with disk_for(schedule, run_dir):
        return _supervised_trial(job, ns, schedule, run_dir, ref, view=view)


def _supervised_trial(job: JobAdapter, ns: argparse.Namespace, schedule: Schedule, run_dir: Path, ref: Path, *,
                      view: View) -> TrialResult:
    schedule_path = _prepare_run_dir(job, schedule, run_dir, ref)
    gang = _ranks(ns) > 1
    cmd = job.command(run_dir, job.argv(ns))
    spec = WorkerSpec(
        cmd=cmd, run_dir=run_dir,
        env=job_env(job, ns, run_dir),
        hang_timeout=ns.hang_timeout, startup_timeout=ns.startup_timeout, grace=ns.grace,
        policy=RetryPolicy(max_restarts=ns.max_restarts, crash_loop=ns.crash_loop),
        standby=not gang and ns.standby is not False,
        preload=() if gang else ns.preload if ns.preload is not None else job.preload, disk_wait=ns.disk_wait,
    )
    fakes = CloudFakes()
    injector = Injector(schedule, run_dir, grace=ns.grace, notice=fakes.trigger)
    launcher = GangLauncher(cmd, _ranks(ns)) if gang else None
    outcomes = supervise_through_notices(spec, injector, fakes, view, notice_settings(ns), launcher=launcher)
    if outcomes[-1].code is not ExitCode.OK:
        view.note(outcomes[-1].message)
    reference, run = load_trace(ref), load_trace(run_dir)
    identity = {**job.identity(ns), "chaos_seed": schedule.seed,
                "checkpoint_every_steps": ns.checkpoint_every_steps, "run_dir": str(run_dir), "reference_dir": str(ref)}
    report = build_report(
        job=identity, reference=reference, run=run, comparison=compare(reference, run),
        events=read_records(run_dir / EVENTS), records=read_records(run_dir / LOSSES),
        hits=[h.to_json() for h in injector.hits], wall_s=sum(o.wall_s for o in outcomes),
        replay=replay_command(job, ns, schedule_path),
    )
    return TrialResult(report, outcomes[-1].code, schedule_path)
