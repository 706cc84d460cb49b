"""A real, small tmpfs for the tests of full disks: mounted where the tests run as root, skipped
(with the reason) elsewhere, and always unmounted afterwards."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

__all__ = ["tmpfs", "fill", "ballast"]


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """``path`` (created) with a tmpfs of ``size`` (``"3m"``, ``"256k"``) mounted on it."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def ballast(path: Path, leave: int) -> int:
    """Take all but ``leave`` bytes of ``path``'s file system with the file ``path``; its size."""
    size = max(0, shutil.disk_usage(path.parent).free - leave)
    with open(path, "wb") as f:
        f.write(bytes(size))
    return size


def fill(path: Path) -> None:
    """Take every byte left on ``path``'s file system with the file ``path``."""
    with open(path, "wb", buffering=0) as f:
        for size in (1 << 20, 1 << 16, 1 << 12, 1 << 9):
            try:
                while True:
                    f.write(bytes(size))
            except OSError:
                continue
