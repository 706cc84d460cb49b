"""Plain values made by hand for the pure tests: loss records, traces, schedules, observations, attempt
results, and journals written from them. Each factory fills in plausible defaults, so a test names only
what it is about."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from chaos.faults import Fault, FaultKind
from chaos.schedule import Schedule
from rundir.classify import ExitClass
from rundir.contract import Observation
from runner.policy import AttemptResult
from runner.trace import Trace, stitch

__all__ = [
    "EXIT_CODES",
    "rec",
    "trace_of",
    "write_jsonl",
    "schedule_of",
    "obs",
    "saved",
    "attempt_result",
]

# -- the loss journal and its trace ------------------------------------------------------------------------


def rec(step: int, loss: float, *, epoch: int = 0, attempt: int = 1, time: float | None = None,
        dt: float = 0.1) -> dict[str, Any]:
    """One loss-journal record as the worker writes it."""
    return {"step": step, "epoch": epoch, "batch": step, "loss": loss, "loss_hex": float(loss).hex(),
            "attempt": attempt, "time": 100.0 + step if time is None else time, "dt": dt}


def trace_of(records: Iterable[Mapping[str, Any]], params: str | None = "p" * 64, **fields: Any) -> Trace:
    """The trace ``load_trace`` would read from a journal of ``records`` and a final digest ``params``;
    ``fields`` sets the rest (``config``, ``stop_reason``, ...)."""
    records = list(records)
    return Trace(stitch(records), len(records), params, **fields)


def write_jsonl(path: Path, records: Iterable[Mapping[str, Any]], *, torn: str | None = None) -> Path:
    """A journal of ``records``, one JSON line each; ``torn``: a last line a kill cut short (no newline)."""
    text = "".join(json.dumps(r) + "\n" for r in records)
    if torn is not None:
        text += torn
    path.write_text(text)
    return path


# -- chaos ---------------------------------------------------------------------------------------------------


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
    """What the supervisor tells chaos on one tick."""
    return Observation(attempt=attempt, pid=pid, new_steps=list(steps), new_events=list(events),
                       last_step=last_step, phase=phase)


def saved(step: int, name: str | None = None) -> dict[str, Any]:
    """The worker's ``checkpoint-saved`` event for the checkpoint taken after ``step`` steps."""
    return {"source": "worker", "event": "checkpoint-saved", "step": step, "name": name or f"step-{step:09d}"}


# -- attempts --------------------------------------------------------------------------------------------------

#: A plausible exit status for each class (a signal death is negative, as ``Popen.returncode`` says it).
EXIT_CODES: Mapping[ExitClass, int] = {
    ExitClass.COMPLETED: 0, ExitClass.PREEMPTED: 75, ExitClass.KILLED: -9, ExitClass.CRASHED: 1,
    ExitClass.HUNG: -9, ExitClass.BAD_INPUT: 65, ExitClass.USER_STOPPED: 75, ExitClass.RESOURCE: 74,
    ExitClass.NON_FINITE: 76,
}


def attempt_result(exit_class: ExitClass, *, attempt: int = 1, returncode: int | None = None,
                   last_step: int | None = None, **fields: Any) -> AttemptResult:
    """An attempt's result: the exit status from ``EXIT_CODES`` unless given, SIGKILL for a -9, and any
    other :class:`~runner.policy.AttemptResult` field from ``fields``."""
    rc = EXIT_CODES[exit_class] if returncode is None else returncode
    values: dict[str, Any] = {
        "attempt": attempt, "pid": 4241 + attempt, "exit_class": exit_class, "returncode": rc,
        "signal": "SIGKILL" if rc == -9 else None, "resumed_from": 0, "last_step": last_step,
        "made_progress": True, "started": 995.0, "ended": 1000.0, "peak_rss_mb": 398.8, "cpu_s": 3.21,
    }
    values.update(fields)
    return AttemptResult(**values)
