"""The small disk of a disk-full chaos run (chaos/tmpfs.py): refused up front where it cannot be
mounted (exit 78), mounted on the run directory where it can, and its files kept on the disk beneath
when the run is over, the filler left out."""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import pytest

from chaos.faults import FILLER, Fault, FaultKind
from chaos.schedule import Schedule
from chaos.simulate import chosen_kinds
from chaos.tmpfs import disk_for, mount_problem, refuse_unless_mountable, small_disk
from rundir.exitcodes import ExitCode, UserError


@pytest.mark.parametrize(("euid", "mount", "problem"), [
    (0, "/usr/bin/mount", None),
    (1000, "/usr/bin/mount", "the disk-full fault needs root, to mount a small tmpfs on the run directory"),
    (0, None, "the disk-full fault needs the mount command, to mount a small tmpfs on the run directory"),
])
def test_mount_problem(euid: int, mount: str | None, problem: str | None) -> None:
    assert mount_problem(euid, mount) == problem


def test_only_disk_full_needs_a_mount(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    refuse_unless_mountable([FaultKind.SIGKILL, FaultKind.CRASH])  # nothing to refuse
    with pytest.raises(UserError) as got:
        refuse_unless_mountable([FaultKind.SIGKILL, FaultKind.DISK_FULL])
    assert got.value.code is ExitCode.BAD_CONFIG and "leave disk-full out of --fault-kinds" in str(got.value)


def test_the_default_kinds_leave_disk_full_out_naming_it_brings_it_in() -> None:
    assert FaultKind.DISK_FULL not in chosen_kinds(argparse.Namespace(fault_kinds=None))
    assert chosen_kinds(argparse.Namespace(fault_kinds=[["disk-full"], ["sigkill", "disk-full"]])) == [
        FaultKind.DISK_FULL, FaultKind.SIGKILL]


def schedule(*kinds: FaultKind) -> Schedule:
    return Schedule(0, 75, tuple(Fault(k, 10 + i) for i, k in enumerate(kinds)))


def test_disk_for_mounts_only_for_a_schedule_that_fills_the_disk(tmp_path: Path) -> None:
    with disk_for(schedule(FaultKind.SIGKILL, FaultKind.HANG), tmp_path / "run"):
        assert not (tmp_path / "run").exists()  # nothing made, nothing mounted


def test_small_disk_mounts_and_keeps_the_files_but_the_filler(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    run = tmp_path / "run"
    try:
        with small_disk(run, size="1m"):
            assert os.path.ismount(run)
            assert shutil.disk_usage(run).total <= 1 << 20
            (run / "checkpoints").mkdir()
            (run / "checkpoints" / "MANIFEST.json").write_text("{}")
            (run / "losses.jsonl").write_text("{}\n")
            (run / FILLER).write_bytes(bytes(1000))
    except UserError as exc:  # root, but the mount is refused (a container)
        pytest.skip(str(exc))
    assert not os.path.ismount(run)
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*")) == [
        "checkpoints", "checkpoints/MANIFEST.json", "losses.jsonl"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # nothing left aside


def test_small_disk_refuses_a_run_directory_in_use(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the refusal for want of root comes first")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "losses.jsonl").write_text("")
    with pytest.raises(UserError, match="already holds a run"), small_disk(tmp_path / "run"):
        pass
    assert not os.path.ismount(tmp_path / "run")
