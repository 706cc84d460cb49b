"""Waiting, in the benchmarks that watch real runs: for something to happen in a run directory, and for
a run started in a session of its own to end."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any


def wait_until(cond: Any, timeout: float, what: str) -> Any:
    """Poll ``cond()`` every 5 ms until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.005)
    raise TimeoutError(f"timed out waiting for {what}")


def stop_group(p: subprocess.Popen[bytes], grace_s: float) -> None:
    """End a run started with ``start_new_session``: SIGTERM to its process group, SIGKILL after
    ``grace_s`` if it is still there."""
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
