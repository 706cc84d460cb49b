"""A spare's in-memory copy of the newest checkpoint: the decisions as tables (hold it? use it at
takeover?), then a :class:`Holder` over a real store in a temporary directory - it holds the newest,
one copy at most, never a stale or rewritten one at takeover, writes nothing, and a broken rule that
would restore a stale copy is caught here."""

from __future__ import annotations

from pathlib import Path

import pytest

import checkpoint.held as held_mod
from checkpoint.held import (
    Holder,
    MemoryMode,
    manifest_size,
    may_hold,
    mem_available,
    parse_mode,
    use_held,
)
from checkpoint.storage import LocalStorage
from checkpoint.store import MANIFEST, Checkpoint, CheckpointStore, CorruptCheckpoint, checkpoint_name

GB = 1 << 30


@pytest.mark.parametrize(("text", "mode"), [
    (None, MemoryMode.AUTO), ("", MemoryMode.AUTO), ("auto", MemoryMode.AUTO), ("on", MemoryMode.ON),
    ("OFF", MemoryMode.OFF), (" on ", MemoryMode.ON),
])
def test_parse_mode(text: str | None, mode: MemoryMode) -> None:
    assert parse_mode(text) is mode


def test_parse_mode_refuses_anything_else() -> None:
    with pytest.raises(ValueError, match="on, off or auto"):
        parse_mode("yes")


@pytest.mark.parametrize(("mode", "size", "available", "hold"), [
    (MemoryMode.OFF, 1, 100 * GB, False),
    (MemoryMode.ON, 100 * GB, 1, True),
    (MemoryMode.ON, 1, None, True),
    (MemoryMode.AUTO, GB, 2 * GB, True),  # exactly half the memory available
    (MemoryMode.AUTO, GB + 1, 2 * GB, False),
    (MemoryMode.AUTO, 0, 0, True),
    (MemoryMode.AUTO, 1, None, False),  # unknown: not held
])
def test_may_hold(mode: MemoryMode, size: int, available: int | None, hold: bool) -> None:
    assert may_hold(mode, size, available) is hold


@pytest.mark.parametrize(("held", "manifest", "newest", "on_disk", "use"), [
    ("step-5", b"m5", "step-5", b"m5", True),
    ("step-5", b"m5", "step-9", b"m9", False),  # a newer one committed after it: stale
    ("step-5", b"m5", "step-5", b"m5'", False),  # the same step saved again since
    ("step-5", b"m5", None, None, False),  # none left on disk
    ("step-5", b"m5", "step-5", None, False),  # its manifest is gone
    (None, None, "step-5", b"m5", False),  # nothing held
    ("step-9", b"m9", "step-5", b"m5", False),  # held one is no longer on disk
])
def test_use_held(held: str | None, manifest: bytes | None, newest: str | None, on_disk: bytes | None,
                  use: bool) -> None:
    assert use_held(held, manifest, newest, on_disk) is use


def test_mem_available_reads_meminfo(tmp_path: Path) -> None:
    f = tmp_path / "meminfo"
    f.write_text("MemTotal:       24000000 kB\nMemAvailable:    2000 kB\n")
    assert mem_available(f) == 2000 * 1024
    f.write_text("MemTotal: 1 kB\n")
    assert mem_available(f) is None
    assert mem_available(tmp_path / "none") is None


# -- a holder over a real store ---------------------------------------------------------------------------


def save(store: CheckpointStore, step: int, fill: bytes = b"x", size: int = 1000) -> str:
    return store.save(step, {"model.safetensors": fill * size, "train.safetensors": b"t" * 10}, {"step": step},
                      durable=False)


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore(LocalStorage(tmp_path / "run"), keep=3)


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_it_holds_the_newest_verified_and_takes_it_while_still_the_newest(store: CheckpointStore) -> None:
    h = Holder(store, MemoryMode.ON)
    h.poll()
    assert h.held is None  # nothing committed yet
    save(store, 5)
    h.poll()
    assert h.held is not None and h.held.name == checkpoint_name(5) and not h.held.applied
    assert h.held.checkpoint.files["model.safetensors"] == b"x" * 1000
    assert manifest_size("step-000000005", h.held.manifest) == 1010
    taken = h.take()
    assert taken is not None and taken.checkpoint.step == 5
    assert h.held is None  # let go of


def test_one_copy_at_most_the_older_dropped_for_the_newer(store: CheckpointStore) -> None:
    h = Holder(store, MemoryMode.ON)
    save(store, 5)
    h.poll()
    first = h.held
    h.poll()  # nothing new: the same copy, not read again
    assert h.held is first
    save(store, 10)
    h.poll()
    assert h.held is not None and h.held.name == checkpoint_name(10)


def test_a_stale_copy_is_not_taken(store: CheckpointStore) -> None:
    h = Holder(store, MemoryMode.ON)
    save(store, 5)
    h.poll()
    save(store, 10)  # committed after it, never polled
    assert h.take() is None


def test_a_rewritten_manifest_is_not_taken(store: CheckpointStore) -> None:
    h = Holder(store, MemoryMode.ON)
    save(store, 5)
    h.poll()
    save(store, 5, fill=b"y")  # the same step saved again, other bytes
    assert h.take() is None


