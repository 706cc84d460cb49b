"""The supervisor's reads and writes of the run directory: the journals tailed as they grow, a
worker's last line in its log, and its own events, which survive a full disk.

Every one of them is an effect that must not bring the supervisor down: a malformed record is
skipped and counted, an unreadable log gives no line, an event that cannot be written (no space) is
dropped with one warning for the whole run of them, never a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rundir.errors import resource_cause
from rundir.events import EventKind, Source, record_event
from rundir.journal import Check, Skipped, iter_records

__all__ = ["Tail", "EventSink", "Fallbacks", "last_error_line"]


class Tail:
    """Reads the well-formed records appended to a JSON-lines file since the last call; malformed
    ones are skipped and counted (a worker's bug, or a crafted file, must not bring us down)."""

    def __init__(self, path: Path, check: Check) -> None:
        self.path = path
        self.offset = 0
        self.check = check
        self.skipped = Skipped()

    def read(self) -> list[dict[str, Any]]:
        out = []
        for _, rec in iter_records(self.path, self.offset, check=self.check, skipped=self.skipped):
            out.append(rec)
        self.offset = max(self.offset, self.skipped.end)  # past skipped lines too: each is counted once
        return out


class EventSink:
    """Appends ``source``'s events to ``path``. An event that cannot be written is dropped; the
    first of a run of them is said through ``warn``, once, until a write succeeds again."""

    def __init__(self, path: Path, source: Source, warn: Callable[[str], None]) -> None:
        self.path, self.source, self.warn = path, source, warn
        self.dropped = 0
        self._dropping = False

    def record(self, kind: EventKind, /, **fields: Any) -> None:
        try:
            record_event(self.path, self.source, kind, **fields)
        except OSError as exc:
            self.dropped += 1
            if not self._dropping:
                why = resource_cause(exc.errno) or exc.strerror or str(exc)
                self.warn(f"warning: cannot write {self.path} ({why}): dropping events until it can be written")
            self._dropping = True
        else:
            self._dropping = False


class Fallbacks:
    """The warnings a worker's checkpoint fallbacks deserve on the supervisor's terminal: each one
    past a corrupt checkpoint, and a restart from step 0 when none was valid (not when there was
    none yet: a run killed before its first checkpoint loses nothing it had saved)."""

    def __init__(self) -> None:
        self.fell_back: int | None = None  # the last attempt that fell back past a corrupt checkpoint

    def warnings(self, events: list[dict[str, Any]], attempt: int, high_water: int) -> list[str]:
        out = []
        for e in events:
            if e.get("event") == EventKind.CHECKPOINT_FALLBACK:
                self.fell_back = attempt
                out.append(f"warning: {e.get('reason')}")
            elif e.get("event") == EventKind.ATTEMPT_STARTED and not e.get("resumed_from_step") \
                    and self.fell_back == attempt:
                out.append(f"warning: attempt {attempt} found no valid checkpoint and restarts from step 0 "
                           f"({high_water + 1} steps to recompute)")
        return out


def last_error_line(log: Path, tail_bytes: int = 8192) -> str | None:
    """The worker's last non-empty output line: the exception or error message, usually."""
    try:
        with open(log, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - tail_bytes))
            lines = f.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.strip():
            return line.strip()
    return None
