"""What the supervisor shows: PlainView's lines and RichView's lines above its bar, rendered into a
rich Console writing to a string, compared as text (the clock is fixed)."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from typing import Any

import pytest
from rich.console import Console

from rundir.classify import ExitClass
from runner import view as view_mod
from runner.policy import AttemptResult
from runner.view import PlainView, RichView, describe_exit, make_view
from tests.helpers.factories import attempt_result

NOW = "12:34:56"
ERROR = "RuntimeError: boom in [/data] at [x] [bold]"  # worker output: must print as is, never as markup


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(view_mod.time, "strftime", lambda fmt, *a: NOW)


def console(terminal: bool) -> Console:
    return Console(file=io.StringIO(), width=100, force_terminal=terminal)


def output(c: Console) -> str:
    assert isinstance(c.file, io.StringIO)
    return c.file.getvalue()


def ended(attempt: int, cls: ExitClass, rc: int, *, signal: str | None = None, rss: float = 398.8, cpu: float = 3.21,
          **fields: Any) -> AttemptResult:
    return attempt_result(cls, attempt=attempt, returncode=rc, signal=signal, peak_rss_mb=rss, cpu_s=cpu, **fields)


def loss(step: int) -> float:
    return 2.5 / (step + 1)


def rec(step: int, per_epoch: int = 15) -> dict[str, object]:
    return {"step": step, "epoch": step // per_epoch, "batch": step % per_epoch, "loss": loss(step)}


def play(v: PlainView) -> None:
    """Two attempts over 2 epochs of 15 steps: the first crashes at step 18, the second completes."""
    v.attempt_started(1, 4242)
    v.resumed(1, 0, 30)
    for s in range(18):
        v.step(rec(s), restarts=0)
    v.attempt_ended(ended(1, ExitClass.CRASHED, 1, last_step=17, error=ERROR))
    v.note("restarting in 0.00 s after crashed (exit 1)")
    v.attempt_started(2, 4343)
    v.resumed(2, 15, 30)
    for s in range(15, 30):
        v.step(rec(s), restarts=1)
    v.attempt_ended(ended(2, ExitClass.COMPLETED, 0, last_step=29, rss=401.2, cpu=2.54))
    v.note("job completed after 2 attempt(s), 1 restart(s)")
    v.close()


EXPECTED = [
    "attempt 1 started, pid 4242",
    "attempt 1 resumed from step 0 of 30",
    f"epoch 0 done: step 15/30, loss {loss(14):.4f}, restarts 0",
    "attempt 1 ended: crashed (exit 1), last step 17, peak RSS 399 MB, CPU 3.2 s",
    f"worker said: {ERROR}",
    "restarting in 0.00 s after crashed (exit 1)",
    "attempt 2 started, pid 4343",
    "attempt 2 resumed from step 15 of 30",
    f"epoch 1 done: step 30/30, loss {loss(29):.4f}, restarts 1",
    "attempt 2 ended: completed, last step 29, peak RSS 401 MB, CPU 2.5 s",
    "job completed after 2 attempt(s), 1 restart(s)",
]

_CSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def screen_lines(raw: str) -> list[str]:
    """What a terminal shows in the end: escapes dropped, each line as left after its last ``\\r``."""
    return [line.split("\r")[-1].rstrip() for line in _CSI.sub("", raw).split("\n") if line.split("\r")[-1].strip()]


def rich_lines(raw: str) -> tuple[list[str], list[str]]:
    """RichView's event lines (timestamp stripped) and its bar lines."""
    events, bars = [], []
    for line in screen_lines(raw):
        if line.startswith(NOW + " "):
            events.append(line[len(NOW) + 1 :])
        else:
            bars.append(line)
    return events, bars


# -- PlainView -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("terminal", [False, True])
def test_plain_view_lines(terminal: bool) -> None:
    c = console(terminal)
    play(PlainView(out=c.file))
    assert output(c).splitlines() == [f"[runner {NOW}] {line}" for line in EXPECTED]


def test_plain_view_epoch_lines_without_a_known_total() -> None:
    out = io.StringIO()
    v = PlainView(out=out)
    v.attempt_started(1, 7)
    v.resumed(1, 0, None)
    for s in range(17):
        v.step(rec(s), restarts=0)
    lines = [line.removeprefix(f"[runner {NOW}] ") for line in out.getvalue().splitlines()]
    assert lines == ["attempt 1 started, pid 7", "attempt 1 resumed from step 0",
                     f"epoch 0 done: step 15, loss {loss(14):.4f}, restarts 0"]


