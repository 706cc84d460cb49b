"""``runner.jobstate``: what a job's checkpoint holds, found without being told, and put back part by
part - for every optimizer kind, schedulers given or found, several models, the job's extras - and
each part left out of a resume shows (the verifier's end-to-end tests do the same through processes)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
import paddle
import pytest

from checkpoint import paddle_state as ps
from checkpoint.state import MODEL_FILE, TRAIN_FILE, pack, params_digest
from checkpoint.store import Checkpoint
from runner import jobstate
from runner.jobstate import (
    Capture,
    Saved,
    Tracked,
    find_schedulers,
    named,
    release_optimizer_state,
    split_extras,
    stray_keys,
)


@pytest.mark.parametrize(("value", "names"), [
    (None, []), ("m", [""]), (["a", "b"], ["0", "1"]), (("a",), ["0"]), ({"gen": 1, "disc": 2}, ["gen", "disc"]),
])
def test_named(value: Any, names: list[str]) -> None:
    assert list(named(value, "model")) == names


def test_a_name_with_a_slash_is_refused() -> None:
    with pytest.raises(ValueError, match="may not hold '/'"):
        named({"a/b": 1}, "model")


@pytest.mark.parametrize(("keys", "params", "strays"), [
    (["w_0_moment1_0", "b_0_velocity_0"], {"w_0", "b_0"}, []),
    (["linear_3.w_0_moment1_0"], {"linear_0.w_0"}, ["linear_3.w_0_moment1_0"]),
    (["w_0x_moment1_0"], {"w_0"}, ["w_0x_moment1_0"]),  # a prefix of a name is not the name
    ([], set(), []),
])
def test_stray_keys(keys: list[str], params: set[str], strays: list[str]) -> None:
    assert stray_keys(keys, params) == strays


def test_split_extras() -> None:
    a = np.arange(3.0)
    arrays, rest = split_extras({"a": a, "best": 0.5, "names": ["x"], "nested": {"k": (1, 2)}})
    assert list(arrays) == ["a"] and arrays["a"] is not a and np.array_equal(arrays["a"], a)
    assert rest == {"best": 0.5, "names": ["x"], "nested": {"k": [1, 2]}}
    with pytest.raises(TypeError, match=r"state\['bad'\] is a object"):
        split_extras({"bad": object()})


def test_schedulers_given_and_found_on_optimizers_each_once() -> None:
    with paddle.utils.unique_name.guard():
        m = paddle.nn.Linear(2, 2)
        s1 = paddle.optimizer.lr.StepDecay(0.1, 2)
        s2 = paddle.optimizer.lr.StepDecay(0.1, 3)
        o1 = paddle.optimizer.SGD(s1, parameters=m.parameters())
        o2 = paddle.optimizer.Adam(s2, parameters=m.parameters())
        o3 = paddle.optimizer.Adam(0.1, parameters=m.parameters())
    found = find_schedulers(named(s1, "scheduler"), named([o1, o2, o3], "optimizer"))
    assert found == {"": s1, "@1": s2}


# -- a round trip through a checkpoint ----------------------------------------------------------------------

OPTIMIZERS: dict[str, Callable[[Any, Any], paddle.optimizer.Optimizer]] = {
    "Adam": lambda lr, ps_: paddle.optimizer.Adam(lr, parameters=ps_),
    "AdamW + clipping": lambda lr, ps_: paddle.optimizer.AdamW(lr, parameters=ps_, weight_decay=0.05,
                                                               grad_clip=paddle.nn.ClipGradByGlobalNorm(0.5)),
    "Momentum": lambda lr, ps_: paddle.optimizer.Momentum(lr, momentum=0.9, parameters=ps_, weight_decay=1e-3),
    "SGD": lambda lr, ps_: paddle.optimizer.SGD(lr, parameters=ps_),
    "Lamb": lambda lr, ps_: paddle.optimizer.Lamb(lr, parameters=ps_),
    "RMSProp": lambda lr, ps_: paddle.optimizer.RMSProp(lr, parameters=ps_),
}

X = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")


class Run:
    """Models, optimizers and a scheduler built afresh (as a new process would), and a step that draws
    from Paddle's (dropout), NumPy's and Python's generators."""

    def __init__(self, opt_kind: str = "AdamW + clipping", *, seed: int = 0, two: bool = False,
                 extras: dict[str, Any] | None = None) -> None:
        with paddle.utils.unique_name.guard():
            paddle.seed(seed)
            self.models = {"a": self._model(), "b": self._model()} if two else {"": self._model()}
            self.sched = paddle.optimizer.lr.CosineAnnealingDecay(0.05, T_max=20)
            params = [p for m in self.models.values() for p in m.parameters()]
            self.opt = OPTIMIZERS[opt_kind](self.sched, params)
        self.extras = {"seen": 0, "ema": np.zeros(2)} if extras is None else extras
        self.tracked = Tracked.of(model=self.models if two else self.models[""], optimizer=self.opt, scheduler=None,
                                  loaders=[], extras=self.extras)

    @staticmethod
    def _model() -> paddle.nn.Layer:
        return paddle.nn.Sequential(paddle.nn.Linear(4, 8), paddle.nn.BatchNorm1D(8), paddle.nn.ReLU(),
                                    paddle.nn.Dropout(0.5), paddle.nn.Linear(8, 2))

    def steps(self, n: int) -> list[str]:
        # Accumulators are named on the first update, by a counter that runs through the process: a
        # name space of its own here, as a new process would have.
        with paddle.utils.unique_name.guard():
            return self._steps(n)

    def _steps(self, n: int) -> list[str]:
        losses = []
        for _ in range(n):
            x = X + np.random.normal(scale=0.1, size=X.shape).astype("float32") * random.random()
            loss = sum((m(paddle.to_tensor(x)) ** 2).mean() for m in self.models.values())
            loss.backward()
            self.opt.step()
            self.opt.clear_grad()
            self.sched.step()
            self.extras["seen"] += 1
            self.extras["ema"] += float(loss)
            losses.append(float(loss).hex())
        return losses

    def digest(self) -> str:
        return params_digest({f"{k}/{n}": a for k, m in self.models.items() for n, a in ps.model_arrays(m).items()})


