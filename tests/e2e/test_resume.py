"""The core proof, with real processes, signals and files: a job stopped at any point and resumed in a new
process produces the bit-identical loss trace and parameters of an uninterrupted run, and the comparison
does catch a resume that leaves out part of the state."""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from checkpoint.state import TrainState, params_digest
from checkpoint.storage import LocalStorage
from checkpoint.store import MANIFEST, CheckpointStore, checkpoint_name
from rundir.exitcodes import ExitCode
from runner.worker import EVENTS, LOSSES, PAUSED_PHASE, read_heartbeat
from tests.e2e.runs import ARGS2, EVERY4, STEPS2, STEPS3, Runs2, Runs3, copy_run
from tests.helpers.processes import describe, run_job, seeded_run_dir, start_job, wait_for
from tests.helpers.readers import (
    assert_bit_exact,
    committed_steps,
    count_lines,
    events,
    final,
    first_divergence,
    loss_trace,
    losses,
    resumed_from,
    stitched,
)

pytestmark = pytest.mark.e2e


def checkpoint_state(run_dir: Path, step: int) -> TrainState:
    store = CheckpointStore(LocalStorage(run_dir))
    return TrainState.from_checkpoint(store.verify(checkpoint_name(step)))


# -- the reference itself -------------------------------------------------------------------------------


def test_reference_run_is_complete_and_its_last_checkpoint_is_the_final_model(runs2: Runs2) -> None:
    recs = losses(runs2.reference)
    assert [r["step"] for r in recs] == list(range(STEPS2))
    assert {r["attempt"] for r in recs} == {1}
    assert [(r["epoch"], r["batch"]) for r in recs] == [(e, b) for e in range(2) for b in range(15)]
    assert all(float.fromhex(r["loss_hex"]) == r["loss"] for r in recs)
    # It learns: a bug that feeds the wrong labels or never steps the optimizer shows here.
    assert np.mean([r["loss"] for r in recs[-5:]]) < 0.5 * np.mean([r["loss"] for r in recs[:5]])
    assert resumed_from(runs2.reference) == [0]
    assert committed_steps(runs2.reference) == [15, 30]
    last = checkpoint_state(runs2.reference, STEPS2)
    assert (last.step, last.epoch, last.batch) == (STEPS2, 2, 0)
    assert params_digest(last.model) == final(runs2.reference)["params_sha256"]


def test_a_finished_run_is_not_trained_again(runs2: Runs2, tmp_path: Path) -> None:
    run_dir = copy_run(runs2.reference, tmp_path / "run")
    p = run_job(run_dir, *ARGS2)
    assert p.returncode == 0, describe(p)
    assert "already complete" in p.stdout
    assert count_lines(run_dir / LOSSES) == STEPS2


# -- resuming after a crash ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("crashed", "args", "resume_step", "position"),
    [
        pytest.param("crashed_epoch_end", ARGS2, 15, (1, 0), id="epoch-boundary"),
        pytest.param("crashed_mid_epoch", (*ARGS2, *EVERY4), 20, (1, 5), id="mid-epoch"),
    ],
)
def test_resume_after_crash_is_bit_exact(
    runs2: Runs2, tmp_path: Path, crashed: str, args: tuple, resume_step: int, position: tuple[int, int]
) -> None:
    run_dir = copy_run(getattr(runs2, crashed), tmp_path / "run")
    st = checkpoint_state(run_dir, resume_step)
    assert (st.step, st.epoch, st.batch) == (resume_step, *position)

    p = run_job(run_dir, *args)
    assert p.returncode == 0, describe(p)
    assert resumed_from(run_dir) == [0, resume_step]
    second = [r["step"] for r in losses(run_dir) if r["attempt"] == 2]
    assert second == list(range(resume_step, STEPS2))
    assert_bit_exact(run_dir, runs2.reference, STEPS2)


