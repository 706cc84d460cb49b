"""Dropping files from the page cache, so that the next read of them comes from the disk."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def drop_cache(paths: Iterable[Path]) -> None:
    """Have the files read from the disk next time: each is synced first, so its pages are clean and
    the kernel lets them go."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
