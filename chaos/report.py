"""The chaos report: a pure summary of a run against its reference, and thin rich renderables for it.

:func:`build_report` computes everything from plain data (traces, events, fault hits);
:class:`ReportView` only formats; :meth:`ChaosReport.to_json` writes the same numbers as JSON.
Malformed events and loss records are skipped and counted, never raised.

The verdict is the comparison's (:func:`runner.trace.judge`), with two more ways to fail. A
preemption notice (a ``sigterm`` fault, or a cloud's ``notice`` the supervisor acted on) must lose no
step: the worker has the grace period to save its state; if the next attempt resumes from a
checkpoint older than the last step completed at the notice, those steps are lost, even though
recomputing them keeps the trace exact. And a cloud's notice must see the state committed before
the machine is reclaimed (the fake cloud's deadline).
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from rundir.journal import event_problem, loss_problem
from runner.trace import Comparison, Judgement, Trace, Verdict

__all__ = ["EpochRow", "ChaosReport", "build_report", "restart_latencies", "epoch_rows", "ReportView",
           "reference_compute_s", "Notice", "notices", "judge_report"]


@dataclass(frozen=True)
class Notice:
    """One preemption notice (a ``sigterm`` fault, or a cloud's ``notice``) and where the next attempt
    took up the job."""

    attempt: int
    last_step: int | None  # the last step completed when the notice was sent
    resumed_from_step: int | None  # steps the next attempt's checkpoint held; None: no next attempt
    kind: str = "sigterm"
    deadline: float | None = None  # notice: when the machine is reclaimed
    received: float | None = None  # notice: when the supervisor heard it (None: it never did)
    committed_at: float | None = None  # notice: when the state after it was committed (None: never)
    finished: bool = False  # notice: the attempt finished the job instead (all its steps are in final.json)

    @property
    def made_deadline(self) -> bool | None:
        """A cloud's notice: whether its state was committed before the deadline (or there was nothing
        new to commit); None for a ``sigterm`` fault."""
        if self.kind != "notice":
            return None
        if self.committed_at is None:
            return self.received is not None and self.steps_lost == 0
        return self.deadline is None or self.committed_at <= self.deadline

    @property
    def steps_done(self) -> int:
        return 0 if self.last_step is None else self.last_step + 1

    @property
    def steps_lost(self) -> int | None:
        """Steps completed at the notice that the next attempt had to compute again; None if unknown."""
        if self.finished:
            return 0
        if self.resumed_from_step is None:
            return None
        return max(0, self.steps_done - self.resumed_from_step)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"attempt": self.attempt, "last_step": self.last_step,
                             "resumed_from_step": self.resumed_from_step, "steps_lost": self.steps_lost}
        if self.kind == "notice":
            d.update(kind=self.kind, deadline=self.deadline, received=self.received, committed_at=self.committed_at,
                     made_deadline=self.made_deadline)
        return d


def notices(events: Sequence[Mapping[str, Any]], hits: Sequence[Mapping[str, Any]] = ()) -> list[Notice]:
    """The preemption notices: chaos's ``sigterm`` faults (the supervisor's ``chaos-fault`` records),
    and the cloud notices the supervisor acted on (``preemption-notice``, then ``notice-handled``) or
    that a ``notice`` fault gave and it never acted on; each with the ``resumed_from_step`` of the
    next attempt the worker started. A ``notice`` hit's deadline is the fake cloud's own."""
    resumed: dict[int, int | None] = {}
    done_at: dict[int, float] = {}  # the attempt that completed the job, and when
    for e in events:
        if e.get("source") == "worker" and isinstance(e.get("attempt"), int):
            if e.get("event") == "attempt-started":
                resumed.setdefault(e["attempt"], e.get("resumed_from_step") or 0)
            elif e.get("event") == "job-completed" and isinstance(e.get("time"), int | float):
                done_at[e["attempt"]] = float(e["time"])

    def after(attempt: int) -> int | None:
        later = [a for a in resumed if a > attempt]
        return resumed[min(later)] if later else None

    def sup(kind: str) -> list[Mapping[str, Any]]:
        return [e for e in events if e.get("source") == "supervisor" and e.get("event") == kind
                and isinstance(e.get("attempt"), int)]

    out = [Notice(e["attempt"], e.get("last_step"), after(e["attempt"])) for e in sup("chaos-fault")
           if e.get("fault") == "sigterm" and e.get("signal") == "SIGTERM"]
    truth = {h["attempt"]: h.get("deadline") for h in hits if h.get("kind") == "notice" and not h.get("missed")
             and isinstance(h.get("attempt"), int)}
    handled = {e["attempt"]: e for e in sup("notice-handled")}
    acted = {e["attempt"]: e for e in sup("preemption-notice") if e.get("reaction") == "act"}
    for a, e in acted.items():  # the job may have finished first: final.json then holds every step
        out.append(Notice(a, e.get("last_step"), after(a), "notice", truth.get(a, e.get("deadline")),
                          e.get("received"), handled.get(a, {}).get("committed_at") or done_at.get(a), a in done_at))
    for a, deadline in truth.items():  # given, and never acted on: only finishing the job in time saves it
        if a not in acted:
            hit = next(h for h in hits if h.get("attempt") == a and h.get("kind") == "notice")
            out.append(Notice(a, hit.get("hit_step"), after(a), "notice", deadline, None, done_at.get(a),
                              a in done_at))
    return out


def judge_report(comparison: Comparison, notice_list: Sequence[Notice]) -> Judgement:
    """The comparison's verdict; a run that compares bit-exact still fails if a notice lost steps, or
    a cloud's notice saw its state committed after its deadline (or never)."""
    j = comparison.judgement
    lost = [n for n in notice_list if n.steps_lost]
    late = [n for n in notice_list if n.made_deadline is False]
    if j.verdict is not Verdict.PASS or not (lost or late):
        return j
    if not lost:
        n = late[0]
        when = ("never" if n.committed_at is None or n.deadline is None
                else f"{n.committed_at - n.deadline:.2f} s after its deadline")
        heard = "" if n.received is not None else ", and the supervisor never acted on it"
        return Judgement(Verdict.DIVERGED, f"a cloud's preemption notice (attempt {n.attempt}) saw the state "
                                           f"committed {when}{heard}")
    total = sum(n.steps_lost or 0 for n in lost)
    first = lost[0]
    who = "a preemption notice" if len(lost) == 1 else f"{len(lost)} preemption notices"
    return Judgement(Verdict.DIVERGED,
                     f"{who} lost {total} step{'s' if total != 1 else ''} ({'first: ' if len(lost) > 1 else ''}"
                     f"attempt {first.attempt} had done {first.steps_done}, the next resumed from "
                     f"{first.resumed_from_step})")


