"""What a :class:`runner.Job` checkpoints, found in the objects it is given, and how a resume puts
each part back.

Captured without being told: the model(s)' parameters and persistable buffers; the optimizer(s)'
accumulators (Adam's and AdamW's moments and beta powers, Momentum's velocity, Lamb's, RMSProp's:
whatever ``state_dict()`` holds) and a plain learning rate set with ``set_lr``; every
``paddle.optimizer.lr`` scheduler, given or found on an optimizer; Paddle's generators (on a GPU,
the CPU generator as well), NumPy's global generator and Python's ``random``; each resumable
loader's epoch order, samplers and position; and the user's extras (a dict of JSON values and NumPy
arrays). Gradient clipping and weight decay are configuration, not state.

The layout, on top of :mod:`checkpoint.state`'s two files: ``model.safetensors`` holds the
parameters by their state-dict names (prefixed ``NAME/`` when there are several models), so they can
be taken out as they are, and its digest is the manifest's ``params_sha256``; ``train.safetensors``
holds ``optimizer/``, ``rng/``, ``data/I/`` and ``extra/`` arrays; the rest is JSON in the manifest.

A resume goes through :data:`RESTORERS`, one entry per part, in order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import paddle

from checkpoint import paddle_state as ps
from checkpoint.paddle_dicts import SCHEDULER_KEY
from checkpoint.rng_memory import paddle_listed
from checkpoint.state import MODEL_FILE, TRAIN_FILE, RngState, StateArrays, params_digest
from checkpoint.store import Checkpoint
from checkpoint.tensorfile import load_views

from .resumable import ResumableLoader, from_json, to_json

__all__ = ["FORMAT", "named", "find_schedulers", "split_extras", "stray_keys", "Tracked", "Capture", "JobSnapshot",
           "Saved", "RESTORERS", "restore", "copy_waits_for_gradients", "release_optimizer_state"]

FORMAT = "runner.Job/1"
_LRScheduler = paddle.optimizer.lr.LRScheduler


def named(value: Any, what: str) -> dict[str, Any]:
    """One object, a list or a dict of them, by name: ``""`` for a lone one, ``"0"``, ``"1"``... for a
    list, the keys for a dict. Names go into the checkpoint, so they must not change between runs."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        out = {str(k): v for k, v in value.items()}
    elif isinstance(value, list | tuple):
        out = {str(i): v for i, v in enumerate(value)}
    else:
        out = {"": value}
    for k in out:
        if "/" in k:
            raise ValueError(f"the name of a {what} may not hold '/': {k!r}")
    return out


def _prefix(part: str, key: str) -> str:
    return f"{part}/{key}/" if key else f"{part}/"


def _section(arrays: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}


@dataclass
class Tracked:
    """What the job was given to keep: models, optimizers, schedulers, loaders and extras."""

    models: dict[str, paddle.nn.Layer]
    optimizers: dict[str, paddle.optimizer.Optimizer]
    schedulers: dict[str, Any]
    loaders: list[ResumableLoader]
    extras: dict[str, Any] | None = None

    @classmethod
    def of(cls, *, model: Any, optimizer: Any, scheduler: Any, loaders: list[ResumableLoader],
           extras: dict[str, Any] | None) -> Tracked:
        optimizers = named(optimizer, "optimizer")
        return cls(named(model, "model"), optimizers, find_schedulers(named(scheduler, "scheduler"), optimizers),
                   loaders, extras)


def copy_waits_for_gradients(tracked: Tracked) -> bool:
    """Whether a deferred checkpoint copy may run on through the next forward pass and be waited for
    at the first gradient instead (an overlap of a whole forward pass): only where nothing but the
    optimizer step changes the state it reads. State other than trainable parameters may be changed
    by a forward pass (batch norm's running statistics, which Paddle keeps as parameters that take no
    gradient), and an optimizer updating parameters of no tracked model might get no gradient of
    theirs to wait at: then the forward pass waits."""
    if not tracked.models:
        return False
    mine: set[int] = set()
    for model in tracked.models.values():
        params = dict(model.named_parameters())
        if any(k not in params or params[k].stop_gradient for k in model.state_dict()):
            return False  # a buffer, or a parameter no gradient reaches
        mine.update(id(p) for p in params.values())
    for opt in tracked.optimizers.values():
        for group in getattr(opt, "_parameter_list", None) or []:
            for p in group["params"] if isinstance(group, dict) else [group]:
                if id(p) not in mine:
                    return False
    return True


