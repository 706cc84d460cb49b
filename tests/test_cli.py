"""runner/cli.py: the front door's parser and how it sends each command on; what it refuses before it
starts anything (exit 2, one line, no run directory made); its help, which lists each command with an
example, and every command's help, which states the defaults that command really uses."""

from __future__ import annotations

import argparse
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from model.job import BUILTIN
from runner.cli import _split_command, build_parser, builtin_job, main
from tests.helpers.processes import run


@pytest.mark.parametrize(("argv", "own", "command"), [
    ([], [], None),
    (["--run-dir", "d", "--epochs", "2"], ["--run-dir", "d", "--epochs", "2"], None),
    (["--run-dir", "d", "--", "python", "job.py"], ["--run-dir", "d"], ["python", "job.py"]),
    (["--run-dir", "d", "--"], ["--run-dir", "d"], []),
    (["--", "a", "--", "b"], [], ["a", "--", "b"]),  # the first '--' splits; the command keeps the rest
])
def test_split_command(argv: list[str], own: list[str], command: list[str] | None) -> None:
    assert _split_command(argv) == (own, command)


def test_the_built_in_job_is_the_default() -> None:
    assert builtin_job() is BUILTIN
    ns = build_parser().parse_args(["--run-dir", "d"])
    assert (ns.run_dir, ns.epochs, ns.max_restarts, ns.standby) == (Path("d"), 5, 20, None)


class OtherJob:
    """A job of another shape: only its options matter here."""

    preload: tuple[str, ...] = ()

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--width", type=int, default=3)


def test_the_parser_takes_the_jobs_own_options() -> None:
    ns = build_parser(OtherJob()).parse_args(["--width", "8", "--grace", "2"])  # type: ignore[arg-type]
    assert (ns.width, ns.grace) == (8, 2.0) and not hasattr(ns, "epochs")


def runner(*args: object) -> tuple[int, str, str]:
    p = run([sys.executable, "-m", "runner", *map(str, args)], timeout=120)
    return p.returncode, p.stdout, p.stderr


@pytest.mark.parametrize(("args", "says"), [
    ((), "error: --run-dir is required"),
    (("--run-dir", "RUN", "--"), "error: nothing after '--': give the command to supervise"),
    (("--run-dir", "RUN", "--epochs", "0"), "error: argument --epochs: must be 1 or more, got 0 "
                                            "(see python -m runner --help)"),
    (("--run-dir", "RUN", "--nnodes", "2"), "error: --nnodes 2 needs --master HOST:PORT and --etcd URL"),
    (("--run-dir", "RUN", "--nnodes", "2", "--master", "h:1", "--etcd", "http://h:2", "--store", "file:///x"),
     "error: --store with --nnodes is not supported: every node would write the same prefix"),
])
def test_refused_before_anything_starts(tmp_path: Path, args: Sequence[str], says: str) -> None:
    run_dir = tmp_path / "run"
    code, out, err = runner(*(str(run_dir) if a == "RUN" else a for a in args))
    assert (code, out, err.splitlines()) == (2, "", [says])
    assert not run_dir.exists()


def test_a_node_whose_etcd_does_not_answer_starts_nothing(tmp_path: Path) -> None:
    from tests.etcd_server import free_port

    code, _, err = runner("--run-dir", tmp_path / "run", "--nnodes", "2", "--master", "127.0.0.1:1",
                          "--etcd", f"http://127.0.0.1:{free_port()}")
    assert code == 78 and "does not answer (--etcd)" in err
    assert not (tmp_path / "run" / "logs").exists()


