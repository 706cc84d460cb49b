"""Stitching a run's loss journal and comparing it with a reference, bit for bit.

A resumed run computes the steps between its checkpoint and the kill again; the stitched trace keeps
the latest record of each step. :func:`compare` is pure: two traces in, a :class:`Comparison` out,
naming the first step where they part; :func:`judge` turns it into one of three verdicts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from rundir.events import EventKind, Source
from rundir.exitcodes import ExitCode
from rundir.journal import event_problem, loss_problem, read_journal
from rundir.names import EVENTS, FINAL, JOB, LOSSES

__all__ = ["Trace", "Comparison", "Verdict", "Judgement", "stitch", "load_trace", "compare", "judge",
           "config_differences", "stop_reason"]


class Verdict(StrEnum):
    """How a run compares with its reference, and the exit code that says so.

    ``pass``: every step's loss and the final parameters are bit-identical (exit 0).
    ``diverged``: the runs part: a loss, a step the reference does not have, the final parameters,
    or the configurations themselves differ; or a preemption notice lost steps (exit 3).
    ``incomplete``: the run, or the reference, never finished: steps are missing or there is no
    final record, so nothing can be said about the rest (exit 4)."""

    PASS = "pass"
    DIVERGED = "diverged"
    INCOMPLETE = "incomplete"

    def __str__(self) -> str:
        return self.value

    @property
    def exit_code(self) -> ExitCode:
        return {Verdict.PASS: ExitCode.OK, Verdict.DIVERGED: ExitCode.VERIFY_FAILED,
                Verdict.INCOMPLETE: ExitCode.INCOMPLETE}[self]


@dataclass(frozen=True)
class Judgement:
    """A verdict and its reason, a phrase that reads after the verdict's name."""

    verdict: Verdict
    reason: str

    def line(self) -> str:
        return f"{self.verdict.value.upper()} {self.reason}"


@dataclass(frozen=True)
class Trace:
    steps: Mapping[int, Mapping[str, Any]]  # step -> its latest record
    records: int  # every record in the journal, recomputed steps included
    params_sha256: str | None  # from final.json, if the run completed
    skipped: int = 0  # malformed journal lines passed over
    config: Mapping[str, Any] | None = None  # job.json, if there is a readable one
    stop_reason: str | None = None  # why the supervisor stopped short, from events.jsonl
    skip_problem: str | None = None  # what was wrong with the first skipped line

    @property
    def recomputed(self) -> int:
        return self.records - len(self.steps)

    @property
    def finished(self) -> bool:
        return self.params_sha256 is not None


def stitch(records: Sequence[Mapping[str, Any]]) -> dict[int, Mapping[str, Any]]:
    """Step -> the latest well-formed record of it (see ``rundir.journal.loss_problem``)."""
    out: dict[int, Mapping[str, Any]] = {}
    for rec in records:
        if loss_problem(rec) is None:
            out[int(rec["step"])] = rec
    return dict(sorted(out.items()))


def _loss_hex(rec: Mapping[str, Any]) -> str:
    return str(rec["loss_hex"]) if "loss_hex" in rec else float(rec["loss"]).hex()


def stop_reason(events: Iterable[Mapping[str, Any]]) -> str | None:
    """Why the supervisor last stopped short (its ``gave-up`` or ``stopped`` record), unless a later
    supervisor started attempts again."""
    reason: str | None = None
    for e in events:
        kind, said = e.get("event"), e.get("reason")
        if e.get("source") != Source.SUPERVISOR.value:
            continue
        if kind == EventKind.ATTEMPT_SPAWNED.value:
            reason = None
        elif kind == EventKind.GAVE_UP.value and isinstance(said, str):
            reason = "supervisor gave up: " + said.removeprefix("giving up: ")
        elif kind == EventKind.STOPPED.value and isinstance(said, str):
            reason = "supervisor " + said if said.startswith("stopped") else "supervisor stopped: " + said
    return reason


