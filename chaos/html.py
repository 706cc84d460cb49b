"""``campaign --html FILE``: one self-contained page for a campaign of any size, built by a pure function of
the campaign's JSON and its figures (PNG bytes, inlined as base64 data URIs; the CSS inline too), so it
opens offline, from an artifact store or an e-mail, and fetches nothing.

From the top: the verdict and pass rate; the regressions against the nights before (with the trend);
the pass rate per fault kind; the distributions of restart latency, steps recomputed and goodput; the
failing trials, then the slowest, each with its loss curve and its replay command; and, folded, a
table of every trial.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

from .stats import KindStats, Trial, TrialStatus, by_kind, failing, slowest

__all__ = ["PageImages", "campaign_page", "curve_trials", "data_uri", "SLOWEST", "MAX_CURVES"]

#: The slowest trials shown with their curves, and the most failing ones shown so (the rest are in the table).
SLOWEST = 5
MAX_CURVES = 30

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f4f5f7;color:#1d2329}
main{max-width:1320px;margin:0 auto;padding:24px 32px 64px}
h1{margin:0 0 4px;font-size:28px}
h2{margin:36px 0 12px;font-size:20px;border-bottom:1px solid #d5d9de;padding-bottom:6px}
.sub{color:#5b6670;margin:0 0 18px}
.badge{display:inline-block;padding:3px 10px;border-radius:4px;color:#fff;font-weight:600;font-size:14px;
 vertical-align:middle;margin-left:10px}
.passed,.pass{background:#2e7d32}.failed,.diverged{background:#c62828}.flaky{background:#f9a825;color:#1d2329}
.not-run,.incomplete{background:#6d7a86}.regressed{background:#8e24aa}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
.card{background:#fff;border-radius:8px;padding:12px 18px;min-width:130px;box-shadow:0 1px 2px rgba(0,0,0,.08)}
.card b{display:block;font-size:26px} .card span{color:#5b6670;font-size:13px}
table{border-collapse:collapse;background:#fff;font-size:14px;box-shadow:0 1px 2px rgba(0,0,0,.08)}
th,td{padding:5px 10px;border-bottom:1px solid #e6e8eb;text-align:left} th{background:#eef0f3}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.bar{background:#e6e8eb;width:160px;height:12px;border-radius:6px;overflow:hidden;display:inline-block}
.bar i{display:block;height:100%;background:#2e7d32}
img{max-width:100%;background:#fff;border-radius:6px;box-shadow:0 1px 2px rgba(0,0,0,.08)}
.trials{display:grid;grid-template-columns:repeat(auto-fill,minmax(620px,1fr));gap:16px}
.trial{background:#fff;border-radius:8px;padding:12px 16px;box-shadow:0 1px 2px rgba(0,0,0,.08)}
.trial h3{margin:0 0 6px;font-size:16px} .trial p{margin:4px 0;font-size:14px}
pre{background:#1d2329;color:#e8eaed;padding:8px 10px;border-radius:6px;white-space:pre-wrap;word-break:break-all;
 font-size:12px}
.flags li{margin:4px 0} .ok{color:#2e7d32} .note{color:#5b6670;font-size:13px}
details{margin-top:12px} summary{cursor:pointer;font-weight:600}
"""


@dataclass(frozen=True)
class PageImages:
    """The page's figures as PNG bytes (see :mod:`chaos.figures`); ``curves`` by trial name."""

    distributions: bytes
    kinds: bytes
    trend: bytes | None = None
    curves: Mapping[str, bytes] = field(default_factory=dict)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(png: bytes | None, alt: str) -> str:
    return f'<img src="{data_uri(png)}" alt="{escape(alt)}">' if png else ""


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{100 * rate:.1f}%"


def _num(value: Any, fmt: str = "{:.3g}", unit: str = "") -> str:
    return "-" if value is None else fmt.format(value) + unit


def _badge(text: str, cls: str | None = None) -> str:
    return f'<span class="badge {escape(cls or text)}">{escape(text.upper())}</span>'


