"""Chaos with a remote store (chaos/fleet.py, chaos/machine.py): how a schedule is split between the
machines and the fleet, which faults a lost machine took with it, the options a machine's supervisor
is started with, and the record each machine keeps of its faults outside its run directory."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from chaos.faults import DEFAULT_KINDS, STORE_KINDS, Fault, FaultKind
from chaos.fleet import missed_faults, needs_machines, split_schedule
from chaos.machine import RecordingInjector, machine_chaos, supervisor_argv
from chaos.simulate import chosen_kinds
from rundir.classify import ExitClass
from rundir.exitcodes import ExitCode, UserError
from runner.cli import build_parser
from tests.helpers.factories import attempt_result, schedule_of

K = FaultKind


def kinds_steps(faults: list[Fault]) -> list[tuple[str, int]]:
    return [(f.kind.value, f.step) for f in faults]


@pytest.mark.parametrize(("faults", "machines", "fleet"), [
    ([], [[]], []),
    ([(K.SIGKILL, 5), (K.HANG, 10)], [[("sigkill", 5), ("hang", 10)]], []),
    ([(K.SIGKILL, 5), (K.INSTANCE_LOSS, 10), (K.SIGTERM, 15)],
     [[("sigkill", 5)], [("sigterm", 15)]], [("instance-loss", 10)]),
    ([(K.STORE_OUTAGE, 3), (K.CRASH, 8), (K.INSTANCE_LOSS, 12), (K.INSTANCE_LOSS, 16)],
     [[("crash", 8)], [], []], [("store-outage", 3), ("instance-loss", 12), ("instance-loss", 16)]),
])
def test_split_schedule(faults, machines, fleet) -> None:
    got_machines, got_fleet = split_schedule(schedule_of(*faults))
    assert [kinds_steps(m) for m in got_machines] == machines
    assert kinds_steps(got_fleet) == fleet


def test_faults_a_lost_machine_took_with_it_are_missed() -> None:
    expected = [Fault(K.SIGKILL, 5), Fault(K.SIGKILL, 5), Fault(K.HANG, 9)]
    hits = [{"kind": "sigkill", "target_step": 5, "attempt": 1, "hit_step": 5, "missed": False}]
    missed = missed_faults(expected, hits)
    assert [(m["kind"], m["target_step"], m["missed"]) for m in missed] == [("sigkill", 5, True), ("hang", 9, True)]
    assert missed_faults(expected[:1], hits) == []


@pytest.mark.parametrize(("store", "faults", "needed"), [
    (None, [(K.SIGKILL, 5)], False),
    ("s3://b/p", [(K.SIGKILL, 5)], True),
    (None, [(K.STORE_OUTAGE, 5)], True),
    (None, [(K.INSTANCE_LOSS, 5)], True),
])
def test_needs_machines(store, faults, needed) -> None:
    assert needs_machines(argparse.Namespace(store=store), schedule_of(*faults)) is needed


@pytest.mark.parametrize("store", [None, "s3://b/p"])
def test_by_default_a_simulation_draws_store_faults_only_with_a_store(store: str | None) -> None:
    kinds = set(chosen_kinds(argparse.Namespace(fault_kinds=None, store=store)))
    assert (kinds >= STORE_KINDS) is (store is not None)
    assert kinds - STORE_KINDS == set(DEFAULT_KINDS)


@pytest.mark.parametrize("extra", [
    [],
    ["--standby", "--preload", "none", "--grace", "2.5", "--upload-every", "0"],
    ["--no-standby", "--preload", "model.train,numpy", "--hang-timeout", "7", "--max-restarts", "4"],
    ["--nproc-per-node", "2"],  # a gang on each machine
])
def test_a_machine_gets_the_supervisor_options_it_was_given(extra: list[str]) -> None:
    parser = build_parser()
    ns = parser.parse_args(["--run-dir", "x", *extra])
    again = parser.parse_args(["--run-dir", "x", *supervisor_argv(ns)])
    for opt in ("max_restarts", "crash_loop", "hang_timeout", "startup_timeout", "grace", "standby", "preload",
                "upload_every", "nproc_per_node"):
        assert getattr(again, opt) == getattr(ns, opt), opt


def test_a_machine_records_each_faults_fate_outside_its_run_directory(tmp_path: Path) -> None:
    hits = tmp_path / "hits.jsonl"
    inj = RecordingInjector(schedule_of((K.CRASH, 3), (K.SIGKILL, 8)), tmp_path / "run", hits, grace=1.0)
    inj.on_exit(attempt_result(ExitClass.CRASHED, attempt=1, last_step=2))
    lines = [json.loads(line) for line in hits.read_text().splitlines()]
    assert [(h["kind"], h["target_step"], h["attempt"]) for h in lines] == [("crash", 3, 1)]
    inj.on_exit(attempt_result(ExitClass.COMPLETED, attempt=2, last_step=20))  # the rest can no longer hit
    lines = [json.loads(line) for line in hits.read_text().splitlines()]
    assert [(h["kind"], h["missed"]) for h in lines] == [("crash", False), ("sigkill", True)]


def test_a_machine_given_a_bad_schedule_refuses_it(tmp_path: Path) -> None:
    (tmp_path / "s.json").write_text("[1, 2")
    with pytest.raises(UserError) as e:
        machine_chaos(tmp_path / "s.json", None, tmp_path, grace=1.0)
    assert e.value.code == ExitCode.BAD_CONFIG
    schedule_of((K.HANG, 4)).save(tmp_path / "ok.json")
    inj = machine_chaos(tmp_path / "ok.json", None, tmp_path, grace=1.0)
    assert [f.kind for f in inj.pending] == [K.HANG]
