"""torchrun's elastic agent as the baseline: restart latency and goodput of the same CNN job in PyTorch.

Runs with the system Python (stdlib, NumPy, scikit-learn only); it spawns ``VENV/bin/torchrun`` from
the benchmark-only venv (``bash benchmarks/torch_baseline/setup_venv.sh``) on ``train_torch.py``.

* :func:`restart_latency` -- SIGKILL the worker (never torchrun) ``kills`` times; each latency is
  the time from the kill to the first journal line written by the replacement worker, i.e. its first
  completed step (the project's own report measures "kill to first resumed step" the same way).
* :func:`goodput` -- a fixed number of steps under torchrun while the worker is SIGKILLed every
  ``kill_every_s`` seconds, against the same steps under torchrun uninterrupted, in the same call.

Every wait is bounded, and each torchrun is started in its own session and torn down as a whole at
the end (torchrun starts its workers in sessions of their own, so those are killed by pid too).

    python benchmarks/torch_baseline/harness.py --kills 10 --kill-every 10 --duration 40
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
DEFAULT_VENV = ROOT / "benchmarks" / ".venv-torch"
TRAIN = HERE / "train_torch.py"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "torchrun.json"
MONITOR_INTERVAL = 0.1
POLL = 0.01

__all__ = ["restart_latency", "restart_latency_detail", "goodput", "make_data", "torch_startup_times",
           "TorchrunJob", "DEFAULT_VENV", "TRAIN"]


# ----------------------------------------------------------------------------------------------- data

def make_data(path: str | Path) -> Path:
    """The project's default data as ``python -m model`` prepares it: scikit-learn's digits / 16 as
    (N,1,8,8) float32, the first 1500 of a ``default_rng(0)`` permutation for training."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    tr, ev = order[:1500], order[1500:]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, train_x=x[tr], train_y=y[tr], eval_x=x[ev], eval_y=y[ev])
    os.replace(tmp, path)
    return path


def _data(workdir: Path, data: str | Path | None) -> Path:
    if data is not None:
        p = Path(data).resolve()
        if not p.is_file():
            raise FileNotFoundError(f"no data file {p}")
        return p
    p = workdir / "data.npz"
    return p if p.is_file() else make_data(p)


def _venv(venv: str | Path | None) -> Path:
    v = Path(venv) if venv is not None else DEFAULT_VENV
    if not (v / "bin" / "torchrun").exists():
        raise FileNotFoundError(f"no torchrun in {v}/bin: run bash benchmarks/torch_baseline/setup_venv.sh")
    return v.resolve()


# -------------------------------------------------------------------------------------------- journal

