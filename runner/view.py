"""What the supervisor shows while it runs: a rich live progress bar on a terminal, plain lines elsewhere."""

from __future__ import annotations

import sys
import time
from typing import IO, Any, Protocol

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from rundir.classify import ExitClass

from .policy import AttemptResult

__all__ = ["View", "PlainView", "RichView", "make_view", "make_console", "describe_exit"]


def describe_exit(r: AttemptResult) -> str:
    how = r.exit_class.value
    if r.signal:
        how += f" ({r.signal})"
    elif r.returncode not in (0,):
        how += f" (exit {r.returncode})"
    return how


class View(Protocol):
    def attempt_started(self, attempt: int, pid: int) -> None: ...
    def resumed(self, attempt: int, step: int, total: int | None) -> None: ...
    def step(self, rec: dict[str, Any], restarts: int) -> None: ...
    def attempt_ended(self, r: AttemptResult) -> None: ...
    def note(self, text: str) -> None: ...
    def close(self) -> None: ...


class PlainView:
    """One line per event and per finished epoch: for logs and CI."""

    def __init__(self, out: IO[str] | None = None) -> None:
        self.out = out or sys.stdout
        self.total: int | None = None
        self._epoch: int | None = None
        self._last: dict[str, Any] | None = None
        self._restarts = 0

    def _say(self, text: str) -> None:
        try:
            print(f"[runner {time.strftime('%H:%M:%S')}] {text}", file=self.out, flush=True)
        except OSError:
            pass  # the output is a file on a full disk: the line is lost, the run goes on

    def attempt_started(self, attempt: int, pid: int) -> None:
        self._say(f"attempt {attempt} started, pid {pid}")

    def resumed(self, attempt: int, step: int, total: int | None) -> None:
        self.total = total or self.total
        self._say(f"attempt {attempt} resumed from step {step}" + (f" of {total}" if total else ""))

    def step(self, rec: dict[str, Any], restarts: int) -> None:
        epoch = rec.get("epoch")
        if self._epoch is not None and epoch != self._epoch and self._last is not None:
            self._epoch_line(self._last, restarts)
        self._epoch, self._last, self._restarts = epoch, rec, restarts

    def _epoch_line(self, rec: dict[str, Any], restarts: int) -> None:
        of = f"/{self.total}" if self.total else ""
        self._say(f"epoch {rec.get('epoch')} done: step {rec['step'] + 1}{of}, loss {rec['loss']:.4f}, "
                  f"restarts {restarts}")

    def attempt_ended(self, r: AttemptResult) -> None:
        if self._last is not None and r.exit_class is ExitClass.COMPLETED:
            self._epoch_line(self._last, self._restarts)
        msg = f"attempt {r.attempt} ended: {describe_exit(r)}"
        if r.last_step is not None:
            msg += f", last step {r.last_step}"
        msg += f", peak RSS {r.peak_rss_mb:.0f} MB, CPU {r.cpu_s:.1f} s"
        self._say(msg)
        # A rejected input's message ends the run as its one error line; not said twice.
        if r.error and r.exit_class not in (ExitClass.COMPLETED, ExitClass.PREEMPTED, ExitClass.BAD_INPUT):
            self._say(f"worker said: {r.error}")
        self._epoch = None

    def note(self, text: str) -> None:
        self._say(text)

    def close(self) -> None:
        pass


class RichView(PlainView):
    """A live bar over steps with epoch, loss, restarts and attempt; events print above it."""

    def __init__(self, console: Console) -> None:
        super().__init__(out=console.file)
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(),
            TextColumn("epoch {task.fields[epoch]}"), TextColumn("loss {task.fields[loss]}"),
            TextColumn("restarts {task.fields[restarts]}"), TextColumn("attempt {task.fields[attempt]}"),
            TimeElapsedColumn(), console=console, transient=False,
        )
        self.task = self.progress.add_task("train", total=None, epoch="-", loss="-", restarts=0, attempt="-")
        self.progress.start()

    def _say(self, text: str) -> None:
        # ``text`` may hold the worker's own output: escape it, or '[x]' vanishes and '[/x]' raises MarkupError.
        try:
            self.progress.console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {escape(text)}", markup=True,
                                        highlight=False)
        except OSError:
            pass

    def attempt_started(self, attempt: int, pid: int) -> None:
        self.progress.update(self.task, attempt=attempt)
        super().attempt_started(attempt, pid)

    def resumed(self, attempt: int, step: int, total: int | None) -> None:
        self.total = total or self.total
        self.progress.update(self.task, total=self.total, completed=step)
        super().resumed(attempt, step, total)

    def step(self, rec: dict[str, Any], restarts: int) -> None:
        self.progress.update(self.task, completed=rec["step"] + 1, epoch=rec.get("epoch", "-"),
                             loss=f"{rec['loss']:.4f}", restarts=restarts)

    def close(self) -> None:
        self.progress.stop()


def make_console() -> Console:
    """A console for our output; wide enough for the report's tables when it goes to a log."""
    console = Console()
    return console if console.is_terminal else Console(width=max(console.width, 140))


def make_view(console: Console | None = None) -> View:
    console = console or make_console()
    return RichView(console) if console.is_terminal else PlainView()
