"""The names the worker and the supervisor share: files in the run directory, environment variables,
and the heartbeat reader. Light on purpose: the supervisor imports it before it starts the worker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = [
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
]

ENV_ATTEMPT = "RUNNER_ATTEMPT"
ENV_CHAOS_ARM = "RUNNER_CHAOS_ARM"
ENV_STANDBY = "RUNNER_STANDBY"
LOSSES = "losses.jsonl"
EVENTS = "events.jsonl"
HEARTBEAT = "heartbeat"
FINAL = "final.json"
JOB = "job.json"
WORKER_LOCK = "worker.lock"

PAUSED_PHASE = "checkpoint-write-paused"
PAUSED_EVENT = "chaos-paused-in-checkpoint-write"


def read_heartbeat(run_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((Path(run_dir) / HEARTBEAT).read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
