"""The supervisor's ear for preemption notices: it finds the source (``auto`` probes in a thread, so
the first worker starts at once), watches it, and hands each notice to the main loop, which decides
(:mod:`runner.preempt`) and records; after the worker saved its state it measures notice-to-commit
against the deadline and approves an Azure event early.

Threads only queue what they heard and wake the main loop (through the supervisor's wake pipe);
every record, note and decision happens on the main thread, in :meth:`NoticeDesk.take`,
:meth:`NoticeDesk.observe` and :meth:`NoticeDesk.conclude`. A signal handler only queues its signal.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from checkpoint.storage import LocalStorage
from checkpoint.store import MANIFEST, CheckpointStore
from rundir.events import EventKind
from rundir.exitcodes import ExitCode

from .notice import (
    NOTICE_WINDOW_S,
    AzureSource,
    Detection,
    Notice,
    NoticeChoice,
    NoticeSource,
    NoticeWatcher,
    Source,
    detect,
    notice_deadline_ok,
    signal_notice,
    sources_for,
)
from .notice.base import resolve_endpoint
from .policy import AttemptResult
from .preempt import (
    NOTICE_MARGIN_S,
    Commit,
    NoticeSettings,
    Preemption,
    Reaction,
    SaveCost,
    commit_figures,
    deadline_check,
    describe_notice,
    preempted_message,
    preemption,
    respond,
    steps_lost,
)
from .view import describe_exit

__all__ = ["NoticeDesk"]

_CLOUDS = frozenset({NoticeChoice.AWS, NoticeChoice.GCP, NoticeChoice.AZURE})


class NoticeDesk:
    """Watches for notices as ``settings`` say; ``record`` and ``note`` are the supervisor's."""

    def __init__(self, settings: NoticeSettings, run_dir: Path, *, grace: float,
                 record: Callable[..., None], note: Callable[[str], None], environ: Mapping[str, str] | None = None,
                 detect_fn: Callable[..., Detection] = detect,
                 sources_fn: Callable[..., list[Source]] = sources_for,
                 wall: Callable[[], float] = time.time) -> None:
        """``detect_fn`` and ``sources_fn``: :func:`runner.notice.detect` and :func:`runner.notice.sources_for`,
        or fakes; ``wall``: the clock of notice times (seconds since the epoch)."""
        self.settings, self.run_dir, self.grace = settings, Path(run_dir), grace
        self._record, self._note, self.wall = record, note, wall
        self._env = dict(os.environ if environ is None else environ)
        self._detect, self._sources_for = detect_fn, sources_fn
        self.signals = settings.notice_signals(self._env)
        self._inbox: queue.SimpleQueue[Notice | Detection | int] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._wake_fd = -1
        self.watcher: NoticeWatcher | None = None
        self.detection: Detection | None = None  # once logged, on the main thread
        self._steps: deque[float] = deque(maxlen=8)
        self._save_s: float | None = None  # the slowest durable checkpoint seen
        self._last_commit: Commit | None = None
        self._checked = False
        self.preemption: Preemption | None = None  # the notice acted on, once one is

    # -- threads: detection, the watcher, signals ---------------------------------------------------

    def start(self, wake_fd: int = -1) -> None:
        """Start watching; a byte written to ``wake_fd`` (non-blocking) makes the main loop look."""
        self._wake_fd = wake_fd
        choice = self.settings.choice
        if choice is NoticeChoice.AUTO:
            threading.Thread(target=self._detect_now, name="notice-detect", daemon=True).start()
        elif choice is not NoticeChoice.NONE:
            endpoint = (resolve_endpoint(NoticeSource(choice.value), self.settings.metadata_url, self._env)
                        if choice in _CLOUDS else None)
            self._found(Detection(choice, endpoint, f"--notice {choice.value}", 0.0))

    def _detect_now(self) -> None:
        try:
            d = self._detect(self.settings.metadata_url, self._env)
        except Exception as e:  # a bug in detection must not end the supervisor: watch nothing
            d = Detection(NoticeChoice.NONE, None, f"detection failed: {type(e).__name__}: {e}", 0.0)
        self._found(d)

    def _found(self, d: Detection) -> None:
        sources = self._sources_for(d.choice, self.settings.metadata_url, self._env)
        for s in sources:
            if self.settings.poll_s is not None:
                s.interval_s = self.settings.poll_s
        with self._lock:
            if self._closed:
                return
            if sources:
                self.watcher = NoticeWatcher(sources, self.deliver).start()
        self._inbox.put(d)
        self._poke()

    def deliver(self, notice: Notice) -> None:
        """Hand a notice in, from any thread (the watcher does)."""
        self._inbox.put(notice)
        self._poke()

    def _poke(self) -> None:
        with self._lock:  # never into a wake pipe the supervisor closed
            if self._closed or self._wake_fd < 0:
                return
            try:
                os.write(self._wake_fd, b"n")
            except OSError:  # full: the loop wakes anyway
                pass

    def on_signal(self, signum: int) -> None:
        """From the signal handler: only queued (the handler's signal wakes the loop itself)."""
        self._inbox.put(signum)

    @property
    def waiting(self) -> bool:
        return not self._inbox.empty()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            watcher = self.watcher
        if watcher is not None:
            watcher.close()

    # -- the main thread ---------------------------------------------------------------------------

    def take(self, now: float, attempt: int | None = None, last_step: int | None = None) -> Preemption | None:
        """Log what arrived since the last call (``now``: monotonic; the attempt watched, if any, and its
        last step); the first notice to act on becomes :attr:`preemption`, which is returned."""
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return self.preemption
            if isinstance(item, Detection):
                self._log_detection(item)
                continue
            notice = self._signal_notice(item) if isinstance(item, int) else item
            reaction = respond(notice, stopping=self.preemption is not None, act_on_early=self.settings.act_on_early)
            if reaction is Reaction.ACT:
                self.preemption = preemption(notice, now, self.wall())
            self._log_notice(notice, reaction, attempt, last_step)

    def _signal_notice(self, signum: int) -> Notice:
        """A signal's notice: Slurm's or Kubernetes' as ``--notice`` says, else as the environment does."""
        n = signal_notice(signum, self._env, self.wall())
        named = {NoticeChoice.K8S: NoticeSource.K8S, NoticeChoice.SLURM: NoticeSource.SLURM}.get(self.settings.choice)
        return replace(n, source=named) if named is not None else n

    def _log_detection(self, d: Detection) -> None:
        self.detection = d
        names = sorted(signal.Signals(s).name for s in self.signals)
        self._record(EventKind.NOTICE_SOURCE_DETECTED, choice=d.choice.value, endpoint=d.endpoint, reason=d.reason,
                     elapsed_s=round(d.elapsed_s, 4), signals=names)
        self._note(d.describe() + (f"; {', '.join(names)} to the supervisor: a notice" if names else ""))
        self._check_deadline()

    def _log_notice(self, n: Notice, reaction: Reaction, attempt: int | None, last_step: int | None) -> None:
        cost = self._cost()
        now = self.wall()
        ok = None if cost is None else notice_deadline_ok(n.deadline, now, cost.total_s, NOTICE_MARGIN_S)
        left = None if n.deadline is None else round(n.deadline - now, 3)
        self._record(EventKind.PREEMPTION_NOTICE, **_notice_fields(n), reaction=reaction.value, **_attempt(attempt),
                     last_step=last_step, seconds_left=left, save_s=None if cost is None else round(cost.total_s, 3),
                     deadline_ok=ok)
        what = {Reaction.ACT: "stopping the worker to save its state",
                Reaction.REPORT: "an early warning: reported only (--act-on-rebalance acts on it)",
                Reaction.RECORD: "already stopping: recorded only"}[reaction]
        self._note(f"{describe_notice(n)}: {what}")
        if ok is False and reaction is Reaction.ACT and cost is not None:
            self._note(f"warning: {left:.1f} s left, and saving the state has taken up to {cost.total_s:.2f} s: "
                       "it may not commit before the deadline")

    def observe(self, events: Sequence[Mapping[str, Any]], steps: Sequence[Mapping[str, Any]]) -> None:
        """The watched worker's new records: its step times and its commits."""
        for rec in steps:
            dt = rec.get("dt")
            if isinstance(dt, int | float):
                self._steps.append(float(dt))
        for e in events:
            if e.get("event") != EventKind.CHECKPOINT_SAVED or not isinstance(e.get("step"), int):
                continue
            durable = e.get("durable") is True
            if durable:
                persist = e.get("persist_s")
                if isinstance(persist, int | float):
                    self._save_s = max(self._save_s or 0.0, float(persist))
                self._last_commit = Commit(e["step"], str(e.get("name")), float(e.get("time", 0.0)), durable)
        self._check_deadline()

    def _cost(self) -> SaveCost | None:
        if self._save_s is None:
            return None
        return SaveCost(max(self._steps, default=0.0), self._save_s, self._newest()[1])

    def _check_deadline(self) -> None:
        """Once the source's window and the cost of saving are both known: say whether it fits."""
        d = self.detection
        if self._checked or d is None or d.choice not in _CLOUDS or self._save_s is None:
            return
        self._checked = True
        cost = self._cost()
        assert cost is not None
        window = NOTICE_WINDOW_S[NoticeSource(d.choice.value)]
        ok, text = deadline_check(d.choice.value, window, self.grace, cost)
        self._record(EventKind.NOTICE_DEADLINE_CHECK, notice=d.choice.value, window_s=window, grace_s=self.grace,
                     step_s=round(cost.step_s, 4), checkpoint_s=round(cost.checkpoint_s, 4),
                     checkpoint_bytes=cost.checkpoint_bytes, margin_s=NOTICE_MARGIN_S, ok=ok)
        if not ok:
            self._note(f"warning: {text}")

    def _newest(self) -> tuple[int | None, int | None]:
        """The newest committed checkpoint's step and size (not verified: the next worker does that)."""
        store = CheckpointStore(LocalStorage(self.run_dir))
        try:
            names = store.committed()
            if not names:
                return None, None
            manifest = json.loads(store.storage.get(f"{store.prefix}/{names[-1]}/{MANIFEST}"))
            size = sum(int(f["size"]) for f in manifest["files"].values())
            return int(manifest["step"]), size
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None, None

    def conclude(self, r: AttemptResult | None, now: float) -> tuple[ExitCode, str]:
        """After the worker stopped for :attr:`preemption` (``r``: its attempt; None if none was running):
        measure, approve (Azure), record, and the supervisor's exit code and closing line."""
        self.take(now, r.attempt if r else None, r.last_step if r else None)
        p = self.preemption
        assert p is not None
        saved, _ = self._newest()
        commit = self._last_commit
        if commit is None or commit.time < p.notice.received:
            commit = None
        else:
            saved = max(saved or 0, commit.step)
        lost = steps_lost(r.last_step if r else None, saved)
        approved = self._approve(p.notice) if commit is not None and lost == 0 else None
        self._record(EventKind.NOTICE_HANDLED, **_notice_fields(p.notice), **_attempt(r.attempt if r else None),
                     returncode=r.returncode if r else None, last_step=r.last_step if r else None,
                     saved_step=saved, checkpoint=commit.name if commit else None,
                     committed_at=commit.time if commit else None, **commit_figures(p.notice, commit),
                     steps_lost=lost, approved=approved)
        msg = preempted_message(p.notice, saved_step=saved, lost=lost, exit_how=describe_exit(r) if r else "")
        self._record(EventKind.STOPPED, reason=msg, exit_class=r.exit_class.value if r else None)
        return ExitCode.PREEMPTED, msg

    def _approve(self, n: Notice) -> bool | None:
        """Azure: the state is saved, so let the event start now rather than at its NotBefore."""
        event_id = n.detail.get("EventId")
        watcher = self.watcher
        if n.source is not NoticeSource.AZURE or not event_id or watcher is None:
            return None
        azure = [s for s in watcher.sources if isinstance(s, AzureSource)]
        return azure[0].approve(str(event_id)) if azure else None



def _attempt(attempt: int | None) -> dict[str, int]:
    """``attempt`` as an event field: readers take it for an int, so it is left out when unknown."""
    return {} if attempt is None else {"attempt": attempt}


def _notice_fields(n: Notice) -> dict[str, Any]:
    """A notice as event fields: ``source`` and ``event`` name the record itself, so the notice's
    own are ``notice`` and ``notice_kind``."""
    return {"notice": n.source.value, "notice_kind": n.kind.value, "deadline": n.deadline, "received": n.received,
            "early": n.early, "detail": dict(n.detail)}
