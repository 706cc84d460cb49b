"""The restart benchmark's arithmetic: the medians of its rounds, and its rows of the size table."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks._restart_size import summarize
from benchmarks.bench_size import restart_rows


def round_(latency: float, dead: float = 0.1, spare: int | None = 100) -> dict[str, Any]:
    return {"latency_s": latency, "restored_s": dead + 0.01, "dead_s": dead, "reaped_s": dead + 0.005,
            "first_step_dt_s": latency - dead - 0.01, "restored_from": "memory", "preapplied": True,
            "spare": None if spare is None else {"rss": spare, "pss": spare, "peak_rss": 2 * spare},
            "worker": {"rss": 300, "pss": 300, "peak_rss": 300}}


def test_summarize_takes_medians_and_the_restart_less_a_step() -> None:
    got = summarize([round_(1.0), round_(3.0), round_(2.0, dead=0.2, spare=150)], step_s=0.5)
    assert got["latency_s"] == 2.0 and got["overhead_s"] == pytest.approx(1.5)
    assert got["dead_s"] == 0.1 and got["restored_from"] == ["memory"]
    assert (got["spare_rss"], got["spare_peak_rss"], got["worker_rss"]) == (150, 300, 300)


def test_no_spare_no_spare_memory() -> None:
    assert "spare_rss" not in summarize([round_(1.0, spare=None)], step_s=0.1)


def test_the_rows_render_every_way_of_restarting() -> None:
    mem = summarize([round_(1.45, dead=0.29)], step_s=0.77)
    disk = summarize([round_(2.54)], step_s=0.98)
    plain = {k: v for k, v in summarize([round_(4.5, spare=None)], step_s=0.9).items()}
    r = {"restart": {"memory": mem, "disk": disk, "fork": plain, "exec": plain,
                     "torchrun": {"skipped": "no torch venv"}}}
    cells = {label.strip(): cell(r, {"memcpy_s_at_state": 0.079}) for label, cell in restart_rows()}
    assert cells["restart (less a step): in-memory spare"] == "1.45 s (680.0 ms)"
    assert cells["torchrun, torch.save/load"] == "-"
    assert cells["target: 2 x memcpy of the state"] == "158.0 ms"
    assert cells["in-memory: worker gone; spare restored"] == "290.0 ms; 5.0 ms"
