"""``runner.resumable``: the pure parts as tables, and a DataLoader stopped at any batch and rebuilt
from what a checkpoint holds, resuming at the exact sample - shuffled or not, ``drop_last`` either
way, a user's Sampler or BatchSampler, a DistributedBatchSampler, loader processes or none."""

from __future__ import annotations

import copy
import os
import random
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import paddle
import pytest

from runner.resumable import (
    ResumableLoader,
    check_position,
    close_fds_of,
    from_json,
    pack_batches,
    sample_rng,
    sampler_state,
    set_sampler_state,
    to_json,
    unpack_batches,
)

# -- pure parts ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batches", [[], [[3]], [[0, 1, 2], [5, 4, 3]], [[9, 8], [7], [6, 5, 4, 3]], [[], [1]]])
def test_batches_pack_and_unpack(batches: list[list[int]]) -> None:
    flat, lengths = pack_batches(batches)
    assert flat.dtype == lengths.dtype == np.int64
    assert not flat.flags.writeable and not lengths.flags.writeable  # a writer copies them once per epoch
    assert unpack_batches(flat, lengths) == batches


@pytest.mark.parametrize(("flat", "lengths"), [
    ([1, 2, 3], [2]),  # too many indices
    ([1], [2]),  # too few
    ([1, 2], [3, -1]),  # a negative length
    ([[1, 2]], [2]),  # not flat
])
def test_batches_that_do_not_fit_are_refused(flat: list[Any], lengths: list[int]) -> None:
    with pytest.raises(ValueError, match="do not fit"):
        unpack_batches(np.asarray(flat, dtype=np.int64), np.asarray(lengths, dtype=np.int64))


@pytest.mark.parametrize(("position", "batches", "ok"), [
    (0, 0, True), (0, 5, True), (3, 5, True), (5, 5, True),  # 5 of 5: the epoch is done, nothing left
    (6, 5, False), (-1, 5, False), (1.0, 5, False), (True, 5, False), ("2", 5, False),
])
def test_check_position(position: Any, batches: int, ok: bool) -> None:
    if ok:
        assert check_position(position, batches) == position
    else:
        with pytest.raises(ValueError, match="outside an epoch"):
            check_position(position, batches)


@pytest.mark.parametrize("value", [
    None, 3, 2**100, 1.5, "x", [1, [2, 3]], {"a": {"b": [1, 2]}},
    np.arange(5, dtype=np.uint32), {"key": np.zeros((2, 2), dtype=np.float64), "pos": 7},
])
def test_json_round_trip(value: Any) -> None:
    back = from_json(to_json(value))
    if isinstance(value, np.ndarray):
        assert back.dtype == value.dtype and np.array_equal(back, value)
    elif isinstance(value, dict) and "key" in value:
        assert back["pos"] == 7 and back["key"].dtype == np.float64
    else:
        assert back == value


def test_json_turns_tuples_and_numpy_scalars_into_plain_values() -> None:
    assert to_json((1, np.int64(2), np.float32(0.5))) == [1, 2, 0.5]
    with pytest.raises(TypeError, match="cannot save a object"):
        to_json(object())


class _OwnState:
    def __init__(self) -> None:
        self.seen = 0

    def state_dict(self) -> dict[str, int]:
        return {"seen": self.seen}

    def set_state_dict(self, d: dict[str, int]) -> None:
        self.seen = d["seen"]


class _Generators:
    def __init__(self, seed: int) -> None:
        self.gen = np.random.default_rng(seed)
        self.mt = np.random.Generator(np.random.MT19937(seed))
        self.legacy = np.random.RandomState(seed)
        self.py = random.Random(seed)
        self.epoch = seed
        self.batch_size = 4  # configuration: not state
        self.flag = True


def _draws(s: _Generators) -> tuple[Any, ...]:
    return (s.gen.integers(1 << 30), s.mt.integers(1 << 30), s.legacy.randint(1 << 30), s.py.random(), s.epoch)


def test_a_samplers_generators_and_epoch_are_saved_and_put_back() -> None:
    s = _Generators(1)
    _draws(s)
    saved = to_json(sampler_state(s))  # as it goes into the manifest
    assert set(saved["attrs"]) == {"gen", "mt", "legacy", "py", "epoch"}
    want = _draws(copy.deepcopy(s))
    other = _Generators(99)
    set_sampler_state(other, from_json(saved))
    assert _draws(other) == want


def test_a_samplers_own_state_dict_is_used_where_it_has_one() -> None:
    s = _OwnState()
    s.seen = 12
    state = sampler_state(s)
    assert state == {"state_dict": {"seen": 12}}
    fresh = _OwnState()
    set_sampler_state(fresh, from_json(to_json(state)))
    assert fresh.seen == 12


def test_close_fds_of_closes_only_the_named_files(tmp_path: Path) -> None:
    a, b = tmp_path / "worker.lock", tmp_path / "other"
    fa, fb = os.open(a, os.O_CREAT | os.O_RDWR), os.open(b, os.O_CREAT | os.O_RDWR)
    try:
        assert close_fds_of([str(a)]) == [fa]
        with pytest.raises(OSError):
            os.fstat(fa)
        os.fstat(fb)  # still open
    finally:
        os.close(fb)


