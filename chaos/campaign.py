"""``python -m runner campaign``: many seeded chaos trials against one reference, for nightly CI.

Each trial draws its own schedule; across the campaign the fault kinds are dealt out evenly, so every
kind is exercised. The trials run as processes of their own, ``--jobs`` at once (by default one per
core, fewer if memory holds fewer), and with ``--budget`` as many as fit in the time: a trial the
budget cuts short is not run, never failed. A trial that does not pass is replayed once, exactly; if
the replay passes it is flaky. A trial's results do not depend on what ran beside it.

Results: a rich table, JUnit XML (one testcase per trial, a failure carrying the command that replays
it), JSON, one summary figure (``--plot``), one self-contained HTML page (``--html``), and with
``--history`` a comparison with the nights before (:mod:`chaos.history`).
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from rundir.argparsing import positive
from rundir.exitcodes import ExitCode, UserError
from runner.adapter import JobAdapter
from runner.trace import Verdict, load_trace

from .budget import format_duration, parse_duration
from .child import CHILD_FLAG, child_main
from .dispatch import Dispatch, TrialPlan
from .history import Trend, compare_nights, load_nights, save_night
from .outputs import write_outputs
from .pool import Pool, TaskQueue, drive
from .results import kinds_table, summary_table, trial_line, verdict_of
from .schedule import ScheduleError, checkpoint_steps, draw_schedule
from .simulate import chaos_parser, chosen_kinds, refuse_for_gang
from .stats import TrialStatus, failing, night_summary, tally
from .tmpfs import refuse_unless_mountable
from .trial import ensure_reference, replay_command

__all__ = ["campaign_main", "campaign_parser", "deal_kinds", "trial_seeds", "planner", "MAX_TRIALS",
           "DEFAULT_WINDOW", "campaign_exit"]

#: The most trials a budget may run when ``--trials`` does not bound it.
MAX_TRIALS = 10_000
DEFAULT_WINDOW = 7
PROGRAM = (sys.executable, "-m", "runner", "campaign")


def trial_seeds(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(2**31) for _ in range(n)]


def deal_kinds(seed: int, trials: int, per_trial: int, kinds: Sequence[Any]) -> list[list[Any]]:
    """Deal ``trials * per_trial`` fault kinds so every kind is used about equally, shuffled by seed.
    Dealing for more trials deals the same first hands: a trial's kinds do not depend on the count."""
    rng = random.Random(seed ^ 0x5EED)
    pool: list[Any] = []
    while len(pool) < trials * per_trial:
        batch = list(kinds)
        rng.shuffle(batch)
        pool += batch
    return [pool[i * per_trial : (i + 1) * per_trial] for i in range(trials)]


def campaign_parser(job: JobAdapter) -> argparse.ArgumentParser:
    """The simulation's options (``chaos_parser``) and the campaign's own."""
    p = chaos_parser(job, "python -m runner campaign", "Run many seeded chaos trials against one reference.")
    g = p.add_argument_group("campaign")
    g.add_argument("--trials", type=positive, default=None, metavar="N",
                   help="trials to run; with --budget, the most to run (default: as many as the budget allows)")
    g.add_argument("--budget", type=parse_duration, default=None, metavar="TIME",
                   help="run trials until TIME is up (90s, 15m, 1h, 1h30m), the reference run included; a trial "
                        "still running then is stopped and reported as not run (default: no limit)")
    g.add_argument("--jobs", type=positive, default=None, metavar="K",
                   help="trials at once (default: one per core, fewer if the available memory holds fewer at a "
                        "trial's measured peak)")
    g.add_argument("--faults-per-trial", type=positive, default=3, metavar="N",
                   help="faults in each trial (default %(default)s)")
    g.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="a new directory for the trials (default runs/campaign-TIME)")
    g.add_argument("--junit", type=Path, default=None, metavar="FILE", help="write JUnit XML")
    g.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the results as JSON")
    g.add_argument("--plot", type=Path, default=None, metavar="FILE.png",
                   help="write one summary figure: pass rate per fault kind, restart latency, steps recomputed")
    g.add_argument("--html", type=Path, default=None, metavar="FILE",
                   help="write one self-contained HTML report (figures inlined; opens offline)")
    g.add_argument("--history", type=Path, default=None, metavar="DIR",
                   help="keep tonight's summary in DIR and compare it with the nights before")
    g.add_argument("--history-window", type=positive, default=DEFAULT_WINDOW, metavar="N",
                   help="compare with the last N nights of --history (default %(default)s)")
    g.add_argument("--fail-on-regression", action="store_true",
                   help=f"exit {int(ExitCode.REGRESSED)} when --history finds a regression and every trial passed")
    g.add_argument(CHILD_FLAG, type=Path, default=None, help=argparse.SUPPRESS)
    p.epilog = ("a night's campaign (docs/nightly-ci.md):\n"
                "  python -m runner campaign --budget 15m --chaos-seed $(date -u +%Y%m%d) --junit chaos.xml \\\n"
                "      --html chaos.html --history runs/chaos-history --fail-on-regression")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    return p


