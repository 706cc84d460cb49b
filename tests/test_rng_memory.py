"""Reading RNG states from the generators' memory: NumPy's and Python's readers agree with their APIs
on this interpreter, Paddle's text and pickle forms parse as tables of stand-in states say, and every
reader refuses what does not check out. Paddle's real generators are covered where snapshots are
tested (``RngSnapshots``); nothing here imports Paddle."""

from __future__ import annotations

import ctypes
import random
from typing import Any

import numpy as np
import pytest

from checkpoint.rng_memory import (
    MT_BYTES,
    PY_WORDS,
    mt19937_raw,
    paddle_listed,
    paddle_printed,
    paddle_raw_ok,
    python_internal_from_raw,
    python_raw,
    read_memory,
)


class Printed:
    """A stand-in generator state that prints as given."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


PRINTED: dict[str, tuple[str, tuple[list[int], bytes] | None]] = {
    # name: (what the state prints, what paddle_printed reads)
    "device, seed, offset, engine and its text": ("0 42 7 0x55aa 1 2 3 624", ([0, 42, 7], b"1 2 3 624")),
    "a negative device": ("-1 5 0 0x1 9", ([-1, 5, 0], b"9")),
    "no engine address": ("0 42 7 55aa 1 2 3", None),
    "too few parts": ("0 42 0x55aa", None),
    "a seed that is not a number": ("0 x 7 0x55aa 1", None),
    "text beyond ASCII": ("0 1 2 0x3 \u00e9", None),
}


@pytest.mark.parametrize("case", list(PRINTED))
def test_paddle_printed_reads_only_the_form_it_knows(case: str) -> None:
    text, want = PRINTED[case]
    assert paddle_printed(Printed(text)) == want


class Pickled:
    def __init__(self, chars: list[int]) -> None:
        self.chars = chars

    def __getstate__(self) -> tuple[int, int, int, list[int]]:
        return 0, 42, 7, self.chars


@pytest.mark.parametrize(("chars", "dtype"), [([49, 32, 50], np.uint8), ([49, 300, 50], np.int64), ([], np.uint8)])
def test_paddle_listed_keeps_text_as_bytes_and_anything_else_as_int64(chars: list[int], dtype: Any) -> None:
    head, arr = paddle_listed(Pickled(chars))
    assert head == [0, 42, 7] and arr.dtype == dtype and arr.tolist() == chars


def test_read_memory_reads_mapped_memory_and_nothing_elsewhere() -> None:
    buf = ctypes.create_string_buffer(b"0123456789", 10)
    assert read_memory(ctypes.addressof(buf), 10) == b"0123456789"
    assert read_memory(ctypes.addressof(buf) + 2, 3) == b"234"
    assert read_memory(0, 8) is None
    assert read_memory(-1, 8) is None


@pytest.mark.parametrize("state", [object(), Printed("0 1 2 0x10 " + " ".join(["5"] * 313)), Printed("")],
                         ids=["an object", "the right form over the wrong memory", "nothing printed"])
def test_paddle_raw_ok_refuses_what_is_not_a_paddle_generator_state(state: object) -> None:
    assert paddle_raw_ok(state) is False


def test_numpys_mt19937_memory_reads_as_get_state() -> None:
    np.random.seed(3)
    np.random.rand(7)
    found = mt19937_raw()
    assert found is not None  # this NumPy's layout checks out
    bitgen, raw = found
    assert bitgen is np.random.mtrand.get_bit_generator() and raw.nbytes == MT_BYTES
    _, keys, pos, _, _ = np.random.get_state(legacy=True)
    assert raw[: 624 * 4].view(np.uint32).tolist() == keys.tolist()
    np.random.rand(1)  # a view: it moves with the generator
    assert int(raw[624 * 4 :].view(np.int32)[0]) == np.random.get_state(legacy=True)[2] != pos


@pytest.mark.parametrize("move", [lambda: None, random.random, lambda: random.getrandbits(30_000),
                                  lambda: random.seed(5)], ids=["nothing", "a draw", "many draws", "a reseed"])
def test_pythons_random_memory_reads_as_getstate(move: Any) -> None:
    found = python_raw()
    assert found is not None  # CPython: the layout checks out
    inst, raw = found
    move()
    internal = python_internal_from_raw(raw.tobytes())
    assert inst is getattr(random.getstate, "__self__", None)
    assert len(internal) == PY_WORDS + 1 and not internal.flags.writeable
    assert internal.tolist() == list(random.getstate()[1])
