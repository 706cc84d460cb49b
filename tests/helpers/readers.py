"""What a run directory holds, read through the project's own readers: the journals with
``rundir.journal``, the stitched trace with ``runner.trace``, checkpoints with ``checkpoint.store``.

The journal readers skip a torn or unparseable line as the supervisor does, so a test polling a journal a
live worker appends to never trips on a half-written line. :func:`jsonl` is the strict one: every line must
be a JSON object, for a test that checks what the code under test wrote."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from checkpoint.storage import LocalStorage
from checkpoint.store import MANIFEST, CheckpointStore, checkpoint_name
from rundir.journal import read_records
from rundir.names import EVENTS, FINAL, LOSSES, read_heartbeat
from runner.trace import stitch

__all__ = [
    "jsonl",
    "count_lines",
    "losses",
    "events",
    "final",
    "stitched",
    "loss_trace",
    "first_divergence",
    "assert_bit_exact",
    "resumed_from",
    "resumed_from_step",
    "worker_progress",
    "committed_steps",
    "durable_steps",
]


def jsonl(path: Path) -> list[dict[str, Any]]:
    """Every non-blank line of a JSON-lines file, parsed; a line that does not parse raises. No file: []."""
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def count_lines(path: Path) -> int:
    try:
        return Path(path).read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


# -- the journals -------------------------------------------------------------------------------------------


def losses(run_dir: Path | str) -> list[dict[str, Any]]:
    return read_records(Path(run_dir) / LOSSES)


def events(run_dir: Path | str, kind: str | None = None, *, source: str | None = None,
           strict: bool = False) -> list[dict[str, Any]]:
    """The run's events, only those of ``kind`` and from ``source`` if given. ``strict``: read with
    :func:`jsonl`, for a test in which nothing is killed, so every line must parse."""
    path = Path(run_dir) / EVENTS
    return [e for e in (jsonl(path) if strict else read_records(path))
            if (kind is None or e.get("event") == kind) and (source is None or e.get("source") == source)]


def final(run_dir: Path | str) -> dict[str, Any]:
    return json.loads((Path(run_dir) / FINAL).read_text())


def resumed_from(run_dir: Path | str) -> list[int]:
    """``resumed_from_step`` of every attempt, in order."""
    return [int(r["resumed_from_step"]) for r in events(run_dir, "attempt-started")]


def resumed_from_step(run_dir: Path | str, attempt: int) -> int:
    """The step the worker's attempt ``attempt`` said it resumed from (it says so exactly once)."""
    got = [int(e["resumed_from_step"]) for e in events(run_dir, "attempt-started", source="worker")
           if e.get("attempt") == attempt]
    assert len(got) == 1, f"attempt {attempt} started {len(got)} times in {run_dir}"
    return got[0]


def worker_progress(run_dir: Path, attempt: int, min_step: int) -> int | None:
    """The pid of attempt ``attempt``'s worker once it has reported a step >= ``min_step``, else None."""
    if not any(r.get("attempt") == attempt and int(r["step"]) >= min_step for r in losses(run_dir)):
        return None
    hb = read_heartbeat(run_dir)
    if hb is None or hb.get("attempt") != attempt:
        return None
    return int(hb["pid"])


# -- the stitched trace -------------------------------------------------------------------------------------


def stitched(run_dir: Path | str) -> dict[int, Mapping[str, Any]]:
    """The run's trace as the union of its attempts: the latest record of each step (``runner.trace.stitch``)."""
    return stitch(losses(run_dir))


def loss_trace(run_dir: Path | str) -> dict[int, str]:
    """``{step: loss_hex}`` of the stitched trace: equal iff every loss is bit-identical."""
    return {step: str(rec["loss_hex"]) for step, rec in stitched(run_dir).items()}


_MISSING = object()


def first_divergence(a: Mapping[int, Any], b: Mapping[int, Any], field: str = "loss_hex") -> int | None:
    """The first step whose ``field`` differs between two stitched traces (a step missing from one of
    them counts as a difference), or None if they are identical."""

    def value(trace: Mapping[int, Any], step: int) -> Any:
        if step not in trace:
            return _MISSING
        v = trace[step]
        return v.get(field) if isinstance(v, Mapping) else v

    for step in sorted(set(a) | set(b)):
        if value(a, step) != value(b, step):
            return step
    return None


def assert_bit_exact(run_dir: Path, reference: Path, steps: int) -> None:
    """The run's stitched trace and final parameters equal the reference's, bit for bit, over ``steps`` steps."""
    got, want = loss_trace(run_dir), loss_trace(reference)
    assert list(want) == list(range(steps)), f"the reference {reference} did not train {steps} steps"
    assert list(got) == list(range(steps)), f"steps missing from the stitched trace: {sorted(set(want) - set(got))}"
    step = first_divergence(want, got)
    assert step is None, f"the stitched trace diverges from the reference at step {step}"
    assert final(run_dir)["steps"] == steps
    assert final(run_dir)["params_sha256"] == final(reference)["params_sha256"]


# -- checkpoints --------------------------------------------------------------------------------------------


def committed_steps(run_dir: Path) -> list[int]:
    return [int(n.split("-")[1]) for n in CheckpointStore(LocalStorage(run_dir)).committed()]


def durable_steps(run_dir: Path) -> list[int]:
    ck = run_dir / "checkpoints"
    return [s for s in committed_steps(run_dir)
            if json.loads((ck / checkpoint_name(s) / MANIFEST).read_text())["durable"]]
