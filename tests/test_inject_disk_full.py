"""The disk-full fault (chaos/inject.py): filled at its step, freed at a later tick decided by the
injector - once the filled worker is gone (the supervisor, waiting for space, ticks chaos) and a
little time has passed, or after a longer time whatever happened - and never on a real disk."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from chaos import inject as inject_mod
from chaos.faults import DEFAULT_KINDS, FILLER, OPT_IN_KINDS, FaultKind
from chaos.inject import FREE_AFTER_S, FREE_ANYWAY_S, MAX_FILL, Injector, fill_disk, free_disk
from rundir.classify import ExitClass
from rundir.contract import DISK_WAIT_PHASE, FileEffect
from tests.helpers.factories import attempt_result, obs, schedule_of
from tests.helpers.tmpfs import tmpfs


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def filled_injector(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Injector, Clock, list[str]]:
    """An injector whose disk-full fault at step 12 has fired and filled (a fake fill) in attempt 1."""
    done: list[str] = []
    monkeypatch.setattr(inject_mod, "fill_disk", lambda path: done.append("fill") or "filled the disk")
    monkeypatch.setattr(inject_mod, "free_disk", lambda path: done.append("free") or "removed the filler")
    clock = Clock()
    inj = Injector(schedule_of((FaultKind.DISK_FULL, 12)), tmp_path, clock=clock)
    assert inj.on_tick(obs(11)) == []
    (fill,) = inj.on_tick(obs(12))
    assert isinstance(fill, FileEffect) and fill.fault == {"fault": "disk-full", "target_step": 12}
    assert fill.apply() == "filled the disk" and done == ["fill"]
    assert inj.on_tick(obs(13)) == []  # once
    return inj, clock, done


# (seconds after the fill, the tick's attempt, its phase) -> freed then?
FREE_CASES = [
    (0.5, 1, DISK_WAIT_PHASE, False),  # the worker is gone, but too soon
    (FREE_AFTER_S, 1, DISK_WAIT_PHASE, True),  # the supervisor waits for space: free it
    (FREE_AFTER_S, 2, "train", True),  # another attempt runs
    (FREE_AFTER_S, 1, "train", False),  # the filled worker still runs: its next write must find no space
    (FREE_ANYWAY_S - 0.1, 1, "train", False),
    (FREE_ANYWAY_S, 1, "train", True),  # whatever happened, not for ever
]


@pytest.mark.parametrize(("after", "attempt", "phase", "freed"), FREE_CASES)
def test_when_the_filler_is_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, after: float, attempt: int,
                                    phase: str, freed: bool) -> None:
    inj, clock, done = filled_injector(tmp_path, monkeypatch)
    clock.now += after
    actions = inj.on_tick(obs(None if phase == DISK_WAIT_PHASE else 14, attempt=attempt, phase=phase))
    assert len(actions) == int(freed)
    for a in actions:
        assert isinstance(a, FileEffect) and a.apply() == "removed the filler"
        assert a.fault == {"fault": "disk-full", "freed": True}
    assert done == (["fill", "free"] if freed else ["fill"])
    clock.now += FREE_AFTER_S
    later = inj.on_tick(obs(None, attempt=attempt, phase=DISK_WAIT_PHASE))
    assert len(later) == int(not freed)  # freed once: then, or at a disk-wait tick later


def test_the_fill_is_a_hit_of_the_attempt_that_exits_74(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inj, clock, done = filled_injector(tmp_path, monkeypatch)
    inj.on_exit(attempt_result(ExitClass.RESOURCE, attempt=1, last_step=16))
    (hit,) = inj.hits
    assert (hit.kind, hit.target_step, hit.attempt, hit.hit_step, hit.effect) == ("disk-full", 12, 1, 12,
                                                                                   "filled the disk")
    clock.now += FREE_AFTER_S
    assert len(inj.on_tick(obs(None, attempt=1, phase=DISK_WAIT_PHASE))) == 1  # freed after the fault moved on


def test_a_fill_not_applied_is_never_freed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inject_mod, "fill_disk", lambda path: "not applied: 250000 MiB free is more than ...")
    clock = Clock()
    inj = Injector(schedule_of((FaultKind.DISK_FULL, 3)), tmp_path, clock=clock)
    (fill,) = inj.on_tick(obs(3))
    fill.apply()
    clock.now += FREE_ANYWAY_S
    assert inj.on_tick(obs(None, phase=DISK_WAIT_PHASE)) == []


def test_a_real_disk_is_never_filled(tmp_path: Path) -> None:
    if shutil.disk_usage(tmp_path).free <= MAX_FILL:
        pytest.skip("this disk is small enough to be filled")
    assert fill_disk(tmp_path / FILLER).startswith("not applied: ")
    assert not (tmp_path / FILLER).exists()


def test_fill_and_free_a_real_tmpfs(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "1m") as disk:
        (disk / "kept").write_bytes(bytes(100_000))
        what = fill_disk(disk / FILLER)
        assert what.startswith(f"filled the disk with {FILLER}: ") and what.endswith(", 0 bytes left")
        with pytest.raises(OSError) as got, open(disk / "next", "wb") as f:
            f.write(bytes(4096))
        assert got.value.errno == 28
        assert free_disk(disk / FILLER).startswith(f"removed {FILLER}: ")
        assert shutil.disk_usage(disk).free > 800_000 and (disk / "kept").stat().st_size == 100_000
        assert free_disk(disk / FILLER) == f"{FILLER} was gone already"


def test_disk_full_is_opt_in() -> None:
    assert FaultKind.DISK_FULL in OPT_IN_KINDS and FaultKind.DISK_FULL not in DEFAULT_KINDS
    # The defaults keep their order: a seed's schedule is the one it always was.
    assert [k.value for k in DEFAULT_KINDS] == ["sigkill", "sigterm", "checkpoint-write", "corrupt-checkpoint",
                                                "hang", "crash"]
    assert os.sep not in FILLER and FILLER.startswith(".")