class Journal:
    """Tails a JSON-lines file: each :meth:`poll` returns the complete lines appended since the last."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.buf = b""
        self.records: list[dict[str, Any]] = []

    def poll(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(chunk)
        self.buf += chunk
        *lines, self.buf = self.buf.split(b"\n")
        new = []
        for line in lines:
            try:
                new.append(json.loads(line))
            except ValueError:
                continue  # a line torn by a SIGKILL mid-write
        self.records.extend(new)
        return new


# ------------------------------------------------------------------------------------------- torchrun

def _pid_is_worker(pid: int) -> bool:
    try:
        return TRAIN.name.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


class TorchrunJob:
    """One ``torchrun --nproc_per_node 1`` of ``train_torch.py`` in ``run_dir`` (recreated empty).

    Use as a context manager: leaving it always tears torchrun's process group down, then any worker
    pid the journal named that still runs (torchrun puts its workers in sessions of their own)."""

    def __init__(self, run_dir: str | Path, data: Path, venv: Path, steps: int, max_restarts: int,
                 monitor_interval: float = MONITOR_INTERVAL, standalone: bool = True,
                 omp_num_threads: int | None = None, extra_args: Sequence[str] = ()) -> None:
        self.dir = Path(run_dir)
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        self.journal = Journal(self.dir / "journal.jsonl")
        self.ckpt = self.dir / "ckpt.pt"
        rdzv = ["--standalone"] if standalone else []  # standalone: a free port, no clash with other jobs
        self.cmd = [str(venv / "bin" / "torchrun"), *rdzv, "--nproc_per_node", "1",
                    "--max-restarts", str(max_restarts), "--monitor-interval", str(monitor_interval),
                    str(TRAIN), "--data", str(data), "--ckpt", str(self.ckpt),
                    "--journal", str(self.journal.path), "--steps", str(steps), *extra_args]
        self.env = dict(os.environ)
        if omp_num_threads is not None:  # torchrun leaves OMP_NUM_THREADS alone for --nproc_per_node 1
            self.env["OMP_NUM_THREADS"] = str(omp_num_threads)
        self.proc: subprocess.Popen[bytes] | None = None
        self.t_launch = 0.0
        self.t_exit: float | None = None

    def __enter__(self) -> TorchrunJob:
        self.log = open(self.dir / "torchrun.log", "wb")
        self.t_launch = time.time()
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, cwd=self.dir, env=self.env)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def poll(self) -> list[dict[str, Any]]:
        new = self.journal.poll()
        if self.t_exit is None and self.proc is not None and self.proc.poll() is not None:
            self.t_exit = time.time()
            new += self.journal.poll()
        return new

    @property
    def exited(self) -> bool:
        return self.t_exit is not None

    def wait_until(self, cond: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        """Polls the journal until a new line satisfies ``cond``; raises on timeout or torchrun's exit."""
        deadline = time.monotonic() + timeout
        while True:
            for r in self.poll():
                if cond(r):
                    return r
            if self.exited:
                raise RuntimeError(f"torchrun exited ({self.proc.returncode if self.proc else '?'}) while waiting "
                                   f"for {what}\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} within {timeout:.0f} s\n{self.log_tail()}")
            time.sleep(POLL)

    def wait_exit(self, timeout: float, on_poll: Callable[[], None] | None = None) -> int:
        deadline = time.monotonic() + timeout
        while not self.exited:
            self.poll()
            if on_poll is not None and not self.exited:
                on_poll()
            if time.monotonic() > deadline:
                raise TimeoutError(f"torchrun still running after {timeout:.0f} s\n{self.log_tail()}")
            time.sleep(POLL)
        assert self.proc is not None and self.proc.returncode is not None
        return self.proc.returncode

    def log_tail(self, n: int = 15) -> str:
        try:
            lines = (self.dir / "torchrun.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join("  | " + ln[:300] for ln in lines[-n:])

    def kill_worker(self, pid: int) -> float:
        """SIGKILLs one worker (checked to be ``train_torch.py``); returns the time of the kill."""
        if not _pid_is_worker(pid):
            raise RuntimeError(f"pid {pid} is not a running {TRAIN.name}")
        t = time.time()
        os.kill(pid, signal.SIGKILL)
        return t

    def stop(self, grace: float = 10.0) -> None:
        p = self.proc
        if p is not None:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)  # torchrun forwards it to its workers
                except ProcessLookupError:
                    pass
                try:
                    p.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    pass
            try:
                os.killpg(p.pid, signal.SIGKILL)  # anything left in torchrun's group
            except (ProcessLookupError, PermissionError):
                pass
            try:
                p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
            if self.t_exit is None:
                self.t_exit = time.time()
        self.journal.poll()
        for pid in {int(r["pid"]) for r in self.journal.records}:
            if _pid_is_worker(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if hasattr(self, "log"):
            self.log.close()


# ----------------------------------------------------------------------------------- restart latency

def _median(xs: Sequence[float]) -> float | None:
    return statistics.median(xs) if xs else None


def restart_latency_detail(workdir: str | Path, kills: int = 10, data: str | Path | None = None,
                           venv: str | Path | None = None, settle_steps: int = 3,
                           monitor_interval: float = MONITOR_INTERVAL, standalone: bool = True,
                           omp_num_threads: int | None = None, timeout_s: float = 120.0) -> dict[str, Any]:
    """:func:`restart_latency` with its breakdown: per kill, the latency and its parts (torchrun noticing
    the death and spawning the worker, ``import torch``, building the job and restoring the checkpoint,
    the first step), plus torchrun's start-up to the first step."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    data_p, venv_p = _data(workdir, data), _venv(venv)
    kill_log: list[dict[str, Any]] = []
    with TorchrunJob(workdir / "latency", data_p, venv_p, steps=10**7, max_restarts=kills + 2,
                     monitor_interval=monitor_interval, standalone=standalone,
                     omp_num_threads=omp_num_threads) as job:
        first = job.wait_until(lambda r: True, timeout_s, "first step")
        startup = {"launch_to_first_step_s": first["time"] - job.t_launch,
                   "launch_to_worker_start_s": first["proc_start"] - job.t_launch}
        current = int(first["restart"])
        for i in range(kills):
            seen: list[dict[str, Any]] = []

            def settled(r: dict[str, Any], seen: list[dict[str, Any]] = seen, cur: int = current) -> bool:
                if int(r["restart"]) == cur:
                    seen.append(r)
                return len(seen) >= settle_steps

            last = job.wait_until(settled, timeout_s, f"{settle_steps} steps of restart {current}")
            t_kill = job.kill_worker(int(last["pid"]))

            def replaced(r: dict[str, Any], cur: int = current) -> bool:
                return int(r["restart"]) > cur

            nxt = job.wait_until(replaced, timeout_s, f"a step after kill {i + 1}")
            kill_log.append({
                "kill": i + 1, "killed_pid": int(last["pid"]), "killed_after_step": int(last["step"]),
                "t_kill": t_kill, "restart": int(nxt["restart"]), "new_pid": int(nxt["pid"]),
                "resumed_at_step": int(nxt.get("resumed_at", -1)),
                "latency_s": nxt["time"] - t_kill,
                "detect_and_spawn_s": nxt["proc_start"] - t_kill,  # to the worker script's first line
                "import_torch_s": nxt["imported"] - nxt["proc_start"],
                "build_and_restore_s": nxt["ready"] - nxt["imported"],
                "first_step_s": nxt["time"] - nxt["ready"],
            })
            current = int(nxt["restart"])
    lat = [k["latency_s"] for k in kill_log]
    parts = ("detect_and_spawn_s", "import_torch_s", "build_and_restore_s", "first_step_s")
    return {"latencies_s": lat, "median_s": _median(lat), "max_s": max(lat) if lat else None,
            "median_parts_s": {p: _median([k[p] for k in kill_log]) for p in parts},
            "restart_counts_seen": [k["restart"] for k in kill_log], "kills": kill_log, **startup,
            "command": job.cmd}


def restart_latency(workdir: str | Path, kills: int = 10, data: str | Path | None = None,
                    venv: str | Path | None = None, **kw: Any) -> list[float]:
    """Seconds from each SIGKILL of torchrun's worker to the replacement worker's first completed step.

    One torchrun (``--nproc_per_node 1 --max-restarts kills+2 --monitor-interval 0.1``) runs a job long
    enough to outlast the test; each round waits for ``settle_steps`` steps of the current worker,
    SIGKILLs it (its pid from the journal) and waits for the first line with a higher
    ``TORCHELASTIC_RESTART_COUNT``. Report the median."""
    return restart_latency_detail(workdir, kills=kills, data=data, venv=venv, **kw)["latencies_s"]


# --------------------------------------------------------------------------------------------- goodput

def _steps_per_s(workdir: Path, data: Path, venv: Path, seconds: float, timeout_s: float, **job_kw: Any) -> float:
    """Calibration: steps per second of an uninterrupted worker, over ``seconds`` after its first step."""
    with TorchrunJob(workdir / "goodput-calibrate", data, venv, steps=10**7, max_restarts=0, **job_kw) as job:
        first = job.wait_until(lambda r: True, timeout_s, "first step")
        last = job.wait_until(lambda r: r["time"] - first["time"] >= seconds, timeout_s + seconds, "calibration")
    return (last["step"] - first["step"]) / (last["time"] - first["time"])


def _compute_s(records: Sequence[dict[str, Any]]) -> float:
    """First step to last, plus the first step's own duration (as the project's report counts it)."""
    return records[-1]["time"] - records[0]["time"] + (records[0]["time"] - records[0]["ready"])


def goodput(workdir: str | Path, kill_every_s: float, duration_s: float, steps: int | None = None,
            data: str | Path | None = None, venv: str | Path | None = None,
            monitor_interval: float = MONITOR_INTERVAL, standalone: bool = True,
            omp_num_threads: int | None = None, timeout_s: float | None = None) -> dict[str, Any]:
    """Goodput of torchrun under a SIGKILL of its worker every ``kill_every_s`` seconds.

    The job is ``steps`` steps or, if None, as many as the uninterrupted worker does in about
    ``duration_s`` seconds (a short calibration run measures its speed). Both runs are whole torchrun
    invocations, launch to exit: first uninterrupted (``reference_wall_s``), then with kills
    (``wall_s``); kills fall at launch + k * ``kill_every_s``, on whichever worker is running then
    (one that has not completed a step yet is killed right after its first; none once the last step
    is in the journal, so a kill never lands on a finished job's exit).

    Returns ``goodput`` = reference_wall_s / wall_s, ``goodput_compute`` = reference training time
    (first step to last, start-up excluded, the project's definition) / wall_s, and the raw numbers."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    data_p, venv_p = _data(workdir, data), _venv(venv)
    budget = timeout_s if timeout_s is not None else max(120.0, 10 * duration_s)
    job_kw: dict[str, Any] = {"monitor_interval": monitor_interval, "standalone": standalone,
                              "omp_num_threads": omp_num_threads}
    rate = None
    if steps is None:
        rate = _steps_per_s(workdir, data_p, venv_p, min(10.0, max(2.0, duration_s / 4)), budget, **job_kw)
        steps = max(1, round(rate * duration_s))

    with TorchrunJob(workdir / "goodput-reference", data_p, venv_p, steps=steps, max_restarts=0, **job_kw) as ref:
        rc = ref.wait_exit(budget)
        ref_wall = (ref.t_exit or time.time()) - ref.t_launch
        ref_recs = list(ref.journal.records)
    if rc != 0 or len(ref_recs) != steps:
        raise RuntimeError(f"reference run: exit {rc}, {len(ref_recs)} of {steps} steps\n{ref.log_tail()}")

    n_kills_expected = int((ref_wall * 3) / kill_every_s) + 5
    kills: list[dict[str, Any]] = []
    with TorchrunJob(workdir / "goodput-kills", data_p, venv_p, steps=steps, max_restarts=n_kills_expected * 4,
                     **job_kw) as job:
        killed: set[int] = set()

        def maybe_kill() -> None:
            due = job.t_launch + (len(kills) + 1) * kill_every_s
            if time.time() < due or not job.journal.records:
                return
            last = job.journal.records[-1]
            if int(last["step"]) >= steps - 1:
                return  # the last step is done: the worker is only saving and exiting, nothing left to lose
            pid = int(last["pid"])
            if pid in killed or not _pid_is_worker(pid):
                return  # the replacement has not completed a step yet: kill it right after its first
            try:
                t = job.kill_worker(pid)
            except (RuntimeError, ProcessLookupError):
                return  # it finished between the check and the kill
            killed.add(pid)
            kills.append({"t_kill": t, "due": due, "late_s": t - due, "pid": pid, "after_step": int(last["step"]),
                          "restart": int(last["restart"])})

        rc = job.wait_exit(budget, on_poll=maybe_kill)
        wall = (job.t_exit or time.time()) - job.t_launch
        recs = list(job.journal.records)
    done = {int(r["step"]) for r in recs}
    if rc != 0 or done != set(range(steps)):
        raise RuntimeError(f"run with kills: exit {rc}, {len(done)} of {steps} steps\n{job.log_tail()}")

    first_after: list[float] = []
    for k in kills:
        nxt = [r["time"] for r in recs if int(r["restart"]) > k["restart"]]
        if nxt:
            first_after.append(min(nxt) - k["t_kill"])
    ref_compute = _compute_s(ref_recs)
    ref_loss = {int(r["step"]): r["loss"] for r in ref_recs}
    run_loss = {int(r["step"]): r["loss"] for r in recs}  # the last attempt at each step wins
    diff = max(abs(ref_loss[s] - run_loss[s]) for s in ref_loss)
    return {
        "steps": steps, "kill_every_s": kill_every_s, "duration_s": duration_s,
        "calibrated_steps_per_s": rate,
        "reference_wall_s": ref_wall, "reference_compute_s": ref_compute,
        "reference_launch_to_first_step_s": ref_recs[0]["time"] - ref.t_launch,
        "wall_s": wall, "kills": len(kills), "restarts": max(int(r["restart"]) for r in recs),
        "steps_run": len(recs), "steps_recomputed": len(recs) - steps,
        "restart_latencies_s": first_after, "restart_latency_median_s": _median(first_after),
        "goodput": ref_wall / wall, "goodput_compute": ref_compute / wall,
        "max_abs_loss_diff_vs_reference": diff,  # 0.0: the stitched run resumed exactly
        "kill_log": kills, "command": job.cmd,
    }


# ------------------------------------------------------------------------------------------ start-up

def torch_startup_times(venv: str | Path | None = None, reps: int = 3) -> dict[str, Any]:
    """``import torch`` and then the first ``torch.optim.Adam(...)``, which imports torch._dynamo (and
    sympy) lazily, in fresh interpreters of the venv; medians over ``reps``."""
    py = _venv(venv) / "bin" / "python"
    code = ("import time; t0 = time.perf_counter(); import torch; t1 = time.perf_counter(); "
            "torch.optim.Adam(torch.nn.Linear(2, 2).parameters()); t2 = time.perf_counter(); "
            "print(t1 - t0, t2 - t1, torch.__version__, torch.get_num_threads())")
    imp, adam = [], []
    version, threads = "?", 0
    for _ in range(reps):
        out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout
        a, b, version, th = out.split()
        imp.append(float(a))
        adam.append(float(b))
        threads = int(th)
    return {"import_torch_s": statistics.median(imp), "first_adam_s": statistics.median(adam),
            "torch_version": version, "torch_num_threads": threads}


# ---------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="torchrun baseline: restart latency and goodput of the CNN job")
    p.add_argument("--kills", type=int, default=10, help="kills for the restart-latency test (0: skip it)")
    p.add_argument("--kill-every", type=float, default=10.0, help="seconds between kills in the goodput test")
    p.add_argument("--duration", type=float, default=40.0,
                   help="uninterrupted training time the goodput job is sized to, seconds (0: skip goodput)")
    p.add_argument("--steps", type=int, help="goodput job's step count (overrides --duration)")
    p.add_argument("--data", type=Path, help="data.npz (default: built from scikit-learn's digits)")
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    p.add_argument("--workdir", type=Path, help="scratch directory (default: a temporary one, removed)")
    p.add_argument("--static-rdzv", action="store_true", help="torchrun's static rendezvous on port 29500 "
                   "instead of --standalone")
    p.add_argument("--omp-num-threads", type=int, help="set OMP_NUM_THREADS for torchrun (default: torch's own "
                   "default, one thread per core, as torchrun leaves it)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ns = p.parse_args(argv)

    tmp = None
    if ns.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="torchrun-bench-")
        workdir = Path(tmp.name)
    else:
        workdir = ns.workdir
    standalone = not ns.static_rdzv
    try:
        results: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "torchrun": {"nproc_per_node": 1, "monitor_interval_s": MONITOR_INTERVAL,
                         "rendezvous": "standalone (c10d)" if standalone else "static",
                         "OMP_NUM_THREADS": ns.omp_num_threads},
            "checkpoint": "every step, torch.save to a temp file + fsync + os.replace + fsync dir",
        }
        results["startup"] = torch_startup_times(ns.venv)
        if ns.kills > 0:
            results["restart_latency"] = restart_latency_detail(workdir, kills=ns.kills, data=ns.data,
                                                                venv=ns.venv, standalone=standalone,
                                                                omp_num_threads=ns.omp_num_threads)
        if ns.duration > 0 or ns.steps:
            results["goodput"] = goodput(workdir, ns.kill_every, ns.duration, steps=ns.steps, data=ns.data,
                                         venv=ns.venv, standalone=standalone, omp_num_threads=ns.omp_num_threads)
    finally:
        if tmp is not None:
            tmp.cleanup()

    st = results["startup"]
    rows = [("torch version, threads", f"{st['torch_version']}, {st['torch_num_threads']}"),
            ("import torch", f"{st['import_torch_s']:.2f} s"),
            ("first torch.optim.Adam (lazy torch._dynamo import)", f"{st['first_adam_s']:.2f} s")]
    if "restart_latency" in results:
        rl = results["restart_latency"]
        mp = rl["median_parts_s"]
        rows += [
            ("torchrun launch to first step", f"{rl['launch_to_first_step_s']:.2f} s"),
            (f"restart latency, median of {len(rl['latencies_s'])}", f"{rl['median_s']:.2f} s"),
            ("restart latency, max", f"{rl['max_s']:.2f} s"),
            ("  kill -> worker script starts", f"{mp['detect_and_spawn_s']:.2f} s"),
            ("  import torch", f"{mp['import_torch_s']:.2f} s"),
            ("  build job + restore checkpoint", f"{mp['build_and_restore_s']:.2f} s"),
            ("  first step", f"{mp['first_step_s']:.3f} s"),
            ("restart counts seen", ",".join(map(str, rl["restart_counts_seen"]))),
        ]
    if "goodput" in results:
        g = results["goodput"]
        rows += [
            ("goodput job", f"{g['steps']} steps, kill every {g['kill_every_s']:g} s"),
            ("uninterrupted wall (compute)", f"{g['reference_wall_s']:.1f} s ({g['reference_compute_s']:.1f} s)"),
            ("wall under kills", f"{g['wall_s']:.1f} s, {g['kills']} kills, {g['steps_recomputed']} steps redone"),
            ("goodput (wall / wall)", f"{g['goodput']:.3f}"),
            ("goodput (compute / wall)", f"{g['goodput_compute']:.3f}"),
            ("loss trace vs uninterrupted, max |diff|", f"{g['max_abs_loss_diff_vs_reference']:g}"),
        ]
    w = max(len(r[0]) for r in rows)
    print(f"torchrun baseline, {results['machine']}")
    for k, v in rows:
        print(f"  {k:<{w}}  {v}")
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = ns.out.with_name(ns.out.name + ".tmp")
    tmp_out.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(tmp_out, ns.out)
    print(f"wrote {ns.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
