"""Exit codes shared by the worker, the supervisor and the commands.

Each failure a person can act on has its own code, so that scripts and the supervisor can tell
them apart without parsing output. Codes in 64-78 follow BSD ``sysexits.h`` where one fits.

Verification has three verdicts (``runner.trace.Verdict``): pass (0), diverged (3: the runs part,
or their configurations differ, or a preemption notice lost steps) and incomplete (4: the run or
the reference never finished, so there is nothing to compare the rest with; the reason names why,
from the supervisor's ``gave-up`` or ``stopped`` record when there is one).

Two codes say the worker met a fact, not a bug: 74 (``EX_IOERR``) a write failed for want of space or
an I/O error, which the supervisor waits out (``--disk-wait``); 76 a NaN or infinite loss or
parameter, which a retry would only meet again. Both come as :class:`rundir.errors.ResourceError` and
:class:`rundir.errors.NonFiniteError`. 77 is kept for the remote checkpoint store's errors.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["ExitCode", "UserError"]


class ExitCode(IntEnum):
    OK = 0
    CRASHED = 1  # an uncaught exception: Python's own exit status for one
    USAGE = 2  # bad command-line flags (argparse's status)
    VERIFY_FAILED = 3  # the stitched trace does not match the reference (the verdict "diverged")
    INCOMPLETE = 4  # the run (or the reference) never finished: steps missing or no final record
    REGRESSED = 5  # a chaos campaign passed but did worse than the nights before it (--fail-on-regression)
    BAD_DATA = 65  # EX_DATAERR: missing or malformed training data
    LOCKED = 69  # EX_UNAVAILABLE: another supervisor or worker holds the run directory
    GAVE_UP = 70  # the supervisor stopped retrying: crash loop or restart budget spent
    UNWRITABLE = 73  # EX_CANTCREAT: the run directory cannot be created or written
    IO_ERROR = 74  # EX_IOERR: a write failed: no space left, quota exceeded, or an I/O error
    PREEMPTED = 75  # EX_TEMPFAIL: stopped on SIGTERM with its state saved; restart it
    NON_FINITE = 76  # a NaN or infinite loss or parameter: deterministic, never retried
    # EX_NOPERM: the remote checkpoint store cannot be used - a bad URL, a missing bucket, refused
    # credentials, an unreachable endpoint - or a newer supervisor has fenced this writer off.
    STORE = 77
    BAD_CONFIG = 78  # EX_CONFIG: options contradict the run directory or each other
    INTERRUPTED = 130  # stopped by the user (SIGINT/SIGTERM to the supervisor)


class UserError(Exception):
    """A problem with the user's input, reported as one line and a distinct exit code."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code
