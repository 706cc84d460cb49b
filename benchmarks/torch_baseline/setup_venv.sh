#!/usr/bin/env bash
# Creates (or repairs) the benchmark-only virtual environment with PyTorch's CPU build.
# PyTorch is not a dependency of the project: nothing outside benchmarks/torch_baseline uses this venv.
# Idempotent: a venv that already imports the pinned torch is left alone.
#
#   bash benchmarks/torch_baseline/setup_venv.sh            # -> benchmarks/.venv-torch
#   VENV=/some/dir PYTHON=python3.11 bash benchmarks/torch_baseline/setup_venv.sh
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${VENV:-$(cd "$HERE/.." && pwd)/.venv-torch}"
PYTHON="${PYTHON:-python3}"
# Pinned: the CPU wheel of this version lies on the machine's disk (pip's find-links). An unpinned
# `torch` would pull the multi-GB CUDA build from the index.
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"

if [ -x "$VENV/bin/python" ] && [ -x "$VENV/bin/torchrun" ] \
   && "$VENV/bin/python" - "$TORCH_VERSION" <<'PY' 2>/dev/null
import sys
import numpy  # noqa: F401
import torch
sys.exit(0 if torch.__version__.split("+")[0] == sys.argv[1] else 1)
PY
then
    echo "torch venv ready: $VENV (torch $TORCH_VERSION)"
    exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet "torch==$TORCH_VERSION" numpy
"$VENV/bin/python" -c "import torch, numpy; print('torch venv ready:', '$VENV', '(torch', torch.__version__ + ')')"
