"""The names the worker and the supervisor share: files in the run directory, environment variables,
and the heartbeat reader. Light on purpose: the supervisor imports it before it starts the worker."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .contract import ENV_CHAOS_ARM

__all__ = [
    "ENV_RUN_DIR",
    "ENV_ATTEMPT",
    "ENV_STANDBY",
    "ENV_STANDBY_MEMORY",
    "ENV_STORE",
    "ENV_STORE_GENERATION",
    "ENV_UPLOAD_EVERY",
    "ENV_UPLOAD_DRAIN",
    "STORE_VARIABLES",
    "LOSSES",
    "EVENTS",
    "HEARTBEAT",
    "FINAL",
    "JOB",
    "WORKER_LOCK",
    "heartbeat_mtime",
    "read_heartbeat",
    "worker_env",
]

#: The run directory of the job a supervisor runs (a job of one's own may read it instead of a flag).
ENV_RUN_DIR = "RUNNER_RUN_DIR"
ENV_ATTEMPT = "RUNNER_ATTEMPT"
ENV_STANDBY = "RUNNER_STANDBY"
#: Whether a standby spare holds the newest checkpoint in memory while it waits: on, off or auto
#: (``--standby-memory``; see :mod:`checkpoint.held`).
ENV_STANDBY_MEMORY = "RUNNER_STANDBY_MEMORY"
#: The remote store a supervisor gives its workers (``--store``): its URL, the generation the supervisor
#: took there (every upload's commit checks that it is still the newest), how often to upload
#: (``--upload-every``), and how long a worker's last upload may take when it stops (part of ``--grace``).
ENV_STORE = "RUNNER_STORE"
ENV_STORE_GENERATION = "RUNNER_STORE_GENERATION"
ENV_UPLOAD_EVERY = "RUNNER_UPLOAD_EVERY"
ENV_UPLOAD_DRAIN = "RUNNER_UPLOAD_DRAIN"
STORE_VARIABLES = (ENV_STORE, ENV_STORE_GENERATION, ENV_UPLOAD_EVERY, ENV_UPLOAD_DRAIN)
LOSSES = "losses.jsonl"
EVENTS = "events.jsonl"
HEARTBEAT = "heartbeat"
FINAL = "final.json"
JOB = "job.json"
WORKER_LOCK = "worker.lock"


def heartbeat_mtime(run_dir: Path) -> int | None:
    """When the heartbeat file last changed (ns), or None if there is none: a change is a sign of life."""
    try:
        return os.stat(Path(run_dir) / HEARTBEAT).st_mtime_ns
    except FileNotFoundError:
        return None


def read_heartbeat(run_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((Path(run_dir) / HEARTBEAT).read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def worker_env(extra: Mapping[str, str]) -> dict[str, str]:
    """A worker's environment before its attempt's own variables: ours, with ``extra`` on top and
    no attempt, chaos or standby variable of ours left over. The store's variables come from
    ``extra`` only: a worker uploads to the store its supervisor took a generation in, or none."""
    env = {k: v for k, v in os.environ.items() if k not in STORE_VARIABLES}
    env.update(extra)
    for k in (ENV_ATTEMPT, ENV_CHAOS_ARM, ENV_STANDBY):
        env.pop(k, None)
    return env
