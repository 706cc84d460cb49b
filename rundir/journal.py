"""Append-only JSON-lines files: the loss journal and the event log.

A kill can leave a torn last line. Readers skip lines that do not parse; writers end a torn line
before appending, so one torn record never swallows the next.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


#: One encoder for every line: ``json.dumps`` with options builds a new one per call.
_encode = json.JSONEncoder(separators=(",", ":")).encode


class JsonlWriter:
    """Keeps a JSON-lines file open and appends one line per record with a single ``write``, so a
    line is in the file, for other processes to read, as soon as ``write()`` returns."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        _end_torn_line(self.path)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def write(self, record: dict[str, Any]) -> None:
        if self._fd is None:
            raise ValueError(f"{self.path}: write to a closed journal")
        _write_all(self._fd, (_encode(record) + "\n").encode("utf-8"))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _write_all(fd: int, data: bytes) -> None:
    n = os.write(fd, data)
    while n < len(data):  # a short write: a full disk, or a signal in the middle
        data = data[n:]
        n = os.write(fd, data)


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one record; for files written now and then (events), not every step."""
    _end_torn_line(Path(path))
    line = _encode(record) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        _write_all(fd, line.encode("utf-8"))
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
