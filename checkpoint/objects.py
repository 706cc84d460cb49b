"""An object store named by a URL: whole objects over fsspec, one error type, bounded retries.

The URL picks the backend: ``s3://bucket/prefix`` (s3fs), ``gs://bucket/prefix`` (gcsfs, where it
is installed), ``file:///abs/dir`` and ``memory://prefix`` (quick tests). Clients are configured by
the environment only: for S3 ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``), ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY`` and ``AWS_REGION`` / ``AWS_DEFAULT_REGION``; gcsfs reads its own. Like a
bucket, a file:// store's directory must exist; keys under it are created as needed.

Errors are sorted by what a person can do about them (:func:`classify`). A bad URL, a missing bucket
or directory, refused or absent credentials, an endpoint that cannot be reached: a
:class:`StoreError`, one line, exit code 77 (``ExitCode.STORE``). Transient ones (timeouts, dropped
connections, 5xx, throttling) are retried with exponential backoff a bounded number of times, then
reported the same way. A missing object stays ``FileNotFoundError`` and a create-only write that
finds its key taken stays ``FileExistsError``: the caller knows what those mean.

Create-only writes (S3's ``If-None-Match: *``) are atomic on S3 and moto, on a local directory (a
hard link, which fails when the name exists) and in memory (one process): :attr:`ObjectStore.atomic_create`.
Elsewhere fsspec checks, then writes, and two writers can both succeed.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import fsspec
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential, wait_random

from rundir.exitcodes import ExitCode, UserError

from .troubles import RETRIED, Trouble, classify

__all__ = ["Blob", "Location", "ObjectStore", "StoreError", "Trouble", "classify", "parse_url", "s3_options"]

T = TypeVar("T")

_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*)://(.*)$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_BUCKETED = frozenset({"s3", "s3a", "gs", "gcs"})
_ATOMIC_CREATE = frozenset({"s3", "s3a", "file", "memory"})
_USAGE = "expected s3://bucket/prefix, gs://bucket/prefix, file:///absolute/dir or memory://prefix"


class StoreError(UserError):
    """The remote store cannot be used as asked; the message is one line that says why."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()), ExitCode.STORE)


@dataclass(frozen=True)
class Location:
    """A store URL taken apart: the fsspec protocol and the root path as that filesystem names it."""

    url: str
    protocol: str
    root: str

    @property
    def bucket(self) -> str | None:
        return self.root.split("/", 1)[0] if self.protocol in _BUCKETED else None


def parse_url(url: str, known: Collection[str] | None = None) -> Location:
    """Check a store URL without touching the network; raise :class:`StoreError` naming the fault.
    ``known``: the protocols fsspec knows (by default, fsspec's own list)."""
    m = _SCHEME.match(url)
    if m is None or "::" in url:
        raise StoreError(f"bad store URL {url!r}: {_USAGE}")
    protocol, rest = m.group(1), m.group(2).rstrip("/")
    if protocol not in (fsspec.available_protocols() if known is None else known):
        raise StoreError(f"bad store URL {url!r}: unknown protocol {protocol!r} ({_USAGE})")
    if protocol == "file":
        if not rest.startswith("/") or rest == "":
            raise StoreError(f"bad store URL {url!r}: file:// needs an absolute path, as in file:///dir")
        return Location(url, protocol, os.path.normpath(rest))
    if protocol in _BUCKETED:
        bucket, _, prefix = rest.partition("/")
        if not _BUCKET.match(bucket):
            raise StoreError(f"bad store URL {url!r}: {bucket!r} is not a bucket name ({_USAGE})")
        if prefix and any(p in ("", ".", "..") for p in prefix.split("/")):
            raise StoreError(f"bad store URL {url!r}: empty, '.' or '..' in the prefix")
        return Location(url, protocol, rest)
    return Location(url, protocol, rest)


def s3_options(env: Mapping[str, str], *, connect_timeout: float, read_timeout: float) -> dict[str, Any]:
    """s3fs's options from the standard environment variables. botocore and s3fs do not retry here
    (one attempt each): retries are ours, bounded, so that an unreachable endpoint fails fast.
    Credentials in the environment are passed on explicitly, so that a client made from the shared
    session (:func:`_shared_session`) sees the environment of the moment; without them botocore's
    own chain (config files, instance metadata) applies."""
    opts: dict[str, Any] = {
        "skip_instance_cache": True,
        "use_listings_cache": False,  # two stores in one process must see each other's writes
        "config_kwargs": {
            "connect_timeout": connect_timeout,
            "read_timeout": read_timeout,
            "retries": {"max_attempts": 1, "mode": "standard"},
        },
    }
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    for opt, var in (("key", "AWS_ACCESS_KEY_ID"), ("secret", "AWS_SECRET_ACCESS_KEY"), ("token", "AWS_SESSION_TOKEN")):
        if env.get(var):
            opts[opt] = env[var]
    if endpoint:
        opts["endpoint_url"] = endpoint
    if region:
        opts["client_kwargs"] = {"region_name": region}
    return opts


