"""The Paddle side of a checkpoint (:mod:`checkpoint.paddle_state`): arrays of the model and the
optimizer that do not change as training goes on, live views that follow the tensors, the lean walks
that find what ``state_dict()`` finds, and RNG snapshots that are exact and reuse a reading only when
that is safe."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from checkpoint.state import TrainState
from tests.helpers.paddle_model import address, live_arrays, tensors, tiny, train_steps


@pytest.fixture(scope="module")
def paddle():
    return pytest.importorskip("paddle")


def test_model_and_optimizer_arrays_do_not_change_as_training_goes_on(paddle) -> None:
    from checkpoint import paddle_state as ps

    model, opt, sched = tiny(paddle)
    train_steps(paddle, model, opt, sched, 2)
    m = ps.model_arrays(model)
    o, s = ps.optimizer_arrays(opt)
    m0, o0, s0 = copy.deepcopy(m), copy.deepcopy(o), copy.deepcopy(s)
    assert m and o and "last_epoch" in s

    train_steps(paddle, model, opt, sched, 3, seed=1)

    for k in m0:
        assert np.array_equal(m[k], m0[k]), f"model array {k} changed after more training"
    for k in o0:
        assert np.array_equal(o[k], o0[k]), f"optimizer array {k} changed after more training"
    assert s == s0
    # ... while the live state did move on, so the comparison above means something.
    m_now = ps.model_arrays(model)
    o_now, s_now = ps.optimizer_arrays(opt)
    assert all(not np.array_equal(m_now[k], m0[k]) for k in m0)
    assert any(not np.array_equal(o_now[k], o0[k]) for k in o0)
    assert s_now["last_epoch"] == s0["last_epoch"] + 3
    # And writing into a captured array does not write into the model.
    k = next(iter(m))
    m[k][...] = 0
    assert not np.array_equal(ps.model_arrays(model)[k], m[k])


def test_live_arrays_are_views_that_equal_the_tensors_after_every_step(paddle) -> None:
    from checkpoint import paddle_state as ps

    model, opt, sched = tiny(paddle)
    live = ps.LiveArrays(model, opt)
    assert live.optimizer_arrays()[0] == {}  # Adam makes its state in the first step
    first: dict[str, np.ndarray] | None = None
    for i in range(4):
        train_steps(paddle, model, opt, sched, 1, seed=i)
        views = live_arrays(live)
        now = tensors(model, opt)
        assert sorted(views) == sorted(now) and len(views) == 4 + 16
        for k, t in now.items():
            assert np.array_equal(views[k], t.numpy()), f"{k} after step {i}"
            assert address(views[k]) == t.data_ptr(), f"{k} is a copy, not a view"
        _, sched_state = live.optimizer_arrays()
        assert sched_state["last_epoch"] == i + 1
        if first is None:
            first = views
        else:  # nothing was replaced: the same views, not new ones
            assert all(views[k] is first[k] for k in views)


def walk_models(paddle) -> dict[str, Any]:
    """Models whose state dicts hold parameters, persistable and non-persistable buffers, nested
    layers, a layer without parameters and a parameter slot set to None."""
    from model.net import MnistCNN

    class Odd(paddle.nn.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.inner = paddle.nn.Sequential(paddle.nn.Linear(3, 4), paddle.nn.BatchNorm1D(4), paddle.nn.ReLU())
            self.register_buffer("seen", paddle.zeros([2]))
            self.register_buffer("scratch", paddle.zeros([2]), persistable=False)
            self.add_parameter("gone", None)
            self.head = paddle.nn.Linear(4, 2, bias_attr=False)

        def forward(self, x):
            return self.head(self.inner(x))

    paddle.seed(0)
    return {"tiny": tiny(paddle)[0], "mnist-8": MnistCNN(8), "mnist-28": MnistCNN(28), "odd": Odd()}


def test_the_lean_walks_find_what_state_dict_finds(paddle) -> None:
    from checkpoint import paddle_state as ps

    for label, model in walk_models(paddle).items():
        mine, theirs = ps._model_tensors(model), model.state_dict()
        assert mine is not None and list(mine) == list(theirs), label
        assert all(mine[k] is theirs[k] for k in theirs), label
        opt = paddle.optimizer.Adam(learning_rate=0.1, parameters=model.parameters())
        assert ps._optimizer_tensors(opt) is None  # no accumulators before the first step
        model.train()
        x = paddle.randn([4, 1, 8, 8] if label == "mnist-8" else [4, 1, 28, 28] if label == "mnist-28"
                         else [4, 6] if label == "tiny" else [4, 3])
        model(x).sum().backward()
        opt.step()
        mine_o = ps._optimizer_tensors(opt)
        theirs_o = {k: v for k, v in opt.state_dict().items() if k != "LR_Scheduler"}
        assert mine_o is not None and sorted(mine_o) == sorted(theirs_o) and len(mine_o) >= 4, label
        assert all(mine_o[k] is theirs_o[k] for k in theirs_o), label
    assert "scratch" not in walk_models(paddle)["odd"].state_dict()  # so the comparison covers the skip


def test_live_arrays_fall_back_to_paddles_walk_where_theirs_differs_or_hooks_change_it(
    paddle, monkeypatch: pytest.MonkeyPatch
) -> None:
    from checkpoint import paddle_state as ps

    model, opt, sched = tiny(paddle)
    train_steps(paddle, model, opt, sched, 1)
    # A walk that misses a tensor is found out at first use and not used again.
    real = ps._model_tensors
    monkeypatch.setattr(ps, "_model_tensors", lambda m: dict(list(real(m).items())[1:]))
    live = ps.LiveArrays(model, opt)
    assert sorted(live.model_arrays()) == sorted(model.state_dict())
    assert live._lean == {"model": False, "optimizer": None}
    assert sorted(live.model_arrays()) == sorted(model.state_dict())
    monkeypatch.setattr(ps, "_model_tensors", real)
    live.optimizer_tensor_arrays()
    assert live._lean["optimizer"] is True

    # A state-dict hook: only Paddle's walk applies it.
    def hook(destination):
        destination["extra"] = paddle.ones([1])
        return destination

    model.register_state_dict_hook(hook)
    assert ps._model_tensors(model) is None
    fresh = ps.LiveArrays(model, opt)
    assert "extra" in fresh.model_arrays() and "extra" in fresh.model_arrays()


def test_live_arrays_give_the_same_dict_while_nothing_is_replaced(paddle) -> None:
    from checkpoint import paddle_state as ps

    model, opt, sched = tiny(paddle)
    train_steps(paddle, model, opt, sched, 1)
    live = ps.LiveArrays(model, opt)
    m, o = live.model_arrays(), live.optimizer_tensor_arrays()
    train_steps(paddle, model, opt, sched, 2, seed=3)
    assert live.model_arrays() is m and live.optimizer_tensor_arrays() is o
    assert all(np.array_equal(m[k], t.numpy()) for k, t in model.state_dict().items())
    other = paddle.to_tensor(np.full(model[0].bias.shape, 3.0, dtype="float32"))
    other._share_buffer_to(model[0].bias)  # the same tensor on another buffer
    m2 = live.model_arrays()
    assert m2 is not m and np.array_equal(m2["0.bias"], np.full(model[0].bias.shape, 3.0, dtype="float32"))


def test_a_live_view_follows_a_tensor_whose_value_buffer_or_object_is_replaced(paddle) -> None:
    from checkpoint import paddle_state as ps

    model, opt, sched = tiny(paddle)
    train_steps(paddle, model, opt, sched, 1)
    live = ps.LiveArrays(model, opt)
    before = live_arrays(live)

    # set_value writes into the tensor's own buffer.
    w0 = model[0].weight
    w0.set_value(np.full(w0.shape, 0.5, dtype="float32"))
    assert np.array_equal(live.model_arrays()["0.weight"], np.full(w0.shape, 0.5, dtype="float32"))

    # A new optimizer state put in: Adam copies it into its tensors.
    state = {k: paddle.to_tensor(v.numpy() + ("moment" in k)) for k, v in opt.state_dict().items()
             if k != "LR_Scheduler"}
    opt.set_state_dict({**state, "LR_Scheduler": sched.state_dict()})
    o, _ = live.optimizer_arrays()
    for k, v in state.items():
        assert np.array_equal(o[k], v.numpy()), k

    # The same tensor object on another buffer.
    b0 = model[0].bias
    other = paddle.to_tensor(np.full(b0.shape, 3.0, dtype="float32"))
    old_address = b0.data_ptr()
    other._share_buffer_to(b0)
    assert b0.data_ptr() != old_address
    b_view = live.model_arrays()["0.bias"]
    assert address(b_view) == b0.data_ptr() and np.array_equal(b_view, np.full(b0.shape, 3.0, dtype="float32"))

    # Another tensor object in the model.
    w2 = model[2].weight
    init = paddle.nn.initializer.Assign(np.full(w2.shape, -2.0, "float32"))
    new_w2 = paddle.create_parameter(w2.shape, "float32", default_initializer=init)
    model[2].weight = new_w2
    w2_view = live.model_arrays()["2.weight"]
    assert address(w2_view) == new_w2.data_ptr() and np.array_equal(w2_view, new_w2.numpy())

    # Training goes on with the new tensors, and the views still read them.
    train_steps(paddle, model, opt, sched, 1, seed=5)
    views = live_arrays(live)
    for k, t in tensors(model, opt).items():
        assert np.array_equal(views[k], t.numpy()), k
    assert views["2.weight"] is not before["2.weight"]


def np_draws(n: int = 6) -> list[float]:
    """Gaussians then uniforms: the first Gaussian may come from NumPy's cache."""
    return [float(np.random.standard_normal()) for _ in range(n)] + [float(x) for x in np.random.rand(3)]


