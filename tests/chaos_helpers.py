"""Helpers for the chaos, trace and report tests: hand-made observations, attempt results and loss
records for the pure tests, and a runner for ``python -m runner`` for the end-to-end ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from chaos.faults import Fault, FaultKind
from chaos.schedule import Schedule
from rundir.classify import ExitClass
from rundir.contract import Observation
from runner.policy import AttemptResult
from runner.trace import Trace, stitch

ROOT = Path(__file__).resolve().parents[1]

# -- pure tests ------------------------------------------------------------------------------------------


def schedule_of(*faults: Fault | tuple[FaultKind, int], total_steps: int = 75, seed: int | None = 0) -> Schedule:
    fs = tuple(f if isinstance(f, Fault) else Fault(f[0], f[1]) for f in faults)
    return Schedule(seed=seed, total_steps=total_steps, faults=fs)


def obs(
    last_step: int | None = None,
    *,
    attempt: int = 1,
    phase: str | None = "train",
    events: Sequence[dict[str, Any]] = (),
    steps: Sequence[dict[str, Any]] = (),
    pid: int = 4242,
) -> Observation:
    return Observation(attempt=attempt, pid=pid, new_steps=list(steps), new_events=list(events),
                       last_step=last_step, phase=phase)


def saved(step: int, name: str | None = None) -> dict[str, Any]:
    """The worker's ``checkpoint-saved`` event for the checkpoint taken after ``step`` steps."""
    return {"source": "worker", "event": "checkpoint-saved", "step": step, "name": name or f"step-{step:09d}"}


def attempt_result(
    exit_class: ExitClass,
    *,
    attempt: int = 1,
    last_step: int | None = 10,
    returncode: int | None = None,
    ended: float = 1000.0,
) -> AttemptResult:
    rc = {ExitClass.COMPLETED: 0, ExitClass.PREEMPTED: 75, ExitClass.KILLED: -9, ExitClass.CRASHED: 1,
          ExitClass.HUNG: -9, ExitClass.BAD_INPUT: 65, ExitClass.USER_STOPPED: 75, ExitClass.RESOURCE: 74,
          ExitClass.NON_FINITE: 76}[exit_class]
    return AttemptResult(
        attempt=attempt, pid=4242, exit_class=exit_class, returncode=rc if returncode is None else returncode,
        signal="SIGKILL" if rc == -9 else None, resumed_from=0, last_step=last_step,
        made_progress=True, started=ended - 5.0, ended=ended,
    )


def rec(step: int, loss: float, *, epoch: int = 0, attempt: int = 1, time: float | None = None,
        dt: float = 0.1) -> dict[str, Any]:
    """One loss-journal record as the worker writes it."""
    return {"step": step, "epoch": epoch, "batch": step, "loss": loss, "loss_hex": float(loss).hex(),
            "attempt": attempt, "time": 100.0 + step if time is None else time, "dt": dt}


def trace_of(records: Iterable[Mapping[str, Any]], params: str | None = "p" * 64) -> Trace:
    records = list(records)
    return Trace(stitch(records), len(records), params)


def write_jsonl(path: Path, records: Iterable[Mapping[str, Any]], *, torn: str | None = None) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in records)
    if torn is not None:
        text += torn  # a last line a kill cut short: no newline
    path.write_text(text)
    return path


# -- end-to-end ------------------------------------------------------------------------------------------


def run_runner(*args: object, timeout: float = 240.0) -> subprocess.CompletedProcess[str]:
    """``python -m runner ARGS`` from the checkout, captured."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("RUNNER_CHAOS_ARM", None)
    env.pop("RUNNER_ATTEMPT", None)
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "runner", *map(str, args)], cwd=ROOT, env=env, text=True,
                       capture_output=True, timeout=timeout)
    p.wall_s = time.monotonic() - t0  # type: ignore[attr-defined]
    return p


def describe(p: subprocess.CompletedProcess[str]) -> str:
    return (f"exit {p.returncode}: {' '.join(map(str, p.args))}\n--- stdout (tail) ---\n{p.stdout[-4000:]}"
            f"\n--- stderr (tail) ---\n{p.stderr[-4000:]}")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def events(run_dir: Path, event: str | None = None) -> list[dict[str, Any]]:
    return [e for e in read_jsonl(Path(run_dir) / "events.jsonl") if event is None or e.get("event") == event]


def resumed_from_step(run_dir: Path, attempt: int) -> int:
    """The step the worker's attempt ``attempt`` said it resumed from."""
    got = [int(e["resumed_from_step"]) for e in events(run_dir, "attempt-started")
           if e.get("source") == "worker" and e.get("attempt") == attempt]
    assert len(got) == 1, f"attempt {attempt} started {len(got)} times in {run_dir}"
    return got[0]


class ChaosRuns:
    """``python -m runner --simulate-preemption`` runs made once per session and shared by the tests that
    look at them, all with one reference cache (so each job's reference is computed once)."""

    def __init__(self, base: Path, reference_cache: Path) -> None:
        self.base = Path(base)
        self.reference_cache = Path(reference_cache)
        self._runs: dict[str, ChaosRun] = {}

    def simulate(self, name: str, *args: object) -> ChaosRun:
        if name not in self._runs:
            run_dir, report = self.base / name, self.base / f"{name}.report.json"
            p = run_runner("--simulate-preemption", "--reference-cache", self.reference_cache, "--run-dir", run_dir,
                           "--json-report", report, *args)
            data = json.loads(report.read_text()) if report.is_file() else None
            self._runs[name] = ChaosRun(name, run_dir, p, data)
        return self._runs[name]


class ChaosRun:
    def __init__(self, name: str, run_dir: Path, proc: subprocess.CompletedProcess[str],
                 report: dict[str, Any] | None) -> None:
        self.name, self.run_dir, self.proc = name, run_dir, proc
        self._report = report

    @property
    def report(self) -> dict[str, Any]:
        assert self._report is not None, f"no JSON report from {self.name}\n{describe(self.proc)}"
        return self._report

    @property
    def reference_dir(self) -> Path:
        return Path(self.report["job"]["reference_dir"])
