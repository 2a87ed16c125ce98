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

import random

import numpy as np

from hashtagkit.errors import InputError
from hashtagkit.stores import SPLIT_CODES

METHOD = "random.Random(seed).shuffle(list(range(n))): first test_size rows test, next val_size val, rest train"


def random_split(n: int, test_size: int, val_size: int = 0, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Return (split codes of length n, a description to record in the store)."""
    if test_size < 0 or val_size < 0:
        raise InputError("--test-size and --val-size must not be negative")
    if test_size + val_size >= n:
        raise InputError(
            f"--test-size {test_size} + --val-size {val_size} leaves no training rows out of {n}"
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    perm = np.asarray(order, dtype=np.int64)
    split = np.full(n, SPLIT_CODES["train"], dtype=np.uint8)
    split[perm[:test_size]] = SPLIT_CODES["test"]
    split[perm[test_size : test_size + val_size]] = SPLIT_CODES["val"]
    info = {"seed": int(seed), "method": METHOD, "test_size": int(test_size), "val_size": int(val_size)}
    return split, info
