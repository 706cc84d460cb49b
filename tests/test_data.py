"""Training data: every bad input is one line naming the file and the problem, with exit code 65; good
JSON and IDX sources load with the right shapes; the default digits split; the run directory's cache.
The last section runs ``python -m model`` to check what a user sees for bad data and bad run directories."""

from __future__ import annotations

import fcntl
import gzip
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import model.data as md
from model.data import CACHE, DataError, Dataset, load_source, prepare
from rundir.exitcodes import ExitCode
from runner.worker import JOB, WORKER_LOCK
from tests.helpers.processes import describe, run_job
from tests.helpers.readers import final, losses

# -- JSON (.json.gz) ------------------------------------------------------------------------------------

SIDE = 12


def images(n: int, side: int = SIDE) -> list[list[float]]:
    return [[((i + j) % 7) / 7 for j in range(side * side)] for i in range(n)]


def split(n: int, side: int = SIDE) -> list:
    return [images(n, side), [i % 10 for i in range(n)]]


def good_json() -> list:
    return [split(20), split(3), split(6)]


def gz(obj: object) -> bytes:
    return gzip.compress(json.dumps(obj).encode())


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def with_pixel(imgs: list[list[float]], image: int, pixel: int, value: float) -> list[list[float]]:
    imgs[image][pixel] = value
    return imgs


def with_split(which: int, value: object) -> bytes:
    d = good_json()
    d[which] = value
    return gz(d)


def test_json_good_case(tmp_path: Path) -> None:
    ds = load_source(str(write(tmp_path / "d.json.gz", gz(good_json()))))
    assert ds.train_x.shape == (20, 1, SIDE, SIDE) and ds.train_x.dtype == np.float32
    assert ds.eval_x.shape == (6, 1, SIDE, SIDE)
    assert ds.train_y.dtype == np.int64 and ds.train_y.tolist() == [i % 10 for i in range(20)]
    assert ds.side == SIDE
    assert np.array_equal(ds.train_x[3, 0].ravel(), np.asarray(images(20)[3], dtype=np.float32))


def test_json_28x28_like_the_classic_mnist_file(tmp_path: Path) -> None:
    ds = load_source(str(write(tmp_path / "mnist.json.gz", gz([split(4, 28), split(2, 28), split(3, 28)]))))
    assert (ds.train_x.shape, ds.eval_x.shape, ds.side) == ((4, 1, 28, 28), (3, 1, 28, 28), 28)


JSON_CASES: list = [
    pytest.param(None, "no such file or directory", id="missing-file"),
    pytest.param(json.dumps(good_json()).encode(), "not a gzip file", id="not-gzip"),
    pytest.param(gz(good_json())[:200], "truncated or damaged gzip stream", id="truncated-gzip"),
    pytest.param(gzip.compress(b'[[[0.5, 0.5], [1]], [2'), "malformed JSON at line 1 column", id="malformed-json"),
    pytest.param(gzip.compress(b'"\xff\xfe"'), "not UTF-8 text inside the gzip", id="not-utf8"),
    pytest.param(gz(good_json()[:2]), "expected a JSON list [train, valid, eval]", id="two-splits"),
    pytest.param(gz({"train": split(3)}), "expected a JSON list [train, valid, eval]", id="an-object"),
    pytest.param(with_split(0, [*split(3), [1]]), "the train split is not a pair [images, labels]", id="not-a-pair"),
    pytest.param(with_split(0, [images(3), "012"]), "the train split's images and labels must be lists",
                 id="labels-not-a-list"),
    pytest.param(with_split(0, [[*images(2), [0.5] * 143], [0, 1, 2]]),
                 "the train split's images are not equal-length lists of numbers", id="ragged-images"),
    pytest.param(with_split(0, [[["a"] * 144] * 2, [0, 1]]),
                 "the train split's images are not equal-length lists of numbers", id="images-not-numbers"),
    pytest.param(with_split(0, [[[0.5] * 10] * 3, [0, 1, 2]]),
                 "the train split's images have 10 values, not a square image", id="non-square-length"),
    pytest.param(with_split(0, [[[0.5] * 9] * 3, [0, 1, 2]]),
                 "the train split's images have 9 values, not a square image", id="too-small-3x3"),
    pytest.param(with_split(0, [[[[0.5] * 12] * 12] * 3, [0, 1, 2]]),
                 "the train split's images must be flat lists of numbers, got shape (3, 12, 12)", id="images-2d"),
    pytest.param(with_split(2, [images(3), [0, 10, 1]]), "the eval split has labels outside 0..9", id="label-10"),
    pytest.param(with_split(0, [images(3), [0, -1, 1]]), "the train split has labels outside 0..9", id="label-neg"),
    pytest.param(with_split(0, [images(3), [0, 1.5, 1]]), "the train split's labels must be whole numbers",
                 id="label-fraction"),
    pytest.param(with_split(0, [images(3), [0, "x", 1]]), "the train split's labels are not numbers",
                 id="label-string"),
    pytest.param(with_split(0, [images(5), [0, 1, 2, 3]]), "the train split has 5 images but 4 labels",
                 id="length-mismatch"),
    pytest.param(with_split(0, [[], []]), "the train split is empty", id="empty-train"),
    pytest.param(with_split(2, [[], []]), "the eval split is empty", id="empty-eval"),
    pytest.param(with_split(2, split(3, 8)), "the train and eval images differ in size", id="eval-other-size"),
    pytest.param(with_split(0, [with_pixel(images(3), 1, 17, float("nan")), [0, 1, 2]]),
                 "the train split's image 1 has NaN at pixel 17 (1 non-finite value in all)", id="nan-pixel"),
    pytest.param(with_split(2, [with_pixel(images(3), 2, 0, float("-inf")), [0, 1, 2]]),
                 "the eval split's image 2 has -inf at pixel 0", id="inf-pixel"),
    pytest.param(with_split(1, [with_pixel(images(3), 0, 5, 1e39), [0, 1, 2]]),
                 "the valid split's image 0 has +inf at pixel 5", id="too-big-for-float32"),
]


