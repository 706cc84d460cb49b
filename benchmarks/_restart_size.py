"""Restart latency against state size, for ``bench_size.py``: ``examples/scalable.py`` supervised by
``python -m runner``, its worker SIGKILLed, and the time from the kill to the replacement's first completed
step (its line in ``losses.jsonl``), in four ways of restarting:

- ``memory``: a warm spare that holds the newest checkpoint in memory, put into its model already
  (``--standby``, ``--standby-memory on``);
- ``disk``: the warm spare as it was, restoring from disk (``--standby-memory off``);
- ``fork``: no spare, a new worker forked from the fork server (``--no-standby --preload paddle``);
- ``exec``: no spare, a new worker started with exec (``--no-standby --preload none``);

and ``torchrun`` restarting a same-size MLP in PyTorch (``torch_baseline/train_size_torch.py``), which saves
with ``torch.save`` and restores with ``torch.load``.

Each round lets the worker commit a checkpoint, SIGSTOPs it right after (so that nothing newer commits),
gives a spare time to read and verify that checkpoint, then SIGKILLs it. Besides the latency: the attempt's
restore (kill to ``attempt-started``), its ``restored_from``, the replacement's first step time against a
normal step, and the waiting spare's memory (Rss and Pss) next to the worker's.
"""

from __future__ import annotations

import json
import os
import select
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._poll import stop_group, wait_until  # noqa: E402
from rundir.journal import read_records  # noqa: E402

PY = sys.executable
SCALABLE = ROOT / "examples" / "scalable.py"
TORCH_JOB = ROOT / "benchmarks" / "torch_baseline" / "train_size_torch.py"
MODES: dict[str, list[str]] = {
    "memory": ["--standby", "--standby-memory", "on", "--preload", "paddle"],
    "disk": ["--standby", "--standby-memory", "off", "--preload", "paddle"],
    "fork": ["--no-standby", "--preload", "paddle"],
    "exec": ["--no-standby", "--preload", "none"],
}
EVERY = 3  # steps between checkpoints
BATCHES = 64  # per epoch (the data is made in memory: 64 batches of 16)

__all__ = ["MODES", "measure", "ours", "torchrun", "rollup"]


def rollup(pid: int) -> dict[str, int]:
    """Rss, Pss and peak Rss (``VmHWM``) of a process, bytes (zeros for one that is gone)."""
    out = {"rss": 0, "pss": 0, "peak_rss": 0}
    for path, keys in ((f"/proc/{pid}/smaps_rollup", {"Rss": "rss", "Pss": "pss"}),
                       (f"/proc/{pid}/status", {"VmHWM": "peak_rss"})):
        try:
            with open(path) as f:
                for line in f:
                    key, _, rest = line.partition(":")
                    if key in keys:
                        out[keys[key]] = int(rest.split()[0]) * 1024
        except OSError:
            pass
    return out


def _events(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    return [e for e in read_records(run_dir / "events.jsonl") if e.get("event") == kind]


def _hold_s(state_bytes: int) -> float:
    """Time enough for a spare to read, hash and load a checkpoint of this size on this machine."""
    return 1.0 + 8.0 * state_bytes / 1e9


def _round(run_dir: Path, attempt: int, standby: bool, state_bytes: int, timeout: float) -> dict[str, Any]:
    """Kill attempt ``attempt`` once it has committed a checkpoint of its own; the figures of its replacement."""
    losses = run_dir / "losses.jsonl"

    def committed() -> dict[str, Any] | None:
        steps = sum(1 for r in read_records(losses) if r.get("attempt") == attempt)
        saved = [e for e in _events(run_dir, "checkpoint-saved") if e.get("attempt") == attempt]
        ready = not standby or len(_events(run_dir, "standby-ready")) >= attempt
        return saved[-1] if steps > EVERY and saved and ready else None

    wait_until(committed, timeout, f"attempt {attempt} to commit a checkpoint with a spare ready")
    pid = json.loads((run_dir / "heartbeat").read_text())["pid"]
    os.kill(pid, signal.SIGSTOP)  # nothing newer commits: the newest checkpoint stays the one the spare holds
    time.sleep(_hold_s(state_bytes) if standby else 0.5)
    spares = _events(run_dir, "standby-spawned")
    spare = rollup(spares[-1]["pid"]) if standby and spares else None
    worker = rollup(pid)
    pidfd = os.pidfd_open(pid)
    t_kill = time.time()
    os.kill(pid, signal.SIGKILL)
    select.select([pidfd], [], [], timeout)  # readable once it has exited: its memory is unmapped by then
    t_dead = time.time()
    os.close(pidfd)
    first = wait_until(lambda: next((r for r in read_records(losses) if r.get("attempt") == attempt + 1), None),
                       timeout, f"attempt {attempt + 1}'s first step")
    started = next(e for e in _events(run_dir, "attempt-started") if e.get("attempt") == attempt + 1)
    exited = next(e for e in _events(run_dir, "attempt-exited") if e.get("attempt") == attempt)
    return {"latency_s": float(first["time"]) - t_kill, "restored_s": float(started["time"]) - t_kill,
            "dead_s": t_dead - t_kill, "reaped_s": float(exited["time"]) - t_kill,
            "first_step_dt_s": float(first["dt"]), "restored_from": started.get("restored_from"),
            "preapplied": started.get("preapplied"), "spare": spare, "worker": worker}


def ours(work: Path, state_mb: float, state_bytes: int, mode: str, kills: int = 2,
         timeout: float = 600.0) -> dict[str, Any]:
    """``kills`` restarts of the scalable job supervised with ``mode``'s flags; their figures."""
    run_dir = work / f"restart-{mode}"
    run_dir.mkdir(parents=True)
    cmd = [PY, "-m", "runner", "--run-dir", str(run_dir), "--max-restarts", "1000", "--grace", "5", *MODES[mode],
           "--", PY, str(SCALABLE), "--state-mb", str(state_mb), "--epochs", "1000", "--batches", str(BATCHES)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), RUNNER_CHECKPOINT_EVERY=str(EVERY))
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    rounds = []
    try:
        for k in range(kills):
            rounds.append(_round(run_dir, k + 1, mode in ("memory", "disk"), state_bytes, timeout))
    finally:
        stop_group(p, 30)
    dts = [float(r["dt"]) for r in read_records(run_dir / "losses.jsonl")]
    return summarize(rounds, statistics.median(dts))


