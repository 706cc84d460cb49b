"""The campaign's figures, each a PNG (bytes) drawn from plain data: the trials' JSON records, a pair of
loss curves, the nights' summaries. Matplotlib's object API (no pyplot): nothing global, no display.

- :func:`summary_png`: the one figure of ``--plot``: the pass rate per fault kind, the restart
  latency distribution and the steps recomputed per trial.
- :func:`distributions_png`: restart latency, steps recomputed and goodput, histograms with their median.
- :func:`kinds_png`: goodput per fault kind, as box plots.
- :func:`curve_png`: one trial's stitched loss over the reference's, its faults and first divergence marked.
- :func:`trend_png`: pass rate, median restart latency and median goodput over the nights.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .stats import Trial, TrialStatus, by_kind, restart_latencies

__all__ = ["summary_png", "distributions_png", "kinds_png", "curve_png", "trend_png", "Curve", "FAULT_COLOURS"]

#: (steps, losses) of one run, in step order.
Curve = tuple[Sequence[int], Sequence[float]]

FAULT_COLOURS = {"sigkill": "tab:red", "sigterm": "tab:orange", "checkpoint-write": "tab:purple",
                 "corrupt-checkpoint": "tab:brown", "hang": "tab:gray", "crash": "tab:pink", "disk-full": "tab:olive"}
_PASS, _FLAKY, _FAIL = "#2e7d32", "#f9a825", "#c62828"


def _png(fig: Figure, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _finished(trials: Sequence[Trial]) -> list[Trial]:
    return [t for t in trials if t.get("status") != TrialStatus.NOT_RUN]


def _empty(ax: Axes, title: str, what: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, what, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _kind_rates(ax: Axes, trials: Sequence[Trial]) -> None:
    kinds = by_kind(_finished(trials))
    if not kinds:
        _empty(ax, "pass rate per fault kind", "no finished trials")
        return
    names = [k.kind for k in kinds][::-1]
    tallies = [k.tally for k in kinds][::-1]
    share = [[getattr(t, f) / t.run if t.run else 0.0 for t in tallies] for f in ("passed", "flaky", "failed")]
    left = [0.0] * len(names)
    for values, colour, label in zip(share, (_PASS, _FLAKY, _FAIL), ("passed", "flaky", "failed")):
        ax.barh(names, values, left=left, color=colour, label=label)
        left = [a + b for a, b in zip(left, values)]
    for y, t in enumerate(tallies):
        ax.text(1.01, y, f"{t.passed}/{t.run}", va="center", fontsize=9)
    ax.set_xlim(0, 1.18)
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_xlabel("share of the trials with the kind")
    ax.set_title("pass rate per fault kind")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)


def _histogram(ax: Axes, values: Sequence[float], title: str, xlabel: str, colour: str) -> None:
    if not values:
        _empty(ax, title, "no data")
        return
    lo, hi = min(values), max(values)
    whole = all(float(v).is_integer() for v in values) and hi - lo <= 60  # counts: one bar per value
    bins: Any = [x - 0.5 for x in range(int(lo), int(hi) + 2)] if whole else min(30, max(5, len(values) // 3))
    ax.hist(values, bins=bins, color=colour, alpha=0.8, edgecolor="white")
    mid = sorted(values)[len(values) // 2]
    ax.axvline(mid, color="black", lw=1.2, ls="--", label=f"median {mid:.3g}")
    ax.set_title(f"{title} (n={len(values)})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def _lost(trials: Sequence[Trial]) -> list[float]:
    return [float(t["lost_steps"]) for t in _finished(trials) if t.get("lost_steps") is not None]


def summary_png(trials: Sequence[Trial], title: str = "chaos campaign") -> bytes:
    """Pass rate per kind, restart latency, steps recomputed: one row of three panels."""
    fig = Figure(figsize=(15, 4.4))
    a, b, c = fig.subplots(1, 3)
    _kind_rates(a, trials)
    _histogram(b, restart_latencies(trials), "restart latency", "seconds, kill to first resumed step", "tab:blue")
    _histogram(c, _lost(trials), "steps recomputed per trial", "steps", "tab:purple")
    fig.suptitle(title)
    fig.tight_layout()
    return _png(fig)


def distributions_png(trials: Sequence[Trial]) -> bytes:
    fig = Figure(figsize=(15, 4))
    a, b, c = fig.subplots(1, 3)
    _histogram(a, restart_latencies(trials), "restart latency", "seconds, kill to first resumed step", "tab:blue")
    _histogram(b, _lost(trials), "steps recomputed", "steps per trial", "tab:purple")
    goodput = [float(t["goodput"]) for t in _finished(trials) if t.get("goodput") is not None]
    _histogram(c, goodput, "goodput", "reference compute time / trial wall time", "tab:green")
    fig.tight_layout()
    return _png(fig)


def kinds_png(trials: Sequence[Trial]) -> bytes:
    """Goodput of the trials with each fault kind, one box per kind."""
    fig = Figure(figsize=(15, 3.6))
    ax = fig.subplots()
    done = _finished(trials)
    kinds = [k.kind for k in by_kind(done)]
    data = [[float(t["goodput"]) for t in done if k in (t.get("kinds") or []) and t.get("goodput") is not None]
            for k in kinds]
    if not any(data):
        _empty(ax, "goodput per fault kind", "no finished trials")
    else:
        ax.boxplot(data, vert=False)
        ax.set_yticks(range(1, len(kinds) + 1), kinds)
        ax.set_xlabel("goodput")
        ax.set_title("goodput of the trials with each fault kind")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _fault_x(f: Mapping[str, Any]) -> int | None:
    if f.get("missed"):
        return None
    return int(f["hit_step"]) + 1 if f.get("hit_step") is not None else int(f["target_step"])


def curve_png(reference: Curve, run: Curve, faults: Sequence[Mapping[str, Any]], title: str, *,
              first_divergent_step: int | None = None, failed: bool = False) -> bytes:
    """The reference's loss per step (thick, faint) under the stitched run's (dashed), a line at each fault."""
    fig = Figure(figsize=(7.5, 3.2))
    ax = fig.subplots()
    ax.plot(reference[0], reference[1], color="black", lw=2.4, alpha=0.3, label="reference")
    ax.plot(run[0], run[1], color="tab:blue", lw=1.1, ls="--", label="stitched")
    top = max([*reference[1], *run[1]], default=1.0)
    seen: set[str] = set()
    for f in faults:
        x = _fault_x(f)
        if x is None:
            continue
        colour = FAULT_COLOURS.get(f["kind"], "tab:red")
        ax.axvline(x, color=colour, lw=1.2, alpha=0.9, label=None if f["kind"] in seen else f["kind"])
        ax.plot([x], [top], marker="v", color=colour, ms=8)
        seen.add(f["kind"])
    if first_divergent_step is not None:
        ax.axvline(first_divergent_step, color=_FAIL, lw=2, ls=":", label=f"diverges at {first_divergent_step}")
    ax.set_title(title, color=_FAIL if failed else "black", fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return _png(fig, dpi=90)


def trend_png(nights: Sequence[Mapping[str, Any]]) -> bytes:
    """Pass rate, median restart latency and median goodput, one point per night (tonight last)."""
    fig = Figure(figsize=(15, 3.4))
    axes = fig.subplots(1, 3)
    labels = [str(n.get("time", "?"))[5:16].replace("T", " ") for n in nights]
    for ax, key, title in zip(axes, ("pass_rate", "restart_latency_median_s", "goodput_median"),
                              ("pass rate", "median restart latency (s)", "median goodput")):
        ys = [n.get(key) for n in nights]
        xs = [i for i, y in enumerate(ys) if y is not None]
        ax.plot(xs, [ys[i] for i in xs], marker="o", color="tab:blue")
        if xs and xs[-1] == len(nights) - 1:
            ax.plot([xs[-1]], [ys[xs[-1]]], marker="o", ms=10, color="tab:red", label="tonight")
            ax.legend(fontsize=8)
        ax.set_xticks(range(len(nights)), labels, rotation=30, fontsize=7, ha="right")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)
