"""The durable tier: checkpoints and journals in an object store, over any fsspec URL.

Layout under the store's root::

    checkpoints/step-000000042/model.safetensors  ...
                               MANIFEST.json        <- written last, create-only: the commit point
    fence/gen-000000007                             <- one per supervisor start (checkpoint/fence.py)
    journal/losses.jsonl/<offset>-<digest>          <- journal segments (checkpoint/segments.py)

Upload sends every file of a local checkpoint, then checks what the store holds: the size, and the
content by ETag where the ETag is the MD5 of the bytes (S3 single-part uploads) or of the parts' MD5s
(multipart uploads, whose part size this module chooses); otherwise - no ETag (file://, memory://) or
another kind of ETag (SSE-KMS, other stores) - by reading the object back and hashing it. Only then
is the manifest written, create-only where the store allows it, after checking the fence.

A checkpoint without a valid manifest does not exist. Download writes the files into a staging
directory, verifies every byte with the local store's own checks (``read_manifest``/``check_file``),
and only then moves the directory into place; a corrupt checkpoint is skipped with a warning,
falling back to the next newest.

Retention (:func:`plan_prune`): keep the newest ``keep`` committed checkpoints; an older one goes only
once the checkpoint after it has been committed for ``grace`` seconds. A reader picks a checkpoint
while it is the newest, so a download that takes less than ``grace`` never loses its files (a longer
one fails verification and falls back). Leftovers of torn uploads go when older than the newest
commit and untouched for ``grace``. Object times are the store's clock, compared with this machine's:
the skew must be well under ``grace``.

Authenticity: with ``RUNNER_CHECKPOINT_KEY`` set, manifests carry an HMAC-SHA256 of their body (whose
file digests are SHA-256, whatever the local manifest used) and journal segments are named by one; a
manifest without a valid HMAC is refused. Without a key, none is written or required."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .digests import FileDigest, digest_file
from .fence import Fence, StaleGeneration
from .objects import Blob, ObjectStore, StoreError
from .segments import Journals
from .storage import fsync_dir
from .store import MANIFEST, CorruptCheckpoint, check_file, digest_of, read_manifest, seal_manifest

__all__ = [
    "CHECKPOINTS",
    "ENV_CHECKPOINT_KEY",
    "CheckpointConflict",
    "RemoteCheckpoint",
    "RemoteStore",
    "Uploaded",
    "checkpoint_key",
    "plan_prune",
]

CHECKPOINTS = "checkpoints"
#: A secret shared by the writers and readers of a store: manifests are signed and checked with it.
ENV_CHECKPOINT_KEY = "RUNNER_CHECKPOINT_KEY"
STEP_NAME = re.compile(r"^step-\d{9}$")  # checkpoint_name()'s shape
Warn = Callable[[str], None]


def checkpoint_key(env: Mapping[str, str]) -> bytes | None:
    value = env.get(ENV_CHECKPOINT_KEY, "")
    return value.encode("utf-8") if value else None


class CheckpointConflict(StoreError):
    """The store already holds a committed checkpoint of this step with other contents."""


@dataclass(frozen=True)
class RemoteCheckpoint:
    """A committed checkpoint as its manifest describes it (its bytes are checked on download)."""

    name: str
    step: int
    generation: int
    sizes: Mapping[str, int]
    journals: Mapping[str, int]  # journal lengths in the store when it was committed
    committed_at: float  # the manifest's time, by the store's clock
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Uploaded:
    name: str
    bytes: int
    seconds: float
    checked: Mapping[str, str]  # file -> "etag" or "read-back": how the store's copy was checked
    already: bool = False  # the store had this very checkpoint committed


def plan_prune(committed: Sequence[tuple[str, float]], leftovers: Mapping[str, float], *, keep: int,
               grace: float, now: float) -> list[str]:
    """Which checkpoints to delete. ``committed``: (name, commit time) oldest first; ``leftovers``:
    uncommitted name -> the newest time among its objects."""
    if keep < 1:
        raise ValueError("keep must be at least 1")
    doomed = [name for i, (name, _) in enumerate(committed[: max(len(committed) - keep, 0)])
              if now - committed[i + 1][1] >= grace]
    newest = committed[-1][0] if committed else None
    doomed += [name for name, t in sorted(leftovers.items())
               if newest is not None and name < newest and now - t >= grace]
    return doomed


def _with_sha256(local: Mapping[str, Any], digests: Mapping[str, FileDigest]) -> dict[str, Any]:
    """A local manifest's body as the store records it: SHA-256 file digests, which a signed manifest
    vouches for and the store's copies are checked by, whatever the local one used."""
    body = {k: v for k, v in local.items() if k != "digest"}
    body["files"] = {fname: {"sha256": d.sha256, "size": d.size} for fname, d in digests.items()}
    return body


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in ("step", "files", "meta"))


