"""The writer's persist and the restore's verify, before and after the one-pass checkpoint path, in one run.

Per state size (``examples/scalable.py``'s shape: four square float32 layers with biases, plus Adam's
two moments, so the parameters are a third of the state) this times, in this one process and in turn
(before, after, before, ...; the median of ``--reps``), what the writer process does with a snapshot:

- **before**: the non-finite check, SHA-256 of the parameters (``params_sha256``), one ``writev`` of
  each file, then SHA-256 of each file: four passes over memory; manifests with SHA-256 digests;
- **after**: one read for the non-finite check and ``params_sha256`` (:func:`checkpoint.state.scan`),
  then each file hashed by XXH3-128 slice by slice as it is written (two passes, the second cache-hot);
- **after, no params digest**: as after, without ``params_sha256``: what that SHA-256 alone costs.

Each persist is timed to the page cache and durable (fsynced), as wall time and as CPU time (what the
steps beside a persist lose to it on a busy machine), user (this code: checks and hashes) and kernel
(the page cache's pages and the copies into them, fsync) apart: the kernel's share varies a lot from
one persist to the next on a VM that backs a page on its first touch. ``sync`` runs before each.
Restore is :meth:`CheckpointStore.verify` (read and check every byte) of each variant's checkpoint,
with the files in the page cache and after ``POSIX_FADV_DONTNEED`` (cold), against a plain cold read
of the same files.

    python benchmarks/bench_persist.py --sizes 100 1000
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._output import publish  # noqa: E402
from benchmarks._pagecache import drop_cache  # noqa: E402
from checkpoint.filehash import Hasher, slices  # noqa: E402
from checkpoint.state import (  # noqa: E402
    MODEL_FILE,
    TRAIN_FILE,
    StateArrays,  # noqa: E402
    non_finite,
    pack_chunks,
    scan,
)
from checkpoint.storage import Data, LocalStorage  # noqa: E402
from checkpoint.store import CheckpointStore  # noqa: E402

MIB = 1 << 20
Files = dict[str, dict[str, np.ndarray]]


class Unfused(LocalStorage):
    """Storage as it was before: the whole file written with one ``writev``, then hashed in a pass of its own."""

    def put(self, key: str, data: Data, *, commit: bool = True, durable: bool = True,
            digest: Hasher | None = None) -> None:
        super().put(key, data, commit=commit, durable=durable)
        if digest is not None:
            for view in slices([data] if isinstance(data, bytes) else data, 1 << 62):  # whole arrays
                digest.update(view)


def state(mb: float) -> Files:
    """About ``mb`` MiB: four square layers (weights and biases) and Adam's two moments of each."""
    width = int((mb * MIB / 4 / 3 / 4) ** 0.5)
    rng = np.random.default_rng(0)
    model = {}
    for i in range(4):
        model[f"fc{i}.weight"] = rng.standard_normal((width, width), np.float32)
        model[f"fc{i}.bias"] = rng.standard_normal(width, np.float32)
    train = {f"optimizer/{k}_moment{m}": np.abs(v) * m for k, v in model.items() for m in (1, 2)}
    train["order"] = np.arange(60000, dtype=np.int64)
    return {MODEL_FILE: model, TRAIN_FILE: train}


def persist_before(store: CheckpointStore, step: int, files: Files, durable: bool) -> None:
    if non_finite(files) is not None:
        raise AssertionError("the state is finite")
    chunks, meta = pack_chunks(StateArrays(files, {"step": step}, {"params_sha256": MODEL_FILE}))
    store.save(step, chunks, meta, durable=durable)


def persist_after(store: CheckpointStore, step: int, files: Files, durable: bool, params: bool = True) -> None:
    bad, digests = scan(files, {"params_sha256": MODEL_FILE} if params else {})
    if bad is not None:
        raise AssertionError("the state is finite")
    chunks, meta = pack_chunks(StateArrays(files, {"step": step, **digests}))
    store.save(step, chunks, meta, durable=durable)


def _clock(fn: Callable[[], object]) -> tuple[float, float, float]:
    """Wall time, and CPU time in this process (user: hashing and checks) and in the kernel for it (the
    page cache's pages, the copies into them, fsync)."""
    w, t = time.perf_counter(), os.times()
    fn()
    u = os.times()
    return time.perf_counter() - w, u.user - t.user, u.system - t.system


