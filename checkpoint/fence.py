"""Fencing: one supervisor at a time writes to a remote store.

A supervisor that starts takes the next generation: it creates ``fence/gen-NNNNNNNNN`` for n = the
newest + 1, create-only. Generations only grow. Where create-only writes are atomic
(:attr:`~checkpoint.objects.ObjectStore.atomic_create`: S3 with ``If-None-Match: *``, a local
directory, memory) no two supervisors hold the same one: the loser of a race finds the key taken and
takes the next number, so the supervisor that started last holds the newest. Every commit checks that
its generation is still the newest; a stale writer is refused with :class:`StaleGeneration`.

The race window, honestly: an object store has no transaction over two keys, so "check the fence,
then write the manifest" is two requests. A writer that passes its check just before a newer
supervisor takes a generation can still commit that one checkpoint. It checks again after the commit
and, overtaken, deletes the manifest it wrote and raises; a reader that listed the store in between
may have seen it (a complete, verified checkpoint, so loading it is safe), and create-only manifests
keep it from replacing one the newer generation committed for the same step. Where create-only writes
are not atomic (fsspec checks, then writes: gs:// and others), two supervisors that start within the
same moment can both take the same generation, and neither is fenced until a third one starts.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterable

from .objects import ObjectStore, StoreError

__all__ = ["FENCE", "Fence", "StaleGeneration", "generation_key", "newest_generation"]

FENCE = "fence"
_GEN = re.compile(r"^gen-(\d{9})$")


class StaleGeneration(StoreError):
    """A newer supervisor has taken over the store; this writer must stop writing to it."""


def generation_key(n: int) -> str:
    return f"{FENCE}/gen-{n:09d}"


def newest_generation(keys: Iterable[str]) -> int:
    """The highest generation among the keys under ``fence/``; 0 when none was ever taken."""
    gens = [int(m.group(1)) for k in keys if (m := _GEN.match(k.rsplit("/", 1)[-1]))]
    return max(gens, default=0)


class Fence:
    """The generation this writer holds in one store, and the check that it is still the newest."""

    def __init__(self, objects: ObjectStore, generation: int | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.objects = objects
        self.generation = generation
        self._clock = clock

    def newest(self) -> int:
        return newest_generation(self.objects.find(FENCE))

    def acquire(self, *, tries: int = 16) -> int:
        """Take the next generation (a supervisor does this once, when it starts) and hold it."""
        for _ in range(tries):
            n = self.newest() + 1
            owner = {"generation": n, "host": socket.gethostname(), "pid": os.getpid(), "time": self._clock()}
            try:
                self.objects.write(generation_key(n), json.dumps(owner).encode("utf-8"), create_only=True)
            except FileExistsError:
                continue  # another supervisor took n just now: it is older than we will be
            self.generation = n
            return n
        raise StoreError(f"remote store {self.objects.url}: no generation taken in {tries} tries; "
                         "are many supervisors starting at once?")

    def check(self, doing: str) -> None:
        """Raise :class:`StaleGeneration` if a newer generation exists, :class:`StoreError` if this
        writer holds none, or one the store never saw."""
        if self.generation is None:
            raise StoreError(f"remote store {self.objects.url}: to {doing} a writer needs a generation "
                             "(acquire() when the supervisor starts, or generation= from it)")
        newest = self.newest()
        if newest > self.generation:
            raise StaleGeneration(f"remote store {self.objects.url}: generation {self.generation} was superseded "
                                  f"by generation {newest} (another supervisor took over); refusing to {doing}")
        if newest < self.generation:
            raise StoreError(f"remote store {self.objects.url}: generation {self.generation} was never taken "
                             f"there (newest: {newest}); refusing to {doing}")
