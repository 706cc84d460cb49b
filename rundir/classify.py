"""Why a worker attempt ended, decided from its exit status alone (plus two facts only the supervisor
knows: it killed a hung worker, or the user asked to stop).

=============  ==================================================  =========
class          how it is recognised                                 retried?
=============  ==================================================  =========
COMPLETED      exit 0                                               no
PREEMPTED      exit 75: stopped on SIGTERM after saving its state   yes, at once
KILLED         died of a signal (SIGKILL incl. the OOM killer,      yes
               SIGSEGV, SIGABRT ...), or exit 128+N from a shell
CRASHED        any other non-zero exit, e.g. 1 from an exception    yes
BAD_INPUT      exit 2, 65, 69, 73, 77, 78: bad flags, bad data, a   no: the same input
               run directory in use, unwritable or holding another  fails the same way
               configuration; 77: the remote store cannot be used,  (a fenced or unusable
               or a newer supervisor fenced this one off            store does not heal)
HUNG           no heartbeat or step for --hang-timeout: killed      yes
USER_STOPPED   the supervisor got SIGINT/SIGTERM and stopped it     no
RESOURCE       exit 74: a write found no space or quota, or the     after space
               disk failed (ENOSPC, EDQUOT, EIO)                    returns
NON_FINITE     exit 76: a NaN or infinite loss or parameter         never: a retry
                                                                    computes it again
=============  ==================================================  =========

Errors by origin: BAD_INPUT and NON_FINITE are the user's (the data, the model, the learning rate);
CRASHED is usually the user's code but may be transient (a device error); KILLED, PREEMPTED and HUNG
come from the platform, RESOURCE from the machine's disks. The retry policy decides how many of each
to tolerate; this module only names them. RESOURCE is not ``retriable``: the supervisor does not
restart at once but waits for space to return (``runner.diskwait``), and such a restart is no
failure in the crash loop.
"""

from __future__ import annotations

import signal
from enum import Enum

from .exitcodes import ExitCode

__all__ = ["ExitClass", "classify_exit", "signal_name"]


class ExitClass(Enum):
    COMPLETED = "completed"
    PREEMPTED = "preempted"
    KILLED = "killed"
    CRASHED = "crashed"
    BAD_INPUT = "bad-input"
    HUNG = "hung"
    USER_STOPPED = "user-stopped"
    RESOURCE = "resource"
    NON_FINITE = "non-finite"

    @property
    def retriable(self) -> bool:
        return self in _RETRIABLE


_RETRIABLE = frozenset({ExitClass.PREEMPTED, ExitClass.KILLED, ExitClass.CRASHED, ExitClass.HUNG})
_BAD_INPUT = frozenset(
    {ExitCode.USAGE, ExitCode.BAD_DATA, ExitCode.LOCKED, ExitCode.UNWRITABLE, ExitCode.STORE, ExitCode.BAD_CONFIG}
)


def signal_name(returncode: int | None) -> str | None:
    """``SIGKILL`` for a process killed by signal 9 (returncode -9 or 137 from a shell)."""
    if returncode is None:
        return None
    num = -returncode if returncode < 0 else returncode - 128 if 128 < returncode < 160 else None
    if num is None:
        return None
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def classify_exit(returncode: int, *, hung: bool = False, stopped_by_user: bool = False) -> ExitClass:
    """Classify one attempt's end. ``returncode`` is Popen's: negative for death by a signal."""
    if stopped_by_user:
        return ExitClass.USER_STOPPED
    if hung:
        return ExitClass.HUNG
    if returncode == ExitCode.OK:
        return ExitClass.COMPLETED
    if returncode == ExitCode.PREEMPTED:
        return ExitClass.PREEMPTED
    if returncode in _BAD_INPUT:
        return ExitClass.BAD_INPUT
    if returncode == ExitCode.IO_ERROR:
        return ExitClass.RESOURCE
    if returncode == ExitCode.NON_FINITE:
        return ExitClass.NON_FINITE
    if signal_name(returncode) is not None:
        return ExitClass.KILLED
    return ExitClass.CRASHED