def checkpoint_of(run: Run, step: int) -> Checkpoint:
    files, meta = pack(Capture(run.tracked).snapshot(step, 0).arrays())
    return Checkpoint(step, f"step-{step:09d}", files, meta)


def continued(ckpt: Checkpoint, opt_kind: str, n: int, *, two: bool = False, leave_out: str | None = None
              ) -> tuple[list[str], str, dict[str, Any]]:
    """A new run restored from ``ckpt`` (all but ``leave_out``), then ``n`` steps."""
    np.random.seed(99)
    random.seed(99)
    run = Run(opt_kind, seed=42, two=two, extras={"seen": -1, "ema": np.ones(2)})
    for part, restore in jobstate.RESTORERS.items():
        if part != leave_out:
            restore(run.tracked, Saved.from_checkpoint(ckpt))
    return run.steps(n), run.digest(), run.extras


def reference(opt_kind: str, *, two: bool = False) -> tuple[Checkpoint, list[str], str, dict[str, Any]]:
    np.random.seed(0)
    random.seed(0)
    run = Run(opt_kind, two=two)
    run.steps(3)
    ckpt = checkpoint_of(run, 3)
    return ckpt, run.steps(4), run.digest(), run.extras


@pytest.mark.parametrize("opt_kind", list(OPTIMIZERS))
def test_a_resume_continues_bit_for_bit(opt_kind: str) -> None:
    ckpt, losses, digest, extras = reference(opt_kind)
    got_losses, got_digest, got_extras = continued(ckpt, opt_kind, 4)
    assert got_losses == losses and got_digest == digest
    assert got_extras["seen"] == extras["seen"] == 7 and np.array_equal(got_extras["ema"], extras["ema"])


def test_several_models_resume_bit_for_bit() -> None:
    ckpt, losses, digest, _ = reference("Adam", two=True)
    assert {k.split("/")[0] for k in Saved.from_checkpoint(ckpt).model} == {"a", "b"}
    assert continued(ckpt, "Adam", 4, two=True)[:2] == (losses, digest)


def test_the_layout_keeps_the_weights_apart_and_named_as_paddle_names_them() -> None:
    run = Run()
    run.steps(1)
    saved = Saved.from_checkpoint(checkpoint_of(run, 1))
    assert set(saved.model) == set(run.models[""].state_dict())  # parameters and BatchNorm's running stats
    assert saved.meta["params_sha256"] == params_digest(ps.model_arrays(run.models[""]))
    assert {k.split("/")[0] for k in saved.train} == {"optimizer", "rng", "extra"}
    assert saved.meta["schedulers"] == {"@": run.sched.state_dict()}


# The parts whose loss a leave-out changes at once, and those (the update's) it changes from the next step.
AT_ONCE = ("model", "paddle-rng", "numpy-rng", "python-rng")
NEXT_STEP = ("optimizer", "scheduler")


@pytest.mark.parametrize("part", AT_ONCE + NEXT_STEP)
def test_a_resume_that_leaves_out_a_part_diverges(part: str) -> None:
    ckpt, losses, _, _ = reference("AdamW + clipping")
    got, _, _ = continued(ckpt, "AdamW + clipping", 4, leave_out=part)
    first = next(i for i, (a, b) in enumerate(zip(losses, got)) if a != b)
    assert first == (0 if part in AT_ONCE else 1)