class RemoteStore:
    """Checkpoints and journals in the store at ``url``.

    ``generation``: the one this writer was given by its supervisor (``acquire()`` takes a new one);
    uploads and journal segments need one, and a writer that holds one is fenced in prune too.
    ``key``: for manifest HMACs (default: from ``RUNNER_CHECKPOINT_KEY``). ``part_size``: S3
    multipart part size. ``between_files`` is called after each file is uploaded and checked, before
    the manifest: where a kill leaves a torn upload."""

    def __init__(self, url: str, *, generation: int | None = None, key: bytes | None = None,
                 part_size: int = 64 << 20, attempts: int = 4, connect_timeout: float = 5.0,
                 between_files: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if part_size < 5 << 20:
            raise ValueError("part_size must be at least 5 MiB (S3's smallest part)")
        self.objects = ObjectStore(url, connect_timeout=connect_timeout, attempts=attempts)
        self.fence = Fence(self.objects, generation, clock=clock)
        self.key = key if key is not None else checkpoint_key(os.environ)
        self.part_size = part_size
        self.between_files = between_files
        self.journals = Journals(self.objects, self.key)
        self._clock = clock
        self._connect_timeout = connect_timeout
        self._described: dict[tuple[str, str | None, int, float], RemoteCheckpoint] = {}

    @property
    def url(self) -> str:
        return self.objects.url

    @property
    def generation(self) -> int | None:
        return self.fence.generation

    def check(self) -> None:
        """A cheap probe that fails fast (one attempt, a short connect timeout) with a one-line
        :class:`StoreError` if the store cannot be used."""
        ObjectStore(self.url, connect_timeout=min(self._connect_timeout, 2.0), read_timeout=5.0, attempts=1).probe()

    def acquire(self) -> int:
        """Take the next generation; every other writer of this store is fenced off from now on."""
        return self.fence.acquire()

    # -- upload --------------------------------------------------------------------------------------

    def upload(self, checkpoint_dir: Path, *, journals: Sequence[Path] = ()) -> Uploaded:
        """Upload a committed local checkpoint directory - the files its manifest lists, each checked
        before and after - then the journal files ``journals`` (their complete lines), then commit.
        Re-uploading a checkpoint the store already holds does nothing."""
        t0 = time.perf_counter()
        src = Path(checkpoint_dir)
        name = src.name
        if not STEP_NAME.match(name):
            raise ValueError(f"{src}: not a checkpoint directory (step-NNNNNNNNN)")
        try:
            local = read_manifest(name, (src / MANIFEST).read_bytes())
        except FileNotFoundError:
            raise CorruptCheckpoint(f"{name}: no {MANIFEST}") from None
        self.fence.check("upload a checkpoint")
        digests, algorithm = {}, digest_of(local)
        for fname, entry in local["files"].items():  # refuse a corrupt local checkpoint before sending any of it
            digests[fname] = digest_file(src / fname, self.part_size, also=algorithm)
            check_file(name, fname, entry, digests[fname].size, str(digests[fname].also), algorithm)
        local = _with_sha256(local, digests)
        raw, existing = self._manifest(name)
        if existing is not None and _same(existing, local):
            return Uploaded(name, 0, time.perf_counter() - t0, {}, already=True)
        if existing is not None:
            raise CheckpointConflict(f"remote store {self.url}: {name} is committed there with other contents")
        if raw is not None:
            self.objects.delete([self._key(name, MANIFEST)])  # it does not verify: it commits nothing
        checked = {}
        for fname, digest in digests.items():
            checked[fname] = self._put_checked(src / fname, self._key(name, fname), digest)
            if self.between_files is not None:
                self.between_files(fname)
        lengths = {Path(p).name: self.journals.sync(Path(p)) for p in journals}
        self._commit(name, dict(local, generation=self.generation, journals=lengths), local)
        total = sum(int(e["size"]) for e in local["files"].values())
        return Uploaded(name, total, time.perf_counter() - t0, checked)

    def _key(self, name: str, fname: str = "") -> str:
        return f"{CHECKPOINTS}/{name}/{fname}" if fname else f"{CHECKPOINTS}/{name}"

    def _put_checked(self, path: Path, key: str, digest: FileDigest) -> str:
        """Upload one file and check the store's copy; a second try if it differs, then an error."""
        for _ in range(2):
            self.objects.upload(path, key, part_size=self.part_size)
            how = self._held(key, digest)
            if how is not None:
                return how
        raise StoreError(f"remote store {self.url}: {key}: the stored object differs from the uploaded file, twice")

    def _held(self, key: str, digest: FileDigest) -> str | None:
        """How the store's copy of ``key`` was found to hold ``digest``'s bytes, or None if it does not."""
        blob = self.objects.info(key)
        if blob.size != digest.size:
            return None
        if blob.etag is not None and blob.etag in digest.etags:
            return "etag"
        return "read-back" if self.objects.sha256(key) == digest.sha256 else None

    def _commit(self, name: str, body: Mapping[str, Any], local: Mapping[str, Any]) -> None:
        key = self._key(name, MANIFEST)
        self.fence.check("commit a checkpoint")
        try:
            self.objects.write(key, seal_manifest(body, key=self.key), create_only=True)
        except FileExistsError:
            other = self._manifest(name)[1]
            if other is not None and _same(other, local):
                return  # another writer committed this very checkpoint first
            raise CheckpointConflict(f"remote store {self.url}: {name} was committed by another writer") from None
        try:
            self.fence.check("commit a checkpoint")
        except StaleGeneration:
            self.objects.delete([key])  # overtaken in the window between check and write: take it back
            raise

    # -- listing -------------------------------------------------------------------------------------

    def _manifest(self, name: str) -> tuple[bytes | None, dict[str, Any] | None]:
        """The raw manifest of ``name`` in the store (None: there is none) and its body if it is valid."""
        try:
            raw = self.objects.read(self._key(name, MANIFEST))
        except FileNotFoundError:
            return None, None
        try:
            return raw, read_manifest(name, raw, key=self.key)
        except CorruptCheckpoint:
            return raw, None

    def _describe(self, name: str, blob: Blob) -> RemoteCheckpoint:
        """Read and check one manifest (cached by its listing: manifests are never rewritten in place)."""
        cache = (name, blob.etag, blob.size, blob.modified)
        hit = self._described.get(cache)
        if hit is None:
            m = read_manifest(name, self.objects.read(blob.key), key=self.key)
            hit = RemoteCheckpoint(name=name, step=int(m["step"]), generation=int(m.get("generation") or 0),
                                   sizes={f: int(e["size"]) for f, e in m["files"].items()},
                                   journals=dict(m.get("journals") or {}), committed_at=blob.modified,
                                   meta=dict(m.get("meta") or {}))
            self._described[cache] = hit
        return hit

    def _listing(self, warn: Warn | None) -> tuple[list[RemoteCheckpoint], dict[str, float]]:
        """The committed checkpoints, oldest first, and the others' names with their newest object time."""
        groups: dict[str, list[Blob]] = {}
        for key, blob in self.objects.find(CHECKPOINTS).items():
            parts = key.split("/")
            if len(parts) >= 3 and STEP_NAME.match(parts[1]):
                groups.setdefault(parts[1], []).append(blob)
        committed, others = [], {}
        for name in sorted(groups):
            manifest = next((b for b in groups[name] if b.key == self._key(name, MANIFEST)), None)
            described = None if manifest is None else self._valid(name, manifest, warn)
            if described is not None:
                committed.append(described)
            else:
                others[name] = max(b.modified for b in groups[name])
        return committed, others

    def _valid(self, name: str, manifest: Blob, warn: Warn | None) -> RemoteCheckpoint | None:
        try:
            return self._describe(name, manifest)
        except FileNotFoundError:
            return None  # deleted since the listing
        except CorruptCheckpoint as exc:
            if warn is not None:
                warn(f"remote checkpoint {exc} -- not a checkpoint, skipped")
            return None

    def list_committed(self, warn: Warn | None = None) -> list[RemoteCheckpoint]:
        """The checkpoints with a valid manifest, oldest first (their data is checked on download)."""
        return self._listing(warn)[0]

    def latest(self, warn: Warn | None = None) -> RemoteCheckpoint | None:
        committed = self.list_committed(warn)
        return committed[-1] if committed else None

    # -- download ------------------------------------------------------------------------------------

    def download(self, dest: Path, step: int | None = None, warn: Warn | None = None) -> RemoteCheckpoint | None:
        """Restore the newest checkpoint that verifies (at or before ``step``, if given) as
        ``dest/step-NNNNNNNNN``, ``dest`` being a local checkpoints directory; None if there is none."""
        for ck in reversed(self.list_committed(warn)):
            if step is not None and ck.step > step:
                continue
            try:
                self._fetch(ck.name, Path(dest))
                return ck
            except CorruptCheckpoint as exc:
                if warn is not None:
                    warn(f"remote checkpoint {exc} -- skipped, falling back to an older checkpoint")
        return None

    def _fetch(self, name: str, dest: Path) -> None:
        try:
            raw = self.objects.read(self._key(name, MANIFEST))
        except FileNotFoundError:
            raise CorruptCheckpoint(f"{name}: no {MANIFEST}") from None
        manifest = read_manifest(name, raw, key=self.key)
        dest.mkdir(parents=True, exist_ok=True)
        stage = dest / f".{name}.download-{os.getpid()}"
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir()
        try:
            for fname, entry in manifest["files"].items():
                target = stage / fname
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    self.objects.download(self._key(name, fname), target)
                except FileNotFoundError:
                    raise CorruptCheckpoint(f"{name}/{fname}: missing") from None
                algorithm = digest_of(manifest)
                digest = digest_file(target, self.part_size, etags=False, fsync=True, also=algorithm)
                check_file(name, fname, entry, digest.size, str(digest.also), algorithm)
            _write_durably(stage / MANIFEST, raw)
            _install(stage, dest / name)
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    # -- retention -----------------------------------------------------------------------------------

    def prune(self, keep: int, *, grace: float = 900.0, warn: Warn | None = None) -> list[str]:
        """Delete all but the newest ``keep`` committed checkpoints, as :func:`plan_prune` allows, and
        stale leftovers of torn uploads; returns the names deleted. A writer holding a generation
        checks its fence first; a reader or a maintenance job may prune without one."""
        if keep < 1:
            raise ValueError("keep must be at least 1")
        if self.generation is not None:
            self.fence.check("prune")
        committed, others = self._listing(warn)
        doomed = plan_prune([(c.name, c.committed_at) for c in committed], others, keep=keep, grace=grace,
                            now=self._clock())
        blobs = self.objects.find(CHECKPOINTS)
        for name in doomed:
            keys = sorted(k for k in blobs if k.startswith(self._key(name) + "/"))
            manifest = self._key(name, MANIFEST)
            self.objects.delete([k for k in keys if k == manifest])  # uncommit first
            self.objects.delete([k for k in keys if k != manifest])
        return doomed

    # -- journals ------------------------------------------------------------------------------------

    def append_segment(self, name: str, data: bytes) -> int:
        """Append ``data`` to journal ``name`` in the store; returns its new length there."""
        self.fence.check("append a journal segment")
        return self.journals.append(name, data)

    def sync_journal(self, path: Path) -> int:
        """Upload the complete lines that local journal ``path`` has beyond the store's copy."""
        self.fence.check("append a journal segment")
        return self.journals.sync(Path(path))

    def restore_journal(self, dest: Path, upto: Mapping[str, int] | None = None,
                        warn: Warn | None = None) -> dict[str, int]:
        """Reassemble every journal into ``dest`` (a run directory), each cut at ``upto[name]`` where
        given - a :class:`RemoteCheckpoint`'s ``journals``, to end where that checkpoint was taken."""
        return self.journals.restore(Path(dest), upto, warn)


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _install(stage: Path, target: Path) -> None:
    """Move a verified staging directory to ``target``, replacing a directory of that name."""
    fsync_dir(stage)
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(stage, target)
    fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)