def _header(data: Mapping[str, Any]) -> str:
    c, totals = data.get("campaign", {}), data.get("totals", {})
    regressed = bool((data.get("trend") or {}).get("regressions"))
    bits = [f"seed {c.get('seed')}", f"{c.get('faults_per_trial')} faults per trial"]
    if c.get("budget_s"):
        bits.append(f"budget {c['budget_s']:g} s")
    if c.get("jobs"):
        bits.append(f"{c['jobs']} trials at once")
    if c.get("wall_s") is not None:
        bits.append(f"took {c['wall_s']:.0f} s")
    if c.get("started"):
        bits.append(f"started {c['started']}")
    job = c.get("job") or {}
    if job:
        bits.append(", ".join(f"{k} {v}" for k, v in job.items() if v is not None))
    verdict = str(totals.get("verdict", "pass"))
    return (f"<h1>chaos campaign{_badge(verdict)}{_badge('regressed') if regressed else ''}</h1>"
            f'<p class="sub">{escape("; ".join(bits))}</p>')


def _cards(totals: Mapping[str, Any]) -> str:
    items = [(_pct(totals.get("pass_rate")), "pass rate"), (f"{totals.get('passed', 0)}/{totals.get('run', 0)}",
                                                           "trials passed"),
             (str(totals.get("failed", 0)), "failed"), (str(totals.get("flaky", 0)), "flaky (passed on replay)"),
             (str(totals.get("not_run", 0)), "not run (budget)"),
             (_num(totals.get("restart_latency_median_s"), unit=" s"), "median restart latency"),
             (_num(totals.get("goodput_median")), "median goodput")]
    return '<div class="cards">' + "".join(f"<div class=card><b>{escape(v)}</b><span>{escape(k)}</span></div>"
                                           for v, k in items) + "</div>"


def _trend(data: Mapping[str, Any], trend_png: bytes | None) -> str:
    trend = data.get("trend")
    if trend is None:
        return ""
    nights = trend.get("nights") or []
    flags = trend.get("regressions") or []
    n = len(nights)
    out = [f"<h2>Against the last {n} night{'s' if n != 1 else ''}</h2>" if n else "<h2>Against the nights before</h2>"]
    if not nights:
        out.append('<p class="note">No earlier nights in the history yet: tonight is the first to compare with.</p>')
    elif flags:
        out.append('<ul class="flags">' + "".join(
            f"<li>{_badge('regressed')} <b>{escape(f['kind'])}</b>: {escape(f['message'])}</li>" for f in flags)
            + "</ul>")
    else:
        out.append('<p class="ok">No regression: pass rate, fault kinds, restart latency and goodput are within '
                   "the nights' usual spread.</p>")
    for line in trend.get("unreadable") or []:
        out.append(f'<p class="note">passed over: {escape(line)}</p>')
    out.append(_img(trend_png, "pass rate, restart latency and goodput over the nights"))
    return "".join(out)


def _kinds_table(kinds: Sequence[KindStats]) -> str:
    rows = []
    for k in kinds:
        t = k.tally
        width = 0 if t.pass_rate is None else round(100 * t.pass_rate)
        rows.append(f"<tr><td>{escape(k.kind)}</td><td class=num>{t.run}</td><td class=num>{t.passed}</td>"
                    f"<td class=num>{t.flaky}</td><td class=num>{t.failed}</td><td class=num>{_pct(t.pass_rate)}</td>"
                    f'<td><span class="bar"><i style="width:{width}%"></i></span></td></tr>')
    return ("<table><tr><th>fault kind</th><th>trials</th><th>passed</th><th>flaky</th><th>failed</th>"
            "<th>pass rate</th><th></th></tr>" + "".join(rows) + "</table>")


def _faults(t: Trial) -> str:
    fs = t.get("faults") or []
    if not fs:
        return ", ".join(t.get("kinds") or []) or "none"
    return ", ".join(f"{f['kind']}@{f.get('target_step')}" + (" (missed)" if f.get("missed") else "") for f in fs)


