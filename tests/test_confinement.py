"""Nothing outside the run directory is read or written, whatever a manifest, an event or a chaos
schedule names: each escape is tried, and a canary file outside must keep its bytes and its mtime,
while a FIFO outside would block whoever opened it (a short timeout turns that into a failure)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chaos.faults import Fault, FaultKind
from chaos.inject import Injector
from chaos.schedule import Schedule, ScheduleError
from checkpoint import filehash
from checkpoint.storage import LocalStorage
from checkpoint.store import MANIFEST, CheckpointStore, _canonical, _sha256, checkpoint_name
from rundir.contract import FileEffect
from rundir.paths import PathEscape
from tests.helpers.factories import obs

CANARY = b"the canary: nobody may read or write me\n"
TIMEOUT_S = 10.0


class Outside:
    """A directory next to the run directory, with a canary file and a FIFO in it."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "outside"
        self.dir.mkdir()
        self.canary = self.dir / "canary"
        self.canary.write_bytes(CANARY)
        os.utime(self.canary, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
        self.fifo = self.dir / "fifo"
        os.mkfifo(self.fifo)
        self._stat = self.canary.stat()

    def assert_untouched(self) -> None:
        st = self.canary.stat()
        assert self.canary.read_bytes() == CANARY, "the canary outside was written"
        assert (st.st_mtime_ns, st.st_size, st.st_ino) == (self._stat.st_mtime_ns, self._stat.st_size,
                                                            self._stat.st_ino), "the canary outside was touched"

    def release_fifo(self) -> None:
        """Let go of anyone blocked opening the FIFO (a regression), so the test ends instead of hanging."""
        for flags in (os.O_WRONLY | os.O_NONBLOCK, os.O_RDONLY | os.O_NONBLOCK):
            try:
                os.close(os.open(self.fifo, flags))
            except OSError:
                pass


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Outside]:
    o = Outside(tmp_path)
    yield o
    o.release_fifo()
    o.assert_untouched()


def within(timeout: float, fn: Callable[[], Any]) -> Any:
    """``fn()`` on a daemon thread; fails the test if it is still running after ``timeout`` (it opened
    the FIFO outside and is waiting for a writer)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised on the test's thread
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"still running after {timeout} s: it opened the FIFO outside"
    if "error" in box:
        raise box["error"]
    return box.get("value")


# -- checkpoint manifests ------------------------------------------------------------------------------------


def files_for(step: int) -> dict[str, bytes]:
    return {"model.safetensors": f"weights after {step}".encode() * 20, "train.safetensors": bytes(range(200))}


def rewrite_manifest(step_dir: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Change a committed manifest and recompute its checksum, as someone crafting it would."""
    path = step_dir / MANIFEST
    body = json.loads(path.read_text())
    body.pop("sha256")
    edit(body)
    path.write_text(json.dumps(dict(body, sha256=_sha256(_canonical(body)))))


def entry_of(data: bytes) -> dict[str, Any]:
    """A manifest entry that matches ``data``: a loader that opened the file would accept it."""
    return {filehash.DEFAULT: filehash.hex_digest(filehash.DEFAULT, [data]), "size": len(data)}


