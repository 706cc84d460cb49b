"""The shared-memory snapshot buffer, in one process: where each array goes (a table), which arrays
count as unchanging (a table), and that the writer's read-only mapping of the buffer holds exactly
what was copied, whatever changed between copies - with a deliberately wrong notion of "unchanging"
caught by the same check."""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from checkpoint import snapshot_buffer
from checkpoint.snapshot_buffer import ALIGN, Layout, SnapshotBuffer, aligned, buffer_files, is_static, plan_layout
from checkpoint.state import StateArrays

F = "f.safetensors"


def frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


LAYOUTS: dict[str, tuple[list[tuple[str, str, tuple[int, ...], bool]], list[int], int]] = {
    # name: ([(name, dtype, shape, static)], the offsets, the size)
    "one array, padded to the alignment": ([("w", "<f4", (2, 3), False)], [0], 64),
    "back to back, each aligned": ([("a", "<f8", (10,), False), ("b", "<i4", (3,), False)], [0, 128], 192),
    "exactly a multiple of the alignment": ([("a", "<f4", (16,), False), ("b", "|u1", (1,), False)], [0, 64], 128),
    "static arrays after the changing ones, in order": (
        [("s1", "<i8", (5,), True), ("w", "<f4", (4,), False), ("s2", "|u1", (100,), True)], [64, 0, 128], 256),
    "a 0-d array and an empty one": (
        [("count", "<i8", (), False), ("empty", "<f2", (0, 4), False), ("x", "|u1", (1,), False)], [0, 64, 64], 128),
    "nothing": ([], [], 0),
}


@pytest.mark.parametrize("case", list(LAYOUTS))
def test_plan_layout_puts_changing_arrays_first_each_aligned(case: str) -> None:
    specs, offsets, size = LAYOUTS[case]
    key = tuple((F, name, np.dtype(dt), shape) for name, dt, shape, _ in specs)
    layout, got_size = plan_layout(key, [static for *_, static in specs])
    assert layout == [[F, name, dt, list(shape), off] for (name, dt, shape, _), off in zip(specs, offsets)]
    assert got_size == size


@pytest.mark.parametrize(("n", "want"), [(0, 0), (1, ALIGN), (ALIGN, ALIGN), (ALIGN + 1, 2 * ALIGN)])
def test_aligned_rounds_up_to_the_alignment(n: int, want: int) -> None:
    assert aligned(n) == want


STATIC: dict[str, tuple[Callable[[], np.ndarray], bool]] = {
    "a writable array": (lambda: np.zeros(3), False),
    "read-only, owning its memory": (lambda: frozen(np.zeros(3)), True),
    "a read-only view of a writable array": (lambda: frozen(np.zeros(3)[1:]), False),
    "read-only over bytes": (lambda: np.frombuffer(b"abc", dtype=np.uint8), False),
}


@pytest.mark.parametrize("case", list(STATIC))
def test_only_read_only_arrays_that_own_their_memory_are_static(case: str) -> None:
    make, want = STATIC[case]
    assert is_static(make()) is want


class Reader:
    """The writer's side: maps each new buffer read-only and reads the arrays by the last layout."""

    def __init__(self) -> None:
        self.mm: mmap.mmap | None = None
        self.layout: Layout = []

    def take(self, buf: SnapshotBuffer) -> tuple[bool, bool]:
        """Take what ``buf`` has for the writer; whether there was a new buffer and a new layout."""
        fd, layout = buf.take_fd(), buf.take_layout()
        if fd is not None:
            self.mm = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
            os.close(fd)
        if layout is not None:
            self.layout = layout
        return fd is not None, layout is not None

    def files(self) -> dict[str, dict[str, np.ndarray]]:
        assert self.mm is not None
        return buffer_files(self.mm, self.layout)


def mismatches(state: StateArrays, files: dict[str, dict[str, np.ndarray]]) -> list[str]:
    """The arrays of ``state`` that ``files`` does not hold exactly."""
    want = {(f, k): a for f, arrays in state.files.items() for k, a in arrays.items()}
    got = {(f, k): a for f, arrays in files.items() for k, a in arrays.items()}
    bad = sorted(f"{f}/{k}" for f, k in want.keys() ^ got.keys())
    for fk in want.keys() & got.keys():
        w, g = want[fk], got[fk]
        if w.dtype != g.dtype or w.shape != g.shape or w.tobytes() != g.tobytes():
            bad.append("/".join(fk))
    return bad


