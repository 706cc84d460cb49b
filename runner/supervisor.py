"""The supervisor: start the worker, watch it, classify its exit, restart it through the retry policy.

A :class:`WorkerSpec` says what to run and is only read; the :class:`Supervisor` holds the live
state. Each attempt is ``start -> monitor -> classify``; the monitor wakes when the worker exits
(pidfd), when a signal arrives, or every ``TICK`` seconds to read the journal and heartbeat
(``CHAOS_TICK`` under chaos, whose faults aim at steps and phases).
Chaos, if any, decides *what* to do to the worker; this module does it.
"""

from __future__ import annotations

import json
import os
import select
import shlex
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tenacity import RetryCallState

from rundir.classify import ExitClass, classify_exit, signal_name
from rundir.contract import Chaos, FileEffect, Observation, SendSignal
from rundir.exitcodes import ExitCode
from rundir.journal import append_record, iter_records
from rundir.lock import RunLock
from rundir.names import ENV_ATTEMPT, ENV_STANDBY, EVENTS, HEARTBEAT, LOSSES, read_heartbeat, worker_env

from .forkserver import ForkServer, ForkServerError, ForkTarget, forkable
from .policy import AttemptResult, RetryPolicy, WorkerFailed, build_retrying, give_up_reason, unproductive_restarts
from .process import WorkerProcess
from .view import PlainView, View, describe_exit

__all__ = ["WorkerSpec", "Supervisor", "Outcome"]

TICK = 0.1
CHAOS_TICK = 0.02


@dataclass(frozen=True)
class WorkerSpec:
    cmd: tuple[str, ...]
    run_dir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    hang_timeout: float = 300.0
    grace: float = 30.0
    policy: RetryPolicy = RetryPolicy()
    standby: bool = True  # keep a warm spare worker ready to take over
    #: Modules a fork server imports once; workers are then forked from it (see
    #: :mod:`runner.forkserver`). Empty, or a command it cannot run: every worker starts with exec.
    preload: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outcome:
    code: ExitCode
    message: str
    history: tuple[AttemptResult, ...]
    wall_s: float