def planner(ns: argparse.Namespace, total: int, per_epoch: int, limit: int) -> Any:
    """``plan(i)``: trial i's seed and schedule (1-based); the same for a trial whatever the limit."""
    ckpts = checkpoint_steps(total, per_epoch, max(0, ns.checkpoint_every_steps))
    seeds = trial_seeds(ns.chaos_seed, limit)
    hands = deal_kinds(ns.chaos_seed, limit, ns.faults_per_trial, chosen_kinds(ns))

    def plan(i: int) -> TrialPlan:
        try:
            ranks = int(getattr(ns, "nproc_per_node", 1))  # a gang's faults are aimed at ranks
            return TrialPlan(i, seeds[i - 1], draw_schedule(seeds[i - 1], len(hands[i - 1]), hands[i - 1], total,
                                                            ckpts, ranks=ranks))
        except ScheduleError as exc:
            raise UserError(str(exc), ExitCode.BAD_CONFIG) from None

    plan(1)  # a schedule that cannot fit is a bad configuration: said before anything runs
    return plan


def _check(p: argparse.ArgumentParser, ns: argparse.Namespace) -> None:
    if ns.trials is None and ns.budget is None:
        p.error("give --trials N, --budget TIME, or both")
    if ns.fail_on_regression and ns.history is None:
        p.error("--fail-on-regression needs --history DIR")


def _out_dir(ns: argparse.Namespace) -> Path:
    out = (ns.out or Path("runs") / time.strftime("campaign-%Y%m%d-%H%M%S")).resolve()
    if out.exists() and any(out.iterdir()):
        raise UserError(f"campaign directory {out} is not empty; choose a new --out", ExitCode.BAD_CONFIG)
    return out


def _run(ns: argparse.Namespace, argv: Sequence[str], job: JobAdapter, program: Sequence[str], console: Console,
         started: float) -> tuple[Dispatch, Path, bool]:
    """Run the trials; also whether SIGINT or SIGTERM stopped them."""
    out = _out_dir(ns)
    ref = ensure_reference(job, ns, ns.reference_cache.resolve(), console)
    per, total = job.total_steps(ref, ns)
    limit = ns.trials or MAX_TRIALS
    deadline = None if ns.budget is None else started + ns.budget

    def say(line: str) -> None:
        done = sum(1 for r in dispatch.records.values() if r["status"] != TrialStatus.NOT_RUN)
        left = "" if deadline is None else f", {format_duration(deadline - time.monotonic())} left"
        of = f"/{ns.trials}" if ns.trials else ""
        console.print(escape(f"[campaign] {done}{of} done{left}: {line}"), highlight=False)

    dispatch = Dispatch(out=out, reference=ref, program=program, argv=argv, plan=planner(ns, total, per, limit),
                        replay_for=lambda path: replay_command(job, ns, path), jobs=ns.jobs, say=say)
    queue = dispatch.queue = TaskQueue(dispatch.task, limit)
    budget = f" within {format_duration(ns.budget)}" if ns.budget else ""
    console.print(f"campaign in {out}: {ns.trials or 'as many'} trials{budget}; {dispatch.choice.line()}",
                  highlight=False)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        drive(queue, Pool(stop_grace=ns.grace + 10), jobs=dispatch.jobs, on_done=dispatch.on_done, deadline=deadline)
    except KeyboardInterrupt:  # the trials running were stopped; the reports cover the ones that finished
        return dispatch, ref, True
    finally:
        signal.signal(signal.SIGTERM, previous)
    return dispatch, ref, False


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM (a CI job cancelled) stops the trials as Ctrl-C does


