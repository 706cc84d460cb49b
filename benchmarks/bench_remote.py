"""The remote tier in a running job, against moto's S3 server on loopback:

(a) the training thread with uploads running: the built-in job checkpointing every step, every
    checkpoint durable and uploaded (``--durable-every 0 --upload-every 0``), against the same job
    with no store - per-step time
    (checkpoint time excluded, as the journal's ``dt``) and the stall each checkpoint causes;
    runs alternate, so the machine's drift hits both sides alike;
(b) SIGTERM to the supervisor -> the preemption's checkpoint committed in the store, for the
    built-in job (``checkpoint-uploaded``'s time less the signal's);
(c) a supervisor on an empty run directory: the restore (``store-restored``'s seconds) and its
    start to the first resumed step.

Prints a table and writes JSON (default benchmarks/results/remote.json). moto keeps objects in
memory and shares this machine's cores with the job, so (b) and (c) bound what a real S3 costs the
client, not the network.
"""

from __future__ import annotations

import argparse
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
from rundir.journal import read_records  # noqa: E402


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")


def events(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    return [e for e in read_records(run_dir / "events.jsonl") if e.get("event") == kind]


def p95(xs: list[float]) -> float:
    return sorted(xs)[int(0.95 * (len(xs) - 1))]


#: The sides of (a): a store (None: none; "s3" moto, "file" a directory) and the upload interval.
SIDES = {"no store": (None, 0.0), "s3, every checkpoint": ("s3", 0.0), "file://, every checkpoint": ("file", 0.0),
         "s3, every 1 s": ("s3", 1.0)}


def train_once(run_dir: Path, epochs: int, store: str | None, every: float) -> dict[str, Any]:
    # Every checkpoint durable on every side: what differs is the uploads alone.
    cmd = [sys.executable, "-m", "model", "--run-dir", str(run_dir), "--epochs", str(epochs),
           "--checkpoint-every-steps", "1", "--durable-every", "0"]
    if store:
        cmd += ["--store", store, "--upload-every", repr(every)]
    subprocess.run(cmd, check=True, env=env(), stdout=subprocess.DEVNULL, cwd=ROOT)
    dts = [float(r["dt"]) for r in read_records(run_dir / "losses.jsonl")][15:]  # past the first epoch's warm-up
    stalls = [float(e["stall_s"]) for e in events(run_dir, "checkpoint-saved") if e.get("asynchronous")]
    ups = events(run_dir, "checkpoint-uploaded")
    return {"step_s": dts, "stall_s": stalls, "uploads": len(ups),
            "upload_s": [float(e["seconds"]) for e in ups], "lag_s": [float(e["lag_s"]) for e in ups]}


def stall(tmp: Path, url: str, epochs: int, pairs: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    for i in range(pairs):
        for j, (side, (kind, every)) in enumerate(SIDES.items()):
            store = None
            if kind == "s3":
                store = f"{url}/stall-{i}-{j}"
            elif kind == "file":
                (tmp / f"store-{i}-{j}").mkdir()
                store = f"file://{tmp / f'store-{i}-{j}'}"
            runs[side].append(train_once(tmp / f"stall-{i}-{j}", epochs, store, every))
    out: dict[str, Any] = {}
    for side, rs in runs.items():
        steps = [x for r in rs for x in r["step_s"]]
        stalls = [x for r in rs for x in r["stall_s"]]
        out[side] = {"step_median_s": statistics.median(steps), "step_p95_s": p95(steps),
                     "stall_median_s": statistics.median(stalls), "stall_p95_s": p95(stalls),
                     "uploads": sum(r["uploads"] for r in rs),
                     "upload_median_s": statistics.median([x for r in rs for x in r["upload_s"]] or [0.0]),
                     "lag_median_s": statistics.median([x for r in rs for x in r["lag_s"]] or [0.0])}
    return out


def sigterm_to_remote(tmp: Path, url: str, reps: int) -> list[float]:
    took = []
    for i in range(reps):
        run_dir = tmp / f"term-{i}"
        cmd = [sys.executable, "-m", "runner", "--run-dir", str(run_dir), "--store", f"{url}/term-{i}",
               "--epochs", "200"]
        proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        while not any(int(r["step"]) >= 60 for r in read_records(run_dir / "losses.jsonl")):
            time.sleep(0.05)
        t0 = time.time()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        final = [e for e in events(run_dir, "checkpoint-uploaded") if e["time"] >= t0]
        took.append(final[-1]["time"] - t0)
    return took


def restore(tmp: Path, url: str, reps: int) -> list[dict[str, float]]:
    out = []
    for i in range(reps):
        run_dir = tmp / f"empty-{i}"
        t0 = time.time()
        proc = subprocess.Popen([sys.executable, "-m", "runner", "--run-dir", str(run_dir), "--store",
                                 f"{url}/term-{i}", "--epochs", "200"], env=env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, cwd=ROOT)
        while not any(e.get("resumed_from_step") for e in events(run_dir, "attempt-started")):
            time.sleep(0.02)
        first = time.time() - t0
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        (ev,) = events(run_dir, "store-restored")
        out.append({"restore_s": float(ev["seconds"]), "bytes": float(ev["bytes"]), "start_to_resumed_s": first})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=8, help="epochs of each stall run (default 8)")
    ap.add_argument("--pairs", type=int, default=3, help="runs with and without a store, alternating (default 3)")
    ap.add_argument("--reps", type=int, default=3, help="SIGTERM and restore repetitions (default 3)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "remote.json")
    ns = ap.parse_args()
    from tests.s3_server import running_s3_server

    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    with tempfile.TemporaryDirectory() as t, running_s3_server() as s3:
        os.environ.update(s3.env())
        url, tmp = f"s3://{s3.bucket}/bench", Path(t)
        st = stall(tmp, url, ns.epochs, ns.pairs)
        term = sigterm_to_remote(tmp, url, ns.reps)
        rest = restore(tmp, url, ns.reps)
    res = {"date": time.strftime("%Y-%m-%d"), "machine": machine, "stall": st, "sigterm_to_remote_s": term,
           "restore": rest}
    rows = []
    for side, r in st.items():
        rows.append((f"{side}: step, stall (median / p95)",
                     f"{r['step_median_s'] * 1e3:.1f} / {r['step_p95_s'] * 1e3:.1f} ms, "
                     f"{r['stall_median_s'] * 1e3:.2f} / {r['stall_p95_s'] * 1e3:.1f} ms"))
        if r["uploads"]:
            rows.append((f"{side}: uploads, median upload, commit -> remote commit",
                         f"{r['uploads']}, {r['upload_median_s'] * 1e3:.0f} ms, {r['lag_median_s'] * 1e3:.0f} ms"))
    rows += [
        ("SIGTERM -> preemption checkpoint committed in the store, median",
         f"{statistics.median(term):.3f} s (of {', '.join(f'{x:.3f}' for x in term)})"),
        ("empty machine: restore, median", f"{statistics.median(r['restore_s'] for r in rest):.3f} s"),
        ("empty machine: supervisor start -> first resumed step, median",
         f"{statistics.median(r['start_to_resumed_s'] for r in rest):.2f} s"),
    ]
    publish("Remote tier in a running job (moto on loopback)", rows, res, ns.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