def find_schedulers(given: Mapping[str, Any], optimizers: Mapping[str, Any]) -> dict[str, Any]:
    """The schedulers given, and those the optimizers hold that were not given, each once; a found one
    is named after its optimizer (``@`` for a lone one)."""
    out = dict(given)
    seen = {id(s) for s in given.values()}
    for key, opt in optimizers.items():
        lr = getattr(opt, "_learning_rate", None)
        if isinstance(lr, _LRScheduler) and id(lr) not in seen:
            out[f"@{key}"] = lr
            seen.add(id(lr))
    return out


def _live(model: paddle.nn.Layer | None, optimizer: paddle.optimizer.Optimizer | None) -> ps.LiveArrays:
    return ps.LiveArrays(model, optimizer)  # type: ignore[arg-type] # each is read for one side only


def _expected_place_is_cpu() -> bool:
    return isinstance(paddle.framework._current_expected_place(), paddle.CPUPlace)


class Capture:
    """Reads the tracked objects' state at a step boundary (:meth:`snapshot`), views where it can."""

    def __init__(self, tracked: Tracked) -> None:
        self.tracked = tracked
        first_opt = next(iter(tracked.optimizers.values()), None)
        first_model = next(iter(tracked.models.values()), None)
        self._models = {k: _live(m, first_opt) for k, m in tracked.models.items()}
        self._optimizers = {k: _live(first_model, o) for k, o in tracked.optimizers.items()}
        self._rngs = ps.RngSnapshots()

    def model_arrays(self) -> dict[str, np.ndarray]:
        """The models' parameters and buffers (live views: read them at once), by checkpoint name."""
        if list(self._models) == [""]:
            return self._models[""].model_arrays()
        return {f"{k}/{n}": a for k, live in self._models.items() for n, a in live.model_arrays().items()}

    def optimizer_arrays(self) -> dict[str, np.ndarray]:
        return {_prefix("optimizer", k) + n: a for k, live in self._optimizers.items()
                for n, a in live.optimizer_tensor_arrays().items()}

    def params_sha256(self) -> str:
        return params_digest(self.model_arrays())

    def snapshot(self, step: int, epoch: int) -> JobSnapshot:
        """What the next forward and backward passes may change is taken now: the RNG states, the
        schedulers, the loaders' positions, the extras; the models and optimizers are read by
        :meth:`JobSnapshot.arrays`."""
        t = self.tracked
        lrs = {k: float(o._learning_rate) for k, o in t.optimizers.items()
               if isinstance(o._learning_rate, int | float)}
        extra_arrays, extra_json = split_extras(t.extras or {})
        return JobSnapshot(self, step, epoch, self._rngs.snapshot(), None if _expected_place_is_cpu() else _cpu_rng(),
                           {k: to_json(s.state_dict()) for k, s in t.schedulers.items()}, lrs,
                           [loader.state() for loader in t.loaders], extra_arrays, extra_json)