@pytest.mark.parametrize(
    ("result", "lines"),
    [
        pytest.param(ended(3, ExitClass.KILLED, -9, signal="SIGKILL", last_step=40, error="I0101 paddle noise"),
                     ["attempt 3 ended: killed (SIGKILL), last step 40, peak RSS 399 MB, CPU 3.2 s",
                      "worker said: I0101 paddle noise"], id="killed"),
        pytest.param(ended(3, ExitClass.HUNG, -9, signal="SIGKILL", last_step=4),
                     ["attempt 3 ended: hung (SIGKILL), last step 4, peak RSS 399 MB, CPU 3.2 s"], id="hung"),
        pytest.param(ended(3, ExitClass.PREEMPTED, 75, last_step=12, error="saved checkpoint step 13"),
                     ["attempt 3 ended: preempted (exit 75), last step 12, peak RSS 399 MB, CPU 3.2 s"],
                     id="preempted-error-not-shown"),
        pytest.param(ended(1, ExitClass.BAD_INPUT, 65, error="error: bad data /x.json.gz: no such file"),
                     ["attempt 1 ended: bad-input (exit 65), peak RSS 399 MB, CPU 3.2 s"],
                     id="bad-input-said-once-by-the-final-error-line"),
        pytest.param(ended(2, ExitClass.USER_STOPPED, 75, last_step=20, error="stopping"),
                     ["attempt 2 ended: user-stopped (exit 75), last step 20, peak RSS 399 MB, CPU 3.2 s",
                      "worker said: stopping"], id="user-stopped"),
    ],
)
def test_plain_view_attempt_end_lines(result: AttemptResult, lines: list[str]) -> None:
    out = io.StringIO()
    PlainView(out=out).attempt_ended(result)
    assert out.getvalue().splitlines() == [f"[runner {NOW}] {line}" for line in lines]


@pytest.mark.parametrize(
    ("result", "text"),
    [
        (ended(1, ExitClass.COMPLETED, 0), "completed"),
        (ended(1, ExitClass.CRASHED, 1), "crashed (exit 1)"),
        (ended(1, ExitClass.KILLED, -11, signal="SIGSEGV"), "killed (SIGSEGV)"),
        (ended(1, ExitClass.KILLED, 137, signal="SIGKILL"), "killed (SIGKILL)"),
        (ended(1, ExitClass.PREEMPTED, 75), "preempted (exit 75)"),
    ],
)
def test_describe_exit(result: AttemptResult, text: str) -> None:
    assert describe_exit(result) == text


# -- RichView ------------------------------------------------------------------------------------------


@pytest.fixture
def rich_views() -> Iterator[list[RichView]]:
    made: list[RichView] = []
    yield made
    for v in made:  # a failed test must not leave a refresh thread running
        v.progress.stop()


@pytest.mark.parametrize("terminal", [True, False])
def test_rich_view_lines_and_final_bar(terminal: bool, rich_views: list[RichView]) -> None:
    c = console(terminal)
    v = RichView(c)
    rich_views.append(v)
    play(v)
    raw = output(c)
    assert ("\x1b[" in raw) is terminal
    events, bars = rich_lines(raw)
    # The bar shows the epoch: RichView prints events only, no epoch lines.
    assert events == [line for line in EXPECTED if not line.startswith("epoch ")]
    assert bars, raw
    final = re.sub(r"[━╸╺]+", " ", bars[-1])
    assert re.fullmatch(rf"training +30/30 epoch 1 loss {loss(29):.4f} restarts 1 attempt 2 \d+:\d\d:\d\d", final), \
        bars[-1]


def test_rich_view_bar_follows_resume_and_steps(rich_views: list[RichView]) -> None:
    c = console(False)
    v = RichView(c)
    rich_views.append(v)
    v.attempt_started(4, 99)
    v.resumed(4, 20, 45)
    task = v.progress.tasks[0]
    assert (task.total, task.completed, task.fields["attempt"]) == (45, 20, 4)
    v.step(rec(20), restarts=3)
    assert task.completed == 21
    assert (task.fields["epoch"], task.fields["loss"], task.fields["restarts"]) == (1, f"{loss(20):.4f}", 3)
    v.close()


@pytest.mark.parametrize("terminal", [True, False])
def test_rich_view_prints_worker_text_verbatim(terminal: bool, rich_views: list[RichView]) -> None:
    # The worker's last line and notes are not rich markup: '[x]' must stay, '[/data]' must not raise.
    c = console(terminal)
    v = RichView(c)
    rich_views.append(v)
    v.attempt_ended(ended(1, ExitClass.CRASHED, 1, last_step=3, error=ERROR))
    v.note("giving up: [/x] [red]not red[/red]")
    v.close()
    events, _ = rich_lines(output(c))
    assert events == [
        "attempt 1 ended: crashed (exit 1), last step 3, peak RSS 399 MB, CPU 3.2 s",
        f"worker said: {ERROR}",
        "giving up: [/x] [red]not red[/red]",
    ]


def test_make_view_picks_by_terminal(rich_views: list[RichView]) -> None:
    tty = make_view(console(True))
    assert isinstance(tty, RichView)
    rich_views.append(tty)
    tty.close()
    plain = make_view(console(False))
    assert type(plain) is PlainView
