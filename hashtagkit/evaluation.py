"""The harness: a fitted run + a split of its store -> the paper's metrics.

Every head is judged here and only here, through `predict_proba` and the ranking in
`hashtagkit.metrics`, so numbers from different heads are comparable by construction. A run
fitted with `--rerank` / `--threshold` is judged as it answers: its scores re-ranked, and
micro/macro F1 of the hashtags its thresholds return beside P/R/A@K (`raw=True`: the head alone).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hashtagkit import metrics
from hashtagkit.errors import InputError
from hashtagkit.heads import Head
from hashtagkit.heads.base import refuse_nonfinite_features
from hashtagkit.postprocess import Postprocess
from hashtagkit.runs import RunRecord, design_matrix, load_postprocess, load_run
from hashtagkit.stores import Store

PAPER_KS = (1, 5)  # P@1, R@5, A@5 are always reported
EVAL_BATCH = 4096  # rows scored at once: at 8,192 float16 features and 1,000 classes ~ 100 MB


def evaluation_rows(store, split: str) -> tuple[np.ndarray, dict]:
    """Rows to score: the split, less rows without ground truth (recall is undefined there) and
    rows whose image failed to decode. The same rows for every head of a store, popularity
    included, so a table compares like with like. Counts reported.

    The labels are read one label chunk at a time (`iter_rows`), so finding the rows of the
    train split of a million-row store holds a chunk of labels, never its N x C matrix; what
    is kept is the row indices (8 bytes a row)."""
    rows = store.split_rows(split)
    has_gt = np.zeros(len(rows), bool)
    order, done = store.chunk_order(rows, what=("labels",)), 0  # ascending rows: the identity
    for picked, data in store.iter_rows(rows, what=("labels",)):
        has_gt[order[done : done + len(picked)]] = data["labels"].any(axis=1)
        done += len(picked)
    skipped = {}
    if not has_gt.all():
        skipped["no_ground_truth"] = int((~has_gt).sum())
        rows = rows[has_gt]
    rows, dropped = store.usable_rows(rows)
    skipped.update(dropped)
    return rows, skipped


@dataclass
class ScoredSplit:
    """A run's scores on rows of one split of its store, with everything needed to judge or show them."""

    record: RunRecord
    head: Head
    store: Store
    split: str
    rows: np.ndarray  # store rows, in split order, less the skipped ones (or the chosen few of them)
    labels: np.ndarray  # (n, C) bool ground truth of those rows
    scores: np.ndarray  # (n, C) the head's predict_proba, re-ranked if the run says so
    skipped: dict
    predict_seconds: float


@dataclass
class SplitScorer:
    """A loaded run and the evaluable rows of one split: scored batch by batch (`batches`,
    whatever the split's size) or, for a few chosen rows, whole (`score`). `show` streams the
    split once for per-image recall and then scores only the photos it draws."""

    record: RunRecord
    head: Head
    store: Store
    split: str
    rows: np.ndarray
    skipped: dict
    post: Postprocess | None = None  # the run's re-ranking and thresholds, applied to every score

    @property
    def view(self) -> str:
        return self.record.features or "both"

    def batches(self, batch_size: int = EVAL_BATCH):
        """(scores, labels, seconds in predict_proba and re-ranking) batch by batch, in the order of `rows`."""
        for X, labels in _batches(self.store, self.head, self.view, self.rows, batch_size):
            t0 = time.perf_counter()
            scores = self._answer(X)
            yield scores, labels, time.perf_counter() - t0

    def score(self, positions: np.ndarray | None = None) -> ScoredSplit:
        """The scores of `rows[positions]` (every row when None) in one matrix."""
        rows = self.rows if positions is None else self.rows[np.asarray(positions)]
        labels = self.store.labels(rows)
        X = design_matrix(self.store, self.head, self.view, rows)
        t0 = time.perf_counter()
        scores = self._answer(X)
        return ScoredSplit(self.record, self.head, self.store, self.split, rows, labels, scores, self.skipped,
                           time.perf_counter() - t0)

    def _answer(self, X: np.ndarray) -> np.ndarray:
        """The head's scores of these rows as the run answers: re-ranked when it says so."""
        scores = self.head.predict_proba(X)
        return scores if self.post is None else self.post.apply(scores)


