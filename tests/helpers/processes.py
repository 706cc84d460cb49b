"""The end-to-end side of the tests: run ``python -m model`` (the job) and ``python -m runner`` in real
processes from the checkout, wait for something with a timeout, describe a process that failed, and
clean up whatever a test left running.

Every wait has a timeout, so a broken job or supervisor fails a test instead of hanging it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from model.data import CACHE
from rundir.contract import ENV_CHAOS_ARM
from rundir.names import ENV_ATTEMPT, ENV_RUN_DIR, ENV_STANDBY
from tests.helpers import REPO
from tests.helpers.readers import events, worker_progress

__all__ = [
    "PARALLEL",
    "TIMEOUT",
    "child_env",
    "job_cmd",
    "runner_cmd",
    "start",
    "finish",
    "run",
    "run_job",
    "start_job",
    "run_jobs",
    "run_runner",
    "describe",
    "wait_for",
    "wait_for_worker",
    "seeded_run_dir",
    "stopped",
    "gone",
    "wait_gone",
    "processes_using",
    "kill_leftovers",
    "Started",
    "CHROMIUM",
    "screenshot",
]

# Each `python -m model` process is ~3-5 s, almost all of it single-threaded start-up (Paddle import),
# so two at a time keep both cores of a small CI machine busy.
PARALLEL = max(1, min(2, os.cpu_count() or 1))
TIMEOUT = 240.0  # one run of the job or a supervised run of a few seconds; generous for a loaded CI machine

Process = subprocess.Popen[str] | subprocess.CompletedProcess[str]


def child_env(env: Mapping[str, str] | None = None, arm: Mapping[str, Any] | None = None) -> dict[str, str]:
    """A child's environment: ours without any variable that would arm chaos, fix the attempt number, make
    it a spare or name its run directory; the checkout first on ``PYTHONPATH``; then ``env`` and ``arm``."""
    e = {k: v for k, v in os.environ.items() if k not in (ENV_CHAOS_ARM, ENV_ATTEMPT, ENV_STANDBY, ENV_RUN_DIR)}
    e["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    e["PYTHONUNBUFFERED"] = "1"
    if env:
        e.update(env)
    if arm is not None:
        e[ENV_CHAOS_ARM] = json.dumps(dict(arm))
    return e


def job_cmd(run_dir: Path | str, *args: object) -> list[str]:
    """``python -m model --run-dir RUN_DIR ARGS...``"""
    return [sys.executable, "-m", "model", "--run-dir", str(run_dir), *map(str, args)]


def runner_cmd(run_dir: Path | str, *args: object, command: Sequence[object] | None = None) -> list[str]:
    """``python -m runner --run-dir RUN_DIR ARGS... [-- COMMAND...]``"""
    cmd = [sys.executable, "-m", "runner", "--run-dir", str(run_dir), *map(str, args)]
    if command is not None:
        cmd += ["--", *map(str, command)]
    return cmd


def start(cmd: Sequence[str], *, env: Mapping[str, str] | None = None, arm: Mapping[str, Any] | None = None,
          **popen: Any) -> subprocess.Popen[str]:
    """Start ``cmd`` from the checkout in :func:`child_env`, stdin closed and output captured (read it
    with :func:`finish`); ``popen`` overrides any of that."""
    kw: dict[str, Any] = {"cwd": REPO, "env": child_env(env, arm), "stdin": subprocess.DEVNULL,
                          "stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    kw.update(popen)
    return subprocess.Popen(list(cmd), **kw)


def finish(proc: subprocess.Popen[str], timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Wait for ``proc`` (killing it if it overstays: the test fails) and return its exit code and output."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"it did not finish in {timeout} s: " + describe(proc, out, err)) from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run(cmd: Sequence[str], *, env: Mapping[str, str] | None = None, arm: Mapping[str, Any] | None = None,
        timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` to the end (see :func:`start`) and capture its output."""
    return finish(start(cmd, env=env, arm=arm), timeout)


