"""An MLP whose checkpointed state has the size one asks for: ``--state-mb X`` MiB of parameters plus Adam's
two moments (three float32 copies of the parameters), from about 1 to about 1000 MiB. Square hidden layers
(``--layers``, their width follows from the size) on data made in code from ``--seed``; ``--epochs`` and
``--batches`` set the length, so a benchmark controls it. Nothing is printed per step. Preemptible and resumable
bit for bit:

    python examples/scalable.py --run-dir runs/s --state-mb 10               # alone
    python -m runner --run-dir runs/s -- python examples/scalable.py --state-mb 10
    python -m runner --simulate-preemption -- python examples/scalable.py --state-mb 10
"""

import argparse
import math

import numpy as np
import paddle
import paddle.nn.functional as F

import runner

MIB = 1 << 20
CLASSES = 10
COPIES = 3  # the parameters, Adam's first moment, Adam's second moment


def width_for(state_mb: float, layers: int) -> int:
    """The hidden width whose ``layers`` square layers (weights and biases; the small head left out) hold
    ``state_mb`` MiB of float32 state, counting the parameters and Adam's two moments."""
    params = state_mb * MIB / (4 * COPIES)
    return max(8, int((-1 + math.sqrt(1 + 4 * params / layers)) / 2))


def state_bytes(width: int, layers: int) -> int:
    """The checkpointed state of the model and Adam's moments, in bytes (the beta powers left out)."""
    params = layers * (width * width + width) + width * CLASSES + CLASSES
    return 4 * COPIES * params


class Synthetic(paddle.io.Dataset):
    """``n`` Gaussian inputs of ``width`` features, labelled by a fixed random projection: learnable and
    made in code, nothing to download."""

    def __init__(self, n: int, width: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.x = rng.standard_normal((n, width), dtype=np.float32)
        self.y = (self.x @ rng.standard_normal((width, CLASSES), dtype=np.float32)).argmax(axis=1).astype("int64")

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def model_of(width: int, layers: int) -> paddle.nn.Layer:
    blocks: list[paddle.nn.Layer] = []
    for _ in range(layers):
        blocks += [paddle.nn.Linear(width, width), paddle.nn.ReLU()]
    return paddle.nn.Sequential(*blocks, paddle.nn.Linear(width, CLASSES))


def train(job: runner.Job) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--state-mb", type=float, default=10.0, help="checkpointed state in MiB (about 1 to 1000)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batches", type=int, default=20, help="batches per epoch")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    paddle.seed(args.seed)
    np.random.seed(args.seed)
    width = width_for(args.state_mb, args.layers)
    data = Synthetic(args.batches * args.batch_size, width, args.seed)
    model = model_of(width, args.layers)
    loader = job.resumable(paddle.io.DataLoader(data, batch_size=args.batch_size, shuffle=True))
    opt = paddle.optimizer.Adam(args.lr, parameters=model.parameters())
    job.restore(model=model, optimizer=opt)
    for _ in job.epochs(args.epochs):
        model.train()
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.clear_grad()
            job.step(loss)
    job.complete(width=width, layers=args.layers, state_bytes=state_bytes(width, args.layers))


if __name__ == "__main__":
    runner.main(train)
