"""``runner.Job`` in this process: where its run directory comes from, how it ends (a finished run, a
user's error, a preemption), its checkpoints' cadence and contents, and a crash resumed bit for bit."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import paddle
import pytest

import runner
from checkpoint.state import params_digest
from rundir.exitcodes import ExitCode, UserError
from runner.job import Job, Preempted
from tests.helpers.readers import events, final, losses, stitched


@pytest.fixture(autouse=True)
def own_signals(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A Job takes SIGTERM and SIGINT; give them back to pytest afterwards. No supervisor around."""
    for name in ("RUNNER_RUN_DIR", "RUNNER_CHECKPOINT_EVERY", "RUNNER_CHAOS_ARM", "RUNNER_ATTEMPT", "RUNNER_STANDBY"):
        monkeypatch.delenv(name, raising=False)
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


class Data(paddle.io.Dataset):
    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.x = rng.normal(size=(20, 3)).astype("float32")

    def __len__(self) -> int:
        return 20

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.int64]:
        return self.x[i] + np.random.normal(scale=0.1, size=3).astype("float32"), np.int64(i % 2)


def train(job: Job, epochs: int = 3, *, preempt_at: int | None = None) -> list[float]:
    """4 batches an epoch; the same names for parameters and accumulators in every call."""
    with paddle.utils.unique_name.guard():
        paddle.seed(0)
        np.random.seed(0)
        model = paddle.nn.Sequential(paddle.nn.Linear(3, 4), paddle.nn.Dropout(0.5), paddle.nn.Linear(4, 2))
        loader = job.resumable(paddle.io.DataLoader(Data(), batch_size=5, shuffle=True))
        sched = paddle.optimizer.lr.StepDecay(0.1, step_size=3)
        opt = paddle.optimizer.Adam(sched, parameters=model.parameters())
        job.restore(model=model, optimizer=opt)
        seen = []
        for _ in job.epochs(epochs):
            for x, y in loader:
                loss = paddle.nn.functional.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                opt.clear_grad()
                sched.step()
                if job.steps == preempt_at:
                    job.worker.request_preemption("SIGTERM")
                job.step(loss)
                seen.append(float(loss))
        job.complete()
        return seen


def job_at(run_dir: Path, **kw: Any) -> Job:
    return Job(run_dir=run_dir, argv=["tiny.py"], **kw)


# -- where the run directory comes from ------------------------------------------------------------------


def test_run_dir_from_the_command_line_is_taken_out_of_the_arguments(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["tiny.py", "--epochs", "2", "--run-dir", str(tmp_path / "r")])
    job = Job()
    try:
        assert job.run_dir == tmp_path / "r" and sys.argv == ["tiny.py", "--epochs", "2"]
        assert json.loads((tmp_path / "r" / "job.json").read_text()) == {"job": "tiny.py", "args": ["--epochs", "2"]}
    finally:
        job.close()


def test_run_dir_from_the_supervisor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_RUN_DIR", str(tmp_path / "s"))
    with Job(argv=["tiny.py"], config={"job": "tiny", "lr": 0.1}) as job:
        assert job.run_dir == tmp_path / "s"
    assert json.loads((tmp_path / "s" / "job.json").read_text()) == {"job": "tiny", "lr": 0.1}


