"""Append-only JSON-lines files: the loss journal and the event log.

A kill can leave a torn last line. Readers skip lines that do not parse; writers end a torn line
before appending, so one torn record never swallows the next.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["JsonlWriter", "append_record", "read_records", "iter_records"]


def _end_torn_line(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return
            f.seek(-1, os.SEEK_END)
            last = f.read(1)
    except FileNotFoundError:
        return
    if last != b"\n":
        with open(path, "ab") as f:
            f.write(b"\n")


class JsonlWriter:
    """Keeps a JSON-lines file open and writes one flushed line per record."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        _end_torn_line(self.path)
        self._f: IO[str] = open(self.path, "a", encoding="utf-8", buffering=1)

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one record; for files written now and then (events), not every step."""
    _end_torn_line(Path(path))
    line = json.dumps(record, separators=(",", ":")) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


def iter_records(path: Path, start: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(offset_after_line, record)`` for each complete, parseable line from ``start``."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            offset = start
            for raw in f:
                if not raw.endswith(b"\n"):
                    return  # an unfinished line: the writer may still be on it, or was killed
                offset += len(raw)
                try:
                    rec = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(rec, dict):
                    yield offset, rec
    except FileNotFoundError:
        return


def read_records(path: Path) -> list[dict[str, Any]]:
    return [rec for _, rec in iter_records(Path(path))]
