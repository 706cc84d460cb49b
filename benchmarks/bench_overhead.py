"""Overheads of supervision and checkpointing, measured side by side in one run.

(a) per-step time of the worker vs bare Paddle forward/backward/step on the same batches;
(b) the stall one checkpoint causes on the training thread, asynchronous (the default) vs
    synchronous (--sync-checkpoints); the cost of every-step checkpoints in one run that alternates
    steps with and without them (``_ab_job.py``: the machine's drift hits both sides alike), and
    the wall time of whole runs with every-step checkpoints vs none;
(c) wall time of a fault-free supervised run (warm spare on) vs the bare ``python -m model`` run.

Prints a table and writes JSON (default benchmarks/results/overhead.json).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore", message=".*ccache.*")


def bare_step_times(batches: int, reps: int) -> list[float]:
    """Bare Paddle: the same model, optimizer and data, with no worker, journal or checkpoints."""
    import numpy as np

    from model.config import TrainConfig
    from model.data import prepare
    from model.train import build, plain_step

    with tempfile.TemporaryDirectory() as d:
        data = prepare(None, Path(d))
    model, opt = build(TrainConfig(), data.side, batches * reps)
    order = np.random.default_rng(0).permutation(len(data.train_x))
    times = []
    for _ in range(reps):
        for b in range(batches):
            idx = order[b * 100 : (b + 1) * 100]
            t0 = time.perf_counter()
            plain_step(model, opt, data.train_x[idx], data.train_y[idx])
            times.append(time.perf_counter() - t0)
    return times


def ab_pairs(losses: Path, per_epoch: int, warmup: int = 15) -> tuple[list[float], list[float]]:
    """From a ``_ab_job.py`` journal: for each pair of neighbouring steps, the first after a step
    checkpoint and the second after none, (the time the checkpoint added, the plain step's time).
    Steps next to an epoch end (a checkpoint in both modes) and the first ``warmup`` are left out."""
    from rundir.journal import read_records

    t = {int(r["step"]): float(r["time"]) for r in read_records(losses)}
    added, plain = [], []
    for s in range(warmup, max(t) - 2):
        # the interval s -> s+1 holds the checkpoint taken after s+1 steps, if due, then step s+1
        if (s + 1) % 2 == 0 and all(k in t for k in (s, s + 1, s + 2)):
            if (s + 1) % per_epoch in (0, per_epoch - 1) or (s + 2) % per_epoch == 0:
                continue
            with_ckpt, without = t[s + 1] - t[s], t[s + 2] - t[s + 1]
            added.append(with_ckpt - without)
            plain.append(without)
    return added, plain


def median_ci(xs: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """A 95 % bootstrap interval for the median of ``xs`` (the pairs resampled with replacement)."""
    import numpy as np

    a = np.asarray(xs)
    meds = np.median(np.random.default_rng(seed).choice(a, (resamples, len(a))), axis=1)
    return float(np.percentile(meds, 2.5)), float(np.percentile(meds, 97.5))


def run(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ab-epochs", type=int, default=150,
                   help="epochs of each every-other-step run (default 150: about 1000 step pairs a run)")
    p.add_argument("--pairs", type=int, default=12, help="supervised and bare runs, back to back (default 12)")
    p.add_argument("--idx", type=Path, default=Path("/usr/share/datasets/fashion-mnist"),
                   help="28x28 IDX data for the same every-step measurement on the seed's job shape "
                        "(skipped if absent; Debian's dataset-fashion-mnist installs it here)")
    p.add_argument("--idx-epochs", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "overhead.json")
    ns = p.parse_args()
    py = sys.executable
    results: dict[str, object] = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, "
                                  f"{os.cpu_count()} cores, Python {platform.python_version()}", "epochs": ns.epochs}
    with tempfile.TemporaryDirectory() as tmp:
        tmpd = Path(tmp)
        # Prepare the data once so neither side pays scikit-learn's import.
        seed_dir = tmpd / "seed"
        subprocess.run([py, "-m", "model", "--run-dir", str(seed_dir), "--epochs", "1"], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
        data = (seed_dir / "data.npz").read_bytes()

        def fresh(name: str) -> Path:
            d = tmpd / name
            d.mkdir()
            (d / "data.npz").write_bytes(data)
            return d

        bare, sup, every, every_sync, ab_added, ab_plain = [], [], [], [], [], []
        per_epoch = 15  # the default job: 1500 digits in batches of 100

        for i in range(ns.repeats):  # interleaved, so drift hits every side alike
            ab_dir = fresh(f"ab{i}")
            run([py, str(ROOT / "benchmarks" / "_ab_job.py"), "--run-dir", str(ab_dir), "--epochs",
                 str(ns.ab_epochs)], ROOT)
            added, plain = ab_pairs(ab_dir / "losses.jsonl", per_epoch)
            ab_added += added
            ab_plain += plain
            every.append(run([py, "-m", "model", "--run-dir", str(fresh(f"every{i}")), "--epochs", str(ns.epochs),
                              "--checkpoint-every", "1"], ROOT))
            every_sync.append(run([py, "-m", "model", "--run-dir", str(fresh(f"sync{i}")), "--epochs", str(ns.epochs),
                                   "--checkpoint-every", "1", "--sync-checkpoints"], ROOT))
        from rundir.journal import read_records

        step_ratio, bare_dt = [], []
        for i in range(ns.pairs):  # back to back, taking turns at going first
            bare_cmd = [py, "-m", "model", "--run-dir", str(fresh(f"bare{i}")), "--epochs", str(ns.epochs)]
            sup_cmd = [py, "-m", "runner", "--run-dir", str(fresh(f"sup{i}")), "--epochs", str(ns.epochs)]
            if i % 2:
                sup.append(run(sup_cmd, ROOT))
                bare.append(run(bare_cmd, ROOT))
            else:
                bare.append(run(bare_cmd, ROOT))
                sup.append(run(sup_cmd, ROOT))
            # The worker's steps (from that bare run's journal) against bare Paddle steps taken right
            # after it, in this process: one pair per turn.
            dts = bare_step_times(15, max(1, ns.epochs // 4))
            bare_dt += dts
            step_ratio.append(statistics.median(r["dt"] for r in read_records(tmpd / f"bare{i}" / "losses.jsonl"))
                              / statistics.median(dts))
        worker_dt = [r["dt"] for i in range(ns.pairs) for r in read_records(tmpd / f"bare{i}" / "losses.jsonl")]
        def stalls_of(name: str) -> list[float]:
            return [e["stall_s"] for i in range(ns.repeats) for e in read_records(tmpd / f"{name}{i}" / "events.jsonl")
                    if e.get("event") == "checkpoint-saved"]

        stalls, sync_stalls = stalls_of("every"), stalls_of("sync")
        idx_added: list[float] = []
        idx_plain: list[float] = []
        if ns.idx.is_dir() and ns.idx_epochs > 0:
            idx_dir = tmpd / "ab-idx"
            run([py, str(ROOT / "benchmarks" / "_ab_job.py"), "--run-dir", str(idx_dir), "--epochs",
                 str(ns.idx_epochs), "--data", str(ns.idx)], ROOT)
            idx_added, idx_plain = ab_pairs(idx_dir / "losses.jsonl", 60000 // 100)  # Fashion-MNIST
    med = statistics.median
    ab_cost = med(ab_added) / med(ab_plain)
    pair_ratio = [s / b for s, b in zip(sup, bare)]
    pq = statistics.quantiles(pair_ratio, n=4)
    sq = statistics.quantiles(step_ratio, n=4)
    q = statistics.quantiles(ab_added, n=4)
    ci = median_ci(ab_added)
    plain_ms = med(ab_plain)
    rows = [
        ("worker step (median)", f"{med(worker_dt) * 1e3:.2f} ms"),
        ("bare Paddle step (median)", f"{med(bare_dt) * 1e3:.2f} ms"),
        ("worker / bare step (median of pairs)",
         f"{med(step_ratio):.3f}x (IQR {sq[0]:.3f} .. {sq[2]:.3f})"),
        ("checkpoint stall, async (median)", f"{med(stalls) * 1e3:.2f} ms"),
        ("checkpoint stall, async / step", f"{100 * med(stalls) / med(worker_dt):.1f} %"),
        ("checkpoint stall, sync (median)", f"{med(sync_stalls) * 1e3:.2f} ms"),
        ("checkpoint stall, sync / step", f"{100 * med(sync_stalls) / med(worker_dt):.1f} %"),
        ("bare run wall (median)", f"{med(bare):.2f} s"),
        ("supervised run wall (median)", f"{med(sup):.2f} s"),
        ("supervised / bare wall (median of pairs)",
         "{:.3f}x, 95 % CI {:.3f} .. {:.3f} (IQR {:.3f} .. {:.3f}, {} pairs)".format(
             med(pair_ratio), *median_ci(pair_ratio), pq[0], pq[2], len(pair_ratio))),
        ("every-step async checkpoints: time added per step (median of pairs)",
         f"{med(ab_added) * 1e3:.3f} ms, 95 % CI {ci[0] * 1e3:.3f} .. {ci[1] * 1e3:.3f} "
         f"({len(ab_added)} pairs, IQR {q[0] * 1e3:.2f} .. {q[2] * 1e3:.2f})"),
        ("every-step async checkpoints: cost / step time",
         f"{100 * ab_cost:.2f} % (95 % CI {100 * ci[0] / plain_ms:.2f} .. {100 * ci[1] / plain_ms:.2f}) "
         f"of {plain_ms * 1e3:.1f} ms"),
        *([("every-step async checkpoints, 28x28 job: time added per step",
            "{:.3f} ms, 95 % CI {:.3f} .. {:.3f} ({} pairs)".format(
                med(idx_added) * 1e3, *(c * 1e3 for c in median_ci(idx_added)), len(idx_added))),
           ("every-step async checkpoints, 28x28 job: cost / step time",
            f"{100 * med(idx_added) / med(idx_plain):.2f} % of {med(idx_plain) * 1e3:.0f} ms")] if idx_added else []),
        ("every-step async checkpoints, run wall (median)", f"{med(every):.2f} s"),
        ("every-step async / epoch-end checkpoints wall", f"{med(every) / med(bare):.3f}x"),
        ("every-step sync checkpoints, run wall (median)", f"{med(every_sync):.2f} s"),
        ("every-step sync / epoch-end checkpoints wall", f"{med(every_sync) / med(bare):.3f}x"),
    ]
    results.update({
        "worker_step_ms": med(worker_dt) * 1e3, "bare_step_ms": med(bare_dt) * 1e3,
        "worker_over_bare_step": med(step_ratio), "worker_over_bare_step_pairs": step_ratio,
        "checkpoint_stall_ms": med(stalls) * 1e3, "checkpoint_stall_sync_ms": med(sync_stalls) * 1e3,
        "every_step_sync_ckpt_wall_s": every_sync, "every_step_sync_over_epoch_end": med(every_sync) / med(bare),
        "checkpoint_stall_ms_p90": sorted(stalls)[int(0.9 * len(stalls))] * 1e3,
        "bare_wall_s": bare, "supervised_wall_s": sup, "every_step_ckpt_wall_s": every,
        "supervised_over_bare": med(pair_ratio), "supervised_over_bare_pairs": pair_ratio,
        "supervised_over_bare_ci95": list(median_ci(pair_ratio)),
        "every_step_over_epoch_end": med(every) / med(bare),
        "every_step_added_ms": [round(a * 1e3, 4) for a in ab_added],
        "every_step_plain_step_ms": [round(p * 1e3, 4) for p in ab_plain],
        "every_step_cost_fraction": ab_cost,
        "every_step_added_ms_ci95": [ci[0] * 1e3, ci[1] * 1e3],
        "idx_every_step_added_ms": [round(a * 1e3, 4) for a in idx_added],
        "idx_plain_step_ms": [round(p * 1e3, 4) for p in idx_plain],
        "idx_every_step_cost_fraction": med(idx_added) / med(idx_plain) if idx_added else None,
    })
    from benchmarks._output import publish

    publish(f"overhead, {results['machine']}, {ns.epochs} epochs of digits ({ns.epochs * 15} steps)", rows,
            results, ns.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
