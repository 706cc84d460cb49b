"""Trends across nights: each campaign's summary (:func:`chaos.stats.night_summary`) is kept as one
file in a history directory, and tonight is compared with the last N nights.

Four things are flagged as a regression (:class:`RegressionKind`):

- the pass rate dropped: tonight's is below the nights' median by more than the allowed spread;
- a fault kind newly fails: some trial with it did not pass tonight, and in each of the nights
  before where it ran, every trial with it passed (or it never ran before);
- the median restart latency is worse (higher), or
- the median goodput is worse (lower), than the nights' median by more than the allowed spread.

The allowed spread comes from the nights themselves: ``max(3 * MAD, floor, share * |median|)``
(:class:`Limit`), the median absolute deviation being robust to one odd night; the floor keeps a
run of identical nights (MAD 0) from flagging noise. A night that cannot be read is passed over and
said so. The comparisons are pure; only :func:`load_nights` and :func:`save_night` touch files.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

__all__ = ["RegressionKind", "Regression", "Limit", "LIMITS", "Trend", "mad", "compare_nights", "night_file",
           "load_nights", "save_night", "NIGHT_PREFIX"]

NIGHT_PREFIX = "chaos-"


class RegressionKind(StrEnum):
    PASS_RATE = "pass-rate-drop"
    KIND_FAILS = "kind-newly-fails"
    LATENCY = "restart-latency"
    GOODPUT = "goodput"


@dataclass(frozen=True)
class Regression:
    kind: RegressionKind
    message: str
    tonight: float | None = None
    baseline: float | None = None  # the nights' median
    allowed: float | None = None  # how far from it tonight may be

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "message": self.message, "tonight": self.tonight,
                "baseline": self.baseline, "allowed": self.allowed}


@dataclass(frozen=True)
class Limit:
    """How far from the nights' median a value may move the wrong way before it is a regression."""

    floor: float = 0.0
    share: float = 0.0  # of the median's magnitude
    mads: float = 3.0

    def allowed(self, baseline: float, spread: float) -> float:
        return max(self.mads * spread, self.floor, self.share * abs(baseline))


#: Pass rate: any drop below the usual (a correct resume is deterministic). Restart latency: half a
#: second or half the usual, whichever is more. Goodput: 0.05 or a fifth of the usual.
LIMITS: Mapping[str, Limit] = {"pass_rate": Limit(), "latency": Limit(floor=0.5, share=0.5),
                               "goodput": Limit(floor=0.05, share=0.2)}


@dataclass(frozen=True)
class Trend:
    """Tonight against the nights before it (oldest first), and what got worse."""

    nights: tuple[Mapping[str, Any], ...] = ()
    regressions: tuple[Regression, ...] = ()
    unreadable: tuple[str, ...] = field(default=())  # history files passed over, each with why

    def to_json(self) -> dict[str, Any]:
        return {"nights": [n.get("time") for n in self.nights], "regressions": [r.to_json() for r in self.regressions],
                "unreadable": list(self.unreadable)}


def mad(values: Sequence[float]) -> float:
    """The median absolute deviation from the median (0 for fewer than two values)."""
    if len(values) < 2:
        return 0.0
    m = statistics.median(values)
    return statistics.median(abs(v - m) for v in values)


