"""Confinement of names read from the run directory or a schedule: every way out is refused, with one
line naming the file; names that stay inside, links included, are let through."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rundir.paths import PathEscape, check_name, confined

# (name, the problem named in the message); each must be refused by the pure check.
ESCAPES = [
    pytest.param("/tmp/x/victim.txt", "is an absolute path", id="absolute"),
    pytest.param("/", "is an absolute path", id="root"),
    pytest.param("//etc/passwd", "is an absolute path", id="double-slash-absolute"),
    pytest.param("..", "climbs out of its directory", id="dotdot"),
    pytest.param("../x", "climbs out of its directory", id="dotdot-first"),
    pytest.param("../../../x", "climbs out of its directory", id="dotdot-deep"),
    pytest.param("a/../../b", "climbs out of its directory", id="dotdot-middle"),
    pytest.param("a/..", "climbs out of its directory", id="dotdot-last"),
    pytest.param("../../../../../../../tmp/x/evil", "climbs out of its directory", id="manifest-escape"),
    pytest.param("", "is an empty file name", id="empty"),
    pytest.param(".", "is an empty file name", id="dot"),
    pytest.param("./", "is an empty file name", id="dot-slash"),
    pytest.param("a\x00b", "contains a NUL byte", id="nul"),
    pytest.param("\x00", "contains a NUL byte", id="only-nul"),
    pytest.param(None, "is not a file name", id="null"),
    pytest.param(7, "is not a file name", id="a-number"),
    pytest.param(["a"], "is not a file name", id="a-list"),
]

INSIDE = ["model.safetensors", "MANIFEST.json", "a/b", "./a", "a/./b", "a..b", "..a", "a..", "...", "a b", "ünï"]


@pytest.mark.parametrize(("name", "problem"), ESCAPES)
def test_check_name_refuses_every_escape(name: object, problem: str) -> None:
    with pytest.raises(PathEscape) as exc:
        check_name(name)
    msg = str(exc.value)
    assert problem in msg and "\n" not in msg
    assert repr(name) in msg  # it names the file


@pytest.mark.parametrize(("name", "problem"), ESCAPES)
def test_confined_refuses_every_escape_before_looking(tmp_path: Path, name: object, problem: str) -> None:
    with pytest.raises(PathEscape, match=problem.split(" (")[0]):
        confined(tmp_path, name)


@pytest.mark.parametrize("name", INSIDE)
def test_names_that_stay_inside_pass(tmp_path: Path, name: str) -> None:
    assert check_name(name) == name
    assert confined(tmp_path, name) == tmp_path / name


def test_a_path_escape_is_a_value_error() -> None:
    assert issubclass(PathEscape, ValueError)


# -- links -------------------------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """``base`` with a file and a subdirectory, and ``outside`` next to it with a canary."""
    base, outside = tmp_path / "base", tmp_path / "outside"
    (base / "sub").mkdir(parents=True)
    outside.mkdir()
    (base / "inside.txt").write_text("in")
    (outside / "canary").write_text("out")
    return base, outside


def test_a_link_out_is_refused(tree: tuple[Path, Path]) -> None:
    base, outside = tree
    (base / "evil").symlink_to(outside / "canary")
    with pytest.raises(PathEscape) as exc:
        confined(base, "evil")
    assert "'evil'" in str(exc.value) and "outside the directory" in str(exc.value)


def test_a_relative_link_out_is_refused(tree: tuple[Path, Path]) -> None:
    base, _ = tree
    (base / "evil").symlink_to("../outside/canary")
    with pytest.raises(PathEscape):
        confined(base, "evil")


def test_a_linked_directory_out_is_refused_at_any_level(tree: tuple[Path, Path]) -> None:
    base, outside = tree
    (base / "sub" / "door").symlink_to(outside, target_is_directory=True)
    with pytest.raises(PathEscape):
        confined(base, "sub/door/canary")
    with pytest.raises(PathEscape):
        confined(base, "sub/door/not-there-yet")  # a file that does not exist still resolves outside


def test_a_dangling_link_out_is_refused(tree: tuple[Path, Path]) -> None:
    base, outside = tree
    (base / "evil").symlink_to(outside / "nothing-here")
    with pytest.raises(PathEscape):
        confined(base, "evil")


def test_a_link_that_stays_inside_is_fine(tree: tuple[Path, Path]) -> None:
    base, _ = tree
    (base / "sub" / "alias").symlink_to("../inside.txt")
    (base / "self").symlink_to(".", target_is_directory=True)
    assert confined(base, "sub/alias") == base / "sub" / "alias"
    assert confined(base, "self/inside.txt") == base / "self" / "inside.txt"
    assert confined(base, "not-there-yet") == base / "not-there-yet"


def test_a_base_that_is_itself_a_link_is_fine(tree: tuple[Path, Path], tmp_path: Path) -> None:
    base, _ = tree
    (tmp_path / "elsewhere").symlink_to(base, target_is_directory=True)
    assert confined(tmp_path / "elsewhere", "inside.txt") == tmp_path / "elsewhere" / "inside.txt"


def test_a_link_loop_is_refused(tree: tuple[Path, Path]) -> None:
    base, _ = tree
    (base / "loop").symlink_to("loop")
    with pytest.raises(PathEscape):
        confined(base, "loop")


def test_confined_opens_nothing(tree: tuple[Path, Path]) -> None:
    """A FIFO outside would block whoever opens it: confined() only looks, so it returns at once."""
    base, outside = tree
    os.mkfifo(outside / "fifo")
    (base / "inside-fifo").symlink_to(outside / "fifo")
    with pytest.raises(PathEscape):
        confined(base, "inside-fifo")
    os.mkfifo(base / "own-fifo")
    assert confined(base, "own-fifo") == base / "own-fifo"


def test_a_deliberately_naive_join_is_caught_by_these_tests(tree: tuple[Path, Path]) -> None:
    """The table is not vacuous: a join without checks lets each of these out."""
    base, outside = tree
    (base / "evil").symlink_to(outside / "canary")

    def naive(b: Path, name: str) -> Path:
        return b / name

    for name in ("/tmp/x", "../outside/canary", "a/../../outside/canary", "evil"):
        p = naive(base, name).resolve()
        assert base.resolve() not in p.parents, name  # it escaped...
        with pytest.raises(PathEscape):
            confined(base, name)  # ...where confined() refuses
