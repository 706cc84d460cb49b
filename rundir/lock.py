"""One supervisor per run directory: an exclusive ``flock`` that the kernel drops when its holder dies,
so a lock left by a killed supervisor is simply taken over."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .exitcodes import ExitCode, UserError

__all__ = ["RunLock", "LOCK_FILE"]

LOCK_FILE = "supervisor.lock"


class RunLock:
    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise UserError(f"run directory {self.path.parent} is not writable: {exc.strerror}",
                            ExitCode.UNWRITABLE) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"run directory {self.path.parent} is in use by supervisor pid {holder}",
                            ExitCode.LOCKED) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
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
