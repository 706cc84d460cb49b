"""Stitching a loss journal and comparing traces bit for bit, on hand-made tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.trace import Comparison, Verdict, compare, load_trace, stitch
from runner.worker import FINAL, LOSSES
from tests.helpers.factories import rec, trace_of, write_jsonl

LOSSES_10 = [2.5 - 0.1 * i for i in range(10)]
DIGEST = "ab" * 32


def reference(n: int = 10) -> list[dict]:
    return [rec(i, LOSSES_10[i], epoch=i // 5) for i in range(n)]


# -- stitch -----------------------------------------------------------------------------------------------


def test_stitch_keeps_the_latest_record_of_each_step() -> None:
    a1 = [rec(i, 1.0 + i, attempt=1) for i in range(6)]  # attempt 1 reached step 5, then died
    a2 = [rec(i, 2.0 + i, attempt=2) for i in range(4, 8)]  # attempt 2 resumed from step 4
    out = stitch(a1 + a2)
    assert list(out) == list(range(8))
    assert [out[s]["attempt"] for s in out] == [1, 1, 1, 1, 2, 2, 2, 2]
    assert out[5]["loss"] == 7.0


def test_stitch_sorts_by_step_and_skips_malformed_steps() -> None:
    out = stitch([{"step": 3, "loss": 0.3}, {"step": "1", "loss": 0.1}, {"step": 2, "loss": 0.2}])
    assert list(out) == [2, 3]  # a step that is a string is a wrong type: the record is malformed
    assert stitch([]) == {}


def test_trace_counts_recomputed_steps() -> None:
    t = trace_of([rec(i, 1.0) for i in range(6)] + [rec(i, 1.0, attempt=2) for i in range(3, 10)])
    assert len(t.steps) == 10 and t.records == 13 and t.recomputed == 3


# -- compare ----------------------------------------------------------------------------------------------


def test_identical_traces_pass() -> None:
    c = compare(trace_of(reference(), DIGEST), trace_of(reference(), DIGEST))
    assert c == Comparison(10, (), (), None, None, None, True, reference_steps=10)
    assert c.losses_equal and c.bit_exact and c.verdict is Verdict.PASS and c.verdict == "pass"
    assert c.explain() == "bit-exact: 10 steps and the final parameters match the reference"
    assert c.to_json() == {"verdict": "pass", "bit_exact": True, "steps_compared": 10, "first_divergent_step": None,
                           "reference_value": None, "run_value": None, "missing_steps": 0, "extra_steps": 0,
                           "params_equal": True,
                           "reason": "bit-exact: 10 steps and the final parameters match the reference",
                           "first_missing_step": None, "config_differences": [], "run_finished": True,
                           "reference_finished": True, "run_stop_reason": None,
                           "skipped_records": {"run": 0, "reference": 0}}


def test_a_stitched_run_with_recomputed_steps_passes() -> None:
    run = reference(7) + [rec(i, LOSSES_10[i], epoch=i // 5, attempt=2) for i in range(5, 10)]
    c = compare(trace_of(reference(), DIGEST), trace_of(run, DIGEST))
    assert c.bit_exact and c.steps_compared == 10


@pytest.mark.parametrize("step", [0, 4, 9])
def test_one_loss_differs(step: int) -> None:
    run = reference()
    changed = LOSSES_10[step] + 1e-12  # the smallest visible change still counts
    run[step] = rec(step, changed, epoch=step // 5)
    c = compare(trace_of(reference(), DIGEST), trace_of(run, DIGEST))
    assert c.first_divergent_step == step
    assert c.reference_value == LOSSES_10[step].hex()
    assert c.run_value == changed.hex()
    assert c.reference_value != c.run_value
    assert not c.losses_equal and not c.bit_exact and c.verdict is Verdict.DIVERGED
    assert c.steps_compared == 10 and c.missing == () and c.extra == ()
    assert c.explain() == f"at step {step}: reference loss {LOSSES_10[step].hex()}, run loss {changed.hex()}"
    assert c.judgement.line() == f"DIVERGED {c.explain()}"
    j = c.to_json()
    assert (j["verdict"], j["bit_exact"], j["first_divergent_step"]) == ("diverged", False, step)


def test_the_first_of_several_differences_is_named() -> None:
    run = [rec(i, LOSSES_10[i] + (1.0 if i in (3, 6, 8) else 0.0)) for i in range(10)]
    assert compare(trace_of(reference()), trace_of(run)).first_divergent_step == 3


def test_the_latest_record_of_a_recomputed_step_is_compared() -> None:
    # Attempt 1 wrote a wrong loss for step 5 and died; attempt 2 recomputed it correctly.
    run = reference(5) + [rec(5, 99.0)] + [rec(i, LOSSES_10[i], attempt=2) for i in range(5, 10)]
    assert compare(trace_of(reference()), trace_of(run)).bit_exact
    # ... and the other way round: a correct first record does not hide a wrong recomputation.
    run = reference(7) + [rec(5, 99.0, attempt=2)] + [rec(i, LOSSES_10[i], attempt=2) for i in range(6, 10)]
    c = compare(trace_of(reference()), trace_of(run))
    assert c.first_divergent_step == 5 and c.run_value == (99.0).hex()


def test_a_missing_step() -> None:
    run = [r for r in reference() if r["step"] != 6]
    c = compare(trace_of(reference(), DIGEST), trace_of(run, DIGEST))
    assert c.missing == (6,) and c.extra == ()
    # A missing step is not a divergence: nothing was computed to differ.
    assert c.first_divergent_step is None and c.reference_value is None and c.run_value is None
    assert not c.losses_equal and not c.bit_exact
    assert c.steps_compared == 9 and c.verdict is Verdict.INCOMPLETE
    assert c.explain() == "the run is missing 1 of 10 steps (step 6)"
    assert c.to_json()["missing_steps"] == 1 and c.to_json()["first_missing_step"] == 6


def test_a_run_that_stopped_early() -> None:
    c = compare(trace_of(reference(), DIGEST), trace_of(reference(7), None))
    assert c.missing == (7, 8, 9) and c.first_divergent_step is None
    assert not c.params_equal and c.verdict is Verdict.INCOMPLETE
    assert c.explain() == "the run is missing 3 of 10 steps (from step 7)"
    assert "None" not in c.explain()


def test_an_extra_step() -> None:
    run = reference() + [rec(10, 0.5)]
    c = compare(trace_of(reference(), DIGEST), trace_of(run, DIGEST))
    assert c.extra == (10,) and c.missing == ()
    assert c.first_divergent_step == 10
    assert c.reference_value is None and c.run_value == (0.5).hex()
    assert c.steps_compared == 10 and c.verdict is Verdict.DIVERGED
    assert c.explain() == f"at step 10: the reference has no step 10, the run does (loss {(0.5).hex()})"
    assert c.to_json()["extra_steps"] == 1


def test_params_digest_differs() -> None:
    c = compare(trace_of(reference(), DIGEST), trace_of(reference(), "cd" * 32))
    assert c.losses_equal is True
    assert c.params_equal is False and c.bit_exact is False and c.verdict is Verdict.DIVERGED
    assert c.first_divergent_step is None
    assert c.explain() == "every loss matches but the final parameters differ"
    assert c.to_json()["params_equal"] is False


@pytest.mark.parametrize(("ref_digest", "run_digest"), [(None, None), (DIGEST, None), (None, DIGEST)])
def test_no_digest_is_never_equal(ref_digest, run_digest) -> None:
    c = compare(trace_of(reference(), ref_digest), trace_of(reference(), run_digest))
    assert c.losses_equal and not c.params_equal and not c.bit_exact
    # A run (or reference) without final.json never finished: incomplete, not a divergence.
    assert c.verdict is Verdict.INCOMPLETE
    assert ("reference never finished" in c.explain()) == (ref_digest is None)


def test_loss_hex_falls_back_to_the_float() -> None:
    ref = [{"step": i, "loss": LOSSES_10[i]} for i in range(10)]  # an old journal without loss_hex
    assert compare(trace_of(ref, DIGEST), trace_of(reference(), DIGEST)).bit_exact
    run = [dict(r) for r in ref]
    run[2]["loss"] += 1e-15
    c = compare(trace_of(ref, DIGEST), trace_of(run, DIGEST))
    assert c.first_divergent_step == 2 and c.run_value == run[2]["loss"].hex()


def test_empty_traces() -> None:
    c = compare(trace_of([], DIGEST), trace_of([], DIGEST))
    assert c.steps_compared == 0 and c.bit_exact


# -- load_trace -----------------------------------------------------------------------------------------


def test_load_trace_reads_the_journal_and_the_final_digest(tmp_path: Path) -> None:
    records = reference(6) + [rec(i, LOSSES_10[i], attempt=2) for i in range(4, 10)]
    write_jsonl(tmp_path / LOSSES, records)
    (tmp_path / FINAL).write_text(json.dumps({"steps": 10, "params_sha256": DIGEST, "attempt": 2}))
    t = load_trace(tmp_path)
    assert list(t.steps) == list(range(10))
    assert t.records == 12 and t.recomputed == 2
    assert t.params_sha256 == DIGEST
    assert t.steps[5]["attempt"] == 2


def test_load_trace_tolerates_a_torn_last_line(tmp_path: Path) -> None:
    write_jsonl(tmp_path / LOSSES, reference(5), torn='{"step": 5, "epoch": 1, "loss": 1.9, "loss_h')
    t = load_trace(tmp_path)
    assert list(t.steps) == [0, 1, 2, 3, 4] and t.records == 5
    assert t.params_sha256 is None  # never completed: no final.json


def test_load_trace_skips_garbage_and_records_without_a_loss(tmp_path: Path) -> None:
    (tmp_path / LOSSES).write_text(
        json.dumps(rec(0, 1.0)) + "\n" + "not json\n" + json.dumps({"step": 1}) + "\n"
        + json.dumps([1, 2]) + "\n" + json.dumps(rec(1, 0.9)) + "\n"
    )
    (tmp_path / FINAL).write_text("{torn")
    t = load_trace(tmp_path)
    assert list(t.steps) == [0, 1] and t.records == 2 and t.params_sha256 is None


def test_load_trace_of_an_empty_directory(tmp_path: Path) -> None:
    t = load_trace(tmp_path)
    assert t.steps == {} and t.records == 0 and t.params_sha256 is None
