"""Helpers for the supervisor's end-to-end tests: start ``python -m runner`` in real processes, watch
its worker through the run directory, and check that nothing is left running afterwards.

Every wait has a timeout, so a broken supervisor fails a test instead of hanging it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import psutil

from rundir.journal import read_records
from runner.worker import ENV_ATTEMPT, ENV_CHAOS_ARM, EVENTS, FINAL, LOSSES
from runner.worker import read_heartbeat as heartbeat  # noqa: F401  (re-exported for the tests)
from tests.helpers import wait_for  # noqa: F401  (re-exported for the tests)

REPO = Path(__file__).resolve().parents[1]
RUN_TIMEOUT = 120.0  # one supervised run of a few seconds; generous for a loaded CI machine


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in (ENV_CHAOS_ARM, ENV_ATTEMPT, "RUNNER_RUN_DIR")}
    e["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    e["PYTHONUNBUFFERED"] = "1"
    return e


def runner_cmd(run_dir: Path, *args: object, command: Sequence[object] | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "runner", "--run-dir", str(run_dir), *map(str, args)]
    if command is not None:
        cmd += ["--", *map(str, command)]
    return cmd


def model_cmd(run_dir: Path, *args: object) -> list[str]:
    return [sys.executable, "-m", "model", "--run-dir", str(run_dir), *map(str, args)]


def start(cmd: Sequence[str]) -> subprocess.Popen[str]:
    """Start a command from the repository root, output captured (read it with ``finish``)."""
    return subprocess.Popen(list(cmd), cwd=REPO, env=env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Wait for ``proc`` (killing it if it overstays) and return its exit code and output."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(
            f"{proc.args!r} did not finish in {timeout} s\n" + describe(proc.returncode, out, err)
        ) from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run(cmd: Sequence[str], timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return finish(start(cmd), timeout)


def describe(code: int | None, out: str, err: str, run_dir: Path | None = None) -> str:
    """A failure message: exit code, output, and the run directory's events and newest attempt log."""
    text = f"exit {code}\n--- stdout ---\n{out[-3000:]}\n--- stderr ---\n{err[-3000:]}"
    if run_dir is not None:
        evs = events(run_dir)
        text += "\n--- events ---\n" + "\n".join(json.dumps(e) for e in evs[-40:])
        logs = sorted((run_dir / "logs").glob("attempt-*.log")) if (run_dir / "logs").is_dir() else []
        if logs:
            text += f"\n--- {logs[-1].name} ---\n" + logs[-1].read_text(errors="replace")[-2000:]
    return text


def explain(p: subprocess.CompletedProcess[str], run_dir: Path | None = None) -> str:
    return describe(p.returncode, p.stdout, p.stderr, run_dir)


# -- reading a run directory ---------------------------------------------------------------------------


def losses(run_dir: Path) -> list[dict[str, Any]]:
    return read_records(Path(run_dir) / LOSSES)


def events(run_dir: Path, kind: str | None = None, source: str | None = None) -> list[dict[str, Any]]:
    return [e for e in read_records(Path(run_dir) / EVENTS)
            if (kind is None or e.get("event") == kind) and (source is None or e.get("source") == source)]


def final(run_dir: Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / FINAL).read_text())


def stitched(run_dir: Path) -> dict[int, str]:
    """``{step: loss_hex}``: the latest record of each step, as a resumed run's trace is read."""
    out: dict[int, str] = {}
    for rec in losses(run_dir):
        out[int(rec["step"])] = rec["loss_hex"]
    return dict(sorted(out.items()))


def seed_data(run_dir: Path, reference: Path) -> Path:
    """A new run directory with the reference's prepared data, so attempt 1 skips preparing it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(reference / "data.npz", run_dir / "data.npz")
    return run_dir


def worker_progress(run_dir: Path, attempt: int, min_step: int) -> int | None:
    """The pid of attempt ``attempt``'s worker once it has reported a step >= ``min_step``, else None."""
    if not any(r.get("attempt") == attempt and int(r["step"]) >= min_step for r in losses(run_dir)):
        return None
    hb = heartbeat(run_dir)
    if hb is None or hb.get("attempt") != attempt:
        return None
    return int(hb["pid"])


def wait_for_worker(run_dir: Path, attempt: int, min_step: int, proc: subprocess.Popen[str],
                    timeout: float = 60.0) -> int:
    return wait_for(lambda: worker_progress(run_dir, attempt, min_step), timeout=timeout, proc=proc,
                    what=f"attempt {attempt} to reach step {min_step}")


# -- processes -----------------------------------------------------------------------------------------


def gone(pid: int) -> bool:
    """No such process any more (a zombie nobody reaped counts as gone: it runs nothing)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pid: int, timeout: float = 15.0) -> None:
    wait_for(lambda: gone(pid), timeout=timeout, what=f"pid {pid} to exit", interval=0.01)


def processes_using(paths: Iterable[Path]) -> list[psutil.Process]:
    """Live processes with one of ``paths`` in their command line (our workers name their run dir)."""
    needles = [str(p) for p in paths]
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] == psutil.STATUS_ZOMBIE or p.pid == os.getpid():
                continue
            cmdline = p.info["cmdline"] or []
        except psutil.Error:
            continue
        if any(n in arg for n in needles for arg in cmdline):
            found.append(p)
    return found


def kill_leftovers(procs: Iterable[subprocess.Popen[str]], run_dirs: Iterable[Path]) -> list[int]:
    """Clean up after a failed test: SIGKILL the processes it started and any process still naming one
    of its run directories (by pid; stopped workers get SIGCONT first). Returns the pids killed."""
    killed = []
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            killed.append(proc.pid)
        try:
            proc.communicate(timeout=10)
        except (subprocess.TimeoutExpired, ValueError):
            pass
    for p in processes_using(run_dirs):
        try:
            p.send_signal(signal.SIGKILL)
            p.send_signal(signal.SIGCONT)
            killed.append(p.pid)
        except psutil.Error:
            pass
    return killed
