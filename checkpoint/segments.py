"""Journal segments: the loss journal and the event log, uploaded piece by piece and put back together.

A segment is an object ``journal/<name>/<offset>-<digest>``: bytes of the journal file ``name`` from
byte ``offset`` on, named by their SHA-256 or, with a checkpoint key, by an HMAC-SHA256 that also
binds the name and the offset. Segments are written create-only and never change, so writing the
same bytes at the same offset twice is harmless. A journal is reassembled from offset 0 by following
segments end to end, each checked against its name, up to a gap or a segment that fails its check
(with a warning), and cut at the length a checkpoint recorded, where given.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

from .objects import Blob, ObjectStore

__all__ = ["JOURNAL", "Journals", "chain_end", "segment_digest", "segments_of", "write_atomically"]

JOURNAL = "journal"
_SEGMENT = re.compile(r"^(\d{15})-([0-9a-f]{64})$")
_JOURNAL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def segment_digest(name: str, offset: int, data: bytes, key: bytes | None) -> str:
    if key is None:
        return hashlib.sha256(data).hexdigest()
    return hmac.new(key, f"{name}\0{offset}\0".encode() + data, hashlib.sha256).hexdigest()


def segments_of(blobs: Mapping[str, Blob], name: str) -> dict[int, list[Blob]]:
    """The segments of journal ``name`` among listed objects: offset -> candidates, in key order."""
    out: dict[int, list[Blob]] = {}
    prefix = f"{JOURNAL}/{name}/"
    for key in sorted(blobs):
        m = _SEGMENT.match(key[len(prefix):]) if key.startswith(prefix) else None
        if m is not None:
            out.setdefault(int(m.group(1)), []).append(blobs[key])
    return out


def chain_end(segments: Mapping[int, list[Blob]]) -> int:
    """Where the chain of segments from offset 0 ends (the first candidate at each offset)."""
    end = 0
    while end in segments and segments[end][0].size > 0:
        end += segments[end][0].size
    return end


def _check_name(name: str) -> None:
    if not _JOURNAL_NAME.match(name):
        raise ValueError(f"bad journal name {name!r}: one plain file name")


class Journals:
    """Appends and reassembles journals in one store. Fencing is the caller's (RemoteStore's)."""

    def __init__(self, objects: ObjectStore, key: bytes | None) -> None:
        self.objects = objects
        self.key = key

    def length(self, name: str) -> int:
        """How many bytes of ``name`` the store holds, end to end from 0 (by the listing's sizes)."""
        _check_name(name)
        return chain_end(segments_of(self.objects.find(f"{JOURNAL}/{name}"), name))

    def append(self, name: str, data: bytes) -> int:
        """Add ``data`` after what the store holds of ``name``; returns the new length."""
        offset = self.length(name)
        if data:
            key = f"{JOURNAL}/{name}/{offset:015d}-{segment_digest(name, offset, data, self.key)}"
            try:
                self.objects.write(key, data, create_only=True)
            except FileExistsError:
                pass  # these very bytes at this offset are there already
        return offset + len(data)

    def sync(self, path: Path) -> int:
        """Upload what the local journal ``path`` holds beyond the store's copy, up to its last complete
        line; returns the store's length. The local file must extend the store's copy (on a new
        machine, restore first)."""
        end = self.length(path.name)
        try:
            with open(path, "rb") as f:
                f.seek(end)
                data = f.read()
        except FileNotFoundError:
            return end
        data = data[: data.rfind(b"\n") + 1]
        return self.append(path.name, data) if data else end

    def restore(self, dest: Path, upto: Mapping[str, int] | None = None,
                warn: Callable[[str], None] | None = None) -> dict[str, int]:
        """Write every journal the store holds into ``dest`` (replacing files of the same name), each
        cut at ``upto[name]`` where given; returns the lengths written."""
        blobs = self.objects.find(JOURNAL)
        names = sorted({k.split("/")[1] for k in blobs if k.count("/") == 2})
        written = {}
        for name in names:
            if not _JOURNAL_NAME.match(name):
                continue
            limit = None if upto is None else upto.get(name)
            data = self._assemble(name, segments_of(blobs, name), limit, warn)
            if limit is not None and len(data) < limit and warn is not None:
                warn(f"journal {name}: the store holds {len(data)} bytes, the checkpoint recorded {limit}")
            Path(dest).mkdir(parents=True, exist_ok=True)
            write_atomically(Path(dest) / name, data)
            written[name] = len(data)
        return written

    def _assemble(self, name: str, segments: Mapping[int, list[Blob]], limit: int | None,
                  warn: Callable[[str], None] | None) -> bytes:
        parts: list[bytes] = []
        offset = 0
        while offset in segments and (limit is None or offset < limit):
            data = next((d for b in segments[offset] if (d := self._verified(name, offset, b)) is not None), None)
            if not data:
                if warn is not None:
                    warn(f"journal {name}: the segment at byte {offset} fails its check; restored up to there")
                break
            parts.append(data)
            offset += len(data)
        joined = b"".join(parts)
        return joined if limit is None else joined[:limit]

    def _verified(self, name: str, offset: int, blob: Blob) -> bytes | None:
        try:
            data = self.objects.read(blob.key)
        except FileNotFoundError:
            return None
        claimed = blob.key.rsplit("-", 1)[-1]
        return data if hmac.compare_digest(claimed, segment_digest(name, offset, data, self.key)) else None


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` whole: a reader sees the old file or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
