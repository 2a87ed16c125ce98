"""The metrics against hand-worked cases, a plain-Python brute force and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, label_ranking_average_precision_score

from hashtagkit import metrics


def brute_force(scores, labels, k):
    """The paper's definitions, one image at a time, ranking by (-score, class id)."""
    p = r = a = 0.0
    for s, y in zip(scores.tolist(), labels.tolist(), strict=True):
        ranked = sorted(range(len(s)), key=lambda j: (-s[j], j))[:k]
        gt = {j for j, v in enumerate(y) if v}
        hit = len(set(ranked) & gt)
        p += hit / len(ranked)
        r += hit / len(gt)
        a += 1.0 if hit else 0.0
    n = len(scores)
    return p / n, r / n, a / n


def test_hand_worked_case():
    # image 0: scores rank classes 2, 0, 1, 3; GT {0, 3}
    # image 1: all scores tie -> ranking by class id 0, 1, 2, 3; GT {3}
    scores = np.array([[0.5, 0.1, 0.9, 0.0], [0.2, 0.2, 0.2, 0.2]])
    labels = np.array([[1, 0, 0, 1], [0, 0, 0, 1]])
    assert metrics.top_k(scores, 2).tolist() == [[2, 0], [0, 1]]
    assert metrics.precision_at_k(scores, labels, 1) == pytest.approx(0.0)
    assert metrics.precision_at_k(scores, labels, 2) == pytest.approx((1 / 2 + 0) / 2)
    assert metrics.recall_at_k(scores, labels, 2) == pytest.approx((1 / 2 + 0) / 2)
    assert metrics.accuracy_at_k(scores, labels, 2) == pytest.approx(0.5)
    assert metrics.recall_at_k(scores, labels, 4) == pytest.approx(1.0)
    assert metrics.accuracy_at_k(scores, labels, 4) == pytest.approx(1.0)
    # AP image 0: positives at ranks 2 and 4 -> (1/2 + 2/4) / 2; image 1: rank 4 -> 1/4
    assert metrics.mean_average_precision(scores, labels) == pytest.approx(((0.5 + 0.5) / 2 + 0.25) / 2)


def test_ties_break_by_class_id_at_the_cut():
    # four-way tie across the k boundary: the lowest ids must win, whatever the partition does
    scores = np.array([[0.3, 0.7, 0.3, 0.3, 0.3, 0.1]])
    assert metrics.top_k(scores, 3).tolist() == [[1, 0, 2]]
    labels = np.array([[0, 0, 0, 0, 1, 0]])
    assert metrics.accuracy_at_k(scores, labels, 4) == 0.0
    assert metrics.accuracy_at_k(scores, labels, 5) == 1.0


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int32])
def test_top_k_equals_stable_full_sort(dtype):
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 5, (200, 30)).astype(dtype)  # many ties
    full = np.argsort(-scores.astype(np.float64), axis=1, kind="stable")
    for k in (1, 3, 7, 30, 40):
        assert np.array_equal(metrics.top_k(scores, k), full[:, : min(k, 30)])


@pytest.mark.slow
def test_against_brute_force_on_real_harrison_labels(harrison_store):
    labels = harrison_store.labels(harrison_store.split_rows("test"))[:600]
    rng = np.random.default_rng(0)
    cases = {
        "random": rng.random(labels.shape),
        "coarse (ties)": np.round(rng.random(labels.shape), 1),
        "popularity (all tie within a column)": np.tile(labels.mean(0), (len(labels), 1)),
    }
    for name, scores in cases.items():
        for k in (1, 5, 10):
            expected = brute_force(scores, labels, k)
            got = (metrics.precision_at_k(scores, labels, k), metrics.recall_at_k(scores, labels, k),
                   metrics.accuracy_at_k(scores, labels, k))
            assert got == pytest.approx(expected, abs=1e-12), (name, k)


def test_map_equals_scikit_learn_without_ties():
    rng = np.random.default_rng(2)
    labels = (rng.random((300, 40)) < 0.1).astype(int)
    labels[np.arange(300), rng.integers(0, 40, 300)] = 1
    scores = rng.random(labels.shape)
    assert metrics.mean_average_precision(scores, labels, per="image") == pytest.approx(
        label_ranking_average_precision_score(labels, scores))
    per_class = [average_precision_score(labels[:, j], scores[:, j]) for j in range(40) if labels[:, j].any()]
    assert metrics.mean_average_precision(scores, labels, per="class") == pytest.approx(np.mean(per_class))


def test_per_class_recall_brute_force():
    rng = np.random.default_rng(3)
    labels = (rng.random((100, 12)) < 0.2).astype(int)
    labels[:, 11] = 0  # a class with no positive image
    scores = rng.random(labels.shape)
    got = metrics.per_class_recall_at_k(scores, labels, 3)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :3]
    for j in range(11):
        pos = np.flatnonzero(labels[:, j])
        assert got[j] == pytest.approx(np.mean([j in top[i] for i in pos]))
    assert np.isnan(got[11])


def test_summary_against_brute_force_and_scikit_learn():
    """Every number summary reports, each from an independent computation."""
    rng = np.random.default_rng(4)
    labels = (rng.random((50, 20)) < 0.2).astype(int)
    labels[np.arange(50), rng.integers(0, 20, 50)] = 1
    scores = rng.random(labels.shape)  # continuous: no ties, so scikit-learn's AP is the same quantity
    out = metrics.summary(scores, labels, ks=(1, 3, 5))
    assert out["n_images"] == 50
    for k in (1, 3, 5):
        p, r, a = brute_force(scores, labels, k)
        assert (out[f"precision@{k}"], out[f"recall@{k}"], out[f"accuracy@{k}"]) == pytest.approx((p, r, a), abs=1e-12)
    assert out["map"] == pytest.approx(label_ranking_average_precision_score(labels, scores))
    per_class = [average_precision_score(labels[:, j], scores[:, j]) for j in range(20) if labels[:, j].any()]
    assert out["map_class"] == pytest.approx(np.mean(per_class))


def test_summary_labels_a_k_above_the_vocabulary_as_computed():
    rng = np.random.default_rng(5)
    labels = (rng.random((30, 6)) < 0.3).astype(int)
    labels[:, 2] = 1
    scores = rng.random(labels.shape)
    out = metrics.summary(scores, labels, ks=(1, 6, 1000))
    assert "precision@1000" not in out and "recall@1000" not in out
    assert out["recall@6"] == 1.0 and out["precision@6"] == pytest.approx(labels.sum() / labels.size)


def test_bad_inputs_are_errors():
    with pytest.raises(ValueError, match="NaN"):
        metrics.precision_at_k(np.array([[np.nan, 1.0]]), np.array([[1, 0]]), 1)
    with pytest.raises(ValueError, match="shape"):
        metrics.precision_at_k(np.zeros((2, 3)), np.zeros((2, 4)), 1)
    with pytest.raises(ValueError, match="no ground-truth"):
        metrics.recall_at_k(np.zeros((2, 3)), np.array([[1, 0, 0], [0, 0, 0]]), 1)
    with pytest.raises(ValueError, match="positive integer"):
        metrics.top_k(np.zeros((2, 3)), 0)
