"""The seed's CNN job in PyTorch, written as a torchrun worker for the restart/goodput baseline.

Same model, optimiser, schedule, batch size and data as ``python -m model``: two conv(5x5, 20 filters,
pad 2)-ReLU-maxpool(2) stages and a linear layer to 10 classes; Adam, learning rate 0.01 decaying
linearly (Paddle's PolynomialDecay with power 1) to 0.001 over the run; batches of 100 over shuffled
epochs of ``DATA`` (a ``data.npz`` with ``train_x`` (N,1,S,S) float32 and ``train_y`` (N,) int64, as
the project's run directories hold it).

Fault tolerance the way a torchrun job does it: at start it resumes from ``CKPT`` if present; after
every K-th step it saves model + optimiser + scheduler + step with ``torch.save`` to a temporary file,
fsyncs it and ``os.replace``s it over ``CKPT`` (then fsyncs the directory, as the project's checkpoint
storage does). After every completed step it appends one JSON line to ``JOURNAL``:

    {"step", "loss", "time": time.time(), "pid", "restart": $TORCHELASTIC_RESTART_COUNT}

The first line each process writes also carries ``proc_start`` (``time.time()`` when this script began
executing, before ``import torch``), ``imported`` (after the imports) and ``ready`` (after data load,
model build and restore), so the harness can split a restart into its parts.

Thread count is left at PyTorch's default, as torchrun leaves it for ``--nproc_per_node 1``.

    torchrun --nproc_per_node 1 train_torch.py --data D/data.npz --ckpt D/ckpt.pt --journal D/j.jsonl --epochs 5
"""

from __future__ import annotations

import time

PROC_START = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

IMPORTED = time.time()

BATCH = 100
LR, END_LR = 0.01, 0.001


class MnistCNN(nn.Module):
    """conv(5x5, 20, pad 2)-ReLU-pool(2) twice, then linear to ``num_classes``, for any square input."""

    def __init__(self, size: int = 28, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, kernel_size=5, stride=1, padding=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.conv2 = nn.Conv2d(20, 20, kernel_size=5, stride=1, padding=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        side = size // 2 // 2
        self.fc = nn.Linear(20 * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(F.relu(self.conv1(x)))
        x = self.pool2(F.relu(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


def poly_decay(total: int):
    """Paddle's PolynomialDecay(learning_rate=LR, decay_steps=total, end_lr=END_LR, power=1) as a
    LambdaLR factor: lr(s) = (LR - END_LR) * (1 - min(s, total) / total) + END_LR."""
    def factor(s: int) -> float:
        frac = 1.0 - min(s, total) / total
        return ((LR - END_LR) * frac + END_LR) / LR
    return factor


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(path: Path, state: dict, fsync: bool) -> None:
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if fsync:
        _fsync_dir(path.parent)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="data.npz with train_x (N,1,S,S) and train_y (N,)")
    p.add_argument("--ckpt", type=Path, required=True, help="checkpoint file (resumed from if it exists)")
    p.add_argument("--journal", type=Path, required=True, help="JSON-lines journal, one line per completed step")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--epochs", type=int, default=5)
    g.add_argument("--steps", type=int, help="total steps (overrides --epochs); the LR decays over these")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=1, metavar="K", help="checkpoint every K steps (default 1)")
    p.add_argument("--no-fsync", action="store_true", help="skip fsync of the checkpoint and its directory")
    p.add_argument("--init-process-group", action="store_true",
                   help="call torch.distributed.init_process_group('gloo') first, as a DDP job would")
    ns = p.parse_args(argv)

    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))
    if ns.init_process_group:
        import torch.distributed as dist
        dist.init_process_group("gloo")

    with np.load(ns.data) as z:
        x_all = torch.from_numpy(np.ascontiguousarray(z["train_x"], dtype=np.float32))
        y_all = torch.from_numpy(np.ascontiguousarray(z["train_y"], dtype=np.int64))
    n = len(x_all)
    per_epoch = math.ceil(n / BATCH)
    total = ns.steps if ns.steps is not None else per_epoch * ns.epochs

    torch.manual_seed(ns.seed)
    model = MnistCNN(int(x_all.shape[-1]))
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, poly_decay(total))

    step = 0
    if ns.ckpt.exists():
        st = torch.load(ns.ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        step = int(st["step"])
    for stale in ns.ckpt.parent.glob(f"{ns.ckpt.name}.tmp.*"):  # left by a worker killed mid-save
        stale.unlink(missing_ok=True)

    ns.journal.parent.mkdir(parents=True, exist_ok=True)
    journal = open(ns.journal, "a", encoding="utf-8")
    pid = os.getpid()
    first = {"proc_start": PROC_START, "imported": IMPORTED, "ready": time.time(), "resumed_at": step}
    order_epoch, order = -1, torch.arange(n)
    while step < total:
        epoch, batch = divmod(step, per_epoch)
        if epoch != order_epoch:  # each epoch's order follows from (seed, epoch): nothing to save for it
            order = torch.from_numpy(np.random.default_rng([ns.seed, epoch]).permutation(n))
            order_epoch = epoch
        idx = order[batch * BATCH:(batch + 1) * BATCH]
        logits = model(x_all[idx])
        loss = F.cross_entropy(logits, y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        rec = {"step": step - 1, "loss": loss.item(), "time": time.time(), "pid": pid, "restart": restart}
        if first:
            rec.update(first)
            first = {}
        journal.write(json.dumps(rec) + "\n")
        journal.flush()
        if step % ns.checkpoint_every == 0 or step == total:
            save_checkpoint(ns.ckpt, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                      "scheduler": sched.state_dict(), "step": step}, not ns.no_fsync)
    journal.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
