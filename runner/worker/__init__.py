"""The API a training job calls to be supervised: restore, report a step, checkpoint, heartbeat.

The job and the supervisor talk only through files in the run directory and the job's exit code:

``losses.jsonl``  one record per completed step per attempt (flushed every step)
``events.jsonl``  what happened: attempts, checkpoints, fallbacks, exits (shared with the supervisor)
``heartbeat``     rewritten on every phase change, and while training at most every
                  ``HEARTBEAT_EVERY_S``; the supervisor takes it and new steps as signs of life
``checkpoints/``  see :mod:`checkpoint.store`
``job.json``      the job's configuration, so a run directory is never resumed with another one
``final.json``    written when the job completes

A user's own script uses it the same way the built-in MNIST job does::

    with Worker(run_dir) as w:
        ckpt = w.restore()                 # a verified Checkpoint or None
        for step in ...:
            ...
            w.report_step(step, loss=loss, epoch=e, batch=b)
            if w.preemption_requested or step % k == 0:
                w.save_checkpoint(step + 1, files, meta)
            if w.preemption_requested:
                raise SystemExit(ExitCode.PREEMPTED)
        w.complete(params_sha256=...)

:class:`Worker` (in :mod:`.api`) is a facade over parts that each do one job: :mod:`.files`,
:mod:`.session`, :mod:`.faults` and :mod:`.standby`. :func:`run_guarded` (:mod:`.guard`) runs a job's
``main``: bad input, a full disk (exit 74) or a NaN loss (exit 76) end it with one line, not a traceback.
"""

from __future__ import annotations

from rundir.contract import ENV_CHAOS_ARM, PAUSED_EVENT, PAUSED_PHASE
from rundir.errors import NonFiniteError, ResourceError
from rundir.names import ENV_ATTEMPT, ENV_STANDBY, EVENTS, FINAL, HEARTBEAT, JOB, LOSSES, WORKER_LOCK, read_heartbeat

from .api import Worker
from .faults import SimulatedDeviceError
from .files import HEARTBEAT_EVERY_S
from .guard import run_guarded
from .session import Snapshot

__all__ = [
    "Worker",
    "run_guarded",
    "ResourceError",
    "NonFiniteError",
    "SimulatedDeviceError",
    "Snapshot",
    "ENV_ATTEMPT",
    "ENV_CHAOS_ARM",
    "ENV_STANDBY",
    "LOSSES",
    "EVENTS",
    "HEARTBEAT",
    "FINAL",
    "JOB",
    "WORKER_LOCK",
    "PAUSED_PHASE",
    "PAUSED_EVENT",
    "read_heartbeat",
    "HEARTBEAT_EVERY_S",
]
