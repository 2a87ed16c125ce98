"""What a run does to its head's scores before it answers: co-occurrence re-ranking and score
thresholds, chosen once on validation rows and kept in the run.

Where (one place): `hashtagkit fit ... --rerank cooc --threshold global|per-tag` chooses them
right after the head is fitted, while the fitted head and its training rows are at hand (the
MLP's held-out rows exist only then: they are not saved), and writes them into the run
(`RUN/postprocess.npz`: the C x C co-occurrence matrix and one threshold per class;
`run.json`'s `postprocess`: what was chosen, on which rows, every candidate's validation
score). `evaluate`, `recommend`, `serve`, `show` and `bench` read them from the run, so a run
always answers the same way; `evaluate --raw` scores the head alone for comparison.

Validation rows, never the test split, in this order:

1. the store's `val` split, if it has one (no head ever trains on it);
2. the rows the head itself held out of training (the MLP's early-stopping rows, `val_rows_`;
   they chose its best epoch, so their scores are a little optimistic);
3. otherwise (kNN, ovr, popularity, the MLP with val_fraction 0) a held-out part of the training
   rows: whole blocks (store chunks), seeded, `VAL_FRACTION` of the rows up to `VAL_ROWS`, and a
   clone of the head fitted on the other blocks (`TrainingData.subset`) scores them (rows of a
   lone block are split by position). Scoring the
   training rows with the head fitted on them would be worthless: a kNN finds each photo itself.
   The run's head stays the one fitted on every row, so its test scores are a little better
   than the clone's validation scores the choices were made on (it costs one more fit).

The co-occurrence counts are taken from the training rows less the validation rows (their
labels are what the choice is judged on).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hashtagkit import rerank as cooc
from hashtagkit.choices import RERANKS, THRESHOLDS
from hashtagkit.errors import InputError
from hashtagkit.heads.data import VAL_ROWS, StoreData, TrainingData
from hashtagkit.thresholds import MIN_POSITIVES, choose_thresholds

POSTPROCESS_FILE = "postprocess.npz"
VAL_FRACTION = 0.1


@dataclass(frozen=True)
class Options:
    """What `fit` was asked to calibrate (`--rerank`, `--rerank-m`, `--rerank-smoothing`,
    `--threshold`)."""

    rerank: str = "none"
    top_m: int = cooc.TOP_M
    smoothing: float = cooc.SMOOTHING
    threshold: str = "none"

    def __post_init__(self) -> None:
        if self.rerank not in RERANKS:
            raise InputError(f"{{param}} must be one of {', '.join(RERANKS)}, got {self.rerank!r}", param="rerank")
        if self.threshold not in THRESHOLDS:
            raise InputError(f"{{param}} must be one of {', '.join(THRESHOLDS)}, got {self.threshold!r}",
                             param="threshold")
        if isinstance(self.top_m, bool) or not isinstance(self.top_m, int) or self.top_m < 1:
            raise InputError(f"{{param}} must be an integer >= 1, got {self.top_m!r}", param="top_m")
        if not np.isfinite(self.smoothing) or self.smoothing < 0:
            raise InputError(f"{{param}} must be a finite number >= 0, got {self.smoothing!r}", param="smoothing")

    @property
    def active(self) -> bool:
        return self.rerank != "none" or self.threshold != "none"

    def as_dict(self) -> dict:
        return {"rerank": self.rerank, "top_m": self.top_m, "smoothing": self.smoothing, "threshold": self.threshold}


class Postprocess:
    """A run's chosen re-ranking (`cond`, `alpha`, `top_m`) and thresholds (one per class), as
    `apply` and `select` use them. `record` is run.json's `postprocess` block."""

    def __init__(self, record: dict, cond: np.ndarray | None, thresholds: np.ndarray | None) -> None:
        self.record, self.cond, self.thresholds = record, cond, thresholds
        r = record.get("rerank") or {}
        self.alpha = float(r.get("alpha", 0.0)) if cond is not None else 0.0
        self.top_m = int(r.get("top_m", cooc.TOP_M))

    def describe(self) -> dict:
        """What the run applies, for `evaluate`'s result and `recommend`/`serve`'s info: the
        re-ranking kind and strength and the threshold kind (None where there is none)."""
        r, t = self.record.get("rerank") or {}, self.record.get("threshold") or {}
        return {"rerank": r.get("kind"), "alpha": r.get("alpha"), "threshold": t.get("kind")}

    def apply(self, scores: np.ndarray) -> np.ndarray:
        """The scores the run answers with: re-ranked, or the head's own when a = 0 / no re-ranking."""
        if self.cond is None or self.alpha == 0:
            return scores
        return cooc.rerank(scores, self.cond, self.alpha, self.top_m)

    def save(self, run_dir: Path) -> None:
        arrays = {}
        if self.cond is not None:
            arrays["cond"] = self.cond
        if self.thresholds is not None:
            arrays["thresholds"] = self.thresholds
        np.savez(Path(run_dir) / POSTPROCESS_FILE, **arrays)

    @classmethod
    def load(cls, run_dir: str | Path, block: dict | None, n_classes: int) -> Postprocess | None:
        """The run's post-processing (`block`: its record's `postprocess`, with arrays for
        `n_classes` classes), or None for a run fitted without one."""
        if not block:
            return None
        path = Path(run_dir) / POSTPROCESS_FILE
        if not path.is_file():
            raise InputError(f"{run_dir}: run.json records a post-processing but {POSTPROCESS_FILE} is missing")
        with np.load(path, allow_pickle=False) as data:
            cond = data["cond"] if "cond" in data else None
            thresholds = data["thresholds"] if "thresholds" in data else None
        n = n_classes
        if (cond is not None and cond.shape != (n, n)) or (thresholds is not None and thresholds.shape != (n,)):
            raise InputError(f"{path} does not match the run's {n} classes")
        return cls(block, cond, thresholds)