@pytest.mark.parametrize(("kw", "env", "code", "message"), [
    ({}, {}, ExitCode.USAGE, "error: no run directory: give --run-dir DIR, or run the job under 'python -m runner'"),
    ({"argv": ["t.py", "--run-dir"]}, {}, ExitCode.USAGE, "error: --run-dir needs a directory"),
    ({"argv": ["t.py", "--run-dir", "a"]}, {"RUNNER_RUN_DIR": "b"}, ExitCode.BAD_CONFIG,
     "error: the run directory is b, but --run-dir names a"),
    ({"argv": ["t.py"]}, {"RUNNER_CHECKPOINT_EVERY": "x"}, ExitCode.BAD_CONFIG,
     "error: RUNNER_CHECKPOINT_EVERY='x': expected a whole number of steps or 'auto'"),
])
def test_a_job_that_cannot_start_says_why_in_one_line(kw: dict[str, Any], env: dict[str, str], code: ExitCode,
                                                      message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["t.py"])
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    if "RUNNER_RUN_DIR" not in env and "argv" in kw and "--run-dir" not in kw["argv"]:
        kw["run_dir"] = tmp_path / "r"
    with pytest.raises(SystemExit) as exc:
        Job(**kw)
    assert exc.value.code == code
    assert capsys.readouterr().err.splitlines() == [message]


def test_another_jobs_run_directory_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with job_at(tmp_path, config={"lr": 0.1}):
        pass
    with pytest.raises(SystemExit) as exc:
        job_at(tmp_path, config={"lr": 0.2})
    assert exc.value.code == ExitCode.BAD_CONFIG
    assert capsys.readouterr().err.strip() == (f"error: {tmp_path} holds a run with lr=0.1, not 0.2; "
                                               "use a new --run-dir")
    with job_at(tmp_path, config={"lr": 0.1}):  # the lock was let go
        pass


def test_a_users_error_is_one_line_and_its_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc, job_at(tmp_path):
        raise UserError("bad data in x.csv", ExitCode.BAD_DATA)
    assert exc.value.code == ExitCode.BAD_DATA
    assert capsys.readouterr().err.splitlines() == ["error: bad data in x.csv"]


def test_main_exits_with_the_jobs_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["t.py", "--run-dir", str(tmp_path)])
    with pytest.raises(SystemExit) as exc:
        runner.main(lambda job: 7)
    assert exc.value.code == 7
    monkeypatch.setattr(sys, "argv", ["t.py", "--run-dir", str(tmp_path)])  # the first took it out
    with pytest.raises(SystemExit) as exc:
        runner.main(lambda job: None)
    assert exc.value.code == 0


def test_calls_out_of_order_are_refused(tmp_path: Path) -> None:
    with job_at(tmp_path) as job:
        with pytest.raises(RuntimeError, match=r"call job.restore\(model=..., optimizer=...\) before training"):
            job.step(1.0)
        with paddle.utils.unique_name.guard():
            model = paddle.nn.Linear(1, 1)
        job.restore(model=model)
        job.start()
        with pytest.raises(RuntimeError, match=r"call job.resumable\(\) before training starts"):
            job.resumable(paddle.io.DataLoader(Data(), batch_size=5))


# -- a whole job --------------------------------------------------------------------------------------------


