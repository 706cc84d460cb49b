"""Crash-safe checkpoints: atomic files, a manifest written last, verified before anything is read.

Layout under the storage root::

    checkpoints/step-000000042/model.safetensors
                               optimizer.safetensors
                               ...
                               MANIFEST.json   <- written last: the commit point

A checkpoint whose manifest is missing, does not parse, fails its own checksum, names a digest
algorithm it does not know, or lists a file whose digest or size differs is not a checkpoint. The
files' digests are XXH3-128 (``"digest": "xxh3-128"``), or SHA-256 in manifests from before that
field (:mod:`checkpoint.filehash` says why the fast one is enough here). Nor is one whose manifest,
checksum recomputed or not, names a file outside the checkpoint (an absolute name, ``..``, a ``/``,
an empty name, a NUL byte): such a file is never opened. Loading walks back from the newest to the
newest valid one, moves bad ones aside (kept for inspection, never loaded), and says so in one line
each.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rundir.paths import PathEscape, check_name

from . import filehash
from .storage import Data, Storage
from .tensorfile import chunks_size

__all__ = [
    "Checkpoint",
    "CheckpointStore",
    "CorruptCheckpoint",
    "HMAC_FIELD",
    "MANIFEST",
    "check_file",
    "checkpoint_name",
    "digest_of",
    "read_manifest",
    "seal_manifest",
]

MANIFEST = "MANIFEST.json"
FORMAT = 1
#: The manifest's field for an HMAC-SHA256 of its body, present where the writer holds a key.
HMAC_FIELD = "hmac_sha256"
_NAME = re.compile(r"^step-(\d{9})$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:09d}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")


class CorruptCheckpoint(Exception):
    """A checkpoint failed verification; the message names the file and the problem."""


def _file_name(name: str, fname: object) -> str:
    """A manifest's file name, if it names a file directly inside the checkpoint (as :meth:`save`
    writes them); otherwise the checkpoint is corrupt, and the file is never opened."""
    try:
        check_name(fname)
    except PathEscape as exc:
        raise CorruptCheckpoint(f"{name}/{MANIFEST}: lists a file outside the checkpoint: {exc}") from None
    assert isinstance(fname, str)
    if "/" in fname or fname == MANIFEST:
        raise CorruptCheckpoint(f"{name}/{MANIFEST}: lists a file outside the checkpoint: {fname!r}")
    return fname


def digest_of(manifest: Mapping[str, Any]) -> str:
    """The algorithm of a manifest's file digests: its ``digest`` field, or SHA-256 from before it."""
    algorithm = manifest.get("digest", filehash.LEGACY)
    return algorithm if isinstance(algorithm, str) else repr(algorithm)


def _entry_ok(entry: object, algorithm: str) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get(algorithm), str)
            and isinstance(entry.get("size"), int) and not isinstance(entry.get("size"), bool))


def _tag(key: bytes, canonical: bytes) -> str:
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


def seal_manifest(body: Mapping[str, Any], *, key: bytes | None = None) -> bytes:
    """A manifest's bytes: ``body`` with the SHA-256 of its canonical form and, given a ``key``, an
    HMAC-SHA256 of the same bytes. The checksum catches torn or flipped bytes; only the HMAC catches
    a manifest rewritten on purpose, checksum and all."""
    canonical = _canonical(body)
    manifest = dict(body, sha256=_sha256(canonical))
    if key is not None:
        manifest[HMAC_FIELD] = _tag(key, canonical)
    return json.dumps(manifest).encode("utf-8")


