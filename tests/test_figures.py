"""chaos/figures.py: each figure is a PNG of the size it promises, with something drawn on it, for a
campaign of any size - none, one trial, 200 trials, trials with no restart - and a blank image is
told apart from a drawn one (the check the page's screenshot test relies on too)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from matplotlib.image import imread

from chaos.figures import curve_png, distributions_png, kinds_png, summary_png, trend_png
from runner.trace import Verdict
from tests.helpers.factories import chaos_report, many_trials, trial_record

PNG = b"\x89PNG\r\n\x1a\n"


def pixels(png: bytes) -> np.ndarray:
    assert png.startswith(PNG)
    return imread(io.BytesIO(png), format="png")


def drawn(png: bytes) -> bool:
    """Not one flat colour: some pixels differ from the rest."""
    return float(pixels(png)[..., :3].std()) > 0.01


CAMPAIGNS = {"none": [], "200": many_trials(200),
             "no restarts": [trial_record(1, chaos_report(Verdict.PASS, "sigkill", latency=(), lost=0))],
             "not run only": [trial_record(1, None, kinds=["hang"])]}


@pytest.mark.parametrize("name", list(CAMPAIGNS))
@pytest.mark.parametrize(("figure", "size"), [(summary_png, (440, 1500)), (distributions_png, (400, 1500)),
                                              (kinds_png, (360, 1500))])
def test_the_campaign_figures(name: str, figure: Any, size: tuple[int, int]) -> None:
    png = figure(CAMPAIGNS[name])
    assert pixels(png).shape[:2] == size and drawn(png)


def test_a_curve_marks_its_faults_and_its_divergence() -> None:
    ref = (list(range(30)), [2.0 - s / 30 for s in range(30)])
    run = (list(range(30)), [2.0 - s / 30 + (0.1 if s > 20 else 0) for s in range(30)])
    faults = [{"kind": "sigkill", "target_step": 5, "hit_step": 5}, {"kind": "hang", "target_step": 9, "missed": True}]
    png = curve_png(ref, run, faults, "trial-001: failed", first_divergent_step=21, failed=True)
    assert pixels(png).shape[:2] == (288, 675) and drawn(png)
    assert drawn(curve_png(ref, ([], []), [], "nothing ran"))


def test_the_trend() -> None:
    nights = [{"time": f"2025-01-0{d}T03:17:00", "pass_rate": 1.0, "restart_latency_median_s": 0.4 + d / 100,
               "goodput_median": 0.6} for d in range(1, 8)] + [{"time": "2025-01-08T03:17:00", "pass_rate": None}]
    png = trend_png(nights)
    assert pixels(png).shape[:2] == (340, 1500) and drawn(png)


def test_a_blank_image_is_told_apart() -> None:
    from matplotlib.figure import Figure

    blank = io.BytesIO()
    Figure(figsize=(2, 2)).savefig(blank, format="png")
    assert not drawn(blank.getvalue())
