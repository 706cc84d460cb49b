"""Fakes for the supervisor's unit tests: a clock, and a launcher whose workers play scripts.

A :class:`FakeWorker` follows a :class:`Script`: at given seconds after it started (or, for a spare,
after its go line) it writes records into the run directory as a worker would, and exits with a
given status; it answers signals as a worker would, and never starts a process. Time moves only when
the supervisor waits on a worker or sleeps. Also here: :class:`SupervisorRecords`, what a supervised
run wrote, and broken variants of :func:`runner.watch.decide`, which the tables must catch.
"""

from __future__ import annotations

import json
import math
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rundir.classify import ExitClass
from rundir.events import EventKind, Source
from rundir.journal import append_record, read_records
from rundir.names import ENV_ATTEMPT, ENV_STANDBY, EVENTS, HEARTBEAT, LOSSES
from runner.launcher import Worker
from runner.process import Usage, Vitals
from runner.watch import Action, Decision, Watch, decide

LIMIT = 120.0  # fake seconds: a run past this is a runaway (a decision that never ends a worker)
WALL0 = 1_800_000_000.0  # the wall clock (seconds since the epoch) at fake time 0


class Runaway(Exception):
    """The fake clock ran past LIMIT."""


class Clock:
    """Monotonic seconds that move only when a fake worker is waited on or the supervisor sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []
        self.on_sleep: Callable[[], None] | None = None
        self.alarms: list[tuple[float, Callable[[], None]]] = []

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        """The same time as seconds since the epoch (notices and events carry those)."""
        return WALL0 + self.now

    def at(self, t: float, then: Callable[[], None]) -> None:
        """Call ``then`` once time reaches ``t`` (as from another thread, e.g. a notice's watcher)."""
        self.alarms = sorted([*self.alarms, (t, then)], key=lambda a: a[0])

    def advance_to(self, t: float) -> None:
        if t > LIMIT:
            raise Runaway(f"the run went on past {LIMIT} s")
        self.now = max(self.now, t)
        while self.alarms and self.alarms[0][0] <= self.now:
            self.alarms.pop(0)[1]()

    def sleep(self, seconds: float) -> None:
        self.slept.append(float(seconds))
        if self.on_sleep is not None:
            self.on_sleep()
        self.advance_to(self.now + seconds)


# -- what a fake worker does ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """Complete step ``n``: a record in losses.jsonl and, unless ``beat`` is False, a heartbeat."""

    n: int
    beat: bool = True


@dataclass(frozen=True)
class Beat:
    """Touch the heartbeat only."""

    phase: str = "train"


@dataclass(frozen=True)
class Started:
    """The worker's ``attempt-started`` event."""

    resumed_from: int


@dataclass(frozen=True)
class Exit:
    code: int
    said: str | None = None  # its last line in the log


@dataclass(frozen=True)
class SignalSupervisor:
    """A signal to the supervisor (as from the user), at this moment of the worker's life."""

    sig: int


@dataclass(frozen=True)
class Fallback:
    """The worker's ``checkpoint-fallback`` event: it passed over a corrupt checkpoint."""

    reason: str


@dataclass(frozen=True)
class Freeze:
    """The worker is stopped (state T), as by a SIGSTOP from someone else, and does nothing more."""


Op = Step | Beat | Started | Exit | SignalSupervisor | Freeze | Fallback


@dataclass(frozen=True)
class Script:
    ops: tuple[tuple[float, Op], ...]
    on_term: int | None = 75  # its exit status on SIGTERM; None: it ignores SIGTERM
    busy: bool = False  # its CPU time runs with the clock (unless stopped); else it never moves

    def __post_init__(self) -> None:
        assert list(self.ops) == sorted(self.ops, key=lambda o: o[0])


def training(first: int, last: int, *, end: int | None = 0, said: str | None = None, every: float = 1.0,
             beats: bool = True, on_term: int | None = 75, extra: Sequence[tuple[float, Op]] = ()) -> Script:
    """Resume at step ``first`` (said at 0.5 s), complete steps ``first..last`` one every ``every``
    seconds from 1 s, and exit with ``end`` one second after the last (None: go silent instead)."""
    ops: list[tuple[float, Op]] = [(0.5, Started(first))]
    ops += [(1.0 + i * every, Step(n, beat=beats)) for i, n in enumerate(range(first, last + 1))]
    if end is not None:
        ops.append((ops[-1][0] + 1.0, Exit(end, said)))
    return Script(tuple(sorted([*ops, *extra], key=lambda o: o[0])), on_term=on_term)


SILENT = Script(())  # starts, and never says or does anything


class FakeWorker:
    """A :class:`runner.launcher.Worker` that plays a :class:`Script`; a spare waits for its go line."""

    def __init__(self, launcher: FakeLauncher, pid: int, env: Mapping[str, str], log: Path,
                 attempt: int | None, script: Script) -> None:
        self.launcher, self.clock, self.run_dir = launcher, launcher.clock, launcher.run_dir
        self.pid, self.env, self.attempt, self.script = pid, dict(env), attempt, script
        self.forked = False
        self.t0 = self.spawned_at = self.clock.now
        self.returncode: int | None = None
        self.usage: Usage | None = None
        self.signals: list[tuple[float, int]] = []  # (seconds after t0, signal)
        self.told: list[dict[str, Any]] = []
        self._log = open(log, "ab")  # kept open: it follows the file when a spare's log is renamed
        self._next = 0
        self._stopped = False
        self._steps = 0  # steps done (the highest step it completed, plus one)

    # -- the script

    def _run_until(self, t: float) -> None:
        while self.returncode is None and not self._stopped and self._next < len(self.script.ops):
            at, op = self.script.ops[self._next]
            if self.t0 + at > t:
                return
            self._next += 1
            self.clock.advance_to(self.t0 + at)
            self._do(op)

    def _do(self, op: Op) -> None:
        if isinstance(op, Step):
            self._steps = max(self._steps, op.n + 1)
            append_record(self.run_dir / LOSSES, {"attempt": self.attempt, "step": op.n, "epoch": op.n // 100,
                                                  "loss": 1.0 / (op.n + 1), "dt": 1.0})
            if op.beat:
                self._beat("train")
        elif isinstance(op, Beat):
            self._beat(op.phase)
        elif isinstance(op, Started):
            append_record(self.run_dir / EVENTS, {"time": 0.0, "source": Source.WORKER.value,
                                                  "event": EventKind.ATTEMPT_STARTED.value, "attempt": self.attempt,
                                                  "resumed_from_step": op.resumed_from, "total_steps": 100})
        elif isinstance(op, Fallback):
            append_record(self.run_dir / EVENTS, {"time": 0.0, "source": Source.WORKER.value, "reason": op.reason,
                                                  "event": EventKind.CHECKPOINT_FALLBACK.value,
                                                  "attempt": self.attempt})
        elif isinstance(op, Freeze):
            self._stopped = True
        elif isinstance(op, Exit):
            if op.said:
                self._log.write(op.said.encode() + b"\n")
            self._exit(op.code)
        else:
            assert self.launcher.request_stop is not None
            self.launcher.request_stop(op.sig)

    def _beat(self, phase: str) -> None:
        path = self.run_dir / HEARTBEAT
        path.write_text(json.dumps({"attempt": self.attempt, "pid": self.pid, "phase": phase}))
        ns = int(self.clock.now * 1e9) + 1
        os.utime(path, ns=(ns, ns))  # the fake time, not the file system's coarse clock

    def _exit(self, code: int) -> None:
        self.returncode = code
        self.usage = Usage(peak_rss_mb=100.0, cpu_s=1.5)
        self._log.close()

    # -- the Worker protocol

    def wait(self, timeout: float, wake_fds: Sequence[int] = ()) -> bool:
        if self.returncode is None:
            end = self.clock.now + timeout
            self._run_until(end)
            if self.returncode is None:
                self.clock.advance_to(end)
        return self.returncode is not None

    def poll(self) -> bool:
        return self.wait(0)

    def tell(self, data: bytes) -> bool:
        if self.returncode is not None:
            return False
        go = json.loads(data)
        self.told.append(go)
        self.attempt = int(go["attempt"])
        self.script, self._next, self.t0 = self.launcher.script_for(self.attempt), 0, self.clock.now
        return True

    def vitals(self) -> Vitals | None:
        if self.returncode is not None:
            return None
        cpu = self.clock.now - self.t0 if self.script.busy and not self._stopped else 0.0
        return Vitals(cpu_s=cpu, state="stopped" if self._stopped else "running" if self.script.busy else "sleeping")

    def send(self, sig: int) -> None:
        if self.returncode is not None:
            return
        self.signals.append((self.clock.now - self.t0, sig))
        if sig == signal.SIGKILL:
            self._exit(-signal.SIGKILL)
        elif sig == signal.SIGSTOP:
            self._stopped = True
        elif sig == signal.SIGCONT:
            self._stopped = False
        elif sig == signal.SIGTERM and self.script.on_term is not None and not self._stopped:
            if self.script.on_term == 75 and self._steps:  # saved at once, durably, as the built-in job does
                append_record(self.run_dir / EVENTS, {
                    "time": self.clock.wall(), "source": Source.WORKER.value, "attempt": self.attempt,
                    "event": EventKind.CHECKPOINT_SAVED.value, "step": self._steps, "durable": True,
                    "name": f"step-{self._steps:09d}", "persist_s": 0.25, "asynchronous": False})
            self._exit(self.script.on_term)

    def stop(self, grace: float) -> bool:
        self.send(signal.SIGTERM)
        self.send(signal.SIGCONT)
        if self.wait(grace):
            return True
        self.kill()
        return False

    def kill(self) -> None:
        self.send(signal.SIGKILL)

    def kill_leftovers(self) -> None:
        pass


class SupervisorRecords:
    """What a supervised run wrote, for a test's ``Run`` dataclass to inherit: it names ``run_dir``."""

    run_dir: Path

    def events(self, kind: EventKind) -> list[dict[str, Any]]:
        """The supervisor's events of ``kind``, oldest first."""
        return [e for e in read_records(self.run_dir / EVENTS)
                if e.get("event") == kind.value and e.get("source") == Source.SUPERVISOR.value]

    @property
    def classes(self) -> list[ExitClass]:
        """How each attempt ended, in order."""
        return [ExitClass(e["exit_class"]) for e in self.events(EventKind.ATTEMPT_EXITED)]


class FakeLauncher:
    """Starts :class:`FakeWorker`\\ s: attempt N plays ``scripts[N-1]`` (the last one for any later
    attempt); a spare plays ``spare`` until its go line, then its attempt's script."""

    def __init__(self, run_dir: Path, clock: Clock, scripts: Sequence[Script], spare: Script = SILENT) -> None:
        self.run_dir, self.clock, self.scripts, self.spare = run_dir, clock, list(scripts), spare
        self.workers: list[FakeWorker] = []
        self.request_stop: Callable[[int], None] | None = None  # the supervisor's
        self.opened = self.closed = False

    def script_for(self, attempt: int) -> Script:
        return self.scripts[min(attempt, len(self.scripts)) - 1]

    def open(self) -> None:
        self.opened = True

    def start(self, env: Mapping[str, str], log: Path, *, stdin_pipe: bool = False) -> Worker:
        log.parent.mkdir(parents=True, exist_ok=True)
        spare = env.get(ENV_STANDBY) == "1"
        assert stdin_pipe is spare, "a spare, and only a spare, has a pipe on its stdin"
        attempt = None if spare else int(env[ENV_ATTEMPT])
        w = FakeWorker(self, 4000 + len(self.workers), env, log, attempt,
                       self.spare if attempt is None else self.script_for(attempt))
        self.workers.append(w)
        return w

    def close(self) -> None:
        self.closed = True


# -- broken variants of decide -------------------------------------------------------------------------

Decide = Callable[..., Decision]


def ignores_hang_timeout(w: Watch, now: float, **kwargs: Any) -> Decision:
    return decide(w, now, **{**kwargs, "hang_timeout": math.inf})


def ignores_stop(w: Watch, now: float, **kwargs: Any) -> Decision:
    return decide(w, now, **{**kwargs, "stop_requested": False})


def ignores_kill_at(w: Watch, now: float, **kwargs: Any) -> Decision:
    return decide(replace(w, kill_at=None), now, **kwargs)


def never_spawns_a_spare(w: Watch, now: float, **kwargs: Any) -> Decision:
    return decide(w, now, **{**kwargs, "want_spare": False})


def spawns_a_spare_at_once(w: Watch, now: float, **kwargs: Any) -> Decision:
    d = decide(w, now, **kwargs)
    return replace(d, spawn_spare=kwargs["want_spare"] and d.action in (Action.CONTINUE, Action.KILL_AFTER_CHAOS))


def hangs_at_the_timeout(w: Watch, now: float, **kwargs: Any) -> Decision:
    # ">=" for ">": a worker silent exactly the timeout is killed
    return decide(w, now, **{**kwargs, "hang_timeout": kwargs["hang_timeout"] - 1e-9})


def hang_from_the_spawn(w: Watch, now: float, **kwargs: Any) -> Decision:
    # signs of life ignored: silence counted from the spawn
    return decide(replace(w, last_alive=w.spawned_at), now, **kwargs)


def ignores_cpu_progress(w: Watch, now: float, **kwargs: Any) -> Decision:
    # slow is taken for stuck: a busy worker silent past the hang timeout is killed
    return decide(replace(w, busy_at=None, cpu_s=None), now, **kwargs)


def ignores_startup_timeout(w: Watch, now: float, **kwargs: Any) -> Decision:
    return decide(w, now, **{**kwargs, "startup_timeout": math.inf})


def hang_timeout_in_startup(w: Watch, now: float, **kwargs: Any) -> Decision:
    # start-up judged by the step hang timeout, as if it were training
    return decide(replace(w, last_step=w.last_step if w.last_step is not None else -1, phase=None), now, **kwargs)


def ignores_stopped(w: Watch, now: float, **kwargs: Any) -> Decision:
    return decide(replace(w, stopped=False), now, **kwargs)


MUTANTS: dict[str, Decide] = {f.__name__.replace("_", "-"): f for f in (
    ignores_hang_timeout, ignores_stop, ignores_kill_at, never_spawns_a_spare, spawns_a_spare_at_once,
    hangs_at_the_timeout, hang_from_the_spawn, ignores_cpu_progress, ignores_startup_timeout,
    hang_timeout_in_startup, ignores_stopped,
)}
