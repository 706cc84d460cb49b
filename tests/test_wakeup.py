"""runner/wakeup.py: a handled signal, or a byte from another thread, ends a sleep at once; the
handlers before it are put back when it is left."""

from __future__ import annotations

import os
import signal
import threading
import time

from runner.wakeup import Wakeup


def test_a_signal_ends_the_sleep_and_is_recorded() -> None:
    got: list[int] = []
    before = signal.getsignal(signal.SIGUSR1)
    with Wakeup({signal.SIGUSR1}, lambda s, f: got.append(s)) as wake:
        threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        t0 = time.monotonic()
        wake.sleep(30.0, lambda: bool(got))
        assert got == [signal.SIGUSR1] and time.monotonic() - t0 < 10
    assert signal.getsignal(signal.SIGUSR1) == before


def test_a_byte_from_another_thread_wakes_it_and_done_is_asked_again() -> None:
    flag = threading.Event()
    with Wakeup((), lambda s, f: None) as wake:
        def poke() -> None:
            flag.set()
            os.write(wake.w, b"x")

        threading.Timer(0.1, poke).start()
        t0 = time.monotonic()
        wake.sleep(30.0, flag.is_set)
        assert time.monotonic() - t0 < 10


def test_without_a_wake_it_sleeps_the_time() -> None:
    with Wakeup((), lambda s, f: None) as wake:
        t0 = time.monotonic()
        wake.sleep(0.2, lambda: False)
        assert time.monotonic() - t0 >= 0.2