def test_a_job_journals_checkpoints_and_completes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_CHECKPOINT_EVERY", "5")  # the front door's word wins over the job's
    job = job_at(tmp_path, checkpoint_every=0)
    train(job)
    assert [(r["step"], r["epoch"], r["batch"]) for r in losses(tmp_path)] == [
        (s, s // 4, s % 4) for s in range(12)]
    saved = sorted(e["step"] for e in events(tmp_path, "checkpoint-saved"))
    assert saved == [4, 5, 8, 10, 12]  # every epoch's end, and every 5 steps
    (started,) = events(tmp_path, "attempt-started")
    assert started["total_steps"] == 12 and started["resumed_from_step"] == 0
    f = final(tmp_path)
    assert f["steps"] == 12
    manifest = json.loads((tmp_path / "checkpoints" / "step-000000012" / "MANIFEST.json").read_text())
    assert f["params_sha256"] == manifest["meta"]["params_sha256"]  # the final parameters, as verify compares them
    with pytest.raises(SystemExit) as exc:  # a finished run: exit 0 at once
        job_at(tmp_path)
    assert exc.value.code == 0


def test_a_crashed_job_resumes_bit_for_bit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    want = train(job_at(tmp_path / "ref"))
    monkeypatch.setenv("RUNNER_CHECKPOINT_EVERY", "3")
    monkeypatch.setenv("RUNNER_CHAOS_ARM", json.dumps({"kind": "crash", "step": 7}))
    with pytest.raises(runner.worker.SimulatedDeviceError), job_at(tmp_path / "run") as job:
        train(job)
    monkeypatch.delenv("RUNNER_CHAOS_ARM")
    job = job_at(tmp_path / "run")
    got = train(job)
    assert job.resumed_from == 6  # the checkpoint after 6 steps: epoch 1, batch 2
    assert [r["loss_hex"] for r in stitched(tmp_path / "run").values()] == [float(x).hex() for x in want]
    assert final(tmp_path / "run")["params_sha256"] == final(tmp_path / "ref")["params_sha256"]
    assert len(got) == 6


def test_a_preempted_job_saves_durably_and_exits_75(tmp_path: Path) -> None:
    job = job_at(tmp_path)
    with pytest.raises(Preempted) as exc:
        train(job, preempt_at=5)
    assert exc.value.code == ExitCode.PREEMPTED
    job.close()
    (saved,) = [e for e in events(tmp_path, "checkpoint-saved") if e["step"] == 6]
    assert (saved["asynchronous"], saved["durable"]) == (False, True)
    assert [e["step"] for e in events(tmp_path, "preempted")] == [6]


def test_the_final_digest_is_of_the_models_parameters(tmp_path: Path) -> None:
    job = job_at(tmp_path)
    with paddle.utils.unique_name.guard():
        model = paddle.nn.Linear(2, 2)
    job.restore(model=model)
    job.complete()
    assert final(tmp_path)["params_sha256"] == params_digest({k: v.numpy() for k, v in model.state_dict().items()})


def test_a_loop_of_its_own_journals_the_loaders_epochs(tmp_path: Path) -> None:
    job = job_at(tmp_path, checkpoint_every=0)
    with paddle.utils.unique_name.guard():
        model = paddle.nn.Linear(3, 2)
        opt = paddle.optimizer.SGD(0.1, parameters=model.parameters())
        loader = job.resumable(paddle.io.DataLoader(Data(), batch_size=10))
        job.restore(model=model, optimizer=opt)
        for _ in range(2):
            for x, _y in loader:
                loss = model(x).mean()
                loss.backward()
                opt.step()
                opt.clear_grad()
                job.step(loss)
        job.complete()
    assert [(r["epoch"], r["batch"]) for r in losses(tmp_path)] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert sorted(e["step"] for e in events(tmp_path, "checkpoint-saved")) == [2, 4]  # each epoch's end


# -- where a deferred checkpoint's copy is waited for -------------------------------------------------------------


@pytest.mark.parametrize(("norm", "waits_in"), [(False, "backward"), (True, "forward")])
def test_a_deferred_copy_is_waited_for_at_the_gradients_unless_the_forward_pass_changes_state(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, norm: bool, waits_in: str) -> None:
    """Without batch norm only the optimizer step changes what the copy reads: it may run on through the
    forward pass, and every gradient waits for it; with batch norm the forward pass waits."""
    with paddle.utils.unique_name.guard():
        layers = [paddle.nn.Linear(3, 4), *([paddle.nn.BatchNorm1D(4)] if norm else []), paddle.nn.Linear(4, 2)]
        model = paddle.nn.Sequential(*layers)
        opt = paddle.optimizer.Adam(0.1, parameters=model.parameters())
    with job_at(tmp_path / "r") as job:
        job.restore(model=model, optimizer=opt)
        job.start()
        phase, calls = ["forward"], []
        monkeypatch.setattr(job.worker, "before_update", lambda: calls.append(phase[0]))
        loss = model(paddle.ones([2, 3])).sum()
        phase[0] = "backward"
        loss.backward()
        assert calls and set(calls) == {waits_in}
        assert len(calls) == (1 if norm else len(model.parameters()))
