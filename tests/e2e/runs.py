"""The end-to-end tests' job configurations and the shape of the runs shared between them: the job's
references and crashed runs (``runs2``, ``runs3``) and ``python -m runner --simulate-preemption`` runs."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers.processes import describe, run_runner
from tests.helpers.readers import committed_steps, durable_steps, losses

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


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


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


class ChaosRuns:
    """``python -m runner --simulate-preemption`` runs made once per session and shared by the tests that
    look at them, all with one reference cache (so each job's reference is computed once)."""

    def __init__(self, base: Path, reference_cache: Path) -> None:
        self.base = Path(base)
        self.reference_cache = Path(reference_cache)
        self._runs: dict[str, ChaosRun] = {}

    def simulate(self, name: str, *args: object) -> ChaosRun:
        if name not in self._runs:
            run_dir, report = self.base / name, self.base / f"{name}.report.json"
            p = run_runner("--simulate-preemption", "--reference-cache", self.reference_cache, "--run-dir", run_dir,
                           "--json-report", report, *args)
            data = json.loads(report.read_text()) if report.is_file() else None
            self._runs[name] = ChaosRun(name, run_dir, p, data)
        return self._runs[name]


class ChaosRun:
    def __init__(self, name: str, run_dir: Path, proc: subprocess.CompletedProcess[str],
                 report: dict[str, Any] | None) -> None:
        self.name, self.run_dir, self.proc = name, run_dir, proc
        self._report = report

    @property
    def report(self) -> dict[str, Any]:
        assert self._report is not None, f"no JSON report from {self.name}\n{describe(self.proc)}"
        return self._report

    @property
    def reference_dir(self) -> Path:
        return Path(self.report["job"]["reference_dir"])
