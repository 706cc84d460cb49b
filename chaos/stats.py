"""What a campaign's trials add up to: each trial's status, the pass rate overall and per fault kind,
the distributions the report draws, and the night's summary that the history keeps.

Everything here is a pure function of the trials' JSON records (the dicts in the campaign's
``trials`` list: a trial's report, :meth:`chaos.report.ChaosReport.to_json`, plus ``trial``,
``seed``, ``run_dir``, ``kinds``, ``status`` and, for a failed trial, ``replayed``).

A trial's status (:class:`TrialStatus`):

========== =====================================================================================
passed     its stitched trace equals the reference, bit for bit
failed     it did not pass, and neither did its replay (or there was no time to replay it)
flaky      it did not pass, but its exact replay did: not a pass, and listed as such
not-run    the time budget ran out while it ran, so it was stopped; it counts in no rate
========== =====================================================================================

A trial counts for every fault kind it was scheduled with: the per-kind pass rate is the share of
the trials with that kind in them that passed.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .faults import FaultKind

__all__ = ["TrialStatus", "trial_status", "Tally", "tally", "KindStats", "by_kind", "restart_latencies",
           "median", "slowest", "failing", "night_summary", "Trial"]

#: A trial's JSON record, as in the campaign's ``trials`` list.
Trial = Mapping[str, Any]


class TrialStatus(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    FLAKY = "flaky"
    NOT_RUN = "not-run"


def trial_status(verdict: str | None, replay_verdict: str | None = None) -> TrialStatus:
    """A trial's status from its verdict (None: stopped before it finished) and its replay's."""
    if verdict is None:
        return TrialStatus.NOT_RUN
    if verdict == "pass":
        return TrialStatus.PASSED
    return TrialStatus.FLAKY if replay_verdict == "pass" else TrialStatus.FAILED


def _status(t: Trial) -> TrialStatus:
    return TrialStatus(t.get("status", TrialStatus.NOT_RUN))


@dataclass(frozen=True)
class Tally:
    passed: int = 0
    failed: int = 0
    flaky: int = 0
    not_run: int = 0

    @property
    def run(self) -> int:
        """Trials that finished (passed, failed or flaky)."""
        return self.passed + self.failed + self.flaky

    @property
    def trials(self) -> int:
        return self.run + self.not_run

    @property
    def pass_rate(self) -> float | None:
        return self.passed / self.run if self.run else None

    def to_json(self) -> dict[str, Any]:
        rate = self.pass_rate
        return {"trials": self.trials, "run": self.run, "passed": self.passed, "failed": self.failed,
                "flaky": self.flaky, "not_run": self.not_run, "pass_rate": None if rate is None else round(rate, 4)}


def tally(trials: Iterable[Trial]) -> Tally:
    counts = {s: 0 for s in TrialStatus}
    for t in trials:
        counts[_status(t)] += 1
    return Tally(counts[TrialStatus.PASSED], counts[TrialStatus.FAILED], counts[TrialStatus.FLAKY],
                 counts[TrialStatus.NOT_RUN])


@dataclass(frozen=True)
class KindStats:
    kind: str
    tally: Tally


def _kind_order(kind: str) -> tuple[int, str]:
    known = [k.value for k in FaultKind]
    return (known.index(kind), kind) if kind in known else (len(known), kind)


def by_kind(trials: Iterable[Trial]) -> list[KindStats]:
    """The tally of the trials each fault kind was in (a trial with two faults of a kind counts once)."""
    per: dict[str, list[Trial]] = {}
    for t in trials:
        for k in dict.fromkeys(t.get("kinds") or [f["kind"] for f in t.get("faults", [])]):
            per.setdefault(k, []).append(t)
    return [KindStats(k, tally(per[k])) for k in sorted(per, key=_kind_order)]


def restart_latencies(trials: Iterable[Trial]) -> list[float]:
    """Every restart's latency (kill to the first resumed step) of the trials that finished, pooled."""
    return [float(x) for t in trials if _status(t) is not TrialStatus.NOT_RUN for x in t.get("restart_latency_s", [])]


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def slowest(trials: Iterable[Trial], n: int) -> list[Trial]:
    """The ``n`` finished trials that took longest (wall time under the supervisor), slowest first."""
    done = [t for t in trials if _status(t) is not TrialStatus.NOT_RUN and t.get("wall_s") is not None]
    return sorted(done, key=lambda t: (-float(t["wall_s"]), str(t.get("trial"))))[:n]


def failing(trials: Iterable[Trial]) -> list[Trial]:
    """The trials that did not pass (failed and flaky), in trial order."""
    return [t for t in trials if _status(t) in (TrialStatus.FAILED, TrialStatus.FLAKY)]


def night_summary(trials: Sequence[Trial], *, when: str, seed: int | None) -> dict[str, Any]:
    """What the history keeps of one campaign: its tally, the tally per fault kind, the median restart
    latency and goodput, and the names of the trials that did not pass."""
    done = [t for t in trials if _status(t) is not TrialStatus.NOT_RUN]
    lat = median(restart_latencies(done))
    goodput = median([float(t["goodput"]) for t in done if t.get("goodput") is not None])
    return {
        "format": 1,
        "time": when,
        "seed": seed,
        **tally(trials).to_json(),
        "kinds": {k.kind: k.tally.to_json() for k in by_kind(done)},
        "restart_latency_median_s": None if lat is None else round(lat, 4),
        "goodput_median": None if goodput is None else round(goodput, 4),
        "failed_trials": [t.get("trial") for t in trials if _status(t) is TrialStatus.FAILED],
        "flaky_trials": [t.get("trial") for t in trials if _status(t) is TrialStatus.FLAKY],
    }
