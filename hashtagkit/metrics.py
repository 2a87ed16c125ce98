"""The one definition of every score a head is judged by.

The paper (Park, Li, Kim 2016, section 4.1): for one image, Result(K) is the top-K ranked
hashtags and GT its ground-truth set;

    Precision@K = |Result(K) ∩ GT| / |Result(K)|
    Recall@K    = |Result(K) ∩ GT| / |GT|
    Accuracy@K  = 1 if Result(K) ∩ GT is non-empty, else 0

each averaged over the test images. Ranking is by score, highest first, and ties break by the
lower class id, so a result never depends on how a sort treats equal keys (a popularity head
gives many ties). Everything here is plain numpy on a dense (n_images, n_classes) score matrix
and a multi-hot label matrix of the same shape.

`MetricAccumulator` gives the same numbers from batches of rows, so an evaluation never holds
an N x C score matrix (see its docstring for the one metric that needs a second pass).

Beside top-K, a run can return a variable number of hashtags: every class whose score reaches
its threshold (one global value or one per class, chosen on validation rows; see
hashtagkit/thresholds.py). Those sets are judged by F1: micro (every image-hashtag decision
pooled) and macro (the mean of per-class F1 over the classes that have a positive image in the
split; a class never predicted scores 0 there), plus the mean number of hashtags returned.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "top_k",
    "precision_at_k",
    "recall_at_k",
    "recall_per_image",
    "accuracy_at_k",
    "mean_average_precision",
    "per_class_recall_at_k",
    "summary",
    "selected",
    "f1_counts",
    "f1_from_counts",
    "f1_at_threshold",
    "MetricAccumulator",
]


def _check(scores: np.ndarray, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-d (images, classes), got shape {scores.shape}")
    if scores.shape[1] == 0:
        raise ValueError("scores have no classes")
    # float64 keeps every tie of the input (float16/32 and int scores embed exactly).
    scores = scores.astype(np.float64, copy=False)
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN: a head produced an undefined score")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != scores.shape:
            raise ValueError(f"labels shape {labels.shape} does not match scores shape {scores.shape}")
        labels = labels.astype(bool, copy=False)
    return scores, labels


def _check_k(k: int, n_classes: int) -> int:
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return min(int(k), n_classes)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """The k highest-scoring class ids of every row, best first, ties by lower class id.

    A full sort of 5,000 x 997 costs about 0.4 s; this selects by the k-th largest value
    instead (one partition and one cumulative sum) and sorts only the k survivors.
    """
    scores, _ = _check(scores)
    n, c = scores.shape
    k = _check_k(k, c)
    if n == 0:
        return np.zeros((0, k), dtype=np.int64)
    if k == c:
        return np.argsort(-scores, axis=1, kind="stable")
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]  # (n, 1): the k-th largest value
    above = scores > kth
    room = k - above.sum(axis=1, keepdims=True)  # how many of the ties at the k-th value fit
    at = scores == kth
    chosen = above | (at & (np.cumsum(at, axis=1) <= room))
    # exactly k per row; nonzero walks row-major, so ids come out ascending within a row
    ids = np.nonzero(chosen)[1].reshape(n, k)
    picked = np.take_along_axis(scores, ids, axis=1)
    order = np.argsort(-picked, axis=1, kind="stable")  # stable: equal scores keep id order
    return np.take_along_axis(ids, order, axis=1)


def _hits(scores: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    scores, labels = _check(scores, labels)
    k = _check_k(k, scores.shape[1])
    ids = top_k(scores, k)
    return np.take_along_axis(labels, ids, axis=1).sum(axis=1), k


def precision_at_k(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Mean over images of |top-k ∩ GT| / k (k capped at the number of classes)."""
    hits, k = _hits(scores, labels, k)
    return float(np.mean(hits / k)) if len(hits) else float("nan")


