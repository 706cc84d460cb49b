"""The supervisor's self-pipe: signal handlers (through ``signal.set_wakeup_fd``) and other threads
write a byte to it, so that a wait on a worker or a back-off's sleep ends at once instead of at its
next tick. The handlers only record; the supervisor's loop decides (see ``runner.supervisor``)."""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

__all__ = ["Wakeup"]


class Wakeup:
    """While entered: ``r`` wakes a ``select`` when a handled signal arrives or anyone writes to ``w``."""

    def __init__(self, signals: Iterable[int], handler: Callable[[int, Any], None]) -> None:
        self.signals, self.handler = set(signals), handler
        self.r = self.w = -1
        self._old_fd = -1
        self._old: dict[int, Any] = {}

    def __enter__(self) -> Wakeup:
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old_fd = signal.set_wakeup_fd(self.w)
        self._old = {s: signal.signal(s, self.handler) for s in self.signals}
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        signal.set_wakeup_fd(self._old_fd)
        os.close(self.r)
        os.close(self.w)
        self.r = self.w = -1

    def drain(self) -> None:
        try:
            while os.read(self.r, 512):
                pass
        except (BlockingIOError, OSError):
            pass

    def sleep(self, seconds: float, done: Callable[[], bool]) -> None:
        """Sleep ``seconds``, or less: until ``done()`` says so, checked whenever something wakes us."""
        deadline = time.monotonic() + seconds
        while not done() and (left := deadline - time.monotonic()) > 0:
            select.select([self.r], [], [], left)
            self.drain()
