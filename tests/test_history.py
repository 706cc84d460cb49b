"""chaos/history.py: tonight against the nights before, as tables of night summaries (a pass-rate drop,
a fault kind that newly fails, a slower restart, a lower goodput, each beyond the nights' own spread),
comparisons that must not flag (noise within the spread, a first night), broken comparisons caught,
and the history directory (one file per night, the last N read back, a bad file passed over)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from chaos.history import (
    LIMITS,
    Limit,
    RegressionKind,
    compare_nights,
    load_nights,
    mad,
    night_file,
    save_night,
)


def night(pass_rate: float | None = 1.0, latency: float | None = 0.5, goodput: float | None = 0.6,
          **kinds: tuple[int, int]) -> dict[str, Any]:
    """A night's summary; ``kinds``: kind=(run, did not pass), e.g. ``sigkill=(10, 0)``."""
    ks = {k.replace("_", "-"): {"run": run, "passed": run - bad, "failed": bad, "flaky": 0}
          for k, (run, bad) in (kinds or {"sigkill": (10, 0)}).items()}
    return {"format": 1, "time": "t", "pass_rate": pass_rate, "restart_latency_median_s": latency,
            "goodput_median": goodput, "kinds": ks}


WEEK = [night(latency=x, goodput=g) for x, g in ((0.50, 0.60), (0.55, 0.62), (0.48, 0.58), (0.52, 0.61),
                                                  (0.60, 0.59), (0.47, 0.63), (0.51, 0.60))]


@pytest.mark.parametrize(("tonight", "nights", "flagged"), [
    (night(), [], []),  # the first night: nothing to compare with
    (night(latency=0.53, goodput=0.59), WEEK, []),  # within the spread
    (night(pass_rate=0.95), WEEK, [RegressionKind.PASS_RATE]),
    (night(latency=3.2), WEEK, [RegressionKind.LATENCY]),  # a slower restart
    (night(latency=0.9), WEEK, []),  # slower, but within the floor (0.5 s)
    (night(latency=0.2), WEEK, []),  # faster is never a regression
    (night(goodput=0.3), WEEK, [RegressionKind.GOODPUT]),
    (night(goodput=0.9), WEEK, []),
    (night(pass_rate=0.9, sigkill=(10, 0), sigterm=(10, 1)), [night(sigkill=(10, 0), sigterm=(10, 0))] * 3,
     [RegressionKind.PASS_RATE, RegressionKind.KIND_FAILS]),  # sigterm newly fails
    (night(pass_rate=0.9, sigterm=(10, 1)), [night(sigterm=(10, 0)), night(pass_rate=0.8, sigterm=(10, 2))],
     []),  # it failed before, and the pass rate is within its spread
    (night(pass_rate=0.9, hang=(10, 1)), [night(sigkill=(10, 0))],
     [RegressionKind.PASS_RATE, RegressionKind.KIND_FAILS]),  # a kind that never ran before
    (night(pass_rate=None, latency=None, goodput=None), WEEK, []),  # nothing ran tonight: nothing to say
    (night(latency=3.0), [night(latency=None)] * 3, []),  # no latency measured before
])
def test_compare_nights(tonight: dict[str, Any], nights: list[dict[str, Any]],
                        flagged: list[RegressionKind]) -> None:
    assert [r.kind for r in compare_nights(tonight, nights).regressions] == flagged


def test_the_allowed_spread_comes_from_the_nights() -> None:
    noisy = [night(latency=x) for x in (0.5, 1.5, 0.6, 2.0, 0.4, 1.8, 0.9)]  # median 0.9, MAD 0.5
    assert mad([0.5, 1.5, 0.6, 2.0, 0.4, 1.8, 0.9]) == pytest.approx(0.5)
    assert [r.kind for r in compare_nights(night(latency=2.3), noisy).regressions] == []  # within 3 MAD
    (r,) = compare_nights(night(latency=2.5), noisy).regressions
    assert (r.kind, r.baseline, r.allowed, r.tonight) == (RegressionKind.LATENCY, 0.9, pytest.approx(1.5), 2.5)
    assert r.message == ("the median restart latency went up to 2.5 s from a median of 0.9 s over 7 nights "
                         "(allowed: 1.5 s)")


def test_one_odd_night_does_not_widen_the_spread() -> None:
    nights = [night(latency=0.5)] * 6 + [night(latency=9.0)]
    assert [r.kind for r in compare_nights(night(latency=1.5), nights).regressions] == [RegressionKind.LATENCY]


def test_a_kind_that_newly_fails_says_so() -> None:
    (_, r) = compare_nights(night(pass_rate=0.9, sigterm=(10, 2)), [night(sigterm=(10, 0))] * 2).regressions
    assert r.message == "sigterm newly fails: 2 of 10 trials with it did not pass; it passed in all 2 nights before"
    (_, r) = compare_nights(night(pass_rate=0.9, crash=(4, 1)), [night()]).regressions
    assert r.message.endswith("it never ran in the nights before")


@pytest.mark.parametrize(("broken", "tonight"), [
    ({"latency": Limit(floor=1e9)}, night(latency=3.2)),  # a floor so high nothing is ever flagged
    ({"goodput": Limit(mads=1e9)}, night(goodput=0.3)),
])
def test_a_comparison_that_never_flags_is_caught(broken: dict[str, Limit], tonight: dict[str, Any]) -> None:
    assert compare_nights(tonight, WEEK).regressions
    assert not compare_nights(tonight, WEEK, {**LIMITS, **broken}).regressions


def test_the_trend_as_json() -> None:
    t = compare_nights(night(latency=3.2), WEEK[:2])
    d = t.to_json()
    assert d["nights"] == ["t", "t"] and [r["kind"] for r in d["regressions"]] == ["restart-latency"]
    assert set(d["regressions"][0]) == {"kind", "message", "tonight", "baseline", "allowed"}


# -- the history directory ---------------------------------------------------------------------------------


def test_nights_are_kept_one_file_each_and_read_back_in_order(tmp_path: Path) -> None:
    for day in range(1, 11):
        save_night(tmp_path, dict(night(latency=day / 10), time=f"day {day}"), datetime(2025, 1, day, 3, 17))
    assert night_file(datetime(2025, 1, 2, 3, 17, 5)) == "chaos-20250102-031705.json"
    assert (tmp_path / "chaos-20250103-031700.json").is_file()
    nights, unreadable = load_nights(tmp_path, 7)
    assert [n["time"] for n in nights] == [f"day {d}" for d in range(4, 11)] and unreadable == []
    assert load_nights(tmp_path / "none", 7) == ([], [])


def test_a_second_run_in_the_same_second_keeps_both(tmp_path: Path) -> None:
    when = datetime(2025, 1, 1, 3, 17)
    a, b = save_night(tmp_path, night(), when), save_night(tmp_path, night(), when)
    assert a != b and a.is_file() and b.is_file()


def test_a_bad_night_is_passed_over_and_said(tmp_path: Path) -> None:
    save_night(tmp_path, night(), datetime(2025, 1, 1))
    (tmp_path / "chaos-20250102-000000.json").write_text("{not json")
    (tmp_path / "chaos-20250103-000000.json").write_text(json.dumps({"format": 99}))
    (tmp_path / "notes.txt").write_text("not a night")
    nights, unreadable = load_nights(tmp_path, 7)
    assert len(nights) == 1
    assert [u.split(":")[0] for u in unreadable] == ["chaos-20250103-000000.json", "chaos-20250102-000000.json"]
