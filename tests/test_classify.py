"""How an attempt's exit status is named, and which of those names the supervisor retries."""

from __future__ import annotations

import pytest

from rundir.classify import ExitClass, classify_exit, signal_name
from rundir.exitcodes import ExitCode


@pytest.mark.parametrize(
    ("returncode", "expected"),
    [
        pytest.param(0, ExitClass.COMPLETED, id="0-completed"),
        pytest.param(75, ExitClass.PREEMPTED, id="75-preempted-state-saved"),
        pytest.param(1, ExitClass.CRASHED, id="1-uncaught-exception"),
        pytest.param(3, ExitClass.CRASHED, id="3-other-nonzero"),
        pytest.param(70, ExitClass.CRASHED, id="70-other-nonzero"),
        pytest.param(255, ExitClass.CRASHED, id="255-other-nonzero"),
        pytest.param(-9, ExitClass.KILLED, id="-9-SIGKILL-or-oom"),
        pytest.param(-11, ExitClass.KILLED, id="-11-SIGSEGV"),
        pytest.param(-6, ExitClass.KILLED, id="-6-SIGABRT"),
        pytest.param(-15, ExitClass.KILLED, id="-15-SIGTERM-not-caught"),
        pytest.param(137, ExitClass.KILLED, id="137-SIGKILL-from-a-shell"),
        pytest.param(139, ExitClass.KILLED, id="139-SIGSEGV-from-a-shell"),
        pytest.param(128, ExitClass.CRASHED, id="128-not-a-signal"),
        pytest.param(2, ExitClass.BAD_INPUT, id="2-usage"),
        pytest.param(65, ExitClass.BAD_INPUT, id="65-bad-data"),
        pytest.param(69, ExitClass.BAD_INPUT, id="69-locked"),
        pytest.param(73, ExitClass.BAD_INPUT, id="73-unwritable"),
        pytest.param(77, ExitClass.BAD_INPUT, id="77-store-unusable-or-fenced"),
        pytest.param(78, ExitClass.BAD_INPUT, id="78-bad-config"),
        pytest.param(74, ExitClass.RESOURCE, id="74-disk-full-quota-or-io-error"),
        pytest.param(76, ExitClass.NON_FINITE, id="76-nan-or-inf"),
    ],
)
def test_classify_exit_by_returncode(returncode: int, expected: ExitClass) -> None:
    assert classify_exit(returncode) is expected


@pytest.mark.parametrize("returncode", [-9, 0, 1, 75, 137])
def test_hung_flag_wins_over_the_returncode(returncode: int) -> None:
    # The supervisor killed it for silence: whatever status that left, it was a hang.
    assert classify_exit(returncode, hung=True) is ExitClass.HUNG


@pytest.mark.parametrize("returncode", [75, 0, -9, -15, 1, 65])
@pytest.mark.parametrize("hung", [False, True])
def test_user_stop_flag_wins_over_everything(returncode: int, hung: bool) -> None:
    assert classify_exit(returncode, hung=hung, stopped_by_user=True) is ExitClass.USER_STOPPED


def test_bad_input_codes_are_the_exit_codes_of_input_errors() -> None:
    for code in (ExitCode.USAGE, ExitCode.BAD_DATA, ExitCode.LOCKED, ExitCode.UNWRITABLE, ExitCode.STORE,
                 ExitCode.BAD_CONFIG):
        assert classify_exit(int(code)) is ExitClass.BAD_INPUT, code
    assert classify_exit(int(ExitCode.PREEMPTED)) is ExitClass.PREEMPTED


@pytest.mark.parametrize(
    ("returncode", "name"),
    [
        (None, None),
        (0, None),
        (1, None),
        (75, None),
        (65, None),
        (128, None),  # 128+0 is no signal
        (160, None),  # outside the shell's 128+N range
        (-9, "SIGKILL"),
        (-11, "SIGSEGV"),
        (-15, "SIGTERM"),
        (-6, "SIGABRT"),
        (137, "SIGKILL"),
        (139, "SIGSEGV"),
        (143, "SIGTERM"),
        (130, "SIGINT"),
        (-100, "signal 100"),  # no such signal: still named, by number
    ],
)
def test_signal_name(returncode: int | None, name: str | None) -> None:
    assert signal_name(returncode) == name


@pytest.mark.parametrize(
    ("cls", "retriable"),
    [
        (ExitClass.COMPLETED, False),
        (ExitClass.PREEMPTED, True),
        (ExitClass.KILLED, True),
        (ExitClass.CRASHED, True),
        (ExitClass.BAD_INPUT, False),
        (ExitClass.HUNG, True),
        (ExitClass.USER_STOPPED, False),
        (ExitClass.RESOURCE, False),  # not at once: the supervisor waits for space first
        (ExitClass.NON_FINITE, False),  # deterministic: a retry computes the same NaN
    ],
)
def test_retriable(cls: ExitClass, retriable: bool) -> None:
    assert cls.retriable is retriable


def test_every_class_has_a_retriable_entry_and_a_stable_value() -> None:
    assert {c.value for c in ExitClass} == {
        "completed", "preempted", "killed", "crashed", "bad-input", "hung", "user-stopped", "resource", "non-finite",
    }


@pytest.mark.parametrize("returncode", [74, 76])
@pytest.mark.parametrize(("flags", "expected"), [
    ({"hung": True}, ExitClass.HUNG),
    ({"stopped_by_user": True}, ExitClass.USER_STOPPED),
])
def test_the_supervisors_own_knowledge_wins_over_74_and_76(returncode: int, flags: dict[str, bool],
                                                           expected: ExitClass) -> None:
    assert classify_exit(returncode, **flags) is expected


def test_the_classify_docstring_table_names_every_class() -> None:
    import rundir.classify as mod

    assert mod.__doc__ is not None
    rows = {line.split()[0] for line in mod.__doc__.splitlines() if line[:1].isupper() and line.split()}
    assert {c.name for c in ExitClass} <= rows
