"""A checkpoint writer started with exec (the training process has threads) ignores SIGTERM from its
first instruction: the supervisor signals the worker's whole process group, and a writer still
importing when a preemption notice comes would otherwise die, and the preemption checkpoint with it."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from checkpoint import writer_process


@pytest.mark.parametrize("blocked", [True, False], ids=["started-blocked", "started-unblocked"])
def test_a_writer_signalled_while_it_starts_survives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     blocked: bool) -> None:
    if not blocked:  # the check can fail: without the mask the same signals end the writer
        monkeypatch.setattr(writer_process, "_STOP_SIGNALS", set())
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)  # a second thread: the writer is started with exec
    other.start()
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        proc = writer_process.start_writer(child, tmp_path, keep=2, events=tmp_path / "events.jsonl")
        child.close()
        assert not isinstance(proc, writer_process.ForkedWriter)
        for _ in range(20):  # through its imports and after
            os.kill(proc.pid, signal.SIGTERM)
            time.sleep(0.02)
        time.sleep(0.5)
        if blocked:
            assert proc.poll() is None, f"the writer died: {proc.returncode}"
            parent.close()  # the training process is done with it
            assert proc.wait(30) == 0
        else:
            assert proc.wait(30) == -signal.SIGTERM
    finally:
        stop.set()
        other.join()
        parent.close()
