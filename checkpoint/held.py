"""The newest committed checkpoint, held in memory and verified ahead of need: what a warm spare keeps
while it waits, so that taking over reads and hashes nothing (Gemini's in-memory checkpoints, on one
machine).

The spare polls the store (:meth:`Holder.poll`): each newly committed checkpoint is read and verified,
every byte, and replaces the one held - at most one copy at a time, the older one dropped before the
newer is read. Given a ``preload``, the verified copy is also put into the job's objects at once and
its bytes dropped: then even the copy into tensors is off the restart's critical path. At takeover
(:meth:`Holder.take`) the held copy is used iff it is still the newest committed checkpoint, manifest
byte for byte (:func:`use_held`); anything else - a newer commit, a manifest rewritten, nothing held -
goes the usual way, from disk, with its fallback past corrupt checkpoints.

How much it may hold (:func:`may_hold`): ``on``, anything; ``off``, nothing (the spare restores from
disk, as before); ``auto``, a checkpoint no bigger than half the memory available, so that the
held copy and the transient copies of decoding it fit with room to spare for everyone else.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

from .store import Checkpoint, CheckpointStore, CorruptCheckpoint, read_manifest

__all__ = ["MemoryMode", "RestoredFrom", "Held", "Holder", "parse_mode", "may_hold", "use_held", "manifest_size",
           "mem_available"]

MEMINFO = Path("/proc/meminfo")


class MemoryMode(StrEnum):
    """Whether a spare holds the newest checkpoint in memory (``--standby-memory``)."""

    ON = "on"
    OFF = "off"
    AUTO = "auto"  # on while the checkpoint is at most half the memory available


class RestoredFrom(StrEnum):
    """Where a worker's restored checkpoint came from (``attempt-started``'s ``restored_from``)."""

    MEMORY = "memory"  # a copy a spare held, verified while it waited
    DISK = "disk"  # read and verified at restore


def parse_mode(text: str | None) -> MemoryMode:
    """The mode a variable or flag names; unset or empty is ``auto``. ValueError for anything else."""
    if not text:
        return MemoryMode.AUTO
    try:
        return MemoryMode(text.strip().lower())
    except ValueError:
        raise ValueError(f"standby memory must be on, off or auto, not {text!r}") from None


def may_hold(mode: MemoryMode, size: int, available: int | None) -> bool:
    """Whether a checkpoint of ``size`` bytes may be held, ``available`` bytes of memory being free
    (None: unknown)."""
    if mode is MemoryMode.OFF:
        return False
    if mode is MemoryMode.ON:
        return True
    return available is not None and 2 * size <= available


def use_held(held_name: str | None, held_manifest: bytes | None, newest: str | None,
             newest_manifest: bytes | None) -> bool:
    """Whether to restore from the held copy: it is the newest committed checkpoint, and that
    checkpoint's manifest on disk is, byte for byte, the one the copy was verified against."""
    return (held_name is not None and held_manifest is not None and newest == held_name
            and newest_manifest == held_manifest)


def manifest_size(name: str, raw: bytes) -> int | None:
    """The bytes a checkpoint's files add up to, as its manifest says; None for a manifest that does
    not check (the checkpoint is not one: nothing to hold)."""
    try:
        files = read_manifest(name, raw)["files"]
    except CorruptCheckpoint:
        return None
    return sum(int(e["size"]) for e in files.values())


def mem_available(meminfo: Path = MEMINFO) -> int | None:
    """The kernel's estimate of memory available without swapping (``MemAvailable``), in bytes."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


@dataclass(frozen=True)
class Held:
    """The copy held: the checkpoint (its files dropped once ``applied``), its manifest's bytes, and
    how long reading and verifying it took."""

    checkpoint: Checkpoint
    manifest: bytes
    applied: bool = False
    verify_s: float = 0.0

    @property
    def name(self) -> str:
        return self.checkpoint.name


class Holder:
    """A spare's copy of the newest committed checkpoint of ``store``.

    ``check``: a further test the copy must pass (as for :meth:`CheckpointStore.load_latest`);
    ``preload``: puts a verified copy into the job's objects (after which its bytes are dropped);
    ``release``: lets the job's objects drop what they still hold of the copy preloaded before (a
    framework may keep views of its bytes until the first step), called before a newer one is read.
    Nothing is written: a spare touches nothing shared while it waits, and a checkpoint that fails
    verification here is left where it is for the restore to deal with."""

    def __init__(self, store: CheckpointStore, mode: MemoryMode, *,
                 check: Callable[[Checkpoint], None] | None = None,
                 preload: Callable[[Checkpoint], None] | None = None,
                 release: Callable[[], None] | None = None,
                 available: Callable[[], int | None] = mem_available,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.mode = store, mode
        self._check, self._preload, self._release = check, preload, release
        self._available, self._clock = available, clock
        self.held: Held | None = None
        self.preloaded = False  # the job's objects were changed: a restore must overwrite them all
        self._passed: tuple[str, bytes] | None = None  # the newest, not held (too big, corrupt): not read again

    def _newest(self) -> tuple[str, bytes] | None:
        committed = self.store.committed()
        if not committed:
            return None
        raw = self.store.manifest_bytes(committed[-1])
        return None if raw is None else (committed[-1], raw)

    def poll(self) -> None:
        """Hold the newest committed checkpoint if it is not held already (and may be)."""
        if self.mode is MemoryMode.OFF:
            return
        newest = self._newest()
        if newest is None or newest == self._passed:
            return
        held = self.held
        if held is not None and use_held(held.name, held.manifest, *newest):
            return
        self.held = None  # dropped before the newer copy is read: one copy at most
        if self.preloaded and self._release is not None:
            self._release()
        name, raw = newest
        size = manifest_size(name, raw)
        if size is None or not may_hold(self.mode, size, self._available()):
            self._passed = newest
            return
        self._hold(name)

    def _hold(self, name: str) -> None:
        t0 = self._clock()
        try:
            raw, ckpt = self.store.verify_with_manifest(name)
            if self._check is not None:
                self._check(ckpt)
        except CorruptCheckpoint:  # torn, rewritten or pruned under us: the restore sees to it
            manifest = self.store.manifest_bytes(name)
            self._passed = (name, manifest) if manifest is not None else None
            return
        took = self._clock() - t0
        if self._preload is None:
            self.held = Held(ckpt, raw, verify_s=took)
            return
        if self._newest() != (name, raw):
            return  # a newer one committed while this one was read: load that instead (the next poll)
        self.preloaded = True
        try:
            self._preload(ckpt)
        except Exception:  # it does not fit the job: the restore applies it again and says why
            self.held = Held(ckpt, raw, verify_s=took)
            return
        self.held = Held(replace(ckpt, files={}), raw, applied=True, verify_s=took)

    def take(self) -> Held | None:
        """At takeover: the held copy if it is still the newest committed checkpoint (see
        :func:`use_held`), else None (restore from disk). Either way the holder lets go of it."""
        held, self.held = self.held, None
        if held is None:
            return None
        newest = self._newest()
        if newest is None or not use_held(held.name, held.manifest, *newest):
            return None
        return held