_session_lock = threading.Lock()
_session: Any = None


def _shared_session() -> Any:
    """One aiobotocore session for the process: the clients made from it share the service models it
    has loaded, where a new session per client costs about 0.1 s."""
    global _session
    with _session_lock:
        if _session is None:
            import aiobotocore.session

            _session = aiobotocore.session.AioSession()
        return _session


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


@dataclass(frozen=True)
class Blob:
    """One object as a listing shows it: its key under the store's root, size, ETag (where the
    store has one) and modification time in seconds since the epoch, by the store's clock."""

    key: str
    size: int
    etag: str | None
    modified: float


def _timestamp(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, str):
        return datetime.fromisoformat(value).timestamp()
    return float(value) if value is not None else 0.0


def _blob(key: str, info: Mapping[str, Any]) -> Blob:
    etag = info.get("ETag") or info.get("etag")
    modified = next((info[k] for k in ("LastModified", "mtime", "updated", "created") if info.get(k)), None)
    return Blob(key, int(info.get("size") or 0), etag.strip('"') if isinstance(etag, str) else None,
                _timestamp(modified))


class ObjectStore:
    """Whole-object operations under one URL's root, with errors sorted and transient ones retried.

    ``attempts``: tries per call for transient errors (1: fail at once, as a probe should).
    ``sleep`` is injected so that tests of the retries do not wait."""

    def __init__(self, url: str, *, connect_timeout: float = 5.0, read_timeout: float = 60.0, attempts: int = 4,
                 sleep: Callable[[float], None] | None = None) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.location = parse_url(url)
        self.attempts = attempts
        self._sleep = sleep or time.sleep
        self.atomic_create = self.location.protocol in _ATOMIC_CREATE
        self._endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        try:
            self.fs = self._filesystem(connect_timeout, read_timeout)
        except ImportError as exc:
            raise StoreError(f"{url}: the {self.location.protocol}:// backend is not installed ({exc})") from None
        self.root = self.fs._strip_protocol(url).rstrip("/")

    def _filesystem(self, connect_timeout: float, read_timeout: float) -> fsspec.AbstractFileSystem:
        protocol = self.location.protocol
        if protocol in ("s3", "s3a"):
            opts = s3_options(os.environ, connect_timeout=connect_timeout, read_timeout=read_timeout)
            fs = fsspec.filesystem(protocol, session=_shared_session(), **opts)
            fs.retries = 1  # s3fs's own retry loop: ours replaces it
            return fs
        return fsspec.filesystem(protocol, skip_instance_cache=True)

    @property
    def url(self) -> str:
        return self.location.url

    def path(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    # -- calls ---------------------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[..., T], *args: Any, missing_is_bucket: bool = False,
              **kwargs: Any) -> T:
        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=0.1, max=2.0) + wait_random(0, 0.1),
            retry=retry_if_exception(lambda e: classify(e, missing_is_bucket=missing_is_bucket) in RETRIED),
            reraise=True,
            sleep=self._sleep,
        )
        try:
            return retrying(fn, *args, **kwargs)
        except Exception as exc:
            error = self._error(exc, what, classify(exc, missing_is_bucket=missing_is_bucket))
            if error is None:
                raise
            raise error from exc

    def _error(self, exc: BaseException, what: str, trouble: Trouble) -> StoreError | None:
        """The one-line error for a trouble a person must act on; None for those the caller handles."""
        if trouble in (Trouble.MISSING, Trouble.EXISTS, Trouble.NOT_IO):
            return None
        where = f"remote store {self.url}: {what}"
        loc = self.location
        if trouble is Trouble.NO_BUCKET:
            missing = f"bucket {loc.bucket!r}" if loc.bucket else f"{loc.root!r}"
            return StoreError(f"{where}: {missing} does not exist")
        if trouble is Trouble.DENIED:
            return StoreError(f"{where}: access denied - the credentials were refused or lack permission "
                              f"(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY): {_one_line(exc)}")
        if trouble is Trouble.NO_CREDENTIALS:
            return StoreError(f"{where}: no credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
        if trouble is Trouble.UNREACHABLE:
            endpoint = self._endpoint or "the default endpoint"
            return StoreError(f"{where}: cannot reach {endpoint} after {self.attempts} attempt(s): {_one_line(exc)}")
        if trouble is Trouble.TRANSIENT:
            return StoreError(f"{where}: gave up after {self.attempts} attempt(s): {_one_line(exc)}")
        return StoreError(f"{where}: {type(exc).__name__}: {_one_line(exc)}")

    # -- operations ----------------------------------------------------------------------------------

    def probe(self) -> None:
        """A cheap call that fails as the real ones would: the bucket (or directory) is there and
        these credentials may read it."""
        loc = self.location
        if loc.protocol in ("s3", "s3a"):
            self._call("probe", self.fs.call_s3, "head_bucket", Bucket=loc.bucket, missing_is_bucket=True)
        elif loc.protocol == "file":
            self._call("probe", self._local_probe, missing_is_bucket=True)
        else:
            self._call("probe", self.fs.find, self.path(""), maxdepth=1, missing_is_bucket=True)

    def _local_probe(self) -> None:
        if not os.path.isdir(self.root):
            raise FileNotFoundError(self.root)
        if not os.access(self.root, os.R_OK | os.W_OK | os.X_OK):
            raise PermissionError(f"{self.root}: not readable and writable")

    def find(self, prefix: str) -> dict[str, Blob]:
        """Every object under ``prefix``, by key; nothing (not an error) where there is none."""
        found = self._call(f"list {prefix}", self.fs.find, self.path(prefix), detail=True)
        start = len(self.root) + 1
        return {name[start:]: _blob(name[start:], info) for name, info in found.items()
                if info.get("type", "file") == "file" and name.startswith(self.root + "/")}

    def info(self, key: str) -> Blob:
        return _blob(key, self._call(f"stat {key}", self.fs.info, self.path(key)))

    def read(self, key: str) -> bytes:
        return bytes(self._call(f"read {key}", self.fs.cat_file, self.path(key)))

    def write(self, key: str, data: bytes, *, create_only: bool = False) -> None:
        """Write an object whole. ``create_only``: raise ``FileExistsError`` if the key is taken."""
        if self.location.protocol == "file":
            self._call(f"write {key}", self._local_put, key, data, create_only, missing_is_bucket=True)
        else:
            mode = "create" if create_only else "overwrite"
            self._call(f"write {key}", self.fs.pipe_file, self.path(key), data, mode=mode, missing_is_bucket=True)

    def upload(self, local: Path, key: str, *, part_size: int) -> None:
        """Copy a local file to ``key``; on S3 in parts of ``part_size`` from twice that size on."""
        protocol = self.location.protocol
        if protocol == "file":
            self._call(f"upload {key}", self._local_put, key, Path(local), False, missing_is_bucket=True)
        elif protocol in ("s3", "s3a"):
            self._call(f"upload {key}", self.fs.put_file, str(local), self.path(key), chunksize=part_size,
                       missing_is_bucket=True)
        else:
            self._call(f"upload {key}", self.fs.put_file, str(local), self.path(key), missing_is_bucket=True)

    def download(self, key: str, local: Path) -> None:
        self._call(f"download {key}", self.fs.get_file, self.path(key), str(local))

    def sha256(self, key: str) -> str:
        """The SHA-256 of an object, read back in blocks (a retry reads it again from the start)."""
        def run() -> str:
            h = hashlib.sha256()
            with self.fs.open(self.path(key), "rb") as f:
                while block := f.read(8 << 20):
                    h.update(block)
            return h.hexdigest()
        return self._call(f"read {key}", run)

    def delete(self, keys: Collection[str]) -> None:
        """Remove objects; one already gone is not an error."""
        for key in keys:
            try:
                self._call(f"delete {key}", self.fs.rm_file, self.path(key))
            except FileNotFoundError:
                pass

    def _local_put(self, key: str, source: bytes | Path, create_only: bool) -> None:
        """A local file written whole: a temporary file, fsync, then a link (create-only: fails if the
        name exists) or a rename, then fsync of the directory."""
        if not os.path.isdir(self.root):
            raise FileNotFoundError(self.root)
        path = Path(self.path(key))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        try:
            with open(tmp, "wb") as f:
                if isinstance(source, Path):
                    with open(source, "rb") as src:
                        while block := src.read(8 << 20):
                            f.write(block)
                else:
                    f.write(source)
                f.flush()
                os.fsync(f.fileno())
            if create_only:
                os.link(tmp, path)
            else:
                os.replace(tmp, path)
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
