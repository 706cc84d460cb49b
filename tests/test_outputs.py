"""chaos/outputs.py: the files a campaign writes - JSON, JUnit, the one summary figure, the HTML page with
a loss curve for each failing and slow trial drawn from its run directory - and an output that cannot be
written, said in one line with exit code 73."""

from __future__ import annotations

import argparse
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from chaos.history import Trend
from chaos.outputs import curve_of, trial_curves, write_outputs
from rundir.exitcodes import ExitCode, UserError
from rundir.names import LOSSES
from runner.trace import Verdict, load_trace
from tests.helpers.factories import chaos_report, rec, trace_of, trial_record, write_jsonl

PNG = b"\x89PNG\r\n\x1a\n"


def trials_in(tmp: Path) -> list[dict]:
    """Three trials whose run directories hold a loss journal (the failing one's diverges at step 4)."""
    out = []
    for i, verdict in ((1, Verdict.PASS), (2, Verdict.DIVERGED), (3, Verdict.PASS)):
        t = trial_record(i, chaos_report(verdict, "sigkill", wall_s=10.0 + i), replayed=None if i != 2 else "x")
        t["run_dir"] = str(tmp / t["trial"])
        (tmp / t["trial"]).mkdir()
        write_jsonl(tmp / t["trial"] / LOSSES, [rec(s, 2.0 - s / 10 + (1 if i == 2 and s >= 4 else 0))
                                                for s in range(8)])
        out.append(t)
    return out


def ns(tmp: Path, **outputs: str) -> argparse.Namespace:
    return argparse.Namespace(**{k: (tmp / v if v else None) for k, v in
                                 {"junit": None, "json": None, "plot": None, "html": None, **outputs}.items()})


def test_each_output_asked_for_is_written(tmp_path: Path) -> None:
    trials = trials_in(tmp_path)
    ref = trace_of([rec(s, 2.0 - s / 10) for s in range(8)])
    data = write_outputs(ns(tmp_path, junit="o/c.xml", json="o/c.json", plot="o/c.png", html="o/c.html"), trials,
                         {"seed": 3}, Trend(), [], ref)
    assert json.loads((tmp_path / "o/c.json").read_text()) == json.loads(json.dumps(data))
    assert data["trend"] == {"nights": [], "regressions": [], "unreadable": []}
    assert len(ET.parse(tmp_path / "o/c.xml").getroot().findall("testsuite/testcase")) == 3
    assert (tmp_path / "o/c.png").read_bytes().startswith(PNG)
    html = (tmp_path / "o/c.html").read_text()
    assert html.count("data:image/png;base64,") == 2 + 3  # two figures, three curves (one failing, two slow)
    assert trials[1]["replay"] in html


def test_nothing_is_written_unless_asked(tmp_path: Path) -> None:
    data = write_outputs(ns(tmp_path), trials_in(tmp_path), {}, None, [], trace_of([rec(0, 1.0)]))
    assert "trend" not in data and sorted(p.name for p in tmp_path.iterdir()) == ["trial-001", "trial-002",
                                                                                  "trial-003"]


def test_curves_come_from_the_run_directories(tmp_path: Path) -> None:
    trials = trials_in(tmp_path)
    assert curve_of(load_trace(tmp_path / "trial-002"))[1][3:5] == [1.7, 2.6]
    curves = trial_curves(trials, trace_of([rec(s, 2.0 - s / 10) for s in range(8)]))
    assert sorted(curves) == ["trial-001", "trial-002", "trial-003"]
    assert all(png.startswith(PNG) for png in curves.values())
    del trials[0]["run_dir"]
    assert sorted(trial_curves(trials, trace_of([]))) == ["trial-002", "trial-003"]  # no run directory: no curve


def test_an_output_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="cannot write .*file/c.json") as e:
        write_outputs(ns(tmp_path, json="file/c.json"), [], {}, None, [], trace_of([]))
    assert e.value.code is ExitCode.UNWRITABLE
