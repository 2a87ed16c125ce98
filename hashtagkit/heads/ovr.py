"""One-vs-rest linear classifiers from scikit-learn, one per hashtag.

At HARRISON's size (52,383 x 8,192 x 997 classes) a linear model per class on the raw features
does not finish in useful time on two cores, so the features are first reduced by a whitened
PCA to `pca` dimensions (default 256; fitted on at most 20,000 rows), and the 997 per-class
fits then run in parallel (`n_jobs`, default all cores). Measured on the planted HARRISON-size
store: logistic regression takes about 0.2 s per class there (benchmarks/heads.py has the
totals). A class with no positive (or no negative) training example gets a constant score
of 0 (or 1) instead of a model.

At size (issue #13): the per-class models see at most `max_rows` rows (a seeded sample,
projected block by block; recorded in the run's fit_report), so memory and fit time stop
growing there; only the projection pass reads every row.

Scores are sigmoid(decision function): probabilities for `logistic`, a monotone squashing of
the margin for `linearsvc` and `sgd` (hinge); ranking is all the harness uses. `decision_function`
gives the margins themselves (a constant class: the largest float32, of its sign), `predict`
recommends a hashtag whose margin is above 0 (its score above 0.5), and `n_iter_` holds each
class model's iterations (0 for a constant class), as scikit-learn's estimators report them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hashtagkit.heads.base import BLOCK_WEIGHTS, STATE_FILE, BlockWeights, Laps, Param
from hashtagkit.heads.data import TrainingData
from hashtagkit.heads.estimator import HeadEstimator
from hashtagkit.heads.projection import fit_projection, project, sample_positions

# Rows the per-class models are fitted on, at most: 100,000 x 256 float32 is 100 MB, and a
# logistic regression's cost grows with the rows. HARRISON (52k training rows) uses them all.
MAX_ROWS = 100_000
# decision_function of a class scored as a constant (no positive, or no negative, training row):
# beyond any fitted float32 margin, of the constant's sign, so it ranks as predict_proba does
CONSTANT_MARGIN = float(np.finfo(np.float32).max)


def _fit_one(estimator, Z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float, int]:
    """(coefficients, intercept, iterations run) of one class's model."""
    from sklearn.base import clone

    model = clone(estimator).fit(Z, y)
    return (model.coef_.ravel().astype(np.float32), float(np.ravel(model.intercept_)[0]),
            int(np.max(model.n_iter_)))


