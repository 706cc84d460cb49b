"""A command of one's own as the front door sees a job (:class:`runner.adapter.JobAdapter`), so that
``--simulate-preemption ... -- CMD`` and ``campaign ... -- CMD`` prove any script, not only the
built-in job.

Its identity is the command and a digest of the script's files: the script (``python FILE``) or the
module's file (``python -m M``), and the Python sources beside it, in its directory and below
(:func:`source_files`: hidden directories and ``__pycache__`` left out, at most ``MAX_FILES`` files of
at most ``MAX_FILE_BYTES`` each). Editing the job makes a new reference; data files are not hashed,
so name the data in the command's arguments (or use a new ``--reference-cache``) when it changes. The
interpreter's path and Paddle's version key the reference too. Its length is read from the reference
run's loss journal; the run directory and the checkpoint cadence reach it through the environment
(``RUNNER_RUN_DIR``, ``RUNNER_CHECKPOINT_EVERY``), which :class:`runner.Job` reads.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from rundir.argparsing import non_negative
from rundir.exitcodes import ExitCode, UserError
from rundir.journal import loss_problem, read_journal
from rundir.names import LOSSES

from .jobspec import ENV_CHECKPOINT_EVERY

__all__ = ["CommandJob", "script_of", "source_files", "files_digest", "steps_of", "MAX_FILES", "MAX_FILE_BYTES"]

MAX_FILES = 500
MAX_FILE_BYTES = 1 << 20
_SKIP_DIRS = {"__pycache__", "node_modules", "site-packages"}


def script_of(cmd: Sequence[str], cwd: Path, search: Sequence[str]) -> Path | None:
    """The file a command runs: ``PYTHON FILE ...`` gives FILE; ``PYTHON -m M ...`` gives M's file
    (``M.py``, or ``M/__main__.py`` for a package) on ``search``, the first match; None otherwise."""
    if len(cmd) < 2:
        return None
    if cmd[1] == "-m":
        if len(cmd) < 3:
            return None
        rel = Path(*cmd[2].split("."))
        for base in search:
            root = cwd / base
            for cand in (root / rel.with_suffix(".py"), root / rel / "__main__.py"):
                if cand.is_file():
                    return cand
        return None
    if cmd[1].startswith("-"):
        return None
    path = cwd / cmd[1]
    return path if path.is_file() else None


def source_files(script: Path, *, max_files: int = MAX_FILES, max_bytes: int = MAX_FILE_BYTES) -> list[Path]:
    """The script and the Python files in its directory tree (sorted, hidden directories and caches
    left out), as many as ``max_files``; a file over ``max_bytes`` counts by its size alone."""
    root = script.parent
    found = [script]
    for path in _walk(root):
        if len(found) >= max_files:
            break
        if path != script and path.suffix == ".py":
            found.append(path)
    return found


def _walk(root: Path) -> Iterator[Path]:
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return
    for e in entries:
        if e.name.startswith(".") or e.name in _SKIP_DIRS or e.is_symlink():
            continue
        if e.is_dir():
            yield from _walk(e)
        elif e.is_file():
            yield e


def files_digest(files: Sequence[Path], root: Path, *, max_bytes: int = MAX_FILE_BYTES) -> str:
    """SHA-256 over each file's path relative to ``root`` and its bytes (its size, past ``max_bytes``)."""
    h = hashlib.sha256()
    for f in files:
        try:
            size = f.stat().st_size
            body = f.read_bytes() if size <= max_bytes else f"<{size} bytes>".encode()
        except OSError:
            body = b"<unreadable>"
        h.update(f"{os.path.relpath(f, root)}\0{len(body)}\0".encode())
        h.update(body)
    return h.hexdigest()


def steps_of(records: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
    """(steps in the first epoch, steps in all) of a finished run's loss journal, the latest record
    of each step counting."""
    latest: dict[int, Any] = {}
    for r in records:
        latest[int(r["step"])] = r.get("epoch", 0)
    if not latest:
        return 0, 0
    first = latest[min(latest)]
    return sum(1 for e in latest.values() if e == first), len(latest)


class CommandJob:
    """``CMD``, a script that uses :class:`runner.Job` (or the low-level worker API)."""

    #: Nothing is imported in a fork server unless ``--preload`` says so.
    preload: tuple[str, ...] = ()

    def __init__(self, cmd: Sequence[str], *, cwd: Path | None = None) -> None:
        if not cmd:
            raise UserError("nothing after '--': give the command to run", ExitCode.USAGE)
        self.cmd = tuple(cmd)
        self.cwd = Path.cwd() if cwd is None else cwd
        self._digest: str | None = None

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--checkpoint-every-steps", "--checkpoint-every", type=non_negative, default=0, metavar="K",
                       dest="checkpoint_every_steps",
                       help="ask the job to checkpoint every K steps besides every epoch's end (through "
                            f"{ENV_CHECKPOINT_EVERY}; runner.Job reads it)")

    def argv(self, ns: argparse.Namespace, *, reference: bool = False) -> list[str]:
        """The front door's arguments for this job: the cadence, then ``--`` and the command."""
        return ["--checkpoint-every-steps", str(ns.checkpoint_every_steps), "--", *self.cmd]

    def command(self, run_dir: Path, argv: Sequence[str]) -> tuple[str, ...]:
        return tuple(argv[list(argv).index("--") + 1 :]) if "--" in argv else self.cmd

    def env(self, ns: argparse.Namespace) -> dict[str, str]:
        return {ENV_CHECKPOINT_EVERY: str(ns.checkpoint_every_steps)}

    def script(self) -> Path | None:
        search = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        return script_of(self.cmd, self.cwd, ["", *search])

    def digest(self) -> str:
        if self._digest is None:
            script = self.script()
            self._digest = "" if script is None else files_digest(source_files(script), script.parent)
        return self._digest

    def identity(self, ns: argparse.Namespace) -> dict[str, Any]:
        script = self.script()
        return {"job": script.name if script else Path(self.cmd[0]).name, "command": list(self.cmd),
                "files_sha256": self.digest()}

    def cache_key(self, ns: argparse.Namespace) -> str:
        python = shutil.which(self.cmd[0]) or self.cmd[0]
        try:
            paddle = metadata.version("paddlepaddle")
        except metadata.PackageNotFoundError:
            paddle = None
        return f"{os.path.abspath(python)}|paddle {paddle}"

    def prepared(self, ref_dir: Path) -> Sequence[Path]:
        return ()

    def total_steps(self, ref_dir: Path, ns: argparse.Namespace) -> tuple[int, int]:
        per, total = steps_of(read_journal(ref_dir / LOSSES, loss_problem).records)
        if total == 0:
            raise UserError(f"the reference run in {ref_dir} journalled no steps: does the command report them "
                            "(runner.Job.step)?", ExitCode.BAD_CONFIG)
        return per, total
