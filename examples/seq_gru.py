"""A GRU classifier on sequences generated in code (is a sequence's sum above the median?), read in
an order drawn by a sampler of one's own: Adam, a linear warm-up into a cosine decay. Preemptible and
resumable bit for bit; the sampler's NumPy Generator is saved with the checkpoint, unasked:

    python -m runner --simulate-preemption -- python examples/seq_gru.py
"""

import argparse

import numpy as np
import paddle
import paddle.nn.functional as F

import runner

job = runner.Job()  # first: it takes --run-dir out of the arguments
p = argparse.ArgumentParser()
p.add_argument("--epochs", type=int, default=2)
p.add_argument("--samples", type=int, default=760)
args = p.parse_args()


class Sequences(paddle.io.Dataset):
    def __init__(self, n: int, seed: int, length: int = 24) -> None:
        self.tokens = np.random.default_rng(seed).integers(0, 10, size=(n, length)).astype("int64")
        sums = self.tokens.sum(axis=1)
        self.labels = (sums > np.median(sums)).astype("int64")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.tokens[i], self.labels[i]


class Shuffled(paddle.io.Sampler):
    """Each epoch a new order, from a generator of its own."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.rng = n, np.random.default_rng(seed)

    def __iter__(self):
        return iter(self.rng.permutation(self.n).tolist())

    def __len__(self) -> int:
        return self.n


class GRUClassifier(paddle.nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.embed = paddle.nn.Embedding(10, 16)
        self.gru = paddle.nn.GRU(16, 64)
        self.head = paddle.nn.Linear(64, 2)

    def forward(self, tokens: paddle.Tensor) -> paddle.Tensor:
        _, last = self.gru(self.embed(tokens))
        return self.head(last[-1])


paddle.seed(0)
data, test = Sequences(args.samples, seed=1), Sequences(200, seed=2)
model = GRUClassifier()
batches = paddle.io.BatchSampler(sampler=Shuffled(len(data), seed=2), batch_size=32, drop_last=True)
loader = job.resumable(paddle.io.DataLoader(data, batch_sampler=batches))
steps = args.epochs * len(loader)
sched = paddle.optimizer.lr.LinearWarmup(paddle.optimizer.lr.CosineAnnealingDecay(5e-3, T_max=steps), 8, 0.0, 5e-3)
opt = paddle.optimizer.Adam(sched, parameters=model.parameters())
job.restore(model=model, optimizer=opt)
for epoch in job.epochs(args.epochs):
    model.train()
    for tokens, labels in loader:
        loss = F.cross_entropy(model(tokens), labels)
        loss.backward()
        opt.step()
        opt.clear_grad()
        sched.step()
        job.step(loss)
    model.eval()
    with paddle.no_grad():
        acc = (model(paddle.to_tensor(test.tokens)).argmax(axis=1).numpy() == test.labels).mean()
    print(f"epoch {epoch}: test accuracy {acc:.3f}", flush=True)
job.complete()
