"""What every process this project starts does: it dies with the process that started it, and it
finds this project's code."""

from __future__ import annotations

import ctypes
import os
import signal
from pathlib import Path

__all__ = ["die_with", "project_pythonpath"]

_PR_SET_PDEATHSIG = 1
_ROOT = str(Path(__file__).resolve().parent.parent)


def die_with(parent: int, exit_code: int = 1) -> None:
    """In a child of ``parent``: be SIGKILLed when it ends (``PR_SET_PDEATHSIG``), and exit with
    ``exit_code`` at once if it ended already."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(exit_code)


def project_pythonpath(existing: str | None) -> str:
    """A ``PYTHONPATH`` with this project's root first, then ``existing``."""
    return os.pathsep.join(filter(None, [_ROOT, existing]))
