"""What the front door needs to know about a job, and nothing more: its options, its command line,
its identity (what makes two runs comparable) and its length. The built-in job's adapter is
:data:`model.job.BUILTIN`, a command of one's own's :class:`runner.command.CommandJob`; the
supervisor, chaos and the checkpoint code never see the job itself."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

__all__ = ["JobAdapter"]


class JobAdapter(Protocol):
    #: Modules a fork server imports once for this job (the default of ``--preload``).
    preload: tuple[str, ...]

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        """The job's own options, added to the front door's parsers."""

    def argv(self, ns: argparse.Namespace, *, reference: bool = False) -> list[str]:
        """The job's options in ``ns`` as command-line arguments; ``reference``: as the uninterrupted
        reference run takes them (nothing deliberately broken)."""

    def command(self, run_dir: Path, argv: Sequence[str]) -> tuple[str, ...]:
        """The command line that runs the job on ``run_dir``."""

    def env(self, ns: argparse.Namespace) -> dict[str, str]:
        """Environment variables for the job's processes, the reference's and the supervised run's."""

    def identity(self, ns: argparse.Namespace) -> dict[str, Any]:
        """Every setting that changes the loss trace (shown in reports, and part of the reference's key)."""

    def cache_key(self, ns: argparse.Namespace) -> str:
        """What else tells a reusable reference from a stale one, such as the data files' sizes and times."""

    def prepared(self, ref_dir: Path) -> Sequence[Path]:
        """Files a finished run left in ``ref_dir`` that a new run of the same job may reuse."""

    def total_steps(self, ref_dir: Path, ns: argparse.Namespace) -> tuple[int, int]:
        """(steps per epoch, total steps), read from a finished run of the job."""