def open_split(run_dir: str | Path, split: str = "test", store_path: str | Path | None = None,
               raw: bool = False) -> SplitScorer:
    """Load a run and find the evaluable rows of a split: the one place a run meets its data.
    The run's re-ranking comes with it (`raw`: the head's own scores)."""
    record, head, store = load_run(run_dir, store_path)
    rows, skipped = evaluation_rows(store, split)
    if len(rows) == 0:
        n = len(store.split_rows(split))
        said = {"no_ground_truth": "have no hashtag (nothing to score them against)",
                "invalid_image": "have an image that failed to decode"}
        why = ("it is empty" if n == 0 else f"of its {n:,} row(s), "
               + " and ".join(f"{count:,} {said.get(key, key)}" for key, count in skipped.items()))
        raise InputError(f"{store.path}: the {split!r} split has no rows to evaluate: {why}")
    return SplitScorer(record, head, store, split, rows, skipped, None if raw else load_postprocess(run_dir, record))


def score_split(run_dir: str | Path, split: str = "test", store_path: str | Path | None = None,
                raw: bool = False) -> ScoredSplit:
    """Every evaluable row of a split scored in one N x C matrix: the in-memory reference the
    streamed harness is tested against (small splits only)."""
    return open_split(run_dir, split, store_path, raw).score()


SCORE_CACHE_BYTES = 256 << 20  # scores kept for the second pass up to this size, else recomputed


def _batches(store: Store, head: Head, view: str, rows: np.ndarray, batch_size: int):
    """(features, labels) of consecutive batches of `batch_size` rows (the last one shorter),
    in the order of `rows` (ascending, as `evaluation_rows` gives them): read by `iter_rows`,
    so every feature and label chunk is decoded once per pass and at most a batch plus one
    store step is held. A head that ignores the image gets an empty (n, 0) matrix and no
    feature is read."""
    what = ("features", "labels") if head.needs_features else ("labels",)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (rows, features, labels)
    held = 0
    for picked, data in store.iter_rows(rows, what=what, view=view):
        parts.append((picked, data.get("features"), data["labels"]))
        held += len(picked)
        while held >= batch_size:
            picked_all, X, Y = _joined(parts, head.needs_features)
            yield refuse_nonfinite_features(store.path, picked_all[:batch_size], X[:batch_size]), Y[:batch_size]
            parts, held = [(picked_all[batch_size:], X[batch_size:], Y[batch_size:])], held - batch_size
    if held:
        picked_all, X, Y = _joined(parts, head.needs_features)
        yield refuse_nonfinite_features(store.path, picked_all, X), Y


