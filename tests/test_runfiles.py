"""runner/runfiles.py: the supervisor's reads and writes of the run directory never bring it down - a
malformed record is skipped and counted, an event that cannot be written is dropped with one warning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rundir.events import EventKind, Source
from rundir.journal import loss_problem
from runner.runfiles import EventSink, Tail, last_error_line


def test_a_tail_reads_only_what_was_appended_and_skips_malformed_records(tmp_path: Path) -> None:
    path = tmp_path / "losses.jsonl"
    tail = Tail(path, loss_problem)
    assert tail.read() == []  # no file yet
    path.write_text('{"step": 0, "loss": 1.0}\n{"step": "x"}\n')
    assert [r["step"] for r in tail.read()] == [0]
    with open(path, "a") as f:
        f.write('{"step": 1, "loss": 0.5}\n{"step": 2, "lo')  # a torn last line: not yet
    assert [r["step"] for r in tail.read()] == [1]
    assert tail.read() == []
    assert tail.skipped.count == 1 and "step" in (tail.skipped.first or "")


@pytest.mark.parametrize(("text", "line"), [
    ("", None),
    ("starting\n\nerror: bad data x\n\n", "error: bad data x"),
    ("Traceback ...\nRuntimeError: boom", "RuntimeError: boom"),
])
def test_last_error_line(tmp_path: Path, text: str, line: str | None) -> None:
    log = tmp_path / "attempt-001.log"
    log.write_text(text)
    assert last_error_line(log) == line


def test_no_log_no_line(tmp_path: Path) -> None:
    assert last_error_line(tmp_path / "missing.log") is None


def test_an_event_that_cannot_be_written_is_dropped_with_one_warning(tmp_path: Path) -> None:
    said: list[str] = []
    blocked = tmp_path / "events.jsonl"
    blocked.mkdir()  # a directory where the file should be: every append fails
    sink = EventSink(blocked, Source.SUPERVISOR, said.append)
    sink.record(EventKind.RESTART, attempt=1)
    sink.record(EventKind.RESTART, attempt=2)
    assert sink.dropped == 2 and len(said) == 1 and said[0].startswith("warning: cannot write")
    blocked.rmdir()
    sink.record(EventKind.RESTART, attempt=3)  # it can again: written, and a later failure warns anew
    assert [json.loads(line)["attempt"] for line in blocked.read_text().splitlines()] == [3]
