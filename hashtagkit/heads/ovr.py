"""One-vs-rest linear classifiers from scikit-learn, one per hashtag.

At HARRISON's size (52,383 x 8,192 x 997 classes) a linear model per class on the raw features
does not finish in useful time on two cores, so the features are first reduced by a whitened
PCA to `pca` dimensions (default 256; fitted on at most 20,000 rows), and the 997 per-class
fits then run in parallel (`n_jobs`, default all cores). Measured on the planted HARRISON-size
store: logistic regression takes about 0.2 s per class there (benchmarks/heads.py has the
totals). A class with no positive (or no negative) training example gets a constant score
of 0 (or 1) instead of a model.

Scores are sigmoid(decision function): probabilities for `logistic`, a monotone squashing of
the margin for `linearsvc` and `sgd` (hinge); ranking is all the harness uses.
"""

from __future__ import annotations

import numpy as np

from hashtagkit.heads.base import Head, Param
from hashtagkit.heads.projection import fit_projection, project


def _fit_one(estimator, Z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    from sklearn.base import clone  # scikit-learn is imported by fitting, not by every start (recommend)

    model = clone(estimator).fit(Z, y)
    return model.coef_.ravel().astype(np.float32), float(np.ravel(model.intercept_)[0])


class OVRHead(Head):
    name = "ovr"
    state_attrs = ("coef_", "intercept_", "constant_", "pca_mean_", "pca_components_", "pca_scale_")
    param_spec = {
        "estimator": Param(str, choices=("logistic", "linearsvc", "sgd")),
        "C": Param(float, low=0, low_open=True),
        "pca": Param(int, low=1, none=True, none_means="no PCA"),
        "max_iter": Param(int, low=1),
        "n_jobs": Param(int, low=-1, exclude=(0,), none=True, none_means="one job"),
        "random_state": Param(int, low=0, high=2**32 - 1),
    }

    @property
    def _projection(self) -> dict[str, np.ndarray]:
        return {"mean": self.pca_mean_, "components": self.pca_components_, "scale": self.pca_scale_}

    def __init__(self, estimator: str = "logistic", C: float = 1.0, pca: int | None = 256, max_iter: int = 100,
                 n_jobs: int | None = -1, random_state: int = 0) -> None:
        self.estimator = estimator
        self.C = C
        self.pca = pca
        self.max_iter = max_iter
        self.n_jobs = n_jobs
        self.random_state = random_state

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

    def fit_data(self, data) -> OVRHead:
        return self._fit_arrays(*data.to_arrays())  # reads every row into memory: to be replaced by streaming

    def _fit_arrays(self, X: np.ndarray, Y: np.ndarray) -> OVRHead:
        X, Y = self._check_xy(X, Y)
        estimator = self._make_estimator()
        self._set_shape(X, Y)
        p = fit_projection(X, self.pca or 0, whiten=True, random_state=self.random_state)
        self.pca_mean_, self.pca_components_, self.pca_scale_ = p["mean"], p["components"], p["scale"]
        Z = project(X, self._projection)
        Y = Y.astype(bool)
        positives = Y.sum(axis=0)
        trainable = np.flatnonzero((positives > 0) & (positives < len(Y)))
        self.constant_ = np.where(positives == 0, 0.0, 1.0).astype(np.float32)
        self.constant_[trainable] = np.nan
        from joblib import Parallel, delayed

        fits = Parallel(n_jobs=self.n_jobs)(delayed(_fit_one)(estimator, Z, Y[:, j]) for j in trainable)
        self.coef_ = np.zeros((self.n_classes_, Z.shape[1]), np.float32)
        self.intercept_ = np.zeros(self.n_classes_, np.float32)
        for j, (w, b) in zip(trainable, fits, strict=True):
            self.coef_[j], self.intercept_[j] = w, b
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        X = self._check_x(X)
        margin = project(X, self._projection) @ self.coef_.T + self.intercept_
        scores = 1.0 / (1.0 + np.exp(-np.clip(margin, -50, 50)))
        fixed = ~np.isnan(self.constant_)
        scores[:, fixed] = self.constant_[fixed]
        return scores.astype(np.float32)
