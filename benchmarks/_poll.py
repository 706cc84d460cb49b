"""Waiting, in the benchmarks that watch real runs, for something to happen in a run directory."""

from __future__ import annotations

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
