"""Label co-occurrence re-ranking: a head's scores nudged towards hashtags that come with its
best guesses.

Why: heads score each hashtag on its own, but hashtags come in families (#beach with #sea and
#summer; #food with #yummy). With P(j|i), how often hashtag j is on a training photo that has
hashtag i, the top-scored tags vote for their companions:

    prop = sum over the top-m tags i of w_i P(.|i) / sum w_i,   w_i = s_i - min(s)
    s'   = (1 - a) s + a (min(s) + (max(s) - min(s)) prop)

prop is a weighted mean of probabilities, in [0, 1]; it is mapped into the row's own score
range, so the re-ranking does not depend on a head's score scale (sigmoid outputs, kNN votes,
decision values alike) and a = 0 is the identity, exactly. P(j|i) is smoothed towards the
prior P(j) (a hashtag seen on 2 photos says little):

    P(j|i) = (n_ij + beta P(j)) / (n_i + beta)

The C x C pair counts come from the label matrix one block (a store chunk) at a time, so
memory is O(C^2) (8 MB of counts at C = 997), never the N x C labels at once. The strength a is chosen
on validation rows (see hashtagkit/postprocess.py): the value of a grid with the best mean
average precision per image, the smallest on ties, so a re-ranking that does not help is
switched off (a = 0). mAP, not Recall@5 or P@1: re-ranking reorders the whole list, and on the
demo store choosing by Recall@5 alone took a = 0.9 for kNN, gaining 4 points of R@5 and losing
15 of P@1; mAP judges every position of the list.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from hashtagkit import metrics

ALPHAS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
TOP_M = 5
SMOOTHING = 10.0
SELECTED_BY = "map"  # the strength is chosen by validation mAP per image
ROWS_AT_ONCE = 1024  # rows propagated at once: (rows, m, C) float32 = 20 MB at m = 5, C = 997


def pair_counts(label_blocks: Iterable[np.ndarray], n_classes: int) -> tuple[np.ndarray, int]:
    """(n_ij: C x C co-occurrence counts, the diagonal holding n_i; N rows) from multi-hot
    label blocks, one block in memory at a time."""
    pairs = np.zeros((n_classes, n_classes), dtype=np.int64)
    n = 0
    for Y in label_blocks:
        Y = np.asarray(Y)
        if Y.ndim != 2 or Y.shape[1] != n_classes:
            raise ValueError(f"label blocks must be (rows, {n_classes}), got {Y.shape}")
        Yf = (Y != 0).astype(np.float32)
        pairs += np.rint(Yf.T @ Yf).astype(np.int64)  # exact: a block's counts are far below 2**24
        n += len(Y)
    return pairs, n


def conditional(pairs: np.ndarray, n_rows: int, smoothing: float = SMOOTHING) -> np.ndarray:
    """P(j|i) (row i, column j), smoothed towards P(j); a hashtag never seen gets the prior row."""
    if smoothing < 0 or not np.isfinite(smoothing):
        raise ValueError(f"smoothing must be a finite number >= 0, got {smoothing}")
    counts = np.diag(pairs).astype(np.float64)
    prior = counts / n_rows if n_rows else np.zeros(len(counts))
    denom = counts[:, None] + smoothing
    with np.errstate(invalid="ignore", divide="ignore"):
        cond = (pairs + smoothing * prior[None, :]) / denom
    cond[denom[:, 0] == 0] = prior  # n_i = 0 and no smoothing: nothing to condition on
    return cond.astype(np.float32)


def propagate(scores: np.ndarray, cond: np.ndarray, top_m: int = TOP_M) -> np.ndarray:
    """The companions' vote `prop` (n, C) in [0, 1] for each row (see the module docstring)."""
    scores = np.asarray(scores, dtype=np.float64)
    n, c = scores.shape
    if cond.shape != (c, c):
        raise ValueError(f"co-occurrence matrix is {cond.shape}, scores have {c} classes")
    out = np.zeros((n, c), dtype=np.float64)
    for a in range(0, n, ROWS_AT_ONCE):
        s = scores[a : a + ROWS_AT_ONCE]
        top = metrics.top_k(s, min(top_m, c))  # (rows, m)
        w = np.take_along_axis(s, top, axis=1) - s.min(axis=1, keepdims=True)
        total = w.sum(axis=1, keepdims=True)
        vote = np.einsum("rm,rmc->rc", w, cond[top], dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[a : a + len(s)] = np.where(total > 0, vote / total, 0.0)
    return out


def blend(scores: np.ndarray, prop: np.ndarray, alpha: float) -> np.ndarray:
    """s' = (1 - a) s + a (min(s) + (max(s) - min(s)) prop), row by row; a = 0 returns s."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"re-ranking strength must be in [0, 1], got {alpha}")
    if alpha == 0:
        return scores
    s = np.asarray(scores, dtype=np.float64)
    lo, hi = s.min(axis=1, keepdims=True), s.max(axis=1, keepdims=True)
    return (1 - alpha) * s + alpha * (lo + (hi - lo) * prop)


def rerank(scores: np.ndarray, cond: np.ndarray, alpha: float, top_m: int = TOP_M) -> np.ndarray:
    """Re-ranked scores (float64); `alpha` 0 returns `scores` itself, untouched."""
    if alpha == 0:
        return scores
    return blend(scores, propagate(scores, cond, top_m), alpha)


def choose_alpha(scores: np.ndarray, labels: np.ndarray, cond: np.ndarray, top_m: int = TOP_M,
                 alphas: tuple[float, ...] = ALPHAS) -> tuple[float, list[dict]]:
    """The strength with the best mAP (per image) on these (validation) rows, the smallest on
    ties, and each candidate's mAP, Precision@1 and Recall@5. Rows without a hashtag must be
    left out first."""
    prop = propagate(scores, cond, top_m)
    table = []
    for a in alphas:
        s = blend(scores, prop, a)
        table.append({"alpha": a, "map": metrics.mean_average_precision(s, labels, per="image"),
                      "precision@1": metrics.precision_at_k(s, labels, 1), "recall@5": metrics.recall_at_k(s, labels, 5)})
    best = max(table, key=lambda r: (r[SELECTED_BY], -r["alpha"]))
    return float(best["alpha"]), table
