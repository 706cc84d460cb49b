"""The step a gang spread over several machines resumes from: the newest one every node committed.

Each node keeps its own checkpoints on its own disk, so after a failure the nodes may hold different
newest checkpoints (one committed step 24 before the failure, another had not yet). The nodes'
leaders agree in rounds, each round one collective over the whole gang that returns the lowest and
the highest step the leaders offer (ranks with no say offer :data:`NO_SAY`):

- all offers equal: that is the step, on every rank at once;
- a leader whose offer is above the lowest walks back to its next older verified checkpoint, and
  offers that (or -1, none) in the next round; one at the lowest offers it again.

Offers only go down, and -1 is below every checkpoint, so the rounds end, after at most as many as
the newest node holds checkpoints. :func:`resume_problem` is the last check, on the steps every
node's leader actually loaded: nodes that resumed from different steps are refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import Enum

__all__ = ["NO_SAY", "Round", "round_outcome", "StepAgreement", "resume_problem"]

#: What a rank that is not a node's leader offers: below any step, and its negation above any.
NO_SAY = -(2**62)

#: One round: a rank's offer (:data:`NO_SAY` for none) in, the (lowest, highest) offer over the gang out.
Extremes = Callable[[int], tuple[int, int]]


class Round(Enum):
    """What a leader does after a round: the offers were all equal, its own is too high, or it holds."""

    AGREED = "agreed"
    WALK_BACK = "walk-back"
    HOLD = "hold"


def round_outcome(lo: int, hi: int, offer: int) -> Round:
    """The decision after a round whose offers ranged from ``lo`` to ``hi``, for a leader that offered ``offer``."""
    if lo == hi:
        return Round.AGREED
    return Round.WALK_BACK if offer > lo else Round.HOLD


class StepAgreement:
    """One rank's side of the rounds; ``extremes`` is the collective (an all-reduce)."""

    def __init__(self, extremes: Extremes) -> None:
        self.extremes = extremes
        self.agreed: int | None = None

    def offer(self, step: int) -> bool:
        """Offer ``step`` until the nodes agree on it (True) or on an older one (False: walk back)."""
        while True:
            lo, hi = self.extremes(step)
            outcome = round_outcome(lo, hi, step)
            if outcome is Round.AGREED:
                self.agreed = lo
                return True
            if outcome is Round.WALK_BACK:
                return False

    def follow(self) -> int:
        """A rank with no say: join every round until the leaders agree; the agreed step."""
        while True:
            lo, hi = self.extremes(NO_SAY)
            if lo == hi:
                self.agreed = lo
                return lo


def resume_problem(loaded: Mapping[int, int]) -> str | None:
    """Why the nodes' leaders cannot go on from the steps they loaded (by node; -1: none), or None
    when they all loaded the same one: every rank must take the same step in its first collective."""
    if len(set(loaded.values())) <= 1:
        return None
    said = ", ".join(f"node {n} from {'scratch' if s < 0 else f'step {s}'}" for n, s in sorted(loaded.items()))
    return f"the nodes would resume from different checkpoints ({said}): refusing to train on"
