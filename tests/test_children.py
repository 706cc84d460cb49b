"""rundir/children.py: a child started by this project dies with its parent, and finds the project's code.
The effects are real: processes are started and killed here."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from rundir.children import project_pythonpath
from tests.helpers import REPO
from tests.helpers.processes import finish, start, wait_gone


@pytest.mark.parametrize(("existing", "want"), [
    (None, str(REPO)),
    ("", str(REPO)),
    ("/opt/lib", f"{REPO}{os.pathsep}/opt/lib"),
    (f"/a{os.pathsep}/b", f"{REPO}{os.pathsep}/a{os.pathsep}/b"),
])
def test_project_pythonpath_puts_the_checkout_first(existing: str | None, want: str) -> None:
    assert project_pythonpath(existing) == want


# The parent starts a child that arms PR_SET_PDEATHSIG against it, says the child's pid once the child
# is armed, and sleeps until it is killed.
PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", '''
import os, sys, time
from rundir.children import die_with
die_with(os.getppid())
print("armed", flush=True)
time.sleep(120)
'''], stdout=subprocess.PIPE, text=True)
assert child.stdout.readline().strip() == "armed"
print(child.pid, flush=True)
time.sleep(120)
"""


def test_a_child_dies_with_its_parent() -> None:
    parent = start([sys.executable, "-c", PARENT])
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        assert line.strip().isdigit(), finish(parent, timeout=10)
        child = int(line)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        wait_gone(child, timeout=10)  # SIGKILLed by the kernel when its parent went
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_a_child_whose_parent_is_already_gone_exits_at_once() -> None:
    # The test process is not pid 1, so to the child its parent "died" before it armed the signal.
    p = finish(start([sys.executable, "-c", "from rundir.children import die_with; die_with(1, 7); print('ran on')"]),
               timeout=60)
    assert (p.returncode, p.stdout) == (7, "")
