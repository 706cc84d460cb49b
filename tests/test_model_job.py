"""model/job.py and model/__main__.py: the built-in job as the front door sees it. Its argv round-trips
through ``python -m model``'s own parser; its identity is stable and changes with what changes the loss
trace (epochs, seed, data) and with nothing else; its length is read from the prepared data."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pytest

import model.__main__ as model_main
from model.config import AUTO, JOB_NAME
from model.data import CACHE, DIGITS
from model.job import BUILTIN
from rundir.argparsing import OneLineParser


def job_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m runner")
    BUILTIN.add_arguments(p)
    return p


def model_parse(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    """What ``python -m model --run-dir d ARGV`` parses, through its own ``main``."""
    got: list[argparse.Namespace] = []

    def run(ns: argparse.Namespace) -> int:
        got.append(ns)
        return 0

    monkeypatch.setattr(model_main, "run", run)
    assert model_main.main(["--run-dir", "d", *argv]) == 0
    (ns,) = got
    return ns


ARGVS = [
    [],
    ["--epochs", "2", "--seed", "7"],
    ["--checkpoint-every", "auto", "--mtbf", "30"],
    ["--checkpoint-every-steps", "4", "--durable-every", "0", "--sync-checkpoints"],
    ["--data", "/data/fashion", "--break-resume", "data-rng"],
]


@pytest.mark.parametrize("argv", ARGVS, ids=lambda a: " ".join(a) or "defaults")
def test_argv_round_trips_through_python_m_models_parser(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    ns = job_parser().parse_args(argv)  # as the front door parses the job's options
    passed = BUILTIN.argv(ns)
    got = model_parse(passed, monkeypatch)
    # the run directory and the store are the supervisor's to give (on the command line, in the environment)
    assert {k: v for k, v in vars(got).items() if k not in ("run_dir", "store", "upload_every")} == vars(ns)


def test_the_references_argv_never_breaks_the_resume() -> None:
    ns = job_parser().parse_args(["--epochs", "3", "--break-resume", "optimizer"])
    assert "--break-resume" in BUILTIN.argv(ns)
    assert BUILTIN.argv(ns, reference=True) == ["--epochs", "3", "--seed", "0", "--checkpoint-every-steps", "0"]
    assert ns.break_resume == "optimizer"  # the namespace itself is left as it was


def test_the_command_runs_python_m_model_on_the_run_directory() -> None:
    assert BUILTIN.command(Path("/r"), ["--epochs", "1"]) == (sys.executable, "-m", "model", "--run-dir", "/r",
                                                               "--epochs", "1")


def identity(*argv: str) -> dict[str, object]:
    return BUILTIN.identity(job_parser().parse_args(list(argv)))


def test_the_identity_is_stable() -> None:
    assert identity() == identity()
    assert identity()["job"] == JOB_NAME and identity()["data"] == DIGITS


@pytest.mark.parametrize("argv", [["--epochs", "6"], ["--seed", "1"], ["--data", "/elsewhere/mnist"]])
def test_the_identity_changes_with_what_changes_the_trace(argv: list[str]) -> None:
    assert identity(*argv) != identity()


@pytest.mark.parametrize("argv", [["--checkpoint-every", "3"], ["--checkpoint-every", "auto"], ["--mtbf", "9"],
                                  ["--durable-every", "0"], ["--sync-checkpoints"], ["--break-resume", "data-rng"]])
def test_the_identity_ignores_how_the_job_checkpoints(argv: list[str]) -> None:
    assert identity(*argv) == identity()


@pytest.mark.parametrize(("n", "epochs", "want"), [(250, 3, (3, 9)), (300, 1, (3, 3)), (1, 2, (1, 2))])
def test_total_steps_from_the_prepared_data(tmp_path: Path, n: int, epochs: int, want: tuple[int, int]) -> None:
    np.savez(tmp_path / CACHE, train_y=np.zeros(n, np.int64))  # batches of 100; the last one may be short
    ns = job_parser().parse_args(["--epochs", str(epochs)])
    assert BUILTIN.total_steps(tmp_path, ns) == want
    assert BUILTIN.prepared(tmp_path) == [tmp_path / CACHE]


def test_the_cache_key_follows_the_data_files(tmp_path: Path) -> None:
    data = tmp_path / "d.json.gz"
    data.write_bytes(b"x")
    ns = job_parser().parse_args(["--data", str(data)])
    before = BUILTIN.cache_key(ns)
    data.write_bytes(b"xy")
    assert BUILTIN.cache_key(ns) != before
    assert BUILTIN.cache_key(job_parser().parse_args([])) == DIGITS


@pytest.mark.parametrize(("text", "want"), [("auto", AUTO), ("0", 0), ("12", 12)])
def test_every_steps(text: str, want: int) -> None:
    assert model_main.every_steps(text) == want