def _trend(ns: argparse.Namespace, trials: Sequence[dict[str, Any]], when: datetime) -> tuple[Trend | None, list]:
    """Tonight against the last nights of ``--history``; tonight is then kept there."""
    if ns.history is None:
        return None, []
    tonight = night_summary(trials, when=when.isoformat(timespec="seconds"), seed=ns.chaos_seed)
    nights, unreadable = load_nights(ns.history, ns.history_window)
    trend = compare_nights(tonight, nights)
    try:
        save_night(ns.history, tonight, when)
    except OSError as exc:
        raise UserError(f"cannot keep tonight's summary in {ns.history}: {exc.strerror}", ExitCode.UNWRITABLE) from None
    return Trend(trend.nights, trend.regressions, tuple(unreadable)), [*nights, tonight]


def campaign_exit(verdict: Verdict, ran: int, regressions: int, fail_on_regression: bool) -> int:
    """The exit code: the trials' verdict (4 if none ran), else 5 for a regression if asked to fail on one."""
    if ran == 0:
        return int(ExitCode.INCOMPLETE)
    if verdict is Verdict.PASS and regressions and fail_on_regression:
        return int(ExitCode.REGRESSED)
    return verdict.exit_code


def _print_end(console: Console, trials: Sequence[dict[str, Any]], trend: Trend | None) -> None:
    console.print(summary_table(trials))
    console.print(kinds_table(trials))
    for t in failing(trials):
        label = "[bold yellow]FLAKY[/]" if t["status"] == TrialStatus.FLAKY else "[bold red]FAIL[/]"
        console.print(f"{label} {t['trial']}: {escape(trial_line(t))}", highlight=False)
    if trend is not None:
        for r in trend.regressions:
            console.print(f"[bold magenta]REGRESSION[/] {escape(r.message)}", highlight=False)
        if not trend.nights:
            console.print("no earlier nights in the history to compare with yet", highlight=False)
        elif not trend.regressions:
            k = len(trend.nights)
            console.print(f"no regression against the last {k} night{'s' if k != 1 else ''}", highlight=False)
        for line in trend.unreadable:
            console.print(f"history: passed over {escape(line)}", highlight=False)
    n = tally(trials)
    console.print(f"{n.passed}/{n.run} trials passed ({n.flaky} flaky, {n.not_run} not run)", highlight=False)


def campaign_main(argv: Sequence[str], job: JobAdapter, *, program: Sequence[str] = PROGRAM,
                  command: Sequence[str] = ()) -> int:
    """``program``: the command that runs this campaign again for one trial (``--trial-child`` and
    ``argv`` follow it, then ``-- command`` for a job of one's own)."""
    started, now = time.monotonic(), datetime.now().astimezone()
    p = campaign_parser(job)
    ns = p.parse_args(argv)
    if ns.trial_child is not None:
        return child_main(ns.trial_child, job, ns)
    _check(p, ns)
    refuse_unless_mountable(chosen_kinds(ns))
    refuse_for_gang(chosen_kinds(ns), ns)
    from runner.view import make_console

    console = make_console()
    child_args = [*argv, "--", *command] if command else list(argv)
    dispatch, ref, interrupted = _run(ns, child_args, job, program, console, started)
    trials = dispatch.trials(interrupted=interrupted)
    trend, nights = (None, []) if interrupted else _trend(ns, trials, now)  # a night cut short is no night
    identity = job.identity(ns)
    config = {"seed": ns.chaos_seed, "trials": ns.trials, "faults_per_trial": ns.faults_per_trial,
              "kinds": [k.value for k in chosen_kinds(ns)], "budget_s": ns.budget, "jobs": dispatch.choice.jobs,
              "jobs_reason": dispatch.choice.line(), "peak_rss_mb": round(dispatch.peak_rss / (1 << 20), 1),
              "started": now.isoformat(timespec="seconds"), "wall_s": round(time.monotonic() - started, 1),
              "epochs": identity.get("epochs"), "data": identity.get("data"), "job": identity,
              "reference_dir": str(ref), "out": str(dispatch.out)}
    write_outputs(ns, trials, config, trend, nights, load_trace(ref))
    _print_end(console, trials, trend)
    n = tally(trials)
    if interrupted:
        console.print(f"[bold red]stopped[/]: the reports cover the {n.run} trials that finished; the history "
                      "is left as it was", highlight=False)
        return int(ExitCode.INTERRUPTED)
    if n.run == 0:
        console.print("[bold red]no trial finished within the budget[/]")
    return campaign_exit(verdict_of(trials), n.run, len(trend.regressions) if trend else 0, ns.fail_on_regression)

