"""The digests a checkpoint manifest records for its files, by name, and the hashers that make them.

A manifest names its algorithm (``"digest"``; a manifest without the field is from before it, and
used SHA-256), and each file entry holds its digest under that name. New local checkpoints use
XXH3-128: it catches torn, truncated and flipped bytes as surely as SHA-256 does, at over 10 GB/s
instead of about 0.5 s per GB, which at a large state is most of what a persist and a restore cost.
It is not a cryptographic hash: anyone who can rewrite a file can make it match. Where that matters
- a manifest signed with ``RUNNER_CHECKPOINT_KEY``, whose HMAC vouches for the digests in it, and the
remote store, which checks its copies against the same SHA-256 - the digests stay SHA-256.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import xxhash

__all__ = ["ALGORITHMS", "CRYPTOGRAPHIC", "DEFAULT", "LEGACY", "SLICE", "Hasher", "hasher", "hex_digest", "slices"]

#: What a manifest without a ``digest`` field used, and what signed manifests use.
LEGACY = "sha256"
#: What new local checkpoints use.
DEFAULT = "xxh3-128"
#: Bytes hashed (and written) at a time: small enough to stay in the CPU's cache between the two.
SLICE = 4 << 20


class Hasher(Protocol):
    def update(self, data: memoryview | bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


def _sha256() -> Hasher:
    return hashlib.sha256()


#: The known algorithms by the name a manifest gives them.
ALGORITHMS: dict[str, Callable[[], Hasher]] = {LEGACY: _sha256, DEFAULT: xxhash.xxh3_128}
#: Those that hold against a file made on purpose to match.
CRYPTOGRAPHIC = frozenset({LEGACY})


def hasher(algorithm: str) -> Hasher:
    """A new hasher for ``algorithm``; ``KeyError`` for a name not in :data:`ALGORITHMS`."""
    return ALGORITHMS[algorithm]()


def slices(parts: Sequence[memoryview | bytes], size: int | None = None) -> Iterator[memoryview]:
    """The bytes of ``parts`` in order, as views of at most ``size`` (default :data:`SLICE`) bytes, none
    empty."""
    size = SLICE if size is None else size
    for part in parts:
        view = memoryview(part)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        for i in range(0, view.nbytes, size):
            yield view[i : i + size]


def hex_digest(algorithm: str, parts: Sequence[memoryview | bytes]) -> str:
    """The digest of ``parts``' bytes, joined, by ``algorithm``."""
    h = hasher(algorithm)
    for view in slices(parts):
        h.update(view)
    return h.hexdigest()
