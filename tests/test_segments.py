"""Journal segments: appended by offset, create-only and content-named, reassembled end to end and
cut where a checkpoint was taken; a segment that fails its check ends the journal there, with a warning."""

from __future__ import annotations

from pathlib import Path

import pytest

from checkpoint.objects import Blob, ObjectStore
from checkpoint.segments import JOURNAL, Journals, chain_end, segment_digest, segments_of


def blob(key: str, size: int) -> Blob:
    return Blob(key, size, None, 0.0)


def seg(name: str, offset: int, size: int, tag: str = "a") -> tuple[str, Blob]:
    key = f"{JOURNAL}/{name}/{offset:015d}-{tag * 64}"
    return key, blob(key, size)


@pytest.mark.parametrize(("segments", "end"), [
    ([], 0),
    ([(0, 10)], 10),
    ([(0, 10), (10, 5), (15, 1)], 16),
    ([(0, 10), (12, 5)], 10),  # a gap: the chain ends before it
    ([(5, 10)], 0),  # no start
])
def test_chain_end(segments: list[tuple[int, int]], end: int) -> None:
    blobs = dict(seg("l.jsonl", o, n) for o, n in segments)
    assert chain_end(segments_of(blobs, "l.jsonl")) == end


def test_segments_of_ignores_other_journals_and_odd_names() -> None:
    blobs = dict([seg("l.jsonl", 0, 3), seg("events.jsonl", 0, 4)])
    blobs[f"{JOURNAL}/l.jsonl/junk"] = blob(f"{JOURNAL}/l.jsonl/junk", 9)
    assert list(segments_of(blobs, "l.jsonl")) == [0]


def test_digests_bind_name_and_offset_only_with_a_key() -> None:
    assert segment_digest("a", 0, b"x", None) == segment_digest("b", 7, b"x", None)
    assert segment_digest("a", 0, b"x", b"k") != segment_digest("a", 1, b"x", b"k")
    assert segment_digest("a", 0, b"x", b"k") != segment_digest("b", 0, b"x", b"k")


@pytest.fixture
def journals(tmp_path: Path) -> Journals:
    root = tmp_path / "store"
    root.mkdir()
    return Journals(ObjectStore(f"file://{root}"), key=None)


def test_append_then_restore(journals: Journals, tmp_path: Path) -> None:
    assert journals.append("losses.jsonl", b"1\n2\n") == 4
    assert journals.append("losses.jsonl", b"3\n") == 6
    assert journals.append("losses.jsonl", b"") == 6
    assert journals.append("events.jsonl", b"e\n") == 2
    assert journals.restore(tmp_path / "out") == {"events.jsonl": 2, "losses.jsonl": 6}
    assert (tmp_path / "out" / "losses.jsonl").read_bytes() == b"1\n2\n3\n"
    assert journals.restore(tmp_path / "cut", upto={"losses.jsonl": 4}) == {"events.jsonl": 2, "losses.jsonl": 4}
    assert (tmp_path / "cut" / "losses.jsonl").read_bytes() == b"1\n2\n"


def test_sync_uploads_complete_lines_beyond_the_stores_copy(journals: Journals, tmp_path: Path) -> None:
    path = tmp_path / "losses.jsonl"
    assert journals.sync(path) == 0  # no file yet
    path.write_bytes(b"a\nb\nhalf")
    assert journals.sync(path) == 4
    assert journals.sync(path) == 4  # nothing new: no segment
    path.write_bytes(b"a\nb\nhalf line\n")
    assert journals.sync(path) == 14
    assert len(journals.objects.find(JOURNAL)) == 2


def test_a_bad_segment_ends_the_journal_with_a_warning(journals: Journals, tmp_path: Path) -> None:
    journals.append("l.jsonl", b"1\n")
    journals.append("l.jsonl", b"2\n")
    journals.append("l.jsonl", b"3\n")
    second = sorted(journals.objects.find(JOURNAL))[1]
    journals.objects.write(second, b"9\n")  # same length, other bytes
    warnings: list[str] = []
    assert journals.restore(tmp_path / "out", upto={"l.jsonl": 6}, warn=warnings.append) == {"l.jsonl": 2}
    assert any("segment at byte 2 fails its check" in w for w in warnings)
    assert any("the checkpoint recorded 6" in w for w in warnings)


def test_a_keyed_journal_refuses_segments_forged_without_the_key(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    objects = ObjectStore(f"file://{root}")
    Journals(objects, key=b"k").append("l.jsonl", b"1\n")
    Journals(objects, key=None).append("l.jsonl", b"forged\n")  # named by its sha256: anyone can
    warnings: list[str] = []
    assert Journals(objects, key=b"k").restore(tmp_path / "out", warn=warnings.append) == {"l.jsonl": 2}
    assert warnings and "byte 2" in warnings[0]


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden"])
def test_journal_names_are_plain_file_names(journals: Journals, name: str) -> None:
    with pytest.raises(ValueError, match="bad journal name"):
        journals.append(name, b"x\n")
