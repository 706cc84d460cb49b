"""Checkpoint cost against state size, side by side with the machine's limits, ``paddle.save`` and PyTorch DCP.

For each state size (``examples/scalable.py``'s MLP: parameters plus Adam's two moments, float32) one run
measures, each in processes of its own (``benchmarks/_size_job.py``):

- the limits: a memcpy of the state (into memory already touched, and into fresh pages), a write of it
  with fsync, a read of it after ``POSIX_FADV_DONTNEED``, SHA-256 over it;
- ours: the training thread's stall per checkpoint, persist throughput (durable and page cache only,
  checkpoints alternating), peak extra memory while checkpointing (PSS of the job and its writer process,
  the shared snapshot buffer counted once) and while restoring, the wall-time overhead of a checkpoint
  every N steps against the same loop without one, the cost of a checkpoint every 30 s, and
  ``--checkpoint-every auto`` (Young's interval from the measured cost and ``--mtbf``): the interval, its
  predicted overhead and the measured one;
- ``paddle.save`` (synchronous: the stall is its whole time) and ``paddle.load``;
- PyTorch DCP ``async_save``, ``save`` and ``load`` on the same-size state, from the torch venv
  (``--venv``, ``VENV`` or ``benchmarks/.venv-torch``; left out when there is none).

The measurements per size are the functions in :data:`MEASUREMENTS`, each returning a dict kept under its
name in the JSON: add one there for more columns of figures. Prints a table and writes JSON (default
``benchmarks/results/size.json``).

    python benchmarks/bench_size.py                       # 1, 10, 100, 1000 MiB
    python benchmarks/bench_size.py --quick               # 1 and 10 MiB, fewer steps
    python benchmarks/bench_size.py --sizes 100,1000 --steps 40
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._output import publish  # noqa: E402

MIB = 1 << 20
DRIVER = ROOT / "benchmarks" / "_size_job.py"
TORCH_DCP = ROOT / "benchmarks" / "torch_baseline" / "dcp_size.py"


@dataclass(frozen=True)
class Size:
    """One state size being measured: where its runs go, and the settings they share."""

    mb: float
    work: Path  # a fresh directory on the disk under test
    steps: int
    every: int
    mtbf_s: float
    venv: Path | None

    @property
    def warmup(self) -> int:
        """Steps left out of the timed window: up to and including the first checkpoint, which pays for
        the new buffer and the first look at the tensors (reported apart)."""
        return self.every + 2

    @property
    def nbytes(self) -> int:
        return int(self.mb * MIB)


#: A measurement at one size: figures by name (seconds, bytes, ratios), kept in the JSON as they are.
Measurement = Callable[[Size, dict[str, Any]], dict[str, Any]]


def driver(size: Size, mode: str, *args: object) -> dict[str, Any]:
    """Run ``_size_job.py MODE`` at this size and return the JSON object it printed."""
    cmd = [sys.executable, str(DRIVER), mode, "--state-mb", str(size.mb), *map(str, args)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if p.returncode != 0 or line is None:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stderr[-3000:]}")
    return dict(json.loads(line[len("RESULT "):]))


def _best(fn: Callable[[], float], reps: int = 3) -> float:
    return min(fn() for _ in range(reps))


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def limits(size: Size, _: dict[str, Any]) -> dict[str, Any]:
    """The physical costs in this run: memcpy (warm and into fresh pages), fsync write, cold read, SHA-256."""
    src = np.random.default_rng(0).integers(0, 255, size.nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    dst[:] = 0
    memcpy = _best(lambda: _timed(lambda: np.copyto(dst, src)))
    fresh = _best(lambda: _timed(lambda: np.copyto(np.empty_like(src), src)))
    path = size.work / "limits.bin"

    def write() -> float:
        t0 = time.perf_counter()
        with open(path, "wb") as f:
            f.write(src.data)
            f.flush()
            os.fsync(f.fileno())
        return time.perf_counter() - t0

    fsync_write = _best(write, 2)

    def cold_read() -> float:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            t0 = time.perf_counter()
            with os.fdopen(os.dup(fd), "rb", buffering=0) as f:
                f.readinto(dst.data)
            return time.perf_counter() - t0
        finally:
            os.close(fd)

    read = _best(cold_read, 2)
    sha = _best(lambda: _timed(lambda: hashlib.sha256(src.data).digest()), 2)
    path.unlink()
    return {"bytes": size.nbytes, "memcpy_s": memcpy, "memcpy_fresh_s": fresh, "fsync_write_s": fsync_write,
            "cold_read_s": read, "sha256_s": sha}


def ours_baseline(size: Size, _: dict[str, Any]) -> dict[str, Any]:
    """The same loop on ``runner.Job`` with no checkpoint before its last step."""
    return driver(size, "train", "--run-dir", size.work / "base", "--steps", size.steps, "--every", 0,
                  "--warmup", size.warmup)


def ours_every_n(size: Size, _: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint every N steps, durable and page-cache-only in turn."""
    return driver(size, "train", "--run-dir", size.work / "every", "--steps", size.steps, "--every", size.every,
                  "--warmup", size.warmup)