def assert_data_error(exc: DataError, named: Path, problem: str) -> None:
    msg = str(exc)
    assert exc.code == ExitCode.BAD_DATA
    assert "\n" not in msg
    assert msg.startswith(f"bad data {named}: "), msg
    assert problem in msg, msg


@pytest.mark.parametrize(("content", "problem"), JSON_CASES)
def test_bad_json_data(tmp_path: Path, content: bytes | None, problem: str) -> None:
    path = tmp_path / "mnist.json.gz"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError) as exc:
        load_source(str(path))
    assert_data_error(exc.value, path, problem)


# -- IDX directories ------------------------------------------------------------------------------------


def idx(arr: np.ndarray, type_code: int = 0x08, ndim: int | None = None, dims: list[int] | None = None) -> bytes:
    """An IDX file: magic 0x0000TTNN, NN big-endian uint32 dimensions, the data."""
    shape = list(arr.shape) if dims is None else dims
    head = bytes([0, 0, type_code, arr.ndim if ndim is None else ndim])
    return head + b"".join(d.to_bytes(4, "big") for d in shape) + arr.tobytes()


def idx_images(n: int, side: int = 28, cols: int | None = None) -> np.ndarray:
    return (np.arange(n * side * (cols or side)) % 256).astype(np.uint8).reshape(n, side, cols or side)


def float_images(n: int, side: int, at: tuple[int, int, int], value: float, dtype: str = ">f4") -> np.ndarray:
    """Float images (IDX type 0x0D or 0x0E) with one bad ``value`` at ``at`` (image, row, column)."""
    x = (np.arange(n * side * side) % 7 / 7).astype(dtype).reshape(n, side, side)
    x[at] = value
    return x


def idx_labels(n: int) -> np.ndarray:
    return (np.arange(n) % 10).astype(np.uint8)