@pytest.fixture
def run(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    store = CheckpointStore(LocalStorage(run_dir))
    store.save(5, files_for(5), {"epoch": 0})
    store.save(10, files_for(10), {"epoch": 1})
    return run_dir


def step_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / checkpoint_name(step)


def load_latest(run_dir: Path) -> tuple[Any, list[str]]:
    warnings: list[str] = []
    ck = within(TIMEOUT_S, lambda: CheckpointStore(LocalStorage(run_dir)).load_latest(warn=warnings.append))
    return ck, warnings


def swap_for_link_out(path: Path, copy: Path) -> None:
    """Replace ``path`` with a link to ``copy``, a file outside holding the same bytes."""
    copy.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(copy)


def assert_fell_back_past_step_10(run_dir: Path, ck: Any, warnings: list[str], problem: str) -> None:
    assert ck is not None and ck.step == 5 and dict(ck.files) == files_for(5)
    (w,) = warnings
    assert w.startswith("checkpoint step-000000010") and problem in w and "\n" not in w, w
    assert w.endswith("-- moved aside, falling back to an older checkpoint")
    # Moved aside exactly as a checksum failure is.
    assert not step_dir(run_dir, 10).exists()
    assert (run_dir / "checkpoints" / "corrupt-step-000000010-0").is_dir()


ESCAPING_NAMES: list[Any] = [
    pytest.param(lambda o, d: str(o.canary), "is an absolute path", id="absolute-canary"),
    pytest.param(lambda o, d: str(o.fifo), "is an absolute path", id="absolute-fifo"),
    pytest.param(lambda o, d: os.path.relpath(o.canary, d), "climbs out of its directory", id="dotdot-canary"),
    pytest.param(lambda o, d: os.path.relpath(o.fifo, d), "climbs out of its directory", id="dotdot-fifo"),
    pytest.param(lambda o, d: "a/../" + os.path.relpath(o.canary, d), "climbs out", id="a-dotdot-dotdot"),
    pytest.param(lambda o, d: "../" * 20 + str(o.canary).lstrip("/"), "climbs out", id="deep-dotdot"),
    pytest.param(lambda o, d: "", "is an empty file name", id="empty"),
    pytest.param(lambda o, d: "model\x00.safetensors", "contains a NUL byte", id="nul"),
    pytest.param(lambda o, d: "sub/model.safetensors", "outside the checkpoint", id="a-subdirectory"),
    pytest.param(lambda o, d: MANIFEST, "outside the checkpoint", id="the-manifest-itself"),
]


@pytest.mark.parametrize(("make_name", "problem"), ESCAPING_NAMES)
def test_a_manifest_naming_a_file_outside_is_corrupt_and_the_file_never_opened(
        run: Path, outside: Outside, make_name: Callable[[Outside, Path], str], problem: str) -> None:
    name = make_name(outside, step_dir(run, 10))
    rewrite_manifest(step_dir(run, 10), lambda body: body["files"].__setitem__(name, entry_of(CANARY)))
    ck, warnings = load_latest(run)
    assert_fell_back_past_step_10(run, ck, warnings, problem)


@pytest.mark.parametrize("target", ["canary", "fifo"])
def test_a_manifest_file_that_is_a_link_out_is_corrupt(run: Path, outside: Outside, target: str) -> None:
    (step_dir(run, 10) / "evil").symlink_to(outside.dir / target)
    rewrite_manifest(step_dir(run, 10), lambda body: body["files"].__setitem__("evil", entry_of(CANARY)))
    ck, warnings = load_latest(run)
    assert_fell_back_past_step_10(run, ck, warnings, "outside the directory")


def test_a_data_file_replaced_by_a_link_out_is_corrupt(run: Path, outside: Outside) -> None:
    """No manifest change at all: the file itself was swapped for a link to a file with the same bytes."""
    swap_for_link_out(step_dir(run, 10) / "model.safetensors", outside.dir / "copy")
    ck, warnings = load_latest(run)
    assert_fell_back_past_step_10(run, ck, warnings, "outside the directory")


def test_a_manifest_that_is_a_link_out_is_corrupt(run: Path, outside: Outside) -> None:
    swap_for_link_out(step_dir(run, 10) / MANIFEST, outside.dir / "manifest")
    ck, warnings = load_latest(run)
    assert_fell_back_past_step_10(run, ck, warnings, "outside the directory")


def test_a_checkpoint_directory_that_is_a_link_out_is_never_loaded(run: Path, outside: Outside) -> None:
    """A complete, valid checkpoint kept outside and linked in as the newest one."""
    import shutil

    shutil.copytree(step_dir(run, 10), outside.dir / "ckpt")
    rewrite_manifest(outside.dir / "ckpt", lambda body: body.__setitem__("step", 20))
    (run / "checkpoints" / checkpoint_name(20)).symlink_to(outside.dir / "ckpt", target_is_directory=True)
    before = sorted(p.name for p in (outside.dir / "ckpt").iterdir())
    warnings: list[str] = []
    ck = within(TIMEOUT_S, lambda: CheckpointStore(LocalStorage(run)).load_latest(warn=warnings.append))
    assert ck is not None and ck.step == 10
    assert len(warnings) == 1 and "step-000000020" in warnings[0] and "outside the directory" in warnings[0]
    assert sorted(p.name for p in (outside.dir / "ckpt").iterdir()) == before  # moved aside: the link, not it


def test_a_link_that_stays_inside_the_checkpoint_is_fine(run: Path) -> None:
    d = step_dir(run, 10)
    (d / "alias").symlink_to("model.safetensors")
    rewrite_manifest(d, lambda body: body["files"].__setitem__("alias", entry_of(files_for(10)["model.safetensors"])))
    ck, warnings = load_latest(run)
    assert warnings == [] and ck is not None and ck.step == 10
    assert ck.files["alias"] == files_for(10)["model.safetensors"]


@pytest.mark.parametrize(("edit", "problem"), [
    (lambda b: b.__setitem__("files", ["model.safetensors"]), "malformed"),
    (lambda b: b["files"].__setitem__("model.safetensors", {"sha256": 1, "size": 2}), "malformed entry"),
    (lambda b: b["files"].__setitem__("model.safetensors", "x"), "malformed entry"),
    (lambda b: b.__setitem__("step", "ten"), "malformed"),
    (lambda b: b.pop("meta"), "malformed"),
], ids=["files-a-list", "entry-types", "entry-a-string", "step-a-string", "no-meta"])
def test_a_crafted_manifest_of_the_wrong_shape_is_corrupt_not_a_traceback(run: Path, edit: Any, problem: str) -> None:
    rewrite_manifest(step_dir(run, 10), edit)
    ck, warnings = load_latest(run)
    assert_fell_back_past_step_10(run, ck, warnings, problem)


def test_a_fifo_inside_the_checkpoint_is_refused_not_waited_on(run: Path) -> None:
    d = step_dir(run, 10)
    os.mkfifo(d / "pipe")
    rewrite_manifest(d, lambda body: body["files"].__setitem__("pipe", entry_of(b"")))
    ck, warnings = load_latest(run)
    assert_fell_back_past_step_10(run, ck, warnings, "not a regular file")


def test_local_storage_get_refuses_links_out(tmp_path: Path, outside: Outside) -> None:
    storage = LocalStorage(tmp_path / "root")
    storage.put("checkpoints/step-1/a", b"inside")
    (tmp_path / "root" / "checkpoints" / "step-1" / "b").symlink_to(outside.canary)
    assert storage.get("checkpoints/step-1/a") == b"inside"
    with pytest.raises(PathEscape):
        within(TIMEOUT_S, lambda: storage.get("checkpoints/step-1/b"))
    with pytest.raises(PathEscape):
        storage.get("checkpoints/../../outside/canary")


def test_local_storage_reads_through_a_linked_checkpoints_directory(tmp_path: Path) -> None:
    """The user may put the checkpoints on another disk with a link; that is not an escape."""
    disk = tmp_path / "bigger-disk"
    disk.mkdir()
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "checkpoints").symlink_to(disk, target_is_directory=True)
    store = CheckpointStore(LocalStorage(tmp_path / "root"))
    store.save(3, files_for(3), {})
    ck = store.load_latest()
    assert ck is not None and ck.step == 3 and dict(ck.files) == files_for(3)