def _cold_read(root: Path) -> float:
    drop_cache(p for p in root.rglob("*") if p.is_file())
    t0 = time.perf_counter()
    for path in sorted(root.rglob("*.safetensors")):
        with open(path, "rb") as f:
            f.read()
    return time.perf_counter() - t0


Persist = Callable[[CheckpointStore, int, Files, bool], None]


def measure(mb: float, reps: int, work: Path) -> dict[str, Any]:
    files = state(mb)
    nbytes = sum(a.nbytes for arrays in files.values() for a in arrays.values())
    variants: dict[str, tuple[CheckpointStore, Persist]] = {
        "before": (CheckpointStore(Unfused(work / "before"), keep=1, digest="sha256"), persist_before),
        "after": (CheckpointStore(LocalStorage(work / "after"), keep=1), persist_after),
        "after_no_params": (CheckpointStore(LocalStorage(work / "after_np"), keep=1),
                            lambda s, n, f, d: persist_after(s, n, f, d, params=False)),
    }
    times: dict[str, list[tuple[float, float, float]]] = {
        f"{v}_{d}": [] for v in variants for d in ("cache", "durable")}
    step = 0
    for _ in range(reps):
        for durable in (False, True):
            for name, (store, persist) in variants.items():
                step += 1
                os.sync()  # each starts with no dirty pages of the one before: the page cache's state alike
                times[f"{name}_{'durable' if durable else 'cache'}"].append(
                    _clock(lambda: persist(store, step, files, durable)))  # noqa: B023 - called at once
    out: dict[str, Any] = {"bytes": nbytes}
    for key, runs in times.items():
        out[f"{key}_wall_s"] = statistics.median(w for w, _, _ in runs)
        out[f"{key}_user_s"] = statistics.median(u for _, u, _ in runs)
        out[f"{key}_sys_s"] = statistics.median(s for _, _, s in runs)
    for name, (store, _) in variants.items():
        latest = store.committed()[-1]
        hot = [_clock(lambda: store.verify(latest))[0] for _ in range(reps)]  # noqa: B023
        cold = []
        for _ in range(reps):
            drop_cache(p for p in store.storage.root.rglob("*") if p.is_file())  # type: ignore[attr-defined]
            cold.append(_clock(lambda: store.verify(latest))[0])  # noqa: B023
        out[f"{name}_restore_hot_s"], out[f"{name}_restore_cold_s"] = statistics.median(hot), statistics.median(cold)
    out["cold_read_s"] = statistics.median(_cold_read(work / "after") for _ in range(reps))
    return out


def rows(results: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str]]:
    out = []
    for mb, r in results.items():
        gb = r["bytes"] / 1e9

        def persist(key: str, r: Mapping[str, Any] = r, gb: float = gb) -> str:
            wall, user, system = r[f"{key}_wall_s"], r[f"{key}_user_s"], r[f"{key}_sys_s"]
            return f"{wall:.3f} s ({gb / wall:.2f} GB/s); CPU user {user:.3f} s + kernel {system:.3f} s"

        for where in ("cache", "durable"):
            for name in ("before", "after", "after_no_params"):
                out.append((f"{mb} MiB persist {where}: {name}", persist(f"{name}_{where}")))
        for name in ("before", "after", "after_no_params"):
            out.append((f"{mb} MiB restore (read + verify) {name}: hot / cold",
                        f"{r[f'{name}_restore_hot_s']:.3f} s / {r[f'{name}_restore_cold_s']:.3f} s"))
        out.append((f"{mb} MiB limit: cold read of the files", f"{r['cold_read_s']:.3f} s"))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=float, nargs="+", default=[100, 1000], help="state sizes in MiB")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "persist.json")
    ns = p.parse_args()
    results: dict[str, dict[str, Any]] = {}
    for mb in ns.sizes:
        work = Path(tempfile.mkdtemp(prefix="bench-persist-"))  # on the same disk as the runs here
        try:
            results[f"{mb:g}"] = measure(mb, ns.reps, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "reps": ns.reps}
    publish("checkpoint persist and restore: before / after the one-pass path", rows(results),
            {"meta": meta, "sizes": results}, ns.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
