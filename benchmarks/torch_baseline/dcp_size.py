"""PyTorch Distributed Checkpoint at a given state size: the same MLP as ``examples/scalable.py`` with Adam
after one step (parameters and both moments), saved with ``dcp.async_save`` (the stall is the time until it
returns, the persist the time until its future is done) and with ``dcp.save``, then loaded back.

Runs in the benchmark-only venv (``bash benchmarks/torch_baseline/setup_venv.sh``) without a process group;
prints one JSON object. ``benchmarks/bench_size.py`` runs it beside the project's own figures.

    VENV/bin/python benchmarks/torch_baseline/dcp_size.py --state-mb 100 --dir /tmp/dcp
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import time
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

MIB = 1 << 20


def width_for(state_mb: float, layers: int) -> int:
    """As ``examples/scalable.py``: the width whose layers hold ``state_mb`` MiB of parameters and moments."""
    params = state_mb * MIB / 12
    return max(8, int((-1 + math.sqrt(1 + 4 * params / layers)) / 2))


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM starts afresh: the peak measured is the save's, not the model's making


def rss_peak() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def state_of(width: int, layers: int) -> tuple[dict[str, torch.Tensor], int]:
    torch.manual_seed(0)
    blocks: list[torch.nn.Module] = []
    for _ in range(layers):
        blocks += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    model = torch.nn.Sequential(*blocks, torch.nn.Linear(width, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x, y = torch.randn(16, width), torch.randint(0, 10, (16,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    sd: dict[str, torch.Tensor] = {f"model/{k}": v for k, v in model.state_dict().items()}
    for name, p in model.named_parameters():
        for k, v in opt.state[p].items():
            if v.dim() > 0:
                sd[f"optim/{name}/{k}"] = v
    return sd, sum(v.numel() * v.element_size() for v in sd.values())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--state-mb", type=float, required=True)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--threads", type=int, default=2)
    ns = p.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(ns.threads)
    sd, nbytes = state_of(width_for(ns.state_mb, ns.layers), ns.layers)
    out: dict[str, float | int] = {"state_bytes": nbytes}
    before = rss_now()
    reset_peak()
    for i in range(2):  # the first call pays for DCP's own start-up: the second is the figure
        target = ns.dir / f"async-{i}"
        t0 = time.perf_counter()
        fut = dcp.async_save(sd, checkpoint_id=str(target))
        t1 = time.perf_counter()
        fut.result()
        t2 = time.perf_counter()
        out.update(async_stall_s=t1 - t0, async_persist_s=t2 - t0)
    out["async_peak_extra_bytes"] = rss_peak() - before
    t0 = time.perf_counter()
    dcp.save(sd, checkpoint_id=str(ns.dir / "sync"))
    out["sync_save_s"] = time.perf_counter() - t0
    for f in (ns.dir / "sync").iterdir():  # cold: read from the disk, not the page cache
        fd = os.open(f, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    into = {k: torch.empty_like(v) for k, v in sd.items()}
    t0 = time.perf_counter()
    dcp.load(into, checkpoint_id=str(ns.dir / "sync"))
    out["load_s"] = time.perf_counter() - t0
    out["load_equal"] = int(all(torch.equal(into[k], sd[k]) for k in sd))
    shutil.rmtree(ns.dir, ignore_errors=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
