"""``python -m runner campaign``: many seeded chaos trials against one reference, for nightly CI.

Each trial draws its own schedule; across the campaign the fault kinds are dealt out evenly, so
every kind is exercised. Results come out as a rich table, JUnit XML (one testcase per trial, a
failure carrying the command that replays it), JSON and a PNG of the loss curves with the faults.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rundir.exitcodes import ExitCode, UserError
from runner.adapter import JobAdapter
from runner.options import write_json
from runner.trace import Verdict, load_trace
from runner.view import PlainView, make_console

from .report import ChaosReport
from .schedule import Schedule, ScheduleError, checkpoint_steps, draw_schedule
from .simulate import chaos_parser, chosen_kinds
from .tmpfs import refuse_unless_mountable
from .trial import ensure_reference

__all__ = ["campaign_main", "campaign_parser", "campaign_verdict", "deal_kinds", "trial_seeds", "draw_schedules",
           "run_trials", "write_results", "junit_xml", "campaign_json", "summary_table", "plot_campaign", "Trial"]


@dataclass(frozen=True)
class Trial:
    index: int
    seed: int
    run_dir: Path
    report: ChaosReport
    schedule_path: Path

    @property
    def name(self) -> str:
        return f"trial-{self.index:03d}"


def trial_seeds(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(2**31) for _ in range(n)]


def deal_kinds(seed: int, trials: int, per_trial: int, kinds: Sequence[Any]) -> list[list[Any]]:
    """Deal ``trials * per_trial`` fault kinds so every kind is used about equally, shuffled by seed."""
    rng = random.Random(seed ^ 0x5EED)
    pool: list[Any] = []
    while len(pool) < trials * per_trial:
        batch = list(kinds)
        rng.shuffle(batch)
        pool += batch
    return [pool[i * per_trial : (i + 1) * per_trial] for i in range(trials)]


def summary_table(trials: Sequence[Trial]) -> Table:
    t = Table(title="chaos campaign")
    for col in ("trial", "seed", "faults", "restarts", "lost steps", "restart latency", "goodput", "verdict"):
        t.add_column(col, justify="left" if col in ("trial", "faults") else "right")
    for tr in trials:
        r = tr.report
        lat = r.restart_latency_s
        t.add_row(
            tr.name, str(tr.seed), ", ".join(f["kind"] + ("?" if f.get("missed") else "") for f in r.faults),
            str(r.restarts), str(r.lost_steps), f"{statistics.median(lat):.2f} s" if lat else "-",
            f"{r.goodput:.3f}", f"[green]{r.verdict}[/]" if r.verdict is Verdict.PASS else f"[bold red]{r.verdict}[/]",
        )
    return t


def junit_xml(trials: Sequence[Trial], *, suite: str = "chaos-campaign") -> bytes:
    failures = sum(1 for t in trials if t.report.verdict is not Verdict.PASS)
    total_time = sum(t.report.wall_s for t in trials)
    root = ET.Element("testsuites", tests=str(len(trials)), failures=str(failures), time=f"{total_time:.3f}")
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(trials)), failures=str(failures),
                       errors="0", skipped="0", time=f"{total_time:.3f}")
    for t in trials:
        r = t.report
        kinds = ",".join(f["kind"] for f in r.faults)
        tc = ET.SubElement(ts, "testcase", classname=suite, name=f"{t.name} seed={t.seed} faults={kinds}",
                           time=f"{r.wall_s:.3f}")
        if r.verdict is not Verdict.PASS:
            msg = f"{r.judgement.line()}; replay: {r.replay}"
            kind = "ResumeMismatch" if r.verdict is Verdict.DIVERGED else "RunIncomplete"
            fail = ET.SubElement(tc, "failure", message=msg, type=kind)
            fail.text = json.dumps(r.to_json(), indent=1)
        out = ET.SubElement(tc, "system-out")
        out.text = f"run dir: {t.run_dir}\nreplay: {r.replay}\n"
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def campaign_json(trials: Sequence[Trial], config: dict[str, Any]) -> dict[str, Any]:
    lat = [x for t in trials for x in t.report.restart_latency_s]
    return {
        "campaign": config,
        "trials": [dict(t.report.to_json(), trial=t.name, seed=t.seed, run_dir=str(t.run_dir)) for t in trials],
        "totals": {
            "trials": len(trials),
            "passed": sum(1 for t in trials if t.report.verdict is Verdict.PASS),
            "failed": sum(1 for t in trials if t.report.verdict is not Verdict.PASS),
            "diverged": sum(1 for t in trials if t.report.verdict is Verdict.DIVERGED),
            "incomplete": sum(1 for t in trials if t.report.verdict is Verdict.INCOMPLETE),
            "faults": sum(len(t.report.faults) for t in trials),
            "restarts": sum(t.report.restarts for t in trials),
            "lost_steps": sum(t.report.lost_steps for t in trials),
            "restart_latency_median_s": round(statistics.median(lat), 4) if lat else None,
            "goodput_mean": round(statistics.fmean(t.report.goodput for t in trials), 4) if trials else None,
        },
    }


_FAULT_COLOURS = {"sigkill": "tab:red", "sigterm": "tab:orange", "checkpoint-write": "tab:purple",
                  "corrupt-checkpoint": "tab:brown", "hang": "tab:gray", "crash": "tab:pink",
                  "instance-loss": "tab:olive", "store-outage": "tab:cyan"}


def plot_campaign(trials: Sequence[Trial], reference: Any, path: Path) -> None:
    """One panel per trial: reference and stitched loss per step, a marker line at each fault."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(trials))
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False, sharey=True)
    ref_steps = sorted(reference.steps)
    ref_loss = [float(reference.steps[s]["loss"]) for s in ref_steps]
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, t in zip(axes.flat, trials):
        run = load_trace(t.run_dir)
        steps = sorted(run.steps)
        ax.plot(ref_steps, ref_loss, color="black", lw=2.2, alpha=0.35, label="reference")
        ax.plot(steps, [float(run.steps[s]["loss"]) for s in steps], color="tab:blue", lw=1.1, ls="--",
                label="stitched")
        seen: set[str] = set()
        for f in t.report.faults:
            if f.get("missed"):
                continue
            x = (f["hit_step"] + 1) if f.get("hit_step") is not None else f["target_step"]
            colour = _FAULT_COLOURS.get(f["kind"], "tab:red")
            ax.axvline(x, color=colour, lw=1.4, alpha=0.9, label=None if f["kind"] in seen else f["kind"])
            ax.plot([x], [max(ref_loss)], marker="v", color=colour, ms=9)
            seen.add(f["kind"])
        verdict = t.report.verdict
        colour = "tab:green" if verdict is Verdict.PASS else "tab:red"
        ax.set_title(f"{t.name} (seed {t.seed}): {verdict}", color=colour, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="center right")
    fig.suptitle("chaos campaign: reference vs stitched loss, faults marked", fontsize=12)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def campaign_parser(job: JobAdapter) -> argparse.ArgumentParser:
    """The simulation's options (``chaos_parser``) and the campaign's own."""
    p = chaos_parser(job, "python -m runner campaign", "Run many seeded chaos trials against one reference.")
    p.add_argument("--trials", type=int, required=True, help="number of chaos trials")
    p.add_argument("--faults-per-trial", type=int, default=3, metavar="N", help="faults in each trial (default 3)")
    p.add_argument("--out", type=Path, default=None, help="a new directory for the trials (default runs/campaign-TIME)")
    p.add_argument("--junit", type=Path, default=None, metavar="FILE", help="write JUnit XML")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the results as JSON")
    p.add_argument("--plot", type=Path, default=None, metavar="FILE.png", help="write a PNG of the loss curves")
    return p


