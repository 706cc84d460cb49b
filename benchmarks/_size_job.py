"""The measuring side of ``bench_size.py``: one process per measurement, each printing one JSON object.

- ``train``: ``examples/scalable.py``'s model and loop on ``runner.Job``, timed step by step: the training
  thread's stall per checkpoint (the job's own account: the hand-over to the writer and any wait for a
  deferred copy), each checkpoint's persist time from ``events.jsonl``, and the peak extra memory (PSS of
  this process and its writer, the shared snapshot buffer counted once) over the state before the first
  checkpoint. ``--every 0`` gives the same loop with no checkpoint before the last step.
- ``restore``: a fresh process builds the model and optimizer and restores the newest checkpoint as
  ``Job.start()`` does: read and verify, then into the tensors; the time of each and the peak extra RSS.
- ``paddle-save``: ``paddle.save`` of the model's and the optimizer's state dicts (synchronous: the stall is
  its whole time), their fsync, and ``paddle.load`` + ``set_state_dict`` back, with peak extra RSS.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import resource
import sys
import threading
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._pagecache import drop_cache  # noqa: E402

warnings.filterwarnings("ignore", message=".*ccache.*")


def scalable() -> ModuleType:
    spec = importlib.util.spec_from_file_location("scalable", ROOT / "examples" / "scalable.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rollup(pid: int) -> dict[str, int]:
    """Rss and Pss of a process in bytes (0 for one that is gone)."""
    out = {"Rss": 0, "Pss": 0}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in out:
                    out[key] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


def children() -> list[int]:
    pids: list[int] = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                pids += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return pids


class MemorySampler:
    """Samples the PSS of this process and its children every ``every_s`` seconds, keeping the peaks."""

    def __init__(self, every_s: float = 0.05) -> None:
        self.every_s = every_s
        self.peak_total = self.peak_self_rss = self.peak_children = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> dict[str, int]:
        me = _rollup(os.getpid())
        kids = sum(_rollup(p)["Pss"] for p in children())
        return {"pss": me["Pss"] + kids, "self_rss": me["Rss"], "children_pss": kids}

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            s = self.sample()
            self.peak_total = max(self.peak_total, s["pss"])
            self.peak_self_rss = max(self.peak_self_rss, s["self_rss"])
            self.peak_children = max(self.peak_children, s["children_pss"])

    def start(self) -> MemorySampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def build(sc: ModuleType, state_mb: float, layers: int, batches: int, seed: int = 0) -> tuple[Any, Any, Any, int]:
    import numpy as np
    import paddle

    paddle.seed(seed)
    np.random.seed(seed)
    width = sc.width_for(state_mb, layers)
    data = sc.Synthetic(batches * 16, width, seed)
    model = sc.model_of(width, layers)
    opt = paddle.optimizer.Adam(1e-4, parameters=model.parameters())
    return model, opt, data, width


def train(ns: argparse.Namespace) -> dict[str, Any]:
    import paddle
    import paddle.nn.functional as F

    import runner
    from rundir.journal import read_records

    sc = scalable()
    every: int | str = ns.every if ns.every == "auto" else int(ns.every)
    job = runner.Job(run_dir=ns.run_dir, config={"bench": "size", "state_mb": ns.state_mb}, checkpoint_every=every)
    model, opt, data, width = build(sc, ns.state_mb, ns.layers, ns.steps)
    loader = job.resumable(paddle.io.DataLoader(data, batch_size=16, shuffle=True))
    job.restore(model=model, optimizer=opt)
    job.start(total_steps=ns.steps)
    if every == "auto":
        job.worker.set_cadence("auto", mtbf_s=ns.mtbf)
    cadence = lambda: job.worker.cadence  # noqa: E731 - set_cadence makes a new one
    memory = MemorySampler()
    ends: list[float] = []
    clock: list[float] = []  # wall-clock ends, to set beside the writer's records
    stalls: list[float] = []  # per checkpoint, deferred waits included
    base: dict[str, int] = {}
    n, total = 0, 0.0  # the cadence's count and total stall after the last step
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.clear_grad()
        if not base:
            gc.collect()
            base = memory.sample()  # Adam's moments exist now, no checkpoint yet
            memory.start()
        if ns.durable == "alternate":  # every other checkpoint durable: both persist figures in one run
            job.worker.durable_every_s = 0.0 if n % 2 == 0 else 1e9
        job.step(loss)
        ends.append(time.perf_counter())
        clock.append(time.time())
        c = cadence()  # a deferred copy is waited for in the next step's forward pass: it counts here
        if c.checkpoints > n:
            stalls.append(c.stall_total_s - total)
        elif stalls and c.stall_total_s > total:
            stalls[-1] += c.stall_total_s - total
        n, total = c.checkpoints, c.stall_total_s
    interval = cadence().interval()
    job.worker.flush_checkpoints()
    job.close()  # not complete(): the restore measurement resumes this run
    memory.stop()
    saved = [e for e in read_records(Path(ns.run_dir) / "events.jsonl") if e.get("event") == "checkpoint-saved"]
    newest = sorted((Path(ns.run_dir) / "checkpoints").glob("step-*"))[-1]
    files = sum(f.stat().st_size for f in newest.iterdir())
    last = len(ends) - 1  # the last step checkpoints at the epoch's end whatever the cadence: left out
    return {
        "width": width, "state_bytes": sc.state_bytes(width, ns.layers), "file_bytes": files,
        "steps": len(ends), "warmup": ns.warmup,
        "wall_s": ends[last - 1] - ends[ns.warmup - 1], "timed_steps": last - ns.warmup,
        "stalls_s": stalls, "checkpoints_timed": sum(1 for e in saved if ns.warmup < e["step"] < last),
        "persist": [{"step": e["step"], "persist_s": e["persist_s"], "durable": e["durable"], "end": e["time"]}
                    for e in saved],
        "step_ends": clock,
        "interval_steps": interval, "cost_s": cadence().cost_s, "step_s": cadence().step_s,
        "base_pss": base["pss"], "peak_pss": memory.peak_total, "peak_children_pss": memory.peak_children,
        "base_self_rss": base["self_rss"], "peak_self_rss": memory.peak_self_rss,
    }


def rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak() -> None:
    """Start this process's peak RSS (VmHWM) afresh from now, so that a peak is the measured phase's own and
    not one of building the model."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss() -> int:
    """Peak RSS since :func:`reset_peak` (VmHWM), else since the process began."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def restore(ns: argparse.Namespace) -> dict[str, Any]:
    """As a resumed job does it: ``Job.start()`` reads, verifies and puts back the newest checkpoint (its
    files dropped from the page cache first). Putting back alone is timed again after it, from the
    verified checkpoint in memory: reading and verifying is the rest."""
    import paddle

    import runner
    from checkpoint.storage import LocalStorage
    from checkpoint.store import CheckpointStore
    from runner.jobstate import Saved, Tracked
    from runner.jobstate import restore as put_back

    sc = scalable()
    job = runner.Job(run_dir=ns.run_dir, config={"bench": "size", "state_mb": ns.state_mb})
    model, opt, data, _ = build(sc, ns.state_mb, ns.layers, ns.steps)
    loader = job.resumable(paddle.io.DataLoader(data, batch_size=16, shuffle=True))
    job.restore(model=model, optimizer=opt)
    store = CheckpointStore(LocalStorage(Path(ns.run_dir)))
    name = store.committed()[-1]
    drop_cache(list((Path(ns.run_dir) / "checkpoints" / name).iterdir()))
    gc.collect()
    before = rss_now()
    reset_peak()
    t0 = time.perf_counter()
    job.start()
    took = time.perf_counter() - t0
    assert job.resumed_from > 0
    peak = peak_rss() - before
    ckpt = store.verify(name)
    t0 = time.perf_counter()
    put_back(Tracked.of(model=model, optimizer=opt, scheduler=None, loaders=[loader], extras=None),
             Saved.from_checkpoint(ckpt))
    into = time.perf_counter() - t0
    job.close()
    return {"read_verify_s": took - into, "restore_s": took, "into_tensors_s": into, "peak_extra_rss": peak}


def paddle_save(ns: argparse.Namespace) -> dict[str, Any]:
    import paddle
    import paddle.nn.functional as F

    sc = scalable()
    model, opt, data, _ = build(sc, ns.state_mb, ns.layers, 1)
    x, y = paddle.to_tensor(data.x[:16]), paddle.to_tensor(data.y[:16])
    F.cross_entropy(model(x), y).backward()
    opt.step()
    opt.clear_grad()
    d = Path(ns.run_dir)
    d.mkdir(parents=True, exist_ok=True)
    files = [d / "model.pdparams", d / "model.pdopt"]
    gc.collect()
    before = rss_now()
    reset_peak()
    t0 = time.perf_counter()
    paddle.save(model.state_dict(), str(files[0]))
    paddle.save(opt.state_dict(), str(files[1]))
    t1 = time.perf_counter()
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    t2 = time.perf_counter()
    save_peak = peak_rss() - before
    drop_cache(files)
    gc.collect()
    before = rss_now()
    reset_peak()
    t3 = time.perf_counter()
    model.set_state_dict(paddle.load(str(files[0])))
    opt.set_state_dict(paddle.load(str(files[1])))
    t4 = time.perf_counter()
    return {"save_s": t1 - t0, "fsync_s": t2 - t1, "durable_s": t2 - t0, "save_peak_extra_rss": save_peak,
            "load_s": t4 - t3, "load_peak_extra_rss": peak_rss() - before,
            "file_bytes": sum(f.stat().st_size for f in files)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["train", "restore", "paddle-save"])
    p.add_argument("--run-dir", required=True)
    p.add_argument("--state-mb", type=float, required=True)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--every", default="5", help="K steps, 0, or auto")
    p.add_argument("--mtbf", type=float, default=3600.0, help="for --every auto")
    p.add_argument("--durable", choices=["alternate", "default"], default="alternate")
    ns = p.parse_args()
    out = {"train": train, "restore": restore, "paddle-save": paddle_save}[ns.mode](ns)
    print("RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