def _numbers(nights: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    return [float(n[key]) for n in nights if isinstance(n.get(key), int | float) and not isinstance(n[key], bool)]


def _worse(kind: RegressionKind, tonight: Any, past: Sequence[float], limit: Limit, *, higher_is_worse: bool,
           say: str, unit: str) -> Regression | None:
    if not isinstance(tonight, int | float) or not past:
        return None
    base = statistics.median(past)
    allowed = limit.allowed(base, mad(past))
    off = tonight - base if higher_is_worse else base - tonight
    if off <= allowed:
        return None
    direction = "up" if higher_is_worse else "down"
    return Regression(kind, f"{say} went {direction} to {tonight:.3g}{unit} from a median of {base:.3g}{unit} over "
                            f"{len(past)} night{'s' if len(past) != 1 else ''} (allowed: {allowed:.3g}{unit})",
                      float(tonight), base, allowed)


def _kinds_newly_failing(tonight: Mapping[str, Any], nights: Sequence[Mapping[str, Any]]) -> list[Regression]:
    out = []
    for kind, t in (tonight.get("kinds") or {}).items():
        bad = int(t.get("failed", 0)) + int(t.get("flaky", 0))
        if not bad:
            continue
        before = [n["kinds"][kind] for n in nights if isinstance(n.get("kinds"), Mapping) and kind in n["kinds"]]
        if any(int(b.get("failed", 0)) + int(b.get("flaky", 0)) for b in before):
            continue
        since = f"passed in all {len(before)} night{'s' if len(before) != 1 else ''} before" if before else \
            "never ran in the nights before"
        what = f"{kind} newly fails: {bad} of {t.get('run', '?')} trials with it did not pass; it {since}"
        out.append(Regression(RegressionKind.KIND_FAILS, what, float(bad)))
    return out


def compare_nights(tonight: Mapping[str, Any], nights: Sequence[Mapping[str, Any]],
                   limits: Mapping[str, Limit] = LIMITS) -> Trend:
    """Tonight's summary against ``nights`` (the last N, oldest first): what got worse. No nights: nothing."""
    if not nights:
        return Trend()
    found = [
        _worse(RegressionKind.PASS_RATE, tonight.get("pass_rate"), _numbers(nights, "pass_rate"), limits["pass_rate"],
               higher_is_worse=False, say="the pass rate", unit=""),
        *_kinds_newly_failing(tonight, nights),
        _worse(RegressionKind.LATENCY, tonight.get("restart_latency_median_s"),
               _numbers(nights, "restart_latency_median_s"), limits["latency"], higher_is_worse=True,
               say="the median restart latency", unit=" s"),
        _worse(RegressionKind.GOODPUT, tonight.get("goodput_median"), _numbers(nights, "goodput_median"),
               limits["goodput"], higher_is_worse=False, say="the median goodput", unit=""),
    ]
    return Trend(tuple(nights), tuple(r for r in found if r is not None))


# -- the history directory ------------------------------------------------------------------------------


def night_file(when: datetime) -> str:
    """A night's file name: sorts by date and time."""
    return f"{NIGHT_PREFIX}{when:%Y%m%d-%H%M%S}.json"


def _problem(d: Any) -> str | None:
    if not isinstance(d, dict) or d.get("format") != 1:
        return "not a night's summary (format 1)"
    if not isinstance(d.get("kinds", {}), dict):
        return "'kinds' is not an object"
    return None


def load_nights(directory: Path, window: int) -> tuple[list[dict[str, Any]], list[str]]:
    """The last ``window`` readable nights in ``directory``, oldest first, and a line for each file
    among them that could not be read (passed over)."""
    if not directory.is_dir():
        return [], []
    names = sorted(p for p in directory.iterdir() if p.name.startswith(NIGHT_PREFIX) and p.suffix == ".json")
    nights: list[dict[str, Any]] = []
    unreadable: list[str] = []
    for path in reversed(names):
        if len(nights) >= window:
            break
        try:
            d = json.loads(path.read_text())
            problem = _problem(d)
        except (OSError, ValueError) as exc:
            problem = f"cannot read it ({exc})"
        if problem is None:
            nights.append(d)
        else:
            unreadable.append(f"{path.name}: {problem}")
    return nights[::-1], unreadable


def save_night(directory: Path, summary: Mapping[str, Any], when: datetime) -> Path:
    """Keep tonight's summary as a new file (never over an older night's: a second run in the same
    second gets a suffix)."""
    directory.mkdir(parents=True, exist_ok=True)
    base = night_file(when).removesuffix(".json")
    for n in range(1, 1000):
        path = directory / (base + (f"-{n}" if n > 1 else "") + ".json")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(dict(summary), indent=1) + "\n")
        return path
    raise FileExistsError(f"{directory / base}: too many nights in one second")
