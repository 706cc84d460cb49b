"""Recovery: restart latency and goodput under periodic SIGKILLs, ours vs torchrun, side by side.

(a) restart latency, from SIGKILL of the worker to the first step its replacement completes, median
    of --kills kills: ours with the warm spare, ours without it (a new worker forked from the fork
    server, and one started with exec: --preload none), and torchrun (--monitor-interval 0.1)
    running the seed's CNN in PyTorch with a checkpoint every step;
(d) goodput under one SIGKILL every 10 s (and every 60 s with --long): the uninterrupted wall time of
    a fixed job (--duration s long; 4x that for the 60 s interval) divided by its wall time under the
    kills, for both; ours takes the uninterrupted run before and after the killed one.

torch runs from its own virtual environment (benchmarks/torch_baseline/setup_venv.sh); the runner
never imports it. Prints a table and writes JSON (default benchmarks/results/recovery.json).
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

from benchmarks._poll import stop_group, wait_until  # noqa: E402
from rundir.journal import read_records  # noqa: E402

PY = sys.executable


def _prepared(tmp: Path) -> Path:
    seed = tmp / "seed"
    subprocess.run([PY, "-m", "model", "--run-dir", str(seed), "--epochs", "1"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    return seed / "data.npz"


def _fresh(tmp: Path, name: str, data: Path) -> Path:
    d = tmp / name
    d.mkdir()
    (d / "data.npz").write_bytes(data.read_bytes())
    return d


def _supervise(run_dir: Path, epochs: int, standby: bool, exec_: bool = False) -> subprocess.Popen[bytes]:
    cmd = [PY, "-m", "runner", "--run-dir", str(run_dir), "--epochs", str(epochs), "--checkpoint-every", "1",
           "--max-restarts", "1000", "--grace", "5", "--standby" if standby else "--no-standby",
           *(["--preload", "none"] if exec_ else [])]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def ours_restart_latency(tmp: Path, data: Path, kills: int, standby: bool,
                         exec_: bool = False) -> tuple[list[float], float]:
    """Latencies of ``kills`` restarts, and the median step time seen on the way."""
    run_dir = _fresh(tmp, f"latency-{'warm' if standby else 'exec' if exec_ else 'cold'}", data)
    p = _supervise(run_dir, epochs=100000, standby=standby, exec_=exec_)
    losses, events = run_dir / "losses.jsonl", run_dir / "events.jsonl"
    out = []
    try:
        for k in range(kills):
            attempt = k + 1

            def ready(attempt: int = attempt) -> bool:
                steps = sum(1 for r in read_records(losses) if r.get("attempt") == attempt)
                spares = sum(1 for e in read_records(events) if e.get("event") == "standby-ready")
                return steps >= 10 and (not standby or spares >= attempt)

            wait_until(ready, 120, f"attempt {attempt} to train with a warm spare")
            pid = json.loads((run_dir / "heartbeat").read_text())["pid"]
            t_kill = time.time()
            os.kill(pid, signal.SIGKILL)
            first = wait_until(
                lambda a=attempt: next((r for r in read_records(losses) if r.get("attempt") == a + 1), None),
                120, f"attempt {attempt + 1}'s first step")
            out.append(float(first["time"]) - t_kill)
    finally:
        stop_group(p, 20)
    step_s = statistics.median(float(r["dt"]) for r in read_records(losses))
    return out, step_s


def run_dir_steps(run_dir: Path) -> int:
    """Steps done, from the last complete line of the journal (read from its end)."""
    try:
        with open(run_dir / "losses.jsonl", "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = f.read().split(b"\n")
        return int(json.loads(lines[-2])["step"]) + 1 if len(lines) >= 2 else 0
    except (OSError, ValueError, KeyError, IndexError):
        return 0


SETTLE_S = 3.0  # steps this long after an attempt's first step count as disturbed by its start


def lost_to_kills(run_dir: Path) -> dict[str, float]:
    """What the kills cost, read off the run's own journal, so the machine's drift between two runs
    does not enter: the gap from each attempt's last step to the next attempt's first (the restart,
    minus one ordinary step) and the steps done twice (trained again from the last checkpoint).

    Those two miss the steps that run slower after a restart (a new spare warms up on the other
    core meanwhile). ``step_efficiency`` counts everything: the distinct steps at the mean time of
    the steps taken more than ``SETTLE_S`` after any attempt began, over the wall. Divided by the
    same figure of an uninterrupted run, it is a goodput in which the drift cancels."""
    recs = read_records(run_dir / "losses.jsonl")
    by_attempt: dict[int, list[dict[str, Any]]] = {}
    for r in recs:
        by_attempt.setdefault(int(r["attempt"]), []).append(r)
    step_s = statistics.median(float(r["dt"]) for r in recs)
    attempts = sorted(by_attempt)
    gaps = [max(0.0, float(by_attempt[b][0]["time"]) - float(by_attempt[a][-1]["time"]) - step_s)
            for a, b in zip(attempts, attempts[1:])]
    last_of = {int(r["step"]): int(r["attempt"]) for r in recs}
    redone = sum(float(r["dt"]) for r in recs if last_of[int(r["step"])] != int(r["attempt"]))
    wall = float(recs[-1]["time"]) - float(recs[0]["time"]) + step_s
    starts = [float(by_attempt[a][0]["time"]) for a in attempts]
    settled = [float(r["dt"]) for r in recs if all(not 0 <= float(r["time"]) - t < SETTLE_S for t in starts)]
    settled_s = statistics.fmean(settled) if settled else step_s
    return {"restart_gaps_s": sum(gaps), "redone_s": redone, "training_wall_s": wall,
            "goodput_from_journal": 1 - (sum(gaps) + redone) / wall, "settled_step_s": settled_s,
            "step_efficiency": len(last_of) * settled_s / wall}


def _clean_wall(run_dir: Path, epochs: int) -> float:
    t0 = time.monotonic()
    _supervise(run_dir, epochs, standby=True).wait()
    return time.monotonic() - t0


def ours_goodput(tmp: Path, data: Path, epochs: int, kill_every: float, tag: str) -> dict[str, Any]:
    """Wall time of a fixed supervised job with and without a SIGKILL every ``kill_every`` seconds.
    The uninterrupted run is taken right before and right after the killed one, and their mean is
    the reference: drift that is steady across the three cancels."""
    clean = _fresh(tmp, f"goodput-clean-{tag}", data)
    before = _clean_wall(clean, epochs)
    killed = _fresh(tmp, f"goodput-killed-{tag}", data)
    t0 = time.monotonic()
    p = _supervise(killed, epochs, standby=True)
    kills = 0
    next_kill = t0 + kill_every
    total = epochs * 15
    while p.poll() is None:
        done = run_dir_steps(killed)
        if time.monotonic() >= next_kill and done < total - 1:  # no kill once the job is finishing
            try:
                os.kill(json.loads((killed / "heartbeat").read_text())["pid"], signal.SIGKILL)
                kills += 1
            except (OSError, ValueError, KeyError):
                pass
            next_kill += kill_every
        time.sleep(0.01)
    wall = time.monotonic() - t0
    clean_after = _fresh(tmp, f"goodput-clean-after-{tag}", data)
    after = _clean_wall(clean_after, epochs)
    uninterrupted = (before + after) / 2

    def median_dt(run_dir: Path) -> float:
        return statistics.median(float(r["dt"]) for r in read_records(run_dir / "losses.jsonl"))

    # The two runs are minutes apart; this says how far the machine's speed moved in between.
    step_ratio = median_dt(killed) / statistics.fmean(median_dt(d) for d in (clean, clean_after))
    lost = lost_to_kills(killed)
    return {"uninterrupted_s": uninterrupted, "uninterrupted_before_after_s": [before, after], "wall_s": wall,
            "kills": kills, "goodput": uninterrupted / wall,
            "returncode": p.returncode, "step_time_killed_over_clean": step_ratio, **lost,
            "goodput_from_steps": lost["step_efficiency"] / statistics.fmean(
                lost_to_kills(d)["step_efficiency"] for d in (clean, clean_after))}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One goodput measurement, or the medians of several (with every run kept under "runs")."""
    if len(runs) == 1:
        return runs[0]
    out: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k, v in runs[0].items()
                           if isinstance(v, (int, float))}
    out["uninterrupted_before_after_s"] = [statistics.median(r["uninterrupted_before_after_s"][i] for r in runs)
                                           for i in (0, 1)]
    out["runs"] = runs
    return out


