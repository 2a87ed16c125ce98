"""Seeded random train/test/val splits.

HARRISON ships no split, and its `data_list.txt` is ordered by seed-tag folder, so "the last
5,000 lines" would be a test set of a few folders. A split is a seeded permutation instead:
the same seed and size give the same split, byte for byte, on any machine. The permutation is
Python's `random.Random(seed).shuffle` (Mersenne Twister, whose `random()` stream Python
guarantees across versions); it is also what the reference popularity figures in
shared/README were measured with (P@1 10.0%, R@5 8.4%, A@5 26.8% on HARRISON, seed 0). The
store keeps the split array and its sha256 anyway, so a stored split never depends on this.
"""

from __future__ import annotations

import math
import random

import numpy as np

from hashtagkit.errors import InputError
from hashtagkit.stores import SPLIT_CODES

METHOD = "random.Random(seed).shuffle(list(range(n))): first test_size rows test, next val_size val, rest train"


def random_split(n: int, test_size: int, val_size: int = 0, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Return (split codes of length n, a description to record in the store)."""
    if test_size < 0 or val_size < 0:
        raise InputError("{opt:test_size} and {opt:val_size} must not be negative")
    if test_size + val_size >= n:
        raise InputError(
            f"{{opt:test_size}} {test_size} + {{opt:val_size}} {val_size} leaves no training rows out of {n}"
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    perm = np.asarray(order, dtype=np.int64)
    split = np.full(n, SPLIT_CODES["train"], dtype=np.uint8)
    split[perm[:test_size]] = SPLIT_CODES["test"]
    split[perm[test_size : test_size + val_size]] = SPLIT_CODES["val"]
    info = {"seed": int(seed), "method": METHOD, "test_size": int(test_size), "val_size": int(val_size)}
    return split, info


def size_problem(size: object) -> str | None:
    """What is wrong with a split size, or None: "range" for anything but a finite number >= 0,
    "whole" for a number from 1 up that is not a whole row count. Below 1 a size is a fraction of
    the rows (`0.1`), from 1 up a row count (`5000`): the one rule behind `--test-size` and
    `test_size=`."""
    if isinstance(size, bool) or not isinstance(size, int | float) or not math.isfinite(size) or size < 0:
        return "range"
    if size >= 1 and size != int(size):
        return "whole"
    return None


def resolve_size(size: int | float, n: int, name: str = "test_size") -> int:
    """A split size as a row count of `n` rows; a size `size_problem` refuses is an InputError
    naming `name`."""
    problem = size_problem(size)
    if problem == "range":
        raise InputError(f"{name} must be a row count >= 0 or a fraction below 1, got {size!r}")
    if problem == "whole":
        raise InputError(f"{name} {size!r}: from 1 up a size is a whole row count; a fraction is below 1")
    return int(round(size * n)) if 0 < size < 1 else int(size)


def sized_split(n: int, test_size: int | float, val_size: int | float, seed: int) -> tuple[np.ndarray, dict]:
    """`random_split` with sizes given as fractions or row counts (`resolve_size`)."""
    return random_split(n, resolve_size(test_size, n, "test_size"), resolve_size(val_size, n, "val_size"), seed)
