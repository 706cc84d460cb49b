"""One pass over a file gives its SHA-256 and the ETags S3 can give it: single-part and multipart."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import xxhash

from checkpoint.digests import digest_file, multipart_threshold

PART = 5 << 20


def multipart_etag(data: bytes, part: int) -> str:
    md5s = [hashlib.md5(data[i:i + part]).digest() for i in range(0, len(data), part)]
    return f"{hashlib.md5(b''.join(md5s)).hexdigest()}-{len(md5s)}"


@pytest.mark.parametrize("size", [0, 1, PART, 2 * PART - 1, 2 * PART, 2 * PART + 1, 3 * PART + 12345])
def test_digest_file(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    d = digest_file(path, PART)
    assert (d.size, d.sha256) == (size, hashlib.sha256(data).hexdigest())
    expected = {hashlib.md5(data).hexdigest()}
    if size >= multipart_threshold(PART):
        expected.add(multipart_etag(data, PART))
    assert d.etags == expected
    assert digest_file(path, PART, etags=False).etags == frozenset()


@pytest.mark.parametrize("size", [0, 1, 2 * PART + 1])
def test_digest_file_also_hashes_by_a_manifest_algorithm_in_the_same_read(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    assert digest_file(path, PART).also is None
    assert digest_file(path, PART, also="xxh3-128").also == xxhash.xxh3_128(data).hexdigest()
    assert digest_file(path, PART, etags=False, also="sha256").also == hashlib.sha256(data).hexdigest()