def test_rng_snapshots_are_exact_around_a_cached_gaussian(paddle) -> None:
    from checkpoint import paddle_state as ps

    np.random.seed(11)
    snaps = ps.RngSnapshots()
    taken: list[Callable[[], Any]] = [snaps.snapshot()]
    drawn: list[float] = []
    drawn.append(float(np.random.standard_normal()))  # two uniforms drawn, one Gaussian left in the cache
    assert np.random.get_state()[3] == 1
    taken.append(snaps.snapshot())
    drawn.append(float(np.random.standard_normal()))  # the cache used up: the MT19937 state did not move
    assert np.random.get_state()[3] == 0
    taken.append(snaps.snapshot())
    taken.append(snaps.snapshot())  # nothing drawn since the last one
    tail = np_draws()
    # Each snapshot, restored, draws what came after it: the tail, after the draws made since.
    expected = [drawn + tail, drawn[1:] + tail, tail, tail]

    for i, (later, want) in enumerate(zip(taken, expected)):
        state = later()
        json.dumps(state[1])
        ps.set_rng_states(state)
        got = [float(np.random.standard_normal()) for _ in range(len(want) - 3)] + [float(x) for x in np.random.rand(3)]
        assert got == want, f"snapshot {i} restores another NumPy state"


def test_paddle_generator_states_read_as_text_equal_their_pickle_states(paddle) -> None:
    """Snapshots read Paddle's generator states through ``str()``; this Paddle prints exactly the
    engine text its pickle state lists. (Where a Paddle does not, snapshots use the list.)"""
    from checkpoint import paddle_state as ps

    paddle.seed(3)
    paddle.randn([7])
    for state in paddle.get_rng_state():
        printed, listed = ps._paddle_printed(state), ps._paddle_listed(state)
        assert printed is not None, str(state)[:80]
        assert printed[0] == listed[0] and printed[1] == listed[1].tobytes()