def _trial_card(t: Trial, curve: bytes | None) -> str:
    status = str(t.get("status", TrialStatus.NOT_RUN))
    name = str(t.get("trial", "?"))
    lines = [f"<h3>{escape(name)} {_badge(status)}</h3>",
             f"<p>seed {escape(str(t.get('seed')))}; faults {escape(_faults(t))}; {t.get('restarts', '-')} restarts; "
             f"{_num(t.get('wall_s'), '{:.1f}', ' s')} under the supervisor; goodput {_num(t.get('goodput'))}</p>"]
    if status in (TrialStatus.FAILED, TrialStatus.FLAKY):
        lines.append(f"<p><b>{escape(str(t.get('verdict', '')).upper())}</b> {escape(str(t.get('reason', '')))}</p>")
        replayed = t.get("replayed")
        if replayed:
            lines.append(f"<p>replayed: <b>{escape(str(replayed.get('verdict', 'not run')).upper())}</b> "
                         f"{escape(str(replayed.get('reason', '')))}</p>")
    lines.append(_img(curve, f"{name}: stitched loss over the reference's"))
    if t.get("replay"):
        lines.append(f"<p>replay:</p><pre><code>{escape(str(t['replay']))}</code></pre>")
    lines.append(f'<p class="note">run directory {escape(str(t.get("run_dir", "")))}</p>')
    return '<div class="trial">' + "".join(lines) + "</div>"


def _all_trials(trials: Sequence[Trial]) -> str:
    rows = []
    for t in trials:
        lat = t.get("restart_latency_s") or []
        rows.append(f"<tr><td>{escape(str(t.get('trial')))}</td><td class=num>{escape(str(t.get('seed')))}</td>"
                    f"<td>{escape(_faults(t))}</td><td>{_badge(str(t.get('status', 'not-run')))}</td>"
                    f"<td class=num>{t.get('restarts', '-')}</td><td class=num>{t.get('lost_steps', '-')}</td>"
                    f"<td class=num>{_num(sorted(lat)[len(lat) // 2] if lat else None, '{:.2f}', ' s')}</td>"
                    f"<td class=num>{_num(t.get('goodput'), '{:.3f}')}</td>"
                    f"<td class=num>{_num(t.get('wall_s'), '{:.1f}', ' s')}</td></tr>")
    return (f"<details><summary>all {len(trials)} trials</summary><table><tr><th>trial</th><th>seed</th>"
            "<th>faults</th><th>status</th><th>restarts</th><th>recomputed</th><th>restart latency</th>"
            "<th>goodput</th><th>wall</th></tr>" + "".join(rows) + "</table></details>")


def _shown(trials: Sequence[Trial]) -> tuple[list[Trial], list[Trial]]:
    """The failing trials shown as cards (at most :data:`MAX_CURVES`), and the slowest of the rest."""
    shown_bad = failing(trials)[:MAX_CURVES]
    slow = [t for t in slowest(trials, SLOWEST + len(shown_bad)) if t not in shown_bad][:SLOWEST]
    return shown_bad, slow


def curve_trials(trials: Sequence[Trial]) -> list[Trial]:
    """The trials the page shows with a loss curve: the failing ones, then the slowest."""
    bad, slow = _shown(trials)
    return bad + slow


def campaign_page(data: Mapping[str, Any], images: PageImages) -> str:
    """The whole page for the campaign JSON ``data`` (:func:`chaos.results.campaign_json`, with its
    ``trend`` when there is a history)."""
    trials: Sequence[Trial] = data.get("trials", [])
    bad = failing(trials)
    shown_bad, slow = _shown(trials)
    parts = [_header(data), _cards(data.get("totals", {})), _trend(data, images.trend),
             "<h2>Pass rate per fault kind</h2>", _kinds_table(by_kind(trials)),
             "<h2>Distributions</h2>", _img(images.distributions, "restart latency, steps recomputed, goodput"),
             "<p>" + _img(images.kinds, "goodput per fault kind") + "</p>"]
    parts.append(f"<h2>Failing trials ({len(bad)})</h2>")
    if bad:
        parts.append('<div class="trials">' + "".join(_trial_card(t, images.curves.get(str(t.get("trial"))))
                                                      for t in shown_bad) + "</div>")
        if len(bad) > len(shown_bad):
            parts.append(f'<p class="note">{len(bad) - len(shown_bad)} more in the table below.</p>')
    else:
        parts.append('<p class="ok">Every trial that ran passed.</p>')
    parts.append(f"<h2>Slowest trials ({len(slow)})</h2>")
    parts.append('<div class="trials">' + "".join(_trial_card(t, images.curves.get(str(t.get("trial"))))
                                                  for t in slow) + "</div>")
    parts.append("<h2>Every trial</h2>" + _all_trials(trials))
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>chaos campaign</title>"
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>'
            f"<body><main>{''.join(parts)}</main></body></html>\n")