@pytest.mark.parametrize(("argv", "prog"), [
    (["verify"], "python -m runner verify"),
    (["campaign"], "python -m runner campaign"),
    (["--simulate-preemption", "--faults", "x"], "python -m runner --simulate-preemption"),
])
def test_each_command_has_its_own_parser(argv: list[str], prog: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: ") and line.endswith(f"(see {prog} --help)")


# -- help: the commands, and the defaults each one really uses -------------------------------------------


def parser_of(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The parser ``main(argv)`` parses its arguments with (caught as it starts parsing)."""
    seen: list[argparse.ArgumentParser] = []

    def grab(self: argparse.ArgumentParser, *args: object, **kw: object) -> None:
        seen.append(self)
        raise SystemExit(0)

    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", grab)
        with pytest.raises(SystemExit):
            main(argv)
    return seen[0]


def misstated_defaults(p: argparse.ArgumentParser) -> list[str]:
    """Each option with a default whose help does not state it, or states another: the help as printed
    (``%(default)s`` expanded, so after ``set_defaults``) against the value the parser really gives."""
    formatter = p._get_formatter()
    found = []
    for action in p._actions:
        if action.help in (None, argparse.SUPPRESS) or isinstance(action, argparse._HelpAction):
            continue
        if action.default in (None, False, argparse.SUPPRESS):
            continue  # nothing given: the help says in words what happens
        want = f"{action.default:g}" if isinstance(action.default, float) else str(action.default)
        if isinstance(action.default, signal.Signals):
            want = action.default.name.removeprefix("SIG")  # said as its name, the way it is given
        stated = [s.split()[0] for s in re.findall(r"default:? ([^;,)]+)", formatter._expand_help(action))]
        if want not in stated:
            found.append(f"{action.option_strings[0] if action.option_strings else action.dest}: uses {want}, "
                         f"says {stated or 'nothing'}")
    return found


COMMANDS = {"run": [], "simulate": ["--simulate-preemption"], "campaign": ["campaign"], "verify": ["verify"]}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_help_states_the_default_its_command_uses(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert misstated_defaults(parser_of(COMMANDS[command], monkeypatch)) == []


@pytest.mark.parametrize(("command", "option", "shown"), [
    ("run", "--hang-timeout", "(default 300 s)"),
    ("simulate", "--hang-timeout", "(default 3 s)"),
    ("campaign", "--hang-timeout", "(default 3 s)"),
    ("simulate", "--checkpoint-every-steps", "(default 5; 0: at epoch ends only)"),
    ("run", "--checkpoint-every-steps", "(default 0; 0: at epoch ends only)"),
    ("simulate", "--standby", "(default: on)"),
    ("campaign", "--history-window", "(default 7)"),
])
def test_the_simulations_own_defaults_are_shown(command: str, option: str, shown: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    p = parser_of(COMMANDS[command], monkeypatch)
    (action,) = [a for a in p._actions if option in a.option_strings]
    assert shown in p._get_formatter()._expand_help(action)


def test_a_help_that_misstates_its_default_is_caught() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--hang-timeout", type=float, default=300.0, help="seconds (default 300)")
    p.add_argument("--grace", type=float, default=30.0, help="seconds")
    p.add_argument("--ok", type=int, default=7, help="(default %(default)s)")
    p.set_defaults(hang_timeout=3.0, ok=9)  # as a simulation does
    assert misstated_defaults(p) == ["--hang-timeout: uses 3, says ['300']", "--grace: uses 30, says nothing"]


def test_the_front_doors_help_lists_each_command_with_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    commands = out.split("commands (each has its own --help):")[1]
    for usage in ("python -m runner --run-dir DIR", "python -m runner --simulate-preemption",
                  "python -m runner verify RUN_DIR REFERENCE_DIR", "python -m runner campaign"):
        assert usage in commands
    examples = [line.strip() for line in commands.splitlines() if line.strip().startswith("e.g. ")]
    assert [e.split()[4] if e.split()[3] == "runner" else "" for e in examples] == [
        "--run-dir", "--simulate-preemption", "verify", "campaign"]


def test_verifys_positionals_say_what_they_are(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["verify", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "RUN_DIR the run directory to check" in out
    assert "REFERENCE_DIR the run directory of an uninterrupted run" in out
