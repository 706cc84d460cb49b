"""Where checkpoint bytes live.

The store speaks to a :class:`Storage` through a handful of whole-object operations (put, get, list,
delete), the shape that object stores such as S3 and GCS offer, so an fsspec-backed storage can be
added without touching the store. A checkpoint is committed by writing its manifest last, which needs
no atomic directory rename.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from rundir.errors import writing
from rundir.paths import confined

from .filehash import Hasher, slices

#: What a file is written from: its bytes, or buffers to write one after another.
Data = bytes | Sequence[memoryview]

__all__ = ["Data", "Storage", "LocalStorage", "fsync_dir"]


class Storage(Protocol):
    def put(self, key: str, data: Data, *, commit: bool = True, durable: bool = True,
            digest: Hasher | None = None) -> None:
        """Write ``data`` under ``key`` so that readers see either nothing or all of it. ``durable``:
        make the data survive the machine going down (not only this process) before returning; with
        ``commit`` too, also the name itself and every name written durably before it under the same
        prefix. Not durable, it survives the writing process being killed, as it is visible to others.
        ``digest``: fed every byte written, in order."""

    def get(self, key: str) -> bytes: ...

    def list(self, prefix: str) -> list[str]:
        """Names directly under ``prefix`` (one level), sorted."""

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def delete_tree(self, prefix: str) -> None: ...

    def move_tree(self, src: str, dst: str) -> None: ...


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a file created or renamed in it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


def _write_all(fd: int, parts: list[memoryview]) -> None:
    """One ``writev`` for all the buffers, and more where the kernel took less than all of it."""
    parts = [p.cast("B") if p.format != "B" or p.ndim != 1 else p for p in parts if p.nbytes]
    while parts:
        n = os.writev(fd, parts[:_IOV_MAX])
        while parts and n >= parts[0].nbytes:
            n -= parts[0].nbytes
            parts.pop(0)
        if n:
            parts[0] = parts[0][n:]


class LocalStorage:
    """A directory on a local or network file system: temp file, fsync, rename, fsync the directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key

    def put(self, key: str, data: Data, *, commit: bool = True, durable: bool = True,
            digest: Hasher | None = None) -> None:
        """See :class:`Storage`. A write that fails (a full disk) leaves no temporary file behind,
        and its ``OSError`` names the file being written. With a ``digest``, the bytes are hashed and
        written a slice at a time, each hashed while it is still in the CPU's cache: one pass over
        memory instead of two."""
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                parts = [memoryview(data)] if isinstance(data, bytes) else list(data)
                if digest is None:
                    _write_all(fd, parts)
                else:
                    for view in slices(parts):
                        digest.update(view)
                        _write_all(fd, [view])
                if durable:
                    os.fsync(fd)
            except BaseException:
                os.close(fd)
                os.unlink(tmp)  # its blocks go back to the file system
                raise
            os.close(fd)
            os.replace(tmp, path)
        if commit and durable:
            # The file's directory, and the directories above it up to the root: a new directory's
            # own name is an entry in its parent.
            d = path.parent
            while True:
                fsync_dir(d)
                if d == self.root or self.root not in d.parents:
                    break
                d = d.parent

    def get(self, key: str) -> bytes:
        """The bytes of a regular file. Keys are confined to the key's first directory (a link out of
        it raises ``rundir.paths.PathEscape``; that directory itself may be a link, say to a bigger
        disk), and the file is opened without blocking, so a FIFO is refused rather than waited on."""
        top, _, rest = key.partition("/")
        path = confined(self.root / top, rest) if rest else confined(self.root, top)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file", str(path))
            return f.read()

    def list(self, prefix: str) -> list[str]:
        try:
            return sorted(p.name for p in self._path(prefix).iterdir())
        except FileNotFoundError:
            return []

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass

    def delete_tree(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix), ignore_errors=True)

    def move_tree(self, src: str, dst: str) -> None:
        os.replace(self._path(src), self._path(dst))
