"""TagProp: knn as its special case, leave-one-out neighbours, the learned scale and the per-tag
sigmoids, each against an independent computation (brute force numpy, scipy)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hashtagkit.heads import KNNHead, TagPropHead
from hashtagkit.heads.data import ArrayData
from hashtagkit.heads.tagprop import EPS, fit_sigmoids


def data(n=300, d=24, c=12, seed=0):
    """Labels with a long tail and features that show them (plus noise), so neighbours mean something."""
    rng = np.random.default_rng(seed)
    Y = (rng.random((n, c)) < np.linspace(0.35, 0.03, c)).astype(np.uint8)
    Y[:, -1] = 0  # a class with no positive
    X = (Y @ rng.normal(size=(c, d)) + rng.normal(size=(n, d))).astype(np.float32)
    return X, Y


def embedded(head, X):
    """The head's embedding, as brute force needs it (the same PCA, L2 norm)."""
    return head._embed(X)


@pytest.mark.parametrize("pca", [None, 8])
def test_fixed_weights_and_identity_sigmoid_are_exactly_knn(pca):
    X, Y = data()
    knn = KNNHead(k=10, pca=pca, temperature=0.1).fit(X[:250], Y[:250])
    tagprop = TagPropHead(k=10, pca=pca, temperature=0.1, weighting="fixed", sigmoid="identity").fit(X[:250], Y[:250])
    assert np.array_equal(tagprop.predict_proba(X[250:]), knn.predict_proba(X[250:]))
    assert tagprop.fit_report()["loo_rows"] == 0  # nothing was learned, so no leave-one-out pass


def test_leave_one_out_neighbours_are_the_brute_force_ones_without_the_row_itself():
    X, Y = data()
    head = TagPropHead(k=7, pca=None, loo_rows=40, sigmoid="identity").fit(X, Y)
    sims, ids, rows, labels = head._loo_neighbours(ArrayData(X, Y, block_rows=50))
    assert len(rows) == 40 == len(np.unique(rows)) and ids.shape == (40, 7)
    np.testing.assert_array_equal(labels, Y[rows])
    Z = embedded(head, X)
    for i, sim_row, id_row in zip(rows, sims, ids, strict=True):
        s = Z @ Z[i]
        s[i] = -np.inf  # leave the row itself out
        expected = np.argsort(-s, kind="stable")[:7]
        assert i not in id_row and list(id_row) == list(expected)
        np.testing.assert_allclose(sim_row, s[expected], rtol=1e-5, atol=1e-6)


def brute_loglik(Z: np.ndarray, Y: np.ndarray, rows: np.ndarray, k: int, T: float) -> float:
    """The paper's leave-one-out log-likelihood, written out: softmax of similarity / T over the
    k nearest other rows, p = eps + (1 - 2 eps) sum_j pi_ij y_jw, mean of log p over (row, tag)."""
    total = []
    for i in rows:
        s = Z @ Z[i]
        s[i] = -np.inf
        nn = np.argsort(-s, kind="stable")[:k]
        w = np.exp((s[nn] - s[nn].max()) / T)
        p = EPS + (1 - 2 * EPS) * (w / w.sum()) @ Y[nn]
        total.append(np.where(Y[i] != 0, np.log(p), np.log(1 - p)))
    return float(np.mean(total))


def test_learned_scale_maximises_the_leave_one_out_likelihood():
    X, Y = data(n=200)
    head = TagPropHead(k=10, pca=None, sigmoid="identity", loo_rows=10_000).fit(X, Y)  # every row left out in turn
    report = head.fit_report()
    assert report["loo_rows"] == 200 and report["weighting"] == "learned"
    Z = embedded(head, X)
    rows = np.arange(200)
    learned = brute_loglik(Z, Y, rows, 10, head.temperature_)
    assert learned == pytest.approx(report["loo_loglik_per_label"], abs=1e-5)
    grid = [brute_loglik(Z, Y, rows, 10, T) for T in np.geomspace(1e-3, 5, 25)]
    assert learned >= max(grid) - 1e-4  # no temperature on a fine grid does better
    assert learned >= brute_loglik(Z, Y, rows, 10, 0.05) - 1e-9  # never worse than where it started


def test_sigmoids_are_the_ridge_logistic_regression_optimum():
    """fit_sigmoids against scipy minimising the same objective tag by tag."""
    from scipy.optimize import minimize

    rng = np.random.default_rng(1)
    votes = rng.random((400, 5)) ** 2
    Y = (rng.random((400, 5)) < 0.1 + 0.6 * votes).astype(np.uint8)
    Y[:, 4] = 0  # no positive: stays finite thanks to the ridge
    l2 = 1e-3
    alpha, beta = fit_sigmoids(votes, Y, l2=l2)
    for w in range(5):
        x, y = votes[:, w], Y[:, w].astype(float)

        def loss(ab, x=x, y=y):
            z = ab[0] * x + ab[1]
            return float(np.sum(np.logaddexp(0, z) - y * z) + 0.5 * l2 * len(x) * (ab[0] ** 2 + ab[1] ** 2))

        ref = minimize(loss, np.zeros(2), method="BFGS", options={"gtol": 1e-10}).x
        np.testing.assert_allclose([alpha[w], beta[w]], ref, atol=2e-3)
    assert np.isfinite(alpha).all() and np.isfinite(beta).all() and beta[4] < -3


def test_fitted_sigmoid_scores_are_the_sigmoid_of_the_votes_and_a_tag_without_positives_scores_zero():
    X, Y = data()
    head = TagPropHead(k=10, pca=None).fit(X[:250], Y[:250])
    votes = TagPropHead(k=10, pca=None, sigmoid="identity").fit(X[:250], Y[:250]).predict_proba(X[250:])
    expected = 1 / (1 + np.exp(-(head.alpha_ * votes + head.beta_)))
    expected[:, -1] = 0
    np.testing.assert_allclose(head.predict_proba(X[250:]), expected, rtol=1e-5, atol=1e-7)
    assert (head.predict_proba(X[250:])[:, -1] == 0).all()


def test_leave_one_out_sample_is_bounded_seeded_and_recorded():
    X, Y = data()
    a = TagPropHead(k=5, pca=None, loo_rows=37, random_state=3).fit(X, Y)
    b = TagPropHead(k=5, pca=None, loo_rows=37, random_state=3).fit(X, Y)
    assert a.fit_report()["loo_rows"] == 37 and a.fit_report()["loo_neighbours"] == 5
    assert a.temperature_ == b.temperature_ and np.array_equal(a.alpha_, b.alpha_)
    c = TagPropHead(k=5, pca=None, loo_rows=37, random_state=4).fit(X, Y)
    assert not np.array_equal(a.alpha_, c.alpha_)  # another seed, another sample


def test_more_neighbours_than_rows_and_a_single_row():
    X, Y = data(n=6)
    head = TagPropHead(k=50, pca=None).fit(X, Y)
    assert head.fit_report()["loo_neighbours"] == 5 and np.isfinite(head.predict_proba(X)).all()
    one = TagPropHead(k=3, pca=None).fit(X[:1], Y[:1])
    assert one.fit_report()["loo_rows"] == 0 and math.isfinite(one.temperature_)
    assert one.predict_proba(X[:2]).shape == (2, Y.shape[1])
