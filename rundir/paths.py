"""Names read from the run directory or a schedule, kept inside the directory they are meant for.

A checkpoint manifest lists its files by name, an event names a checkpoint, a chaos schedule names
the file to corrupt: each is data, and data may be damaged or crafted. Before such a name is joined
to a directory it must be a relative name that stays in it: not absolute, no ``..`` component, not
empty, no NUL byte, and not a symbolic link (at any level of it) that resolves outside.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

__all__ = ["PathEscape", "check_name", "confined"]


class PathEscape(ValueError):
    """A name that would leave its directory; the message is one line naming it."""


def check_name(name: object) -> str:
    """``name`` itself if, as text, it stays inside whatever directory it is joined to; raises
    :class:`PathEscape` otherwise. Pure: it looks at no file (see :func:`confined` for links)."""
    if not isinstance(name, str):
        raise PathEscape(f"{name!r} is not a file name")
    if "\x00" in name:
        raise PathEscape(f"{name!r} contains a NUL byte")
    if name.startswith("/"):
        raise PathEscape(f"{name!r} is an absolute path")
    parts = PurePosixPath(name).parts
    if not parts:
        raise PathEscape(f"{name!r} is an empty file name")
    if ".." in parts:
        raise PathEscape(f"{name!r} climbs out of its directory with '..'")
    return name


def confined(base: Path, name: object) -> Path:
    """``base / name``, once :func:`check_name` passes and the path, links followed, is still
    inside ``base`` (links that stay inside are fine). Raises :class:`PathEscape`.

    This only looks (``lstat`` and ``readlink``): nothing is opened, so a FIFO is never waited on."""
    path = Path(base) / check_name(name)
    try:
        real_base, real = Path(base).resolve(), path.resolve()
    except (OSError, RuntimeError) as exc:  # a link loop: RuntimeError before Python 3.13
        raise PathEscape(f"{name!r} in {base} cannot be resolved ({exc})") from None
    if real != real_base and real_base not in real.parents:
        raise PathEscape(f"{name!r} in {base} is a link to {real}, outside the directory")
    return path