def copy_and_read(buf: SnapshotBuffer, reader: Reader, state: StateArrays) -> tuple[list[str], tuple[bool, bool]]:
    done = buf.copy(state)
    news = reader.take(buf)
    return mismatches(done, reader.files()), news


def moving_state() -> tuple[dict[str, Any], list[tuple[str, Callable[[], None], tuple[bool, bool]]]]:
    """Arrays of every kind, and moves made between copies with whether each should bring a new
    buffer and a new layout."""
    rng = np.random.default_rng(0)
    base = np.arange(40, dtype=np.int64)
    a: dict[str, Any] = {
        "w": rng.standard_normal((5, 3)).astype(np.float32),
        "t": rng.standard_normal((4, 6)).astype(np.float32).T,  # not C-contiguous
        "odd": rng.integers(0, 9, size=3).astype(np.int8),  # 3 bytes: padding after it
        "order": frozen(rng.permutation(50)),
        "window": frozen(base[5:25]),  # read-only, but a view of an array that changes
        "count": np.array(0),
        "empty": np.zeros((0, 2), dtype=np.float16),
    }

    def bump() -> None:
        for v in (a["w"], a["t"], a["odd"]):
            v += 1
        base[:] += 3
        a["count"][...] += 1

    def replace() -> None:
        a["w"] = a["w"] * 2

    def thaw() -> None:
        a["order"].flags.writeable = True
        a["order"][:4] = -1

    def refreeze() -> None:
        a["order"] = frozen(np.roll(a["order"], 1).copy())

    def grow() -> None:
        a["big"] = rng.standard_normal(10_000)

    def shrink() -> None:
        del a["big"]

    moves = [("nothing", lambda: None, (False, False)), ("contents", bump, (False, False)),
             ("a new array in a slot", replace, (False, False)), ("a static array thawed", thaw, (False, False)),
             ("a new static array", refreeze, (False, False)), ("a bigger state", grow, (True, True)),
             ("contents again", bump, (False, False)), ("a smaller state", shrink, (False, True)),
             ("contents at last", bump, (False, False))]
    return a, moves


def test_the_writers_mapping_holds_exactly_what_was_copied_whatever_changed() -> None:
    arrays, moves = moving_state()
    keys = np.arange(5, dtype=np.uint32)

    def late() -> StateArrays:
        return StateArrays({"late.safetensors": {"keys": keys}}, {"rng": 1})

    def state() -> StateArrays:
        return StateArrays({F: dict(arrays)}, {"step": 1}, late=late)

    buf, reader = SnapshotBuffer(), Reader()
    bad, news = copy_and_read(buf, reader, state())
    assert bad == [] and news == (True, True)
    for what, move, want_news in moves:
        move()
        keys += 1
        bad, news = copy_and_read(buf, reader, state())
        assert bad == [], f"after {what}"
        assert news == want_news, f"after {what}: (a new buffer, a new layout)"
    assert not arrays["order"].flags.writeable  # copying did not make it writable


def test_a_wrong_notion_of_unchanging_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Taken as unchanging, a read-only view of a changing array is left stale in the buffer: the
    check above sees it."""
    monkeypatch.setattr(snapshot_buffer, "is_static", lambda a: not a.flags.writeable)
    base = np.arange(10.0)
    window = frozen(base[2:8])
    buf, reader = SnapshotBuffer(), Reader()
    assert copy_and_read(buf, reader, StateArrays({F: {"window": window}}, {}))[0] == []
    base += 1
    assert copy_and_read(buf, reader, StateArrays({F: {"window": window}}, {}))[0] == [f"{F}/window"]


def test_a_dropped_buffer_is_made_again_and_sent_anew() -> None:
    buf, reader = SnapshotBuffer(), Reader()
    x = np.arange(8.0)
    assert copy_and_read(buf, reader, StateArrays({F: {"x": x}}, {})) == ([], (True, True))
    buf.drop()
    x += 1
    assert copy_and_read(buf, reader, StateArrays({F: {"x": x}}, {})) == ([], (True, True))
