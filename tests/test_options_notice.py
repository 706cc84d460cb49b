"""The preemption notice's options: parsed by the notice package's helpers into the supervisor's
:class:`NoticeSettings`; a bad value is one line and exit 2; ``auto`` by default, ``none`` in a
simulation."""

from __future__ import annotations

import signal

import pytest

from chaos.simulate import chaos_parser
from rundir.argparsing import OneLineParser
from runner.notice import NoticeChoice
from runner.options import add_supervisor_arguments, notice_settings
from runner.preempt import NoticeSettings


def parse(*argv: str) -> NoticeSettings:
    p = OneLineParser(prog="python -m runner")
    add_supervisor_arguments(p)
    return notice_settings(p.parse_args(list(argv)))


def test_the_defaults_watch_auto_for_sigterm() -> None:
    assert parse() == NoticeSettings(NoticeChoice.AUTO, signal.SIGTERM, None, False, None)


def test_every_option() -> None:
    got = parse("--notice", "SLURM", "--notice-signal", "usr1", "--metadata-url", "http://127.0.0.1:8080/",
                "--act-on-rebalance", "--notice-poll", "0.25")
    assert got == NoticeSettings(NoticeChoice.SLURM, signal.SIGUSR1, "http://127.0.0.1:8080/", True, 0.25)


@pytest.mark.parametrize(("argv", "said"), [
    (("--notice", "ec2"), "unknown notice source 'ec2': choose one of auto, aws, gcp, azure, k8s, slurm, none"),
    (("--notice-signal", "KILL"), "SIGKILL cannot be caught, so it cannot be a notice"),
    (("--notice-signal", "NOPE"), "not a signal: 'NOPE'"),
    (("--metadata-url", "ftp://x"), "not an http URL: 'ftp://x'"),
    (("--notice-poll", "0"), "must be more than 0"),
])
def test_a_bad_value_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], argv: tuple[str, ...],
                                            said: str) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 1, err


def test_a_simulation_watches_nothing_unless_asked() -> None:
    class Job:  # the few adapter methods chaos_parser calls
        def add_arguments(self, p: object) -> None:
            pass

    ns = chaos_parser(Job(), "sim", "d").parse_args([])  # type: ignore[arg-type]
    assert notice_settings(ns).choice is NoticeChoice.NONE
    ns = chaos_parser(Job(), "sim", "d").parse_args(["--notice", "aws"])  # type: ignore[arg-type]
    assert notice_settings(ns).choice is NoticeChoice.AWS
