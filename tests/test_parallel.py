"""The built-in job alone or as a gang (model/parallel.py): how a global batch is split across ranks
(a table, and the properties every split must have), and a rank's RNG part as bytes and back. The
gang itself runs in the end-to-end tests (tests/e2e/test_gang.py): its collectives need real ranks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from checkpoint import paddle_state as ps
from model.parallel import Solo, decode_rng, encode_rng, rank_slice, side_for
from runner.worker import Worker
from runner.worker.ranks import Rank


@pytest.mark.parametrize(("n", "size", "slices"), [
    (100, 1, [(0, 100)]),
    (100, 2, [(0, 50), (50, 100)]),
    (100, 3, [(0, 34), (34, 67), (67, 100)]),
    (37, 2, [(0, 19), (19, 37)]),  # the epoch's short last batch
    (5, 4, [(0, 2), (2, 3), (3, 4), (4, 5)]),
    (4, 4, [(0, 1), (1, 2), (2, 3), (3, 4)]),
])
def test_each_rank_takes_a_contiguous_slice_of_the_global_batch(n: int, size: int,
                                                                 slices: list[tuple[int, int]]) -> None:
    assert [(s.start, s.stop) for s in (rank_slice(n, r, size) for r in range(size))] == slices


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("n", [100, 99, 37, 7])
def test_the_slices_cover_the_batch_once_in_order_and_differ_by_at_most_one(n: int, size: int) -> None:
    batch = np.random.default_rng(n).permutation(1000)[:n]
    parts = [batch[rank_slice(n, r, size)] for r in range(size)]
    assert np.array_equal(np.concatenate(parts), batch)  # the global batch and its order, whatever the size
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and sorted(sizes, reverse=True) == sizes


def test_a_strided_split_would_not_keep_the_batchs_order() -> None:
    """The property above bites: a split that deals samples out in turn covers the batch too, but
    not in its order."""
    batch = np.arange(10)
    strided = [batch[r::2] for r in range(2)]
    assert not np.array_equal(np.concatenate(strided), batch)


def test_a_ranks_rngs_survive_the_trip_through_its_part() -> None:
    np.random.seed(11)
    np.random.normal()  # a cached Gaussian is part of the state
    state = ps.rng_snapshot()()
    arrays, meta = decode_rng(encode_rng(state))
    assert meta == json_round(state[1])
    assert arrays.keys() == state[0].keys()
    assert all(np.array_equal(arrays[k], state[0][k]) for k in arrays)


def json_round(meta: object) -> object:
    return json.loads(json.dumps(meta))


def test_a_single_process_is_solo_and_keeps_the_whole_batch() -> None:
    worker = Worker.__new__(Worker)  # never started: Solo only holds it here
    side = side_for(worker, Rank())
    assert isinstance(side, Solo)
    idx = np.arange(5)
    assert side.local(idx) is idx
