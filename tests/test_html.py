"""chaos/html.py: the campaign's page from hand-made campaign JSON - the verdict and pass rate, the rate
per fault kind, the failing trials with their replay commands and curves, the slowest, the regressions,
every trial in a folded table; nothing fetched from outside (a page that would fetch is caught), and text
from the trials escaped. Rendered in a real headless browser where Debian's chromium is installed."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest
from matplotlib.figure import Figure

from chaos.figures import distributions_png, kinds_png, trend_png
from chaos.html import MAX_CURVES, SLOWEST, PageImages, campaign_page, curve_trials, data_uri
from chaos.results import campaign_json
from runner.trace import Verdict
from tests.helpers.factories import chaos_report, many_trials, trial_record
from tests.helpers.processes import CHROMIUM, screenshot


def tiny_png(colour: str = "red") -> bytes:
    fig = Figure(figsize=(0.2, 0.2))
    fig.patch.set_facecolor(colour)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def campaign(n: int = 12, failing: tuple[int, ...] = (3,), flaky: tuple[int, ...] = (), not_run: tuple[int, ...] = (),
             trend: dict[str, Any] | None = None) -> dict[str, Any]:
    trials = []
    for i in range(1, n + 1):
        if i in not_run:
            trials.append(trial_record(i, None, kinds=["hang"]))
            continue
        bad = i in failing or i in flaky
        replay = f"python -m runner --simulate-preemption --chaos-replay /c/trial-{i:03d}/chaos-schedule.json"
        r = chaos_report(Verdict.DIVERGED if bad else Verdict.PASS, "sigkill", "hang" if i % 2 else "crash",
                         wall_s=5.0 + i, replay=replay + " --epochs 5")
        trials.append(trial_record(i, r, replayed=("pass" if i in flaky else "diverged") if bad else None))
    config = {"seed": 20250102, "faults_per_trial": 2, "budget_s": 900.0, "jobs": 2, "wall_s": 880.0,
              "job": {"job": "mnist-cnn", "epochs": 5}}
    return campaign_json(trials, config, trend)


def page(data: dict[str, Any], **images: Any) -> str:
    curves = {str(t["trial"]): tiny_png("blue") for t in curve_trials(data["trials"])}
    return campaign_page(data, PageImages(distributions=tiny_png(), kinds=tiny_png(), curves=curves, **images))


def external_refs(html: str) -> list[str]:
    """Every src, href or CSS url() that would fetch something: anything but a data URI or an anchor."""
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", html, re.I)
    refs += re.findall(r"""url\(\s*["']?([^"')]+)""", html, re.I)
    return [r for r in refs if not r.startswith(("data:", "#"))]


def test_the_page_says_the_verdict_and_the_pass_rate() -> None:
    html = page(campaign())
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert 'class="badge diverged">DIVERGED</span>' in html
    assert "<b>91.7%</b><span>pass rate</span>" in html and "<b>11/12</b>" in html
    assert "seed 20250102; 2 faults per trial; budget 900 s; 2 trials at once; took 880 s" in html


def test_the_pass_rate_per_kind() -> None:
    html = page(campaign())
    rows = re.findall(r"<tr><td>([a-z-]+)</td><td class=num>(\d+)</td><td class=num>(\d+)</td>", html)
    assert rows[:3] == [("sigkill", "12", "11"), ("hang", "6", "5"), ("crash", "6", "6")]


def test_a_failing_trial_has_its_replay_command_and_its_curve() -> None:
    data = campaign()
    html = page(data)
    failing = data["trials"][2]
    assert failing["trial"] == "trial-003" and failing["status"] == "failed"
    section = html.split("<h2>Failing trials (1)</h2>")[1].split("<h2>")[0]
    assert "trial-003" in section and f"<code>{failing['replay']}</code>" in section
    assert "DIVERGED</b>" in section and "replayed: <b>DIVERGED</b>" in section
    assert data_uri(tiny_png("blue")) in section


def test_flaky_and_not_run_trials_are_listed_as_such() -> None:
    html = page(campaign(flaky=(5,), not_run=(9,)))
    assert "<h2>Failing trials (2)</h2>" in html
    assert 'trial-005 <span class="badge flaky">FLAKY</span>' in html
    assert "replayed: <b>PASS</b>" in html
    assert '<td>trial-009</td>' in html and 'class="badge not-run">NOT-RUN</span>' in html
    assert "<b>1</b><span>not run (budget)</span>" in html


def test_the_slowest_trials_are_shown_with_their_curves() -> None:
    html = page(campaign())
    section = html.split("<h2>Slowest trials")[1].split("<h2>")[0]
    assert re.findall(r"<h3>(trial-\d+)", section) == ["trial-012", "trial-011", "trial-010", "trial-009",
                                                       "trial-008"][:SLOWEST]


def test_at_200_trials_the_page_stays_readable() -> None:
    data = campaign(200, failing=tuple(range(2, 200, 4)))  # 50 failing
    html = page(data)
    assert len(re.findall(r'<div class="trial"><h3>', html)) == MAX_CURVES + SLOWEST
    assert f"{50 - MAX_CURVES} more in the table below" in html
    assert html.count("<tr><td>trial-") == 200  # every trial, in the folded table
    assert "<details><summary>all 200 trials</summary>" in html


def test_regressions_are_shown() -> None:
    trend = {"nights": ["a", "b", "c"], "regressions": [
        {"kind": "restart-latency", "message": "the median restart latency went up to 3.2 s from a median of 0.5 s"}],
        "unreadable": ["chaos-x.json: not a night's summary"]}
    html = page(campaign(trend=trend), trend=tiny_png("green"))
    assert "<h2>Against the last 3 nights</h2>" in html and 'class="badge regressed">REGRESSED' in html
    assert "went up to 3.2 s" in html and "passed over: chaos-x.json" in html
    assert data_uri(tiny_png("green")) in html
    quiet = page(campaign(trend={"nights": ["a"], "regressions": []}))
    assert "No regression" in quiet and "REGRESSED" not in quiet
    assert "No earlier nights" in page(campaign(trend={"nights": [], "regressions": []}))
    assert "Against the last" not in page(campaign())  # no history: no section


def test_nothing_is_fetched_from_outside() -> None:
    html = page(campaign(trend={"nights": ["a"], "regressions": []}), trend=tiny_png())
    assert external_refs(html) == []
    assert not re.search(r"""(src|href)\s*=\s*["']?https?://""", html, re.I)
    assert "<script" not in html and "<link" not in html


@pytest.mark.parametrize("planted", ['<img src="https://cdn.example/x.png">', '<link href="http://x/s.css">',
                                     "<div style=\"background:url('https://x/y.png')\"></div>"])
def test_a_page_that_would_fetch_is_caught(planted: str) -> None:
    assert external_refs(page(campaign()).replace("</main>", planted + "</main>"))


def test_text_from_the_trials_is_escaped() -> None:
    data = campaign()
    data["trials"][2]["reason"] = "<script>alert(1)</script> & more"
    html = page(data)
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in html


# -- in a real browser -------------------------------------------------------------------------------------

@pytest.mark.e2e
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_headless_chromium_renders_the_page(tmp_path: Path) -> None:
    trials = many_trials(200)
    data = campaign_json(trials, {"seed": 1, "faults_per_trial": 2})
    nights = [{"time": f"2025-01-0{d}T03:17", "pass_rate": 1.0, "restart_latency_median_s": 0.5,
               "goodput_median": 0.6} for d in range(1, 9)]
    images = PageImages(distributions=distributions_png(trials), kinds=kinds_png(trials), trend=trend_png(nights),
                        curves={str(t["trial"]): tiny_png("blue") for t in curve_trials(trials)})
    html_file = tmp_path / "r.html"
    html_file.write_text(campaign_page(dict(data, trend={"nights": nights, "regressions": []}), images))
    shot = screenshot(html_file, tmp_path / "out.png")
    assert shot.shape[:2] == (2000, 1400)
    assert float(shot[..., :3].std()) > 0.05, "the page rendered blank"
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    assert float(screenshot(blank, tmp_path / "blank.png")[..., :3].std()) < 0.01  # the check can fail
