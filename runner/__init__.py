"""preempt-runner: the supervisor, the worker API and the front door.

``import runner`` is light (the supervisor imports it before starting anything); what a job of
one's own uses is loaded on first use: :class:`runner.Job` and :func:`runner.main` (see
:mod:`runner.job`), :func:`runner.sample_rng` for augmentation in loader processes (see
:mod:`runner.resumable`), and ``runner.UserError`` and ``runner.ExitCode`` for its own errors.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Job", "main", "sample_rng", "UserError", "ExitCode"]

_LAZY = {"Job": "runner.job", "main": "runner.job", "sample_rng": "runner.resumable", "UserError": "rundir.exitcodes",
         "ExitCode": "rundir.exitcodes"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'runner' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
