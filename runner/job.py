"""``runner.Job``: a few lines make a Paddle training script preemptible and resumable bit for bit.

::

    import runner

    job = runner.Job()                       # the run directory: RUNNER_RUN_DIR, --run-dir DIR or run_dir=
    loader = job.resumable(paddle.io.DataLoader(ds, batch_size=32, shuffle=True))
    job.restore(model=model, optimizer=opt, scheduler=sched)
    for epoch in job.epochs(5):
        for x, y in loader:                  # resumes mid-epoch at the exact sample
            ...; opt.step(); opt.clear_grad(); sched.step()
            job.step(loss=loss)              # journal, heartbeat, checkpoint when due, preemption
    job.complete()                           # final.json with the parameters' digest

It is a facade over :class:`runner.worker.Worker` (the run directory, the checkpoint writer, the
fault points chaos arms), :mod:`runner.jobstate` (what a checkpoint holds and how a resume puts it
back) and :mod:`runner.resumable` (the loader). Exits: a finished run exits 0 at once; a preemption
(SIGTERM, SIGINT) checkpoints synchronously and durably, then exits 75; a ``UserError`` prints one
line ``error: ...`` and exits with its code, under ``with runner.Job() as job:`` or
``runner.main(train)``; anything else is a crash (exit 1), which the supervisor retries.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn

from rundir.events import EventKind
from rundir.exitcodes import ExitCode, UserError
from rundir.names import WORKER_LOCK
from runner.worker import Worker

from .jobspec import AUTO, ENV_CHECKPOINT_EVERY, argv_identity, choose_run_dir, parse_every, split_run_dir

if TYPE_CHECKING:
    from .jobstate import Capture
    from .resumable import ResumableLoader

__all__ = ["Job", "Preempted", "main"]


class Preempted(SystemExit):
    """Raised by :meth:`Job.step` once the preemption checkpoint is saved: the process exits 75."""

    def __init__(self) -> None:
        super().__init__(int(ExitCode.PREEMPTED))


def _fail(exc: UserError) -> NoReturn:
    print(f"error: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(int(exc.code)) from None


class Job:
    """One attempt of a job of one's own (see the module's docstring).

    ``config``: the settings that change the loss trace, recorded in ``job.json`` so that a run
    directory is never resumed by another job (default: the script's name and arguments).
    ``checkpoint_every``: K steps (besides every epoch's end), 0 for epoch ends only, or ``"auto"``
    (Young's interval, the default); the front door's ``RUNNER_CHECKPOINT_EVERY`` wins.
    ``deferred``: copy the parameters for a checkpoint off the training thread; the copy must end
    before anything changes them, so each tracked model's forward pass waits for it - or, where no
    model has buffers and the optimizers update tracked parameters only, each parameter's gradient,
    so that the copy overlaps the forward pass (set False if the job changes parameters outside
    forward passes and optimizer steps)."""

    def __init__(self, *, run_dir: str | Path | None = None, config: Mapping[str, Any] | None = None,
                 checkpoint_every: int | str = AUTO, keep_checkpoints: int = 3, deferred: bool = True,
                 argv: Sequence[str] | None = None) -> None:
        self._deferred = deferred
        self._loaders: list[ResumableLoader] = []
        self._tracked: dict[str, Any] | None = None
        self._capture: Capture | None = None
        self._current: ResumableLoader | None = None  # the loader that yielded last
        self._hooks: list[Any] = []
        self._completed = False
        self._counting_epochs = False  # the loop runs in epochs(): the job counts them, not a loader
        self.steps = 0  # steps done
        self.epoch = 0
        self.resumed_from = 0  # the step the checkpoint restored held; 0 for a fresh run
        try:
            self._open(run_dir, config, checkpoint_every, keep_checkpoints, argv)
        except UserError as exc:
            _fail(exc)

    def _open(self, run_dir: str | Path | None, config: Mapping[str, Any] | None, every: int | str,
              keep: int, argv: Sequence[str] | None) -> None:
        args = list(sys.argv if argv is None else argv)
        flag, rest = split_run_dir(args[1:])
        if argv is None:
            sys.argv[1:] = rest  # the job's own argument parser never sees --run-dir
        chosen = choose_run_dir(None if run_dir is None else str(run_dir), os.environ, flag)
        from_env = parse_every(os.environ.get(ENV_CHECKPOINT_EVERY))
        self._every = from_env if from_env is not None else every
        self.worker = Worker(chosen, keep_checkpoints=keep)
        identity = dict(config) if config is not None else argv_identity(args[0] if args else "", rest)
        try:
            self.worker.bind_config(identity)
        except BaseException:
            self.worker.close()
            raise
        if self.worker.finished() is not None:
            print(f"{chosen}: already complete", flush=True)
            self.worker.close()
            raise SystemExit(0)

    # -- what to keep -------------------------------------------------------------------------------------

    @property
    def run_dir(self) -> Path:
        return self.worker.run_dir

    @property
    def preemption_requested(self) -> bool:
        return self.worker.preemption_requested

    def resumable(self, loader: Any) -> ResumableLoader:
        """``loader`` (a ``paddle.io.DataLoader``), made to resume at the exact sample."""
        from .resumable import ResumableLoader

        self._before_start("job.resumable()")
        wrapped = ResumableLoader(loader, on_batch=self._on_batch, held=[self.run_dir / WORKER_LOCK])
        self._loaders.append(wrapped)
        return wrapped

    def restore(self, *, model: Any, optimizer: Any = None, scheduler: Any = None,
                state: dict[str, Any] | None = None) -> None:
        """Name what the checkpoint holds: the model(s), the optimizer(s), any LR scheduler not already
        an optimizer's, and ``state``, a dict of the job's own JSON values and NumPy arrays (updated in
        place on a resume). One object, a list or a dict of each. The newest valid checkpoint is
        loaded into them when the loop starts (:meth:`epochs`, or the first :meth:`step`), once the
        job's length is known; :meth:`start` loads it at once. Nothing happens on a fresh run."""
        self._before_start("job.restore()")
        self._tracked = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "extras": state}

    def _before_start(self, what: str) -> None:
        if self._capture is not None:
            raise RuntimeError(f"call {what} before training starts")

    # -- training -------------------------------------------------------------------------------------------

    def start(self, total_steps: int | None = None) -> None:
        """Load the newest valid checkpoint, if any, into what :meth:`restore` named (once). A standby
        spare waits here until the supervisor hands it the run."""
        if self._capture is not None:
            return
        if self._tracked is None:
            raise RuntimeError("call job.restore(model=..., optimizer=...) before training")
        from .jobstate import Capture, Saved, Tracked, copy_waits_for_gradients, release_optimizer_state, restore

        self.worker.set_cadence(self._every)
        tracked = Tracked.of(loaders=self._loaders, **self._tracked)
        # A waiting spare puts each checkpoint it holds into the objects at once (see Worker.restore).
        ckpt = self.worker.restore(total_steps=total_steps,
                                   preload=lambda held: restore(tracked, Saved.from_checkpoint(held)),
                                   release=lambda: release_optimizer_state(tracked))
        capture = Capture(tracked)
        if ckpt is not None:
            try:
                if not self.worker.preapplied:
                    restore(tracked, Saved.from_checkpoint(ckpt))
                step, epoch = int(ckpt.meta["step"]), int(ckpt.meta["epoch"])
            except (ValueError, KeyError, TypeError) as exc:
                raise UserError(f"checkpoint {ckpt.name} does not fit this job: {exc}", ExitCode.BAD_CONFIG) from None
            self.steps = self.resumed_from = step
            self.epoch = epoch
        if self._deferred and copy_waits_for_gradients(tracked):
            # Every trainable parameter's gradient waits (at once after the first): the copy overlaps
            # the forward pass and the start of the backward pass, and ends before any update.
            self._hooks = [p.register_hook(self._wait_at_gradient) for m in tracked.models.values()
                           for p in m.parameters()]
        elif self._deferred:
            self._hooks = [m.register_forward_pre_hook(self._wait_for_copy)  # type: ignore[arg-type]
                           for m in tracked.models.values()]
        self._capture = capture

    def _wait_for_copy(self, layer: Any, inputs: Any) -> None:
        self.worker.before_update()  # a deferred checkpoint's copy of the parameters is done by now

    def _wait_at_gradient(self, grad: Any) -> None:
        self.worker.before_update()  # the gradient is left as it is

    def _on_batch(self, loader: ResumableLoader) -> None:
        self._current = loader

    def epochs(self, n: int) -> Iterator[int]:
        """The epochs left of ``n``: from the one the checkpoint was taken in, else from 0."""
        per = len(self._loaders[0]) if len(self._loaders) == 1 else None
        self.start(total_steps=None if per is None else n * per)
        self._counting_epochs = True
        while self.epoch < n:
            yield self.epoch
            self.epoch += 1

    def step(self, loss: Any, *, acc: float | None = None, lr: float | None = None) -> None:
        """A training step is done (call it after the optimizer's and scheduler's steps): journal its
        loss, beat the heart, checkpoint when due (every epoch's end, the cadence, a preemption), and
        on a preemption exit 75 (:class:`Preempted`) once its checkpoint is saved, durably."""
        self.start()
        w = self.worker
        loader = self._current
        if not self._counting_epochs and loader is not None:
            self.epoch = max(loader.epoch, 0)  # a loop of its own: the loader's epochs
        w.report_step(self.steps, loss=float(loss), epoch=self.epoch, batch=loader.position - 1 if loader else 0,
                      acc=acc, lr=lr)
        self.steps += 1
        preempted = w.preemption_requested
        if preempted or (loader is not None and loader.exhausted) or w.checkpoint_due(self.steps):
            self._checkpoint(wait=preempted)
        if preempted:
            w.event(EventKind.PREEMPTED, step=self.steps)
            raise Preempted()

    def _checkpoint(self, *, wait: bool) -> None:
        capture, step, epoch = self._capture, self.steps, self.epoch
        assert capture is not None
        self.worker.checkpoint(step, lambda: capture.snapshot(step, epoch), wait=wait,
                               deferred=self._deferred and not wait)

    def complete(self, **summary: Any) -> None:
        """The job is done: wait for the last checkpoint, write ``final.json`` with the steps and the
        final parameters' digest (what ``verify`` compares), and let the run directory go."""
        self.start()
        assert self._capture is not None
        self.worker.complete(steps=self.steps, params_sha256=self._capture.params_sha256(), **summary)
        self._completed = True
        self.close()

    # -- the end --------------------------------------------------------------------------------------------

    def close(self) -> None:
        for loader in self._loaders:
            loader.close()
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self.worker.close()

    def __enter__(self) -> Job:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
        if isinstance(ev, UserError):
            _fail(ev)


def main(train: Callable[[Job], int | None], **options: Any) -> NoReturn:
    """Run ``train(job)`` with a :class:`Job` made of ``options`` and exit with its code (None: 0):
    75 after a preemption, a ``UserError``'s code with one line ``error: ...``."""
    with Job(**options) as job:
        code = train(job)
    sys.exit(int(code or 0))
