"""The supervisor: start the worker, watch it, classify its exit, restart it through the retry policy.

A :class:`WorkerSpec` says what to run and is only read; the :class:`Supervisor` holds the live
state. Each attempt is ``launch -> watch -> end -> classify``. The watch wakes when the worker exits,
when a signal arrives, or every ``TICK`` seconds (``CHAOS_TICK`` under chaos, whose faults aim at
steps and phases) to read the journal and heartbeat; what to do then is decided by the pure
functions of :mod:`runner.watch` and done here. Workers come from a :mod:`runner.launcher`, the
warm spare from :mod:`runner.standby`. Chaos, if any, decides *what* to do to the worker; this
module does it. A worker that exits 74 (no space) is restarted once space returns
(:mod:`runner.diskwait`); the supervisor's own writes to a full disk are dropped with a warning.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tenacity import RetryCallState

from rundir.classify import ExitClass, classify_exit, signal_name
from rundir.contract import DISK_WAIT_PHASE, Chaos, FileEffect, Observation, SendSignal
from rundir.errors import as_resource_error
from rundir.events import EventKind, Source
from rundir.exitcodes import ExitCode
from rundir.journal import event_problem, loss_problem
from rundir.lock import RunLock
from rundir.names import ENV_ATTEMPT, EVENTS, LOSSES, heartbeat_mtime, read_heartbeat, worker_env

from .diskwait import DEFAULT_DISK_WAIT_S, DiskAction, DiskWait, give_up_message
from .forkserver import ForkServer
from .gang import deliver
from .launcher import Launcher, Worker, launcher_for
from .notice_desk import NoticeDesk
from .policy import AttemptResult, RetryPolicy, WorkerFailed, build_retrying, give_up_reason, unproductive_restarts
from .preempt import NoticeSettings, stop_grace
from .runfiles import EventSink, Fallbacks, Tail, last_error_line
from .standby import Standby
from .view import PlainView, View, describe_exit
from .wakeup import Wakeup
from .watch import Action, Decision, Reading, Watch, arm_kill, begin, decide, observe

__all__ = ["WorkerSpec", "Supervisor", "Outcome"]

TICK = 0.1
CHAOS_TICK = 0.02


@dataclass(frozen=True)
class WorkerSpec:
    cmd: tuple[str, ...]
    run_dir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    hang_timeout: float = 300.0  # silent and idle for this long while training: hung (see runner.watch)
    #: Start-up (interpreter, imports, data, restore), a checkpoint, or the fork server's imports may take
    #: this long; so may a worker that is busy but silent.
    startup_timeout: float = 600.0
    grace: float = 30.0
    policy: RetryPolicy = RetryPolicy()
    standby: bool = True  # keep a warm spare worker ready to take over
    #: Modules a fork server imports once; workers are then forked from it (see
    #: :mod:`runner.forkserver`). Empty, or a command it cannot run: every worker starts with exec.
    preload: tuple[str, ...] = ()
    #: After a worker's exit for want of space (74), wait up to this long in all for space to return.
    disk_wait: float = DEFAULT_DISK_WAIT_S
    notice: NoticeSettings = NoticeSettings()  # where to watch for a preemption notice (runner.preempt)


@dataclass(frozen=True)
class Outcome:
    code: ExitCode
    message: str
    history: tuple[AttemptResult, ...]
    wall_s: float


class Supervisor:
    """Runs one job: attempts through the retry policy, each one watched until it exits or is ended.

    How a worker is started is the ``launcher``'s business (by default exec, or forks from a server
    that preloaded ``spec.preload``); what to do each tick is :func:`runner.watch.decide`'s. This
    class reads the run directory, carries out decisions, and records what it did."""

    def __init__(self, spec: WorkerSpec, *, view: View | None = None, chaos: Chaos | None = None,
                 sleep: Callable[[float], None] | None = None, lock: RunLock | None = None,
                 fork_server: ForkServer | None = None, launcher: Launcher | None = None,
                 clock: Callable[[], float] | None = None, free: Callable[[Path], int] | None = None) -> None:
        """``lock``: the run directory's lock, if the caller took it already; ``fork_server``: one
        the caller started for ``spec.preload`` (the CLI does, so that it imports while the rest of
        the supervisor does), for the default launcher, which closes it when :meth:`run` ends;
        ``launcher``: another way to start workers; ``sleep`` and ``clock`` (monotonic seconds):
        the back-off's sleep and the watch's time, and ``free`` the run directory's free bytes, for tests."""
        self.spec = spec
        self.run_dir = Path(spec.run_dir)
        self.view = view or PlainView()
        self.chaos = chaos
        self._sleep = sleep or self._interruptible_sleep
        self._clock = clock or time.monotonic
        self.history: list[AttemptResult] = []
        self._stop_signal: int | None = None
        self._wake = Wakeup((), self._on_signal)  # entered by run()
        self.losses = Tail(self.run_dir / LOSSES, loss_problem)
        self.events = Tail(self.run_dir / EVENTS, event_problem)
        self._sink = EventSink(self.run_dir / EVENTS, Source.SUPERVISOR, self.view.note)
        self.high_water = -1
        self.next_attempt = 1
        self._fallbacks = Fallbacks()
        self.launcher = launcher or launcher_for(
            spec.cmd, spec.preload, run_dir=self.run_dir, env=spec.env, timeout=spec.startup_timeout,
            record=self.record, note=self.view.note, server=fork_server,
        )
        self.standby = Standby(self.launcher, self.run_dir, spec.env, self.record)
        self._lock = lock
        self.disk = DiskWait(self.run_dir, spec.disk_wait, sleep=self._sleep, clock=self._clock, record=self.record,
                             note=self.view.note, stopped=lambda: self._stop_signal is not None,
                             tick=self._wait_tick, free=free)
        self.notices = NoticeDesk(spec.notice, self.run_dir, grace=spec.grace, record=self.record, note=self.view.note)

    # -- effects at the edge -------------------------------------------------------------------------

    def record(self, kind: EventKind, /, **fields: Any) -> None:
        self._sink.record(kind, **fields)  # on a full disk: dropped, the first of a run of them said

    def request_stop(self, signum: int) -> None:
        """Stop the job as if ``signum`` had arrived: the watch acts on it at its next tick."""
        self._stop_signal = signum

    def _on_signal(self, signum: int, frame: object) -> None:
        # Only recorded; the monitor loop acts on it. Under Kubernetes or Slurm, a signal is a notice.
        (self.notices.on_signal if signum in self.notices.signals else self.request_stop)(signum)

    def _interruptible_sleep(self, seconds: float) -> None:
        self._wake.sleep(seconds, lambda: self._stop_signal is not None or self.notices.take(self._clock()) is not None)

    # -- the run -------------------------------------------------------------------------------------

    def run(self) -> Outcome:
        """Run the job to completion or until the policy gives up. Takes the run directory's lock."""
        t0 = self._clock()
        lock = self._lock or RunLock(self.run_dir)
        try:
            if lock.fd is None:
                lock.acquire()
            self.launcher.open()
            self._catch_up()
            self._wake = Wakeup({signal.SIGINT, signal.SIGTERM, *self.notices.signals}, self._on_signal)
            with self._wake:
                self.notices.start(self._wake.w)
                try:
                    code, message = self._retry_loop()
                finally:
                    self.notices.close()
                    self.standby.discard()
                    self.view.close()
        finally:
            self.launcher.close()
            lock.release()
        wall = self._clock() - t0
        self.record(EventKind.SUPERVISOR_EXIT, code=int(code), message=message, wall_s=round(wall, 3),
                    attempts=len(self.history), restarts=max(0, len(self.history) - 1))
        return Outcome(code, message, tuple(self.history), wall)

    def _catch_up(self) -> None:
        """A rerun continues where a killed supervisor left off: attempt numbers and progress (and what
        saving the state costs, for a notice's deadline)."""
        steps, events = self.losses.read(), self.events.read()
        for rec in steps:
            self.high_water = max(self.high_water, int(rec["step"]))
        for rec in events:
            if rec.get("source") == Source.SUPERVISOR and "attempt" in rec:
                self.next_attempt = max(self.next_attempt, int(rec["attempt"]) + 1)
        self.notices.observe(events, steps)

    def _retry_loop(self) -> tuple[ExitCode, str]:
        """Attempts through the retry policy; after an exit for want of space, the wait for space
        (:mod:`runner.diskwait`) and the policy again, with the same history."""
        while True:
            try:
                return self._attempts()
            except WorkerFailed as exc:
                if exc.result.exit_class is not ExitClass.RESOURCE:
                    return self._failure(exc.result)
                attempt, progress, error = exc.result.attempt, exc.result.made_progress, exc.result.error
            except OSError as exc:  # the supervisor's own write: an attempt's log on a full disk
                full = as_resource_error(exc)
                if full is None:
                    raise
                attempt, progress, error = self.next_attempt - 1, False, str(full)
                self.view.note(f"cannot start attempt {attempt}: {full}")
            action = self.disk.wait(attempt, progress)
            if action is None:
                return self._stopped(ExitClass.RESOURCE)
            if action is DiskAction.GIVE_UP:
                return self._out_of_space(error)
            self.record(EventKind.RESTART, after_attempt=attempt, exit_class=ExitClass.RESOURCE.value, delay_s=0.0,
                        made_progress=progress, unproductive_restarts=unproductive_restarts(self.history))

    def _attempts(self) -> tuple[ExitCode, str]:
        retrying = build_retrying(self.spec.policy, sleep=self._sleep, before_sleep=self._before_sleep)
        for attempt in retrying:
            if self.notices.take(self._clock()) is not None:  # while backing off: nothing runs, nothing to save
                return self.notices.conclude(None, self._clock())
            if self._stop_signal is not None:
                # Stopped while backing off: end here, not start a worker only to stop it at once.
                return self._stopped(self.history[-1].exit_class if self.history else None)
            with attempt:
                result = self._run_attempt()
                self.history.append(result)
                notice = self.notices.take(self._clock(), result.attempt, result.last_step)
                if notice is not None and result.exit_class is not ExitClass.COMPLETED:
                    return self.notices.conclude(result, self._clock())  # no restart on a machine going away
                if result.exit_class is not ExitClass.COMPLETED:
                    raise WorkerFailed(self.history)
        restarts = len(self.history) - 1
        self.record(EventKind.JOB_COMPLETED, attempts=len(self.history), restarts=restarts)
        msg = f"job completed after {len(self.history)} attempt(s), {restarts} restart(s)"
        self.view.note(msg)
        return ExitCode.OK, msg

    def _stopped(self, exit_class: ExitClass | None) -> tuple[ExitCode, str]:
        by = signal_name(-(self._stop_signal or signal.SIGTERM))
        msg = f"stopped by {by}; rerun the same command to continue"
        self.record(EventKind.STOPPED, reason=msg, exit_class=exit_class.value if exit_class else None)
        return ExitCode.INTERRUPTED, msg  # the caller says it, once

    def _failure(self, r: AttemptResult) -> tuple[ExitCode, str]:
        if r.exit_class is ExitClass.USER_STOPPED:
            return self._stopped(r.exit_class)
        said = (r.error or "no message").removeprefix("error: ")
        if r.exit_class is ExitClass.BAD_INPUT:
            msg = f"the worker rejected its input (exit {r.returncode}), not retrying: {said}"
            code = ExitCode(r.returncode) if r.returncode in ExitCode._value2member_map_ else ExitCode.BAD_CONFIG
        elif r.exit_class is ExitClass.NON_FINITE:
            msg, code = f"the job computed a non-finite value, not retrying: {said}", ExitCode.NON_FINITE
        else:
            msg = "giving up: " + give_up_reason(self.history, self.spec.policy)
            if r.error:
                msg += f"; last error: {r.error}"
            code = ExitCode.GAVE_UP
        kind = EventKind.GAVE_UP if code is ExitCode.GAVE_UP else EventKind.STOPPED
        self.record(kind, reason=msg, exit_class=r.exit_class.value)
        return code, msg  # the caller says it, once (Outcome.message)

    def _out_of_space(self, error: str | None) -> tuple[ExitCode, str]:
        msg = "giving up: " + give_up_message(self.run_dir, *self.disk.last, self.spec.disk_wait) + \
            (f"; last error: {error.removeprefix('error: ')}" if error else "")
        self.record(EventKind.GAVE_UP, reason=msg, exit_class=ExitClass.RESOURCE.value)
        self.view.note(msg)
        return ExitCode.IO_ERROR, msg

    def _before_sleep(self, rs: RetryCallState) -> None:
        delay = rs.next_action.sleep if rs.next_action is not None else 0.0
        r = self.history[-1]
        self.record(EventKind.RESTART, after_attempt=r.attempt, exit_class=r.exit_class.value, delay_s=round(delay, 3),
                    made_progress=r.made_progress, unproductive_restarts=unproductive_restarts(self.history))
        self.view.note(f"restarting in {delay:.2f} s after {describe_exit(r)}")

    # -- one attempt: start, watch, end, classify ----------------------------------------------------

    def _run_attempt(self) -> AttemptResult:
        n = self.next_attempt
        self.next_attempt += 1
        log = self.run_dir / "logs" / f"attempt-{n:03d}.log"
        started = time.time()
        proc = self._launch(n, log)
        w = begin(n, proc.pid, self._clock(), heartbeat=heartbeat_mtime(self.run_dir), high_water=self.high_water)
        w, ended_by = self._watch(proc, w)
        proc.kill_leftovers()
        w = observe(w, self._read(w), self._clock())  # what it wrote before it exited
        return self._finish(proc, w, ended_by, log, started)

    def _launch(self, n: int, log: Path) -> Worker:
        """Attempt ``n``'s worker: the warm spare if a live one is up, else a new one."""
        extra = dict(self.chaos.env_for(n)) if self.chaos is not None else {}
        proc = self.standby.take(n, extra, log)
        warm = proc is not None
        if proc is None:
            env = worker_env(self.spec.env)
            env[ENV_ATTEMPT] = str(n)
            env.update(extra)
            proc = self.launcher.start(env, log)
        self.record(EventKind.ATTEMPT_SPAWNED, attempt=n, pid=proc.pid, warm=warm, forked=proc.forked,
                    log=str(log.relative_to(self.run_dir)))
        self.view.attempt_started(n, proc.pid)
        return proc

    def _read(self, w: Watch, proc: Worker | None = None) -> Reading:
        """What attempt ``w.attempt`` wrote since the last tick (shown as it is read), and its heartbeat."""
        n = w.attempt
        steps = [r for r in self.losses.read() if r.get("attempt") == n]
        events = [e for e in self.events.read() if e.get("source") == Source.WORKER and e.get("attempt") == n]
        for line in self._fallbacks.warnings(events, n, self.high_water):
            self.view.note(line)
        for e in events:
            if e.get("event") == EventKind.ATTEMPT_STARTED:
                self.view.resumed(n, int(e.get("resumed_from_step") or 0), e.get("total_steps"))
        for rec in steps:
            self.high_water = max(self.high_water, int(rec["step"]))
            self.view.step(rec, restarts=len(self.history))
        self.notices.observe(events, steps)
        mtime = heartbeat_mtime(self.run_dir)
        beat = read_heartbeat(self.run_dir) if mtime != w.heartbeat or steps else None
        v = proc.vitals() if proc is not None else None
        return Reading(steps, events, mtime, beat, cpu_s=v.cpu_s if v else None, state=v.state if v else None)

    def _watch(self, proc: Worker, w: Watch) -> tuple[Watch, Action]:
        """Watch the worker until it exits, or a decision ends it; returns that decision's action
        (CONTINUE: it exited by itself). It wakes on the exit, on a signal, or every tick."""
        tick = TICK if self.chaos is None else CHAOS_TICK
        while not proc.wait(tick, wake_fds=[self._wake.r]):
            self._wake.drain()
            now = self._clock()
            reading = self._read(w, proc)
            w = observe(w, reading, now)
            preempt = self.notices.take(now, w.attempt, w.last_step) is not None
            d = decide(w, now, hang_timeout=self.spec.hang_timeout, startup_timeout=self.spec.startup_timeout,
                       stop_requested=self._stop_signal is not None, preempt=preempt,
                       want_spare=self.spec.standby and self.standby.can_spawn)
            if d.spawn_spare:
                self.standby.spawn()
            if d.action is not Action.CONTINUE:
                self._end(d, proc, w)
                return w, d.action
            if self.chaos is not None:
                obs = Observation(w.attempt, proc.pid, reading.steps, reading.events, w.last_step, w.phase)
                actions = self.chaos.on_tick(obs)
                self._carry_out(actions, proc, w)
                w = arm_kill(w, actions, now)
        return w, Action.CONTINUE

    def _end(self, d: Decision, proc: Worker, w: Watch) -> None:
        """Carry out a decision that ends the attempt."""
        if d.action in (Action.STOP, Action.PREEMPT):
            p = self.notices.preemption if d.action is Action.PREEMPT else None
            grace = stop_grace(self.spec.grace, p.deadline_at, self._clock()) if p else self.spec.grace
            by = p.notice.detail.get("signal") if p else signal_name(-(self._stop_signal or signal.SIGTERM))
            self.record(EventKind.STOP_REQUESTED, attempt=w.attempt, signal=by, grace_s=round(grace, 3),
                        **({"notice": p.notice.source.value} if p else {}))
            self.view.note(f"stopping: SIGTERM to the worker, SIGKILL after {round(grace, 1):g} s")
            proc.stop(grace)
        elif d.action is Action.KILL_HUNG:
            silent = d.silent_s or 0.0
            self.record(EventKind.HANG_DETECTED, attempt=w.attempt, pid=proc.pid, silent_s=round(silent, 3),
                        reason=d.reason, phase=w.phase)
            self.view.note(f"hung ({d.reason}): killing the worker")
            proc.kill()
        else:
            proc.kill()

    def _wait_tick(self, attempt: int) -> None:
        """Chaos's tick while the supervisor waits for disk space: no worker runs, so only its
        changes to files are carried out."""
        if self.chaos is not None:
            obs = Observation(attempt, 0, (), (), None, DISK_WAIT_PHASE)
            for action in self.chaos.on_tick(obs):
                if isinstance(action, FileEffect):
                    self.record(EventKind.CHAOS_FAULT, attempt=attempt, effect=action.apply(), last_step=None,
                                **(action.fault or {}))

    def _carry_out(self, actions: Sequence[SendSignal | FileEffect], proc: Worker, w: Watch) -> None:
        """Do what chaos decided: the one place its faults reach the worker and the run directory."""
        for action in actions:
            if isinstance(action, SendSignal):
                self.record(EventKind.CHAOS_FAULT, attempt=w.attempt, pid=proc.pid,
                            signal=signal.Signals(action.sig).name, last_step=w.last_step, **(action.fault or {}))
                deliver(proc, action.sig, action.rank)
            else:
                what = action.apply()
                self.record(EventKind.CHAOS_FAULT, attempt=w.attempt, effect=what, last_step=w.last_step,
                            **(action.fault or {}))

    def _finish(self, proc: Worker, w: Watch, ended_by: Action, log: Path, started: float) -> AttemptResult:
        """Classify the exit, record it, and tell the view and chaos."""
        rc = proc.returncode
        assert rc is not None
        cls = classify_exit(rc, hung=ended_by is Action.KILL_HUNG, stopped_by_user=ended_by is Action.STOP)
        result = AttemptResult(
            attempt=w.attempt, pid=proc.pid, exit_class=cls, returncode=rc, signal=signal_name(rc),
            resumed_from=w.resumed_from, last_step=w.last_step, made_progress=w.made_progress,
            started=started, ended=time.time(),
            peak_rss_mb=proc.usage.peak_rss_mb if proc.usage else 0.0,
            cpu_s=proc.usage.cpu_s if proc.usage else 0.0,
            error=None if cls is ExitClass.COMPLETED else last_error_line(log),
        )
        self.record(
            EventKind.ATTEMPT_EXITED, attempt=w.attempt, pid=proc.pid, returncode=rc, signal=result.signal,
            exit_class=cls.value, resumed_from=w.resumed_from, last_step=w.last_step,
            made_progress=result.made_progress, peak_rss_mb=round(result.peak_rss_mb, 1),
            cpu_s=round(result.cpu_s, 3), error=result.error,
        )
        self.view.attempt_ended(result)
        if self.chaos is not None:
            self.chaos.on_exit(result)
        return result
