"""``examples/scalable.py``'s MLP in PyTorch, as a torchrun worker for the restart-at-size baseline.

The same shape: ``--layers`` square Linear+ReLU layers whose width makes parameters plus Adam's two moments
``--state-mb`` MiB, a Linear head to 10 classes, Adam (lr 1e-4), batches of 16 Gaussian inputs made in code.
Fault tolerance the way a torchrun job does it: at start it resumes from ``--ckpt`` if present
(``torch.load``, then ``load_state_dict``); after every ``--every`` steps it saves model + optimizer + step
with ``torch.save`` to a temporary file, fsyncs it and renames it over ``--ckpt``. After every step it appends
one JSON line to ``--journal``: ``{"step", "time", "dt", "pid", "restart", "saved"}``, ``dt`` the step's own
time (the first after a start counts from the end of the restore), ``saved`` true once a checkpoint of it
is on disk.

    torchrun --standalone --nproc_per_node 1 train_size_torch.py --state-mb 100 --ckpt D/ckpt.pt --journal D/j.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

MIB = 1 << 20
CLASSES = 10
COPIES = 3


def width_for(state_mb: float, layers: int) -> int:
    params = state_mb * MIB / (4 * COPIES)
    return max(8, int((-1 + math.sqrt(1 + 4 * params / layers)) / 2))


def model_of(width: int, layers: int) -> nn.Module:
    blocks: list[nn.Module] = []
    for _ in range(layers):
        blocks += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*blocks, nn.Linear(width, CLASSES))


def save(path: str, model: nn.Module, opt: torch.optim.Optimizer, step: int) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--state-mb", type=float, default=10.0)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--journal", required=True)
    p.add_argument("--every", type=int, default=3)
    p.add_argument("--steps", type=int, default=10**9)
    args = p.parse_args()
    torch.manual_seed(0)
    width = width_for(args.state_mb, args.layers)
    model = model_of(width, args.layers)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16 * 8, width, generator=gen)
    y = torch.randint(0, CLASSES, (16 * 8,), generator=gen)
    step = 0
    if os.path.exists(args.ckpt):
        state = torch.load(args.ckpt, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = int(state["step"])
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    last = time.time()
    with open(args.journal, "a") as journal:
        while step < args.steps:
            b = step % 8
            loss = F.cross_entropy(model(x[b * 16:(b + 1) * 16]), y[b * 16:(b + 1) * 16])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            now = time.time()
            rec = {"step": step, "time": now, "dt": now - last, "pid": os.getpid(), "restart": restart,
                   "loss": loss.item()}
            if step % args.every == 0:
                save(args.ckpt, model, opt, step)
                rec["saved"] = True
            journal.write(json.dumps(rec) + "\n")
            journal.flush()
            last = time.time()


if __name__ == "__main__":
    main()
