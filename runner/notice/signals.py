"""Kubernetes and Slurm: the notice is a signal reaching the supervisor.

Kubernetes sends SIGTERM and SIGKILLs after ``terminationGracePeriodSeconds``; Slurm sends SIGTERM at
preemption or time limit, or the signal ``--signal=USR1@120`` names, ahead of it. The supervisor's
handler only records the signal; this module names it and builds the notice.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping

from .base import Notice, NoticeKind, NoticeSource

__all__ = ["parse_signal_name", "signal_notice", "SLURM_VARS"]

#: What Slurm tells a job about itself that a notice should carry.
SLURM_VARS = ("SLURM_JOB_ID", "SLURM_RESTART_COUNT")

_UNCATCHABLE = frozenset({signal.SIGKILL, signal.SIGSTOP})


def parse_signal_name(text: str) -> signal.Signals:
    """``TERM``, ``SIGTERM``, ``usr1`` or ``15`` as a signal the supervisor can catch; ValueError otherwise."""
    name = text.strip().upper()
    try:
        sig = signal.Signals(int(name)) if name.isdigit() else signal.Signals[
            name if name.startswith("SIG") else "SIG" + name]
    except (KeyError, ValueError):
        raise ValueError(f"not a signal: {text!r}") from None
    if sig in _UNCATCHABLE:
        raise ValueError(f"{sig.name} cannot be caught, so it cannot be a notice")
    return sig


def signal_notice(signum: int, environ: Mapping[str, str], now: float, grace_s: float | None = None) -> Notice:
    """The notice a signal gives: from Slurm when the job runs under it, from Kubernetes otherwise;
    ``grace_s`` (the grace period, or the ``@seconds`` of Slurm's ``--signal``) sets the deadline."""
    source = NoticeSource.SLURM if environ.get("SLURM_JOB_ID") else NoticeSource.K8S
    detail: dict[str, str] = {"signal": signal.Signals(signum).name}
    detail.update({k: environ[k] for k in SLURM_VARS if environ.get(k)})
    deadline = now + grace_s if grace_s is not None else None
    return Notice(source, NoticeKind.SIGNAL, deadline, now, detail)