def read_manifest(name: str, raw: bytes, *, key: bytes | None = None) -> dict[str, Any]:
    """The body of checkpoint ``name``'s manifest, checked: it parses, its checksum holds, its format
    is known, so is its digest algorithm, each file entry has a confined name, a size and a digest, and
    - given a ``key`` - its HMAC holds (an unsigned manifest is refused then), and its digests are
    cryptographic. Raises :class:`CorruptCheckpoint`."""
    try:
        manifest = json.loads(raw)
        claimed = manifest.pop("sha256")
        tag = manifest.pop(HMAC_FIELD, None)
        canonical = _canonical(manifest)
        body_ok = claimed == _sha256(canonical)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CorruptCheckpoint(f"{name}/{MANIFEST}: unreadable") from None
    if not body_ok:
        raise CorruptCheckpoint(f"{name}/{MANIFEST}: checksum mismatch")
    if key is not None and not (isinstance(tag, str) and hmac.compare_digest(tag, _tag(key, canonical))):
        problem = "HMAC mismatch" if tag else "not signed"
        raise CorruptCheckpoint(f"{name}/{MANIFEST}: {problem} with the checkpoint key")
    if manifest.get("format") != FORMAT:
        raise CorruptCheckpoint(f"{name}/{MANIFEST}: unknown format {manifest.get('format')!r}")
    files, step = manifest.get("files"), manifest.get("step")
    if (not isinstance(files, dict) or not isinstance(manifest.get("meta"), dict)
            or not isinstance(step, int) or isinstance(step, bool)):
        raise CorruptCheckpoint(f"{name}/{MANIFEST}: malformed (files, step or meta)")
    algorithm = digest_of(manifest)
    if algorithm not in filehash.ALGORITHMS:
        raise CorruptCheckpoint(f"{name}/{MANIFEST}: unknown digest algorithm {algorithm!r}")
    if key is not None and algorithm not in filehash.CRYPTOGRAPHIC:
        raise CorruptCheckpoint(f"{name}/{MANIFEST}: signed, but its files' digests are {algorithm}, not cryptographic")
    for fname, entry in files.items():
        _file_name(name, fname)
        if not _entry_ok(entry, algorithm):
            raise CorruptCheckpoint(f"{name}/{MANIFEST}: malformed entry for {fname!r}")
    return manifest


def check_file(name: str, fname: str, entry: Mapping[str, Any], size: int, digest: str,
               algorithm: str = filehash.LEGACY) -> None:
    """Raise :class:`CorruptCheckpoint` unless a file's size and ``algorithm`` digest are the
    manifest's entry's."""
    if size != entry["size"]:
        raise CorruptCheckpoint(f"{name}/{fname}: {size} bytes, manifest says {entry['size']}")
    if digest != entry[algorithm]:
        raise CorruptCheckpoint(f"{name}/{fname}: {algorithm} mismatch")


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint: its step, the raw bytes of each file, and the manifest's metadata."""

    step: int
    name: str
    files: Mapping[str, bytes]
    meta: Mapping[str, Any] = field(default_factory=dict)


