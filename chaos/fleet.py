"""Chaos trials with a remote store: the job runs on "machines", each a supervisor in a process of
its own (:class:`chaos.machine.Machine`), and chaos does to the machines what a cloud does.

The schedule is split (:func:`split_schedule`): faults inside a machine (sigkill, sigterm, hang...)
go to that machine's supervisor; ``instance-loss`` and ``store-outage`` are this module's. On an
instance loss the whole machine is SIGKILLed, its run directory deleted, and a new supervisor starts
on a new, empty directory with the same ``--store`` - it restores the job from the store and goes
on. A store outage takes the store away for a while (:mod:`chaos.proxy`), while training goes on.

The trial's directory holds ``chaos-schedule.json``, ``machine-N/`` (only the last survives),
``machine-N.log`` (each supervisor's output), ``machine-N.schedule.json`` (its part of the faults),
``chaos-hits.jsonl`` (what became of each fault) and, without ``--store``, the store itself in
``store/``. The last machine's run directory holds the journal of the whole run, restored from the
store and continued: that is what is verified against the reference.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from checkpoint.objects import StoreError, parse_url
from checkpoint.remote import RemoteStore
from rundir.children import project_pythonpath
from rundir.contract import ENV_CHAOS_ARM
from rundir.exitcodes import ExitCode, UserError
from rundir.journal import read_records
from rundir.names import ENV_ATTEMPT, EVENTS, LOSSES, STORE_VARIABLES, read_heartbeat
from runner.adapter import JobAdapter
from runner.trace import compare, load_trace
from runner.view import View

from .faults import STORE_KINDS, Fault, FaultKind
from .inject import FaultHit
from .machine import Machine, supervisor_argv
from .proxy import DirectoryOutage, FaultProxy, Outage, endpoint_address
from .report import build_report
from .schedule import SCHEDULE_FILE, Schedule
from .trial import TrialResult, replay_command, run_trial

__all__ = ["HITS_FILE", "needs_machines", "run_any_trial", "run_fleet_trial", "split_schedule", "missed_faults"]

HITS_FILE = "chaos-hits.jsonl"
POLL_S = 0.02


def needs_machines(ns: argparse.Namespace, schedule: Schedule) -> bool:
    """A trial runs on machines when it has a store, or a fault that needs one."""
    return bool(getattr(ns, "store", None)) or any(f.kind in STORE_KINDS for f in schedule.faults)


def run_any_trial(job: JobAdapter, ns: argparse.Namespace, schedule: Schedule, run_dir: Path, ref: Path, *,
                  view: View, store: str | None = None) -> TrialResult:
    """A trial on machines if it needs them (see :func:`needs_machines`), else in this process."""
    if not needs_machines(ns, schedule):
        return run_trial(job, ns, schedule, run_dir, ref, view=view)
    return run_fleet_trial(job, ns, schedule, run_dir, ref, view=view, store=store or getattr(ns, "store", None))


def split_schedule(schedule: Schedule) -> tuple[list[list[Fault]], list[Fault]]:
    """The faults of each machine in turn (a new machine after each instance loss), and the faults
    the fleet carries out itself, in the schedule's order."""
    machines: list[list[Fault]] = [[]]
    fleet: list[Fault] = []
    for f in schedule.faults:
        if f.kind in STORE_KINDS:
            fleet.append(f)
            if f.kind is FaultKind.INSTANCE_LOSS:
                machines.append([])
        else:
            machines[-1].append(f)
    return machines, fleet