@dataclass(frozen=True)
class EpochRow:
    epoch: int
    reference_mean: float
    run_mean: float | None
    max_abs_diff: float | None
    exact: bool
    faults: tuple[str, ...]


@dataclass(frozen=True)
class ChaosReport:
    job: Mapping[str, Any]
    comparison: Comparison
    faults: tuple[Mapping[str, Any], ...]
    restarts: int
    lost_steps: int
    restart_latency_s: tuple[float, ...]
    wall_s: float
    reference_compute_s: float
    epochs: tuple[EpochRow, ...]
    replay: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    notices: tuple[Notice, ...] = ()
    skipped_events: int = 0  # malformed records in events.jsonl
    skipped_records: int = 0  # malformed records in the run's losses.jsonl

    @property
    def goodput(self) -> float:
        return self.reference_compute_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def judgement(self) -> Judgement:
        return judge_report(self.comparison, self.notices)

    @property
    def verdict(self) -> Verdict:
        return self.judgement.verdict

    def to_json(self) -> dict[str, Any]:
        c = self.comparison.to_json()
        j = self.judgement
        return {
            "verdict": j.verdict.value,
            "reason": j.reason,
            "bit_exact": self.comparison.bit_exact,
            "steps_compared": self.comparison.steps_compared,
            "first_divergent_step": self.comparison.first_divergent_step,
            "comparison": c,
            "faults": [dict(f) for f in self.faults],
            "restarts": self.restarts,
            "restart_latency_s": [round(x, 4) for x in self.restart_latency_s],
            "lost_steps": self.lost_steps,
            "steps_lost_per_notice": [n.to_json() for n in self.notices],
            "skipped_records": {"losses": self.skipped_records, "events": self.skipped_events},
            "goodput": round(self.goodput, 4),
            "wall_s": round(self.wall_s, 3),
            "reference_compute_s": round(self.reference_compute_s, 3),
            "job": dict(self.job),
            "epochs": [
                {"epoch": r.epoch, "reference_mean_loss": r.reference_mean, "run_mean_loss": r.run_mean,
                 "max_abs_diff": r.max_abs_diff, "exact": r.exact, "faults": list(r.faults)}
                for r in self.epochs
            ],
            "replay": self.replay,
            **dict(self.extra),
        }


