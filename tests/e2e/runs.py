"""The end-to-end tests' job configurations and the shape of the runs shared between them."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from checkpoint.storage import LocalStorage
from checkpoint.store import MANIFEST, CheckpointStore, checkpoint_name
from model.data import CACHE
from tests.helpers import describe, losses

# 2 epochs of 15 steps (1,500 digits, batch 100).
ARGS2 = ("--epochs", 2)
STEPS2 = 30
# 3 epochs: the break-resume runs resume in epoch 1 at step 20, where a fresh data RNG shuffles differently.
# Dropout and input jitter draw from Paddle's and NumPy's generators every step, so a resume that skips
# restoring either is caught too.
ARGS3 = ("--epochs", 3, "--dropout", 0.25, "--jitter", 0.05)
STEPS3 = 45
EVERY4 = ("--checkpoint-every-steps", 4)
BREAK_KINDS = ("optimizer", "lr-scheduler", "data-rng", "paddle-rng", "numpy-rng", "data-position")


def crash(step: int) -> dict[str, object]:
    return {"kind": "crash", "step": step}


def seeded_run_dir(path: Path, cache_from: Path) -> Path:
    """A new run directory holding a copy of another run's prepared data (``data.npz``), so the job
    skips scikit-learn's slow import. The cache is keyed by its source; the job still checks the key."""
    path.mkdir(parents=True)
    shutil.copy2(cache_from / CACHE, path / CACHE)
    return path


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def committed_steps(run_dir: Path) -> list[int]:
    return [int(n.split("-")[1]) for n in CheckpointStore(LocalStorage(run_dir)).committed()]


def durable_steps(run_dir: Path) -> list[int]:
    ck = run_dir / "checkpoints"
    return [s for s in committed_steps(run_dir)
            if json.loads((ck / checkpoint_name(s) / MANIFEST).read_text())["durable"]]


def assert_crashed_at(proc, run_dir: Path, step: int, checkpoints: list[int]) -> None:
    """``checkpoints``: the newest three it committed; the newest durable one is kept besides them."""
    assert proc.returncode == 1, describe(proc)
    assert f"SimulatedDeviceError: simulated device error in step {step}" in proc.stderr, describe(proc)
    assert [r["step"] for r in losses(run_dir)] == list(range(step)), "the crash arm fired at the wrong step"
    durable = durable_steps(run_dir)
    assert durable, "no durable checkpoint: the first one of an attempt always is"
    assert committed_steps(run_dir) == sorted({*checkpoints, durable[-1]})


@dataclass
class Runs2:
    """2 epochs, uninterrupted, plus two runs crashed by the chaos arm (not yet resumed)."""

    reference: Path
    crashed_epoch_end: Path  # crash arm at step 15: newest checkpoint 15, an epoch boundary
    crashed_mid_epoch: Path  # every 4 steps, crash arm at step 21: newest checkpoint 20 (epoch 1, batch 5)


@dataclass
class Runs3:
    """3 epochs, uninterrupted, and the same crashed run resumed correctly and with each broken resume."""

    reference: Path
    resume_step: int
    resumed: dict[str | None, Path] = field(default_factory=dict)  # None: resumed correctly
