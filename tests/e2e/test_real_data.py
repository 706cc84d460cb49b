"""The real Fashion-MNIST files that Debian's dataset-fashion-mnist installs (CI installs it)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from model.data import prepare
from tests.helpers.processes import job_cmd, start
from tests.helpers.readers import losses

FASHION = Path("/usr/share/datasets/fashion-mnist")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").exists(),
                       reason="Debian's dataset-fashion-mnist is not installed"),
]


def test_fashion_mnist_loads_with_its_real_shapes(tmp_path: Path) -> None:
    ds = prepare(str(FASHION), tmp_path)
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.eval_x.shape == (10000, 1, 28, 28)
    assert ds.train_x.dtype == np.float32 and ds.train_x.min() >= 0.0 and ds.train_x.max() <= 1.0
    assert sorted(np.unique(ds.train_y)) == list(range(10))
    assert (tmp_path / "data.npz").exists()


def _train_until_preempted(run_dir: Path, steps: int) -> int:
    p = start(job_cmd(run_dir, "--data", FASHION), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    before = len(losses(run_dir))
    deadline = time.monotonic() + 180
    while len(losses(run_dir)) < before + steps and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGTERM)
    return p.wait(timeout=60)


def test_the_job_trains_on_fashion_mnist_and_resumes_where_it_stopped(tmp_path: Path) -> None:
    assert _train_until_preempted(tmp_path, 3) == 75
    first = losses(tmp_path)
    assert _train_until_preempted(tmp_path, 2) == 75
    recs = losses(tmp_path)
    steps = [int(r["step"]) for r in recs]  # type: ignore[call-overload]
    assert steps == list(range(len(steps))), "a SIGTERM loses no step and repeats none"
    assert len(recs) > len(first) and {r["attempt"] for r in recs} == {1, 2}
    assert all(r["epoch"] == 0 for r in recs)