def test_sigterm_checkpoints_at_the_step_reached_and_resumes_with_nothing_recomputed(
    runs2: Runs2, tmp_path: Path
) -> None:
    run_dir = seeded_run_dir(tmp_path / "run", runs2.reference)
    proc = start_job(run_dir, *ARGS2)
    try:
        wait_for(lambda: count_lines(run_dir / LOSSES) >= 8, proc=proc, what="8 steps")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == ExitCode.PREEMPTED, describe(proc, out, err)
    reached = len(losses(run_dir))
    assert 8 <= reached < STEPS2, "SIGTERM came too late to test a preemption"
    assert [e["step"] for e in events(run_dir, "preempted")] == [reached]
    assert committed_steps(run_dir)[-1] == reached
    assert checkpoint_state(run_dir, reached).step == reached

    p = run_job(run_dir, *ARGS2)
    assert p.returncode == 0, describe(p)
    assert resumed_from(run_dir) == [0, reached]
    repeated = [s for s, n in Counter(r["step"] for r in losses(run_dir)).items() if n > 1]
    assert repeated == [], "steps were recomputed after a preemption"
    assert_bit_exact(run_dir, runs2.reference, STEPS2)


# -- the comparison can fail ----------------------------------------------------------------------------

# A step's loss is computed before that step's update. So a resume with the wrong data order or position
# shows in the loss of the first resumed step, while a wrong optimizer or LR schedule only changes that
# step's update, and so the loss of the step after it.
FIRST_WRONG_STEP = {None: None, "optimizer": +1, "lr-scheduler": +1, "data-rng": 0, "paddle-rng": 0, "numpy-rng": 0,
                    "data-position": 0}


@pytest.mark.parametrize("kind", list(FIRST_WRONG_STEP), ids=lambda k: k or "correct-control")
def test_a_broken_resume_is_caught_by_the_trace_comparison(runs3: Runs3, kind: str | None) -> None:
    run_dir, reference = runs3.resumed[kind], runs3.reference
    assert resumed_from(run_dir) == [0, runs3.resume_step]
    want, got = loss_trace(reference), loss_trace(run_dir)
    assert list(want) == list(range(STEPS3))
    offset = FIRST_WRONG_STEP[kind]
    if offset is None:
        assert_bit_exact(run_dir, reference, STEPS3)
        return
    assert first_divergence(want, got) == runs3.resume_step + offset
    assert final(run_dir)["params_sha256"] != final(reference)["params_sha256"]
    if kind == "lr-scheduler":
        # The step's own learning rate is already wrong at the resume step.
        assert first_divergence(stitched(reference), stitched(run_dir), "lr") == runs3.resume_step


# -- torn and corrupt checkpoints -------------------------------------------------------------------------


