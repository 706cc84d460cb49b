"""A campaign's results from its trials' JSON records (see :mod:`chaos.stats`): the campaign's verdict,
the JSON it writes, JUnit XML with one testcase per trial, and the console's tables.

In JUnit a trial that did not pass is a ``failure`` (``ResumeMismatch`` for a divergence,
``RunIncomplete`` for a run that did not finish, ``Flaky`` when its exact replay passed) carrying its
replay command; a trial the time budget cut short is ``skipped``.
"""

from __future__ import annotations

import json
import statistics
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import Any

from rich.table import Table

from runner.trace import Verdict

from .stats import Trial, TrialStatus, by_kind, median, restart_latencies, tally

__all__ = ["campaign_verdict", "verdict_of", "junit_xml", "campaign_json", "summary_table", "kinds_table",
           "trial_line", "TABLE_ROWS"]

#: Up to this many trials the console lists every one; beyond it, only those that did not pass.
TABLE_ROWS = 40


def campaign_verdict(verdicts: Sequence[Verdict]) -> Verdict:
    """The campaign's verdict: diverged if any trial diverged, else incomplete if any was, else pass."""
    for v in (Verdict.DIVERGED, Verdict.INCOMPLETE):
        if v in verdicts:
            return v
    return Verdict.PASS


def verdict_of(trials: Sequence[Trial]) -> Verdict:
    """The verdict of the trials that ran (a flaky trial's first verdict counts: it is not a pass);
    incomplete when none ran."""
    verdicts = [Verdict(t["verdict"]) for t in trials if t.get("status") != TrialStatus.NOT_RUN and t.get("verdict")]
    return campaign_verdict(verdicts) if verdicts else Verdict.INCOMPLETE


def _kinds(t: Trial) -> str:
    return ",".join(f["kind"] for f in t.get("faults") or []) or ",".join(t.get("kinds") or [])


def trial_line(t: Trial) -> str:
    """The verdict, its reason and the replay command, on one line."""
    line = f"{str(t.get('verdict', '')).upper()} {t.get('reason', '')}"
    replayed = t.get("replayed")
    if t.get("status") == TrialStatus.FLAKY:
        line += "; FLAKY: it passed on its exact replay"
    elif replayed:
        line += f"; its replay: {str(replayed.get('verdict', 'not run')).upper()}"
    return f"{line}; replay: {t.get('replay')}"


def junit_xml(trials: Sequence[Trial], *, suite: str = "chaos-campaign") -> bytes:
    n = tally(trials)
    failures = n.failed + n.flaky
    total_time = sum(float(t.get("wall_s") or 0.0) for t in trials)
    root = ET.Element("testsuites", tests=str(len(trials)), failures=str(failures), time=f"{total_time:.3f}")
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(trials)), failures=str(failures),
                       errors="0", skipped=str(n.not_run), time=f"{total_time:.3f}")
    for t in trials:
        tc = ET.SubElement(ts, "testcase", classname=suite, name=f"{t.get('trial')} seed={t.get('seed')} "
                                                                f"faults={_kinds(t)}",
                           time=f"{float(t.get('wall_s') or 0.0):.3f}")
        status = t.get("status")
        if status == TrialStatus.NOT_RUN:
            ET.SubElement(tc, "skipped", message=str(t.get("reason") or "not run"))
        elif status in (TrialStatus.FAILED, TrialStatus.FLAKY):
            kind = "Flaky" if status == TrialStatus.FLAKY else (
                "ResumeMismatch" if t.get("verdict") == Verdict.DIVERGED else "RunIncomplete")
            fail = ET.SubElement(tc, "failure", message=trial_line(t), type=kind)
            fail.text = json.dumps(dict(t), indent=1)
        out = ET.SubElement(tc, "system-out")
        out.text = f"run dir: {t.get('run_dir')}\nreplay: {t.get('replay')}\n"
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def campaign_json(trials: Sequence[Trial], config: Mapping[str, Any],
                  trend: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``campaign`` (the configuration), ``trials`` (their records), ``totals`` and, with a history,
    ``trend``. Passed, failed, flaky and not run add up to the trials."""
    done = [t for t in trials if t.get("status") != TrialStatus.NOT_RUN]
    lat = restart_latencies(done)
    goodput = [float(t["goodput"]) for t in done if t.get("goodput") is not None]
    out: dict[str, Any] = {
        "campaign": dict(config),
        "trials": [dict(t) for t in trials],
        "totals": {
            **tally(trials).to_json(),
            "verdict": verdict_of(trials).value,
            "diverged": sum(1 for t in done if t.get("verdict") == Verdict.DIVERGED),
            "incomplete": sum(1 for t in done if t.get("verdict") == Verdict.INCOMPLETE),
            "faults": sum(len(t.get("faults") or []) for t in done),
            "restarts": sum(int(t.get("restarts") or 0) for t in done),
            "lost_steps": sum(int(t.get("lost_steps") or 0) for t in done),
            "restart_latency_median_s": round(statistics.median(lat), 4) if lat else None,
            "goodput_mean": round(statistics.fmean(goodput), 4) if goodput else None,
            "goodput_median": round(m, 4) if (m := median(goodput)) is not None else None,
        },
    }
    if trend is not None:
        out["trend"] = dict(trend)
    return out


_STYLE = {TrialStatus.PASSED: "green", TrialStatus.FAILED: "bold red", TrialStatus.FLAKY: "bold yellow",
          TrialStatus.NOT_RUN: "dim"}


def summary_table(trials: Sequence[Trial]) -> Table:
    """A row per trial; past :data:`TABLE_ROWS` trials, a row per trial that did not pass."""
    rows = list(trials) if len(trials) <= TABLE_ROWS else [t for t in trials if t.get("status") != TrialStatus.PASSED]
    hidden = len(trials) - len(rows)
    t = Table(title="chaos campaign" + (f" ({hidden} passed trials not shown)" if hidden else ""))
    for col in ("trial", "seed", "faults", "restarts", "lost steps", "restart latency", "goodput", "verdict"):
        t.add_column(col, justify="left" if col in ("trial", "faults") else "right")
    for tr in rows:
        lat = tr.get("restart_latency_s") or []
        status = TrialStatus(tr.get("status", TrialStatus.NOT_RUN))
        shown = {TrialStatus.NOT_RUN: "not run", TrialStatus.FLAKY: "flaky"}.get(status, str(tr.get("verdict")))
        faults = ", ".join(f["kind"] + ("?" if f.get("missed") else "") for f in tr.get("faults") or []) or \
            ", ".join(tr.get("kinds") or [])
        t.add_row(str(tr.get("trial")), str(tr.get("seed")), faults, str(tr.get("restarts", "-")),
                  str(tr.get("lost_steps", "-")), f"{statistics.median(lat):.2f} s" if lat else "-",
                  f"{tr['goodput']:.3f}" if tr.get("goodput") is not None else "-",
                  f"[{_STYLE[status]}]{shown}[/]")
    return t


def kinds_table(trials: Sequence[Trial]) -> Table:
    """The pass rate per fault kind."""
    t = Table(title="pass rate per fault kind")
    for col in ("kind", "trials", "passed", "flaky", "failed", "pass rate"):
        t.add_column(col, justify="left" if col == "kind" else "right")
    for k in by_kind([x for x in trials if x.get("status") != TrialStatus.NOT_RUN]):
        rate = k.tally.pass_rate
        t.add_row(k.kind, str(k.tally.run), str(k.tally.passed), str(k.tally.flaky), str(k.tally.failed),
                  "-" if rate is None else f"{100 * rate:.1f}%")
    return t
