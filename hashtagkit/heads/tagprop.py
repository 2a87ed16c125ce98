"""TagProp (Guillaumin, Mensink, Verbeek, Schmid, ICCV 2009): kNN label transfer whose neighbour
weights and per-tag output are learned from the training rows themselves.

It is `knn` (its PCA, index, compact label lists and neighbour search are reused by subclassing)
with two things learned instead of fixed, each by maximum likelihood on *leave-one-out*
neighbours: a training row's k nearest training rows other than itself, so the training rows
can judge the transfer without a held-out part, as in the paper.

- **Neighbour weights** (`weighting`): the paper's distance-based weights
  pi_ij = exp(-d_ij / T) / sum_j' exp(-d_ij' / T), with d the cosine distance (1 - similarity)
  and the scale 1/T learned by maximising the leave-one-out log-likelihood of the paper's
  model p(y_iw) = eps + (1 - 2 eps) sum_j pi_ij y_jw (`learned`, starting from `temperature`);
  `fixed` keeps `temperature` as knn does. (The paper's rank-based weights are not offered:
  with cosine similarities from one index one learned scale is what the distance variant
  needs, and it keeps knn as the special case.)
- **Per-tag sigmoid** (`sigmoid=fit`, the paper's sigma-ML variant): the score of tag w is
  sigmoid(alpha_w x_iw + beta_w), x_iw the weighted vote above, with (alpha_w, beta_w) fitted by
  a per-tag logistic regression on the leave-one-out votes. It lets rare tags, which rarely win
  a vote, rise where the evidence for them is strong: the point of the model. The weights are
  fitted first, then the sigmoids on the votes they give (the paper optimises both together;
  staged, each step is a small convex or one-dimensional problem). A tag with no training
  positive scores 0, as in knn. `sigmoid=identity` scores the votes themselves: with
  `weighting=fixed` that is exactly today's knn (tests/heads/test_tagprop.py checks it).

Bounded memory, like knn: the index is built block by block by `KNNHead.fit_data`; the
leave-one-out rows are a seeded sample of at most `loo_rows` training rows (10,000 by default;
all of them below that), read from whole blocks spread over the data (`projection.sample_positions`'s
rule), embedded, and searched for k + 1 neighbours with the row itself removed. Memory is that
sample's votes (loo_rows x C floats), whatever N; the count is in `fit_report`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from hashtagkit.heads.base import BLOCK_WEIGHTS, Param
from hashtagkit.heads.data import TrainingData
from hashtagkit.heads.knn import EXACT_LIMIT, INDEX_MB, TARGET_RECALL, KNNHead
from hashtagkit.heads.projection import SPREAD

LOO_ROWS = 10_000  # leave-one-out rows: 10,000 x 997 votes are 40 MB of float32
EPS = 1e-5  # the paper's epsilon: a neighbour's tag is transferred with probability 1 - eps
SIGMOID_L2 = 1e-4  # ridge on (alpha, beta) per leave-one-out row: keeps separable tags finite (1e-2 shrank alpha to a third and cost 4 points of R@5 on a toy set)
NEWTON_STEPS = 50
MAX_STEP = 5.0  # largest Newton step on alpha or beta
STATE_FILE = "tagprop.npz"


def _leave_one_out(sims: np.ndarray, ids: np.ndarray, self_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first k of k + 1 neighbours that are not the row itself (its own id, wherever it came:
    exact ties or an approximate index may not put it first; absent, the last one goes)."""
    is_self = ids == self_ids[:, None]
    order = np.argsort(is_self, axis=1, kind="stable")[:, :k]  # False (not self) first, order kept
    return np.take_along_axis(sims, order, 1), np.take_along_axis(ids, order, 1)