# -- chaos schedules and the injector ------------------------------------------------------------------------


def corrupt_fault(file: object) -> dict[str, Any]:
    return {"kind": "corrupt-checkpoint", "step": 10, "detail": {"mode": "flip-byte", "file": file, "position": 0.5}}


@pytest.mark.parametrize(("make_name", "problem"), ESCAPING_NAMES[:8])
def test_a_schedule_naming_a_file_outside_is_a_bad_schedule(tmp_path: Path, outside: Outside,
                                                           make_name: Callable[[Outside, Path], str],
                                                           problem: str) -> None:
    path = tmp_path / "schedule.json"
    name = make_name(outside, tmp_path / "run" / "checkpoints" / checkpoint_name(10))
    path.write_text(json.dumps({"seed": 0, "total_steps": 30, "faults": [corrupt_fault(name)]}))
    with pytest.raises(ScheduleError) as exc:
        within(TIMEOUT_S, lambda: Schedule.load(path))
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"chaos schedule {path}: not a valid schedule: fault 1")
    assert problem in msg


def injector_for(run_dir: Path, file: object) -> Injector:
    """An injector given a schedule that was never loaded from a file, so never checked."""
    fault = Fault(FaultKind.CORRUPT_CHECKPOINT, 10, {"mode": "flip-byte", "file": file, "position": 0.5})
    return Injector(Schedule(0, 30, (fault,)), run_dir)


