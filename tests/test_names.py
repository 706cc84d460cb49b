"""rundir/names.py: the heartbeat reader never raises on what it finds, and a worker's environment
carries none of our attempt, chaos or standby variables over."""

from __future__ import annotations

from pathlib import Path

import pytest

from rundir.contract import ENV_CHAOS_ARM
from rundir.names import ENV_ATTEMPT, ENV_STANDBY, HEARTBEAT, read_heartbeat, worker_env


@pytest.mark.parametrize(("content", "want"), [
    (None, None),  # no file yet
    (b"", None),
    (b'{"pid": 7, "phase": "tr', None),  # torn
    (b"[1, 2]", None),  # not an object
    (b'"text"', None),
    (b'{"pid": 7, "attempt": 2, "phase": "train", "step": 10}', {"pid": 7, "attempt": 2, "phase": "train", "step": 10}),
])
def test_read_heartbeat(tmp_path: Path, content: bytes | None, want: dict | None) -> None:
    if content is not None:
        (tmp_path / HEARTBEAT).write_bytes(content)
    assert read_heartbeat(tmp_path) == want


def test_a_heartbeat_that_is_a_directory_is_none(tmp_path: Path) -> None:
    (tmp_path / HEARTBEAT).mkdir()
    assert read_heartbeat(tmp_path) is None


def test_worker_env_drops_our_variables_and_keeps_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in (ENV_ATTEMPT, ENV_CHAOS_ARM, ENV_STANDBY):
        monkeypatch.setenv(k, "leftover")
    monkeypatch.setenv("KEEP_ME", "1")
    env = worker_env({"PYTHONPATH": "/x", ENV_ATTEMPT: "3"})
    assert env["KEEP_ME"] == "1" and env["PYTHONPATH"] == "/x"
    assert not {ENV_ATTEMPT, ENV_CHAOS_ARM, ENV_STANDBY} & set(env)  # even from ``extra``: set per attempt