def reference_compute_s(reference: Trace) -> float:
    """Wall time the uninterrupted reference spent training, first step to last."""
    recs = [r for r in reference.steps.values() if "time" in r]
    if not recs:
        return 0.0
    return float(recs[-1]["time"]) - float(recs[0]["time"]) + float(recs[0].get("dt", 0.0))


def restart_latencies(events: Sequence[Mapping[str, Any]], records: Iterable[Mapping[str, Any]]) -> list[float]:
    """Seconds from each kill to the first step completed by the next attempt.

    The kill is the SIGKILL the supervisor sent (chaos or hang detection) or, failing that, the
    moment it saw the worker gone. Malformed events and records are passed over."""
    first_step: dict[int, float] = {}
    for r in records:
        if loss_problem(r) is None and "time" in r:
            first_step.setdefault(int(r.get("attempt", 0)), float(r["time"]))
    kill: dict[int, float] = {}
    for e in events:
        if e.get("source") != "supervisor" or event_problem(e) is not None or "attempt" not in e or "time" not in e:
            continue
        kind = e.get("event")
        if (kind == "chaos-fault" and e.get("signal") == "SIGKILL") or kind == "hang-detected":
            kill[int(e["attempt"])] = float(e["time"])
        elif kind == "attempt-exited" and e.get("exit_class") != "completed":
            kill.setdefault(int(e["attempt"]), float(e["time"]))
    out = []
    for a, t in sorted(kill.items()):
        nxt = [b for b in first_step if b > a]
        if nxt:
            out.append(first_step[min(nxt)] - t)
    return out


def epoch_rows(reference: Trace, run: Trace, hits: Sequence[Mapping[str, Any]]) -> list[EpochRow]:
    by_epoch: dict[int, list[int]] = defaultdict(list)
    for s, rec in reference.steps.items():
        by_epoch[int(rec.get("epoch", 0))].append(s)
    step_epoch = {s: int(rec.get("epoch", 0)) for s, rec in reference.steps.items()}
    fault_epochs: dict[int, list[str]] = defaultdict(list)
    for h in hits:
        if h.get("missed"):
            continue
        hit = h.get("hit_step")
        s = int(hit) + 1 if hit is not None else int(h["target_step"])
        e = step_epoch.get(min(s, max(step_epoch)) if step_epoch else s, 0)
        fault_epochs[e].append(f"{h['kind']}@{s}")
    rows = []
    for e, steps in sorted(by_epoch.items()):
        ref = [float(reference.steps[s]["loss"]) for s in steps]
        got = [float(run.steps[s]["loss"]) for s in steps if s in run.steps]
        diffs = [abs(float(reference.steps[s]["loss"]) - float(run.steps[s]["loss"])) for s in steps if s in run.steps]
        exact = len(got) == len(ref) and all(
            reference.steps[s].get("loss_hex") == run.steps[s].get("loss_hex") for s in steps
        )
        rows.append(EpochRow(e, statistics.fmean(ref), statistics.fmean(got) if got else None,
                             max(diffs) if diffs else None, exact, tuple(fault_epochs.get(e, ()))))
    return rows


def build_report(
    *,
    job: Mapping[str, Any],
    reference: Trace,
    run: Trace,
    comparison: Comparison,
    events: Sequence[Mapping[str, Any]],
    records: Sequence[Mapping[str, Any]],
    hits: Sequence[Mapping[str, Any]],
    wall_s: float,
    replay: str | None = None,
) -> ChaosReport:
    good_events = [e for e in events if event_problem(e) is None]
    good_records = [r for r in records if loss_problem(r) is None]
    attempts = {e["attempt"] for e in good_events if e.get("event") == "attempt-spawned" and "attempt" in e}
    return ChaosReport(
        job=job,
        comparison=comparison,
        faults=tuple(hits),
        restarts=max(0, len(attempts) - 1),
        lost_steps=run.recomputed,
        restart_latency_s=tuple(restart_latencies(good_events, good_records)),
        wall_s=wall_s,
        reference_compute_s=reference_compute_s(reference),
        epochs=tuple(epoch_rows(reference, run, hits)),
        replay=replay,
        notices=tuple(notices(good_events, hits)),
        skipped_events=len(events) - len(good_events),
        skipped_records=max(run.skipped, len(records) - len(good_records)),
    )


