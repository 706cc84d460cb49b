"""Fencing: generations only grow, a race for one is lost to the next number, and a writer that is
not the newest - or holds none - is refused with one line and exit code 77."""

from __future__ import annotations

from pathlib import Path

import pytest

from checkpoint.fence import FENCE, Fence, StaleGeneration, generation_key, newest_generation
from checkpoint.objects import ObjectStore, StoreError
from rundir.exitcodes import ExitCode


@pytest.mark.parametrize(("keys", "newest"), [
    ([], 0),
    ([generation_key(1)], 1),
    ([generation_key(3), generation_key(12), generation_key(7)], 12),
    ([f"{FENCE}/gen-000000002", f"{FENCE}/junk", f"{FENCE}/gen-5", f"{FENCE}/.gen-000000009.tmp-1"], 2),
])
def test_newest_generation(keys: list[str], newest: int) -> None:
    assert newest_generation(keys) == newest


def objects(tmp_path: Path) -> ObjectStore:
    return ObjectStore(f"file://{tmp_path}")


def test_each_start_takes_the_next_generation(tmp_path: Path) -> None:
    fences = [Fence(objects(tmp_path)) for _ in range(3)]
    assert [f.acquire() for f in fences] == [1, 2, 3]
    fences[2].check("commit")
    for f in fences[:2]:
        with pytest.raises(StaleGeneration) as e:
            f.check("commit")
        assert e.value.code == ExitCode.STORE and "\n" not in str(e.value)
        assert f"generation {f.generation} was superseded by generation 3" in str(e.value)


def racing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Fence, Fence]:
    """Two supervisors; ``slow`` first looks before ``fast`` takes generation 1, then writes after it."""
    slow, fast = Fence(objects(tmp_path)), Fence(objects(tmp_path))
    first_look = [0]
    real = slow.newest
    monkeypatch.setattr(slow, "newest", lambda: first_look.pop() if first_look else real())
    return slow, fast


def test_a_lost_race_moves_on_to_the_next_number(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    slow, fast = racing(tmp_path, monkeypatch)
    assert fast.acquire() == 1
    assert slow.acquire() == 2  # it tried 1, found the key taken, and took 2
    with pytest.raises(StaleGeneration):
        fast.check("commit")


def test_without_create_only_writes_the_race_is_lost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The broken variant: a store that overwrites. Both supervisors hold generation 1 and neither is
    fenced - the window fence.py's docstring admits for stores without conditional writes."""
    slow, fast = racing(tmp_path, monkeypatch)
    real_write = slow.objects.write
    monkeypatch.setattr(slow.objects, "write", lambda key, data, create_only=False: real_write(key, data))
    assert fast.acquire() == 1
    assert slow.acquire() == 1
    fast.check("commit")
    slow.check("commit")


def test_a_writer_needs_a_generation_the_store_knows(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="needs a generation"):
        Fence(objects(tmp_path)).check("upload")
    with pytest.raises(StoreError, match="never taken"):
        Fence(objects(tmp_path), generation=4).check("upload")
    Fence(objects(tmp_path)).acquire()
    Fence(objects(tmp_path), generation=1).check("upload")  # handed down from the supervisor
