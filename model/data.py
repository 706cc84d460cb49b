"""Training data from three sources behind one loader, prepared once per run directory.

* default: scikit-learn's bundled handwritten digits (1,797 real 8x8 scans), fixed split 1500/297;
* ``FILE.json.gz``: the classic tutorial format, a JSON list ``[train, valid, eval]`` of
  ``[images, labels]`` with each image a flat list of ``side*side`` floats;
* a directory of IDX files as MNIST and Fashion-MNIST ship them (``train-images-idx3-ubyte[.gz]``,
  ``train-labels-idx1-ubyte[.gz]`` and optionally ``t10k-*`` for evaluation).

The prepared arrays are cached as ``RUN_DIR/data.npz``, keyed by the source, so a restarted worker
loads them with NumPy alone. Every problem with the data raises :class:`DataError`, one line naming
the file and what is wrong; that includes images with a NaN or an infinity, named by the first
bad image and pixel.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rundir.errors import writing
from rundir.exitcodes import ExitCode, UserError

__all__ = ["Dataset", "DataError", "prepare", "source_id", "cache_key", "load_source", "CACHE", "NUM_CLASSES"]

CACHE = "data.npz"
NUM_CLASSES = 10
DIGITS = "builtin:sklearn-digits"
DIGITS_TRAIN = 1500


class DataError(UserError):
    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"bad data {path}: {problem}", ExitCode.BAD_DATA)


@dataclass(frozen=True)
class Dataset:
    train_x: np.ndarray  # (N, 1, side, side) float32
    train_y: np.ndarray  # (N,) int64
    eval_x: np.ndarray
    eval_y: np.ndarray
    source: str

    @property
    def side(self) -> int:
        return int(self.train_x.shape[-1])


def source_id(data: str | None) -> str:
    """A stable name for the data source, recorded in the run's configuration."""
    return DIGITS if data is None else str(Path(data).resolve())


def cache_key(data: str | None) -> str:
    if data is None:
        return DIGITS
    p = Path(data).resolve()
    try:
        st = p.stat()
    except OSError:
        return str(p)
    if p.is_dir():
        parts = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(p.iterdir()) if f.is_file()]
        return f"{p}|{parts}"
    return f"{p}|{st.st_size}|{st.st_mtime_ns}"


def _check_finite(path: object, x: np.ndarray, split: str) -> None:
    """Refuse images with a NaN or an infinity (in the source, or a value too big for float32): one
    would train to NaN weights and still "complete"."""
    bad = ~np.isfinite(x)
    if bad.any():
        where = np.argwhere(bad)[0]
        image, pixel = int(where[0]), tuple(int(i) for i in where[1:])
        value = float(x[tuple(where)])
        shown = "NaN" if math.isnan(value) else "+inf" if value > 0 else "-inf"
        at = f"pixel {pixel[0]}" if len(pixel) == 1 else f"pixel {pixel}"
        n = int(bad.sum())
        raise DataError(path, f"the {split} split's image {image} has {shown} at {at} "
                              f"({n} non-finite value{'s' if n != 1 else ''} in all)")


def _check(path: object, x: np.ndarray, y: np.ndarray, split: str) -> None:
    if len(x) == 0:
        raise DataError(path, f"the {split} split is empty")
    if len(x) != len(y):
        raise DataError(path, f"the {split} split has {len(x)} images but {len(y)} labels")
    if y.size and (y.min() < 0 or y.max() >= NUM_CLASSES):
        raise DataError(path, f"the {split} split has labels outside 0..{NUM_CLASSES - 1}")


def _digits() -> Dataset:
    from sklearn.datasets import load_digits  # slow import: only when preparing the default data

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    tr, ev = order[:DIGITS_TRAIN], order[DIGITS_TRAIN:]
    return Dataset(x[tr], y[tr], x[ev], y[ev], DIGITS)