def recall_per_image(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """|top-k ∩ GT| / |GT| of every image. An image with no ground truth is an error: its
    recall is undefined, and silently counting it as 0 or 1 would bias any mean of it."""
    hits, _ = _hits(scores, labels, k)
    n_true = np.asarray(labels).astype(bool).sum(axis=1)
    if (n_true == 0).any():
        raise ValueError(
            f"{int((n_true == 0).sum())} image(s) have no ground-truth hashtag: recall is undefined"
        )
    return hits / n_true


def recall_at_k(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Mean over images of |top-k ∩ GT| / |GT| (see `recall_per_image`)."""
    recall = recall_per_image(scores, labels, k)
    return float(np.mean(recall)) if len(recall) else float("nan")


def accuracy_at_k(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of images with at least one ground-truth hashtag among the top k."""
    hits, _ = _hits(scores, labels, k)
    return float(np.mean(hits > 0)) if len(hits) else float("nan")


def _average_precision_rows(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AP of every row's ranking (ties by lower column index); NaN for rows without positives."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranked = np.take_along_axis(labels, order, axis=1)
    n_pos = ranked.sum(axis=1)
    precision = np.cumsum(ranked, axis=1) / np.arange(1, ranked.shape[1] + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_pos > 0, (precision * ranked).sum(axis=1) / n_pos, np.nan)


def mean_average_precision(scores: np.ndarray, labels: np.ndarray, per: str = "image") -> float:
    """Mean average precision.

    per="image": each image ranks the classes, AP over its ground-truth hashtags, averaged
    over images (equals scikit-learn's label_ranking_average_precision_score when no scores
    tie). per="class": each class ranks the images (ties by lower image index), averaged over
    the classes that have at least one positive image.
    """
    scores, labels = _check(scores, labels)
    if per == "image":
        ap = _average_precision_rows(scores, labels)
    elif per == "class":
        ap = _average_precision_rows(scores.T, labels.T)
    else:
        raise ValueError(f"per must be 'image' or 'class', got {per!r}")
    ap = ap[~np.isnan(ap)]
    return float(ap.mean()) if len(ap) else float("nan")


def per_class_recall_at_k(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """For each class, the fraction of its positive images that have it in their top k
    (NaN for a class with no positive image). Shows where the long tail is lost."""
    scores, labels = _check(scores, labels)
    ids = top_k(scores, k)
    in_top = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(in_top, ids, True, axis=1)
    positives = labels.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(positives > 0, (in_top & labels).sum(axis=0) / positives, np.nan)


def summary(scores: np.ndarray, labels: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict:
    """Every metric the harness reports, keyed as in `hashtagkit evaluate --json`:
    precision@K, recall@K, accuracy@K for each K, map (per image), map_class, n_images.

    A K above the number of classes C is computed at C and keyed `@C`, never under the K asked
    for: a top-1000 of 997 classes is the top-997."""
    scores, labels = _check(scores, labels)
    n_true = labels.sum(axis=1)
    if (n_true == 0).any():
        raise ValueError(
            f"{int((n_true == 0).sum())} image(s) have no ground-truth hashtag: recall is undefined"
        )
    out: dict = {"n_images": int(scores.shape[0])}
    for k in sorted({_check_k(k, scores.shape[1]) for k in ks}):
        hits, kk = _hits(scores, labels, k)  # one top-k per K serves all three metrics
        out[f"precision@{k}"] = float(np.mean(hits / kk))
        out[f"recall@{k}"] = float(np.mean(hits / n_true))
        out[f"accuracy@{k}"] = float(np.mean(hits > 0))
    out["map"] = mean_average_precision(scores, labels, per="image")
    out["map_class"] = mean_average_precision(scores, labels, per="class")
    return out


def selected(scores: np.ndarray, thresholds: np.ndarray | float) -> np.ndarray:
    """The hashtags a threshold returns: score >= the class's threshold (a scalar: the same for
    every class), compared in float64 as rankings are."""
    scores, _ = _check(scores)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.ndim not in (0, 1) or (thresholds.ndim == 1 and len(thresholds) != scores.shape[1]):
        raise ValueError(f"thresholds must be a number or one per class ({scores.shape[1]}), got shape {thresholds.shape}")
    return scores >= thresholds


def f1_counts(predicted: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class true positives, false positives and false negatives of boolean predictions."""
    predicted, labels = np.asarray(predicted, bool), np.asarray(labels).astype(bool, copy=False)
    if predicted.shape != labels.shape:
        raise ValueError(f"predictions shape {predicted.shape} does not match labels shape {labels.shape}")
    tp = (predicted & labels).sum(axis=0)
    return tp, predicted.sum(axis=0) - tp, labels.sum(axis=0) - tp


def f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict:
    """micro F1 = 2 TP / (2 TP + FP + FN) over all decisions; macro F1 = the mean of per-class
    F1 over the classes with a positive (TP + FN > 0); NaN when there is none. Equal to
    scikit-learn's f1_score(average="micro"), and to average="macro" with labels= those classes
    and zero_division=0 (tested)."""
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    pooled = 2 * tp.sum() + fp.sum() + fn.sum()
    micro = float(2 * tp.sum() / pooled) if pooled else float("nan")
    present = (tp + fn) > 0
    denom = 2 * tp[present] + fp[present] + fn[present]
    macro = float(np.mean(2 * tp[present] / denom)) if present.any() else float("nan")
    return {"f1_micro": micro, "f1_macro": macro}


def f1_at_threshold(scores: np.ndarray, labels: np.ndarray, thresholds: np.ndarray | float) -> dict:
    """micro and macro F1 of the hashtags the thresholds return, and how many they return per
    image on average (`tags_per_image`)."""
    scores, labels = _check(scores, labels)
    predicted = selected(scores, thresholds)
    out = f1_from_counts(*f1_counts(predicted, labels))
    out["tags_per_image"] = float(predicted.sum(axis=1).mean()) if len(predicted) else float("nan")
    return out


class MetricAccumulator:
    """The numbers of `summary` (and optionally `per_class_recall_at_k`), accumulated batch by
    batch so that no N x C score matrix ever exists.

    Pass 1: `update(scores, labels)` per batch of rows, in order. Every per-image metric (P/R/A@K,
    per-image AP) and per-class recall is a running sum, so its memory is O(C) whatever N is.

    Per-class AP ranks all N images of each class, and a positive seen late must be ranked
    against negatives seen early: no exact one-pass form exists in less than O(N) per class.
    So pass 1 also keeps each ground-truth label's score and image index, and pass 2
    (`rank_update(scores, labels)`: the same rows in the same order, any batching) places every
    negative of every class among that class's positives (higher score, or equal score and
    lower image index, ranks above, as in `mean_average_precision`) and counts them in a
    histogram. Memory: O(C + ground-truth labels), about 24 bytes per ground-truth label
    (O(N x tags per image), never O(N x C)); time linear in N. Scores are compared as float64,
    as the in-memory path does. Means are running sums divided at the end, so results equal
    `summary` to float rounding (about 1e-16), not bit for bit.

    With `thresholds` (a number or one per class), pass 1 also counts each class's true and
    false positives and false negatives of `score >= threshold` (O(C)), and `result` adds
    `f1_micro`, `f1_macro` and `tags_per_image` as `f1_at_threshold` computes them.
    """

    def __init__(self, n_classes: int, ks: tuple[int, ...] = (1, 5, 10), per_class_k: int | None = None,
                 thresholds: np.ndarray | float | None = None):
        if n_classes < 1:
            raise ValueError("scores have no classes")
        self.n_classes = int(n_classes)
        self.ks = sorted({_check_k(k, self.n_classes) for k in ks})
        self.per_class_k = _check_k(per_class_k, self.n_classes) if per_class_k else None
        self._per_class_key = f"per_class_recall@{per_class_k}"  # keyed as asked, like evaluate
        self.n = 0
        self._sums = {k: np.zeros(3) for k in self.ks}  # sum of precision, recall, accuracy
        self._ap_image_sum = 0.0
        self._ap_image_n = 0
        self._class_hits = np.zeros(self.n_classes, dtype=np.int64)  # positives in the top per_class_k
        self._positives = np.zeros(self.n_classes, dtype=np.int64)
        self._pos_parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (class, image, score)
        self._pos: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # see _start_pass2
        self._hist = np.zeros(0, dtype=np.int64)
        self._seen2 = 0
        self.thresholds = None if thresholds is None else np.asarray(thresholds, dtype=np.float64)
        self._f1 = np.zeros((3, self.n_classes), dtype=np.int64)  # tp, fp, fn per class
        self._n_selected = 0

    def _batch(self, scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, labels = _check(scores, labels)
        if scores.shape[1] != self.n_classes:
            raise ValueError(f"scores have {scores.shape[1]} classes, the accumulator {self.n_classes}")
        return scores, labels

    def update(self, scores: np.ndarray, labels: np.ndarray) -> None:
        """Pass 1: add a batch of rows (images) with their ground truth."""
        if self._pos is not None:
            raise ValueError("update after rank_update: pass 1 is over")
        scores, labels = self._batch(scores, labels)
        n_true = labels.sum(axis=1)
        if (n_true == 0).any():
            raise ValueError(
                f"{int((n_true == 0).sum())} image(s) have no ground-truth hashtag: recall is undefined"
            )
        for k in self.ks:
            hits, _ = _hits(scores, labels, k)
            self._sums[k] += ((hits / k).sum(), (hits / n_true).sum(), (hits > 0).sum())
        ap = _average_precision_rows(scores, labels)
        ap = ap[~np.isnan(ap)]
        self._ap_image_sum += float(ap.sum())
        self._ap_image_n += len(ap)
        self._positives += labels.sum(axis=0)
        if self.per_class_k:
            in_top = np.zeros(scores.shape, dtype=bool)
            np.put_along_axis(in_top, top_k(scores, self.per_class_k), True, axis=1)
            self._class_hits += (in_top & labels).sum(axis=0)
        if self.thresholds is not None:
            predicted = selected(scores, self.thresholds)
            self._f1 += np.stack(f1_counts(predicted, labels))
            self._n_selected += int(predicted.sum())
        r, c = np.nonzero(labels)
        self._pos_parts.append((c, r + self.n, scores[r, c]))
        self.n += scores.shape[0]

    def _start_pass2(self) -> None:
        """Order each class's positives as the class ranks them (score descending, image index
        ascending) and give each a key that is increasing along that order (tie-group start x n
        + image index), so one searchsorted places any negative among them, ties included."""
        parts = self._pos_parts or [(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))]
        cls, img, sc = (np.concatenate([p[i] for p in parts]) for i in range(3))
        order = np.lexsort((img, -sc, cls))  # by class, then the class's ranking
        cls, img, neg_sc = cls[order], img[order], -sc[order]
        starts = np.searchsorted(cls, np.arange(self.n_classes + 1))
        keys = np.empty(len(cls), dtype=np.int64)
        for c in np.flatnonzero(self._positives):
            a, b = starts[c], starts[c + 1]
            group = np.searchsorted(neg_sc[a:b], neg_sc[a:b], side="left")  # start of each tie group
            keys[a:b] = group * self.n + img[a:b]
        self._pos = (neg_sc, keys, starts)
        # _hist[starts[c] + c + t]: negatives of class c with exactly t of its positives above them
        self._hist = np.zeros(len(cls) + self.n_classes, dtype=np.int64)
        self._pos_parts = []

    def rank_update(self, scores: np.ndarray, labels: np.ndarray) -> None:
        """Pass 2: the same rows as pass 1, in the same order (any batching); places each
        negative of each class among that class's positives. O(B x C log P) per batch, so the
        pass is linear in N."""
        if self._pos is None:
            self._start_pass2()
        scores, labels = self._batch(scores, labels)
        lo_row, hi_row = self._seen2, self._seen2 + scores.shape[0]
        if hi_row > self.n:
            raise ValueError("rank_update saw more rows than update")
        neg_sc, keys, starts = self._pos
        slots = []
        for c in np.flatnonzero(self._positives):
            a, b = starts[c], starts[c + 1]
            neg = ~labels[:, c]
            q = -scores[neg, c]
            above = np.searchsorted(neg_sc[a:b], q, side="left")  # positives with a higher score
            tied = np.searchsorted(neg_sc[a:b], q, side="right") > above
            if tied.any():  # equal scores: the positives with a lower image index rank above too
                rows = lo_row + np.flatnonzero(neg)[tied]
                above[tied] = np.searchsorted(keys[a:b], above[tied] * self.n + rows, side="left")
            slots.append(starts[c] + c + above)
        if slots:
            np.add.at(self._hist, np.concatenate(slots), 1)
        self._seen2 = hi_row

    def result(self) -> dict:
        """The metrics, keyed as `summary` (plus `per_class_recall@K` as an array if asked)."""
        if self.n == 0:
            raise ValueError("no rows were accumulated")
        if self._pos is None or self._seen2 != self.n:
            raise ValueError(f"pass 2 (rank_update) saw {self._seen2} of {self.n} rows: map_class needs all")
        out: dict = {"n_images": self.n}
        for k in self.ks:
            p, r, a = self._sums[k] / self.n
            out[f"precision@{k}"], out[f"recall@{k}"], out[f"accuracy@{k}"] = float(p), float(r), float(a)
        out["map"] = self._ap_image_sum / self._ap_image_n if self._ap_image_n else float("nan")
        _, _, starts = self._pos
        aps = []
        for c in np.flatnonzero(self._positives):
            a, b = starts[c], starts[c + 1]
            neg_above = np.cumsum(self._hist[a + c : b + c])  # negatives above the m-th positive
            pos_rank = np.arange(1, b - a + 1)
            aps.append(float(np.mean(pos_rank / (pos_rank + neg_above))))
        out["map_class"] = float(np.mean(aps)) if aps else float("nan")
        if self.thresholds is not None:
            out.update(f1_from_counts(*self._f1))
            out["tags_per_image"] = self._n_selected / self.n
        if self.per_class_k:
            with np.errstate(invalid="ignore", divide="ignore"):
                out[self._per_class_key] = np.where(
                    self._positives > 0, self._class_hits / self._positives, np.nan)
        return out