def _spread(g: dict[str, Any], key: str) -> str:
    runs = g.get("runs")
    if not runs:
        return ""
    return f" (median of {len(runs)}; {min(r[key] for r in runs):.3f} .. {max(r[key] for r in runs):.3f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--duration", type=float, default=60.0,
                    help="uninterrupted length of the goodput jobs, both sides (default 60 s)")
    ap.add_argument("--long", action="store_true", help="also measure one kill every 60 s (jobs of 4 x --duration)")
    ap.add_argument("--no-torch", action="store_true", help="skip the torchrun side")
    ap.add_argument("--goodput-repeats", type=int, default=1,
                    help="measure our goodput at one kill every 10 s this many times (default 1); the table "
                         "gives the medians and ranges")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "recovery.json")
    ns = ap.parse_args()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    res: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "machine": machine}
    intervals = [10.0, 60.0] if ns.long else [10.0]
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        data = _prepared(tmp)
        res["ours_warm_latency_s"], step_s = ours_restart_latency(tmp, data, ns.kills, standby=True)
        res["ours_cold_latency_s"], _ = ours_restart_latency(tmp, data, max(3, ns.kills // 3), standby=False)
        res["ours_cold_exec_latency_s"], _ = ours_restart_latency(tmp, data, max(3, ns.kills // 3), standby=False,
                                                                  exec_=True)
        res["ours_step_s"] = step_s
        for iv in intervals:
            duration = ns.duration if iv < 60 else 4 * ns.duration
            epochs = max(1, round(duration / (15 * step_s)))
            runs = [ours_goodput(tmp, data, epochs, iv, f"{int(iv)}-{i}")
                    for i in range(ns.goodput_repeats if iv < 60 else 1)]
            res[f"ours_goodput_{int(iv)}s"] = summarize(runs)
        if not ns.no_torch:
            from benchmarks.torch_baseline import harness

            res["torch_latency_s"] = harness.restart_latency(tmp / "torch-latency", kills=ns.kills, data=data)
            for iv in intervals:
                duration = ns.duration if iv < 60 else 4 * ns.duration
                res[f"torch_goodput_{int(iv)}s"] = harness.goodput(tmp / f"torch-goodput-{int(iv)}", kill_every_s=iv,
                                                                   duration_s=duration, data=data)
    med = statistics.median
    rows = [("restart latency, ours (warm spare), median", f"{med(res['ours_warm_latency_s']):.3f} s"),
            ("restart latency, ours (no spare: forked), median", f"{med(res['ours_cold_latency_s']):.3f} s"),
            ("restart latency, ours (no spare, exec: --preload none), median",
             f"{med(res['ours_cold_exec_latency_s']):.3f} s")]
    if "torch_latency_s" in res:
        rows.append(("restart latency, torchrun, median", f"{med(res['torch_latency_s']):.3f} s"))
        rows.append(("torchrun / ours (warm)", f"{med(res['torch_latency_s']) / med(res['ours_warm_latency_s']):.1f}x"))
    for iv in intervals:
        g = res[f"ours_goodput_{int(iv)}s"]
        rows.append((f"goodput, one SIGKILL every {int(iv)} s, ours",
                     f"{g['goodput']:.3f} ({g['kills']:g} kills){_spread(g, 'goodput')}"))
        rows.append(("  ours, from the journal: 1 - (restart gaps + steps redone) / wall",
                     f"{g['goodput_from_journal']:.3f} ({g['restart_gaps_s']:.2f} s + {g['redone_s']:.2f} s "
                     f"of {g['training_wall_s']:.1f} s){_spread(g, 'goodput_from_journal')}"))
        rows.append(("  ours, from both journals: (steps x settled step time / wall), killed / uninterrupted",
                     f"{g['goodput_from_steps']:.3f}{_spread(g, 'goodput_from_steps')}"))
        rows.append(("  median step time, killed run / uninterrupted run (the drift between them)",
                     f"{g['step_time_killed_over_clean']:.3f}x{_spread(g, 'step_time_killed_over_clean')}"))
        rows.append(("  uninterrupted wall, before / after the killed run",
                     "{:.2f} s / {:.2f} s".format(*g["uninterrupted_before_after_s"])))
        if f"torch_goodput_{int(iv)}s" in res:
            tg = res[f"torch_goodput_{int(iv)}s"]
            rows.append((f"goodput, one SIGKILL every {int(iv)} s, torchrun",
                         f"{tg['goodput']:.3f} ({tg.get('kills', '?')} kills)"))
    from benchmarks._output import publish

    publish(f"recovery, {res['machine']}", rows, res, ns.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
