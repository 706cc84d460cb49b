"""An MLP with dropout on scikit-learn's breast-cancer data: AdamW with weight decay, gradient clipping
and a cosine learning rate, shuffled batches of 32. Preemptible and resumable bit for bit:

    python examples/mlp_dropout.py --run-dir runs/mlp                  # alone
    python -m runner --run-dir runs/mlp -- python examples/mlp_dropout.py
    python -m runner --simulate-preemption -- python examples/mlp_dropout.py
"""

import argparse

import numpy as np
import paddle
import paddle.nn.functional as F
from sklearn.datasets import load_breast_cancer

import runner


class Tabular(paddle.io.Dataset):
    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x.astype("float32"), y.astype("int64")

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def data() -> tuple[Tabular, Tabular]:
    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[:455], order[455:]
    return Tabular(x[train], y[train]), Tabular(x[test], y[test])


def train(job: runner.Job) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    paddle.seed(args.seed)
    np.random.seed(args.seed)
    train_set, test_set = data()
    model = paddle.nn.Sequential(
        paddle.nn.Linear(30, 512), paddle.nn.ReLU(), paddle.nn.Dropout(0.3),
        paddle.nn.Linear(512, 512), paddle.nn.ReLU(), paddle.nn.Dropout(0.3),
        paddle.nn.Linear(512, 512), paddle.nn.ReLU(), paddle.nn.Dropout(0.3),
        paddle.nn.Linear(512, 2))
    loader = job.resumable(paddle.io.DataLoader(train_set, batch_size=32, shuffle=True))
    sched = paddle.optimizer.lr.CosineAnnealingDecay(1e-3, T_max=args.epochs * len(loader))
    opt = paddle.optimizer.AdamW(sched, parameters=model.parameters(), weight_decay=1e-2,
                                 grad_clip=paddle.nn.ClipGradByGlobalNorm(1.0))
    job.restore(model=model, optimizer=opt, scheduler=sched)
    for epoch in job.epochs(args.epochs):
        model.train()
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.clear_grad()
            sched.step()
            job.step(loss)
        model.eval()
        with paddle.no_grad():
            acc = (model(paddle.to_tensor(test_set.x)).argmax(axis=1).numpy() == test_set.y).mean()
        print(f"epoch {epoch}: test accuracy {acc:.3f}", flush=True)
    job.complete()


if __name__ == "__main__":
    runner.main(train)