def test_sigkill_during_a_checkpoint_write_resumes_from_the_previous_checkpoint(
    runs2: Runs2, tmp_path: Path
) -> None:
    run_dir = seeded_run_dir(tmp_path / "run", runs2.reference)
    proc = start_job(run_dir, *ARGS2, *EVERY4, arm={"kind": "checkpoint-write", "step": 8})
    try:
        hb = wait_for(
            lambda: (h := read_heartbeat(run_dir)) and h.get("phase") == PAUSED_PHASE and h,
            proc=proc, what="the paused checkpoint write",
        )
        assert hb["step"] == 8 and hb["pid"] == proc.pid
        os.kill(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, describe(proc, out, err)
    torn = run_dir / "checkpoints" / checkpoint_name(8)
    assert torn.is_dir() and (torn / "model.safetensors").is_file()
    assert not (torn / MANIFEST).exists()
    assert committed_steps(run_dir) == [4]
    assert [e["after_file"] for e in events(run_dir, "chaos-paused-in-checkpoint-write")] == ["model.safetensors"]

    p = run_job(run_dir, *ARGS2, *EVERY4)
    assert p.returncode == 0, describe(p)
    assert "warning:" not in p.stdout  # a checkpoint without its manifest was never committed: no fallback
    assert resumed_from(run_dir) == [0, 4]
    assert_bit_exact(run_dir, runs2.reference, STEPS2)


def test_corrupt_newest_checkpoint_is_moved_aside_with_a_warning_and_the_older_one_used(
    runs2: Runs2, tmp_path: Path
) -> None:
    run_dir = copy_run(runs2.crashed_mid_epoch, tmp_path / "run")
    newest = run_dir / "checkpoints" / checkpoint_name(20)
    data = bytearray((newest / "model.safetensors").read_bytes())
    data[-5] ^= 0x01  # one bit of one weight: the file still parses, only the checksum can tell
    (newest / "model.safetensors").write_bytes(bytes(data))

    p = run_job(run_dir, *ARGS2, *EVERY4)
    assert p.returncode == 0, describe(p)
    warnings = [line for line in p.stdout.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, p.stdout
    assert f"{checkpoint_name(20)}/model.safetensors" in warnings[0]
    assert "xxh3-128 mismatch" in warnings[0]
    assert resumed_from(run_dir) == [0, 16]
    quarantined = run_dir / "checkpoints" / f"corrupt-{checkpoint_name(20)}-0"
    assert (quarantined / "model.safetensors").read_bytes() == bytes(data)
    assert [e["reason"] for e in events(run_dir, "checkpoint-fallback")] == [warnings[0].removeprefix("warning: ")]
    assert (run_dir / EVENTS).exists()
    assert_bit_exact(run_dir, runs2.reference, STEPS2)


# -- export ---------------------------------------------------------------------------------------------


def test_export_paddle_loads_into_a_fresh_model_and_optimizer(runs2: Runs2, tmp_path: Path) -> None:
    import paddle
    import paddle.nn.functional as F

    from checkpoint import paddle_state as ps
    from model.config import TrainConfig
    from model.data import prepare
    from model.train import build

    ckpt = CheckpointStore(LocalStorage(runs2.reference)).load_latest()
    assert ckpt is not None and ckpt.step == STEPS2
    state = TrainState.from_checkpoint(ckpt)
    params_path, opt_path = ps.export_paddle(state, tmp_path / "export" / "mnist")
    assert (params_path.name, opt_path.name) == ("mnist.pdparams", "mnist.pdopt")

    cfg = TrainConfig(epochs=2)

    def fresh() -> tuple[paddle.nn.Layer, paddle.optimizer.Adam]:
        with paddle.utils.unique_name.guard():  # parameter names as in a fresh process
            return build(cfg, 8, STEPS2)

    model, opt = fresh()
    assert params_digest(ps.model_arrays(model)) != final(runs2.reference)["params_sha256"]
    model.set_state_dict(paddle.load(str(params_path)))
    opt.set_state_dict(paddle.load(str(opt_path)))

    got = ps.model_arrays(model)
    assert sorted(got) == sorted(state.model)
    for k, v in state.model.items():
        assert np.array_equal(got[k], v), k
    assert params_digest(got) == final(runs2.reference)["params_sha256"]
    opt_arrays, sched = ps.optimizer_arrays(opt)
    assert sorted(opt_arrays) == sorted(state.optimizer)
    for k, v in state.optimizer.items():
        assert np.array_equal(opt_arrays[k], v), k
    assert sched == dict(state.lr_scheduler) and sched["last_epoch"] == STEPS2

    # One more step from the export equals one more step from the worker's own restore path, and
    # differs from one with a fresh optimizer: the exported Adam state is really in use.
    data = prepare(None, runs2.reference)
    x, y = paddle.to_tensor(data.train_x[:100]), paddle.to_tensor(data.train_y[:100])

    def one_step(m: paddle.nn.Layer, o: paddle.optimizer.Adam) -> str:
        with paddle.utils.unique_name.guard():  # Adam names its moments on the first step
            F.cross_entropy(m(x), y).backward()
            o.step()
            o.clear_grad()
        return params_digest(ps.model_arrays(m))

    restored, restored_opt = fresh()
    ps.load_model(restored, state.model)
    ps.load_optimizer(restored_opt, state.optimizer, state.lr_scheduler)
    plain, plain_opt = fresh()
    ps.load_model(plain, state.model)
    ps.load_optimizer(plain_opt, None, state.lr_scheduler)
    after_export = one_step(model, opt)
    assert after_export == one_step(restored, restored_opt)
    assert after_export != one_step(plain, plain_opt)