def _score_rows(head, data: TrainingData, keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores, labels) of the rows of `data` (only positions in `keep`, if given), one block at
    a time: features never held beyond a block."""
    parts_s, parts_y = [], []
    for i, (X, Y) in enumerate(data.blocks()):
        if keep is not None:
            mine = keep[data.bounds[i]:data.bounds[i + 1]]
            if not mine.any():
                continue
            X, Y = X[mine], Y[mine]
        parts_s.append(np.asarray(head.predict_proba(X), dtype=np.float32))
        parts_y.append(np.asarray(Y, dtype=bool))
    if not parts_s:
        return np.zeros((0, data.n_classes), np.float32), np.zeros((0, data.n_classes), bool)
    return np.concatenate(parts_s), np.concatenate(parts_y)


def held_out_parts(data: TrainingData, seed: int) -> tuple[TrainingData, TrainingData, np.ndarray]:
    """(rows to fit the clone on, held-out rows, their positions): whole blocks when there are
    two or more (`TrainingData.subset`); a single block (a small store, or a head that reads
    only labels, whose blocks are label chunks) is in memory anyway, so its rows are split by a
    seeded sample of positions (`TrainingData.take`)."""
    from hashtagkit.heads.data import ArrayData

    if data.n_blocks >= 2:
        blocks = data.held_out_blocks(VAL_FRACTION, VAL_ROWS, np.random.default_rng([seed, 15]))
        rest = np.setdiff1d(np.arange(data.n_blocks), blocks)
        return data.subset(rest), data.subset(blocks), data.positions(blocks)
    if data.n_rows < 2:
        raise InputError("calibrating {opt:rerank}/{opt:threshold} needs at least 2 training rows")
    rng = np.random.default_rng([seed, 15])
    held = np.sort(rng.choice(data.n_rows, min(max(1, int(VAL_FRACTION * data.n_rows)), data.n_rows - 1),
                              replace=False))
    rest = np.setdiff1d(np.arange(data.n_rows), held)
    return (ArrayData(*data.take(rest), layout=data.layout), ArrayData(*data.take(held), layout=data.layout),
            held)


def validation_scores(store, head, data: TrainingData, view: str | None, seed: int):
    """(scores, labels, training positions to leave out of the co-occurrence counts, record) of
    the validation rows, chosen as the module docstring says."""
    from sklearn.base import clone

    val_rows = store.split_rows("val")
    if len(val_rows):
        val_rows, _ = store.usable_rows(val_rows)
    if len(val_rows):
        scores, labels = _score_rows(head, StoreData(store, view, val_rows))
        return scores, labels, np.zeros(0, np.int64), {"source": "the store's val split"}
    held = np.asarray(getattr(head, "val_rows_", []), dtype=np.int64)
    if len(held):
        keep = np.zeros(data.n_rows, bool)
        keep[held] = True
        scores, labels = _score_rows(head, data, keep)
        return scores, labels, held, {"source": f"the rows {head.name} held out of training (early stopping)"}
    fit_part, held_part, positions = held_out_parts(data, seed)
    t0 = time.perf_counter()
    twin = clone(head).fit_data(fit_part)
    scores, labels = _score_rows(twin, held_part)
    return scores, labels, positions, {
        "source": "held-out training rows, scored by a clone of the head fitted without them",
        "clone_fit_seconds": round(time.perf_counter() - t0, 3)}


def calibrate(store, head, data: TrainingData, view: str | None, seed: int, options: Options) -> Postprocess:
    """Choose the re-ranking strength and the thresholds on validation rows (module docstring)."""
    scores, labels, leave_out, how = validation_scores(store, head, data, view, seed)
    tagged = labels.any(axis=1)
    scores, labels = scores[tagged], labels[tagged]
    if not len(scores):
        raise InputError("no validation row has a hashtag: nothing to calibrate {opt:rerank}/{opt:threshold} on")
    record: dict = {"options": options.as_dict(),
                    "validation": {**how, "rows": int(len(scores)), "untagged_left_out": int((~tagged).sum()),
                                   "seed": seed},
                    "rerank": None, "threshold": None}
    cond = None
    if options.rerank == "cooc":
        keep = np.ones(data.n_rows, bool)
        keep[leave_out] = False
        pairs, n = cooc.pair_counts(_kept_labels(data, keep), data.n_classes)
        cond = cooc.conditional(pairs, n, options.smoothing)
        alpha, table = cooc.choose_alpha(scores, labels, cond, options.top_m)
        record["rerank"] = {"kind": "cooc", "alpha": alpha, "top_m": options.top_m, "smoothing": options.smoothing,
                            "pairs_from_rows": n, "selected_by": f"validation {cooc.SELECTED_BY} (per image)",
                            "grid": [{k: round(v, 6) for k, v in r.items()} for r in table]}
        scores = cooc.rerank(scores, cond, alpha, options.top_m)
    thresholds = None
    if options.threshold != "none":
        thresholds, record["threshold"] = choose_thresholds(options.threshold, scores, labels, MIN_POSITIVES)
    return Postprocess(record, cond, thresholds)


def _kept_labels(data: TrainingData, keep: np.ndarray):
    """The labels of `data` by block, less the positions where `keep` is False."""
    at = 0
    for Y in data.labels():
        yield Y[keep[at : at + len(Y)]]
        at += len(Y)
