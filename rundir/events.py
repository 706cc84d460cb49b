"""The kinds of record in ``events.jsonl`` and the one function that appends them.

Every record is one JSON object on one line with at least ``time`` (seconds since the epoch),
``source`` and ``event``; the fields of each kind are listed in ``docs/run-directory.md``.
"""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import Any

from .journal import append_record

__all__ = ["EventKind", "Source", "record_event"]


class Source(StrEnum):
    """Which process wrote a record."""

    SUPERVISOR = "supervisor"
    WORKER = "worker"
    STANDBY = "standby"
    WRITER = "writer"


class EventKind(StrEnum):
    """What happened. The lifecycle of one attempt, as the supervisor sees it, is
    ``attempt-spawned -> [chaos-fault] -> [hang-detected | stop-requested] -> attempt-exited``,
    then ``restart``, ``gave-up``, ``stopped`` or ``job-completed``, and ``supervisor-exit`` last.
    After an exit for want of space (74), ``disk-full`` when the supervisor starts waiting for it,
    and ``disk-space-returned`` before the ``restart``. The worker's own records (``attempt-started``,
    ``checkpoint-*``, ``preempted``, ``non-finite``, ``job-completed``) fall in between. With a remote
    store, ``store-attached`` (and ``store-restored`` on an empty run directory) come first, and the
    worker's uploader adds ``checkpoint-uploaded`` and ``checkpoint-upload-failed``."""

    # supervisor
    ATTEMPT_SPAWNED = "attempt-spawned"
    ATTEMPT_EXITED = "attempt-exited"
    RESTART = "restart"
    HANG_DETECTED = "hang-detected"
    STOP_REQUESTED = "stop-requested"
    STOPPED = "stopped"
    GAVE_UP = "gave-up"
    SUPERVISOR_EXIT = "supervisor-exit"
    CHAOS_FAULT = "chaos-fault"
    FORK_SERVER_STARTED = "fork-server-started"
    FORK_SERVER_READY = "fork-server-ready"
    FORK_SERVER_FAILED = "fork-server-failed"
    STANDBY_SPAWNED = "standby-spawned"
    STANDBY_LOST = "standby-lost"
    DISK_FULL = "disk-full"
    DISK_SPACE_RETURNED = "disk-space-returned"
    # preemption notices (docs/run-directory.md)
    NOTICE_SOURCE_DETECTED = "notice-source-detected"
    PREEMPTION_NOTICE = "preemption-notice"
    NOTICE_DEADLINE_CHECK = "notice-deadline-check"
    NOTICE_HANDLED = "notice-handled"
    STORE_ATTACHED = "store-attached"
    STORE_RESTORED = "store-restored"
    # standby spare
    STANDBY_READY = "standby-ready"
    # worker and checkpoint writer
    ATTEMPT_STARTED = "attempt-started"
    CHECKPOINT_SAVED = "checkpoint-saved"
    CHECKPOINT_FALLBACK = "checkpoint-fallback"
    # the worker's uploader process: a checkpoint committed in the remote store, or an upload that failed
    CHECKPOINT_UPLOADED = "checkpoint-uploaded"
    UPLOAD_FAILED = "checkpoint-upload-failed"
    CHAOS_PAUSED = "chaos-paused-in-checkpoint-write"
    PREEMPTED = "preempted"
    NON_FINITE = "non-finite"
    # both: the worker when it finishes, the supervisor when it sees that
    JOB_COMPLETED = "job-completed"


def record_event(path: Path, source: Source, kind: EventKind, /, **fields: Any) -> None:
    """Append one event record to ``path`` (``events.jsonl``)."""
    rec: dict[str, Any] = {"time": time.time(), "source": source.value, "event": kind.value}
    rec.update(fields)
    append_record(path, rec)
