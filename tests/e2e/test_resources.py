"""Resource faults and non-finite values end to end, with real processes: a supervised run whose run
directory is a small tmpfs that fills mid-run waits, says so once, and finishes bit-exactly once space
returns; with no space back it gives up with exit 74 in one line, and a rerun after space returns
finishes bit-exactly. A job that computes a NaN stops with exit 76, is not retried, is not complete,
and keeps its last good checkpoint. The disk-full chaos fault passes bit-exactly.

The tmpfs tests need root (to mount); they are skipped elsewhere."""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

import pytest

from checkpoint.storage import LocalStorage
from checkpoint.store import CheckpointStore
from rundir.names import FINAL
from tests.helpers.processes import TIMEOUT as RUN_TIMEOUT
from tests.helpers.processes import describe, job_cmd, run, run_runner, runner_cmd, seeded_run_dir, start
from tests.helpers.readers import events, final, loss_trace, losses
from tests.helpers.tmpfs import ballast, tmpfs

pytestmark = pytest.mark.e2e

JOB = ("--epochs", 5, "--checkpoint-every-steps", 5)
STEPS = 75
#: What the ballast leaves free on a 3 MiB tmpfs holding the prepared data: about two checkpoints of the
#: built-in job (172 KiB each, in pages) and the journals, so the disk fills around step 15 of 75.
ROOM = 400 * 1024
SGD = Path(__file__).resolve().parents[1] / "jobs" / "sgd.py"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ref = tmp_path_factory.mktemp("resources-reference") / "run"
    p = run(job_cmd(ref, *JOB))
    assert p.returncode == 0, describe(p)
    return ref


def assert_matches_reference(run_dir: Path, reference: Path) -> None:
    trace, ref = loss_trace(run_dir), loss_trace(reference)
    assert list(trace) == list(range(STEPS)), "steps missing from the stitched trace"
    assert trace == ref, f"loss differs at steps {[s for s in ref if trace.get(s) != ref[s]][:10]}"
    assert final(run_dir)["params_sha256"] == final(reference)["params_sha256"]


def classes(run_dir: Path) -> list[str]:
    return [e["exit_class"] for e in events(run_dir, "attempt-exited", source="supervisor")]


def no_traceback(*texts: str) -> bool:
    return not any("Traceback" in t for t in texts)


def test_a_full_disk_is_waited_out_and_the_run_finishes_bit_exact(tmp_path: Path, reference: Path) -> None:
    with tmpfs(tmp_path / "disk", "3m") as disk:
        run_dir = seeded_run_dir(disk / "run", reference)
        ballast(disk / "ballast", ROOM)
        sup = start(runner_cmd(run_dir, *JOB, "--disk-wait", 60))
        said: list[str] = []

        def follow() -> None:  # frees the space once the supervisor says it waits for some
            assert sup.stdout is not None
            for line in sup.stdout:
                said.append(line)
                if "disk full at" in line and (disk / "ballast").exists():
                    (disk / "ballast").unlink()

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        try:
            code = sup.wait(timeout=RUN_TIMEOUT)
        finally:
            sup.kill()
        reader.join(10)
        out, err = "".join(said), sup.stderr.read() if sup.stderr else ""
        assert code == 0, f"exit {code}\n{out[-3000:]}\n{err[-3000:]}"
        assert out.count(f"disk full at {run_dir}: waiting up to 60 s for space (") == 1, out
        assert out.count(f"space is back at {run_dir} (") == 1, out
        assert "attempt 1 ended: resource (exit 74)" in out
        assert classes(run_dir)[0] == "resource" and classes(run_dir)[-1] == "completed"
        assert 0 < max(r["step"] for r in losses(run_dir) if r["attempt"] == 1) < STEPS - 1, "not filled mid-run"
        assert_matches_reference(run_dir, reference)
        assert no_traceback(out, err)


def test_no_space_back_is_exit_74_in_one_line_and_a_rerun_finishes_bit_exact(tmp_path: Path,
                                                                               reference: Path) -> None:
    with tmpfs(tmp_path / "disk", "3m") as disk:
        run_dir = seeded_run_dir(disk / "run", reference)
        ballast(disk / "ballast", ROOM)
        p = run(runner_cmd(run_dir, *JOB, "--disk-wait", 2))
        assert p.returncode == 74, describe(p, run_dir=run_dir)
        lines = [line for line in p.stderr.splitlines() if line.strip()]
        gave_up = f"error: giving up: disk full at {run_dir}: no space for 2 s ("
        assert len(lines) == 1 and lines[0].startswith(gave_up), describe(p, run_dir=run_dir)
        assert "free some space and rerun the same command to continue" in lines[0]
        assert no_traceback(p.stdout, p.stderr)
        assert classes(run_dir) == ["resource"]  # one attempt: no crash loop of restarts
        assert not (run_dir / FINAL).exists()

        (disk / "ballast").unlink()  # space is back: the same command again
        p = run(runner_cmd(run_dir, *JOB))
        assert p.returncode == 0, describe(p, run_dir=run_dir)
        assert_matches_reference(run_dir, reference)


@pytest.mark.parametrize(("args", "line", "last_good"), [
    (("--nan-loss-at", 41), "the loss is nan at step 41; the last good checkpoint is step-000000040", 40),
    (("--nan-params-at", 14), "the parameters are not finite at step 15 (state.safetensors: weights holds nan); "
                              "the last good checkpoint is step-000000010", 10),
], ids=["nan-loss", "nan-parameters"])
def test_a_nan_is_exit_76_not_retried_not_complete(tmp_path: Path, args: tuple[object, ...], line: str,
                                                   last_good: int) -> None:
    run_dir = tmp_path / "run"
    p = run(runner_cmd(run_dir, command=[sys.executable, SGD, *args]))
    assert p.returncode == 76, describe(p, run_dir=run_dir)
    assert [x for x in p.stderr.splitlines() if x.strip()] == [
        f"error: the job computed a non-finite value, not retrying: {line}"]
    assert f"worker said: error: {line}" in p.stdout
    assert len(events(run_dir, "attempt-spawned", source="supervisor")) == 1
    assert classes(run_dir) == ["non-finite"]
    assert not (run_dir / FINAL).exists()
    ck = CheckpointStore(LocalStorage(run_dir)).load_latest()
    assert ck is not None and ck.step == last_good
    assert no_traceback(p.stdout, p.stderr)


def test_the_disk_full_chaos_fault_passes_bit_exact(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the disk-full fault needs root")
    p = run_runner("--simulate-preemption", "--fault-kinds", "disk-full", "--faults", 2, "--epochs", 3,
                   "--run-dir", tmp_path / "chaos", "--reference-cache", tmp_path / "refs",
                   "--json-report", tmp_path / "report.json")
    assert p.returncode == 0, describe(p)
    assert "PASS bit-exact" in p.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert [(f["kind"], f["missed"]) for f in report["faults"]] == [("disk-full", False)] * 2
    assert not os.path.ismount(tmp_path / "chaos")
    assert (tmp_path / "chaos" / FINAL).is_file() and not (tmp_path / "chaos" / ".chaos-filler").exists()
