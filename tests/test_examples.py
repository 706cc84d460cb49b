"""The examples stay small: under ~100 lines each, and the lines that are there for the runner alone
(any line of code naming ``runner`` or ``job``) as few as the README's "Supervise your own job" says."""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
#: As the README's table gives them.
RUNNER_LINES = {"mlp_dropout.py": 8, "cnn_augment.py": 8, "seq_gru.py": 7, "scalable.py": 8}


def runner_lines(source: str) -> list[int]:
    """The lines with a name token ``runner`` or ``job`` (comments and strings do not count)."""
    lines = {tok.start[0] for tok in tokenize.generate_tokens(io.StringIO(source).readline)
             if tok.type == tokenize.NAME and tok.string in ("runner", "job")}
    return sorted(lines)


@pytest.mark.parametrize(("source", "lines"), [
    ("import runner\nx = 1\n", [1]),
    ("job = runner.Job()\njob.step(loss)\n", [1, 2]),
    ('"""python -m runner"""\n# job.step\nprint("job")\n', []),  # docs, comments and strings
    ("loader = job.resumable(\n    make())\n", [1]),  # a call over two lines is one
])
def test_runner_lines(source: str, lines: list[int]) -> None:
    assert runner_lines(source) == lines


@pytest.mark.parametrize("name", list(RUNNER_LINES))
def test_an_example_is_small_and_its_runner_lines_are_few(name: str) -> None:
    source = (EXAMPLES / name).read_text()
    assert len(source.splitlines()) <= 100
    assert len(runner_lines(source)) == RUNNER_LINES[name]


def test_every_example_is_counted() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(RUNNER_LINES)


def test_the_readme_gives_these_counts() -> None:
    rows = re.findall(r"^\| `(\w+\.py)` \|.*\| (\d+) \|$", (ROOT / "README.md").read_text(), re.MULTILINE)
    assert {name: int(n) for name, n in rows} == RUNNER_LINES
