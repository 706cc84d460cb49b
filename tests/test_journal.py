"""The JSON-lines journal: what a kill mid-write leaves behind never hides a record, written before or after."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rundir.journal import JsonlWriter, append_record, iter_records, read_records

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
