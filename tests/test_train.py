"""The built-in job's training recipe: a standby spare's warm-up leaves the run as it would be without.

Each case runs in a fresh process, as a spare does, so Paddle's parameter-name counters start at zero."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

SCRIPT = r"""
import json, sys, tempfile, warnings
warnings.filterwarnings("ignore")
from pathlib import Path
import paddle, paddle.nn.functional as F
from model.config import TrainConfig
from model.data import prepare
from model.train import build, warm_up

mode = sys.argv[1]
cfg = TrainConfig()
data = prepare(None, Path(sys.argv[2]))
if mode == "warm":
    warm_up(cfg, data)
elif mode == "unguarded":  # what the warm-up would do without a name space of its own
    build(cfg, data.side, 2)
model, opt = build(cfg, data.side, 10)
losses = []
for b in range(3):
    x = paddle.to_tensor(data.train_x[b * 100 : (b + 1) * 100])
    y = paddle.to_tensor(data.train_y[b * 100 : (b + 1) * 100])
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    opt.clear_grad()
    opt._learning_rate.step()
    losses.append(float(loss).hex())
print(json.dumps({"params": [p.name for p in model.parameters()], "opt": sorted(opt.state_dict()),
                  "losses": losses}))
"""


def run(mode: str, data_dir: str) -> dict[str, list[str]]:
    p = subprocess.run([sys.executable, "-c", SCRIPT, mode, data_dir], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.splitlines()[-1])


def test_a_warmed_up_process_trains_exactly_as_a_fresh_one(tmp_path: Path) -> None:
    fresh, warm, unguarded = (run(m, str(tmp_path)) for m in ("fresh", "warm", "unguarded"))
    assert warm == fresh
    # The comparison can tell: a throwaway model built without its own name space renames the real
    # model's parameters, and with them the optimizer's state (the checkpoint's keys).
    assert unguarded["params"] != fresh["params"] and unguarded["opt"] != fresh["opt"]
