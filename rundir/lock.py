"""One supervisor, and one worker, per run directory: an exclusive ``flock`` on a file there that the
kernel drops when its holder dies, so a lock left by a killed process is simply taken over.

The supervisor holds ``supervisor.lock`` (with its pid in it, for the next one's message); the worker
holds ``worker.lock``, so that a standby spare never trains next to a live worker.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import as_resource_error
from .exitcodes import ExitCode, UserError

__all__ = ["RunLock", "LOCK_FILE", "SUPERVISOR_IN_USE"]

LOCK_FILE = "supervisor.lock"
#: What a second supervisor is told: ``{run_dir}``, and ``{holder}``, the pid the lock file holds.
SUPERVISOR_IN_USE = "run directory {run_dir} is in use by supervisor pid {holder}"


class RunLock:
    """The lock file ``name`` in ``run_dir``. Taken, it refuses a second holder with ``in_use`` (exit
    ``LOCKED``) and a directory it cannot write with exit ``UNWRITABLE``; ``record_pid`` writes the
    holder's pid into the file."""

    def __init__(self, run_dir: Path, name: str = LOCK_FILE, *, in_use: str = SUPERVISOR_IN_USE,
                 record_pid: bool = True) -> None:
        self.path = Path(run_dir) / name
        self.in_use = in_use
        self.record_pid = record_pid
        self.fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            full = as_resource_error(exc)
            if full is not None:  # no space for the file: wait for some, not fix a setting
                raise full from None
            raise UserError(f"run directory {self.path.parent} is not writable: {exc.strerror}",
                            ExitCode.UNWRITABLE) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(self.in_use.format(run_dir=self.path.parent, holder=holder), ExitCode.LOCKED) from None
        if self.record_pid:
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except OSError:
                pass  # a full disk: the pid is only for the next holder's message; the lock holds
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
