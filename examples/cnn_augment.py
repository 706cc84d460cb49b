"""A small CNN on scikit-learn's 8x8 digits, with random shifts and noise drawn in two loader processes:
Momentum, a step-decayed learning rate, batch norm. Preemptible and resumable bit for bit:

    python -m runner --simulate-preemption -- python examples/cnn_augment.py

The loader processes' own generators cannot be saved, and which process reads which batch changes on
a resume, so the augmentation draws from ``runner.sample_rng(index)``: one generator per sample and
epoch, the same wherever the sample is read.
"""

import argparse

import numpy as np
import paddle
import paddle.nn.functional as F
from sklearn.datasets import load_digits

import runner


class Digits(paddle.io.Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = (images / 16.0).astype("float32"), labels.astype("int64")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        rng = runner.sample_rng(i)
        dy, dx = rng.integers(-1, 2, size=2)
        image = np.roll(self.images[i], (dy, dx), axis=(0, 1)) + rng.normal(scale=0.05, size=(8, 8))
        return image[None].astype("float32"), self.labels[i]


def net() -> paddle.nn.Layer:
    return paddle.nn.Sequential(
        paddle.nn.Conv2D(1, 16, 3, padding=1), paddle.nn.BatchNorm2D(16), paddle.nn.ReLU(), paddle.nn.MaxPool2D(2),
        paddle.nn.Conv2D(16, 32, 3, padding=1), paddle.nn.ReLU(), paddle.nn.MaxPool2D(2),
        paddle.nn.Flatten(), paddle.nn.Linear(32 * 2 * 2, 10))


def main() -> None:
    with runner.Job() as job:  # first: it takes --run-dir out of the arguments
        p = argparse.ArgumentParser()
        p.add_argument("--epochs", type=int, default=2)
        args = p.parse_args()
        paddle.seed(0)
        np.random.seed(0)
        digits = load_digits()
        model = net()
        loader = job.resumable(paddle.io.DataLoader(Digits(digits.images[:1500], digits.target[:1500]),
                                                    batch_size=64, shuffle=True, num_workers=2))
        sched = paddle.optimizer.lr.StepDecay(0.01, step_size=len(loader), gamma=0.5)
        opt = paddle.optimizer.Momentum(sched, momentum=0.9, parameters=model.parameters())
        job.restore(model=model, optimizer=opt)
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
                test = paddle.to_tensor((digits.images[1500:, None] / 16.0).astype("float32"))
                acc = (model(test).argmax(axis=1).numpy() == digits.target[1500:]).mean()
            print(f"epoch {epoch}: test accuracy {acc:.3f}", flush=True)
        job.complete()


if __name__ == "__main__":
    main()