class CheckpointStore:
    """Saves, lists, verifies, loads and prunes checkpoints in a :class:`Storage`.

    ``between_files`` is called after each data file is durable and before the manifest: the place
    where a kill leaves a torn checkpoint. Chaos testing uses it to stop the writer there.
    ``digest``: the algorithm of the files' digests in the manifests it writes; it reads any known one.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        keep: int = 3,
        prefix: str = "checkpoints",
        between_files: Callable[[str], None] | None = None,
        digest: str = filehash.DEFAULT,
    ) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        filehash.hasher(digest)  # a KeyError now for an unknown one, not at the first save
        self.digest = digest
        self.storage = storage
        self.keep = keep
        self.prefix = prefix
        self.between_files = between_files
        self._durable: dict[str, bool] = {}  # by checkpoint name, as far as known

    def _key(self, name: str, file: str = "") -> str:
        return f"{self.prefix}/{name}/{file}" if file else f"{self.prefix}/{name}"

    # -- writing -------------------------------------------------------------------------------------

    def save(self, step: int, files: Mapping[str, Data], meta: Mapping[str, Any], *, durable: bool = True) -> str:
        """Write ``files`` then commit them with a manifest; returns the checkpoint's name.

        ``durable``: fsync everything, so that the checkpoint survives the machine going down. One
        that is not survives its writer being killed, not a crash of the machine, after which it
        fails verification and loading falls back; pruning always keeps the newest durable one."""
        name = checkpoint_name(step)
        # Uncommit any older checkpoint of the same step before overwriting its files.
        self.storage.delete(self._key(name, MANIFEST))
        try:
            self._write(name, step, files, meta, durable)
        except OSError:
            # A full disk, say: the checkpoint is not committed, and its files would only take the
            # space the next one needs. Committed checkpoints are untouched.
            self.storage.delete_tree(self._key(name))
            raise
        self._durable[name] = durable
        self.prune()
        return name

    def _write(self, name: str, step: int, files: Mapping[str, Data], meta: Mapping[str, Any], durable: bool) -> None:
        """Write the files of checkpoint ``name``, then its manifest: the commit point."""
        entries: dict[str, dict[str, Any]] = {}
        for fname, data in files.items():
            if fname == MANIFEST or "/" in fname:
                raise ValueError(f"bad checkpoint file name {fname!r}")
            # Durable, the data is fsynced now; its directory entry becomes durable with the manifest's.
            # The storage hashes each slice as it writes it: the bytes cross memory once.
            h = filehash.hasher(self.digest)
            self.storage.put(self._key(name, fname), data, commit=False, durable=durable, digest=h)
            size = len(data) if isinstance(data, bytes) else chunks_size(data)
            entries[fname] = {self.digest: h.hexdigest(), "size": size}
            if self.between_files is not None:
                self.between_files(fname)
        body = {"format": FORMAT, "step": step, "durable": durable, "digest": self.digest, "files": entries,
                "meta": dict(meta)}
        self.storage.put(self._key(name, MANIFEST), seal_manifest(body), durable=durable)

    def _is_durable(self, name: str) -> bool:
        """Whether a committed checkpoint was saved durably: its manifest says so, or, before that
        field existed, every save was. Read once per checkpoint."""
        known = self._durable.get(name)
        if known is None:
            try:
                known = json.loads(self.storage.get(self._key(name, MANIFEST))).get("durable", True) is not False
            except (OSError, ValueError, AttributeError):
                known = False
            self._durable[name] = known
        return known

    def prune(self) -> None:
        """Keep the newest ``keep`` committed checkpoints and the newest durable one; remove older
        ones and torn leftovers."""
        newest_first = sorted(self.committed(), reverse=True)
        keep = set(newest_first[: self.keep])
        keep.update(next(([n] for n in newest_first if self._is_durable(n)), []))
        for name in self._step_dirs():
            if name not in keep:
                self.storage.delete_tree(self._key(name))
                self._durable.pop(name, None)

    # -- reading -------------------------------------------------------------------------------------

    def _step_dirs(self) -> list[str]:
        return [n for n in self.storage.list(self.prefix) if _NAME.match(n)]

    def committed(self) -> list[str]:
        """Names of checkpoints that have a manifest (not yet verified), oldest first."""
        return [n for n in self._step_dirs() if self.storage.exists(self._key(n, MANIFEST))]

    def verify(self, name: str) -> Checkpoint:
        """Read and check one checkpoint; raise :class:`CorruptCheckpoint` naming what is wrong."""
        return self.verify_with_manifest(name)[1]

    def verify_with_manifest(self, name: str) -> tuple[bytes, Checkpoint]:
        """:meth:`verify`, with the manifest's bytes as they were read: what a copy held in memory is
        later compared with (:meth:`manifest_bytes`) to know it is still the one on disk."""
        raw = self._read(name, MANIFEST, f"no {MANIFEST}")
        manifest = read_manifest(name, raw)
        algorithm = digest_of(manifest)
        files: dict[str, bytes] = {}
        for fname, entry in manifest["files"].items():
            data = self._read(name, fname, "missing")
            check_file(name, fname, entry, len(data), filehash.hex_digest(algorithm, [data]), algorithm)
            files[fname] = data
        return raw, Checkpoint(step=manifest["step"], name=name, files=files, meta=manifest["meta"])

    def manifest_bytes(self, name: str) -> bytes | None:
        """The raw bytes of a checkpoint's manifest, unchecked; None if it has none (or it cannot be read)."""
        try:
            return self.storage.get(self._key(name, MANIFEST))
        except (OSError, PathEscape):
            return None

    def _read(self, name: str, fname: str, missing: str) -> bytes:
        try:
            return self.storage.get(self._key(name, fname))
        except FileNotFoundError:
            where = name if fname == MANIFEST else f"{name}/{fname}"
            raise CorruptCheckpoint(f"{where}: {missing}") from None
        except PathEscape as exc:  # a link out of the checkpoint
            raise CorruptCheckpoint(f"{name}: {exc}") from None
        except OSError as exc:  # a directory, a FIFO, no permission
            raise CorruptCheckpoint(f"{name}/{fname}: cannot read it ({exc.strerror or exc})") from None

    def load_latest(self, warn: Callable[[str], None] | None = None,
                    check: Callable[[Checkpoint], None] | None = None) -> Checkpoint | None:
        """The newest checkpoint that verifies, or None. Bad ones are moved aside with a warning.
        ``check``: a further test a checkpoint must pass (raising :class:`CorruptCheckpoint`), such
        as every rank of a gang having committed its part."""
        for name in reversed(self.committed()):
            try:
                ckpt = self.verify(name)
                if check is not None:
                    check(ckpt)
                return ckpt
            except CorruptCheckpoint as exc:
                self._quarantine(name)
                if warn is not None:
                    warn(f"checkpoint {exc} -- moved aside, falling back to an older checkpoint")
        return None

    def _quarantine(self, name: str) -> None:
        n = 0
        while self.storage.exists(self._key(f"corrupt-{name}-{n}")):
            n += 1
        self.storage.move_tree(self._key(name), self._key(f"corrupt-{name}-{n}"))