def missed_faults(expected: Sequence[Fault], hits: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The faults of ``expected`` that no hit accounts for (their machine was lost first), as missed hits."""
    left = Counter((h.get("kind"), h.get("target_step")) for h in hits)
    missed = []
    for f in expected:
        key = (f.kind.value, f.step)
        if left[key] > 0:
            left[key] -= 1
        else:
            missed.append(FaultHit(f.kind.value, f.step, None, None, None, missed=True).to_json())
    return missed


def _store_for(base: Path, store: str | None) -> str:
    """The trial's store: the one given (a directory store's directory is made, as a bucket would be),
    or a directory store of its own."""
    if store is None:
        (base / "store").mkdir()
        return f"file://{base / 'store'}"
    loc = parse_url(store)
    if loc.protocol == "file":
        Path(loc.root).mkdir(parents=True, exist_ok=True)
    return store


def _check_fresh(url: str) -> None:
    """A simulation starts from nothing: its store must hold nothing of another run."""
    store = RemoteStore(url)
    store.check()
    if store.objects.find(""):
        raise UserError(f"store {url} is not empty; a chaos run needs a store prefix of its own", ExitCode.BAD_CONFIG)


def _outage_for(url: str, schedule: Schedule) -> tuple[Outage | None, dict[str, str]]:
    """What can take the store away, and the environment the machines reach the store with."""
    if not any(f.kind is FaultKind.STORE_OUTAGE for f in schedule.faults):
        return None, {}
    loc = parse_url(url)
    if loc.protocol == "file":
        return DirectoryOutage(Path(loc.root)), {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
    target = endpoint_address(endpoint) if loc.protocol in ("s3", "s3a") else None
    if target is None:
        raise UserError("store-outage needs a store it can interrupt: file://, or s3:// with a plain-HTTP "
                        "AWS_ENDPOINT_URL (a local S3 such as moto or MinIO)", ExitCode.BAD_CONFIG)
    proxy = FaultProxy(target)
    return proxy, {"AWS_ENDPOINT_URL": proxy.endpoint, "AWS_ENDPOINT_URL_S3": proxy.endpoint}


class _Fleet:
    """The machines of one trial, one at a time, and the faults done to them."""

    def __init__(self, job: JobAdapter, ns: argparse.Namespace, base: Path, ref: Path, url: str,
                 env: dict[str, str], view: View) -> None:
        self.job, self.ns, self.base, self.ref, self.url, self.env, self.view = job, ns, base, ref, url, env, view
        self.hits: list[dict[str, Any]] = []
        self.machine: Machine | None = None
        self.count = 0

    def start(self, faults: Sequence[Fault], total_steps: int) -> Machine:
        self.count += 1
        name = f"machine-{self.count}"
        run_dir = self.base / name
        run_dir.mkdir()
        for f in self.job.prepared(self.ref):  # the machine's image holds the prepared data
            shutil.copyfile(f, run_dir / f.name)
        part = self.base / f"{name}.schedule.json"
        Schedule(None, total_steps, tuple(faults)).save(part)
        argv = ["--store", self.url, "--chaos-schedule", str(part), "--chaos-hits", str(self.base / HITS_FILE),
                *supervisor_argv(self.ns), *self.job.argv(self.ns)]
        self.machine = Machine.start(self.count, run_dir, argv, self.env, self.base / f"{name}.log")
        self.view.note(f"{name}: a supervisor on {run_dir}, store {self.url}")
        return self.machine

    def hit(self, f: Fault, step: int, effect: str) -> None:
        assert self.machine is not None
        beat = read_heartbeat(self.machine.run_dir) or {}
        attempt = beat.get("attempt") if isinstance(beat.get("attempt"), int) else None
        self.hits.append(FaultHit(f.kind.value, f.step, attempt, step, time.time(), effect).to_json())
        self.view.note(f"chaos: {f.kind.value} at step {step}: {effect}")


def _machine_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (ENV_CHAOS_ARM, ENV_ATTEMPT, *STORE_VARIABLES)}
    env["PYTHONPATH"] = project_pythonpath(os.environ.get("PYTHONPATH"))
    env.update(extra)
    return env


def _drive(fleet: _Fleet, machines: list[list[Fault]], pending: list[Fault], outage: Outage | None,
           total: int) -> int:
    """Run machines until one exits; lose them and take the store away as the schedule says.
    Returns the last machine's exit status."""
    machine = fleet.start(machines[0], total)
    outage_ends: float | None = None
    while (rc := machine.poll()) is None:
        time.sleep(POLL_S)
        if outage_ends is not None and time.monotonic() >= outage_ends and outage is not None:
            outage.up()
            outage_ends = None
        step = machine.last_step()
        if not pending or step is None or step < pending[0].step:
            continue
        if pending[0].kind is FaultKind.INSTANCE_LOSS and not machine.uploads():
            continue  # nothing of this machine's in the store yet: a loss now would only restart the job
        f = pending.pop(0)
        if f.kind is FaultKind.STORE_OUTAGE and outage is not None:
            mode, seconds = str(f.detail.get("mode", "refuse")), float(f.detail.get("seconds", 2.0))
            outage.down(mode)
            outage_ends = time.monotonic() + seconds
            fleet.hit(f, step, f"the store {'refuses connections' if mode == 'refuse' else 'hangs'} for {seconds:g} s")
        elif f.kind is FaultKind.INSTANCE_LOSS:
            fleet.hit(f, step, f"{machine.name} lost: {machine.lose()} processes SIGKILLed, its run directory deleted")
            shutil.rmtree(machine.run_dir, ignore_errors=True)
            if outage_ends is not None and outage is not None:  # a new machine comes up once the store is back
                time.sleep(max(0.0, outage_ends - time.monotonic()))
                outage.up()
                outage_ends = None
            machine = fleet.start(machines[fleet.count], total)
    if outage is not None:
        outage.close()
    return rc


