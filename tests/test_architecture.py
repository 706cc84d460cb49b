"""The import contract (pyproject's ``[tool.importlinter]``): kept by the tree, and broken by a
forbidden import planted in a copy of it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("rundir", "checkpoint", "runner", "chaos", "model")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the tree at ``root``, its packages found there first."""
    code = "from importlinter.cli import lint_imports_command; lint_imports_command()"
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run([sys.executable, "-c", code, "--no-cache"], cwd=root, capture_output=True, text=True,
                          env=env)


def copy_tree(tmp: Path) -> Path:
    root = tmp / "repo"
    root.mkdir()
    shutil.copy(REPO / "pyproject.toml", root)
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, root / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_the_tree_keeps_the_contract() -> None:
    r = lint_imports(REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


@pytest.mark.parametrize(("module", "planted", "contract"), [
    ("checkpoint/state.py", "import model.config", "Layers"),
    ("checkpoint/store.py", "from runner import worker", "Layers"),
    ("chaos/schedule.py", "import model.data", "Only the front door knows the built-in job"),
    ("runner/supervisor.py", "from model import job", "Only the front door knows the built-in job"),
    ("model/train.py", "from runner import supervisor", "client of the worker API only"),
    ("rundir/journal.py", "import numpy", "standard library only"),
    ("runner/policy.py", "from runner import supervisor", "No import cycles"),
    ("runner/worker/files.py", "from runner.worker import session", "facade over its parts"),
    ("runner/worker/session.py", "from runner.worker import standby", "facade over its parts"),
    ("runner/job.py", "from runner import supervisor", "Layers"),
    ("runner/resumable.py", "import chaos.inject", "Layers"),
    ("runner/command.py", "import model.job", "Only the front door knows the built-in job"),
    ("runner/command.py", "import numpy", "imports no framework"),
    ("runner/jobspec.py", "import paddle", "imports no framework"),
])
def test_a_planted_forbidden_import_breaks_the_contract(tmp_path: Path, module: str, planted: str,
                                                        contract: str) -> None:
    root = copy_tree(tmp_path)
    path = root / module
    path.write_text(path.read_text() + f"\n{planted}  # planted\n")
    r = lint_imports(root)
    assert r.returncode != 0, r.stdout
    broken = [line for line in r.stdout.splitlines() if line.strip().endswith("BROKEN")]
    assert any(contract in line for line in broken) or contract in r.stdout.split("Broken contracts")[-1], r.stdout


def _layered_modules() -> list[str]:
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c for c in cfg if c["type"] == "layers")["layers"]
    return [m.strip() for layer in layers for m in layer.replace("|", ":").split(":")]


def test_every_module_has_a_layer() -> None:
    """A module left out of the layers would be free to import anything."""
    layered = _layered_modules()
    missing = []
    for pkg in PACKAGES:
        for f in sorted((REPO / pkg).rglob("*.py")):
            mod = ".".join(f.relative_to(REPO).with_suffix("").parts)
            if mod.endswith("__init__") and mod.count(".") == 1:
                continue  # the package itself
            if not any(mod == m or mod.startswith(m + ".") for m in layered):
                missing.append(mod)
    assert missing == []
