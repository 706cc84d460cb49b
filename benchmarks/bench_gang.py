"""A gang's restart latency: from SIGKILL of one rank to the first step the restarted gang completes.

``python -m runner --nproc-per-node N`` (default 2) trains the built-in job with a checkpoint every
step; once an attempt has done 10 steps, rank 1 is SIGKILLed from outside. Each kill is timed in
parts, from the run's own records: the supervisor's ``attempt-exited`` (it saw the rank die and
killed the rest), its ``attempt-spawned`` (a new launcher started), rank 0's ``attempt-started``
(the launcher and every rank imported Paddle, met over gloo and restored), and the first step.
torchrun's figure (one process, ``--monitor-interval 0.1``) comes from benchmarks/results/torchrun.json
when it is there. Prints a table and writes JSON (default benchmarks/results/gang.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._output import publish  # noqa: E402
from benchmarks._poll import wait_until  # noqa: E402
from rundir.journal import read_records  # noqa: E402
from runner.rankexit import read_records as read_ranks  # noqa: E402

PY = sys.executable
PARTS = ("detect_s", "spawn_s", "start_and_restore_s", "first_step_s")


def _event(run_dir: Path, kind: str, attempt: int) -> dict[str, Any] | None:
    return next((e for e in read_records(run_dir / "events.jsonl")
                 if e.get("event") == kind and e.get("attempt") == attempt), None)


def _first_step(run_dir: Path, attempt: int) -> dict[str, Any] | None:
    return next((r for r in read_records(run_dir / "losses.jsonl") if r.get("attempt") == attempt), None)


def one_kill(run_dir: Path, attempt: int) -> dict[str, Any]:
    """Kill rank 1 of ``attempt`` once it has done 10 steps; the restart's parts."""
    wait_until(lambda: sum(1 for r in read_records(run_dir / "losses.jsonl") if r.get("attempt") == attempt) >= 10,
          300, f"attempt {attempt} to train")
    ranks = run_dir / "logs" / f"attempt-{attempt:03d}-ranks"
    victim = read_ranks(ranks)[1].pid
    t_kill = time.time()
    os.kill(victim, signal.SIGKILL)
    first = wait_until(lambda: _first_step(run_dir, attempt + 1), 300, f"attempt {attempt + 1}'s first step")
    exited = _event(run_dir, "attempt-exited", attempt)
    spawned = _event(run_dir, "attempt-spawned", attempt + 1)
    started = _event(run_dir, "attempt-started", attempt + 1)
    assert exited and spawned and started
    t = [float(exited["time"]), float(spawned["time"]), float(started["time"]), float(first["time"])]
    return {"latency_s": t[3] - t_kill, "detect_s": t[0] - t_kill, "spawn_s": t[1] - t[0],
            "start_and_restore_s": t[2] - t[1], "first_step_s": t[3] - t[2],
            "exit_class": exited.get("exit_class"), "signal": exited.get("signal")}


def measure(tmp: Path, nproc: int, kills: int) -> dict[str, Any]:
    run_dir = tmp / "gang"
    cmd = [PY, "-m", "runner", "--run-dir", str(run_dir), "--nproc-per-node", str(nproc), "--epochs", "100000",
           "--checkpoint-every", "1", "--max-restarts", "1000", "--grace", "5"]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        runs = [one_kill(run_dir, attempt) for attempt in range(1, kills + 1)]
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    steps = [float(r["dt"]) for r in read_records(run_dir / "losses.jsonl")]
    return {"kills": runs, "median_s": statistics.median(r["latency_s"] for r in runs),
            "max_s": max(r["latency_s"] for r in runs),
            "median_parts_s": {k: statistics.median(r[k] for r in runs) for k in PARTS},
            "step_s": statistics.median(steps)}


def torchrun_median() -> float | None:
    path = ROOT / "benchmarks" / "results" / "torchrun.json"
    try:
        return float(json.loads(path.read_text())["restart_latency"]["median_s"])
    except (OSError, ValueError, KeyError):
        return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc", type=int, default=2, help="ranks in the gang (default 2)")
    p.add_argument("--kills", type=int, default=5, help="kills to time (default 5)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gang.json")
    ns = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-gang-") as tmp:
        got = measure(Path(tmp), ns.nproc, ns.kills)
    torch = torchrun_median()
    results = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.machine(), "cpus": os.cpu_count(),
               "nproc": ns.nproc, "restart_latency": got, "torchrun_median_s": torch}
    parts = got["median_parts_s"]
    rows = [
        ("restart latency, rank SIGKILL to first step (median)", f"{got['median_s']:.2f} s"),
        ("  the supervisor sees the rank die and kills the gang", f"{parts['detect_s']:.3f} s"),
        ("  a new launcher starts", f"{parts['spawn_s']:.3f} s"),
        ("  launcher and ranks import Paddle, meet, restore", f"{parts['start_and_restore_s']:.2f} s"),
        ("  the first step", f"{parts['first_step_s']:.3f} s"),
        ("worst of the kills", f"{got['max_s']:.2f} s"),
        ("a step of the gang (median)", f"{got['step_s'] * 1000:.1f} ms"),
        ("torchrun, one process (benchmarks/results/torchrun.json)", f"{torch:.2f} s" if torch else "not measured"),
    ]
    publish(f"A gang of {ns.nproc}: restart latency over {ns.kills} kills", rows, results, ns.out)


if __name__ == "__main__":
    main()