def test_a_resume_that_leaves_out_the_extras_leaves_them_as_they_were() -> None:
    ckpt, _, _, _ = reference("Adam")
    _, _, extras = continued(ckpt, "Adam", 0, leave_out="extra")
    assert extras["seen"] == -1


def test_extra_arrays_are_put_back_in_place() -> None:
    ckpt, _, _, _ = reference("Adam")
    run = Run("Adam", extras={"seen": 0, "ema": np.full(2, 7.0)})
    ema = run.extras["ema"]
    jobstate.restore_extras(run.tracked, Saved.from_checkpoint(ckpt))
    assert run.extras["ema"] is ema and run.extras["seen"] == 3


def test_a_checkpoint_that_does_not_fit_is_refused() -> None:
    ckpt, _, _, _ = reference("Adam")
    with paddle.utils.unique_name.guard():
        other = paddle.nn.Linear(4, 2)
    tracked = Tracked.of(model=other, optimizer=None, scheduler=None, loaders=[], extras=None)
    with pytest.raises(ValueError, match="does not fit the model"):
        jobstate.restore_model(tracked, Saved.from_checkpoint(ckpt))
    with paddle.utils.unique_name.guard():
        paddle.nn.Linear(1, 1)  # one more layer made first: every parameter's name moves on
        model = Run._model()
        opt = paddle.optimizer.Adam(0.1, parameters=model.parameters())
    tracked = Tracked.of(model=model, optimizer=opt, scheduler=None, loaders=[], extras=None)
    with pytest.raises(ValueError, match="in the same order"):
        jobstate.restore_optimizer(tracked, Saved.from_checkpoint(ckpt))
    plain = Checkpoint(1, "step-000000001", {MODEL_FILE: b"", TRAIN_FILE: b""}, {"step": 1})
    with pytest.raises(ValueError, match="not written by runner.Job"):
        Saved.from_checkpoint(plain)


# -- where a deferred copy is waited for ------------------------------------------------------------------------


def _mlp() -> paddle.nn.Layer:
    return paddle.nn.Sequential(paddle.nn.Linear(2, 3), paddle.nn.ReLU(), paddle.nn.Dropout(0.1),
                                paddle.nn.Linear(3, 1))


def _with_bn() -> paddle.nn.Layer:
    return paddle.nn.Sequential(paddle.nn.Linear(2, 3), paddle.nn.BatchNorm1D(3))


@pytest.mark.parametrize(("case", "waits_for_gradients"), [
    ("mlp", True),  # nothing but the optimizer step changes it: the copy may overlap the forward pass
    ("two mlps, one optimizer", True),
    ("batch norm", False),  # its forward pass changes the running statistics
    ("frozen", False),  # a parameter no gradient reaches: nothing would wait for it
    ("one of two models has batch norm", False),
    ("the optimizer holds a parameter of no tracked model", False),
    ("no model", False),
])
def test_copy_waits_for_gradients(case: str, waits_for_gradients: bool) -> None:
    with paddle.utils.unique_name.guard():
        a, b = _mlp(), (_with_bn() if "batch norm" in case else _mlp())
        models: Any = {"mlp": a, "two mlps, one optimizer": [a, b], "batch norm": [b],
                       "one of two models has batch norm": [a, b],
                       "the optimizer holds a parameter of no tracked model": a, "no model": None, "frozen": a}[case]
        a[0].weight.stop_gradient = case == "frozen"
        params = {"mlp": a.parameters(), "frozen": a.parameters(), "batch norm": b.parameters(),
                  "no model": a.parameters()}.get(case, a.parameters() + b.parameters())
        opt = paddle.optimizer.Adam(0.1, parameters=params)
    tracked = Tracked.of(model=models, optimizer=opt, scheduler=None, loaders=[], extras=None)
    assert jobstate.copy_waits_for_gradients(tracked) is waits_for_gradients


@pytest.mark.parametrize("opt_kind", ["Adam", "Momentum"])
def test_a_spare_that_preloads_twice_resumes_from_the_second_bit_for_bit(opt_kind: str) -> None:
    """A waiting spare puts an older checkpoint in, lets the optimizer drop its state, then puts the newer in."""
    ckpt, losses, digest, _ = reference(opt_kind)
    np.random.seed(0)
    random.seed(0)
    first = Run(opt_kind)
    first.steps(1)
    older = checkpoint_of(first, 1)
    np.random.seed(99)
    random.seed(99)
    run = Run(opt_kind, seed=42, extras={"seen": -1, "ema": np.ones(2)})
    jobstate.restore(run.tracked, Saved.from_checkpoint(older))
    assert run.opt._accumulators_holder  # kept until the first step
    release_optimizer_state(run.tracked)
    assert run.opt._accumulators_holder == {}
    jobstate.restore(run.tracked, Saved.from_checkpoint(ckpt))
    assert run.steps(4) == losses and run.digest() == digest