def split_extras(extras: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The user's extras: NumPy arrays (copied), and the rest as JSON (TypeError if it is not)."""
    arrays: dict[str, np.ndarray] = {}
    rest: dict[str, Any] = {}
    for k, v in extras.items():
        if isinstance(v, np.ndarray):
            arrays[str(k)] = np.array(v, copy=True)
        else:
            try:
                rest[str(k)] = to_json(v)
            except TypeError:
                raise TypeError(f"state[{k!r}] is a {type(v).__name__}: give JSON values or NumPy arrays") from None
    return arrays, rest


def _cpu_rng() -> tuple[list[list[int]], list[np.ndarray]]:
    """Paddle's CPU generator, where the place in use is another device (whose generators the RNG
    snapshot takes)."""
    listed = [paddle_listed(s) for s in paddle.get_rng_state("cpu")]
    return [h for h, _ in listed], [a for _, a in listed]


@dataclass(frozen=True)
class JobSnapshot:
    """A :class:`runner.worker.Snapshot` of a job at a step boundary."""

    capture: Capture
    step: int
    epoch: int
    rng: Callable[[], RngState]
    cpu_rng: tuple[list[list[int]], list[np.ndarray]] | None
    schedulers: dict[str, Any]
    lrs: dict[str, float]
    data: list[tuple[dict[str, np.ndarray], dict[str, Any]]]
    extra_arrays: dict[str, np.ndarray]
    extra_json: dict[str, Any]

    def arrays(self) -> StateArrays:
        rng_arrays, rng_meta = self.rng()
        train = self.capture.optimizer_arrays()
        train.update({f"rng/{k}": v for k, v in rng_arrays.items()})
        if self.cpu_rng is not None:
            train.update({f"rng/paddle-cpu/{i}": a for i, a in enumerate(self.cpu_rng[1])})
        for i, (arrays, _) in enumerate(self.data):
            train.update({f"data/{i}/{k}": v for k, v in arrays.items()})
        train.update({f"extra/{k}": v for k, v in self.extra_arrays.items()})
        meta = {"format": FORMAT, "step": self.step, "epoch": self.epoch, "schedulers": self.schedulers,
                "lr": self.lrs, "rng": dict(rng_meta, paddle_cpu=self.cpu_rng[0] if self.cpu_rng else None),
                "data": [m for _, m in self.data], "extra": self.extra_json}
        return StateArrays({MODEL_FILE: self.capture.model_arrays(), TRAIN_FILE: train}, meta,
                           {"params_sha256": MODEL_FILE})


@dataclass(frozen=True)
class Saved:
    """A checkpoint a job wrote, read back: its step, epoch, arrays and manifest metadata."""

    step: int
    epoch: int
    model: Mapping[str, np.ndarray]
    train: Mapping[str, np.ndarray]
    meta: Mapping[str, Any]

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint) -> Saved:
        meta = ckpt.meta
        if meta.get("format") != FORMAT:
            raise ValueError(f"checkpoint {ckpt.name} was not written by runner.Job (format {meta.get('format')!r})")
        # Views of the files' bytes, not copies: a large state is held once while it is put back. The
        # parameters and the optimizer's moments are copied into Paddle's tensors from them; the small
        # rest (RNG states, sample order, extras) is copied here, as it outlives the restore.
        train = {k: v if k.startswith("optimizer/") else v.copy()
                 for k, v in load_views(ckpt.files[TRAIN_FILE]).items()}
        return cls(int(meta["step"]), int(meta["epoch"]), load_views(ckpt.files[MODEL_FILE]), train, meta)

    def rng(self) -> RngState:
        return _section(self.train, "rng/"), self.meta["rng"]


# -- restoring, part by part -----------------------------------------------------------------------------

Restorer = Callable[[Tracked, Saved], None]


def restore_model(t: Tracked, s: Saved) -> None:
    for key, model in t.models.items():
        ps.load_model(model, s.model if key == "" else _section(s.model, f"{key}/"))


def _param_names(opt: paddle.optimizer.Optimizer) -> set[str]:
    params: list[Any] = []
    for p in getattr(opt, "_parameter_list", None) or []:
        params.extend(p["params"] if isinstance(p, dict) else [p])
    return {p.name for p in params}


def stray_keys(keys: Iterable[str], params: set[str]) -> list[str]:
    """Optimizer state names that belong to none of ``params`` (Paddle names an accumulator after its
    parameter: ``PARAM_moment1_0``); Paddle would pass them over without a word."""
    return [k for k in keys if not any(k.startswith(p + "_") for p in params)]


