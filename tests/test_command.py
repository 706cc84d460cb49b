"""A command of one's own as the front door's job (``runner.command``): the script it runs, the digest
of its files, its length from a journal, its command line and environment; and the routing of
``--simulate-preemption ... -- CMD`` and ``campaign ... -- CMD`` to it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from chaos.simulate import SIMULATION_DEFAULTS, chaos_parser
from chaos.trial import job_env, reference_key, replay_command
from rundir.exitcodes import ExitCode, UserError
from runner import cli
from runner.command import CommandJob, files_digest, script_of, source_files, steps_of
from runner.jobspec import ENV_CHECKPOINT_EVERY


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    return tree(tmp_path, {
        "train.py": "print('train')\n",
        "lib/util.py": "X = 1\n",
        "lib/notes.txt": "not code\n",
        "pkg/__init__.py": "",
        "pkg/job.py": "print('job')\n",
        "pkg/runme/__main__.py": "print('main')\n",
        ".venv/junk.py": "hidden\n",
        "lib/__pycache__/util.cpython-311.py": "cache\n",
    })


@pytest.mark.parametrize(("cmd", "script"), [
    (["python", "train.py", "--epochs", "2"], "train.py"),
    (["python", "-m", "pkg.job"], "pkg/job.py"),
    (["python", "-m", "pkg.runme", "x"], "pkg/runme/__main__.py"),
    (["python", "-m", "pkg.nope"], None),
    (["python", "missing.py"], None),
    (["python", "-u", "train.py"], None),  # interpreter options: not a plain script
    (["python"], None),
    (["python", "-m"], None),
    (["./run.sh"], None),
])
def test_script_of(project: Path, cmd: list[str], script: str | None) -> None:
    found = script_of(cmd, project, [""])
    assert (None if found is None else found.relative_to(project).as_posix()) == script


def test_a_module_is_found_on_the_search_path(project: Path, tmp_path: Path) -> None:
    elsewhere = tree(tmp_path / "elsewhere", {"mod/train.py": ""})
    assert script_of(["python", "-m", "mod.train"], project, ["", str(elsewhere)]) == elsewhere / "mod/train.py"


def test_source_files_are_the_script_and_the_python_files_beside_and_below_it(project: Path) -> None:
    files = [f.relative_to(project).as_posix() for f in source_files(project / "train.py")]
    assert files == ["train.py", "lib/util.py", "pkg/__init__.py", "pkg/job.py", "pkg/runme/__main__.py"]
    assert [f.name for f in source_files(project / "train.py", max_files=2)] == ["train.py", "util.py"]
    # A module's tree is its own directory's.
    assert [f.name for f in source_files(project / "pkg/job.py")] == ["job.py", "__init__.py", "__main__.py"]


@pytest.mark.parametrize(("change", "same"), [
    (lambda root: None, True),
    (lambda root: (root / "lib/notes.txt").write_text("edited\n"), True),  # not Python
    (lambda root: (root / ".venv/junk.py").write_text("edited\n"), True),  # hidden
    (lambda root: (root / "lib/__pycache__/util.cpython-311.py").write_text("x"), True),  # a cache
    (lambda root: (root.parent / "outside.py").write_text("x"), True),  # outside the tree
    (lambda root: (root / "train.py").write_text("print('other')\n"), False),  # the script
    (lambda root: (root / "lib/util.py").write_text("X = 2\n"), False),  # a module beside it
    (lambda root: (root / "lib/new.py").write_text(""), False),  # a new one
    (lambda root: (root / "lib/util.py").rename(root / "lib/util2.py"), False),  # a rename
])
def test_the_digest_of_a_scripts_files(tmp_path: Path, change: Any, same: bool) -> None:
    root = tree(tmp_path / "p", {"train.py": "print(1)\n", "lib/util.py": "X = 1\n", "lib/notes.txt": "n\n",
                                 ".venv/junk.py": "j\n", "lib/__pycache__/util.cpython-311.py": "c"})

    def digest() -> str:
        return files_digest(source_files(root / "train.py"), root)

    before = digest()
    change(root)
    assert (digest() == before) is same


def test_a_large_file_counts_by_its_size(tmp_path: Path) -> None:
    root = tree(tmp_path, {"train.py": "", "big.py": "a" * 100})
    digest = files_digest(source_files(root / "train.py"), root, max_bytes=10)
    (root / "big.py").write_text("b" * 100)  # same size
    assert files_digest(source_files(root / "train.py"), root, max_bytes=10) == digest
    (root / "big.py").write_text("b" * 101)
    assert files_digest(source_files(root / "train.py"), root, max_bytes=10) != digest


def rec(step: int, epoch: int) -> dict[str, Any]:
    return {"step": step, "epoch": epoch}


@pytest.mark.parametrize(("records", "steps"), [
    ([], (0, 0)),
    ([rec(s, 0) for s in range(7)], (7, 7)),  # no epochs: one
    ([rec(s, s // 5) for s in range(15)], (5, 15)),
    ([rec(s, s // 5) for s in range(12)] + [rec(s, s // 5) for s in range(8, 15)], (5, 15)),  # steps done again
    ([rec(s, 2 + s // 4) for s in range(8)], (4, 8)),  # a run that began at epoch 2
])
def test_steps_of_a_journal(records: list[dict[str, Any]], steps: tuple[int, int]) -> None:
    assert steps_of(records) == steps


# -- the adapter -------------------------------------------------------------------------------------------


def parse(job: CommandJob, *args: str) -> argparse.Namespace:
    return chaos_parser(job, "test", "test").parse_args(list(args))


def test_the_command_travels_through_the_front_doors_arguments(project: Path) -> None:
    job = CommandJob(["python", "train.py", "--lr", "0.1"], cwd=project)
    ns = parse(job)
    assert ns.checkpoint_every_steps == SIMULATION_DEFAULTS["checkpoint_every_steps"]
    argv = job.argv(ns)
    assert argv == ["--checkpoint-every-steps", "5", "--", "python", "train.py", "--lr", "0.1"]
    assert job.command(project / "run", argv) == ("python", "train.py", "--lr", "0.1")
    assert job.env(parse(job, "--checkpoint-every-steps", "3")) == {ENV_CHECKPOINT_EVERY: "3"}
    assert job.preload == () and job.prepared(project) == ()
    # The replay line is a command a person can paste: the same job after '--'.
    replay = replay_command(job, ns, project / "chaos-schedule.json")
    assert replay.endswith("--checkpoint-every-steps 5 -- python train.py --lr 0.1")


def test_the_run_directory_and_the_cadence_reach_the_job_through_its_environment(project: Path) -> None:
    job = CommandJob(["python", "train.py"], cwd=project)
    env = job_env(job, parse(job), project / "run")
    assert env["RUNNER_RUN_DIR"] == str(project / "run") and env[ENV_CHECKPOINT_EVERY] == "5"


def test_the_identity_names_the_command_and_its_files(project: Path) -> None:
    job = CommandJob(["python", "train.py", "--lr", "0.1"], cwd=project)
    ident = job.identity(parse(job))
    assert ident["job"] == "train.py" and ident["command"] == ["python", "train.py", "--lr", "0.1"]
    assert ident["files_sha256"] == files_digest(source_files(project / "train.py"), project)
    assert "paddle" in job.cache_key(parse(job))
    ns = parse(job)
    key = reference_key(job, ns)
    assert reference_key(CommandJob(["python", "train.py", "--lr", "0.2"], cwd=project), ns) != key
    (project / "lib/util.py").write_text("X = 3\n")
    assert reference_key(CommandJob(["python", "train.py", "--lr", "0.1"], cwd=project), ns) != key
    assert reference_key(CommandJob(["python", "train.py", "--lr", "0.1"], cwd=project),
                         parse(job, "--checkpoint-every-steps", "2")) == reference_key(
        CommandJob(["python", "train.py", "--lr", "0.1"], cwd=project), ns)  # cadence never changes the trace


def test_the_length_comes_from_the_references_journal(tmp_path: Path) -> None:
    job = CommandJob(["python", "train.py"], cwd=tmp_path)
    (tmp_path / "losses.jsonl").write_text("".join(
        json.dumps({"step": s, "epoch": s // 6, "batch": s % 6, "loss": 1.0, "attempt": 1, "time": 0.0, "dt": 0.1})
        + "\n" for s in range(18)))
    assert job.total_steps(tmp_path, parse(job)) == (6, 18)
    (tmp_path / "losses.jsonl").write_text("")
    with pytest.raises(UserError) as exc:
        job.total_steps(tmp_path, parse(job))
    assert exc.value.code is ExitCode.BAD_CONFIG and "journalled no steps" in str(exc.value)


def test_an_empty_command_is_a_usage_error() -> None:
    with pytest.raises(UserError) as exc:
        CommandJob([])
    assert exc.value.code is ExitCode.USAGE


@pytest.mark.parametrize(("args", "proves"), [
    (["--simulate-preemption", "--faults", "2"], "builtin"),
    (["--simulate-preemption", "--", "python", "my_job.py"], ("python", "my_job.py")),
    (["campaign", "--trials", "1"], "builtin"),
    (["campaign", "--trials", "1", "--", "python", "-m", "pkg.train", "--x"], ("python", "-m", "pkg.train", "--x")),
])
def test_the_chaos_commands_prove_the_command_after_the_double_dash(monkeypatch: pytest.MonkeyPatch,
                                                                     args: list[str], proves: Any) -> None:
    seen: list[Any] = []

    def fake(argv: list[str], job: Any, **kw: Any) -> int:
        seen.append((argv, job, kw))
        return 0

    monkeypatch.setattr("chaos.simulate.simulate_main", fake)
    monkeypatch.setattr("chaos.campaign.campaign_main", fake)
    assert cli.main(args) == 0
    argv, job, kw = seen[0]
    assert "--" not in argv and "--simulate-preemption" not in argv
    assert (job is cli.builtin_job()) if proves == "builtin" else (job.cmd == proves)
    if args[0] == "campaign":  # its trials run the campaign again, each in a process: the command goes with them
        assert tuple(kw["command"]) == (() if proves == "builtin" else proves)


@pytest.mark.parametrize("args", [["--simulate-preemption", "--"], ["campaign", "--trials", "1", "--"]])
def test_nothing_after_the_double_dash_is_a_usage_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(args) == ExitCode.USAGE
    assert capsys.readouterr().err.strip() == "error: nothing after '--': give the command to run"
