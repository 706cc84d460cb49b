"""The built-in job with step checkpoints in every other epoch: ``python benchmarks/_ab_job.py ARGS``.

Even epochs checkpoint after every step, odd ones only at their end, so one process measures both
sides, interleaved: drift in the machine's speed hits them alike. ``bench_overhead.py`` runs it.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore", message=".*ccache.*")

from model.__main__ import main  # noqa: E402
from model.config import TrainConfig, steps_per_epoch  # noqa: E402
from model.data import DIGITS_TRAIN  # noqa: E402
from runner.worker import Worker  # noqa: E402

PER_EPOCH = steps_per_epoch(DIGITS_TRAIN, TrainConfig().batch_size)


def due(self: Worker, steps_done: int) -> bool:
    return ((steps_done - 1) // PER_EPOCH) % 2 == 0


if __name__ == "__main__":
    Worker.checkpoint_due = due  # type: ignore[method-assign]
    sys.exit(main(sys.argv[1:]))