def ours_restore(size: Size, _: dict[str, Any]) -> dict[str, Any]:
    """A fresh process restores the every-N run's newest checkpoint."""
    return driver(size, "restore", "--run-dir", size.work / "every", "--steps", size.steps)


def ours_auto(size: Size, _: dict[str, Any]) -> dict[str, Any]:
    """``--checkpoint-every auto`` with the given MTBF."""
    return driver(size, "train", "--run-dir", size.work / "auto", "--steps", size.steps, "--every", "auto",
                  "--mtbf", size.mtbf_s, "--durable", "default", "--warmup", size.warmup)


def paddle_save(size: Size, _: dict[str, Any]) -> dict[str, Any]:
    return driver(size, "paddle-save", "--run-dir", size.work / "paddle")


def torch_dcp(size: Size, _: dict[str, Any]) -> dict[str, Any]:
    if size.venv is None:
        return {"skipped": "no torch venv (bash benchmarks/torch_baseline/setup_venv.sh)"}
    p = subprocess.run([str(size.venv / "bin" / "python"), str(TORCH_DCP), "--state-mb", str(size.mb),
                        "--dir", str(size.work / "dcp")], capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        return {"skipped": f"dcp_size.py exited {p.returncode}: {p.stderr[-500:]}"}
    return dict(json.loads(p.stdout.strip().splitlines()[-1]))


def restart(size: Size, _: dict[str, Any]) -> dict[str, Any]:
    """SIGKILL to the first resumed step: the in-memory spare, the spare from disk, no spare (fork, exec),
    torchrun (``benchmarks/_restart_size.py``)."""
    from benchmarks._restart_size import measure

    return measure(size.work, size.mb, size.venv)


#: What is measured at each size, in order; each gets the figures measured before it at that size.
MEASUREMENTS: list[tuple[str, Measurement]] = [
    ("limits", limits),
    ("baseline", ours_baseline),
    ("every_n", ours_every_n),
    ("restore", ours_restore),
    ("auto", ours_auto),
    ("paddle_save", paddle_save),
    ("dcp", torch_dcp),
    ("restart", restart),
]


# -- figures derived from the measurements (pure) ------------------------------------------------------------


def persist_slowdown(run: dict[str, Any]) -> tuple[float, int]:
    """Within one run, what the steps that overlap a persist lost against the others (the writer's CPU
    and memory traffic beside training), in seconds per checkpoint, and the checkpoints it is over. The
    machine's drift hits both kinds of step alike; the first step (no time before it) and the last
    (the epoch end's checkpoint) are left out."""
    ends = run["step_ends"]
    windows = [(p["end"] - p["persist_s"], p["end"]) for p in run["persist"][1:-1]]
    during, clean = [], []
    for i in range(max(run["warmup"], 1), len(ends) - 1):
        dt = ends[i] - ends[i - 1]
        busy = any(lo < ends[i] and ends[i - 1] < hi for lo, hi in windows)
        (during if busy else clean).append(dt)
    if not windows or not clean:
        return 0.0, len(windows)
    typical = statistics.median(clean)
    return sum(dt - typical for dt in during) / len(windows), len(windows)


def derive(r: dict[str, Any], every: int) -> dict[str, Any]:
    """The table's figures from one size's measurements."""
    lim, base, ev, auto = r["limits"], r["baseline"], r["every_n"], r["auto"]
    state = ev["state_bytes"]
    steady = ev["stalls_s"][1:-1] or ev["stalls_s"]  # the first pays for a new buffer, the last is the epoch end
    per_step = base["wall_s"] / base["timed_steps"]
    extra_wall = ev["wall_s"] - per_step * ev["timed_steps"]
    n = max(ev["checkpoints_timed"], 1)
    durable = [p["persist_s"] for p in ev["persist"] if p["durable"]]
    cached = [p["persist_s"] for p in ev["persist"] if not p["durable"]]
    slowdown, _ = persist_slowdown(ev)
    per_ckpt = max(slowdown, statistics.median(steady))  # a stall falls in a step that overlaps its persist
    out = {
        "state_bytes": state,
        "stall_s": statistics.median(steady),
        "stall_first_s": ev["stalls_s"][0],
        "stall_vs_memcpy": statistics.median(steady) / lim["memcpy_s"],
        "persist_durable_gbps": ev["file_bytes"] / statistics.median(durable) / 1e9 if durable else None,
        "persist_cached_gbps": ev["file_bytes"] / statistics.median(cached) / 1e9 if cached else None,
        "fsync_write_gbps": lim["bytes"] / lim["fsync_write_s"] / 1e9,
        "memcpy_gbps": lim["bytes"] / lim["memcpy_s"] / 1e9,
        "cold_read_s_at_state": lim["cold_read_s"] * state / lim["bytes"],
        "memcpy_s_at_state": lim["memcpy_s"] * state / lim["bytes"],
        "every_n": every,
        "every_n_overhead": extra_wall / (per_step * ev["timed_steps"]),
        "every_n_stall_share": sum(ev["stalls_s"][1:]) / ev["wall_s"],
        "cost_per_checkpoint_s": per_ckpt,
        "persist_slowdown_s": slowdown,
        "cross_run_cost_per_checkpoint_s": extra_wall / n,
        "every_30s_overhead": per_ckpt / 30.0,
        "ckpt_peak_extra_bytes": ev["peak_pss"] - ev["base_pss"],
        "ckpt_peak_extra_ratio": (ev["peak_pss"] - ev["base_pss"]) / state,
        "restore_peak_extra_ratio": r["restore"]["peak_extra_rss"] / state,
        "step_s": per_step,
    }
    if auto.get("interval_steps"):
        k, c, s = auto["interval_steps"], auto["cost_s"], auto["step_s"]
        plain = per_step * auto["timed_steps"]
        out.update(auto_interval_steps=k, auto_predicted=c / (k * s),
                   auto_measured=sum(auto["stalls_s"][1:-1]) / auto["wall_s"],
                   auto_wall_overhead=(auto["wall_s"] - plain) / plain)
    return out


def _s(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f} %"


def _gbps(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} GB/s"


def _restart(r: dict[str, Any], mode: str) -> str:
    """A restart's latency (kill to the first resumed step) and, in brackets, that less one ordinary step."""
    m = r["restart"].get(mode, {})
    return "-" if "latency_s" not in m else f"{_s(m['latency_s'])} ({_s(m['overhead_s'])})"


def restart_rows() -> list[tuple[str, Callable[[dict[str, Any], dict[str, Any]], str]]]:
    mem = "memory"
    return [
        ("restart (less a step): in-memory spare", lambda r, d: _restart(r, mem)),
        ("  spare from disk", lambda r, d: _restart(r, "disk")),
        ("  no spare: fork server; exec", lambda r, d: f"{_restart(r, 'fork')}; {_restart(r, 'exec')}"),
        ("  torchrun, torch.save/load", lambda r, d: _restart(r, "torchrun")),
        ("  in-memory: worker gone; spare restored",
         lambda r, d: f"{_s(r['restart'][mem]['dead_s'])}; "
                      f"{_s(r['restart'][mem]['restored_s'] - r['restart'][mem]['reaped_s'])}"),
        ("  in-memory: first step / a step", lambda r, d: f"{_s(r['restart'][mem]['first_step_dt_s'])} / "
                                                          f"{_s(r['restart'][mem]['step_s'])}"),
        ("  target: 2 x memcpy of the state", lambda r, d: _s(2 * d["memcpy_s_at_state"])),
        ("spare memory: in-memory / from disk (peak)",
         lambda r, d: f"{r['restart'][mem].get('spare_rss', 0) / MIB:.0f} MiB "
                      f"({r['restart'][mem].get('spare_peak_rss', 0) / MIB:.0f}) / "
                      f"{r['restart']['disk'].get('spare_rss', 0) / MIB:.0f} MiB"),
    ]


#: The table's rows: a label, and the cell for one size's (measurements, derived figures).
ROWS: list[tuple[str, Callable[[dict[str, Any], dict[str, Any]], str]]] = [
    ("state (parameters + Adam moments)", lambda r, d: f"{d['state_bytes'] / MIB:.0f} MiB"),
    ("step time (batch 16)", lambda r, d: _s(d["step_s"])),
    ("limit: memcpy of the state", lambda r, d: _s(d["memcpy_s_at_state"])),
    ("stall / checkpoint: ours (x memcpy)", lambda r, d: f"{_s(d['stall_s'])} ({d['stall_vs_memcpy']:.1f}x)"),
    ("stall: ours, first checkpoint (new buffer)", lambda r, d: _s(d["stall_first_s"])),
    ("stall: paddle.save (synchronous)", lambda r, d: _s(r["paddle_save"]["save_s"])),
    ("stall: DCP async_save", lambda r, d: _s(r["dcp"].get("async_stall_s"))),
    ("persist durable: ours / limit fsync write",
     lambda r, d: f"{_gbps(d['persist_durable_gbps'])} / {_gbps(d['fsync_write_gbps'])}"),
    ("persist page cache: ours / limit memcpy",
     lambda r, d: f"{_gbps(d['persist_cached_gbps'])} / {_gbps(d['memcpy_gbps'])}"),
    ("durable: paddle.save + fsync; DCP async_save",
     lambda r, d: f"{_s(r['paddle_save']['durable_s'])}; {_s(r['dcp'].get('async_persist_s'))}"),
    ("restore: ours (read+verify / into tensors)",
     lambda r, d: f"{_s(r['restore']['restore_s'])} ({_s(r['restore']['read_verify_s'])} / "
                  f"{_s(r['restore']['into_tensors_s'])})"),
    ("limit: cold read of the state", lambda r, d: _s(d["cold_read_s_at_state"])),
    ("restore: paddle.load; DCP load", lambda r, d: f"{_s(r['paddle_save']['load_s'])}; {_s(r['dcp'].get('load_s'))}"),
    ("peak extra memory: checkpoint (x state)",
     lambda r, d: f"{d['ckpt_peak_extra_bytes'] / MIB:.0f} MiB ({d['ckpt_peak_extra_ratio']:.2f}x)"),
    ("peak extra memory: restore (x state)",
     lambda r, d: f"{r['restore']['peak_extra_rss'] / MIB:.0f} MiB ({d['restore_peak_extra_ratio']:.2f}x)"),
    ("every N steps: wall overhead (stall share)",
     lambda r, d: f"N={d['every_n']}: {_pct(d['every_n_overhead'])} ({_pct(d['every_n_stall_share'])})"),
    ("every 30 s: (stall + slower steps) / 30 s",
     lambda r, d: f"{_pct(d['every_30s_overhead'])} ({_s(d['cost_per_checkpoint_s'])})"),
    ("auto: interval; predicted / measured",
     lambda r, d: (f"{d['auto_interval_steps']} steps; {_pct(d['auto_predicted'])} / {_pct(d['auto_measured'])}"
                   if "auto_interval_steps" in d else "-")),
    *restart_rows(),
]


def table_rows(results: dict[str, dict[str, Any]], every: int) -> tuple[list[str], list[list[str]]]:
    """The header (one column per size) and the rows, as text."""
    sizes = list(results)
    derived = {s: derive(results[s], every) for s in sizes}
    rows = [[label, *(cell(results[s], derived[s]) for s in sizes)] for label, cell in ROWS]
    return ["measure", *(f"{s} MiB" for s in sizes)], rows


def venv_path(given: str | None) -> Path | None:
    for cand in (given, os.environ.get("VENV"), ROOT / "benchmarks" / ".venv-torch"):
        if cand and (Path(cand) / "bin" / "python").exists():
            return Path(cand)
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1,10,100,1000", help="state sizes in MiB, comma-separated")
    p.add_argument("--quick", action="store_true", help="1 and 10 MiB, 24 steps, a checkpoint every 4")
    p.add_argument("--steps", type=int, default=44, help="steps per training run")
    p.add_argument("--every", type=int, default=8, help="N of the every-N-steps run")
    p.add_argument("--mtbf", type=float, default=60.0, help="MTBF (s) given to --checkpoint-every auto")
    p.add_argument("--venv", default=None, help="the torch venv (default: VENV, or benchmarks/.venv-torch)")
    p.add_argument("--work", type=Path, default=None, help="a directory on the disk to measure (default: a temp dir)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "size.json")
    ns = p.parse_args()
    sizes = [1.0, 10.0] if ns.quick else [float(s) for s in ns.sizes.split(",")]
    steps, ns.every = (24, 4) if ns.quick else (ns.steps, ns.every)
    venv = venv_path(ns.venv)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(dir=ns.work) as tmp:
        for mb in sizes:
            work = Path(tmp) / f"size-{mb:g}"
            work.mkdir()
            size = Size(mb, work, steps, ns.every, ns.mtbf, venv)
            r: dict[str, Any] = {}
            for name, measure in MEASUREMENTS:
                print(f"{mb:g} MiB: {name}", file=sys.stderr, flush=True)
                r[name] = measure(size, r)
            results[f"{mb:g}"] = r
            shutil.rmtree(work, ignore_errors=True)
    header, rows = table_rows(results, ns.every)
    out = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
           f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB, Python "
           f"{platform.python_version()}", "steps": steps, "every": ns.every, "mtbf_s": ns.mtbf,
           "sizes": results, "derived": {s: derive(results[s], ns.every) for s in results}}
    publish("Checkpoint cost against state size (limits measured in the same run)", rows, out, ns.out, header)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
