"""Score thresholds that maximise F1 on validation rows: how many hashtags a photo gets.

Top-K gives every photo K hashtags, whether it shows one thing or ten. A threshold returns the
hashtags whose score reaches it, a variable number. Two kinds, both judged by micro F1 over
every (photo, hashtag) decision of the validation rows:

- global: one value for every class, the one with the best micro F1;
- per-tag: one value per class, found by coordinate ascent from the global one: class by class,
  the threshold that gives the best micro F1 with every other class's threshold held (exact over
  every cut of that class, keeping none included), for a few sweeps, so the validation micro F1
  never falls below the global threshold's. A class with fewer than `min_positives` validation
  positives keeps the global value (a threshold fitted to one or two photos is noise).

Why not each class's own best F1: for a hashtag the head cannot predict, returning it for every
photo has F1 2p/(1+p) > 0 (p its frequency), more than never returning it. On the planted
HARRISON-size store, per-class-F1 thresholds returned 84 hashtags a photo at micro F1 2.3%
(benchmarks/results/beyond/options_planted.md); the coordinate ascent keeps such a class at a
threshold that returns it rarely or never.

A chosen threshold lies halfway between the lowest score it keeps and the next lower score, so
a score on the validation rows is never on the edge (+inf: keep none). Exact search: every
distinct score is a candidate (sorted once, F1 from cumulative counts: O(n log n)), tested
against scikit-learn's f1_score at every candidate.
"""

from __future__ import annotations

import numpy as np

from hashtagkit.choices import THRESHOLDS

MIN_POSITIVES = 5
SWEEPS = 3  # coordinate-ascent passes over the classes (the second rarely changes much)


def _best_cut(scores: np.ndarray, labels: np.ndarray, tp_rest: np.ndarray | float = 0,
              denom_rest: np.ndarray | float = 0) -> tuple[np.ndarray, np.ndarray]:
    """For each column: the threshold with the best micro F1 of `score >= t` and that F1, where
    the other decisions already count `tp_rest` true positives and `denom_rest` = 2 TP + FP + FN
    (0 and 0: the column's own F1). Keeping the top k rows of a column with P positives,
    tp_k of them right: F1 = 2 (tp_rest + tp_k) / (denom_rest + k + P).

    Columns are sorted descending; only the last row of a group of tied scores is a cut (a
    threshold cannot split ties); keeping none (k = 0, threshold +inf) is a candidate too and
    wins ties, as does the first best cut (the fewest hashtags). A column whose every candidate
    has F1 0 keeps none."""
    s = np.asarray(scores, dtype=np.float64)
    n, c = s.shape
    order = np.argsort(-s, axis=0, kind="stable")
    ss = np.take_along_axis(s, order, axis=0)
    yy = np.take_along_axis(np.asarray(labels, bool), order, axis=0)
    tp = np.cumsum(yy, axis=0, dtype=np.int64)
    positives = tp[-1]
    tp_rest = np.broadcast_to(np.asarray(tp_rest, dtype=np.float64), (c,))
    denom_rest = np.broadcast_to(np.asarray(denom_rest, dtype=np.float64), (c,))
    kept = np.arange(1, n + 1)[:, None]
    end = np.ones((n, c), bool)
    end[:-1] = ss[:-1] != ss[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(end, 2 * (tp_rest + tp) / (denom_rest + kept + positives), -1.0)
        none = np.where(denom_rest + positives > 0, 2 * tp_rest / (denom_rest + positives), 0.0)
    best = np.argmax(f1, axis=0)
    cols = np.arange(c)
    lower = np.where(best + 1 < n, ss[np.minimum(best + 1, n - 1), cols], -np.inf)
    t = np.where(np.isfinite(lower), (ss[best, cols] + lower) / 2, ss[best, cols])
    best_f1 = f1[best, cols]
    keep_none = (none >= best_f1) | (best_f1 <= 0)
    return np.where(keep_none, np.inf, t), np.where(keep_none, none, best_f1)


def global_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(t, micro F1 at t): the one threshold for every class with the best micro F1."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1, 1)
    t, f1 = _best_cut(s, np.asarray(labels, bool).reshape(-1, 1))
    return float(t[0]), float(f1[0])


def per_tag_thresholds(scores: np.ndarray, labels: np.ndarray, start: float, min_positives: int = MIN_POSITIVES,
                       sweeps: int = SWEEPS) -> tuple[np.ndarray, np.ndarray]:
    """(thresholds (C,), which classes kept `start` because they have fewer than
    `min_positives` validation positives): coordinate ascent on micro F1 from `start` (the
    global threshold), at most `sweeps` passes over the classes, stopping when one changes
    nothing."""
    S = np.asarray(scores, dtype=np.float64)
    Y = np.asarray(labels, bool)
    c = S.shape[1]
    t = np.full(c, float(start))
    pred = S >= t
    tp = (pred & Y).sum(axis=0).astype(np.float64)
    fp = (pred & ~Y).sum(axis=0).astype(np.float64)
    fn = Y.sum(axis=0) - tp
    few = Y.sum(axis=0) < min_positives
    TP, FP, FN = tp.sum(), fp.sum(), fn.sum()
    for _ in range(sweeps):
        changed = False
        for j in np.flatnonzero(~few):
            a = TP - tp[j]
            b = 2 * a + (FP - fp[j]) + (FN - fn[j])
            tj, f1 = _best_cut(S[:, j : j + 1], Y[:, j : j + 1], a, b)
            now = 2 * TP / (2 * TP + FP + FN) if 2 * TP + FP + FN else 0.0
            if f1[0] > now + 1e-12:
                t[j] = tj[0]
                kept = S[:, j] >= t[j]
                new_tp = float((kept & Y[:, j]).sum())
                new_fp, new_fn = float(kept.sum()) - new_tp, float(Y[:, j].sum()) - new_tp
                TP, FP, FN = TP - tp[j] + new_tp, FP - fp[j] + new_fp, FN - fn[j] + new_fn
                tp[j], fp[j], fn[j] = new_tp, new_fp, new_fn
                changed = True
        if not changed:
            break
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