def test_paddle_engine_memory_reads_as_the_printed_state(paddle) -> None:
    """Snapshots tell whether a Paddle generator moved from its engine's memory; that memory holds
    exactly the printed state, across draws and reseeds. A wrong address reads as nothing."""
    from checkpoint import paddle_state as ps

    for move in (lambda: paddle.seed(5), lambda: paddle.randn([3]), lambda: paddle.seed(2**64 - 5),
                 lambda: paddle.rand([1000])):
        move()
        for state in paddle.get_rng_state():
            assert ps._paddle_raw_ok(state), str(state)[:80]
            parts = str(state).split(" ")
            raw = ps._paddle_raw(state)
            assert np.frombuffer(raw[:24], dtype="<u8").tolist() == [int(p) % 2**64 for p in parts[:3]]
            assert np.frombuffer(raw[24:], dtype="<u8").tolist() == [int(p) for p in parts[4:]]
    assert ps._read_memory(0, 8) is None
    assert not ps._paddle_raw_ok(object())


@pytest.mark.parametrize("mode", ["raw", "text", "list"])
def test_paddle_rng_arrays_are_reused_only_while_the_engine_is_unchanged(paddle, mode: str) -> None:
    """The encoded engine state is one read-only array while no number is drawn (so the writer copies
    it once), a new one after a draw, and the same whichever way it is read; each restores its draws."""
    from checkpoint import paddle_state as ps

    def snapshots(mode: str) -> ps.RngSnapshots:
        snaps = ps.RngSnapshots()
        snaps._paddle_by_raw = {0: mode == "raw"}
        snaps._paddle_by_text = mode != "list"
        return snaps

    paddle.seed(4)
    snaps = snapshots(mode)
    first = snaps.snapshot()()
    same = snaps.snapshot()()
    assert same[0]["paddle/0"] is first[0]["paddle/0"] and not first[0]["paddle/0"].flags.writeable
    want_first = paddle.randn([5]).numpy()
    moved = snaps.snapshot()()
    assert moved[0]["paddle/0"] is not first[0]["paddle/0"]
    assert not np.array_equal(moved[0]["paddle/0"], first[0]["paddle/0"]) or moved[1]["paddle"] != first[1]["paddle"]
    paddle.seed(4)  # back to the first state: read again, not taken from the last snapshot
    again = snaps.snapshot()()
    assert again[0]["paddle/0"].tobytes() == first[0]["paddle/0"].tobytes() and again[1] == first[1]
    paddle.randn([5])
    want_moved = paddle.randn([5]).numpy()
    paddle.seed(4)
    paddle.randn([5])
    here = snaps.snapshot()()[0]["paddle/0"].tobytes()
    for other_mode in ("raw", "text", "list"):
        assert snapshots(other_mode).snapshot()()[0]["paddle/0"].tobytes() == here
    for state, want in ((first, want_first), (moved, want_moved)):
        ps.set_rng_states(state)
        assert np.array_equal(paddle.randn([5]).numpy(), want)


