"""runner/options.py: ``--preload``'s module list as a table, the supervisor's options and their
defaults, and the JSON writer every command shares."""

from __future__ import annotations

import argparse
import json
import signal
from pathlib import Path

import pytest

from rundir.argparsing import OneLineParser
from rundir.exitcodes import ExitCode, UserError
from runner.nodes import NodeSpec
from runner.notice.base import NoticeChoice
from runner.options import add_node_arguments, add_supervisor_arguments, module_list, node_spec, standby_env, write_json


@pytest.mark.parametrize(("text", "want"), [
    ("model.train", ("model.train",)),
    ("paddle, numpy", ("paddle", "numpy")),
    (" a.b.c ,d ", ("a.b.c", "d")),
    ("none", ()),
    (" none ", ()),
    ("None", ("None",)),  # only 'none' means none; 'None' is a name
    ("a b", "'a b'"),
    ("", "''"),
    ("a,,b", "''"),
    ("pkg.", "'pkg.'"),
    ("1pkg", "'1pkg'"),
    ("my-module", "'my-module'"),
])
def test_module_list(text: str, want: tuple[str, ...] | str) -> None:
    if isinstance(want, str):
        with pytest.raises(argparse.ArgumentTypeError) as exc:
            module_list(text)
        assert str(exc.value) == f"not a module name: {want}"
    else:
        assert module_list(text) == want


def parser() -> OneLineParser:
    p = OneLineParser(prog="p")
    add_supervisor_arguments(p)
    return p


def test_the_supervisors_defaults() -> None:
    ns = parser().parse_args([])
    assert vars(ns) == {"max_restarts": 20, "crash_loop": 3, "hang_timeout": 300.0, "startup_timeout": 600.0,
                        "grace": 30.0, "disk_wait": 600.0, "standby": None, "standby_memory": None, "preload": None,
                        "notice": NoticeChoice.AUTO, "notice_signal": signal.SIGTERM, "metadata_url": None,
                        "act_on_rebalance": False, "notice_poll": None, "store": None, "upload_every": 60.0,
                        "nproc_per_node": 1}


@pytest.mark.parametrize(("argv", "field", "want"), [
    (["--max-restarts", "0"], "max_restarts", 0),
    (["--crash-loop", "1"], "crash_loop", 1),
    (["--hang-timeout", "2.5"], "hang_timeout", 2.5),
    (["--startup-timeout", "30"], "startup_timeout", 30.0),
    (["--grace", "0.5"], "grace", 0.5),
    (["--standby"], "standby", True),
    (["--no-standby"], "standby", False),
    (["--standby-memory", "off"], "standby_memory", "off"),
    (["--standby-memory", "on"], "standby_memory", "on"),
    (["--preload", "none"], "preload", ()),
    (["--preload", "model.train,numpy"], "preload", ("model.train", "numpy")),
    (["--nproc-per-node", "2"], "nproc_per_node", 2),
])
def test_the_supervisors_options(argv: list[str], field: str, want: object) -> None:
    assert getattr(parser().parse_args(argv), field) == want


@pytest.mark.parametrize(("argv", "says"), [
    (["--max-restarts", "-1"], "argument --max-restarts: must be 0 or more, got -1"),
    (["--crash-loop", "0"], "argument --crash-loop: must be 1 or more, got 0"),
    (["--nproc-per-node", "0"], "argument --nproc-per-node: must be 1 or more, got 0"),
    (["--hang-timeout", "0"], "argument --hang-timeout: must be more than 0, got 0"),
    (["--startup-timeout", "never"], "argument --startup-timeout: not a number of seconds: 'never'"),
    (["--grace", "-1"], "argument --grace: must be more than 0, got -1"),
])
def test_bad_supervisor_options_exit_2_with_one_line(argv: list[str], says: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parser().parse_args(argv)
    assert exc.value.code == ExitCode.USAGE
    assert capsys.readouterr().err == f"error: {says} (see p --help)\n"


@pytest.mark.parametrize(("argv", "env"), [
    ([], {}),
    (["--standby-memory", "off"], {"RUNNER_STANDBY_MEMORY": "off"}),
    (["--standby-memory", "auto"], {"RUNNER_STANDBY_MEMORY": "auto"}),
])
def test_standby_memory_reaches_the_workers_environment(argv: list[str], env: dict[str, str]) -> None:
    assert standby_env(parser().parse_args(argv)) == env


def test_a_bad_standby_memory_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parser().parse_args(["--standby-memory", "maybe"])
    assert exc.value.code == ExitCode.USAGE
    assert "--standby-memory" in capsys.readouterr().err


def test_write_json_makes_the_directory_and_ends_with_a_newline(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b.json"
    write_json(path, {"verdict": "pass", "steps": [1, 2]})
    text = path.read_text()
    assert text.endswith("}\n") and json.loads(text) == {"verdict": "pass", "steps": [1, 2]}
    assert text.startswith('{\n "verdict"')  # indented by one: readable and small


def test_write_json_where_it_cannot_is_exit_73(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError) as exc:
        write_json(tmp_path / "file" / "x.json", {})
    assert exc.value.code == ExitCode.UNWRITABLE
    assert str(exc.value).startswith(f"cannot write {tmp_path / 'file' / 'x.json'}: ")


def _nodes(argv: list[str]) -> NodeSpec | None:
    p = OneLineParser(prog="t")
    add_node_arguments(p)
    return node_spec(p.parse_args(argv))


@pytest.mark.parametrize(("argv", "want"), [
    ([], None),
    (["--nnodes", "2", "--node-rank", "1", "--master", "10.0.0.1:6170", "--etcd", "http://10.0.0.1:2379"],
     NodeSpec(2, 1, "10.0.0.1:6170", "http://10.0.0.1:2379")),
    (["--nnodes", "3", "--master", "host:1", "--etcd", "http://e:2379"], NodeSpec(3, 0, "host:1", "http://e:2379")),
])
def test_a_node_of_several_machines(argv: list[str], want: NodeSpec | None) -> None:
    assert _nodes(argv) == want


@pytest.mark.parametrize(("argv", "says"), [
    (["--node-rank", "1"], "need --nnodes 2 or more"),
    (["--master", "h:1"], "need --nnodes 2 or more"),
    (["--nnodes", "2", "--etcd", "http://e:1"], "needs --master HOST:PORT and --etcd URL"),
    (["--nnodes", "2", "--master", "h:1"], "needs --master HOST:PORT and --etcd URL"),
    (["--nnodes", "2", "--node-rank", "2", "--master", "h:1", "--etcd", "http://e:1"], "is not a node of 2"),
    (["--nnodes", "2", "--master", "h", "--etcd", "http://e:1"], "is not HOST:PORT"),
    (["--nnodes", "2", "--master", "h:x", "--etcd", "http://e:1"], "is not HOST:PORT"),
    (["--nnodes", "2", "--master", "h:1", "--etcd", "e:1"], "is not an http:// URL"),
])
def test_node_options_that_contradict_each_other_are_usage_errors(argv: list[str], says: str) -> None:
    with pytest.raises(UserError) as exc:
        _nodes(argv)
    assert exc.value.code is ExitCode.USAGE and says in str(exc.value)
