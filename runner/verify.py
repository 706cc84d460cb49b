"""``python -m runner verify RUN_DIR REFERENCE_DIR``: compare two runs' loss traces, bit for bit, and
exit with the verdict's code: 0 pass, 3 diverged, 4 incomplete."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rundir.argparsing import OneLineParser
from rundir.exitcodes import ExitCode, UserError
from rundir.names import LOSSES

from .options import write_json
from .trace import Comparison, Trace, Verdict, compare, load_trace

__all__ = ["verify_main", "verify_dirs"]


def _trace_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise UserError(f"{what} {path}: no such directory", ExitCode.BAD_DATA)
    if not (path / LOSSES).is_file():
        raise UserError(f"{what} {path}: no {LOSSES} (not a run directory)", ExitCode.BAD_DATA)
    return path


def _traces(run_dir: Path, reference_dir: Path) -> tuple[Trace, Trace]:
    return load_trace(_trace_dir(run_dir, "run")), load_trace(_trace_dir(reference_dir, "reference"))


def verify_dirs(run_dir: Path, reference_dir: Path) -> Comparison:
    run, reference = _traces(run_dir, reference_dir)
    return compare(reference, run)


def skipped_lines(traces: Sequence[tuple[Path, Trace]]) -> list[str]:
    """One line for each journal that had malformed records, naming the first problem."""
    return [f"{t.skipped} malformed record(s) skipped in {path / LOSSES}"
            + (f" (first: {t.skip_problem})" if t.skip_problem else "")
            for path, t in traces if t.skipped]


def verify_main(argv: Sequence[str]) -> int:
    p = OneLineParser(prog="python -m runner verify",
                      description="Compare a run's stitched loss trace with a reference, bit for bit.")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                   help="the run directory to check, with its losses.jsonl: a chaos run, a campaign's trial-NNN, "
                        "or any resumed run")
    p.add_argument("reference_dir", type=Path, metavar="REFERENCE_DIR",
                   help="the run directory of an uninterrupted run of the same job and configuration (a chaos "
                        "run's is under --reference-cache, default runs/references)")
    p.add_argument("--json", type=Path, default=None, help="also write the comparison as JSON")
    ns = p.parse_args(argv)
    from rich.text import Text

    from .view import make_console

    run, reference = _traces(ns.run_dir, ns.reference_dir)
    c = compare(reference, run)
    console = make_console()
    j = c.judgement
    style = "bold green" if j.verdict is Verdict.PASS else "bold red"
    console.print(Text(j.verdict.value.upper(), style=style) + Text(" " + j.reason), highlight=False)
    if c.missing or c.extra:
        console.print(f"{len(c.missing)} reference steps missing from the run, {len(c.extra)} extra", highlight=False)
    for line in skipped_lines([(ns.run_dir, run), (ns.reference_dir, reference)]):
        console.print(line, highlight=False, markup=False)
    if ns.json:
        write_json(ns.json, c.to_json())
    return j.verdict.exit_code
