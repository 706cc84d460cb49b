"""What the tests share, in four modules:

- :mod:`tests.helpers.factories`: plain values made by hand for the pure tests (loss records, schedules,
  observations, attempt results, traces) and journals written from them. Nothing runs.
- :mod:`tests.helpers.readers`: what a run directory holds (losses, events, the final result, the
  stitched trace, checkpoints), read through the project's own readers (``rundir.journal``,
  ``runner.trace``, ``checkpoint.store``).
- :mod:`tests.helpers.processes`: the end-to-end side: run the job or the runner in real processes,
  wait for something with a timeout, describe a process that failed, and clean up after a test.
- :mod:`tests.helpers.paddle_model`: a tiny Paddle model and its training steps.

``REPO`` is the checkout's root: every process a test starts runs from it.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["REPO"]

REPO = Path(__file__).resolve().parents[2]