def write_idx_dir(d: Path, files: dict[str, bytes], compress: bool = False) -> Path:
    d.mkdir(exist_ok=True)
    for name, data in files.items():
        if compress:
            (d / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (d / name).write_bytes(data)
    return d


TRAIN_IMG, TRAIN_LAB = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
TEST_IMG, TEST_LAB = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"


def good_idx(n_train: int = 6, n_test: int | None = 4) -> dict[str, bytes]:
    files = {TRAIN_IMG: idx(idx_images(n_train)), TRAIN_LAB: idx(idx_labels(n_train))}
    if n_test is not None:
        files |= {TEST_IMG: idx(idx_images(n_test)), TEST_LAB: idx(idx_labels(n_test))}
    return files


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("n_test", [4, None], ids=["with-t10k", "train-only"])
def test_idx_good_cases(tmp_path: Path, compress: bool, n_test: int | None) -> None:
    d = write_idx_dir(tmp_path / "mnist", good_idx(6, n_test), compress)
    ds = load_source(str(d))
    assert ds.train_x.shape == (6, 1, 28, 28) and ds.train_x.dtype == np.float32
    assert np.array_equal(ds.train_x[:, 0], idx_images(6).astype(np.float32) / 255.0)
    assert ds.train_x.max() == 1.0 and ds.train_x.min() == 0.0
    assert ds.train_y.dtype == np.int64 and ds.train_y.tolist() == idx_labels(6).tolist()
    assert ds.eval_x.shape == ((4 if n_test else 0), 1, 28, 28)
    assert ds.source == str(d)


def test_idx_mixed_plain_and_gz_files(tmp_path: Path) -> None:
    d = write_idx_dir(tmp_path / "mnist", {TRAIN_IMG: idx(idx_images(5))}, compress=True)
    write_idx_dir(d, {TRAIN_LAB: idx(idx_labels(5))})
    assert load_source(str(d)).train_x.shape == (5, 1, 28, 28)


def bad_magic(data: bytes) -> bytes:
    return b"\x08" + data[1:]


# (files to replace in a good directory, or None to delete; the file or directory named; the problem)
IDX_CASES: list = [
    pytest.param({TRAIN_IMG: bad_magic(idx(idx_images(6)))}, TRAIN_IMG, "not an IDX file (bad magic number)",
                 id="bad-magic"),
    pytest.param({TRAIN_LAB: idx(idx_labels(6), type_code=0x07)}, TRAIN_LAB, "not an IDX file (bad magic number)",
                 id="unknown-type-code"),
    pytest.param({TRAIN_LAB: idx(idx_images(6))}, TRAIN_LAB, "expected 1 dimensions, the file has 3",
                 id="images-as-labels"),
    pytest.param({TRAIN_IMG: idx(idx_images(5), dims=[6, 28, 28])}, TRAIN_IMG,
                 "header says [6, 28, 28] (4704 bytes of data) but the file has 3920", id="size-mismatch"),
    pytest.param({TRAIN_IMG: idx(idx_images(6))[:-1]}, TRAIN_IMG, "but the file has 4703", id="truncated-data"),
    pytest.param({TRAIN_IMG: b"\x00\x00\x08\x03\x00\x00"}, TRAIN_IMG, "truncated IDX header", id="truncated-header"),
    pytest.param({TRAIN_IMG: b"\x00\x08"}, TRAIN_IMG, "not an IDX file", id="two-bytes"),
    pytest.param({TRAIN_LAB: None}, ".", "no train-labels-idx1-ubyte[.gz] in the directory", id="missing-labels"),
    pytest.param({TRAIN_IMG: None}, ".", "no train-images-idx3-ubyte[.gz] in the directory", id="missing-images"),
    pytest.param({TEST_LAB: None}, ".", "no t10k-labels-idx1-ubyte[.gz] in the directory", id="missing-t10k-labels"),
    pytest.param({TRAIN_IMG: idx(idx_images(6, 28, 20))}, TRAIN_IMG, "images are 28x20, not square",
                 id="not-square"),
    pytest.param({TRAIN_IMG: idx(idx_images(6, 3)), TEST_IMG: idx(idx_images(4, 3))}, TRAIN_IMG,
                 "images are 3x3, not square (4x4 or more)", id="too-small"),
    pytest.param({TRAIN_LAB: idx(idx_labels(5))}, ".",
                 "has 6 images but train-labels-idx1-ubyte", id="count-mismatch"),
    pytest.param({TRAIN_LAB: idx(np.array([0, 1, 2, 10, 4, 5], np.uint8))}, TRAIN_LAB,
                 "the train split has labels outside 0..9", id="label-out-of-range"),
    pytest.param({TEST_IMG: idx(idx_images(4, 12))}, ".", "the train and t10k images differ in size",
                 id="t10k-other-size"),
    pytest.param({TRAIN_IMG: idx(idx_images(0)), TRAIN_LAB: idx(idx_labels(0))}, TRAIN_LAB,
                 "the train split is empty", id="empty-train"),
    pytest.param({TRAIN_IMG: idx(float_images(6, 28, (4, 3, 7), np.nan), type_code=0x0D)}, TRAIN_IMG,
                 "the train split's image 4 has NaN at pixel (3, 7) (1 non-finite value in all)", id="nan-float32"),
    pytest.param({TEST_IMG: idx(float_images(4, 28, (0, 0, 1), np.inf, ">f8"), type_code=0x0E)}, TEST_IMG,
                 "the t10k split's image 0 has +inf at pixel (0, 1)", id="inf-float64"),
    pytest.param({TRAIN_IMG: idx(float_images(6, 28, (5, 27, 27), 1e300, ">f8"), type_code=0x0E)}, TRAIN_IMG,
                 "the train split's image 5 has +inf at pixel (27, 27)", id="too-big-for-float32"),
]


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize(("changes", "named", "problem"), IDX_CASES)
def test_bad_idx_data(tmp_path: Path, changes: dict, named: str, problem: str, compress: bool) -> None:
    files = good_idx()
    for name, data in changes.items():
        if data is None:
            del files[name]
        else:
            files[name] = data
    d = write_idx_dir(tmp_path / "mnist", files, compress)
    with pytest.raises(DataError) as exc:
        load_source(str(d))
    path = d if named == "." else d / (named + (".gz" if compress else ""))
    assert_data_error(exc.value, path, problem)


def test_idx_gz_that_is_not_gzip(tmp_path: Path) -> None:
    d = write_idx_dir(tmp_path / "mnist", good_idx(n_test=None))
    (d / TRAIN_IMG).rename(d / (TRAIN_IMG + ".gz"))  # uncompressed bytes under a .gz name
    with pytest.raises(DataError) as exc:
        load_source(str(d))
    assert_data_error(exc.value, d / (TRAIN_IMG + ".gz"), "not a valid gzip file")


# -- the default digits and the cache -------------------------------------------------------------------


def test_default_digits_split() -> None:
    ds = load_source(None)
    assert ds.train_x.shape == (1500, 1, 8, 8) and ds.eval_x.shape == (297, 1, 8, 8)
    assert ds.train_x.dtype == np.float32 and ds.train_x.min() >= 0.0 and ds.train_x.max() == 1.0
    assert ds.train_y.dtype == np.int64 and set(ds.train_y.tolist()) == set(range(10))
    assert ds.source == "builtin:sklearn-digits"
    again = load_source(None)  # the split is fixed, not drawn anew
    assert np.array_equal(again.train_x, ds.train_x) and np.array_equal(again.eval_y, ds.eval_y)


def assert_same(a: Dataset, b: Dataset) -> None:
    for f in ("train_x", "train_y", "eval_x", "eval_y"):
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype and np.array_equal(x, y), f
    assert a.source == b.source


def forbid_load_source(monkeypatch: pytest.MonkeyPatch) -> list:
    calls: list = []

    def fail(data: str | None) -> Dataset:
        calls.append(data)
        raise AssertionError("load_source called although the cache is valid")

    monkeypatch.setattr(md, "load_source", fail)
    return calls


def test_prepare_caches_the_default_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = prepare(None, tmp_path)
    assert (tmp_path / CACHE).is_file()
    assert first.train_x.shape == (1500, 1, 8, 8)
    forbid_load_source(monkeypatch)
    assert_same(prepare(None, tmp_path), first)


def counting_load_source(monkeypatch: pytest.MonkeyPatch) -> list:
    calls: list = []
    real = md.load_source

    def count(data: str | None) -> Dataset:
        calls.append(data)
        return real(data)

    monkeypatch.setattr(md, "load_source", count)
    return calls


def test_prepare_rebuilds_the_cache_when_the_source_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = write(tmp_path / "d.json.gz", gz(good_json()))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    calls = counting_load_source(monkeypatch)
    assert prepare(str(src), run_dir).train_x.shape == (20, 1, SIDE, SIDE)
    assert prepare(str(src), run_dir).train_x.shape == (20, 1, SIDE, SIDE)
    assert calls == [str(src)]
    write(src, gz([split(30), split(3), split(6)]))  # new data in place of the old
    assert prepare(str(src), run_dir).train_x.shape == (30, 1, SIDE, SIDE)
    assert len(calls) == 2


def flip_inside(raw: bytes) -> bytes:
    b = bytearray(raw)
    b[len(b) // 2] ^= 0x10  # inside an array's bytes: the zip member's CRC no longer matches
    return bytes(b)


CACHE_DAMAGE = [
    pytest.param(lambda raw: b"", id="empty"),  # e.g. renamed but never flushed before a power cut
    pytest.param(lambda raw: raw[: len(raw) // 2], id="truncated"),
    pytest.param(flip_inside, id="flipped-byte"),
    pytest.param(lambda raw: b"PK\x03\x04 not really a zip", id="bad-zip"),
    pytest.param(lambda raw: b"\x93NUMPY garbage", id="bad-npy"),
]


@pytest.mark.parametrize("damage", CACHE_DAMAGE)
def test_prepare_rebuilds_a_damaged_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: Callable[[bytes], bytes]
) -> None:
    src = write(tmp_path / "d.json.gz", gz(good_json()))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    first = prepare(str(src), run_dir)
    cache = run_dir / CACHE
    cache.write_bytes(damage(cache.read_bytes()))
    calls = counting_load_source(monkeypatch)
    assert_same(prepare(str(src), run_dir), first)
    assert calls == [str(src)]
    forbid_load_source(monkeypatch)
    assert_same(prepare(str(src), run_dir), first)  # and the rebuilt cache is used next time


def test_prepare_reports_bad_data_and_leaves_no_cache(tmp_path: Path) -> None:
    src = write(tmp_path / "d.json.gz", with_split(0, [images(3), [0, 11, 1]]))
    with pytest.raises(DataError):
        prepare(str(src), tmp_path)
    assert not (tmp_path / CACHE).exists()


# -- what the user sees from `python -m model` ----------------------------------------------------------


def assert_one_line_error(p, code: ExitCode, start: str, *parts: str) -> str:
    assert p.returncode == code, describe(p)
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout, describe(p)
    lines = p.stderr.splitlines()
    assert len(lines) == 1, describe(p)
    assert lines[0].startswith(start), describe(p)
    for part in parts:
        assert part in lines[0], describe(p)
    return lines[0]


BAD_DATA_CLI: list[Callable[[Path], tuple[Path, str]]] = [
    pytest.param(lambda d: (d / "missing.json.gz", "no such file or directory"), id="missing"),
    pytest.param(lambda d: (write(d / "t.json.gz", gz(good_json())[:100]), "truncated or damaged gzip stream"),
                 id="truncated-gzip"),
    pytest.param(lambda d: (write(d / "nan.json.gz", with_split(0, [with_pixel(images(20), 7, 3, float("nan")),
                                                                     [i % 10 for i in range(20)]])),
                            "the train split's image 7 has NaN at pixel 3"), id="one-nan-pixel"),
]


@pytest.mark.parametrize("make", BAD_DATA_CLI)
def test_cli_bad_data_is_one_line_and_exit_65(tmp_path: Path, make) -> None:
    data, problem = make(tmp_path)
    p = run_job(tmp_path / "run", "--epochs", 1, "--data", data)
    assert_one_line_error(p, ExitCode.BAD_DATA, "error: bad data", str(data), problem)
    assert not (tmp_path / "run" / CACHE).exists()


def test_cli_run_dir_under_a_regular_file_is_exit_73(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    run_dir = tmp_path / "file" / "run"
    p = run_job(run_dir, "--epochs", 1)
    assert_one_line_error(p, ExitCode.UNWRITABLE, "error: run directory", str(run_dir), "not writable")


def test_cli_second_worker_on_a_live_run_dir_is_exit_69(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    fd = os.open(run_dir / WORKER_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a live worker holds it
        p = run_job(run_dir, "--epochs", 1)
        assert_one_line_error(p, ExitCode.LOCKED, "error: run directory", str(run_dir), "in use by another worker")
    finally:
        os.close(fd)
    assert sorted(x.name for x in run_dir.iterdir()) == [WORKER_LOCK]  # the live run was not touched


def test_cli_run_dir_bound_to_another_config_is_exit_78(tmp_path: Path) -> None:
    data = write(tmp_path / "tiny.json.gz", gz(good_json()))
    run_dir = tmp_path / "run"
    p = run_job(run_dir, "--epochs", 1, "--data", data)  # 20 images: one step
    assert p.returncode == 0, describe(p)
    assert [r["step"] for r in losses(run_dir)] == [0] and final(run_dir)["steps"] == 1
    job = (run_dir / JOB).read_bytes()

    p = run_job(run_dir, "--epochs", 2, "--data", data)
    assert_one_line_error(p, ExitCode.BAD_CONFIG, "error: ", "epochs=1", "not 2", "--run-dir")
    assert (run_dir / JOB).read_bytes() == job
    assert len(losses(run_dir)) == 1


def test_cli_run_dir_with_a_damaged_job_file_is_exit_78(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / JOB).write_text('{"job": "mnist-cnn", "epo')
    p = run_job(run_dir, "--epochs", 1)
    assert_one_line_error(p, ExitCode.BAD_CONFIG, "error: ", str(run_dir / JOB), "not valid JSON")


def test_without_the_finite_check_nan_data_would_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the NaN cases above refuse would otherwise load, and train to NaN weights."""
    src = write(tmp_path / "nan.json.gz", with_split(0, [with_pixel(images(3), 1, 17, float("nan")), [0, 1, 2]]))
    monkeypatch.setattr(md, "_check_finite", lambda path, x, split: None)
    assert np.isnan(load_source(str(src)).train_x).sum() == 1