def restore_optimizer(t: Tracked, s: Saved) -> None:
    for key, opt in t.optimizers.items():
        arrays = _section(s.train, _prefix("optimizer", key))
        strays = stray_keys(arrays, _param_names(opt))
        if strays:
            raise ValueError(f"its optimizer state is for parameters this optimizer does not have ({strays[0]!r}); "
                             "parameters are named in the order they are made: make the models and optimizers "
                             "in the same order as the run that saved it")
        # Arrays, not tensors: Paddle keeps them until the first step makes the accumulators, then
        # copies each into its own, so no further copy of the moments is ever made (set_value takes both).
        state: dict[str, Any] = dict(arrays)
        lr = opt._learning_rate
        if isinstance(lr, _LRScheduler):
            state[SCHEDULER_KEY] = lr.state_dict()  # Paddle wants one; the scheduler's own part sets it
        if state:
            opt.set_state_dict(state)
        if key in s.meta["lr"] and not isinstance(lr, _LRScheduler):
            opt.set_lr(float(s.meta["lr"][key]))


def release_optimizer_state(t: Tracked) -> None:
    """Let the optimizers drop the state a restore gave them that no step has taken yet (Paddle keeps it,
    views of the checkpoint's bytes, until the first step makes the accumulators): a waiting spare
    does this before it reads a newer checkpoint, so that the older one's bytes are freed first."""
    for opt in t.optimizers.values():
        opt._accumulators_holder = {}


def restore_scheduler(t: Tracked, s: Saved) -> None:
    for key, sched in t.schedulers.items():
        sched.set_state_dict(from_json(s.meta["schedulers"][key]))


def restore_paddle_rng(t: Tracked, s: Saved) -> None:
    ps.set_paddle_rng(s.rng())
    heads = s.meta["rng"].get("paddle_cpu")
    if heads and not _expected_place_is_cpu():
        states = []
        for i, (st, (device, seed, offset)) in enumerate(zip(paddle.get_rng_state("cpu"), heads)):
            obj = type(st).__new__(type(st))
            obj.__setstate__((device, seed, offset, s.train[f"rng/paddle-cpu/{i}"].tolist()))
            states.append(obj)
        paddle.set_rng_state(states, device="cpu")


def restore_numpy_rng(t: Tracked, s: Saved) -> None:
    ps.set_numpy_rng(s.rng())


def restore_python_rng(t: Tracked, s: Saved) -> None:
    ps.set_python_rng(s.rng())


def _loaders(t: Tracked, s: Saved) -> list[tuple[ResumableLoader, dict[str, np.ndarray], Mapping[str, Any]]]:
    saved = s.meta["data"]
    if len(saved) != len(t.loaders):
        raise ValueError(f"the checkpoint holds {len(saved)} resumable loader(s), the job has {len(t.loaders)}")
    return [(ld, _section(s.train, f"data/{i}/"), m) for i, (ld, m) in enumerate(zip(t.loaders, saved))]


def restore_sampler(t: Tracked, s: Saved) -> None:
    for loader, arrays, meta in _loaders(t, s):
        loader.restore_order(arrays, meta)


def restore_position(t: Tracked, s: Saved) -> None:
    for loader, arrays, meta in _loaders(t, s):
        loader.restore_position(arrays, meta)


def restore_extras(t: Tracked, s: Saved) -> None:
    if t.extras is None:
        return
    for k, v in s.meta["extra"].items():
        t.extras[k] = from_json(v)
    for k, a in _section(s.train, "extra/").items():
        have = t.extras.get(k)
        if isinstance(have, np.ndarray) and have.shape == a.shape and have.dtype == a.dtype and have.flags.writeable:
            have[...] = a  # in place: other references to it see the restored values
        else:
            t.extras[k] = a.copy()


#: A resume puts back each part in this order (the scheduler after the optimizer, whose state dict
#: carries one too). Tests replace an entry to show that verification catches a resume without it.
RESTORERS: dict[str, Restorer] = {
    "model": restore_model,
    "optimizer": restore_optimizer,
    "scheduler": restore_scheduler,
    "paddle-rng": restore_paddle_rng,
    "numpy-rng": restore_numpy_rng,
    "python-rng": restore_python_rng,
    "sampler": restore_sampler,
    "position": restore_position,
    "extra": restore_extras,
}


def restore(t: Tracked, s: Saved) -> None:
    """Put the saved state back into the tracked objects."""
    for part in RESTORERS.values():
        part(t, s)
