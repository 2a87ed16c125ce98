"""Score thresholds that maximise F1 on validation rows: how many hashtags a photo gets.

Top-K gives every photo K hashtags, whether it shows one thing or ten. A threshold returns the
hashtags whose score reaches it, a variable number. Two kinds:

- global: one value for every class, the one with the best micro F1 over every (photo,
  hashtag) decision of the validation rows;
- per-tag: for each class the value with the best F1 of that class; a class with fewer than
  `min_positives` validation positives keeps the global value (a threshold fitted to one or two
  photos would be noise).

A chosen threshold lies halfway between the lowest score it keeps and the next lower score, so
a score on the validation rows is never on the edge. Exact search: every distinct score of the
validation rows is a candidate (sorted once, F1 from cumulative counts: O(n log n)), tested
against scikit-learn's f1_score at every candidate.
"""

from __future__ import annotations

import numpy as np

THRESHOLDS = ("none", "global", "per-tag")
MIN_POSITIVES = 5
CLASSES_AT_ONCE = 256  # per-tag search: (rows, 256) sorted at a time


def _best_cut(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each column: the threshold with the best F1 of `score >= t` and that F1.

    Columns are sorted descending; at the end of each group of tied scores the F1 of keeping
    everything down to it is 2 TP / (kept + positives); the first best (the highest threshold,
    the fewest hashtags) wins. A column without positives gets +inf (keep nothing), F1 0."""
    s = np.asarray(scores, dtype=np.float64)
    n, c = s.shape
    order = np.argsort(-s, axis=0, kind="stable")
    ss = np.take_along_axis(s, order, axis=0)
    yy = np.take_along_axis(np.asarray(labels, bool), order, axis=0)
    tp = np.cumsum(yy, axis=0, dtype=np.int64)
    positives = tp[-1]
    kept = np.arange(1, n + 1)[:, None]
    end = np.ones((n, c), bool)
    end[:-1] = ss[:-1] != ss[1:]  # the last of a tie group: a threshold cannot split ties
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(end, 2 * tp / (kept + positives), -1.0)
    best = np.argmax(f1, axis=0)
    cols = np.arange(c)
    lower = np.where(best + 1 < n, ss[np.minimum(best + 1, n - 1), cols], -np.inf)
    t = np.where(np.isfinite(lower), (ss[best, cols] + lower) / 2, ss[best, cols])
    t = np.where(positives > 0, t, np.inf)
    return t, np.where(positives > 0, f1[best, cols], 0.0)


def global_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(t, micro F1 at t): the one threshold for every class with the best micro F1."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1, 1)
    t, f1 = _best_cut(s, np.asarray(labels, bool).reshape(-1, 1))
    return float(t[0]), float(f1[0])


def per_tag_thresholds(scores: np.ndarray, labels: np.ndarray, fallback: float,
                       min_positives: int = MIN_POSITIVES) -> tuple[np.ndarray, np.ndarray]:
    """(thresholds (C,), which classes kept `fallback` because they have fewer than
    `min_positives` validation positives)."""
    scores, labels = np.asarray(scores), np.asarray(labels, bool)
    c = scores.shape[1]
    t = np.empty(c, dtype=np.float64)
    for a in range(0, c, CLASSES_AT_ONCE):
        t[a : a + CLASSES_AT_ONCE] = _best_cut(scores[:, a : a + CLASSES_AT_ONCE], labels[:, a : a + CLASSES_AT_ONCE])[0]
    few = labels.sum(axis=0) < min_positives
    t[few] = fallback
    return t, few


def choose_thresholds(kind: str, scores: np.ndarray, labels: np.ndarray,
                      min_positives: int = MIN_POSITIVES) -> tuple[np.ndarray, dict]:
    """One threshold per class for `kind` ("global" or "per-tag") and what was chosen: the
    global value, the validation micro/macro F1 and, per-tag, how many classes kept the global
    value."""
    from hashtagkit import metrics

    if kind not in THRESHOLDS[1:]:
        raise ValueError(f"threshold must be one of {', '.join(THRESHOLDS[1:])}, got {kind!r}")
    t_global, _ = global_threshold(scores, labels)
    c = np.asarray(scores).shape[1]
    record: dict = {"kind": kind, "global": t_global if np.isfinite(t_global) else None}
    if kind == "global":
        thresholds = np.full(c, t_global)
    else:
        thresholds, few = per_tag_thresholds(scores, labels, t_global, min_positives)
        record.update(min_positives=min_positives, classes_on_global=int(few.sum()))
    at = metrics.f1_at_threshold(scores, labels, thresholds)
    record.update({f"val_{k}": round(v, 6) for k, v in at.items()})
    return thresholds, record