# -- the loader, stopped and resumed -----------------------------------------------------------------------


class Ids(paddle.io.Dataset):
    """Sample i is (i as a float vector, i)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.int64]:
        return np.full(2, i, dtype="float32"), np.int64(i)


class OwnSampler(paddle.io.Sampler):
    """A user's sampler drawing from a generator of its own."""

    def __init__(self, n: int) -> None:
        self.n, self.rng = n, np.random.default_rng(5)

    def __iter__(self) -> Iterator[int]:
        return iter(self.rng.permutation(self.n).tolist())

    def __len__(self) -> int:
        return self.n


class OwnBatchSampler(paddle.io.BatchSampler):
    """A user's batch sampler: batches of 3 in an order from a RandomState and its epoch count."""

    def __init__(self, n: int) -> None:
        self.n, self.rs, self.epoch = n, np.random.RandomState(3), 0

    def __iter__(self) -> Iterator[list[int]]:
        self.epoch += 1
        order = self.rs.permutation(self.n) if self.epoch % 2 else np.arange(self.n)[::-1]
        return iter([order[i : i + 3].tolist() for i in range(0, self.n, 3)])

    def __len__(self) -> int:
        return (self.n + 2) // 3


N = 23
LOADERS: dict[str, Callable[[], paddle.io.DataLoader]] = {
    "shuffle": lambda: paddle.io.DataLoader(Ids(N), batch_size=4, shuffle=True),
    "shuffle, drop_last": lambda: paddle.io.DataLoader(Ids(N), batch_size=4, shuffle=True, drop_last=True),
    "in order": lambda: paddle.io.DataLoader(Ids(N), batch_size=5),
    "a user's Sampler": lambda: paddle.io.DataLoader(
        Ids(N), batch_sampler=paddle.io.BatchSampler(sampler=OwnSampler(N), batch_size=4, drop_last=True)),
    "a user's BatchSampler": lambda: paddle.io.DataLoader(Ids(N), batch_sampler=OwnBatchSampler(N)),
    "DistributedBatchSampler": lambda: paddle.io.DataLoader(
        Ids(N), batch_sampler=paddle.io.DistributedBatchSampler(Ids(N), 3, num_replicas=2, rank=1, shuffle=True)),
    "WeightedRandomSampler": lambda: paddle.io.DataLoader(Ids(N), batch_sampler=paddle.io.BatchSampler(
        sampler=paddle.io.WeightedRandomSampler(np.linspace(0.1, 1, N), N), batch_size=4)),
}
EPOCHS = 3


def _ids(batch: Any) -> list[int]:
    return [int(i) for i in batch[1].numpy().tolist()]


def uninterrupted(make: Callable[[], paddle.io.DataLoader]) -> list[list[int]]:
    np.random.seed(0)
    loader = ResumableLoader(make())
    return [_ids(b) for _ in range(EPOCHS) for b in loader]


def interrupted(make: Callable[[], paddle.io.DataLoader], kill_after: int, skip: str | None = None
                ) -> list[list[int]]:
    """Read ``kill_after`` batches, save what a checkpoint would, drop everything, rebuild the loader
    as a new process would (fresh samplers, NumPy's generator elsewhere), restore, and read on;
    ``skip``: a part the restore leaves out, to show that it matters."""
    np.random.seed(0)
    loader = ResumableLoader(make())
    seen: list[list[int]] = []
    epoch = 0
    while epoch < EPOCHS and len(seen) < kill_after:
        for b in loader:
            seen.append(_ids(b))
            if len(seen) == kill_after:
                break
        else:
            epoch += 1
    arrays, meta = loader.state()
    saved = ({k: v.copy() for k, v in arrays.items()}, from_json(to_json(meta)), np.random.get_state())
    loader.close()
    del loader

    np.random.seed(12345)  # a new process
    loader = ResumableLoader(make())
    if skip != "numpy":
        np.random.set_state(saved[2])
    if skip != "order":
        loader.restore_order(saved[0], saved[1])
    if skip != "position":
        loader.restore_position(saved[0], saved[1])
    for _ in range(max(0, saved[1]["epoch"]), EPOCHS):
        seen.extend(_ids(b) for b in loader)
    return seen


@pytest.mark.parametrize("kind", list(LOADERS))
def test_a_loader_resumes_at_the_exact_sample_wherever_it_stopped(kind: str) -> None:
    make = LOADERS[kind]
    want = uninterrupted(make)
    per = len(make())
    for kill_after in (1, 2, per - 1, per, per + 1, 2 * per, len(want) - 1):
        assert interrupted(make, kill_after) == want, f"stopped after {kill_after} batches"


@pytest.mark.parametrize(("kind", "skip"), [("shuffle", "order"), ("shuffle", "position"), ("shuffle", "numpy"),
                                           ("a user's Sampler", "order"), ("DistributedBatchSampler", "order")])