def draw_schedules(ns: argparse.Namespace, seeds: Sequence[int], total: int, per_epoch: int) -> list[Schedule]:
    """One schedule per trial seed, the fault kinds dealt out evenly across the trials."""
    ckpts = checkpoint_steps(total, per_epoch, max(0, ns.checkpoint_every_steps))
    hands = deal_kinds(ns.chaos_seed, len(seeds), ns.faults_per_trial, chosen_kinds(ns))
    try:
        ranks = int(getattr(ns, "nproc_per_node", 1))  # a gang's faults are aimed at ranks
        return [draw_schedule(s, len(h), h, total, ckpts, ranks=ranks) for s, h in zip(seeds, hands)]
    except ScheduleError as exc:
        raise UserError(str(exc), ExitCode.BAD_CONFIG) from None


def run_trials(job: JobAdapter, ns: argparse.Namespace, seeds: Sequence[int], schedules: Sequence[Schedule],
               out: Path, ref: Path, console: Console) -> list[Trial]:
    """Run the trials one after another under ``out``, with a progress bar on a terminal and a line
    per trial elsewhere; each supervisor's output goes to its own log."""
    from .fleet import run_any_trial

    trials: list[Trial] = []
    with Progress(TextColumn("[bold]campaign"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[last]}"),
                  TimeElapsedColumn(), console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task("trials", total=len(schedules), last="")
        for i, (seed, schedule) in enumerate(zip(seeds, schedules), start=1):
            run_dir = out / f"trial-{i:03d}"
            run_dir.mkdir(parents=True, exist_ok=True)
            store = f"{ns.store.rstrip('/')}/{run_dir.name}" if ns.store else None  # a prefix per trial
            with open(out / f"trial-{i:03d}.supervisor.log", "w") as log:
                tr = run_any_trial(job, ns, schedule, run_dir, ref, view=PlainView(out=log), store=store)
            trial = Trial(i, seed, run_dir, tr.report, tr.schedule_path)
            trials.append(trial)
            line = f"{trial.name}: {tr.report.verdict} ({len(tr.report.faults)} faults, {tr.report.restarts} restarts)"
            progress.update(task, advance=1, last=line)
            if not console.is_terminal:
                print(f"[campaign] {i}/{len(schedules)} {line}", flush=True)
    return trials


def write_results(ns: argparse.Namespace, trials: Sequence[Trial], config: dict[str, Any], ref: Path) -> None:
    """The JUnit XML, JSON and plot the options asked for."""
    if ns.junit:
        try:
            ns.junit.parent.mkdir(parents=True, exist_ok=True)
            ns.junit.write_bytes(junit_xml(trials))
        except OSError as exc:
            raise UserError(f"cannot write {ns.junit}: {exc.strerror}", ExitCode.UNWRITABLE) from None
    if ns.json:
        write_json(ns.json, campaign_json(trials, config))
    if ns.plot:
        plot_campaign(trials, load_trace(ref), ns.plot)


def campaign_main(argv: Sequence[str], job: JobAdapter) -> int:
    p = campaign_parser(job)
    ns = p.parse_args(argv)
    if ns.trials < 1:
        p.error("--trials must be 1 or more")
    if ns.faults_per_trial < 1:
        p.error("--faults-per-trial must be 1 or more")
    refuse_unless_mountable(chosen_kinds(ns))
    console = make_console()
    out = (ns.out or Path("runs") / time.strftime("campaign-%Y%m%d-%H%M%S")).resolve()
    if out.exists() and any(out.iterdir()):
        raise UserError(f"campaign directory {out} is not empty; choose a new --out", ExitCode.BAD_CONFIG)
    ref = ensure_reference(job, ns, ns.reference_cache.resolve(), console)
    per, total = job.total_steps(ref, ns)
    seeds = trial_seeds(ns.chaos_seed, ns.trials)
    trials = run_trials(job, ns, seeds, draw_schedules(ns, seeds, total, per), out, ref, console)

    console.print(summary_table(trials))
    identity = job.identity(ns)
    config = {"seed": ns.chaos_seed, "trials": ns.trials, "faults_per_trial": ns.faults_per_trial,
              "epochs": identity.get("epochs"), "data": identity.get("data"), "job": identity,
              "reference_dir": str(ref), "out": str(out)}
    write_results(ns, trials, config, ref)
    failed = [t for t in trials if t.report.verdict is not Verdict.PASS]
    for t in failed:
        console.print(f"[bold red]FAIL[/] {t.name}: {escape(t.report.judgement.line())}\n"
                      f"  replay: {escape(str(t.report.replay))}", highlight=False)
    console.print(f"{len(trials) - len(failed)}/{len(trials)} trials passed", highlight=False)
    return campaign_verdict([t.report.verdict for t in trials]).exit_code


def campaign_verdict(verdicts: Sequence[Verdict]) -> Verdict:
    """The campaign's verdict: diverged if any trial diverged, else incomplete if any was, else pass."""
    for v in (Verdict.DIVERGED, Verdict.INCOMPLETE):
        if v in verdicts:
            return v
    return Verdict.PASS
