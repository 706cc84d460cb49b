"""Waiting out a full disk (runner/diskwait.py): the decision as a table, the delays, what enough
space is, and the waits themselves with a fake clock and a fake file system. Broken decisions must
fail the table."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rundir.events import EventKind
from runner import diskwait
from runner.diskwait import (
    HEADROOM,
    DiskAction,
    DiskWait,
    checkpoint_bytes,
    decide,
    give_up_message,
    mib,
    need_bytes,
    poll_delay,
    restart_delay,
)

W, R, G = DiskAction.WAIT, DiskAction.RESTART, DiskAction.GIVE_UP
MiB = 1 << 20

DECISIONS = [
    # free, need, waited, limit -> action
    (0, 4 * MiB, 0.0, 600.0, W),
    (4 * MiB - 1, 4 * MiB, 10.0, 600.0, W),  # one byte short is not enough
    (4 * MiB, 4 * MiB, 10.0, 600.0, R),  # exactly enough is
    (100 * MiB, 4 * MiB, 0.0, 600.0, R),  # the first look: space is there (a quota, an I/O error?)
    (100 * MiB, 4 * MiB, 599.9, 600.0, R),
    (0, 4 * MiB, 599.9, 600.0, W),
    (0, 4 * MiB, 600.0, 600.0, G),  # the bound, reached
    (0, 4 * MiB, 900.0, 600.0, G),
    (100 * MiB, 4 * MiB, 600.0, 600.0, G),  # a stretch that kept failing with space free ends too
    (100 * MiB, 4 * MiB, 0.0, 0.0, G),  # --disk-wait 0: never restart after an exit 74
]


@pytest.mark.parametrize(("free", "need", "waited", "limit", "action"), DECISIONS)
def test_decide(free: int, need: int, waited: float, limit: float, action: DiskAction) -> None:
    assert decide(free, need, waited, limit) is action


# Broken on purpose: each must fail at least one row of the table above.
def restarts_regardless(free: int, need: int, waited: float, limit: float) -> DiskAction:
    return R if waited < limit else G


def never_gives_up(free: int, need: int, waited: float, limit: float) -> DiskAction:
    return R if free >= need else W


def space_wins_over_the_bound(free: int, need: int, waited: float, limit: float) -> DiskAction:
    return R if free >= need else G if waited >= limit else W


def one_byte_short_is_enough(free: int, need: int, waited: float, limit: float) -> DiskAction:
    return G if waited >= limit else R if free >= need - 1 else W


@pytest.mark.parametrize("broken", [restarts_regardless, never_gives_up, space_wins_over_the_bound,
                                    one_byte_short_is_enough], ids=lambda f: f.__name__)
def test_a_broken_decision_fails_the_table(broken: Callable[..., DiskAction]) -> None:
    assert any(broken(f, n, w, lim) is not a for f, n, w, lim, a in DECISIONS)


@pytest.mark.parametrize(("polls", "delay"), [(0, 0.25), (1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 5.0), (50, 5.0)])
def test_poll_delay_backs_off_to_five_seconds(polls: int, delay: float) -> None:
    assert poll_delay(polls) == delay


@pytest.mark.parametrize(("restarts", "delay"), [(0, 0.0), (1, 0.5), (2, 1.0), (3, 2.0), (6, 16.0), (7, 30.0),
                                                 (100, 30.0)])
def test_restart_delay_backs_off_to_thirty_seconds(restarts: int, delay: float) -> None:
    assert restart_delay(restarts) == delay


@pytest.mark.parametrize(("ckpt", "need"), [(0, HEADROOM), (-5, HEADROOM), (172 * 1024, 344 * 1024 + HEADROOM),
                                            (3 * MiB, 7 * MiB)])
def test_need_is_twice_the_newest_checkpoint_and_a_mebibyte(ckpt: int, need: int) -> None:
    assert need_bytes(ckpt) == need


def test_checkpoint_bytes_is_the_newest_committed_one(tmp_path: Path) -> None:
    ck = tmp_path / "checkpoints"
    assert checkpoint_bytes(tmp_path) == 0
    for step, size, committed in [(5, 1000, True), (10, 3000, True), (15, 9000, False)]:
        d = ck / f"step-{step:09d}"
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(bytes(size))
        if committed:
            (d / "MANIFEST.json").write_text("{}")
    (ck / "corrupt-step-000000099-0").mkdir()
    assert checkpoint_bytes(tmp_path) == 3000 + 2  # step 10: step 15 is torn, without a manifest


@pytest.mark.parametrize(("n", "text"), [(0, "0 MiB"), (100 * 1024, "0.1 MiB"), (4 * MiB, "4 MiB"),
                                         (int(1.34 * MiB), "1.3 MiB")])
def test_mib(n: int, text: str) -> None:
    assert mib(n) == text


def test_give_up_message_says_full_or_not() -> None:
    full = give_up_message(Path("/r"), 100 * 1024, 4 * MiB, 600.0)
    assert full == ("disk full at /r: no space for 600 s (0.1 MiB free, need 4 MiB); free some space and rerun the "
                    "same command to continue")
    assert "although 100 MiB is free (a quota, or an I/O error?)" in give_up_message(Path("/r"), 100 * MiB, MiB, 60.0)


# -- the waits, with a fake clock and a fake file system ----------------------------------------------------


class Fake:
    """A clock that moves when slept on, free space as a function of it, and what was said."""

    def __init__(self, free: Callable[[float], int], stop_at: float | None = None) -> None:
        self.now, self.free_at, self.stop_at = 0.0, free, stop_at
        self.slept: list[float] = []
        self.events: list[tuple[EventKind, dict[str, Any]]] = []
        self.notes: list[str] = []
        self.ticks: list[tuple[float, int]] = []

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s

    def record(self, kind: EventKind, /, **fields: Any) -> None:
        self.events.append((kind, fields))

    def waiter(self, run_dir: Path, limit: float = 60.0) -> DiskWait:
        return DiskWait(run_dir, limit, sleep=self.sleep, clock=lambda: self.now, record=self.record,
                        note=self.notes.append, stopped=lambda: self.stop_at is not None and self.now >= self.stop_at,
                        tick=lambda a: self.ticks.append((self.now, a)), free=lambda p: self.free_at(self.now))


def test_waits_with_back_off_until_space_returns_and_says_so_once(tmp_path: Path) -> None:
    fake = Fake(lambda t: 0 if t < 3.0 else 50 * MiB)
    assert fake.waiter(tmp_path).wait(attempt=4, made_progress=True) is R
    assert fake.slept == [0.25, 0.5, 1.0, 2.0]  # looks at 0, 0.25, 0.75, 1.75, 3.75
    assert [k for k, _ in fake.events] == [EventKind.DISK_FULL, EventKind.DISK_SPACE_RETURNED]
    full, back = (f for _, f in fake.events)
    assert full == {"attempt": 4, "path": str(tmp_path), "free_bytes": 0, "need_bytes": HEADROOM, "limit_s": 60.0,
                    "waited_s": 0.0}
    assert (back["free_bytes"], back["waited_s"]) == (50 * MiB, 3.75)
    assert fake.notes == [f"disk full at {tmp_path}: waiting up to 60 s for space (0 MiB free, need 1 MiB)",
                          f"space is back at {tmp_path} (50 MiB free after 3.8 s): restarting"]
    assert [a for _, a in fake.ticks] == [4] * 5  # chaos ticks at every look, before it


def test_gives_up_at_the_bound_exactly(tmp_path: Path) -> None:
    fake = Fake(lambda t: 1000)
    waiter = fake.waiter(tmp_path, limit=10.0)
    assert waiter.wait(attempt=1, made_progress=False) is G
    assert sum(fake.slept) == 10.0 and fake.slept[-1] == 10.0 - 7.75  # the last sleep ends at the bound
    assert waiter.last == (1000, HEADROOM)
    assert [k for k, _ in fake.events] == [EventKind.DISK_FULL]
    assert len(fake.notes) == 1


def test_a_stop_request_ends_the_wait(tmp_path: Path) -> None:
    fake = Fake(lambda t: 0, stop_at=1.0)
    assert fake.waiter(tmp_path).wait(attempt=1, made_progress=False) is None


def test_space_that_is_there_restarts_at_once_then_after_growing_pauses(tmp_path: Path) -> None:
    # A quota or an I/O error: free space looks fine, and the worker exits 74 again and again.
    fake = Fake(lambda t: 50 * MiB)
    waiter = fake.waiter(tmp_path, limit=20.0)
    actions = [waiter.wait(attempt=n, made_progress=False) for n in range(1, 8)]
    assert actions == [R, R, R, R, R, R, G]
    assert fake.slept == [0.5, 1.0, 2.0, 4.0, 8.0, 4.5]  # the last pause ends at the bound: 20 s
    assert fake.events == [] and len(fake.notes) == 6
    assert fake.notes[0] == f"attempt 1 could not write (exit 74), yet {tmp_path} has 50 MiB free: restarting"


def test_progress_starts_a_new_stretch(tmp_path: Path) -> None:
    fake = Fake(lambda t: 50 * MiB)
    waiter = fake.waiter(tmp_path, limit=20.0)
    for n in range(1, 10):
        fake.now += 15.0  # each attempt trains a while, gains steps, then finds the disk full
        assert waiter.wait(attempt=n, made_progress=True) is R
    assert fake.slept == []


def test_the_need_follows_the_newest_checkpoint(tmp_path: Path) -> None:
    d = tmp_path / "checkpoints" / "step-000000010"
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(bytes(MiB))
    (d / "MANIFEST.json").write_text(json.dumps({}))
    fake = Fake(lambda t: 3 * MiB if t < 1 else 4 * MiB)  # 3 MiB is not enough for 2 x 1 MiB + 1 MiB + 4 bytes
    assert fake.waiter(tmp_path).wait(attempt=1, made_progress=False) is R
    assert fake.events[0][1]["need_bytes"] == 3 * MiB + 4


def test_free_bytes_of_a_real_directory(tmp_path: Path) -> None:
    assert diskwait.free_bytes(tmp_path) > 0