def _json_split(path: Path, split: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    if not (isinstance(split, list) and len(split) == 2):
        raise DataError(path, f"the {name} split is not a pair [images, labels]")
    images, labels = split
    if not isinstance(images, list) or not isinstance(labels, list):
        raise DataError(path, f"the {name} split's images and labels must be lists")
    if len(images) == 0:
        raise DataError(path, f"the {name} split is empty")
    if len(images) != len(labels):
        raise DataError(path, f"the {name} split has {len(images)} images but {len(labels)} labels")
    try:
        with np.errstate(over="ignore"):  # a value too big for float32 becomes inf, refused below
            x = np.asarray(images, dtype=np.float32)
    except (ValueError, TypeError):
        raise DataError(path, f"the {name} split's images are not equal-length lists of numbers") from None
    if x.ndim != 2:
        raise DataError(path, f"the {name} split's images must be flat lists of numbers, got shape {x.shape}")
    side = math.isqrt(x.shape[1])
    if side * side != x.shape[1] or side < 4:
        raise DataError(path, f"the {name} split's images have {x.shape[1]} values, not a square image")
    try:
        y = np.asarray(labels, dtype=np.float64)
    except (ValueError, TypeError):
        raise DataError(path, f"the {name} split's labels are not numbers") from None
    if y.ndim != 1 or not np.all(y == np.round(y)):
        raise DataError(path, f"the {name} split's labels must be whole numbers")
    y64 = y.astype(np.int64)
    _check(path, x, y64, name)
    _check_finite(path, x, name)
    return x.reshape(-1, 1, side, side), y64


def _from_json(path: Path) -> Dataset:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DataError(path, "no such file") from None
    except IsADirectoryError:
        raise DataError(path, "is a directory") from None
    except PermissionError:
        raise DataError(path, "permission denied") from None
    except gzip.BadGzipFile:
        raise DataError(path, "not a gzip file") from None
    except (EOFError, zlib.error):
        raise DataError(path, "truncated or damaged gzip stream") from None
    except UnicodeDecodeError:
        raise DataError(path, "not UTF-8 text inside the gzip") from None
    except json.JSONDecodeError as exc:
        raise DataError(path, f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not (isinstance(data, list) and len(data) == 3):
        raise DataError(path, "expected a JSON list [train, valid, eval]")
    train = _json_split(path, data[0], "train")
    _json_split(path, data[1], "valid")
    ev = _json_split(path, data[2], "eval")
    if train[0].shape[1:] != ev[0].shape[1:]:
        raise DataError(path, "the train and eval images differ in size")
    return Dataset(train[0], train[1], ev[0], ev[1], str(path))


_IDX_TYPES: dict[int, str | type] = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error):
        raise DataError(path, "not a valid gzip file") from None
    except OSError as exc:
        raise DataError(path, exc.strerror or "cannot read") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(path, "not an IDX file (bad magic number)")
    if raw[3] != ndim:
        raise DataError(path, f"expected {ndim} dimensions, the file has {raw[3]}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(path, "truncated IDX header")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    want = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != want:
        raise DataError(path, f"header says {dims} ({want} bytes of data) but the file has {len(raw) - header}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _find(d: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (d / name).is_file():
            return d / name
    return None


def _idx_pair(d: Path, prefix: str, required: bool) -> tuple[np.ndarray, np.ndarray] | None:
    img_p, lab_p = _find(d, f"{prefix}-images-idx3-ubyte"), _find(d, f"{prefix}-labels-idx1-ubyte")
    if img_p is None or lab_p is None:
        if required or img_p is not None or lab_p is not None:
            missing = f"{prefix}-images-idx3-ubyte" if img_p is None else f"{prefix}-labels-idx1-ubyte"
            raise DataError(d, f"no {missing}[.gz] in the directory")
        return None
    images, labels = _read_idx(img_p, 3), _read_idx(lab_p, 1)
    if images.shape[1] != images.shape[2] or images.shape[1] < 4:
        raise DataError(img_p, f"images are {images.shape[1]}x{images.shape[2]}, not square (4x4 or more)")
    if len(images) != len(labels):
        raise DataError(d, f"{img_p.name} has {len(images)} images but {lab_p.name} has {len(labels)} labels")
    with np.errstate(over="ignore"):  # as for JSON: inf, refused below
        x = images.astype(np.float32)
    if images.dtype == np.uint8:
        x /= 255.0
    y = labels.astype(np.int64)
    _check(lab_p, x, y, prefix)
    _check_finite(img_p, x, prefix)
    return x.reshape(-1, 1, x.shape[1], x.shape[2]), y


def _from_idx(d: Path) -> Dataset:
    train = _idx_pair(d, "train", required=True)
    assert train is not None
    ev = _idx_pair(d, "t10k", required=False)
    if ev is None:
        ev = (train[0][:0], train[1][:0])
    elif ev[0].shape[1:] != train[0].shape[1:]:
        raise DataError(d, "the train and t10k images differ in size")
    return Dataset(train[0], train[1], ev[0], ev[1], str(d))


def load_source(data: str | None) -> Dataset:
    """Parse a data source from scratch (slow for JSON and the default): use :func:`prepare`."""
    if data is None:
        return _digits()
    p = Path(data)
    if p.is_dir():
        return _from_idx(p)
    if not p.exists():
        raise DataError(p, "no such file or directory")
    return _from_json(p)


def prepare(data: str | None, run_dir: Path) -> Dataset:
    """Load the prepared arrays from the run directory, preparing and caching them the first time."""
    cache = Path(run_dir) / CACHE
    key = cache_key(data)
    if cache.exists():
        try:
            with np.load(cache, allow_pickle=False) as z:
                if str(z["key"]) == key:
                    return Dataset(z["train_x"], z["train_y"], z["eval_x"], z["eval_y"], str(z["source"]))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
            pass  # a damaged cache is rebuilt from the source
    ds = load_source(data)
    tmp = cache.with_name(f".{CACHE}.tmp-{os.getpid()}.npz")
    with writing(cache):
        try:
            np.savez(tmp, key=key, source=ds.source, train_x=ds.train_x, train_y=ds.train_y,
                     eval_x=ds.eval_x, eval_y=ds.eval_y)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a full disk: leave no partial file taking space
            raise
        os.replace(tmp, cache)
    return ds
