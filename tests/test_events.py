"""rundir/events.py: ``record_event`` appends one line with time, source and event; every kind is a
documented, kebab-case name."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from rundir.events import EventKind, Source, record_event
from rundir.names import EVENTS
from tests.helpers import REPO
from tests.helpers.readers import events


def test_record_event_writes_one_line_with_time_source_and_event(tmp_path: Path) -> None:
    path = tmp_path / EVENTS
    before = time.time()
    record_event(path, Source.SUPERVISOR, EventKind.RESTART, after_attempt=2, delay_s=0.5)
    lines = path.read_text().splitlines(keepends=True)
    assert len(lines) == 1 and lines[0].endswith("\n")
    rec = json.loads(lines[0])
    assert list(rec)[:3] == ["time", "source", "event"]
    assert before <= rec["time"] <= time.time()
    assert rec == {"time": rec["time"], "source": "supervisor", "event": "restart", "after_attempt": 2,
                   "delay_s": 0.5}


def test_records_are_appended_in_order(tmp_path: Path) -> None:
    for i, (source, kind) in enumerate([(Source.WORKER, EventKind.ATTEMPT_STARTED),
                                        (Source.STANDBY, EventKind.STANDBY_READY),
                                        (Source.WORKER, EventKind.JOB_COMPLETED)]):
        record_event(tmp_path / EVENTS, source, kind, n=i)
    got = [(e["source"], e["event"], e["n"]) for e in events(tmp_path, strict=True)]
    assert got == [("worker", "attempt-started", 0), ("standby", "standby-ready", 1), ("worker", "job-completed", 2)]


def test_a_torn_last_line_is_ended_before_the_next_record(tmp_path: Path) -> None:
    path = tmp_path / EVENTS
    path.write_text('{"time": 1, "source": "worker", "ev')  # a kill mid-write
    record_event(path, Source.SUPERVISOR, EventKind.SUPERVISOR_EXIT)
    assert [e["event"] for e in events(tmp_path)] == ["supervisor-exit"]


@pytest.mark.parametrize("enum", [EventKind, Source])
def test_names_are_kebab_case_and_unique(enum: type[EventKind] | type[Source]) -> None:
    values = [m.value for m in enum]
    assert len(set(values)) == len(values)
    assert all(re.fullmatch(r"[a-z]+(-[a-z]+)*", v) for v in values), values


def test_every_kind_is_documented_in_the_run_directory_reference() -> None:
    doc = (REPO / "docs" / "run-directory.md").read_text()
    assert [k.value for k in EventKind if f"**`{k.value}`**" not in doc] == []
