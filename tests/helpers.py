"""Helpers shared by the tests: run the real job in real processes and read what it left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rundir.journal import read_records
from runner.worker import ENV_ATTEMPT, ENV_CHAOS_ARM, EVENTS, FINAL, LOSSES

REPO = Path(__file__).resolve().parents[1]

# Each `python -m model` process is ~3-5 s, almost all of it single-threaded start-up (Paddle import),
# so two at a time keep both cores of a small CI machine busy.
PARALLEL = max(1, min(2, os.cpu_count() or 1))
JOB_TIMEOUT = 180.0


def job_env(arm: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a job: ours, minus anything that would arm chaos or fix the attempt number."""
    e = {k: v for k, v in os.environ.items() if k not in (ENV_CHAOS_ARM, ENV_ATTEMPT)}
    e["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    if env:
        e.update(env)
    if arm is not None:
        e[ENV_CHAOS_ARM] = json.dumps(dict(arm))
    return e


def job_cmd(run_dir: Path | str, *args: object) -> list[str]:
    return [sys.executable, "-m", "model", "--run-dir", str(run_dir), *map(str, args)]


def run_job(
    run_dir: Path | str,
    *args: object,
    env: Mapping[str, str] | None = None,
    arm: Mapping[str, Any] | None = None,
    timeout: float = JOB_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m model --run-dir RUN_DIR ARGS...`` to the end and capture its output."""
    return subprocess.run(
        job_cmd(run_dir, *args), check=False, cwd=REPO, env=job_env(arm, env), capture_output=True, text=True,
        timeout=timeout, stdin=subprocess.DEVNULL,
    )


def start_job(
    run_dir: Path | str,
    *args: object,
    env: Mapping[str, str] | None = None,
    arm: Mapping[str, Any] | None = None,
) -> subprocess.Popen[str]:
    """Start the job in the background (stdout/stderr piped; read them with ``communicate``)."""
    return subprocess.Popen(
        job_cmd(run_dir, *args), cwd=REPO, env=job_env(arm, env), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )


def run_jobs(specs: Iterable[tuple[Sequence[object], Mapping[str, Any]]]) -> list[subprocess.CompletedProcess[str]]:
    """Run independent jobs ``[((run_dir, *args), kwargs), ...]`` concurrently, ``PARALLEL`` at a time."""
    specs = list(specs)
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        futures = [pool.submit(run_job, *args, **kwargs) for args, kwargs in specs]
        return [f.result() for f in futures]


def describe(proc: subprocess.CompletedProcess[str] | subprocess.Popen[str], out: str = "", err: str = "") -> str:
    """A failure message with a process's exit code and the tail of its output."""
    if isinstance(proc, subprocess.CompletedProcess):
        out, err = proc.stdout or "", proc.stderr or ""
    return f"exit {proc.returncode}\n--- stdout ---\n{out[-3000:]}\n--- stderr ---\n{err[-3000:]}"


def wait_for(predicate: Callable[[], Any], *, timeout: float = 60.0, proc: subprocess.Popen[str] | None = None,
             interval: float = 0.002, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail early if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the job exited before {what}: " + describe(proc, out, err))
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def count_lines(path: Path) -> int:
    try:
        return Path(path).read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


# -- reading a run directory -------------------------------------------------------------------------


def losses(run_dir: Path | str) -> list[dict[str, Any]]:
    return read_records(Path(run_dir) / LOSSES)


def events(run_dir: Path | str, kind: str | None = None) -> list[dict[str, Any]]:
    recs = read_records(Path(run_dir) / EVENTS)
    return [r for r in recs if kind is None or r.get("event") == kind]


def final(run_dir: Path | str) -> dict[str, Any]:
    return json.loads((Path(run_dir) / FINAL).read_text())


def stitched(run_dir: Path | str) -> dict[int, dict[str, Any]]:
    """The run's trace as the union of its attempts: the latest record for each step."""
    out: dict[int, dict[str, Any]] = {}
    for rec in losses(run_dir):
        out[int(rec["step"])] = rec
    return dict(sorted(out.items()))


def loss_trace(run_dir: Path | str) -> dict[int, str]:
    """``{step: loss_hex}`` of the stitched trace: equal iff every loss is bit-identical."""
    return {step: rec["loss_hex"] for step, rec in stitched(run_dir).items()}


def first_divergence(a: Mapping[int, Any], b: Mapping[int, Any], field: str = "loss_hex") -> int | None:
    """The first step whose ``field`` differs between two stitched traces (a step missing from one of
    them counts as a difference), or None if they are identical."""

    def value(trace: Mapping[int, Any], step: int) -> Any:
        if step not in trace:
            return _MISSING
        v = trace[step]
        return v.get(field) if isinstance(v, Mapping) else v

    for step in sorted(set(a) | set(b)):
        if value(a, step) != value(b, step):
            return step
    return None


_MISSING = object()


def resumed_from(run_dir: Path | str) -> list[int]:
    """``resumed_from_step`` of every attempt, in order."""
    return [int(r["resumed_from_step"]) for r in events(run_dir, "attempt-started")]


def flip_byte(path: Path, offset: int | None = None) -> int:
    """Invert the bits of one byte in place (the middle one unless told); returns the offset."""
    data = bytearray(Path(path).read_bytes())
    if offset is None:
        offset = len(data) // 2
    data[offset] ^= 0xFF
    Path(path).write_bytes(bytes(data))
    return offset


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