def _joined(parts: list, needs_features: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    picked = np.concatenate([p for p, _, _ in parts])
    X = (np.concatenate([x for _, x, _ in parts]) if needs_features
         else np.zeros((len(picked), 0), dtype=np.float32))
    return picked, X, np.concatenate([y for _, _, y in parts])


def evaluate(
    run_dir: str | Path,
    split: str = "test",
    ks: tuple[int, ...] = (1, 5, 10),
    store_path: str | Path | None = None,
    per_class_k: int | None = None,
    batch_size: int = EVAL_BATCH,
    raw: bool = False,
) -> Scores:
    """The run's metrics on a split (`Scores`: read like a dict, `scores["recall@5"]`). `per_class_k` adds `per_class_recall@K`: one value per
    class (None where the split has no positive of it), for long-tail plots.

    A run with a post-processing is scored as it answers: re-ranked, and with thresholds
    `f1_micro`, `f1_macro` and `tags_per_image` at them; `raw` scores the head's own scores
    (no re-ranking, no F1). `postprocess` in the result says which.

    Scored `batch_size` rows at a time into a `metrics.MetricAccumulator`, so no N x C score
    matrix exists; per-class mAP needs the split scored twice (see the accumulator), and
    `predict_seconds` is the time of the first pass alone, i.e. of scoring the split once."""
    if int(batch_size) != batch_size or batch_size < 1:
        raise InputError(f"batch size must be a positive integer, got {batch_size!r}")
    scorer = open_split(run_dir, split, store_path, raw)
    record, store, rows, post = scorer.record, scorer.store, scorer.rows, scorer.post
    asked = sorted(set(ks) | set(PAPER_KS))
    n_classes = store.n_classes
    acc = metrics.MetricAccumulator(n_classes, ks=tuple(asked), per_class_k=per_class_k,
                                    thresholds=post.thresholds if post is not None else None)
    predict_seconds = 0.0
    cache: list | None = [] if len(rows) * n_classes * 8 <= SCORE_CACHE_BYTES else None
    for scores, batch_labels, seconds in scorer.batches(batch_size):
        acc.update(scores, batch_labels)
        predict_seconds += seconds
        if cache is not None:
            cache.append((scores, batch_labels))
    # pass 2 (per-class AP): the same scores again, kept when small (a test split), recomputed
    # batch by batch when not (the train split of a large store): read the split twice
    for scores, batch_labels in cache if cache is not None else (
            (s, y) for s, y, _ in scorer.batches(batch_size)):
        acc.rank_update(scores, batch_labels)
    result = acc.result()
    if asked[-1] > n_classes:  # summary labels what it computed: K at most the vocabulary size
        result["k_capped"] = {"asked": [k for k in asked if k > n_classes], "computed_at": n_classes}
    if per_class_k:
        key = f"per_class_recall@{per_class_k}"
        result[key] = [None if np.isnan(v) else round(float(v), 6) for v in result[key]]
    result.update(
        {
            "head": record.head,
            "features": record.features,
            "split": split,
            "skipped": scorer.skipped,
            "predict_seconds": round(predict_seconds, 3),
            "store": str(store.path),
            "postprocess": postprocess_summary(record, post, raw),
        }
    )
    return Scores(result)


def postprocess_summary(record: RunRecord, post: Postprocess | None, raw: bool) -> dict | None:
    """What was applied to the head's scores: None when the run has nothing, `raw` when asked
    to skip it, else the re-ranking strength and the threshold kind."""
    if not record.postprocess:
        return None
    if raw:
        return {"applied": False}
    return {"applied": True, **post.describe()}


class Scores(Mapping):
    """A run's metrics on a split: a read-only mapping of metric name to value (`precision@1`,
    `recall@5`, `accuracy@5`, `map`, `map_class`, F1 at thresholds...) plus what was scored
    (`head`, `features`, `split`, `n_images`, `skipped`...), as `evaluate --json` prints it."""

    def __init__(self, values: dict):
        self._values = dict(values)

    def __getitem__(self, key: str):
        return self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        ks = sorted(int(k.split("@")[1]) for k in self._values if k.startswith("recall@"))
        shown = ", ".join(f"{m}@{k}={self._values[f'{m}@{k}']:.4f}" for k in ks[:2] for m in ("precision", "recall"))
        return f"Scores({self._values.get('head')} on {self._values.get('split')}: {shown})"

    def as_dict(self) -> dict:
        """A plain dict (what `json.dumps` takes)."""
        return dict(self._values)

    def table(self) -> str:
        """The table `hashtagkit evaluate` prints."""
        return format_table(self._values)


def format_table(result: Mapping) -> str:
    """A readable table: one row per K with P, R, A in percent, then mAP."""
    ks = sorted(int(k.split("@")[1]) for k in result if k.startswith("precision@"))
    lines = [
        f"{result['head']} ({result.get('features') or 'no features'}) on {result['split']}: "
        f"{result['n_images']:,} images",
        f"{'K':>4} {'Precision@K':>12} {'Recall@K':>10} {'Accuracy@K':>11}",
    ]
    for k in ks:
        lines.append(
            f"{k:>4} {100 * result[f'precision@{k}']:>11.2f}% {100 * result[f'recall@{k}']:>9.2f}% "
            f"{100 * result[f'accuracy@{k}']:>10.2f}%"
        )
    lines.append(f"mAP (per image) {100 * result['map']:.2f}%   mAP (per class) {100 * result['map_class']:.2f}%")
    post = result.get("postprocess") or {}
    if post.get("rerank"):
        lines.append(f"re-ranked by label co-occurrence, strength {post['alpha']:g} (chosen on validation rows)")
    if "f1_micro" in result:
        lines.append(f"at the {post.get('threshold')} threshold: F1 micro {100 * result['f1_micro']:.2f}%   "
                     f"F1 macro {100 * result['f1_macro']:.2f}%   {result['tags_per_image']:.2f} hashtags per image")
    elif post and not post.get("applied"):
        lines.append("raw: the head's own scores (the run's re-ranking and thresholds not applied)")
    capped = result.get("k_capped")
    if capped:
        asked = ", ".join(str(k) for k in capped["asked"])
        lines.append(f"K = {asked} exceed(s) the vocabulary: computed at K = {capped['computed_at']} (every class)")
    for reason, n in result.get("skipped", {}).items():
        lines.append(f"skipped {n:,} image(s): {reason.replace('_', ' ')}")
    return "\n".join(lines)
