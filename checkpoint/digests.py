"""What a file's bytes hash to, in one pass: the SHA-256 a remote manifest records (and, on request, the
digest a local manifest records, by its algorithm), and the ETags S3 gives
the object after an upload - the MD5 of the bytes for a single-part upload, the MD5 of the parts'
MD5s with ``-<parts>`` for a multipart one - so that an upload is checked without reading it back."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .filehash import LEGACY, Hasher, hasher

__all__ = ["FileDigest", "digest_file", "multipart_threshold"]

_BLOCK = 8 << 20


def multipart_threshold(part_size: int) -> int:
    """The size from which s3fs uploads a file in parts of ``part_size`` rather than in one request."""
    return min(5 << 30, 2 * part_size)


def _md5(data: bytes = b"") -> hashlib._Hash:
    return hashlib.md5(data, usedforsecurity=False)  # an ETag, not security: allowed in FIPS mode too


@dataclass(frozen=True)
class FileDigest:
    size: int
    sha256: str
    etags: frozenset[str]  # the ETags an S3 upload of these bytes can have
    also: str | None = None  # the digest by the algorithm asked for with ``also``


def digest_file(path: Path, part_size: int, *, etags: bool = True, fsync: bool = False,
                also: str | None = None) -> FileDigest:
    """Hash ``path``: SHA-256, and the possible ETags unless ``etags`` is false (no MD5 then, as for a
    file just downloaded); ``fsync``: also make the file durable; ``also``: a digest algorithm of
    :mod:`checkpoint.filehash` to hash it by as well, in the same read."""
    sha, md5, part = hashlib.sha256(), _md5(), _md5()
    other: Hasher | None = hasher(also) if also is not None and also != LEGACY else None
    part_md5s: list[bytes] = []
    size = in_part = 0
    with open(path, "rb") as f:
        while block := f.read(min(_BLOCK, part_size - in_part)):
            sha.update(block)
            if other is not None:
                other.update(block)
            if etags:
                md5.update(block)
                part.update(block)
            size += len(block)
            in_part += len(block)
            if in_part == part_size:
                part_md5s.append(part.digest())
                part, in_part = _md5(), 0
        if fsync:
            os.fsync(f.fileno())
    if in_part:
        part_md5s.append(part.digest())
    extra = None if also is None else (other.hexdigest() if other is not None else sha.hexdigest())
    if not etags:
        return FileDigest(size, sha.hexdigest(), frozenset(), extra)
    tags = {md5.hexdigest()}
    if size >= multipart_threshold(part_size):
        tags.add(f"{_md5(b''.join(part_md5s)).hexdigest()}-{len(part_md5s)}")
    return FileDigest(size, sha.hexdigest(), frozenset(tags), extra)