def fit_sigmoids(votes: np.ndarray, Y: np.ndarray, l2: float = SIGMOID_L2,
                 steps: int = NEWTON_STEPS) -> tuple[np.ndarray, np.ndarray]:
    """Per-tag logistic regression of Y[:, w] on votes[:, w] (one input and an intercept per tag),
    by Newton's method on all tags at once with a small ridge (l2 x rows) on both parameters;
    each step is a 2 x 2 solve per tag. Returns (alpha, beta), each (C,)."""
    m, c = votes.shape
    x, y = votes.astype(np.float64), Y.astype(np.float64)
    prior = np.clip(y.mean(0) if m else np.full(c, 0.5), 1e-4, 1 - 1e-4)
    alpha, beta = np.ones(c), np.log(prior / (1 - prior))  # start at each tag's base rate
    ridge = l2 * max(m, 1)
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(alpha * x + beta, -50, 50)))
        r, s = p - y, p * (1 - p)
        g = np.stack([(r * x).sum(0) + ridge * alpha, r.sum(0) + ridge * beta])  # (2, C)
        haa, hab, hbb = (s * x * x).sum(0) + ridge, (s * x).sum(0), s.sum(0) + ridge
        det = haa * hbb - hab * hab
        da, db = (hbb * g[0] - hab * g[1]) / det, (haa * g[1] - hab * g[0]) / det
        big = np.maximum(1.0, np.maximum(np.abs(da), np.abs(db)) / MAX_STEP)  # damped: no overshoot far out
        da, db = da / big, db / big
        alpha, beta = alpha - da, beta - db
        if max(np.abs(da).max(), np.abs(db).max()) < 1e-8:
            break
    return alpha.astype(np.float32), beta.astype(np.float32)


