"""Append-only JSON-lines files: the loss journal and the event log.

A kill can leave a torn last line. Readers skip lines that do not parse; writers end a torn line
before appending, so one torn record never swallows the next. A line that parses can still be
malformed (a step that is not an integer, a missing loss): :func:`loss_problem` and
:func:`event_problem` say what is wrong with one, and readers given such a check skip those too.
Every skipped line is counted (:class:`Skipped`, :class:`Records`), so a report can say how many.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import writing

__all__ = [
    "JsonlWriter",
    "append_record",
    "read_records",
    "read_journal",
    "iter_records",
    "iter_loss_records",
    "Records",
    "Skipped",
    "Check",
    "loss_problem",
    "event_problem",
    "step_of",
]

#: What is wrong with a parsed record, or None if nothing is.
Check = Callable[[Mapping[str, Any]], str | None]


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
        with writing(self.path):
            _end_torn_line(self.path)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def write(self, record: dict[str, Any]) -> None:
        if self._fd is None:
            raise ValueError(f"{self.path}: write to a closed journal")
        with writing(self.path):
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
    """Append one record; for files written now and then (events), not every step. An ``OSError``
    names ``path``."""
    line = _encode(record) + "\n"
    with writing(path):
        _end_torn_line(Path(path))
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            _write_all(fd, line.encode("utf-8"))
        finally:
            os.close(fd)


class Skipped:
    """A tally of the lines a reader passed over: how many, and what was wrong with the first."""

    def __init__(self) -> None:
        self.count = 0
        self.first: str | None = None
        self.end = 0  # the offset just past the last complete line read, skipped or not

    def add(self, problem: str) -> None:
        self.count += 1
        if self.first is None:
            self.first = problem


@dataclass(frozen=True)
class Records:
    """The well-formed records of a journal, in order, and how many lines were skipped."""

    records: tuple[dict[str, Any], ...]
    skipped: int = 0
    first_problem: str | None = None  # what was wrong with the first skipped line


def iter_records(
    path: Path, start: int = 0, *, check: Check | None = None, skipped: Skipped | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(offset_after_line, record)`` for each complete, parseable line from ``start``.

    Lines that do not parse, are not JSON objects, or that ``check`` finds fault with are skipped
    and, given ``skipped``, counted there. An unfinished last line is neither: it may still grow."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            offset = start
            for raw in f:
                if not raw.endswith(b"\n"):
                    return  # an unfinished line: the writer may still be on it, or was killed
                offset += len(raw)
                line = offset - len(raw)
                if skipped is not None:
                    skipped.end = offset
                try:
                    rec = json.loads(raw)
                except ValueError:
                    problem: str | None = "not JSON"
                else:
                    problem = "not a JSON object" if not isinstance(rec, dict) else check(rec) if check else None
                if problem is None:
                    yield offset, rec
                elif skipped is not None:
                    skipped.add(f"the line at byte {line}: {problem}")
    except FileNotFoundError:
        return


def read_journal(path: Path, check: Check | None = None) -> Records:
    """Every well-formed record of a journal, and the count of lines skipped."""
    skipped = Skipped()
    recs = tuple(rec for _, rec in iter_records(Path(path), check=check, skipped=skipped))
    return Records(recs, skipped.count, skipped.first)


def iter_loss_records(path: Path, start: int = 0, *, skipped: Skipped | None = None
                      ) -> Iterator[tuple[int, dict[str, Any]]]:
    """:func:`iter_records` of a loss journal, yielding only records :func:`loss_problem` accepts:
    each has an integer ``step`` and a numeric ``loss``."""
    return iter_records(path, start, check=loss_problem, skipped=skipped)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The parseable records of a journal (use :func:`read_journal` to check them and count)."""
    return list(read_journal(path).records)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


#: Each kind of field: whether a value is one, and what it should have been.
_KINDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "step": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer 0 or more"),
    "int": (_is_int, "an integer"),
    "int?": (lambda v: v is None or _is_int(v), "an integer or null"),
    "number": (_is_number, "a number"),
    "number?": (lambda v: v is None or _is_number(v), "a number or null"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "str?": (lambda v: v is None or isinstance(v, str), "a string or null"),
}


def _fields(*spec: tuple[str, str, bool]) -> tuple[tuple[str, Callable[[object], bool], str, bool], ...]:
    """``(key, kind, required)`` -> ``(key, is_one, want, required)``, looked up once."""
    return tuple((key, *_KINDS[kind], required) for key, kind, required in spec)


def _problem(rec: Mapping[str, Any], fields: tuple[tuple[str, Callable[[object], bool], str, bool], ...]
             ) -> str | None:
    for key, is_one, want, required in fields:
        if key not in rec:
            if required:
                return f"no {key!r}"
        elif not is_one(rec[key]):
            return f"{key!r} is {_short(rec[key])}, not {want}"
    return None


def _short(v: object) -> str:
    text = json.dumps(v) if not isinstance(v, float) or math.isfinite(v) else repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


#: The loss journal's fields (``runner.worker`` writes them): step and loss always, the rest optional.
_LOSS_FIELDS = _fields(("step", "step", True), ("loss", "number", True), ("loss_hex", "str", False),
                       ("epoch", "int", False), ("batch", "int", False), ("attempt", "int", False),
                       ("time", "number", False), ("dt", "number", False), ("acc", "number?", False),
                       ("lr", "number?", False))

#: The event log's fields that readers compute with; the rest are free-form.
_EVENT_FIELDS = _fields(("event", "str", True), ("source", "str", False), ("time", "number", False),
                        ("attempt", "int", False), ("step", "int?", False), ("last_step", "int?", False),
                        ("resumed_from_step", "int?", False), ("target_step", "int?", False),
                        ("reason", "str?", False), ("fault", "str?", False), ("signal", "str?", False),
                        ("exit_class", "str?", False))


def loss_problem(rec: Mapping[str, Any]) -> str | None:
    """What is wrong with a loss-journal record, or None: ``step`` must be an integer 0 or more,
    ``loss`` a number, ``loss_hex`` (if there) a float in hex, the other fields of the right type."""
    problem = _problem(rec, _LOSS_FIELDS)
    if problem is not None:
        return problem
    if "loss_hex" in rec:
        try:
            float.fromhex(rec["loss_hex"])
        except ValueError:
            return f"'loss_hex' is {_short(rec['loss_hex'])}, not a float in hex"
    return None


def event_problem(rec: Mapping[str, Any]) -> str | None:
    """What is wrong with an event record, or None: ``event`` must be a string, and the fields
    readers compute with (``time``, ``attempt``, ``last_step``, ``resumed_from_step``...) of their type."""
    return _problem(rec, _EVENT_FIELDS)


def step_of(rec: Mapping[str, Any]) -> int | None:
    """The step of a well-formed loss record; None for a malformed one (``{"step": "x"}``, no loss...).

    For readers that take records as they come, such as a supervisor tailing the journal with
    :func:`iter_records`: ``int(rec["step"])`` raises on such a record, this does not."""
    return int(rec["step"]) if loss_problem(rec) is None else None