def _faults_text(faults: Sequence[Mapping[str, Any]]) -> str:
    if not faults:
        return "none"
    by_kind: dict[str, list[str]] = defaultdict(list)
    for f in faults:
        if f.get("missed"):
            by_kind[f["kind"]].append(f"missed (target {f['target_step']})")
        else:
            hit = f.get("hit_step")
            rank = f" (rank {f['rank']})" if f.get("rank") is not None else ""  # aimed at a rank of a gang
            by_kind[f["kind"]].append(f"step {int(hit) + 1 if hit is not None else f['target_step']}{rank}")
    count = Counter(f["kind"] for f in faults)
    return "\n".join(f"{k} x{count[k]}: {', '.join(v)}" for k, v in by_kind.items())


def _notices_text(notice_list: Sequence[Notice]) -> str:
    def one(n: Notice) -> str:
        lost = "?" if n.steps_lost is None else str(n.steps_lost)
        where = ("it finished the job" if n.finished else "no later attempt" if n.resumed_from_step is None
                 else f"resumed from {n.resumed_from_step}")
        text = f"{lost} (attempt {n.attempt}: {n.steps_done} steps done at the notice, {where})"
        if n.kind == "notice" and n.received is not None and n.committed_at is not None:
            done = "finished" if n.finished else "committed"
            text += f", {done} {n.committed_at - n.received:.2f} s after the notice"
            if n.deadline is not None:
                text += f", {n.deadline - n.committed_at:.2f} s before the deadline"
        return text

    return "\n".join(one(n) for n in notice_list)


class ReportView:
    """Renders a :class:`ChaosReport`: a summary panel, a per-epoch table and the verdict line."""

    def __init__(self, report: ChaosReport) -> None:
        self.report = report

    def summary(self) -> Panel:
        r = self.report
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column()
        j = r.job
        grid.add_row("job", f"{j.get('job', '?')}, {j.get('epochs', '?')} epochs, {r.comparison.steps_compared} steps")
        grid.add_row("data", str(j.get("data", "?")))
        grid.add_row("seeds", f"training {j.get('seed', '?')}, chaos {j.get('chaos_seed', '-')}")
        grid.add_row("faults", _faults_text(r.faults))
        grid.add_row("restarts", str(r.restarts))
        grid.add_row("steps recomputed", str(r.lost_steps))
        if r.notices:
            grid.add_row("steps lost per notice", _notices_text(r.notices))
        if r.skipped_records or r.skipped_events:
            grid.add_row("malformed records",
                         f"{r.skipped_records} in losses.jsonl, {r.skipped_events} in events.jsonl (skipped)")
        lat = r.restart_latency_s
        grid.add_row("restart latency",
                     f"median {statistics.median(lat):.2f} s, max {max(lat):.2f} s (kill to first resumed step)"
                     if lat else "-")
        grid.add_row("wall time", f"{r.wall_s:.1f} s (reference trained in {r.reference_compute_s:.1f} s)")
        grid.add_row("goodput", f"{r.goodput:.3f}")
        return Panel(grid, title="chaos run", expand=False)

    def table(self) -> Table:
        t = Table(title="loss per epoch: reference vs stitched")
        for col, just in (("epoch", "right"), ("reference", "right"), ("stitched", "right"),
                          ("max |diff|", "right"), ("exact", "center"), ("faults", "left")):
            t.add_column(col, justify=just)  # type: ignore[arg-type]
        for row in self.report.epochs:
            t.add_row(
                str(row.epoch), f"{row.reference_mean:.6f}",
                "-" if row.run_mean is None else f"{row.run_mean:.6f}",
                "-" if row.max_abs_diff is None else f"{row.max_abs_diff:.3g}",
                Text("✓", style="green") if row.exact else Text("✗", style="bold red"),
                ", ".join(row.faults),
            )
        return t

    def verdict(self) -> Text:
        j = self.report.judgement
        passed = j.verdict is Verdict.PASS
        line = Text(j.verdict.value.upper() + " ", style="bold green" if passed else "bold red") + Text(j.reason)
        if not passed and self.report.replay:
            line += Text(f"\nreplay: {self.report.replay}")
        return line

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield Group(self.summary(), self.table(), self.verdict())
