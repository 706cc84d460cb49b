"""Stitching a run's loss journal and comparing it with a reference, bit for bit.

A resumed run computes the steps between its checkpoint and the kill again; the stitched trace keeps
the latest record of each step. :func:`compare` is pure: two traces and two parameter digests in,
a :class:`Comparison` out, naming the first step where they part.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rundir.journal import read_records
from rundir.names import FINAL, LOSSES

__all__ = ["Trace", "Comparison", "stitch", "load_trace", "compare"]


@dataclass(frozen=True)
class Trace:
    steps: Mapping[int, Mapping[str, Any]]  # step -> its latest record
    records: int  # every record in the journal, recomputed steps included
    params_sha256: str | None  # from final.json, if the run completed

    @property
    def recomputed(self) -> int:
        return self.records - len(self.steps)


def stitch(records: Sequence[Mapping[str, Any]]) -> dict[int, Mapping[str, Any]]:
    out: dict[int, Mapping[str, Any]] = {}
    for rec in records:
        out[int(rec["step"])] = rec
    return dict(sorted(out.items()))


def _loss_hex(rec: Mapping[str, Any]) -> str:
    return str(rec["loss_hex"]) if "loss_hex" in rec else float(rec["loss"]).hex()


def load_trace(run_dir: Path) -> Trace:
    run_dir = Path(run_dir)
    records = [r for r in read_records(run_dir / LOSSES) if "step" in r and "loss" in r]
    try:
        final = json.loads((run_dir / FINAL).read_text())
        digest = final.get("params_sha256")
    except (OSError, ValueError):
        digest = None
    return Trace(stitch(records), len(records), digest)


@dataclass(frozen=True)
class Comparison:
    steps_compared: int
    missing: tuple[int, ...]  # reference steps absent from the run
    extra: tuple[int, ...]  # run steps the reference does not have
    first_divergent_step: int | None
    reference_value: str | None  # loss at the first divergent step, as float.hex
    run_value: str | None
    params_equal: bool

    @property
    def losses_equal(self) -> bool:
        return self.first_divergent_step is None

    @property
    def bit_exact(self) -> bool:
        return self.losses_equal and self.params_equal

    @property
    def verdict(self) -> str:
        return "pass" if self.bit_exact else "fail"

    def explain(self) -> str:
        if self.bit_exact:
            return f"bit-exact: {self.steps_compared} steps and the final parameters match the reference"
        if self.first_divergent_step is not None:
            s = self.first_divergent_step
            return (f"diverges at step {s}: reference loss {self.reference_value}, "
                    f"run loss {self.run_value}")
        return "every loss matches but the final parameters differ (or one run did not complete)"

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "bit_exact": self.bit_exact, "steps_compared": self.steps_compared,
                "first_divergent_step": self.first_divergent_step, "reference_value": self.reference_value,
                "run_value": self.run_value, "missing_steps": len(self.missing), "extra_steps": len(self.extra),
                "params_equal": self.params_equal}


def compare(reference: Trace, run: Trace) -> Comparison:
    ref, got = reference.steps, run.steps
    missing = tuple(s for s in ref if s not in got)
    extra = tuple(s for s in got if s not in ref)
    first: int | None = None
    for s in sorted(set(ref) | set(got)):
        if s not in ref or s not in got or _loss_hex(ref[s]) != _loss_hex(got[s]):
            first = s
            break
    params_equal = reference.params_sha256 is not None and reference.params_sha256 == run.params_sha256
    return Comparison(
        steps_compared=sum(1 for s in ref if s in got),
        missing=missing,
        extra=extra,
        first_divergent_step=first,
        reference_value=_loss_hex(ref[first]) if first is not None and first in ref else None,
        run_value=_loss_hex(got[first]) if first is not None and first in got else None,
        params_equal=params_equal,
    )