def test_the_broken_rule_that_ignores_a_newer_commit_is_caught(store: CheckpointStore,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The check the tests above make bites: a rule that trusts the name alone restores a stale copy."""
    monkeypatch.setattr(held_mod, "use_held", lambda name, manifest, newest, on_disk: name is not None)
    h = Holder(store, MemoryMode.ON)
    save(store, 5)
    h.poll()
    save(store, 10)
    taken = h.take()
    assert taken is not None and taken.checkpoint.step == 5  # stale: what test_a_stale_copy_is_not_taken refuses


def test_a_corrupt_checkpoint_is_left_alone_and_not_read_again(store: CheckpointStore, tmp_path: Path) -> None:
    name = save(store, 5)
    data = tmp_path / "run" / "checkpoints" / name / "model.safetensors"
    data.write_bytes(b"z" * 1000)
    before = files_under(tmp_path / "run")
    reads: list[str] = []
    verify = store.verify_with_manifest

    def counted(n: str) -> tuple[bytes, Checkpoint]:
        reads.append(n)
        return verify(n)

    store.verify_with_manifest = counted  # type: ignore[method-assign]
    h = Holder(store, MemoryMode.ON)
    h.poll()
    h.poll()
    assert h.held is None and reads == [name]
    assert files_under(tmp_path / "run") == before  # not moved aside: the restore does that
    assert h.take() is None


def test_auto_holds_nothing_bigger_than_half_the_memory_available(store: CheckpointStore) -> None:
    save(store, 5)
    small = Holder(store, MemoryMode.AUTO, available=lambda: 2020)
    small.poll()
    assert small.held is not None
    short = Holder(store, MemoryMode.AUTO, available=lambda: 2019)
    short.poll()
    assert short.held is None and short.take() is None
    off = Holder(store, MemoryMode.OFF)
    off.poll()
    assert off.held is None


def test_a_preload_puts_the_copy_into_the_job_and_drops_its_bytes(store: CheckpointStore) -> None:
    applied: list[int] = []
    h = Holder(store, MemoryMode.ON, preload=lambda c: applied.append(c.step))
    save(store, 5)
    h.poll()
    save(store, 10)
    h.poll()
    assert applied == [5, 10] and h.preloaded
    assert h.held is not None and h.held.applied and h.held.checkpoint.files == {}
    taken = h.take()
    assert taken is not None and taken.applied and taken.checkpoint.meta == {"step": 10}


def test_a_preload_that_fails_keeps_the_bytes_for_the_restore_to_apply(store: CheckpointStore) -> None:
    def refuse(c: Checkpoint) -> None:
        raise ValueError("does not fit")

    h = Holder(store, MemoryMode.ON, preload=refuse)
    save(store, 5)
    h.poll()
    assert h.preloaded and h.held is not None and not h.held.applied and h.held.checkpoint.files


def test_a_check_that_fails_is_not_held(store: CheckpointStore) -> None:
    def check(c: Checkpoint) -> None:
        raise CorruptCheckpoint("a rank's part is missing")

    h = Holder(store, MemoryMode.ON, check=check)
    save(store, 5)
    h.poll()
    assert h.held is None


def test_a_checkpoint_pruned_while_read_is_passed(store: CheckpointStore, tmp_path: Path) -> None:
    name = save(store, 5)
    verify = store.verify_with_manifest

    def pruned(n: str) -> tuple[bytes, Checkpoint]:
        (tmp_path / "run" / "checkpoints" / n / MANIFEST).unlink()
        return verify(n)

    store.verify_with_manifest = pruned  # type: ignore[method-assign]
    h = Holder(store, MemoryMode.ON)
    h.poll()
    assert h.held is None and name not in store.committed()


def test_a_copy_outdated_while_it_was_read_is_not_preloaded(store: CheckpointStore) -> None:
    applied: list[int] = []
    h = Holder(store, MemoryMode.ON, preload=lambda c: applied.append(c.step))
    save(store, 5)
    verify = store.verify_with_manifest

    def then_a_newer_one(n: str) -> tuple[bytes, Checkpoint]:
        got = verify(n)
        save(store, 10)  # committed while step 5 was being read
        return got

    store.verify_with_manifest = then_a_newer_one  # type: ignore[method-assign]
    h.poll()
    assert applied == [] and h.held is None and not h.preloaded
    store.verify_with_manifest = verify  # type: ignore[method-assign]
    h.poll()
    assert applied == [10] and h.held is not None and h.held.name == checkpoint_name(10)


def test_the_job_lets_go_of_the_older_copy_before_the_newer_is_read(store: CheckpointStore) -> None:
    order: list[str] = []
    verify = store.verify_with_manifest

    def read(n: str) -> tuple[bytes, Checkpoint]:
        order.append(f"read {n}")
        return verify(n)

    store.verify_with_manifest = read  # type: ignore[method-assign]
    h = Holder(store, MemoryMode.ON, preload=lambda c: order.append(f"preload {c.step}"),
               release=lambda: order.append("release"))
    save(store, 5)
    h.poll()
    save(store, 10)
    h.poll()
    assert order == ["read step-000000005", "preload 5", "release", "read step-000000010", "preload 10"]
