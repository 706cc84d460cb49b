"""The chaos report: numbers from hand-made events, journals and fault hits (pure), its JSON, and the
rich rendering of it."""

from __future__ import annotations

import io
import json
import re

import pytest
from rich.console import Console

from chaos.report import (
    ChaosReport,
    EpochRow,
    ReportView,
    build_report,
    epoch_rows,
    reference_compute_s,
    restart_latencies,
)
from runner.trace import compare
from tests.helpers.factories import rec, trace_of

STEPS_PER_EPOCH = 4
EPOCHS = 3
DIGEST = "ab" * 32
JOB = {"job": "mnist-cnn", "data": "builtin:sklearn-digits", "epochs": EPOCHS, "seed": 0, "chaos_seed": 7}


def loss(step: int) -> float:
    return 2.0 - step / 8


def ref_records() -> list[dict]:
    # One step a second from t=100; the first step took 0.5 s.
    return [rec(s, loss(s), epoch=s // STEPS_PER_EPOCH, time=100.0 + s, dt=0.5)
            for s in range(STEPS_PER_EPOCH * EPOCHS)]


def sup(event: str, attempt: int, t: float, **fields) -> dict:
    return {"time": t, "source": "supervisor", "event": event, "attempt": attempt, **fields}


# A run of 4 attempts: SIGKILL after step 4, SIGTERM after step 7 (exits preempted), a hang after step 9.
# Attempt 2 resumed from 4 and recomputed step 4; attempt 3 resumed from 8; attempt 4 from 9 (recomputed 9).
EVENTS = [
    sup("attempt-spawned", 1, 200.0),
    {"time": 203.0, "source": "worker", "event": "attempt-started", "attempt": 1, "resumed_from_step": 0},
    sup("chaos-fault", 1, 210.0, signal="SIGKILL", fault="sigkill", target_step=4),
    sup("attempt-exited", 1, 210.2, exit_class="killed"),
    sup("restart", 1, 210.3),
    sup("attempt-spawned", 2, 210.4),
    sup("chaos-fault", 2, 220.0, signal="SIGTERM", fault="sigterm", target_step=7),
    # not the supervisor's: ignored
    {"time": 220.5, "source": "worker", "event": "chaos-fault", "attempt": 2, "signal": "SIGKILL"},
    sup("attempt-exited", 2, 221.0, exit_class="preempted"),
    sup("attempt-spawned", 3, 221.1),
    sup("chaos-fault", 3, 225.0, signal="SIGSTOP", fault="hang", target_step=9),
    sup("hang-detected", 3, 228.0),
    sup("attempt-exited", 3, 228.1, exit_class="hung"),
    sup("attempt-spawned", 4, 228.2),
    sup("attempt-exited", 4, 240.0, exit_class="completed"),
]
RUN_RECORDS = (
    [rec(s, loss(s), epoch=s // 4, attempt=1, time=205.0 + s) for s in range(0, 6)]
    + [rec(s, loss(s), epoch=s // 4, attempt=2, time=212.5 + s) for s in range(4, 8)]
    + [rec(s, loss(s), epoch=s // 4, attempt=3, time=223.0 + s) for s in range(8, 10)]
    + [rec(s, loss(s), epoch=s // 4, attempt=4, time=229.5 + s) for s in range(9, 12)]
)
HITS = [
    {"kind": "sigkill", "target_step": 4, "attempt": 1, "hit_step": 4, "time": 210.0, "effect": None, "missed": False},
    {"kind": "sigterm", "target_step": 7, "attempt": 2, "hit_step": 7, "time": 220.0, "effect": None, "missed": False},
    {"kind": "hang", "target_step": 9, "attempt": 3, "hit_step": 9, "time": 225.0, "effect": None, "missed": False},
]


def make_report(run_records=RUN_RECORDS, hits=HITS, run_digest=DIGEST, wall_s=40.0, replay="python -m runner ...",
                events=EVENTS) -> ChaosReport:
    reference, run = trace_of(ref_records(), DIGEST), trace_of(run_records, run_digest)
    return build_report(job=JOB, reference=reference, run=run, comparison=compare(reference, run), events=events,
                        records=run_records, hits=hits, wall_s=wall_s, replay=replay)


def render(report: ChaosReport) -> str:
    out = io.StringIO()
    Console(file=out, width=100).print(ReportView(report))
    return out.getvalue()


# -- the numbers --------------------------------------------------------------------------------------------


def test_restart_latencies_from_each_kill_to_the_next_first_step() -> None:
    # SIGKILL 210.0 -> attempt 2's first step at 216.5; SIGTERM: the preempted exit at 221.0 -> 231.0;
    # hang detected at 228.0 -> 238.5.
    assert restart_latencies(EVENTS, RUN_RECORDS) == pytest.approx([6.5, 10.0, 10.5])


def test_restart_latency_uses_the_exit_when_no_kill_was_sent() -> None:
    events = [sup("attempt-exited", 1, 50.0, exit_class="crashed"),
              sup("attempt-exited", 2, 70.0, exit_class="completed")]
    records = [rec(0, 1.0, attempt=1, time=45.0), rec(0, 1.0, attempt=2, time=52.25)]
    assert restart_latencies(events, records) == pytest.approx([2.25])


def test_restart_latency_prefers_the_sigkill_to_the_exit_it_caused() -> None:
    events = [sup("chaos-fault", 1, 50.0, signal="SIGKILL"), sup("attempt-exited", 1, 50.5, exit_class="killed")]
    records = [rec(0, 1.0, attempt=1, time=45.0), rec(0, 1.0, attempt=2, time=53.0)]
    assert restart_latencies(events, records) == pytest.approx([3.0])


def test_no_restart_no_latency() -> None:
    assert restart_latencies([sup("attempt-exited", 1, 9.0, exit_class="completed")], [rec(0, 1.0, time=1.0)]) == []
    # A last attempt that died with no attempt after it (the supervisor gave up).
    assert restart_latencies([sup("attempt-exited", 1, 9.0, exit_class="crashed")], [rec(0, 1.0, time=1.0)]) == []
    assert restart_latencies([], []) == []


def test_reference_compute_time() -> None:
    assert reference_compute_s(trace_of(ref_records())) == pytest.approx(11.5)  # 100.0 .. 111.0, plus 0.5
    assert reference_compute_s(trace_of([])) == 0.0


def test_epoch_rows_compare_means_and_place_the_faults() -> None:
    rows = epoch_rows(trace_of(ref_records()), trace_of(RUN_RECORDS), HITS)
    assert [r.epoch for r in rows] == [0, 1, 2]
    for r, steps in zip(rows, ([0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11])):
        assert r.reference_mean == pytest.approx(sum(loss(s) for s in steps) / 4)
        assert r.run_mean == r.reference_mean and r.max_abs_diff == 0.0 and r.exact
    # Each fault is placed at the step it hit (the step after the last completed one).
    assert [r.faults for r in rows] == [(), ("sigkill@5",), ("sigterm@8", "hang@10")]


def test_epoch_rows_flag_a_difference_and_a_missing_step() -> None:
    run = [rec(s, loss(s) + (0.25 if s == 9 else 0.0), epoch=s // 4) for s in range(12) if s != 2]
    rows = epoch_rows(trace_of(ref_records()), trace_of(run), [])
    assert [r.exact for r in rows] == [False, True, False]
    assert rows[0].run_mean == pytest.approx((loss(0) + loss(1) + loss(3)) / 3)
    assert rows[0].max_abs_diff == 0.0  # what is there matches; the missing step makes it inexact
    assert rows[2].max_abs_diff == pytest.approx(0.25)
    # An epoch the run never reached.
    rows = epoch_rows(trace_of(ref_records()), trace_of(run[:3]), [])
    assert (rows[2].run_mean, rows[2].max_abs_diff, rows[2].exact) == (None, None, False)


def test_epoch_rows_skip_missed_faults_and_place_unhit_ones_at_their_target() -> None:
    hits = [
        {"kind": "crash", "target_step": 6, "attempt": 2, "hit_step": None, "missed": False},
        {"kind": "hang", "target_step": 10, "attempt": None, "hit_step": None, "missed": True},
        {"kind": "sigkill", "target_step": 11, "attempt": 3, "hit_step": 11, "missed": False},  # past the end
    ]
    rows = epoch_rows(trace_of(ref_records()), trace_of(ref_records()), hits)
    assert [r.faults for r in rows] == [(), ("crash@6",), ("sigkill@12",)]


def test_build_report() -> None:
    r = make_report()
    assert r.verdict == "pass" and r.comparison.bit_exact
    assert r.restarts == 3  # four attempts spawned
    assert r.lost_steps == 3  # steps 4, 5 and 9 were computed twice
    assert r.restart_latency_s == pytest.approx((6.5, 10.0, 10.5))
    assert r.reference_compute_s == pytest.approx(11.5)
    assert r.goodput == pytest.approx(11.5 / 40.0)
    assert len(r.epochs) == EPOCHS and all(isinstance(e, EpochRow) for e in r.epochs)
    assert r.faults == tuple(HITS)
    assert r.job == JOB


def test_goodput_of_no_wall_time_is_zero() -> None:
    assert make_report(wall_s=0.0).goodput == 0.0


def test_a_run_with_no_restarts() -> None:
    records = [rec(s, loss(s), epoch=s // 4, time=300.0 + s) for s in range(12)]
    r = make_report(records, hits=[], events=[sup("attempt-spawned", 1, 299.0),
                                              sup("attempt-exited", 1, 320.0, exit_class="completed")])
    assert (r.restarts, r.lost_steps, r.restart_latency_s, r.faults) == (0, 0, (), ())
    assert r.verdict == "pass"


# -- JSON ---------------------------------------------------------------------------------------------------


def test_to_json_has_the_verdict_the_faults_and_the_costs() -> None:
    d = json.loads(json.dumps(make_report().to_json()))  # plain JSON all the way down
    assert d["verdict"] == "pass" and d["bit_exact"] is True
    assert d["steps_compared"] == 12 and d["first_divergent_step"] is None
    assert [(f["kind"], f["target_step"], f["attempt"], f["hit_step"], f["missed"]) for f in d["faults"]] == [
        ("sigkill", 4, 1, 4, False), ("sigterm", 7, 2, 7, False), ("hang", 9, 3, 9, False)]
    assert d["restarts"] == 3
    assert d["restart_latency_s"] == [6.5, 10.0, 10.5]
    assert d["lost_steps"] == 3
    assert d["goodput"] == pytest.approx(0.2875)
    assert d["wall_s"] == 40.0
    assert d["reference_compute_s"] == 11.5
    assert d["comparison"]["params_equal"] is True
    assert d["job"] == JOB
    assert d["replay"] == "python -m runner ..."
    assert [e["epoch"] for e in d["epochs"]] == [0, 1, 2]
    assert d["epochs"][2]["faults"] == ["sigterm@8", "hang@10"] and d["epochs"][1]["exact"] is True


def test_to_json_of_a_failed_run() -> None:
    records = [dict(r) for r in RUN_RECORDS]
    records[-2] = rec(10, 1.0, epoch=2, attempt=4, time=239.5)
    d = make_report(records, run_digest="cd" * 32).to_json()
    assert (d["verdict"], d["bit_exact"], d["first_divergent_step"]) == ("diverged", False, 10)
    assert d["reason"] == f"at step 10: reference loss {loss(10).hex()}, run loss {(1.0).hex()}"
    assert d["comparison"]["reference_value"] == loss(10).hex() and d["comparison"]["run_value"] == (1.0).hex()
    assert [e["exact"] for e in d["epochs"]] == [True, True, False]


def test_extra_fields_are_merged_into_the_json() -> None:
    r = make_report()
    r2 = ChaosReport(**{**r.__dict__, "extra": {"trial": 3}})
    assert r2.to_json()["trial"] == 3


# -- the rich view -------------------------------------------------------------------------------------------


def table_rows(text: str) -> dict[int, str]:
    """The per-epoch table's rows, by epoch: lines that start with a table border and an epoch number."""
    return {int(m.group(1)): line for line in text.splitlines() if (m := re.match(r"^│\s+(\d+) │", line))}


def test_the_view_of_a_passing_run() -> None:
    text = render(make_report())
    for label, value in [
        ("job", "mnist-cnn, 3 epochs, 12 steps"),
        ("data", "builtin:sklearn-digits"),
        ("seeds", "training 0, chaos 7"),
        ("faults", "sigkill x1: step 5"),
        ("restarts", "3"),
        ("steps recomputed", "3"),
        ("restart latency", "median 10.00 s, max 10.50 s"),
        ("wall time", "40.0 s (reference trained in 11.5 s)"),
        ("goodput", "0.287"),
    ]:
        assert re.search(rf"│ {re.escape(label)}\s+{re.escape(value)}", text), f"no {label!r} row:\n{text}"
    assert "sigterm x1: step 8" in text and "hang x1: step 10" in text
    rows = table_rows(text)
    assert sorted(rows) == [0, 1, 2]
    assert all("✓" in row and "✗" not in row for row in rows.values())
    assert "sigkill@5" in rows[1] and "sigterm@8, hang@10" in rows[2]
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines[-1] == "PASS bit-exact: 12 steps and the final parameters match the reference"
    assert "DIVERGED" not in text and "INCOMPLETE" not in text and "replay:" not in text


def test_the_view_names_the_rank_a_gangs_fault_was_aimed_at() -> None:
    hits = [{**HITS[0], "rank": 1}, *HITS[1:]]
    text = render(make_report(hits=hits))
    assert "sigkill x1: step 5 (rank 1)" in text and text.count("(rank") == 1  # one aimed, two at the whole
    assert make_report(hits=hits).to_json()["faults"][0]["rank"] == 1


def test_the_view_of_a_failing_run_names_the_first_divergent_step() -> None:
    records = [dict(r) for r in RUN_RECORDS]
    records[-2] = rec(10, 1.0, epoch=2, attempt=4, time=239.5)
    text = render(make_report(records, run_digest="cd" * 32, replay="python -m runner --chaos-replay X"))
    rows = table_rows(text)
    assert "✓" in rows[0] and "✓" in rows[1] and "✗" in rows[2] and "✓" not in rows[2]
    verdict = [line for line in text.splitlines() if line.startswith(("PASS", "DIVERGED", "INCOMPLETE"))]
    assert verdict == [f"DIVERGED at step 10: reference loss {loss(10).hex()}, run loss {(1.0).hex()}"]
    assert "replay: python -m runner --chaos-replay X" in text
    assert "PASS" not in text


def test_the_view_of_a_run_that_differs_only_in_parameters() -> None:
    text = render(make_report(run_digest="cd" * 32))
    assert all("✓" in row for row in table_rows(text).values())
    assert "DIVERGED every loss matches but the final parameters differ" in text


def test_the_view_with_no_faults_and_missed_ones() -> None:
    assert re.search(r"│ faults\s+none", render(make_report(hits=[])))
    missed = [*HITS, {"kind": "crash", "target_step": 10, "attempt": None, "hit_step": None, "missed": True}]
    text = render(make_report(hits=missed))
    assert "crash x1: missed (target 10)" in text
    records = [rec(s, loss(s), epoch=s // 4, time=300.0 + s) for s in range(12)]
    text = render(make_report(records, hits=[], events=[sup("attempt-spawned", 1, 299.0)]))
    assert re.search(r"│ restart latency\s+-", text)


# -- malformed records and preemption notices ------------------------------------------------------------------


def test_malformed_events_and_records_are_skipped_and_counted() -> None:
    bad_events = [sup("attempt-exited", "x", 230.0, exit_class="killed"),  # attempt not an integer
                  {"source": "supervisor", "event": "hang-detected"},  # no attempt, no time: skipped by the latency
                  {"event": 5}, sup("chaos-fault", 2, "late", signal="SIGKILL")]
    bad_records = [{"step": "x", "loss": 1.0}, {"step": 3}, {"step": 4, "loss": 1.0, "attempt": "two", "time": 1.0}]
    r = make_report(run_records=RUN_RECORDS + bad_records, events=EVENTS + bad_events)
    assert r.verdict == "pass"
    assert r.restart_latency_s == pytest.approx((6.5, 10.0, 10.5))  # as without them
    assert (r.skipped_events, r.skipped_records) == (3, 3)
    assert r.to_json()["skipped_records"] == {"losses": 3, "events": 3}
    assert re.search(r"│ malformed records\s+3 in losses.jsonl, 3 in events.jsonl \(skipped\)", render(r))
    assert "malformed records" not in render(make_report())


def test_restart_latencies_pass_over_malformed_records() -> None:
    events = [sup("attempt-exited", 1, 50.0, exit_class="crashed"), sup("attempt-exited", "1", 50.0),
              {"source": "supervisor", "event": "hang-detected", "time": 1.0}]
    records = [rec(0, 1.0, attempt=1, time=45.0), {"step": 0, "loss": 1.0, "attempt": 2, "time": "x"},
               {"step": 0, "loss": 1.0, "attempt": 2}, rec(0, 1.0, attempt=2, time=52.25)]
    assert restart_latencies(events, records) == pytest.approx([2.25])


def test_reference_compute_time_without_times() -> None:
    assert reference_compute_s(trace_of([{"step": 0, "loss": 1.0}, {"step": 1, "loss": 0.5}])) == 0.0


NOTICE_EVENTS = [
    sup("attempt-spawned", 1, 200.0),
    {"time": 200.5, "source": "worker", "event": "attempt-started", "attempt": 1, "resumed_from_step": 0},
    sup("chaos-fault", 1, 210.0, signal="SIGTERM", fault="sigterm", target_step=7, last_step=7),
    sup("attempt-exited", 1, 211.0, exit_class="preempted"),
    sup("attempt-spawned", 2, 211.1),
]


@pytest.mark.parametrize(("resumed", "lost"), [(8, 0), (9, 0), (4, 4)])
def test_steps_lost_per_notice_in_the_report(resumed: int, lost: int) -> None:
    events = [*NOTICE_EVENTS, {"time": 211.2, "source": "worker", "event": "attempt-started", "attempt": 2,
                               "resumed_from_step": resumed}]
    r = make_report(events=events)
    d = r.to_json()
    assert d["steps_lost_per_notice"] == [{"attempt": 1, "last_step": 7, "resumed_from_step": resumed,
                                           "steps_lost": lost}]
    text = render(r)
    assert re.search(rf"│ steps lost per notice\s+{lost} \(attempt 1: 8 steps done at the notice, "
                     rf"resumed from {resumed}\)", text), text
    verdict = [line for line in text.splitlines() if line.startswith(("PASS", "DIVERGED", "INCOMPLETE"))]
    if lost:
        assert r.verdict == "diverged" and d["verdict"] == "diverged" and d["bit_exact"] is True
        assert verdict == [f"DIVERGED a preemption notice lost {lost} steps (attempt 1 had done 8, the next "
                           f"resumed from {resumed})"]
        assert "replay: python -m runner ..." in text
    else:
        assert r.verdict == "pass" and verdict[0].startswith("PASS bit-exact")


def test_the_view_of_an_incomplete_run() -> None:
    events = [*EVENTS[:5], sup("gave-up", 1, 211.0, reason="giving up: crash loop")]
    r = make_report(run_records=RUN_RECORDS[:6], run_digest=None, events=events)
    assert r.verdict == "incomplete" and r.to_json()["verdict"] == "incomplete"
    text = render(r)
    assert "INCOMPLETE the run is missing 6 of 12 steps (from step 6)" in text
    assert "None" not in [line for line in text.splitlines() if line.startswith("INCOMPLETE")][0]


# -- a cloud's notice: no step lost, and the state committed before the machine goes -----------------------

CLOUD_HIT = {"kind": "notice", "target_step": 7, "attempt": 1, "hit_step": 7, "time": 210.0, "missed": False,
             "effect": "aws metadata server: preempted, reclaimed in 5 s", "deadline": 215.0}


def cloud_events(committed_at: float | None, resumed: int = 9, acted: bool = True) -> list[dict]:
    evs = [sup("attempt-spawned", 1, 200.0),
           {"time": 200.5, "source": "worker", "event": "attempt-started", "attempt": 1, "resumed_from_step": 0},
           sup("chaos-fault", 1, 210.0, fault="notice", target_step=7, last_step=7, effect=CLOUD_HIT["effect"])]
    if acted:
        evs += [sup("preemption-notice", 1, 210.1, notice="aws", reaction="act", last_step=8, deadline=215.0,
                    received=210.05),
                sup("notice-handled", 1, 210.4, committed_at=committed_at)]
    else:
        evs.append({"time": 216.5, "source": "worker", "event": "job-completed", "attempt": 1})
    return [*evs, sup("attempt-exited", 1, 210.5, exit_class="preempted"), sup("attempt-spawned", 2, 212.0),
            {"time": 212.5, "source": "worker", "event": "attempt-started", "attempt": 2, "resumed_from_step": resumed}]


NOTICE_CASES = {
    "saved-in-time": (cloud_events(210.3), "pass", None),
    "committed-after-the-deadline": (cloud_events(215.5), "diverged",
                                     "a cloud's preemption notice (attempt 1) saw the state committed 0.50 s after "
                                     "its deadline"),
    "never-committed-steps-lost": (cloud_events(None, resumed=5), "diverged",
                                   "a preemption notice lost 4 steps (attempt 1 had done 9, the next resumed from 5)"),
    "never-acted-on": (cloud_events(None, acted=False), "diverged",
                       "saw the state committed 1.50 s after its deadline, and the supervisor never acted on it"),
}


FINISHED_FIRST = [*cloud_events(None)[:4],  # acted on, but the worker finished the job before its SIGTERM came
                  {"time": 211.0, "source": "worker", "event": "job-completed", "attempt": 1},
                  sup("attempt-exited", 1, 211.1, exit_class="completed")]
NOTICE_CASES["the-job-finished-first"] = (FINISHED_FIRST, "pass", None)


@pytest.mark.parametrize(("events", "verdict", "reason"), NOTICE_CASES.values(), ids=NOTICE_CASES.keys())
def test_a_cloud_notice_in_the_verdict(events: list[dict], verdict: str, reason: str | None) -> None:
    r = make_report(events=events, hits=[CLOUD_HIT])
    assert r.verdict == verdict, r.judgement.reason
    if reason is not None:
        assert reason in r.judgement.reason
    (n,) = r.to_json()["steps_lost_per_notice"]
    assert n["kind"] == "notice" and n["deadline"] == 215.0  # the fake cloud's own deadline


def test_a_cloud_notice_in_the_view() -> None:
    d = make_report(events=cloud_events(210.3), hits=[CLOUD_HIT]).to_json()["steps_lost_per_notice"]
    assert d == [{"attempt": 1, "last_step": 8, "resumed_from_step": 9, "steps_lost": 0, "kind": "notice",
                  "deadline": 215.0, "received": 210.05, "committed_at": 210.3, "made_deadline": True}]
    text = " ".join(line.strip("│ ") for line in render(make_report(events=cloud_events(210.3), hits=[CLOUD_HIT]))
                    .splitlines())
    assert re.search(r"0 \(attempt 1: 9 steps done at the notice, resumed from 9\), committed 0.25\s+s after the "
                     r"notice, 4.70 s before the deadline", text), text


def test_a_notice_that_the_job_outran_in_the_view() -> None:
    text = " ".join(line.strip("│ ") for line in render(make_report(events=FINISHED_FIRST, hits=[CLOUD_HIT]))
                    .splitlines())
    assert "0 (attempt 1: 9 steps done at the notice, it finished the job), finished 0.95 s after" in text, text
