"""Checkpoint file digests by name: what each algorithm gives, and the slices they are fed."""

from __future__ import annotations

import hashlib

import pytest
import xxhash

from checkpoint.filehash import ALGORITHMS, CRYPTOGRAPHIC, DEFAULT, LEGACY, hasher, hex_digest, slices

DATA = bytes(range(256)) * 100


@pytest.mark.parametrize(("algorithm", "expect"), [
    ("sha256", hashlib.sha256(DATA).hexdigest()),
    ("xxh3-128", xxhash.xxh3_128(DATA).hexdigest()),
])
def test_hex_digest_is_the_algorithms_digest_of_the_joined_bytes(algorithm: str, expect: str) -> None:
    parts = [memoryview(DATA[:1000]), DATA[1000:1001], memoryview(DATA[1001:])]
    assert hex_digest(algorithm, [DATA]) == expect
    assert hex_digest(algorithm, parts) == expect
    assert hex_digest(algorithm, [DATA[:-1]]) != expect  # one byte short: another digest


def test_the_names_a_manifest_may_give() -> None:
    assert (LEGACY, DEFAULT) == ("sha256", "xxh3-128")
    assert set(ALGORITHMS) == {LEGACY, DEFAULT} and set(CRYPTOGRAPHIC) == {LEGACY}
    with pytest.raises(KeyError):
        hasher("md4")


@pytest.mark.parametrize(("sizes", "size", "expect"), [
    ([10], 4, [4, 4, 2]),
    ([8], 4, [4, 4]),
    ([0, 3, 0, 5], 4, [3, 4, 1]),  # empty parts give nothing; slices never span two parts
    ([], 4, []),
])
def test_slices(sizes: list[int], size: int, expect: list[int]) -> None:
    parts = [memoryview(bytes(n)) for n in sizes]
    got = list(slices(parts, size))
    assert [v.nbytes for v in got] == expect
    assert b"".join(got) == b"".join(parts)


def test_slices_of_a_typed_view_are_its_bytes() -> None:
    view = memoryview(bytearray(16)).cast("I")  # four 4-byte items
    assert [v.nbytes for v in slices([view], 6)] == [6, 6, 4]
