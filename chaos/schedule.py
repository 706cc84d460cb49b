"""A chaos schedule: which faults, of which kinds, at which steps; drawn from a seed, saved as JSON.

Drawing is pure: the same seed and job give the same schedule, and a saved schedule replays a run's
faults exactly. Targets are spread over the run, one per equal slice, at least ``MIN_GAP`` steps
apart, so every restart completes new steps before the next fault (a schedule never fakes a crash
loop); faults on checkpoints are placed on steps where the job takes one.

A loaded schedule is data from a file, so every fault is checked before anything runs: a step of 0
or more, and for corrupt-checkpoint a known mode, a position in [0, 1] and a file name that stays
inside the checkpoint (``rundir.paths.check_name``: not absolute, no ``..``, not empty, no NUL);
for notice a known cloud and a window of at most ten minutes; for store-outage a known mode and a
number of seconds from 0 to ``MAX_OUTAGE_S``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rundir.paths import PathEscape, check_name

from .faults import CHECKPOINT_KINDS, NOTICE_CLOUDS, NOTICE_WINDOW_S, RANK_KINDS, Fault, FaultKind

__all__ = ["Schedule", "draw_schedule", "checkpoint_steps", "ScheduleError", "fault_problem", "MIN_GAP",
           "SCHEDULE_FILE", "CORRUPT_FILES", "CORRUPT_MODES", "OUTAGE_MODES", "MAX_OUTAGE_S"]

MIN_GAP = 4
SCHEDULE_FILE = "chaos-schedule.json"
CORRUPT_FILES = ("model.safetensors", "train.safetensors", "MANIFEST.json")
CORRUPT_MODES = ("truncate", "flip-byte")
OUTAGE_MODES = ("refuse", "hang")
MAX_OUTAGE_S = 600.0


class ScheduleError(ValueError):
    pass


def fault_problem(fault: Fault) -> str | None:
    """What is wrong with one fault of a schedule, or None."""
    if fault.step < 0:
        return "its step is negative"
    rank = fault.detail.get("rank")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 0):
        return f"its rank {rank!r} is not a rank (an integer 0 or more)"
    if fault.kind is FaultKind.NOTICE:
        return _notice_problem(fault.detail)
    if fault.kind is FaultKind.STORE_OUTAGE:
        return _outage_problem(fault.detail)
    if fault.kind is not FaultKind.CORRUPT_CHECKPOINT:
        return None
    d = fault.detail
    try:
        check_name(d.get("file", CORRUPT_FILES[0]))
    except PathEscape as exc:
        return f"its file {exc}"
    if d.get("mode", CORRUPT_MODES[1]) not in CORRUPT_MODES:
        return f"its mode {d.get('mode')!r} is not one of {', '.join(CORRUPT_MODES)}"
    pos = d.get("position", 0.5)
    if isinstance(pos, bool) or not isinstance(pos, int | float) or not 0 <= pos <= 1:
        return f"its position {pos!r} is not a number from 0 to 1"
    return None


def _notice_problem(d: Mapping[str, Any]) -> str | None:
    if d.get("cloud") not in NOTICE_CLOUDS:
        return f"its cloud {d.get('cloud')!r} is not one of {', '.join(NOTICE_CLOUDS)}"
    w = d.get("window_s", NOTICE_WINDOW_S)
    if isinstance(w, bool) or not isinstance(w, int | float) or not 0 < w <= 600:
        return f"its window_s {w!r} is not a number of seconds in (0, 600]"
    return None


def _outage_problem(d: Mapping[str, Any]) -> str | None:
    if d.get("mode", OUTAGE_MODES[0]) not in OUTAGE_MODES:
        return f"its mode {d.get('mode')!r} is not one of {', '.join(OUTAGE_MODES)}"
    s = d.get("seconds", 2.0)
    if isinstance(s, bool) or not isinstance(s, int | float) or not 0 < s <= MAX_OUTAGE_S:
        return f"its seconds {s!r} is not a number above 0 and at most {MAX_OUTAGE_S:g}"
    return None


def _fault(i: int, d: Any) -> Fault:
    if not isinstance(d, Mapping) or not isinstance(d.get("detail", {}), Mapping):
        raise ScheduleError(f"fault {i} is not an object with an object 'detail'")
    f = Fault.from_json(d)
    problem = fault_problem(f)
    if problem is not None:
        raise ScheduleError(f"fault {i} ({f.kind.value} at step {f.step}): {problem}")
    return f


@dataclass(frozen=True)
class Schedule:
    seed: int | None
    total_steps: int
    faults: tuple[Fault, ...]

    def to_json(self) -> dict[str, Any]:
        return {"format": 1, "seed": self.seed, "total_steps": self.total_steps,
                "faults": [f.to_json() for f in self.faults]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Schedule:
        """Raises :class:`ScheduleError` (or KeyError, TypeError) for a schedule that does not check out."""
        faults = d["faults"]
        if not isinstance(faults, list):
            raise ScheduleError("'faults' is not a list")
        return cls(d.get("seed"), int(d["total_steps"]), tuple(_fault(i, f) for i, f in enumerate(faults, start=1)))

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> Schedule:
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise ScheduleError(f"chaos schedule {path}: no such file") from None
        except OSError as exc:  # a directory, no permission
            raise ScheduleError(f"chaos schedule {path}: cannot read it ({exc.strerror})") from None
        except ScheduleError as exc:
            raise ScheduleError(f"chaos schedule {path}: not a valid schedule: {exc}") from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # AttributeError: not an object
            raise ScheduleError(f"chaos schedule {path}: not a valid schedule ({exc})") from None


def checkpoint_steps(total_steps: int, steps_per_epoch: int, every: int) -> list[int]:
    """Steps (counted as completed steps) after which the job writes a checkpoint."""
    return [s for s in range(1, total_steps + 1) if s % steps_per_epoch == 0 or (every and s % every == 0)]


def _aimed(kind: FaultKind, detail: Mapping[str, Any], rank: int) -> dict[str, Any]:
    """A fault's detail, aimed at ``rank`` of a gang: a corrupt-checkpoint keeps its mode and
    position, and its file where it damages one of rank 0's; aimed at another rank it damages that
    rank's part of the checkpoint, which has no file to name. The rest keep only the rank."""
    if kind is not FaultKind.CORRUPT_CHECKPOINT:
        return {"rank": rank}
    kept = ("mode", "file", "position") if rank == 0 else ("mode", "position")
    return {**{k: detail[k] for k in kept}, "rank": rank}


