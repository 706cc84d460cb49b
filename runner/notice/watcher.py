"""The watcher: each source polled in a daemon thread, each distinct notice handed to a callback once.

A metadata server that hangs, refuses, or answers garbage costs an error count and a growing pause,
never an exception in the caller nor a busy loop; :meth:`NoticeWatcher.close` aborts the requests in
flight, so it returns at once even in a long poll.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence

from .base import Notice, Source

__all__ = ["NoticeWatcher", "next_pause", "fresh_notices"]


def next_pause(interval_s: float, consecutive_errors: int, min_pause_s: float, max_backoff_s: float) -> float:
    """The pause before the next poll: the source's interval, doubled per error in a row up to
    ``max_backoff_s``, and never under ``min_pause_s`` (a server that fails at once must not spin us)."""
    base = max(interval_s, min_pause_s)
    if consecutive_errors <= 0:
        return base
    return max(base, min(max_backoff_s, base * 2.0 ** min(consecutive_errors - 1, 32)))


def fresh_notices(notices: Iterable[Notice], seen: set[tuple[object, ...]]) -> list[Notice]:
    """The notices not seen before, in order; ``seen`` learns their keys."""
    out = []
    for n in notices:
        if n.key not in seen:
            seen.add(n.key)
            out.append(n)
    return out


class NoticeWatcher:
    """Polls ``sources`` until closed and calls ``on_notice`` (from a watcher thread) once per notice."""

    def __init__(self, sources: Source | Sequence[Source], on_notice: Callable[[Notice], None], *,
                 min_pause_s: float = 0.05, max_backoff_s: float = 30.0) -> None:
        self.sources: list[Source] = [sources] if not isinstance(sources, Sequence) else list(sources)
        self.on_notice = on_notice
        self.min_pause_s = min_pause_s
        self.max_backoff_s = max_backoff_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._seen: set[tuple[object, ...]] = set()
        self._threads: list[threading.Thread] = []
        self.polls = 0
        self.errors = 0
        self.last_error: str | None = None
        self.delivered: list[Notice] = []

    def start(self) -> NoticeWatcher:
        for i, source in enumerate(self.sources):
            t = threading.Thread(target=self._run, args=(source,), name=f"notice-{source.source.value}-{i}",
                                 daemon=True)
            self._threads.append(t)
            t.start()
        return self

    def close(self, timeout_s: float = 2.0) -> bool:
        """Stop polling; True if every thread ended within ``timeout_s`` (they are daemons either way)."""
        self._stop.set()
        for source in self.sources:
            try:
                source.close()
            except Exception:  # closing is best effort; the threads are daemons
                pass
        for t in self._threads:
            t.join(timeout_s)
        return not any(t.is_alive() for t in self._threads)

    def __enter__(self) -> NoticeWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def _run(self, source: Source) -> None:
        errors_in_a_row = 0
        while not self._stop.is_set():
            try:
                notices = source.poll()
                errors_in_a_row = 0
            except Exception as e:  # a garbled answer, a dead server: count it and keep watching
                if self._stop.is_set():
                    break
                errors_in_a_row += 1
                self._count(error=f"{type(e).__name__}: {e}")
                notices = []
            else:
                self._count()
            self._deliver(notices)
            self._stop.wait(next_pause(source.interval_s, errors_in_a_row, self.min_pause_s, self.max_backoff_s))

    def _count(self, error: str | None = None) -> None:
        with self._lock:
            self.polls += 1
            if error is not None:
                self.errors += 1
                self.last_error = error

    def _deliver(self, notices: list[Notice]) -> None:
        with self._lock:  # two sources' threads share one memory of what was delivered
            new = fresh_notices(notices, self._seen)
            self.delivered.extend(new)
        for n in new:
            if self._stop.is_set():
                return
            try:
                self.on_notice(n)
            except Exception as e:  # the caller's bug must not end the watch
                self._count(error=f"on_notice: {type(e).__name__}: {e}")
