"""``python -m runner verify RUN_DIR REFERENCE_DIR``: compare two runs' loss traces, bit for bit."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rundir.argparsing import OneLineParser
from rundir.exitcodes import ExitCode, UserError
from rundir.names import LOSSES

from .options import write_json
from .trace import Comparison, compare, load_trace

__all__ = ["verify_main", "verify_dirs"]


def _trace_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise UserError(f"{what} {path}: no such directory", ExitCode.BAD_DATA)
    if not (path / LOSSES).is_file():
        raise UserError(f"{what} {path}: no {LOSSES} (not a run directory)", ExitCode.BAD_DATA)
    return path


def verify_dirs(run_dir: Path, reference_dir: Path) -> Comparison:
    return compare(load_trace(_trace_dir(reference_dir, "reference")), load_trace(_trace_dir(run_dir, "run")))


def verify_main(argv: Sequence[str]) -> int:
    p = OneLineParser(prog="python -m runner verify",
                      description="Compare a run's stitched loss trace with a reference, bit for bit.")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run to check (e.g. a chaos run)")
    p.add_argument("reference_dir", type=Path, metavar="REFERENCE_DIR",
                   help="an uninterrupted run of the same job and configuration")
    p.add_argument("--json", type=Path, default=None, help="also write the comparison as JSON")
    ns = p.parse_args(argv)
    from .view import make_console

    c = verify_dirs(ns.run_dir, ns.reference_dir)
    console = make_console()
    style = "bold green" if c.bit_exact else "bold red"
    console.print(f"[{style}]{c.verdict.upper()}[/] {c.explain()}", highlight=False)
    if c.missing or c.extra:
        console.print(f"{len(c.missing)} reference steps missing from the run, {len(c.extra)} extra", highlight=False)
    if ns.json:
        write_json(ns.json, c.to_json())
    return ExitCode.OK if c.bit_exact else ExitCode.VERIFY_FAILED
