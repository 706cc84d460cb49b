"""The job's configuration, importable without Paddle (the supervisor and chaos planner use it)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["AUTO", "BREAK_RESUME_KINDS", "JOB_NAME", "TrainConfig", "steps_per_epoch"]

JOB_NAME = "mnist-cnn"
AUTO = -1  # checkpoint_every_steps for "auto": Young's formula
#: Ways to resume wrongly on purpose, to prove the verifier catches each of them: leave out the
#: optimizer's moments, the LR scheduler, the data generator (the epoch's order is drawn anew),
#: Paddle's generators (dropout), NumPy's global generator (input jitter), or read one batch ahead; in a
#: gang, leave out each rank's own RNGs (its part of the checkpoint): it goes on with rank 0's; let the
#: ranks other than 0 resume from an older checkpoint than rank 0 chose (the gang must refuse to go on);
#: on several nodes, skip the nodes' agreement on the step to resume from (the check after it refuses).
BREAK_RESUME_KINDS = ("optimizer", "lr-scheduler", "data-rng", "paddle-rng", "numpy-rng", "data-position",
                      "rank-rng", "rank-step", "node-step")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 5
    seed: int = 0
    batch_size: int = 100
    lr: float = 0.01
    end_lr: float = 0.001
    checkpoint_every_steps: int = 0  # 0: only at the end of each epoch; AUTO: Young's interval
    break_resume: str | None = None
    sync_checkpoints: bool = False  # write checkpoints on the training thread (slower; for comparison)
    mtbf_s: float | None = None  # for AUTO: the expected time between failures, if known
    durable_every_s: float = 10.0  # fsync a checkpoint at least this often (0: every one)
    dropout: float = 0.0  # dropout before the classifier: draws from Paddle's generator every step
    jitter: float = 0.0  # std of Gaussian noise added to inputs: draws from NumPy's global generator every step

    def identity(self) -> dict[str, Any]:
        """The fields that change the loss trace (checkpoint cadence does not)."""
        d = asdict(self)
        for k in ("checkpoint_every_steps", "break_resume", "sync_checkpoints", "mtbf_s", "durable_every_s"):
            d.pop(k)
        for k in ("dropout", "jitter"):  # named only when used, so older run directories still match
            if not d[k]:
                d.pop(k)
        return d


def steps_per_epoch(n: int, batch_size: int) -> int:
    """The last batch of an epoch may be short, as in the seed's loader."""
    return math.ceil(n / batch_size)
