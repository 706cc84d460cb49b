"""The JSON-lines journal: what a kill mid-write leaves behind never hides a record, written before or after."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rundir.journal import (
    JsonlWriter,
    Records,
    Skipped,
    append_record,
    event_problem,
    iter_loss_records,
    iter_records,
    loss_problem,
    read_journal,
    read_records,
    step_of,
)

RECORDS = [{"step": 0, "loss": 2.25}, {"step": 1, "loss": 1.5, "note": "ünïcode"}, {"step": 2, "loss": None}]


def lines(*recs: dict) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in recs)


def test_writer_round_trip_one_flushed_line_per_record(tmp_path: Path) -> None:
    path = tmp_path / "losses.jsonl"
    w = JsonlWriter(path)
    try:
        for i, rec in enumerate(RECORDS):
            w.write(rec)
            # Flushed at once: a reader in another process sees each record as soon as write returns.
            assert read_records(path) == RECORDS[: i + 1]
    finally:
        w.close()
    assert path.read_bytes().count(b"\n") == len(RECORDS)


def test_append_record_round_trip_and_creates_the_file(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    for rec in RECORDS:
        append_record(path, rec)
    assert read_records(path) == RECORDS


def test_writer_appends_to_an_existing_journal(tmp_path: Path) -> None:
    path = tmp_path / "losses.jsonl"
    path.write_bytes(lines(RECORDS[0]))
    w = JsonlWriter(path)
    w.write(RECORDS[1])
    w.close()
    assert read_records(path) == RECORDS[:2]


def test_missing_file_reads_as_empty(tmp_path: Path) -> None:
    assert read_records(tmp_path / "nope.jsonl") == []


TORN = [
    pytest.param(b'{"step": 3, "lo', id="half-json"),
    pytest.param(b'{"step": 3, "loss": 1.0', id="unclosed-object"),
    pytest.param(b"{", id="one-byte"),
    pytest.param(b'{"step": 3, "note": "\xc3', id="cut-inside-a-utf8-character"),
]


@pytest.mark.parametrize("tail", TORN)
def test_reader_skips_a_torn_last_line(tmp_path: Path, tail: bytes) -> None:
    path = tmp_path / "j.jsonl"
    path.write_bytes(lines(*RECORDS[:2]) + tail)
    assert read_records(path) == RECORDS[:2]


@pytest.mark.parametrize("tail", TORN)
@pytest.mark.parametrize("how", ["append_record", "JsonlWriter"])
def test_append_after_a_torn_line_is_not_swallowed(tmp_path: Path, tail: bytes, how: str) -> None:
    path = tmp_path / "j.jsonl"
    path.write_bytes(lines(RECORDS[0]) + tail)
    new = {"step": 99, "after": "the kill"}
    if how == "append_record":
        append_record(path, new)
    else:
        w = JsonlWriter(path)
        w.write(new)
        w.close()
    assert read_records(path) == [RECORDS[0], new]
    # The torn fragment was ended with a newline, not glued to the new record.
    raw = path.read_bytes()
    assert raw.startswith(lines(RECORDS[0]) + tail + b"\n{") and raw.count(b"\n") == 3


def test_torn_lines_in_the_middle_and_non_objects_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    path.write_bytes(
        lines(RECORDS[0]) + b'{"half\n' + b"\n" + b"[1, 2]\n" + b"42\n" + b"\xff\xfe garbage\n" + lines(RECORDS[1])
    )
    assert read_records(path) == RECORDS[:2]


def test_writer_on_an_empty_file_adds_no_blank_line(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    path.touch()
    append_record(path, RECORDS[0])
    assert path.read_bytes().count(b"\n") == 1 and path.read_bytes().startswith(b"{")


def test_iter_records_offsets_let_a_tailing_reader_resume(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    path.write_bytes(lines(RECORDS[0]))
    got = list(iter_records(path))
    assert [r for _, r in got] == [RECORDS[0]]
    offset = got[-1][0]
    assert offset == path.stat().st_size

    # The writer is half-way through the next line: a tail reader must not consume or skip it...
    full = json.dumps(RECORDS[1]).encode() + b"\n"
    with open(path, "ab") as f:
        f.write(full[:7])
    assert list(iter_records(path, offset)) == []
    # ...so that once the line is finished, reading on from the same offset returns it.
    with open(path, "ab") as f:
        f.write(full[7:])
    assert [r for _, r in iter_records(path, offset)] == [RECORDS[1]]
    assert [off for off, _ in iter_records(path, offset)] == [path.stat().st_size]


def test_a_record_is_not_read_before_its_newline(tmp_path: Path) -> None:
    """The newline is what commits a record: until it is there the line may still be growing."""
    path = tmp_path / "j.jsonl"
    full = json.dumps(RECORDS[1]).encode() + b"\n"
    path.write_bytes(lines(RECORDS[0]) + full[:-1])  # the whole object, but not yet its newline
    got = list(iter_records(path))
    assert [r for _, r in got] == [RECORDS[0]]
    offset = got[-1][0]
    with open(path, "ab") as f:
        f.write(b"\n")
    assert [r for _, r in iter_records(path, offset)] == [RECORDS[1]]


# -- malformed records: skipped and counted, never raised ----------------------------------------------------

GOOD = {"step": 3, "epoch": 0, "batch": 3, "loss": 1.5, "loss_hex": (1.5).hex(), "acc": None, "lr": 0.01,
        "attempt": 2, "time": 100.5, "dt": 0.01}

# (a record, what is wrong with it as a loss record)
BAD_LOSS_RECORDS = [
    pytest.param({"step": "x", "loss": 1.0}, "'step' is \"x\", not an integer 0 or more", id="step-a-word"),
    pytest.param({"step": "3", "loss": 1.0}, "'step' is \"3\", not an integer", id="step-a-numeric-string"),
    pytest.param({"step": 3.0, "loss": 1.0}, "'step' is 3.0, not an integer", id="step-a-float"),
    pytest.param({"step": True, "loss": 1.0}, "'step' is true, not an integer", id="step-a-bool"),
    pytest.param({"step": -1, "loss": 1.0}, "'step' is -1, not an integer 0 or more", id="step-negative"),
    pytest.param({"step": None, "loss": 1.0}, "'step' is null", id="step-null"),
    pytest.param({"loss": 1.0}, "no 'step'", id="no-step"),
    pytest.param({"step": 3}, "no 'loss'", id="no-loss"),
    pytest.param({"step": 3, "loss": "1.0"}, "'loss' is \"1.0\", not a number", id="loss-a-string"),
    pytest.param({"step": 3, "loss": None}, "'loss' is null, not a number", id="loss-null"),
    pytest.param({"step": 3, "loss": 1.0, "loss_hex": 1.0}, "'loss_hex' is 1.0, not a string", id="hex-a-number"),
    pytest.param({"step": 3, "loss": 1.0, "loss_hex": "0xZZ"}, "not a float in hex", id="hex-garbled"),
    pytest.param({"step": 3, "loss": 1.0, "attempt": "2"}, "'attempt' is \"2\", not an integer", id="attempt-str"),
    pytest.param({"step": 3, "loss": 1.0, "epoch": [0]}, "'epoch' is [0], not an integer", id="epoch-a-list"),
    pytest.param({"step": 3, "loss": 1.0, "time": "noon"}, "'time' is \"noon\", not a number", id="time-a-word"),
    pytest.param({"step": 3, "loss": 1.0, "dt": {}}, "'dt' is {}, not a number", id="dt-an-object"),
    pytest.param({"step": 3, "loss": 1.0, "acc": "high"}, "'acc' is \"high\", not a number or null", id="acc"),
    pytest.param({"step": "x" * 100, "loss": 1.0}, "...", id="a-long-value-is-cut"),
]


@pytest.mark.parametrize(("record", "problem"), BAD_LOSS_RECORDS)
def test_loss_problem_names_what_is_wrong(record: dict, problem: str) -> None:
    got = loss_problem(record)
    assert got is not None and problem in got and len(got) < 120
    assert step_of(record) is None


@pytest.mark.parametrize("record", [GOOD, {"step": 0, "loss": 2}, {"step": 7, "loss": float("nan")},
                                    {"step": 7, "loss": 1.0, "extra": "anything"}])
def test_well_formed_loss_records(record: dict) -> None:
    assert loss_problem(record) is None
    assert step_of(record) == record["step"]


@pytest.mark.parametrize(("record", "problem"), [
    ({"time": 1.0}, "no 'event'"),
    ({"event": 7}, "'event' is 7, not a string"),
    ({"event": "attempt-exited", "attempt": "3"}, "'attempt' is \"3\", not an integer"),
    ({"event": "chaos-fault", "last_step": "9"}, "'last_step' is \"9\", not an integer or null"),
    ({"event": "attempt-started", "resumed_from_step": 1.5}, "'resumed_from_step' is 1.5"),
    ({"event": "gave-up", "reason": ["x"]}, "'reason' is [\"x\"], not a string or null"),
    ({"event": "x", "time": "now"}, "'time' is \"now\", not a number"),
])
def test_event_problem(record: dict, problem: str) -> None:
    got = event_problem(record)
    assert got is not None and problem in got


def test_real_events_are_well_formed() -> None:
    for rec in [{"time": 1.0, "source": "supervisor", "event": "attempt-exited", "attempt": 1, "pid": 4,
                 "returncode": 75, "signal": None, "exit_class": "preempted", "resumed_from": 45, "last_step": 62},
                {"time": 1.0, "source": "worker", "event": "attempt-started", "attempt": 6, "pid": 5,
                 "resumed_from_step": 63, "checkpoint": "step-000000063", "total_steps": 75},
                {"time": 1.0, "source": "supervisor", "event": "stopped", "reason": "stopped by SIGTERM",
                 "exit_class": None}]:
        assert event_problem(rec) is None


def test_read_journal_skips_and_counts_every_malformed_line(tmp_path: Path) -> None:
    path = tmp_path / "losses.jsonl"
    bad = [p.values[0] for p in BAD_LOSS_RECORDS]
    garbage = b"not json\n[1, 2]\n42\nnull\n\n"  # 5 lines that are not objects
    path.write_bytes(lines(GOOD) + lines(*bad) + garbage + lines(GOOD) + b'{"step": 9, "loss"')  # torn last line
    got = read_journal(path, loss_problem)
    first = f"the line at byte {len(lines(GOOD))}: 'step' is \"x\", not an integer 0 or more"
    assert got == Records((GOOD, GOOD), len(bad) + 5, first)
    # without a check only the lines that are not JSON objects are skipped
    plain = read_journal(path)
    assert plain.skipped == 5 and len(plain.records) == 2 + len(bad)
    assert read_records(path) == list(plain.records)  # unchanged for its callers
    assert read_journal(tmp_path / "none.jsonl", loss_problem) == Records((), 0, None)


def test_iter_loss_records_yields_only_well_formed_records_and_counts_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "losses.jsonl"
    path.write_bytes(lines(GOOD, {"step": "x"}, dict(GOOD, step=4)))
    skipped = Skipped()
    got = list(iter_loss_records(path, skipped=skipped))
    assert [r["step"] for _, r in got] == [3, 4]
    assert skipped.count == 1 and skipped.first is not None and "'step'" in skipped.first
    # A tailing reader keeps its offset past the skipped line: it is not read again.
    assert got[-1][0] == path.stat().st_size
    assert list(iter_loss_records(path, got[-1][0])) == []


def test_step_of_lets_a_tailing_reader_take_records_as_they_come(tmp_path: Path) -> None:
    """What a supervisor reading steps with int(rec["step"]) would crash on, step_of passes over."""
    path = tmp_path / "losses.jsonl"
    path.write_bytes(lines(GOOD, {"step": "x"}, {"loss": 1.0}, dict(GOOD, step=8)))
    recs = [r for _, r in iter_records(path)]
    with pytest.raises((ValueError, KeyError)):
        max(int(r["step"]) for r in recs)  # the reading this replaces
    assert max(s for s in map(step_of, recs) if s is not None) == 8