def test_a_resume_that_leaves_out_a_part_reads_other_samples(kind: str, skip: str) -> None:
    make = LOADERS[kind]
    per = len(make())
    assert interrupted(make, per + 2, skip=skip) != uninterrupted(make)


def test_a_loader_with_worker_processes_resumes_at_the_exact_sample() -> None:
    def make() -> paddle.io.DataLoader:
        return paddle.io.DataLoader(Ids(N), batch_size=4, shuffle=True, num_workers=2)

    want = uninterrupted(make)
    assert want == uninterrupted(LOADERS["shuffle"])  # the same order as with no worker process
    assert interrupted(make, 3) == want


def test_making_a_worker_loader_leaves_numpys_generator_alone() -> None:
    np.random.seed(0)
    loader = ResumableLoader(paddle.io.DataLoader(Ids(N), batch_size=4, num_workers=1))
    it = iter(loader)
    before = np.random.get_state()[1].copy()
    next(it)  # the worker processes start here: Paddle draws their base seed from NumPy's generator
    assert np.array_equal(np.random.get_state()[1], before)
    loader.close()


def test_the_state_arrays_are_the_same_objects_all_epoch() -> None:
    loader = ResumableLoader(LOADERS["shuffle"]())
    it = iter(loader)
    next(it)
    a, meta_a = loader.state()
    next(it)
    b, meta_b = loader.state()
    assert a["indices"] is b["indices"] and (meta_a["position"], meta_b["position"]) == (1, 2)
    for _ in it:
        pass
    assert loader.exhausted
    next(iter(loader))
    c, meta_c = loader.state()
    assert c["indices"] is not a["indices"] and (meta_c["epoch"], meta_c["position"]) == (1, 1)


def test_a_checkpoint_taken_before_the_first_epoch_restores_nothing() -> None:
    arrays, meta = ResumableLoader(LOADERS["shuffle"]()).state()
    assert meta["epoch"] == -1
    np.random.seed(0)
    want = [_ids(b) for b in ResumableLoader(LOADERS["shuffle"]())]
    np.random.seed(0)
    fresh = ResumableLoader(LOADERS["shuffle"]())
    fresh.restore_order(arrays, meta)
    fresh.restore_position(arrays, meta)
    assert [_ids(b) for b in fresh] == want


class _Stream(paddle.io.IterableDataset):
    def __iter__(self) -> Iterator[int]:
        return iter(range(4))


@pytest.mark.parametrize(("make", "words"), [
    (lambda: [1, 2, 3], "takes a paddle.io.DataLoader"),
    (lambda: paddle.io.DataLoader(Ids(4), batch_size=None), "map-style dataset read in batches"),
    (lambda: paddle.io.DataLoader(_Stream(), batch_size=2), "map-style dataset read in batches"),
    (lambda: paddle.io.DataLoader(Ids(4), batch_sampler=paddle.io.BatchSampler(
        sampler=paddle.io.RandomSampler(Ids(4), generator=iter(range(4))), batch_size=2)), "Python generator"),
])
def test_loaders_that_cannot_resume_are_refused(make: Callable[[], Any], words: str) -> None:
    with pytest.raises(TypeError, match=words):
        ResumableLoader(make())


def test_sample_rng_is_one_generator_per_sample_and_epoch() -> None:
    loader = ResumableLoader(LOADERS["in order"]())
    draws = []
    for _ in range(2):
        it = iter(loader)
        draws.append([sample_rng(i, seed=1).random() for i in range(3)])
        assert [sample_rng(i, seed=1).random() for i in range(3)] == draws[-1]  # read again: the same
        it.close()
    assert draws[0] != draws[1]  # another epoch
    assert sample_rng(0, seed=1).random() != sample_rng(0, seed=2).random()


class WorkerFacts(paddle.io.Dataset):
    """Each sample: whether ``path`` is open in the process reading it, and whether it ignores SIGTERM."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        fds = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
               if os.path.exists(f"/proc/self/fd/{fd}")]
        return (np.asarray([self.path in fds, os.getpid()], dtype=np.int64),
                np.asarray(signal.getsignal(signal.SIGTERM) == signal.SIG_IGN, dtype=np.int64))


def test_loader_processes_let_go_of_the_lock_and_ignore_sigterm(tmp_path: Path) -> None:
    lock = tmp_path / "worker.lock"
    fd = os.open(lock, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC)  # held, as the worker holds its lock
    try:
        loader = ResumableLoader(paddle.io.DataLoader(WorkerFacts(lock), batch_size=1, num_workers=1), held=[lock])
        for facts, ignores in loader:
            is_open, pid = facts.numpy()[0].tolist()
            assert pid != os.getpid() and not is_open and int(ignores.numpy()[0]) == 1
        plain = paddle.io.DataLoader(WorkerFacts(lock), batch_size=1, num_workers=1)
        facts, ignores = next(iter(plain))
        assert facts.numpy()[0].tolist()[0] == 1 and int(ignores.numpy()[0]) == 0  # without the wrapper: held
    finally:
        os.close(fd)
