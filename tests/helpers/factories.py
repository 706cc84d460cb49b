"""Plain values made by hand for the pure tests: loss records, traces, schedules, observations, attempt
results, and journals written from them. Each factory fills in plausible defaults, so a test names only
what it is about."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from chaos.faults import Fault, FaultKind
from chaos.report import ChaosReport
from chaos.schedule import Schedule
from rundir.classify import ExitClass
from rundir.contract import Observation
from runner.policy import AttemptResult
from runner.trace import Trace, Verdict, compare, stitch

__all__ = [
    "EXIT_CODES",
    "rec",
    "trace_of",
    "write_jsonl",
    "schedule_of",
    "obs",
    "saved",
    "attempt_result",
    "chaos_report",
    "trial_record",
    "many_trials",
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


# -- campaign trials ---------------------------------------------------------------------------------------

_REF = [rec(s, 2.0 - s / 10) for s in range(6)]
_RUNS = {
    Verdict.PASS: (_REF, "p" * 64),
    Verdict.DIVERGED: ([rec(s, 3.0) for s in range(6)], "q" * 64),
    Verdict.INCOMPLETE: (_REF[:3], None),
}


def chaos_report(verdict: Verdict, *faults: str, missed: Sequence[str] = (), restarts: int = 1, lost: int = 2,
                 latency: Sequence[float] = (1.5,), wall_s: float = 10.0,
                 replay: str | None = None) -> ChaosReport:
    """A six-step trial's report with the given verdict; ``faults`` hit at step 2, ``missed`` ones missed."""
    hits = tuple({"kind": k, "target_step": 2, "hit_step": 2, "missed": False} for k in faults) + tuple(
        {"kind": k, "target_step": 4, "hit_step": None, "missed": True} for k in missed)
    records, params = _RUNS[verdict]
    return ChaosReport(job={}, comparison=compare(trace_of(_REF), trace_of(records, params)), faults=hits,
                       restarts=restarts, lost_steps=lost, restart_latency_s=tuple(latency), wall_s=wall_s,
                       reference_compute_s=5.0, epochs=(),
                       replay=replay or f"python -m runner --simulate-preemption --chaos-replay run-{verdict}.json")


def trial_record(index: int, report: ChaosReport | None, *, status: str | None = None, seed: int | None = None,
                 kinds: Sequence[str] | None = None, replayed: str | None = None) -> dict[str, Any]:
    """A campaign's record of trial ``index``: ``report``'s JSON (None: not run) and the campaign's fields;
    the status follows from the verdicts unless given; ``replayed``: the replay's verdict, if replayed."""
    name = f"trial-{index:03d}"
    rec_: dict[str, Any] = {"trial": name, "index": index, "seed": 1000 + index if seed is None else seed,
                            "run_dir": f"/c/{name}", "kinds": list(kinds or [])}
    if report is None:
        rec_.update(status=status or "not-run", verdict=None, reason="not run: stopped when the time budget ran out",
                    replay=f"python -m runner --simulate-preemption --chaos-replay /c/{name}/chaos-schedule.json")
        return rec_
    rec_.update(report.to_json())
    rec_["kinds"] = list(kinds or dict.fromkeys(f["kind"] for f in report.faults))
    if replayed is not None:
        rec_["replayed"] = {"verdict": replayed, "reason": "...", "run_dir": f"/c/{name}-replay"}
    verdict = rec_["verdict"]
    rec_["status"] = status or ("passed" if verdict == "pass" else "flaky" if replayed == "pass" else "failed")
    return rec_


def many_trials(n: int) -> list[dict[str, Any]]:
    """``n`` trial records of two faults each over the six default kinds, with seeded costs; every 37th
    diverged (every 74th of those flaky)."""
    import numpy as np

    rng = np.random.default_rng(0)
    kinds = ["sigkill", "sigterm", "hang", "crash", "checkpoint-write", "corrupt-checkpoint"]
    out = []
    for i in range(1, n + 1):
        verdict = Verdict.DIVERGED if i % 37 == 0 else Verdict.PASS
        r = chaos_report(verdict, kinds[i % 6], kinds[(i + 2) % 6], latency=tuple(rng.gamma(2, 0.2, 2)),
                         lost=int(rng.integers(0, 12)), wall_s=float(rng.uniform(6, 14)))
        replayed = None if verdict is Verdict.PASS else "pass" if i % 74 == 0 else "diverged"
        out.append(trial_record(i, r, replayed=replayed))
    return out