@pytest.mark.parametrize("framework", ["Paddle's", "none"])
def test_paddle_generator_states_are_those_of_the_expected_place(
    paddle, monkeypatch: pytest.MonkeyPatch, framework: str
) -> None:
    """Snapshots keep the CPU generator while the expected place is the same object; what they read
    is what ``paddle.get_rng_state()`` gives, across reseeds, draws and a new place. Where Paddle's
    framework module is not where it is looked for, they ask ``paddle.get_rng_state()`` each time."""
    from checkpoint import paddle_state as ps

    if framework == "none":
        monkeypatch.setattr(ps, "_framework", None)
    snaps = ps.RngSnapshots()
    for move in (lambda: paddle.seed(8), lambda: None, lambda: paddle.randn([3]), lambda: paddle.set_device("cpu"),
                 lambda: paddle.rand([5]), lambda: paddle.seed(9)):
        move()
        got = [s.__getstate__() for s in snaps._paddle_states()]  # str() shows the copy's address
        assert got == [s.__getstate__() for s in paddle.get_rng_state()]
        if framework == "none":
            assert snaps._paddle_cpu is None
        else:
            assert snaps._paddle_cpu is not None
            assert snaps._paddle_cpu[0] is paddle.base.framework._global_expected_place_


def _py_moves() -> list[Callable[[], Any]]:
    """Ways Python's ``random`` moves on: draws, a Gaussian (which leaves one cached), reseeding, and
    the cached Gaussian used up (the generator's memory does not move)."""
    return [lambda: None, random.random, lambda: random.gauss(0, 1), lambda: random.seed(99),
            lambda: random.gauss(0, 1), lambda: random.gauss(0, 1), lambda: random.getrandbits(4000)]


@pytest.mark.parametrize("raw", [True, False])
def test_python_random_snapshots_read_from_memory_equal_getstate(paddle, raw: bool) -> None:
    """Python's ``random`` state read straight from the generator's memory is what ``getstate()``
    says, one read-only array reused while it does not move, and each snapshot restores its draws."""
    from checkpoint import paddle_state as ps

    random.seed(12)
    snaps = ps.RngSnapshots()
    assert snaps._py is not None  # CPython: the layout checks out
    if not raw:
        snaps._py = None
    taken, wants, prev = [], [], None
    for move in _py_moves():
        move()
        version, internal, gauss = random.getstate()
        state = snaps.snapshot()()
        arr = state[0]["python/internal"]
        assert arr.dtype == np.uint32 and arr.tolist() == list(internal) and not arr.flags.writeable
        assert state[1]["python"] == [version, gauss]
        if prev is not None and prev[0] == internal:
            assert arr is prev[1]
        prev = (internal, arr)
        taken.append(state)
        wants.append([random.random() for _ in range(3)] + [random.gauss(0, 1)])
        random.setstate((version, internal, gauss))  # undo the draws just made for the want
    for state, want in zip(taken, wants):
        ps.set_rng_states(state)
        assert [random.random() for _ in range(3)] + [random.gauss(0, 1)] == want


