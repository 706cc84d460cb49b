"""The shape of the code, checked over a copy of the tree where a check must be shown to bite:

- the import contract (pyproject's ``[tool.importlinter]``), broken by a forbidden import planted in a copy;
- the size limits: no module over 400 lines, no function over 60, broken by an oversize one planted;
- tests mirror modules: every module with logic has its ``tests/test_<module>.py``, missed for a planted one.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.helpers import REPO

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


# -- size limits ----------------------------------------------------------------------------------------

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _modules(root: Path) -> list[Path]:
    return [f for pkg in PACKAGES for f in sorted((root / pkg).rglob("*.py"))]


def oversize(root: Path) -> list[str]:
    """The modules of ``root`` over ``MAX_MODULE_LINES`` lines and the functions (methods, nested ones)
    over ``MAX_FUNCTION_LINES``, from the ``def`` line to the last: ``"path[:line name()]: N lines"``."""
    found = []
    for f in _modules(root):
        rel, text = f.relative_to(root).as_posix(), f.read_text()
        if (n := len(text.splitlines())) > MAX_MODULE_LINES:
            found.append(f"{rel}: {n} lines")
        for node in ast.walk(ast.parse(text, rel)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{rel}:{node.lineno} {node.name}(): {length} lines")
    return found


def test_no_module_or_function_is_over_the_size_limits() -> None:
    assert oversize(REPO) == []


def _function(name: str, lines: int) -> str:
    """A function of exactly ``lines`` lines, its ``def`` line included."""
    return f"\n\ndef {name}() -> None:\n" + "".join(f"    x{i} = {i}\n" for i in range(lines - 1))


@pytest.mark.parametrize(("lines", "caught"), [(MAX_FUNCTION_LINES, False), (MAX_FUNCTION_LINES + 1, True)])
def test_a_planted_long_function_is_caught(tmp_path: Path, lines: int, caught: bool) -> None:
    root = copy_tree(tmp_path)
    path = root / "rundir" / "events.py"
    at = len(path.read_text().splitlines()) + 3
    path.write_text(path.read_text() + _function("planted", lines))
    want = [f"rundir/events.py:{at} planted(): {lines} lines"] if caught else []
    assert oversize(root) == want


@pytest.mark.parametrize(("lines", "caught"), [(MAX_MODULE_LINES, False), (MAX_MODULE_LINES + 1, True)])
def test_a_planted_long_module_is_caught(tmp_path: Path, lines: int, caught: bool) -> None:
    root = copy_tree(tmp_path)
    path = root / "chaos" / "planted.py"
    path.write_text("".join(f"X{i} = {i}\n" for i in range(lines)))
    assert oversize(root) == ([f"chaos/planted.py: {lines} lines"] if caught else [])


# -- tests mirror modules -------------------------------------------------------------------------------
#
# A module ``pkg/mod.py`` is tested in ``tests/test_<mod>.py`` (module names do not repeat across the
# packages), its ``pkg/__main__.py`` in ``tests/test_<pkg>_main.py``; a module of a subpackage,
# ``pkg/sub/mod.py``, in ``tests/test_<sub>_<mod>.py``, and the subpackage's own ``__init__`` or ``api``
# facade in ``tests/test_<sub>.py``. A module with no logic (constants, Protocols) needs none.

#: Modules tested in another file than the rule names, and why.
TESTED_ELSEWHERE = {
    "model.__main__": ("test_model_job.py", "the built-in job's adapter is __main__'s parser and argv"),
    "model.job": ("test_model_job.py", "test_job.py is runner.job's (runner.Job): two modules of one name"),
    "checkpoint.writer_process": ("test_writer.py", "the writer's own process, driven through CheckpointWriter"),
    "checkpoint.upload_process": ("test_uploader.py", "the uploader's own process, driven through Uploader"),
    "chaos.machine": ("test_fleet.py", "one machine of a fleet: its chaos is tested with the fleet that runs it"),
    **{f"runner.notice.{m}": ("test_notice.py", "the notice watchers share their fakes and are tested as one")
       for m in ("aws", "azure", "base", "detect", "gcp", "signals", "transport", "watcher")},
}


def mirror_file(module: str) -> str:
    """The test file the rule above names for ``module`` (dotted)."""
    parts = module.split(".")
    if len(parts) == 2:
        return f"test_{parts[0]}_main.py" if parts[1] == "__main__" else f"test_{parts[1]}.py"
    sub, name = parts[-2], parts[-1]
    return f"test_{sub}.py" if name in ("__init__", "api") else f"test_{sub}_{name}.py"


def _is_stub(body: list[ast.stmt]) -> bool:
    """Only a docstring and/or ``...``: a Protocol's method."""
    return all(isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)
               and (isinstance(s.value.value, str) or s.value.value is Ellipsis) for s in body)


def has_logic(tree: ast.Module) -> bool:
    return any(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and not _is_stub(n.body) for n in ast.walk(tree))


def untested(root: Path, tests: Path) -> list[str]:
    """Each module of ``root`` with logic whose test file is not in ``tests``: ``"module: tests/FILE"``."""
    found = []
    for f in _modules(root):
        module = ".".join(f.relative_to(root).with_suffix("").parts)
        if module.count(".") == 1 and module.endswith(".__init__"):
            continue  # a top-level package's __init__: empty
        want = TESTED_ELSEWHERE.get(module, (mirror_file(module), ""))[0]
        if has_logic(ast.parse(f.read_text())) and not (tests / want).is_file():
            found.append(f"{module}: tests/{want}")
    return found


def test_every_module_with_logic_has_its_test_file() -> None:
    assert untested(REPO, REPO / "tests") == []


def test_every_exception_names_a_module_and_a_test_file_that_exist() -> None:
    for module, (file, why) in TESTED_ELSEWHERE.items():
        assert (REPO / (module.replace(".", "/") + ".py")).is_file(), module
        assert (REPO / "tests" / file).is_file() and why, module


@pytest.mark.parametrize(("module", "text", "want"), [
    ("rundir/planted.py", "def f() -> int:\n    return 1\n", ["rundir.planted: tests/test_planted.py"]),
    ("runner/worker/planted.py", "class C:\n    def f(self) -> None:\n        print()\n",
     ["runner.worker.planted: tests/test_worker_planted.py"]),
    ("model/planted.py", "X = 1\n", []),  # no logic
    ("chaos/planted.py", "class P(Protocol):\n    def f(self) -> int:\n        \"Doc.\"\n        ...\n", []),
])
def test_a_planted_module_without_tests_is_caught(tmp_path: Path, module: str, text: str, want: list[str]) -> None:
    root = copy_tree(tmp_path)
    (root / module).write_text(text)
    assert sorted(set(untested(root, REPO / "tests")) - set(untested(REPO, REPO / "tests"))) == want