def _read_json_object(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load_trace(run_dir: Path) -> Trace:
    """A run directory's stitched trace, final digest, configuration and stop reason. Malformed
    journal lines are skipped and counted, never raised."""
    run_dir = Path(run_dir)
    journal = read_journal(run_dir / LOSSES, loss_problem)
    final = _read_json_object(run_dir / FINAL) or {}
    digest = final.get("params_sha256")
    return Trace(
        stitch(journal.records), len(journal.records), digest if isinstance(digest, str) else None,
        skipped=journal.skipped, config=_read_json_object(run_dir / JOB),
        stop_reason=stop_reason(read_journal(run_dir / EVENTS, event_problem).records),
        skip_problem=journal.first_problem,
    )


def _show(v: object) -> str:
    return "absent" if v is None else json.dumps(v)


def config_differences(run: Mapping[str, Any] | None, reference: Mapping[str, Any] | None) -> tuple[str, ...]:
    """``key=run vs reference`` for each setting that differs; nothing if either is unknown."""
    if run is None or reference is None:
        return ()
    return tuple(f"{k}={_show(run.get(k))} vs {_show(reference.get(k))}"
                 for k in sorted(set(run) | set(reference)) if run.get(k) != reference.get(k))


@dataclass(frozen=True)
class Comparison:
    steps_compared: int
    missing: tuple[int, ...]  # reference steps absent from the run
    extra: tuple[int, ...]  # run steps the reference does not have
    first_divergent_step: int | None  # the first step whose loss differs, or that only the run has
    reference_value: str | None  # loss at the first divergent step, as float.hex
    run_value: str | None
    params_equal: bool
    config_diff: tuple[str, ...] = ()  # "key=run vs reference" for each setting that differs
    reference_steps: int = 0
    reference_finished: bool = True
    run_finished: bool = True
    run_stop_reason: str | None = None
    reference_skipped: int = 0
    run_skipped: int = 0

    @property
    def losses_equal(self) -> bool:
        return self.first_divergent_step is None and not self.missing

    @property
    def bit_exact(self) -> bool:
        return self.losses_equal and self.params_equal

    @property
    def judgement(self) -> Judgement:
        return judge(self)

    @property
    def verdict(self) -> Verdict:
        return self.judgement.verdict

    def explain(self) -> str:
        return self.judgement.reason

    def to_json(self) -> dict[str, Any]:
        j = self.judgement
        return {"verdict": j.verdict.value, "bit_exact": self.bit_exact, "steps_compared": self.steps_compared,
                "first_divergent_step": self.first_divergent_step, "reference_value": self.reference_value,
                "run_value": self.run_value, "missing_steps": len(self.missing), "extra_steps": len(self.extra),
                "params_equal": self.params_equal, "reason": j.reason,
                "first_missing_step": self.missing[0] if self.missing else None,
                "config_differences": list(self.config_diff), "run_finished": self.run_finished,
                "reference_finished": self.reference_finished, "run_stop_reason": self.run_stop_reason,
                "skipped_records": {"run": self.run_skipped, "reference": self.reference_skipped}}


def _missing_reason(c: Comparison) -> str:
    n, total = len(c.missing), c.reference_steps or len(c.missing)
    where = f"step {c.missing[0]}" if n == 1 else f"from step {c.missing[0]}"
    return f"the run is missing {n} of {total} steps ({where})"


def judge(c: Comparison) -> Judgement:
    """The verdict on a comparison, and the first reason for it, in this order: the configurations
    differ; a loss differs (a divergence is definite even in a run that stopped short); the
    reference never finished; steps are missing; the run never finished; the parameters differ."""
    if c.config_diff:
        return Judgement(Verdict.DIVERGED, "configurations differ: " + ", ".join(c.config_diff)
                         + " (run vs reference)")
    s = c.first_divergent_step
    if s is not None:
        if c.reference_value is None:
            return Judgement(Verdict.DIVERGED, f"at step {s}: the reference has no step {s}, "
                                               f"the run does (loss {c.run_value})")
        return Judgement(Verdict.DIVERGED, f"at step {s}: reference loss {c.reference_value}, run loss {c.run_value}")
    if not c.reference_finished:
        return Judgement(Verdict.INCOMPLETE, "the reference never finished (no final.json): it proves nothing")
    stopped = f"; {c.run_stop_reason}" if c.run_stop_reason else ""
    if c.missing:
        return Judgement(Verdict.INCOMPLETE, _missing_reason(c) + stopped)
    if not c.run_finished:
        return Judgement(Verdict.INCOMPLETE, f"every one of the {c.steps_compared} steps matches but the run "
                                             f"has no final record (final.json){stopped}")
    if not c.params_equal:
        return Judgement(Verdict.DIVERGED, "every loss matches but the final parameters differ")
    return Judgement(Verdict.PASS, f"bit-exact: {c.steps_compared} steps and the final parameters match the reference")


def compare(reference: Trace, run: Trace) -> Comparison:
    """Compare ``run`` with ``reference`` step by step. A step only the run has counts as a
    divergence only when the reference finished (an unfinished reference is merely shorter)."""
    ref, got = reference.steps, run.steps
    missing = tuple(s for s in ref if s not in got)
    extra = tuple(s for s in got if s not in ref)
    first: int | None = None
    for s in sorted(set(ref) | set(got)):
        if s in ref and s in got:
            if _loss_hex(ref[s]) != _loss_hex(got[s]):
                first = s
                break
        elif s in got and reference.finished:
            first = s
            break
    params_equal = reference.params_sha256 is not None and reference.params_sha256 == run.params_sha256
    return Comparison(
        steps_compared=sum(1 for s in ref if s in got),
        missing=missing,
        extra=extra,
        first_divergent_step=first,
        reference_value=_loss_hex(ref[first]) if first is not None and first in ref else None,
        run_value=_loss_hex(got[first]) if first is not None and first in got else None,
        params_equal=params_equal,
        config_diff=config_differences(run.config, reference.config),
        reference_steps=len(ref),
        reference_finished=reference.finished,
        run_finished=run.finished,
        run_stop_reason=run.stop_reason,
        reference_skipped=reference.skipped,
        run_skipped=run.skipped,
    )
