"""Input checks shared by the heads and by `TrainingData`, without scikit-learn or torch.

A module of its own so that `heads.base` (the head protocol) and `heads.data` (what a head
reads) both import it and neither imports the other: the non-finite check is one definition,
used when a store's block is read, when a run scores rows and when a head is given arrays.
"""

from __future__ import annotations

import numpy as np

from hashtagkit.errors import InputError


class UnsupportedInputError(TypeError, ValueError):
    """Input of a kind no head can take (sparse features, an object array holding something
    other than numbers). A ValueError, like every other input error of a head; a TypeError too,
    since scikit-learn raises one for a wrong kind of input and its estimator checks expect it."""


def nonfinite_rows(A: np.ndarray, batch: int = 8192) -> np.ndarray:
    """Indices of rows holding NaN or inf, checked in row batches (a float16 feature matrix
    is never expanded whole into a boolean copy)."""
    if not np.issubdtype(A.dtype, np.floating) and not np.issubdtype(A.dtype, np.complexfloating):
        return np.zeros(0, dtype=np.int64)
    bad = [start + np.flatnonzero(~np.isfinite(A[start : start + batch]).all(axis=1))
           for start in range(0, len(A), batch)]
    return np.concatenate(bad) if bad else np.zeros(0, dtype=np.int64)


def refuse_nonfinite_features(store_path, rows: np.ndarray, X: np.ndarray) -> np.ndarray:
    """X, or the one-line error naming the store rows (`rows[i]` is X[i]'s row) whose features
    hold NaN or inf: what training, evaluation and a TrainingData's block reads all say."""
    bad = nonfinite_rows(X)  # in row batches: no N x D boolean copy
    if len(bad):
        named = ", ".join(str(r) for r in np.asarray(rows)[bad][:10].tolist())
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise InputError(f"store {store_path}: rows {named}{more} have non-finite features (NaN/inf); "
                         "re-extract them (e.g. with {opt:precision} fp32) or drop them")
    return X


def check_finite(A: np.ndarray, what: str) -> None:
    """A ValueError naming the first rows of `A` (2-d) that hold NaN or inf: a NaN in X or Y would
    otherwise train a model that scores NaN, or a kNN index that answers nonsense."""
    rows = nonfinite_rows(A)
    if len(rows):
        shown = ", ".join(map(str, rows[:5])) + (", ..." if len(rows) > 5 else "")
        raise ValueError(f"{what} has NaN or inf in {len(rows)} row(s): {shown}")
