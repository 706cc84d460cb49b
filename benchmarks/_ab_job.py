"""The built-in job with a checkpoint after every other step: ``python benchmarks/_ab_job.py ARGS``.

Each step that follows a checkpoint is paired with the next one, which follows none, so one process
measures both sides, interleaved step by step: the drift in this machine's speed (it swings by tens
of per cent within seconds) hits both alike. ``bench_overhead.py`` runs it and reads the journal.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore", message=".*ccache.*")

from model.__main__ import main  # noqa: E402
from runner.worker import Worker  # noqa: E402


def due(self: Worker, steps_done: int) -> bool:
    return steps_done % 2 == 0


if __name__ == "__main__":
    Worker.checkpoint_due = due  # type: ignore[method-assign]
    sys.exit(main(sys.argv[1:]))