class _Tail:
    """Reads the records appended to a JSON-lines file since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def read(self) -> list[dict[str, Any]]:
        out = []
        for off, rec in iter_records(self.path, self.offset):
            self.offset = off
            out.append(rec)
        return out


class Supervisor:
    def __init__(self, spec: WorkerSpec, *, view: View | None = None, chaos: Chaos | None = None,
                 sleep: Callable[[float], None] | None = None, lock: RunLock | None = None,
                 fork_server: ForkServer | None = None) -> None:
        """``lock``: the run directory's lock, if the caller took it already; ``fork_server``: one
        the caller started for ``spec.preload`` (the CLI does, so that it imports while the rest of
        the supervisor does); it is closed when :meth:`run` ends."""
        self.spec = spec
        self.run_dir = Path(spec.run_dir)
        self.view = view or PlainView()
        self.chaos = chaos
        self._sleep = sleep or self._interruptible_sleep
        self.history: list[AttemptResult] = []
        self._stop_signal: int | None = None
        self._wake_r, self._wake_w = -1, -1
        self.losses = _Tail(self.run_dir / LOSSES)
        self.events = _Tail(self.run_dir / EVENTS)
        self.high_water = -1
        self.next_attempt = 1
        self.spare: WorkerProcess | None = None
        self.spare_log = self.run_dir / "logs" / "standby.log"
        self._spares = 0
        self._target: ForkTarget | None = forkable(spec.cmd) if spec.preload else None
        self._server: ForkServer | None = fork_server if self._target is not None else None
        self._lock = lock

    # -- effects at the edge -------------------------------------------------------------------------

    def log_event(self, kind: str, **fields: Any) -> None:
        rec = {"time": time.time(), "source": "supervisor", "event": kind}
        rec.update(fields)
        append_record(self.run_dir / EVENTS, rec)

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stop_signal = signum  # only recorded; the monitor loop acts on it

    def _interruptible_sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self._stop_signal is None and (left := deadline - time.monotonic()) > 0:
            select.select([self._wake_r], [], [], left)
            self._drain_wake()

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except (BlockingIOError, OSError):
            pass

    def _heartbeat_mtime(self) -> int | None:
        try:
            return os.stat(self.run_dir / HEARTBEAT).st_mtime_ns
        except FileNotFoundError:
            return None

    # -- the run -------------------------------------------------------------------------------------

    def run(self) -> Outcome:
        """Run the job to completion or until the policy gives up. Takes the run directory's lock."""
        t0 = time.monotonic()
        lock = self._lock or RunLock(self.run_dir)
        try:
            if lock.fd is None:
                lock.acquire()
            if self._server is not None:
                self.log_event("fork-server-started", pid=self._server.pid, preload=list(self.spec.preload))
            self._catch_up()
            self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            old_wakeup = signal.set_wakeup_fd(self._wake_w)
            old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                code, message = self._retry_loop()
            finally:
                self._discard_spare()
                for s, h in old.items():
                    signal.signal(s, h)
                signal.set_wakeup_fd(old_wakeup)
                os.close(self._wake_r)
                os.close(self._wake_w)
                self.view.close()
        finally:
            if self._server is not None:
                self._server.close()
            lock.release()
        wall = time.monotonic() - t0
        self.log_event("supervisor-exit", code=int(code), message=message, wall_s=round(wall, 3),
                       attempts=len(self.history), restarts=max(0, len(self.history) - 1))
        return Outcome(code, message, tuple(self.history), wall)

    def _catch_up(self) -> None:
        """A rerun continues where a killed supervisor left off: attempt numbers and progress."""
        for rec in self.losses.read():
            self.high_water = max(self.high_water, int(rec.get("step", -1)))
        for rec in self.events.read():
            if rec.get("source") == "supervisor" and "attempt" in rec:
                self.next_attempt = max(self.next_attempt, int(rec["attempt"]) + 1)

    def _retry_loop(self) -> tuple[ExitCode, str]:
        retrying = build_retrying(self.spec.policy, sleep=self._sleep, before_sleep=self._before_sleep)
        try:
            for attempt in retrying:
                if self._stop_signal is not None:
                    # Stopped while backing off: end here, not start a worker only to stop it at once.
                    return self._stopped(self.history[-1].exit_class.value if self.history else None)
                with attempt:
                    result = self._run_attempt()
                    self.history.append(result)
                    if result.exit_class is not ExitClass.COMPLETED:
                        raise WorkerFailed(self.history)
        except WorkerFailed as exc:
            return self._failure(exc.result)
        restarts = len(self.history) - 1
        self.log_event("job-completed", attempts=len(self.history), restarts=restarts)
        msg = f"job completed after {len(self.history)} attempt(s), {restarts} restart(s)"
        self.view.note(msg)
        return ExitCode.OK, msg

    def _stopped(self, exit_class: str | None) -> tuple[ExitCode, str]:
        by = signal_name(-(self._stop_signal or signal.SIGTERM))
        msg = f"stopped by {by}; rerun the same command to continue"
        self.log_event("stopped", reason=msg, exit_class=exit_class)
        self.view.note(msg)
        return ExitCode.INTERRUPTED, msg

    def _failure(self, r: AttemptResult) -> tuple[ExitCode, str]:
        if r.exit_class is ExitClass.USER_STOPPED:
            return self._stopped(r.exit_class.value)
        if r.exit_class is ExitClass.BAD_INPUT:
            said = (r.error or "no message").removeprefix("error: ")
            msg = f"the worker rejected its input (exit {r.returncode}), not retrying: {said}"
            code = ExitCode(r.returncode) if r.returncode in ExitCode._value2member_map_ else ExitCode.BAD_CONFIG
        else:
            msg = "giving up: " + give_up_reason(self.history, self.spec.policy)
            if r.error:
                msg += f"; last error: {r.error}"
            code = ExitCode.GAVE_UP
        self.log_event("gave-up" if code is ExitCode.GAVE_UP else "stopped", reason=msg, exit_class=r.exit_class.value)
        self.view.note(msg)
        return code, msg

    def _before_sleep(self, rs: RetryCallState) -> None:
        delay = rs.next_action.sleep if rs.next_action is not None else 0.0
        r = self.history[-1]
        self.log_event("restart", after_attempt=r.attempt, exit_class=r.exit_class.value, delay_s=round(delay, 3),
                       made_progress=r.made_progress, unproductive_restarts=unproductive_restarts(self.history))
        self.view.note(f"restarting in {delay:.2f} s after {describe_exit(r)}")

    # -- the warm spare ------------------------------------------------------------------------------

    def _base_env(self) -> dict[str, str]:
        return worker_env(self.spec.env)

    def _fork_server(self) -> ForkServer | None:
        """The run's fork server, started on first use; None where workers start with exec."""
        if self._target is None:
            return None
        if self._server is None:
            self._server = ForkServer.for_run(self.run_dir, self.spec.preload, self._base_env())
            self.log_event("fork-server-started", pid=self._server.pid, preload=list(self.spec.preload))
        return self._server

    def _start(self, env: Mapping[str, str], log: Path, *, stdin_pipe: bool = False) -> WorkerProcess:
        """Start a worker: forked by the fork server if there is one, else with exec."""
        server = self._fork_server()
        if server is not None and self._target is not None:
            ready = server.import_s is not None
            try:
                # A server stuck in its imports is given the time a silent worker would be.
                proc = WorkerProcess.fork(server, self._target, env=env, log_path=log, stdin_pipe=stdin_pipe,
                                          title=shlex.join(self.spec.cmd), timeout=self.spec.hang_timeout)
            except ForkServerError as exc:
                # Not worth a failed attempt: this worker, and the rest, start with exec instead.
                self.log_event("fork-server-failed", pid=server.pid, error=str(exc))
                self.view.note(f"{exc}; starting workers with exec")
                server.close()
                self._target = None
            else:
                if not ready and server.import_s is not None:
                    self.log_event("fork-server-ready", pid=server.pid, import_s=round(server.import_s, 3))
                return proc
        return WorkerProcess.start(self.spec.cmd, env=env, log_path=log, stdin_pipe=stdin_pipe)

    def _spawn_spare(self) -> None:
        env = self._base_env()
        env[ENV_STANDBY] = "1"
        self._spares += 1
        log = self.run_dir / "logs" / f"standby-{os.getpid()}-{self._spares:03d}.log"
        self.spare = self._start(env, log, stdin_pipe=True)
        self.spare_log = log
        self.log_event("standby-spawned", pid=self.spare.pid, forked=self.spare.forked)

    def _take_spare(self, attempt: int, extra_env: Mapping[str, str], log: Path) -> WorkerProcess | None:
        """Hand the run to the warm spare, if there is a live one; it becomes attempt ``attempt``."""
        spare, self.spare = self.spare, None
        if spare is None:
            return None
        if spare.server is not None and not spare.server.alive:
            spare.kill()  # it is dying with its fork server (PR_SET_PDEATHSIG), if not dead yet
        if spare.wait(0):
            self.log_event("standby-lost", pid=spare.pid, returncode=spare.returncode)
            return None
        os.replace(self.spare_log, log)  # the spare keeps writing to the same file, now the attempt's log
        go = json.dumps({"attempt": attempt, "env": dict(extra_env)}) + "\n"
        if not spare.tell(go.encode()):
            spare.kill()
            self.log_event("standby-lost", pid=spare.pid, returncode=spare.returncode)
            return None
        return spare

    def _discard_spare(self) -> None:
        if self.spare is not None:
            self.spare.kill()
            self.spare = None

    def _carry_out(self, actions: Sequence[SendSignal | FileEffect], proc: WorkerProcess, attempt: int,
                   last_step: int | None, now: float) -> float | None:
        """Do what chaos decided; returns when to SIGKILL the worker if an action asked for that."""
        kill_at = None
        for action in actions:
            if isinstance(action, SendSignal):
                self.log_event("chaos-fault", attempt=attempt, pid=proc.pid, signal=signal.Signals(action.sig).name,
                               last_step=last_step, **(action.fault or {}))
                proc.send(action.sig)
                if action.kill_after is not None:
                    kill_at = now + action.kill_after
            else:
                what = action.apply()
                self.log_event("chaos-fault", attempt=attempt, effect=what, last_step=last_step,
                               **(action.fault or {}))
        return kill_at

    def _run_attempt(self) -> AttemptResult:
        n = self.next_attempt
        self.next_attempt += 1
        extra = dict(self.chaos.env_for(n)) if self.chaos is not None else {}
        log = self.run_dir / "logs" / f"attempt-{n:03d}.log"
        started = time.time()
        proc = self._take_spare(n, extra, log)
        warm = proc is not None
        if proc is None:
            env = self._base_env()
            env[ENV_ATTEMPT] = str(n)
            env.update(extra)
            proc = self._start(env, log)
        self.log_event("attempt-spawned", attempt=n, pid=proc.pid, warm=warm, forked=proc.forked,
                       log=str(log.relative_to(self.run_dir)))
        self.view.attempt_started(n, proc.pid)

        high_water_before = self.high_water
        resumed_from: int | None = None
        last_step: int | None = None
        hb_mtime = self._heartbeat_mtime()
        phase: str | None = None
        last_alive = time.monotonic()
        hung = user_stop = False
        kill_at: float | None = None

        def drain() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            nonlocal resumed_from, last_step
            steps = [r for r in self.losses.read() if r.get("attempt") == n]
            events = [e for e in self.events.read() if e.get("source") == "worker" and e.get("attempt") == n]
            for e in events:
                if e.get("event") == "attempt-started":
                    resumed_from = int(e.get("resumed_from_step") or 0)
                    self.view.resumed(n, resumed_from, e.get("total_steps"))
            for rec in steps:
                last_step = int(rec["step"]) if last_step is None else max(last_step, int(rec["step"]))
                self.high_water = max(self.high_water, int(rec["step"]))
                self.view.step(rec, restarts=len(self.history))
            return steps, events

        tick = TICK if self.chaos is None else CHAOS_TICK
        while not proc.wait(tick, wake_fds=[self._wake_r]):
            self._drain_wake()
            now = time.monotonic()
            steps, events = drain()
            mtime = self._heartbeat_mtime()
            if mtime != hb_mtime or steps:
                hb_mtime, last_alive = mtime, now
                hb = read_heartbeat(self.run_dir)
                if hb is not None and hb.get("attempt") == n:
                    phase = hb.get("phase")
            if self._stop_signal is not None:
                user_stop = True
                self.log_event("stop-requested", attempt=n, signal=signal_name(-self._stop_signal),
                               grace_s=self.spec.grace)
                self.view.note(f"stopping: SIGTERM to the worker, SIGKILL after {self.spec.grace:g} s")
                proc.stop(self.spec.grace)
                break
            if now - last_alive > self.spec.hang_timeout:
                hung = True
                self.log_event("hang-detected", attempt=n, pid=proc.pid, silent_s=round(now - last_alive, 3))
                self.view.note(f"no heartbeat for {now - last_alive:.1f} s: killing the worker")
                proc.kill()
                break
            if self.spec.standby and self.spare is None and last_step is not None:
                self._spawn_spare()  # after the first step, so it does not slow the worker's start-up
            if kill_at is not None and now >= kill_at:
                proc.kill()
                break
            if self.chaos is not None:
                actions = self.chaos.on_tick(Observation(n, proc.pid, steps, events, last_step, phase))
                kill_at = self._carry_out(actions, proc, n, last_step, now) or kill_at
        proc.kill_leftovers()
        drain()
        assert proc.returncode is not None
        cls = classify_exit(proc.returncode, hung=hung, stopped_by_user=user_stop)
        result = AttemptResult(
            attempt=n, pid=proc.pid, exit_class=cls, returncode=proc.returncode,
            signal=signal_name(proc.returncode), resumed_from=resumed_from, last_step=last_step,
            made_progress=last_step is not None and last_step > high_water_before,
            started=started, ended=time.time(),
            peak_rss_mb=proc.usage.peak_rss_mb if proc.usage else 0.0,
            cpu_s=proc.usage.cpu_s if proc.usage else 0.0,
            error=None if cls is ExitClass.COMPLETED else last_error_line(log),
        )
        self.log_event(
            "attempt-exited", attempt=n, pid=proc.pid, returncode=proc.returncode, signal=result.signal,
            exit_class=cls.value, resumed_from=resumed_from, last_step=last_step, made_progress=result.made_progress,
            peak_rss_mb=round(result.peak_rss_mb, 1), cpu_s=round(result.cpu_s, 3), error=result.error,
        )
        self.view.attempt_ended(result)
        if self.chaos is not None:
            self.chaos.on_exit(result)
        return result


def last_error_line(log: Path, tail_bytes: int = 8192) -> str | None:
    """The worker's last non-empty output line: the exception or error message, usually."""
    try:
        with open(log, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - tail_bytes))
            lines = f.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.strip():
            return line.strip()
    return None