def apply_corruption(inj: Injector, name: str = "step-000000010") -> str:
    event = {"source": "worker", "event": "checkpoint-saved", "step": 10, "name": name}
    effect, _ = inj.on_tick(obs(9, events=[event]))
    assert isinstance(effect, FileEffect)
    return str(within(TIMEOUT_S, effect.apply))


@pytest.mark.parametrize(("make_name", "problem"), ESCAPING_NAMES[:8])
def test_the_injector_confines_the_file_it_corrupts(run: Path, outside: Outside,
                                                    make_name: Callable[[Outside, Path], str], problem: str) -> None:
    name = make_name(outside, step_dir(run, 10))
    what = apply_corruption(injector_for(run, name))
    assert what.startswith("not applied: ") and problem in what


@pytest.mark.parametrize("target", ["canary", "fifo"])
def test_the_injector_does_not_follow_a_link_out(run: Path, outside: Outside, target: str) -> None:
    (step_dir(run, 10) / "evil").symlink_to(outside.dir / target)
    what = apply_corruption(injector_for(run, "evil"))
    assert what.startswith("not applied: ") and "outside the directory" in what


@pytest.mark.parametrize("name", ["../../outside", "/tmp", "", "step-000000010/../../.."])
def test_the_injector_confines_the_checkpoint_named_by_the_event(run: Path, outside: Outside, name: str) -> None:
    what = apply_corruption(injector_for(run, "canary"), name=name)
    assert what.startswith("not applied: ")


def test_the_injector_leaves_a_fifo_inside_alone(run: Path) -> None:
    os.mkfifo(step_dir(run, 10) / "pipe")
    assert apply_corruption(injector_for(run, "pipe")) == "not applied: step-000000010/pipe is not a regular file"


def test_the_injector_still_corrupts_a_file_inside(run: Path) -> None:
    before = (step_dir(run, 10) / "model.safetensors").read_bytes()
    what = apply_corruption(injector_for(run, "model.safetensors"))
    assert what.startswith("flipped byte") and (step_dir(run, 10) / "model.safetensors").read_bytes() != before


# -- the checks above can fail ------------------------------------------------------------------------------


def test_a_store_without_confinement_would_load_the_crafted_checkpoint(run: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The crafted manifest is valid but for its escape: a store that joined names blindly would read
    the victim and accept the checkpoint, which is what the tests above would then catch."""
    import checkpoint.store as store_mod

    victim = tmp_path / "victim"
    victim.write_bytes(CANARY)
    name = os.path.relpath(victim, step_dir(run, 10))  # ../../../victim
    rewrite_manifest(step_dir(run, 10), lambda body: body["files"].__setitem__(name, entry_of(CANARY)))
    monkeypatch.setattr(store_mod, "_file_name", lambda name, fname: fname)
    monkeypatch.setattr(LocalStorage, "get", lambda self, key: (self.root / key).read_bytes())
    ck, warnings = load_latest(run)
    assert warnings == [] and ck is not None and ck.step == 10 and ck.files[name] == CANARY


def test_an_injector_without_confinement_would_write_outside(run: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import chaos.inject as inject_mod

    victim = tmp_path / "victim"
    victim.write_bytes(CANARY)
    monkeypatch.setattr(inject_mod, "confined", lambda base, name: Path(base) / name)
    what = apply_corruption(injector_for(run, str(victim)))
    assert what.startswith("flipped byte") and victim.read_bytes() != CANARY
