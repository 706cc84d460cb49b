"""A tiny job on runner.Job for the end-to-end tests: an MLP with dropout, AdamW with a cosine schedule,
shuffled batches with NumPy noise drawn in the dataset, and the sample ids of every step written to
``RUN_DIR/ids.jsonl``.

``TINY_JOB_BREAK=PART`` makes a resume leave PART out (a test's switch, read only here): one of
``runner.jobstate.RESTORERS``' names. ``TINY_JOB_FLIP_HELD=1`` makes a warm spare change one byte of
the checkpoint it holds in memory after verifying it, before putting it into the model (another).
``--workers N`` reads with N loader processes (the noise is then drawn from ``runner.sample_rng``, as
the docs ask).
"""

import argparse
import json
import os
import time

import numpy as np
import paddle
import paddle.nn.functional as F

import runner
from runner import jobstate

N, FEATURES, SEED = 96, 6, 7


class Noisy(paddle.io.Dataset):
    def __init__(self, workers: int) -> None:
        rng = np.random.default_rng(SEED)
        self.x = rng.normal(size=(N, FEATURES)).astype("float32")
        self.y = (self.x.sum(axis=1) > 0).astype("int64")
        self.workers = workers

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int):
        if self.workers:  # in a loader process: seeded from the sample and the epoch, not the process
            noise = runner.sample_rng(i, SEED).normal(scale=0.1, size=FEATURES)
        else:  # on the training thread: NumPy's global generator, which the checkpoint holds
            noise = np.random.normal(scale=0.1, size=FEATURES)
        return (self.x[i] + noise).astype("float32"), self.y[i], np.int64(i)


def flip_held() -> None:
    """A spare's held copy gets its model file's last byte changed after verification (a broken variant)."""
    from dataclasses import replace

    from checkpoint import held
    from checkpoint.state import MODEL_FILE

    init = held.Holder.__init__

    def flipping(self, store, mode, *, preload=None, **kw):
        def flipped(c):
            data = bytearray(c.files[MODEL_FILE])
            data[-1] ^= 0x40
            preload(replace(c, files={**c.files, MODEL_FILE: bytes(data)}))

        init(self, store, mode, preload=None if preload is None else flipped, **kw)

    held.Holder.__init__ = flipping


def main(job: runner.Job) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--sleep", type=float, default=0.0)
    args = p.parse_args()
    broken = os.environ.get("TINY_JOB_BREAK")
    if broken:
        jobstate.RESTORERS[broken] = lambda tracked, saved: None
    if os.environ.get("TINY_JOB_FLIP_HELD"):
        flip_held()
    paddle.seed(SEED)
    np.random.seed(SEED)
    ds = Noisy(args.workers)
    model = paddle.nn.Sequential(paddle.nn.Linear(FEATURES, 16), paddle.nn.ReLU(), paddle.nn.Dropout(0.3),
                                 paddle.nn.Linear(16, 2))
    loader = job.resumable(paddle.io.DataLoader(ds, batch_size=10, shuffle=True, num_workers=args.workers))
    sched = paddle.optimizer.lr.CosineAnnealingDecay(0.05, T_max=args.epochs * len(loader))
    opt = paddle.optimizer.AdamW(sched, parameters=model.parameters(), grad_clip=paddle.nn.ClipGradByGlobalNorm(1.0))
    job.restore(model=model, optimizer=opt)
    with open(job.run_dir / "ids.jsonl", "a") as ids:
        for _ in job.epochs(args.epochs):
            for x, y, i in loader:
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                opt.clear_grad()
                sched.step()
                ids.write(json.dumps({"step": job.steps, "ids": i.numpy().tolist()}) + "\n")
                ids.flush()
                time.sleep(args.sleep)
                job.step(loss)
    job.complete()


if __name__ == "__main__":
    runner.main(main)