def draw_schedule(
    seed: int,
    n_faults: int,
    kinds: Sequence[FaultKind],
    total_steps: int,
    ckpt_steps: Sequence[int],
    ranks: int = 1,
) -> Schedule:
    """Draw ``n_faults`` faults over a job of ``total_steps`` steps, every kind in ``kinds`` at least
    once when ``n_faults >= len(kinds)``. For a gang of ``ranks`` > 1, each fault of
    :data:`~chaos.faults.RANK_KINDS` is aimed at a rank drawn too, after what the kind draws for
    itself (a single process's schedules draw nothing more: a seed gives the schedule it always gave)."""
    if n_faults < 0:
        raise ScheduleError("the number of faults must be 0 or more")
    if not kinds and n_faults:
        raise ScheduleError("no fault kinds to draw from")
    rng = random.Random(seed)
    order = rng.sample(list(kinds), min(n_faults, len(kinds)))
    order += [rng.choice(list(kinds)) for _ in range(n_faults - len(order))]
    rng.shuffle(order)
    lo, hi = 2, total_steps - 1  # leave the first and last steps alone
    span = (hi - lo) / max(1, n_faults)
    ckpts = sorted(set(ckpt_steps))
    faults: list[Fault] = []
    prev = -MIN_GAP
    for i, kind in enumerate(order):
        a, b = lo + int(i * span), lo + int((i + 1) * span)
        allowed = ckpts if kind in CHECKPOINT_KINDS else range(lo, hi)
        cands = [s for s in allowed if a <= s < b and s >= prev + MIN_GAP and s < hi]
        if not cands:  # a slice with no checkpoint in it: take the next one that fits
            cands = [s for s in allowed if s >= max(a, prev + MIN_GAP) and s < hi][:1]
        if not cands:
            raise ScheduleError(
                f"cannot fit {n_faults} faults into {total_steps} steps at least {MIN_GAP} apart; "
                "use fewer faults, more epochs or more frequent checkpoints"
            )
        step = rng.choice(cands)
        detail: dict[str, Any] = {}
        if kind is FaultKind.CORRUPT_CHECKPOINT:
            detail = {"mode": rng.choice(["truncate", "flip-byte"]), "file": rng.choice(CORRUPT_FILES),
                      "position": round(rng.random(), 6)}
        elif kind is FaultKind.NOTICE:
            detail = {"cloud": rng.choice(NOTICE_CLOUDS), "window_s": NOTICE_WINDOW_S}
        elif kind is FaultKind.STORE_OUTAGE:
            detail = {"mode": rng.choice(OUTAGE_MODES), "seconds": round(rng.uniform(1.0, 3.0), 2)}
        if ranks > 1 and kind in RANK_KINDS:
            detail = _aimed(kind, detail, rng.randrange(ranks))
        faults.append(Fault(kind, step, detail))
        prev = step
    return Schedule(seed=seed, total_steps=total_steps, faults=tuple(faults))
