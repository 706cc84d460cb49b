"""The manifest checks the local and the remote store share: checksum, optional HMAC (confined names:
tests/test_paths.py and tests/test_confinement.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import xxhash

from checkpoint.storage import LocalStorage
from checkpoint.store import (
    HMAC_FIELD,
    MANIFEST,
    CheckpointStore,
    CorruptCheckpoint,
    check_file,
    read_manifest,
    seal_manifest,
)

BODY = {"format": 1, "step": 3, "durable": True, "meta": {"a": 1},
        "files": {"model.bin": {"sha256": "ab" * 32, "size": 10}}}


def test_seal_then_read_round_trips_with_and_without_a_key() -> None:
    assert read_manifest("s", seal_manifest(BODY)) == BODY
    signed = seal_manifest(BODY, key=b"k")
    assert HMAC_FIELD in json.loads(signed)
    assert read_manifest("s", signed, key=b"k") == BODY
    assert read_manifest("s", signed) == BODY  # a reader without a key ignores the HMAC


def test_sealing_without_a_key_writes_the_bytes_it_always_wrote(tmp_path: Path) -> None:
    store = CheckpointStore(LocalStorage(tmp_path))
    store.save(3, {"model.bin": b"0123456789"}, {"a": 1})
    raw = (tmp_path / "checkpoints" / "step-000000003" / MANIFEST).read_bytes()
    manifest = json.loads(raw)
    assert list(manifest) == ["format", "step", "durable", "digest", "files", "meta", "sha256"]
    assert manifest["digest"] == "xxh3-128" and set(manifest["files"]["model.bin"]) == {"xxh3-128", "size"}
    body = {k: v for k, v in manifest.items() if k != "sha256"}
    assert raw == seal_manifest(body)


def resealed(change: dict, key: bytes | None = None) -> bytes:
    return seal_manifest({**BODY, **change}, key=key)


def with_field(raw: bytes, field: bytes) -> bytes:
    at = raw.rindex(b'"sha256"')  # the manifest's own checksum comes last
    return raw[:at] + field + b", " + raw[at:]


@pytest.mark.parametrize(("raw", "key", "problem"), [
    (b"not json", None, "unreadable"),
    (json.dumps(BODY).encode(), None, "unreadable"),  # no checksum
    (resealed({}).replace(b'"step": 3', b'"step": 4'), None, "checksum mismatch"),
    (resealed({"format": 2}), None, "unknown format"),
    (resealed({"files": []}), None, "malformed \\(files, step or meta\\)"),
    (resealed({"files": {"../up": {"sha256": "x", "size": 1}}}), None, "lists a file outside the checkpoint"),
    (resealed({"files": {"/abs": {"sha256": "x", "size": 1}}}), None, "lists a file outside the checkpoint"),
    (resealed({"files": {"a": {"sha256": "x"}}}), None, "malformed entry"),
    (resealed({"files": {"a": {"sha256": 1, "size": 1}}}), None, "malformed entry"),
    (resealed({"digest": "md4"}), None, "^step-000000003/MANIFEST.json: unknown digest algorithm 'md4'$"),
    (resealed({"digest": ["sha256"]}), None, "unknown digest algorithm"),
    (resealed({"digest": "xxh3-128"}), None, "malformed entry"),  # its entries hold sha256 digests
    (resealed({"digest": "xxh3-128", "files": {"a": {"xxh3-128": "x", "size": 1}}}, key=b"k"), b"k",
     "signed, but its files' digests are xxh3-128, not cryptographic"),
    (resealed({}), b"k", "not signed"),
    (resealed({}, key=b"other"), b"k", "HMAC mismatch"),
    (with_field(resealed({}), b'"hmac_sha256": "00"'), b"k", "HMAC mismatch"),
])
def test_read_manifest_refuses(raw: bytes, key: bytes | None, problem: str) -> None:
    with pytest.raises(CorruptCheckpoint, match=problem):
        read_manifest("step-000000003", raw, key=key)


@pytest.mark.parametrize(("size", "sha", "problem"), [(9, "ab" * 32, "9 bytes, manifest says 10"),
                                                      (10, "cd" * 32, "sha256 mismatch")])
def test_check_file(size: int, sha: str, problem: str) -> None:
    check_file("s", "model.bin", BODY["files"]["model.bin"], 10, "ab" * 32)
    with pytest.raises(CorruptCheckpoint, match=problem):
        check_file("s", "model.bin", BODY["files"]["model.bin"], size, sha)


def test_check_file_compares_the_digest_of_the_algorithm_named() -> None:
    entry = {"xxh3-128": "ef" * 16, "size": 10}
    check_file("s", "model.bin", entry, 10, "ef" * 16, "xxh3-128")
    with pytest.raises(CorruptCheckpoint, match="^s/model.bin: xxh3-128 mismatch$"):
        check_file("s", "model.bin", entry, 10, "ee" * 16, "xxh3-128")


def test_a_manifest_from_before_the_digest_field_is_verified_by_sha256(tmp_path: Path) -> None:
    data = b"0123456789"
    ckpt = tmp_path / "checkpoints" / "step-000000003"
    ckpt.mkdir(parents=True)
    (ckpt / "model.bin").write_bytes(data)
    legacy = {**BODY, "files": {"model.bin": {"sha256": hashlib.sha256(data).hexdigest(), "size": 10}}}
    (ckpt / MANIFEST).write_bytes(seal_manifest(legacy))
    store = CheckpointStore(LocalStorage(tmp_path))
    assert dict(store.verify("step-000000003").files) == {"model.bin": data}
    (ckpt / "model.bin").write_bytes(b"0123456780")
    with pytest.raises(CorruptCheckpoint, match="model.bin: sha256 mismatch"):
        store.verify("step-000000003")


@pytest.mark.parametrize("algorithm", ["sha256", "xxh3-128"])
def test_each_algorithm_writes_what_it_verifies_and_catches_a_flipped_byte(tmp_path: Path, algorithm: str) -> None:
    store = CheckpointStore(LocalStorage(tmp_path), digest=algorithm)
    parts = [memoryview(b"head"), memoryview(bytes(range(256)) * 40000)]  # over two hashing slices
    store.save(3, {"model.bin": parts}, {})
    path = tmp_path / "checkpoints" / "step-000000003" / "model.bin"
    manifest = json.loads((path.parent / MANIFEST).read_bytes())
    joined = b"".join(parts)
    expect = hashlib.sha256(joined) if algorithm == "sha256" else xxhash.xxh3_128(joined)
    assert manifest["digest"] == algorithm and manifest["files"]["model.bin"][algorithm] == expect.hexdigest()
    assert store.verify("step-000000003").files["model.bin"] == b"".join(parts)
    data = bytearray(path.read_bytes())
    data[len(data) - 5] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpoint, match=f"^step-000000003/model.bin: {algorithm} mismatch$"):
        store.verify("step-000000003")


def test_an_unknown_algorithm_is_refused_when_the_store_is_made(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        CheckpointStore(LocalStorage(tmp_path), digest="md4")