def test_train_state_arrays_with_the_rng_now_equal_them_late(paddle) -> None:
    from checkpoint import paddle_state as ps
    from checkpoint.state import pack

    rng = np.random.default_rng(0)
    snap = ps.rng_snapshot()
    st = TrainState(step=3, epoch=0, batch=3, model={"w": rng.standard_normal(4).astype(np.float32)},
                    optimizer={"m": np.zeros(4, np.float32)}, lr_scheduler={"last_epoch": 3}, rng=snap,
                    order=rng.permutation(10))
    late, now = st.arrays(), st.arrays(rng_late=False)
    assert late.late is not None and now.late is None
    assert pack(now) == pack(late)


SAME_SEED = 5


def _nothing(ps: Any, ctx: Any = None) -> None:
    return None


def _other_rngs(ps: Any, ctx: Any) -> None:
    import paddle

    random.random()
    paddle.randn([2])


def _pending_then_used(ps: Any) -> Any:
    np.random.standard_normal()
    pending = ps.rng_snapshot()  # a Gaussian in NumPy's cache
    np.random.standard_normal()  # used up; the MT19937 state is where it was
    return pending


def _restore(ps: Any, pending: Any) -> None:
    ps.set_rng_states(pending())


def _another_bit_generator(ps: Any, ctx: Any) -> None:
    np.random.set_bit_generator(np.random.MT19937(9))  # the test still holds the old one: it stays, unmoved
    np.random.rand(2)


def _gaussian(ps: Any, ctx: Any = None) -> None:
    np.random.standard_normal()


REUSE_CASES: dict[str, tuple[Callable[[Any], Any], Callable[[Any, Any], None], bool]] = {
    # name: (before the first snapshot, between the two, whether the second may reuse the first's reading)
    "nothing drawn": (_nothing, _nothing, True),
    "only Python's and Paddle's RNGs drawn": (_nothing, _other_rngs, True),
    "a uniform drawn": (_nothing, lambda ps, ctx: np.random.rand(), False),
    "a Gaussian drawn, one left cached": (_nothing, _gaussian, False),
    "the cached Gaussian used up": (_gaussian, _gaussian, False),
    "a Gaussian pending at the first, nothing drawn": (_gaussian, _nothing, False),
    "reseeded with the same seed": (_nothing, lambda ps, ctx: np.random.seed(SAME_SEED), True),
    "a cached Gaussian restored by set_rng_states at the same position": (_pending_then_used, _restore, False),
    "another bit generator set": (_nothing, _another_bit_generator, False),
}


@pytest.mark.parametrize("case", list(REUSE_CASES))
def test_rng_snapshots_reuse_the_last_reading_only_when_it_is_safe(paddle, case: str) -> None:
    """Reuse shows as the very same keys array in both encodings; either way, the second restores exactly."""
    from checkpoint import paddle_state as ps

    before, between, reuse = REUSE_CASES[case]
    bit_generator = np.random.mtrand.get_bit_generator()
    try:
        np.random.seed(SAME_SEED)
        ctx = before(ps)
        snaps = ps.RngSnapshots()
        first = snaps.snapshot()
        between(ps, ctx)
        second = snaps.snapshot()
        want = np_draws()
        state = second()
        assert (state[0]["numpy/keys"] is first()[0]["numpy/keys"]) == reuse
        ps.set_rng_states(state)
        assert np_draws() == want, "the second snapshot restores another NumPy state"
    finally:
        np.random.set_bit_generator(bit_generator)


def test_rng_snapshot_encodes_the_states_of_the_moment_it_was_taken(paddle) -> None:
    from checkpoint import paddle_state as ps

    paddle.seed(123)
    np.random.seed(123)
    random.seed(123)
    paddle.randn([3])
    np.random.rand(2)
    random.random()
    later = ps.rng_snapshot()

    def draw() -> tuple[np.ndarray, np.ndarray, float]:
        return paddle.randn([4]).numpy(), np.random.rand(4), random.random()

    expected = draw()
    for _ in range(3):
        draw()  # the states move on before the snapshot is encoded
    state = later()
    json.dumps(state[1])  # the small part is plain JSON
    assert state[0]["paddle/0"].dtype in (np.uint8, np.int64)
    ps.set_rng_states(state)
    got = draw()
    assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]