class OVRHead(HeadEstimator):
    name = "ovr"
    state_attrs = ("coef_", "intercept_", "constant_", "pca_mean_", "pca_components_", "pca_scale_")
    param_spec = {
        "estimator": Param(str, choices=("logistic", "linearsvc", "sgd")),
        "C": Param(float, low=0, low_open=True),
        "pca": Param(int, low=1, none=True, none_means="no PCA"),
        "max_iter": Param(int, low=1),
        "max_rows": Param(int, low=1),
        "n_jobs": Param(int, low=-1, exclude=(0,), none=True, none_means="one job"),
        "random_state": Param(int, low=0, high=2**32 - 1),
        "block_weights": BlockWeights(str),
    }
    block_rule = "std"  # each backbone's block scaled to its share of the variance before the PCA

    @property
    def _projection(self) -> dict[str, np.ndarray]:
        return {"mean": self.pca_mean_, "components": self.pca_components_, "scale": self.pca_scale_}

    def __init__(self, estimator: str = "logistic", C: float = 1.0, pca: int | None = 256, max_iter: int = 100,
                 max_rows: int = MAX_ROWS, n_jobs: int | None = -1, random_state: int = 0,
                 block_weights: str = BLOCK_WEIGHTS) -> None:
        self.estimator = estimator
        self.C = C
        self.pca = pca
        self.max_iter = max_iter
        self.max_rows = max_rows
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.block_weights = block_weights

    def _make_estimator(self):
        from sklearn.linear_model import LogisticRegression, SGDClassifier
        from sklearn.svm import LinearSVC

        if self.estimator == "logistic":
            return LogisticRegression(C=self.C, max_iter=self.max_iter)
        if self.estimator == "linearsvc":
            return LinearSVC(C=self.C, dual=False, max_iter=self.max_iter)
        if self.estimator == "sgd":
            return SGDClassifier(loss="hinge", alpha=1.0 / (self.C * 10_000), max_iter=self.max_iter, tol=1e-4,
                                 random_state=self.random_state)
        raise ValueError(f"estimator must be logistic, linearsvc or sgd, got {self.estimator!r}")

    def fit_data(self, data: TrainingData) -> OVRHead:
        """The projection from a seeded sample of FIT_ROWS rows; then the per-class models on
        the projected features of at most `max_rows` rows (a seeded sample; all of them up to
        that), projected block by block, so memory is that of max_rows x pca floats whatever
        the number of rows. The rows used are recorded in `fit_report`."""
        self._begin_fit(data)
        estimator = self._make_estimator()
        laps, n = Laps(), data.n_rows
        rng = np.random.default_rng(self.random_state)
        sample = sample_positions(data, rng)
        Xs = data.take(sample)[0]
        self._fit_blocks(data, Xs)
        p = fit_projection(self._combine(Xs), self.pca or 0, whiten=True, random_state=self.random_state)
        del Xs
        self.pca_mean_, self.pca_components_, self.pca_scale_ = p["mean"], p["components"], p["scale"]
        laps.lap("sample_and_pca")
        keep = np.arange(n) if n <= self.max_rows else np.sort(rng.choice(n, self.max_rows, replace=False))
        width = len(self.pca_components_) if self.pca_components_.size else data.n_features
        Z = np.empty((len(keep), width), np.float32)
        Y = np.empty((len(keep), data.n_classes), bool)
        for i, (Xb, Yb) in enumerate(data.blocks()):
            lo, hi = np.searchsorted(keep, data.bounds[i : i + 2])
            local = keep[lo:hi] - data.bounds[i]
            Z[lo:hi], Y[lo:hi] = project(self._combine(Xb[local]), self._projection), Yb[local] != 0
        laps.lap("read_project")
        positives = Y.sum(axis=0)
        trainable = np.flatnonzero((positives > 0) & (positives < len(Y)))
        self.constant_ = np.where(positives == 0, 0.0, 1.0).astype(np.float32)
        self.constant_[trainable] = np.nan
        from joblib import Parallel, delayed
        from tqdm import tqdm

        # one model per hashtag (997 at HARRISON's size, minutes on 2 cores): a bar on a terminal
        jobs = Parallel(n_jobs=self.n_jobs, return_as="generator")(
            delayed(_fit_one)(estimator, Z, Y[:, j]) for j in trainable)
        fits = list(tqdm(jobs, total=len(trainable), desc="ovr classes", unit="class", disable=None, leave=False))
        self.coef_ = np.zeros((self.n_classes_, Z.shape[1]), np.float32)
        self.intercept_ = np.zeros(self.n_classes_, np.float32)
        self.n_iter_ = np.zeros(self.n_classes_, np.int32)
        for j, (w, b, n_iter) in zip(trainable, fits, strict=True):
            self.coef_[j], self.intercept_[j], self.n_iter_[j] = w, b, n_iter
        self.report_ = {"rows_fitted": int(len(keep)), "rows": int(n), "pca_fit_rows": int(len(sample)),
                        "classes_fitted": int(len(trainable))}
        laps.lap("class_models")
        self.report_["seconds"] = laps.seconds
        return self

    def _margin(self, X: np.ndarray) -> np.ndarray:
        return project(self._combine(X), self._projection) @ self.coef_.T + self.intercept_

    def _margins(self, X: np.ndarray) -> np.ndarray:
        margin = self._margin(X)
        fixed = ~np.isnan(self.constant_)
        margin[:, fixed] = np.where(self.constant_[fixed] > 0, CONSTANT_MARGIN, -CONSTANT_MARGIN)
        return margin

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Each class model's margin (n, C), float32; predict_proba is its sigmoid. Fitted on binary
        labels: scikit-learn's (n,) score for classes_[1] (see HeadEstimator._decision)."""
        return self._decision(X)

    def _predict_scores(self, X: np.ndarray) -> np.ndarray:
        scores = 1.0 / (1.0 + np.exp(-np.clip(self._margin(X), -50, 50)))
        fixed = ~np.isnan(self.constant_)
        scores[:, fixed] = self.constant_[fixed]
        return scores.astype(np.float32)

    def _save_state(self, directory: Path) -> None:
        np.savez(directory / STATE_FILE, n_iter_=self.n_iter_, **{a: getattr(self, a) for a in self.state_attrs})

    def _load_state(self, directory: Path) -> None:
        super()._load_state(directory)
        with np.load(directory / STATE_FILE, allow_pickle=False) as data:
            # saved before n_iter_ was kept: unknown, so none is claimed
            self.n_iter_ = data["n_iter_"] if "n_iter_" in data else np.zeros(len(self.coef_), np.int32)
