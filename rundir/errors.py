"""The worker's failures that are facts, not bugs, each as one line and an exit code: a write that
found no space, no quota or a failing disk (:class:`ResourceError`, exit 74), and a NaN or infinite
value in training (:class:`NonFiniteError`, exit 76).

A write deep in the worker raises a plain ``OSError``, often without a file name (``os.write`` on a
descriptor has none) or with a temporary one: :func:`writing` names the file being written, and
:func:`as_resource_error` turns an error whose errno is one of :data:`RESOURCE_CAUSES` into a
:class:`ResourceError` that names the path and the cause. :func:`print_error` prints the one line
even when standard error is on the full disk.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from .exitcodes import ExitCode, UserError

__all__ = [
    "RESOURCE_CAUSES",
    "resource_cause",
    "ResourceError",
    "NonFiniteError",
    "as_resource_error",
    "writing",
    "print_error",
    "quiet_streams",
]

#: The errnos of a resource fault, and how the one line names each cause.
RESOURCE_CAUSES: Mapping[int, str] = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EIO: "input/output error",
}


def resource_cause(err: object) -> str | None:
    """The cause of a resource fault with errno ``err`` (as in :data:`RESOURCE_CAUSES`), or None for
    any other errno, or none."""
    return RESOURCE_CAUSES.get(err) if isinstance(err, int) and not isinstance(err, bool) else None


class ResourceError(UserError):
    """A write failed for want of space or quota, or the disk failed: exit 74. ``path`` is the file
    being written, when known."""

    def __init__(self, cause: str, path: str | None = None, err: int = errno.ENOSPC) -> None:
        super().__init__(f"{cause} writing {path}" if path else cause, ExitCode.IO_ERROR)
        self.cause, self.path, self.errno = cause, path, err


class NonFiniteError(UserError):
    """A NaN or infinite loss or parameter: exit 76. A retry would compute it again."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.NON_FINITE)


def as_resource_error(exc: BaseException) -> ResourceError | None:
    """``exc`` as a :class:`ResourceError` if its ``errno`` is a resource fault's, else None. Any
    exception with ``errno`` and ``filename`` attributes counts (an ``OSError``, or the checkpoint
    writer's error carrying the errno it met in its own process)."""
    if isinstance(exc, ResourceError):
        return exc
    err = getattr(exc, "errno", None)
    cause = resource_cause(err)
    if cause is None:
        return None
    filename = getattr(exc, "filename", None)
    assert isinstance(err, int)
    return ResourceError(cause, os.fsdecode(filename) if filename else None, err)


@contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """An ``OSError`` raised inside names ``path``, the file being written: not a temporary file's
    name, nor none at all (a write to a descriptor has none)."""
    try:
        yield
    except OSError as exc:
        exc.filename = str(path)
        raise


def print_error(message: str) -> None:
    """Print ``error: message`` on standard error. If that fails (standard error is a log on the full
    disk), both standard streams are pointed at ``/dev/null``: the interpreter would otherwise fail
    to flush them at exit and turn the exit code into 120."""
    try:
        print(f"error: {message}", file=sys.stderr, flush=True)
    except OSError:
        quiet_streams()


def quiet_streams() -> None:
    """Point standard output and error at ``/dev/null``, so what is buffered for them is dropped."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        for stream in (sys.stdout, sys.stderr):
            try:
                os.dup2(null, stream.fileno())
            except (OSError, ValueError, AttributeError):
                pass
    finally:
        os.close(null)
