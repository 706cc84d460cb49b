"""Writing a campaign's outputs: JSON, JUnit XML, the summary figure and the HTML page. The content comes
from pure builders (:mod:`chaos.results`, :mod:`chaos.figures`, :mod:`chaos.html`); here are only the
files, and the loss traces the page's curves are drawn from."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rundir.exitcodes import ExitCode, UserError
from runner.trace import Trace, load_trace

from .figures import Curve, curve_png, distributions_png, kinds_png, summary_png, trend_png
from .history import Trend
from .html import PageImages, campaign_page, curve_trials
from .results import campaign_json, junit_xml
from .stats import Trial, TrialStatus

__all__ = ["write_outputs", "trial_curves", "curve_of", "write_file"]


def write_file(path: Path, data: bytes | str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            path.write_text(data, encoding="utf-8")
        else:
            path.write_bytes(data)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}", ExitCode.UNWRITABLE) from None


def curve_of(trace: Trace) -> Curve:
    steps = sorted(trace.steps)
    return steps, [float(trace.steps[s]["loss"]) for s in steps]


def trial_curves(trials: Sequence[Trial], reference: Trace) -> dict[str, bytes]:
    """The loss curve of each trial the page shows with one, by name; a run directory that cannot be
    read has none."""
    ref = curve_of(reference)
    out = {}
    for t in trials:
        try:
            run = curve_of(load_trace(Path(t["run_dir"])))
        except (OSError, KeyError, ValueError):
            continue
        failed = t.get("status") in (TrialStatus.FAILED, TrialStatus.FLAKY)
        title = f"{t['trial']} (seed {t.get('seed')}): {t.get('status')}, {t.get('wall_s', 0):.1f} s"
        out[str(t["trial"])] = curve_png(ref, run, t.get("faults") or [], title,
                                         first_divergent_step=t.get("first_divergent_step"), failed=failed)
    return out


def write_outputs(ns: argparse.Namespace, trials: Sequence[Trial], config: Mapping[str, Any], trend: Trend | None,
                  nights: Sequence[Mapping[str, Any]], reference: Trace) -> dict[str, Any]:
    """The files the options asked for; returns the campaign's JSON."""
    data = campaign_json(trials, config, trend.to_json() if trend is not None else None)
    if ns.junit:
        write_file(ns.junit, junit_xml(trials))
    if ns.json:
        write_file(ns.json, json.dumps(data, indent=1) + "\n")
    if ns.plot:
        write_file(ns.plot, summary_png(trials, _title(data)))
    if ns.html:
        images = PageImages(distributions=distributions_png(trials),
                            kinds=kinds_png(trials), trend=trend_png(nights) if len(nights) > 1 else None,
                            curves=trial_curves(curve_trials(trials), reference))
        write_file(ns.html, campaign_page(data, images))
    return data


def _title(data: Mapping[str, Any]) -> str:
    t = data["totals"]
    rate = "-" if t.get("pass_rate") is None else f"{100 * t['pass_rate']:.1f}%"
    return (f"chaos campaign, seed {data['campaign'].get('seed')}: {t['passed']}/{t['run']} passed ({rate}), "
            f"{t['flaky']} flaky, {t['not_run']} not run")