def run_fleet_trial(job: JobAdapter, ns: argparse.Namespace, schedule: Schedule, base: Path, ref: Path, *,
                    view: View, store: str | None) -> TrialResult:
    """Run the job on machines with ``schedule``'s faults and verify the last machine's run against ``ref``."""
    try:
        base.mkdir(parents=True, exist_ok=True)
        if any(base.iterdir()):
            raise UserError(f"run directory {base} already holds a run; choose a new --run-dir", ExitCode.BAD_CONFIG)
        schedule_path = base / SCHEDULE_FILE
        schedule.save(schedule_path)
        url = _store_for(base, store)
    except OSError as exc:
        raise UserError(f"run directory {base} is not writable: {exc.strerror}", ExitCode.UNWRITABLE) from None
    try:
        _check_fresh(url)
    except StoreError as exc:
        raise UserError(str(exc), ExitCode.STORE) from None
    outage, extra = _outage_for(url, schedule)
    machines, pending = split_schedule(schedule)
    fleet = _Fleet(job, ns, base, ref, url, _machine_env(extra), view)
    t0 = time.monotonic()
    rc = _drive(fleet, machines, list(pending), outage, schedule.total_steps)
    wall = time.monotonic() - t0
    assert fleet.machine is not None
    last = fleet.machine.run_dir
    if rc != 0:
        view.note(f"{fleet.machine.name}'s supervisor exited with {rc}; see {fleet.machine.log}")
    inside = read_records(base / HITS_FILE)
    hits = sorted([*fleet.hits, *inside, *missed_faults([f for m in machines for f in m], inside),
                   *missed_faults(pending, fleet.hits)], key=lambda h: (h.get("target_step") or 0, h.get("kind")))
    reference, run = load_trace(ref), load_trace(last)
    identity = {**job.identity(ns), "chaos_seed": schedule.seed, "checkpoint_every_steps": ns.checkpoint_every_steps,
                "run_dir": str(last), "reference_dir": str(ref), "store": url, "machines": fleet.count}
    report = build_report(job=identity, reference=reference, run=run, comparison=compare(reference, run),
                          events=read_records(last / EVENTS), records=read_records(last / LOSSES), hits=hits,
                          wall_s=wall, replay=replay_command(job, ns, schedule_path))
    code = ExitCode(rc) if rc in ExitCode._value2member_map_ else ExitCode.GAVE_UP
    return TrialResult(report, code, schedule_path)