class TagPropHead(KNNHead):
    name = "tagprop"
    param_spec = {
        **{key: spec for key, spec in KNNHead.param_spec.items() if key != "block_weights"},
        "weighting": Param(str, choices=("learned", "fixed")),
        "sigmoid": Param(str, choices=("fit", "identity")),
        "loo_rows": Param(int, low=1),
        "block_weights": KNNHead.param_spec["block_weights"],  # last, as in the signature
    }

    def __init__(self, k: int = 50, temperature: float = 0.05, pca: int | None = 256, index: str = "auto",
                 batch_size: int = 1024, exact_limit: int = EXACT_LIMIT, index_mb: float = INDEX_MB,
                 target_recall: float | None = TARGET_RECALL, random_state: int = 0, weighting: str = "learned",
                 sigmoid: str = "fit", loo_rows: int = LOO_ROWS, block_weights: str = BLOCK_WEIGHTS) -> None:
        super().__init__(k=k, temperature=temperature, pca=pca, index=index, batch_size=batch_size,
                         exact_limit=exact_limit, index_mb=index_mb, target_recall=target_recall,
                         random_state=random_state, block_weights=block_weights)
        self.weighting = weighting
        self.sigmoid = sigmoid
        self.loo_rows = loo_rows

    # --- fitting ------------------------------------------------------------------------------
    def fit_data(self, data: TrainingData) -> TagPropHead:
        """knn's index, then the weights' scale and the sigmoids from leave-one-out neighbours of
        a seeded sample of training rows (the index's ids are the data's positions)."""
        super().fit_data(data)
        self.temperature_ = float(self.temperature)
        positives = np.bincount(self.label_indices_, minlength=self.n_classes_)
        self.alpha_ = np.ones(self.n_classes_, np.float32)
        self.beta_ = np.zeros(self.n_classes_, np.float32)
        self.has_positive_ = positives > 0
        report = {"weighting": self.weighting, "sigmoid": self.sigmoid, "loo_rows": 0}
        needs_loo = self.weighting == "learned" or self.sigmoid == "fit"
        if needs_loo and data.n_rows > 1:
            sims, ids, _, Y = self._loo_neighbours(data)
            report.update({"loo_rows": int(len(Y)), "loo_neighbours": int(ids.shape[1])})
            if self.weighting == "learned":
                self.temperature_, loglik = self._learn_temperature(sims, ids, Y)
                report.update({"temperature_learned": round(self.temperature_, 6),
                               "loo_loglik_per_label": round(loglik, 6),
                               "loo_loglik_per_label_at_start": round(self._loglik(math.log(1 / self.temperature), sims, ids, Y), 6)})
            if self.sigmoid == "fit":
                votes = self._scores(sims, ids, self.temperature_)
                self.alpha_, self.beta_ = fit_sigmoids(votes, Y)
                report["sigmoid_alpha_median"] = round(float(np.median(self.alpha_[self.has_positive_])), 4)
        self.report_.update(report)
        return self

    def _loo_neighbours(self, data: TrainingData) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(similarities, ids, positions, labels) of the leave-one-out sample: at most `loo_rows` positions
        drawn uniformly from whole random blocks holding SPREAD x loo_rows rows, embedded a block
        at a time (only the sample's vectors are kept), each with its k nearest other rows."""
        rng = np.random.default_rng([self.random_state, 1])  # not the PCA sample's stream
        pool = data.sample_positions(SPREAD * self.loo_rows, rng)
        rows = pool if len(pool) <= self.loo_rows else np.sort(rng.choice(pool, self.loo_rows, replace=False))
        k = min(self.k, self.index_.ntotal - 1)
        sims, ids, labels = [], [], []
        for start in range(0, len(rows), self.batch_size):
            part = rows[start : start + self.batch_size]
            X, Y = data.take(part)
            s, i = self._searcher().search(self._embed(X), k + 1)
            s, i = _leave_one_out(s, i, part, k)
            sims.append(s)
            ids.append(i)
            labels.append(np.asarray(Y != 0, np.uint8))
        return np.concatenate(sims), np.concatenate(ids), rows, np.concatenate(labels)

    def _scores(self, sims: np.ndarray, ids: np.ndarray, temperature: float) -> np.ndarray:
        """The weighted votes (n, C) of these neighbours: knn's arithmetic, batch by batch."""
        out = np.zeros((len(sims), self.n_classes_), dtype=np.float32)
        for start in range(0, len(sims), self.batch_size):
            stop = start + self.batch_size
            out[start:stop] = self._weighted_votes(sims[start:stop], ids[start:stop], temperature)
        return out

    def _loglik(self, log_scale: float, sims: np.ndarray, ids: np.ndarray, Y: np.ndarray) -> float:
        """The paper's leave-one-out log-likelihood per (row, tag) pair at scale exp(log_scale)."""
        p = EPS + (1 - 2 * EPS) * self._scores(sims, ids, 1.0 / math.exp(log_scale)).astype(np.float64)
        return float(np.where(Y != 0, np.log(p), np.log1p(-p)).mean())

    def _learn_temperature(self, sims: np.ndarray, ids: np.ndarray, Y: np.ndarray) -> tuple[float, float]:
        """The scale 1/T maximising the leave-one-out log-likelihood: a bounded one-dimensional
        search over log(1/T) in [log 0.1, log 10,000] (T from 1e-4 to 10), Brent's method."""
        from scipy.optimize import minimize_scalar

        found = minimize_scalar(lambda s: -self._loglik(s, sims, ids, Y), bounds=(math.log(0.1), math.log(1e4)),
                                method="bounded", options={"xatol": 1e-3})
        start = math.log(1 / self.temperature)
        best = float(found.x) if -found.fun >= self._loglik(start, sims, ids, Y) else start
        return 1.0 / math.exp(best), self._loglik(best, sims, ids, Y)

    # --- scoring ------------------------------------------------------------------------------
    def _vote_temperature(self) -> float:
        return self.temperature_

    def _predict_scores(self, X: np.ndarray) -> np.ndarray:
        out = super()._predict_scores(X)  # knn's votes at the learned T
        if self.sigmoid == "fit":
            out = 1.0 / (1.0 + np.exp(-np.clip(self.alpha_ * out + self.beta_, -50, 50)))
            out[:, ~self.has_positive_] = 0  # no training positive: no evidence, as knn scores it
        return out.astype(np.float32)

    # --- persistence --------------------------------------------------------------------------
    def _save_state(self, directory: Path) -> None:
        super()._save_state(directory)
        np.savez(directory / STATE_FILE, alpha=self.alpha_, beta=self.beta_, has_positive=self.has_positive_,
                 temperature=np.float64(self.temperature_))

    def _load_state(self, directory: Path) -> None:
        super()._load_state(directory)
        with np.load(directory / STATE_FILE) as state:
            self.alpha_, self.beta_ = state["alpha"], state["beta"]
            self.has_positive_, self.temperature_ = state["has_positive"], float(state["temperature"])
