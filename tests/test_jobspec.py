"""What a job of one's own takes from its command line and environment (``runner.jobspec``), as tables."""

from __future__ import annotations

import pytest

from rundir.exitcodes import ExitCode, UserError
from runner.jobspec import ENV_CHECKPOINT_EVERY, argv_identity, choose_run_dir, parse_every, split_run_dir


@pytest.mark.parametrize(("argv", "found", "rest"), [
    ([], None, []),
    (["--epochs", "3"], None, ["--epochs", "3"]),
    (["--run-dir", "d"], "d", []),
    (["--run-dir=d", "--epochs", "3"], "d", ["--epochs", "3"]),
    (["--epochs", "3", "--run-dir", "d", "-v"], "d", ["--epochs", "3", "-v"]),
    (["--run-dir", "a", "--run-dir", "b"], "b", []),  # the last one wins, as argparse's would
    (["x", "--", "--run-dir", "d"], None, ["x", "--", "--run-dir", "d"]),  # after '--': the job's own
    (["--run-directory", "d"], None, ["--run-directory", "d"]),  # another flag
])
def test_split_run_dir(argv: list[str], found: str | None, rest: list[str]) -> None:
    assert split_run_dir(argv) == (found, rest)


@pytest.mark.parametrize("argv", [["--run-dir"], ["--run-dir="], ["--epochs", "1", "--run-dir", ""]])
def test_a_run_dir_flag_without_a_value_is_a_usage_error(argv: list[str]) -> None:
    with pytest.raises(UserError) as exc:
        split_run_dir(argv)
    assert exc.value.code is ExitCode.USAGE


@pytest.mark.parametrize(("given", "env", "flag", "chosen"), [
    ("code", None, None, "code"),
    (None, "sup", None, "sup"),
    (None, None, "flag", "flag"),
    ("same", "same", "same", "same"),
    (None, "same", "./same", "same"),  # the same directory spelled two ways
])
def test_choose_run_dir(given: str | None, env: str | None, flag: str | None, chosen: str) -> None:
    assert choose_run_dir(given, {} if env is None else {"RUNNER_RUN_DIR": env}, flag) == chosen


@pytest.mark.parametrize(("given", "env", "flag", "code", "words"), [
    (None, None, None, ExitCode.USAGE, "no run directory"),
    (None, "sup", "flag", ExitCode.BAD_CONFIG, "--run-dir names flag"),
    ("code", "sup", None, ExitCode.BAD_CONFIG, "RUNNER_RUN_DIR names sup"),
    ("code", None, "flag", ExitCode.BAD_CONFIG, "--run-dir names flag"),
])
def test_choose_run_dir_refuses(given: str | None, env: str | None, flag: str | None, code: ExitCode,
                                words: str) -> None:
    with pytest.raises(UserError) as exc:
        choose_run_dir(given, {} if env is None else {"RUNNER_RUN_DIR": env}, flag)
    assert exc.value.code is code and words in str(exc.value)


@pytest.mark.parametrize(("argv0", "args", "identity"), [
    ("examples/mlp_dropout.py", ["--epochs", "3"], {"job": "mlp_dropout.py", "args": ["--epochs", "3"]}),
    ("/abs/path/train.py", [], {"job": "train.py", "args": []}),
    ("", [], {"job": "python", "args": []}),  # python -c, an interactive session
])
def test_argv_identity(argv0: str, args: list[str], identity: dict[str, object]) -> None:
    assert argv_identity(argv0, args) == identity


@pytest.mark.parametrize(("text", "every"), [(None, None), ("", None), (" ", None), ("0", 0), ("5", 5),
                                            (" 12 ", 12), ("auto", "auto")])
def test_parse_every(text: str | None, every: int | str | None) -> None:
    assert parse_every(text) == every


@pytest.mark.parametrize("text", ["-1", "five", "1.5", "Auto"])
def test_parse_every_refuses(text: str) -> None:
    with pytest.raises(UserError) as exc:
        parse_every(text)
    assert exc.value.code is ExitCode.BAD_CONFIG and ENV_CHECKPOINT_EVERY in str(exc.value)