def run_job(run_dir: Path | str, *args: object, env: Mapping[str, str] | None = None,
            arm: Mapping[str, Any] | None = None, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run the job to the end: ``python -m model --run-dir RUN_DIR ARGS...``"""
    return run(job_cmd(run_dir, *args), env=env, arm=arm, timeout=timeout)


def start_job(run_dir: Path | str, *args: object, env: Mapping[str, str] | None = None,
              arm: Mapping[str, Any] | None = None) -> subprocess.Popen[str]:
    """Start the job in the background (output piped; read it with :func:`finish` or ``communicate``)."""
    return start(job_cmd(run_dir, *args), env=env, arm=arm)


def run_jobs(specs: Iterable[tuple[Sequence[Any], Mapping[str, Any]]]) -> list[subprocess.CompletedProcess[str]]:
    """Run independent jobs ``[((run_dir, *args), kwargs), ...]`` concurrently, ``PARALLEL`` at a time."""
    specs = list(specs)
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        futures = [pool.submit(run_job, *args, **kwargs) for args, kwargs in specs]
        return [f.result() for f in futures]


def run_runner(*args: object, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    """``python -m runner ARGS...`` to the end, output captured."""
    return run([sys.executable, "-m", "runner", *map(str, args)], timeout=timeout)


def describe(proc: Process, out: str = "", err: str = "", *, run_dir: Path | None = None) -> str:
    """A failure message: the command, its exit code and the tail of its output (``out``/``err`` for a
    ``Popen`` whose output was read already), and given ``run_dir`` its last events and newest attempt log."""
    if isinstance(proc, subprocess.CompletedProcess):
        out, err = proc.stdout or "", proc.stderr or ""
    args = " ".join(map(str, proc.args)) if isinstance(proc.args, list | tuple) else str(proc.args)
    text = f"exit {proc.returncode}: {args}\n--- stdout (tail) ---\n{out[-4000:]}\n--- stderr (tail) ---\n{err[-4000:]}"
    if run_dir is not None:
        text += "\n--- events ---\n" + "\n".join(json.dumps(e) for e in events(run_dir)[-40:])
        logs = sorted((run_dir / "logs").glob("attempt-*.log")) if (run_dir / "logs").is_dir() else []
        if logs:
            text += f"\n--- {logs[-1].name} ---\n" + logs[-1].read_text(errors="replace")[-2000:]
    return text


def wait_for(predicate: Callable[[], Any], *, timeout: float = 60.0, proc: subprocess.Popen[str] | None = None,
             interval: float = 0.002, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy, and return that; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the process exited before {what}: " + describe(proc, out or "", err or ""))
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def wait_for_worker(run_dir: Path, attempt: int, min_step: int, proc: subprocess.Popen[str],
                    timeout: float = 60.0) -> int:
    """The pid of attempt ``attempt``'s worker, once it has reported step ``min_step`` (see ``worker_progress``)."""
    return wait_for(lambda: worker_progress(run_dir, attempt, min_step), timeout=timeout, proc=proc,
                    what=f"attempt {attempt} to reach step {min_step}")


def seeded_run_dir(path: Path, cache_from: Path) -> Path:
    """A run directory holding a copy of another run's prepared data (``data.npz``), so the job skips
    scikit-learn's slow import. The cache is keyed by its source; the job still checks the key."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy2(cache_from / CACHE, path / CACHE)
    return path


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def screenshot(page: Path, png: Path, size: tuple[int, int] = (1400, 2000)) -> Any:
    """The page at ``page`` as headless chromium renders it (``size`` = width, height), read back as pixels."""
    from matplotlib.image import imread

    assert CHROMIUM is not None, "chromium is not installed"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--screenshot={png}",
           f"--window-size={size[0]},{size[1]}", page.resolve().as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert png.is_file(), f"exit {r.returncode}: {r.stderr[-2000:]}"
    return imread(png)


# -- processes ---------------------------------------------------------------------------------------------


@contextmanager
def stopped(pid: int) -> Iterator[Callable[[], None]]:
    """The process held with SIGSTOP until the ``release`` it yields is called, or the block ends."""

    def release() -> None:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass

    os.kill(pid, signal.SIGSTOP)
    try:
        yield release
    finally:
        release()


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


class Started(list[subprocess.Popen[str]]):
    """The processes a test started (append one, or :meth:`start` it here), for :func:`kill_leftovers`."""

    def start(self, cmd: Sequence[str], **kw: Any) -> subprocess.Popen[str]:
        proc = start(cmd, **kw)
        self.append(proc)
        return proc