def summarize(rounds: list[dict[str, Any]], step_s: float) -> dict[str, Any]:
    """The medians of the rounds, and the restart less one ordinary step (what restarting itself costs)."""
    latency = statistics.median(r["latency_s"] for r in rounds)
    out: dict[str, Any] = {"latency_s": latency, "step_s": step_s, "overhead_s": latency - step_s,
                           "restored_s": statistics.median(r["restored_s"] for r in rounds),
                           "dead_s": statistics.median(r["dead_s"] for r in rounds),
                           "reaped_s": statistics.median(r["reaped_s"] for r in rounds),
                           "first_step_dt_s": statistics.median(r["first_step_dt_s"] for r in rounds),
                           "restored_from": sorted({str(r["restored_from"]) for r in rounds}), "rounds": rounds}
    spares = [r["spare"] for r in rounds if r.get("spare")]
    if spares:
        out["spare_rss"] = max(s["rss"] for s in spares)
        out["spare_pss"] = max(s["pss"] for s in spares)
        out["spare_peak_rss"] = max(s["peak_rss"] for s in spares)
    out["worker_rss"] = max(r["worker"]["rss"] for r in rounds)
    return out


def torchrun(work: Path, venv: Path, state_mb: float, kills: int = 2, timeout: float = 600.0) -> dict[str, Any]:
    """The same-size MLP under ``torchrun --max-restarts``, its worker SIGKILLed ``kills`` times after a
    checkpoint: kill to the replacement's first completed step."""
    d = work / "restart-torchrun"
    d.mkdir(parents=True)
    journal, ckpt = d / "journal.jsonl", d / "ckpt.pt"
    cmd = [str(venv / "bin" / "torchrun"), "--standalone", "--nproc_per_node", "1", "--max-restarts", str(kills + 2),
           "--monitor-interval", "0.1", str(TORCH_JOB), "--state-mb", str(state_mb), "--ckpt", str(ckpt),
           "--journal", str(journal), "--every", str(EVERY)]
    log = open(d / "torchrun.log", "wb")
    p = subprocess.Popen(cmd, cwd=d, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    lat, dts = [], []
    pids: set[int] = set()
    try:
        for k in range(kills):
            def saved(k: int = k) -> dict[str, Any] | None:
                recs = [r for r in read_records(journal) if r.get("restart") == k]
                return next((r for r in reversed(recs) if r.get("saved")), None) if len(recs) > EVERY else None

            rec = wait_until(saved, timeout, f"torchrun worker {k} to save")
            pids.add(int(rec["pid"]))
            os.kill(int(rec["pid"]), signal.SIGSTOP)
            time.sleep(0.5)
            t_kill = time.time()
            os.kill(int(rec["pid"]), signal.SIGKILL)
            first = wait_until(lambda k=k: next((r for r in read_records(journal) if r.get("restart") == k + 1), None),
                               timeout, f"torchrun worker {k + 1}'s first step")
            lat.append(float(first["time"]) - t_kill)
            dts.append(float(first["dt"]))
        steps = [float(r["dt"]) for r in read_records(journal)]
    finally:
        pids.update(int(r["pid"]) for r in read_records(journal))
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        log.close()
    step_s = statistics.median(steps)
    latency = statistics.median(lat)
    return {"latency_s": latency, "step_s": step_s, "overhead_s": latency - step_s, "latencies_s": lat,
            "first_step_dt_s": statistics.median(dts)}


def measure(work: Path, state_mb: float, venv: Path | None, kills: int | None = None) -> dict[str, Any]:
    """Every way of restarting at this size: ours in each of :data:`MODES`, and torchrun if there is a venv.
    The state's bytes are the example's own count (its ``final.json`` is never reached here)."""
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("scalable", SCALABLE)
    assert spec is not None and spec.loader is not None
    sc = module_from_spec(spec)
    spec.loader.exec_module(sc)
    width = sc.width_for(state_mb, 4)
    state = int(sc.state_bytes(width, 4))
    n = kills if kills is not None else (2 if state_mb >= 500 else 3)
    out: dict[str, Any] = {"state_bytes": state, "kills": n}
    for mode in MODES:
        out[mode] = ours(work, state_mb, state, mode, kills=n)
    out["torchrun"] = (torchrun(work, venv, state_mb, kills=n) if venv is not None
                       else {"skipped": "no torch venv (bash benchmarks/torch_baseline/setup_venv.sh)"})
    return out
