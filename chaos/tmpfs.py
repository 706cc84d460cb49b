"""The small disk of a chaos run whose schedule fills it: a 64 MiB tmpfs mounted on the run directory.

The disk-full fault (:mod:`chaos.faults`) must fill the file system the run directory is on, and
only that one: a tmpfs of its own, mounted for the trial and unmounted after it. Mounting needs
root; without it (or where the mount is refused, as in many containers) a schedule with disk-full
faults is refused up front, exit 78, naming why. At the end the run directory's files are copied
out of the tmpfs and put back on the disk beneath it, the filler left out, so that the chaos run
stays for inspection and replay like any other.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from rundir.exitcodes import ExitCode, UserError

from .faults import FILLER, FaultKind
from .schedule import Schedule

__all__ = ["SIZE", "mount_problem", "refuse_unless_mountable", "disk_for", "small_disk"]

SIZE = "64m"


def mount_problem(euid: int, mount: str | None) -> str | None:
    """Why a tmpfs cannot be mounted here, or None: it takes root and a ``mount`` command."""
    if euid != 0:
        return "the disk-full fault needs root, to mount a small tmpfs on the run directory"
    if mount is None:
        return "the disk-full fault needs the mount command, to mount a small tmpfs on the run directory"
    return None


def refuse_unless_mountable(kinds: Iterable[FaultKind]) -> None:
    """Exit 78 now, before any run, if disk-full faults are asked for where no tmpfs can be mounted."""
    if FaultKind.DISK_FULL not in set(kinds):
        return
    problem = mount_problem(os.geteuid(), shutil.which("mount"))
    if problem is not None:
        raise UserError(f"{problem}; leave disk-full out of --fault-kinds", ExitCode.BAD_CONFIG)


def disk_for(schedule: Schedule, run_dir: Path) -> contextlib.AbstractContextManager[None]:
    """A small tmpfs on ``run_dir`` for a schedule with disk-full faults; nothing for the others."""
    if any(f.kind is FaultKind.DISK_FULL for f in schedule.faults):
        return small_disk(run_dir)
    return contextlib.nullcontext()


@contextlib.contextmanager
def small_disk(run_dir: Path, size: str = SIZE) -> Iterator[None]:
    """Mount a tmpfs of ``size`` on ``run_dir`` (new or empty) for the block; then keep its files."""
    refuse_unless_mountable([FaultKind.DISK_FULL])
    run_dir.mkdir(parents=True, exist_ok=True)
    if any(run_dir.iterdir()):
        raise UserError(f"run directory {run_dir} already holds a run; choose a new --run-dir", ExitCode.BAD_CONFIG)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(run_dir)],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        why = (r.stderr or r.stdout).strip().splitlines()[-1:] or [f"exit {r.returncode}"]
        raise UserError(f"cannot mount a tmpfs on {run_dir} for the disk-full fault: {why[0]}", ExitCode.BAD_CONFIG)
    try:
        yield
    finally:
        _unmount_keeping(run_dir)


def _unmount_keeping(run_dir: Path) -> None:
    """Copy the run directory's files (not the filler) aside, unmount, and move them back."""
    aside = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}-", dir=run_dir.parent))
    try:
        shutil.copytree(run_dir, aside / "run", symlinks=True, ignore=shutil.ignore_patterns(FILLER))
        if subprocess.run(["umount", str(run_dir)], capture_output=True, stdin=subprocess.DEVNULL).returncode:
            subprocess.run(["umount", "-l", str(run_dir)], capture_output=True, stdin=subprocess.DEVNULL)
        for child in (aside / "run").iterdir():
            os.replace(child, run_dir / child.name)
    finally:
        shutil.rmtree(aside, ignore_errors=True)
