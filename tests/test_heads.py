"""Each head against an independent reference, and all of them on a small planted store."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.neighbors import NearestNeighbors

from hashtagkit.cli.main import cli
from hashtagkit.heads import KNNHead, MLPHead, OVRHead
from hashtagkit.stores import open_store


def blobs(n=300, d=32, c=6, seed=0):
    rng = np.random.default_rng(seed)
    Y = (rng.random((n, c)) < 0.3).astype(np.uint8)
    centres = rng.normal(0, 1, (c, d))
    X = np.maximum(Y @ centres + rng.normal(0, 0.5, (n, d)), 0).astype(np.float32)
    return X, Y


def test_knn_exact_neighbours_equal_scikit_learn_brute_force():
    X, Y = blobs(400, 48)
    Q = blobs(50, 48, seed=1)[0]
    head = KNNHead(k=7, pca=None).fit(X, Y)
    sims, ids = head.kneighbors(Q)
    ref = NearestNeighbors(n_neighbors=7, metric="cosine", algorithm="brute").fit(X)
    dist, ref_ids = ref.kneighbors(Q)
    assert np.array_equal(ids, ref_ids)
    assert np.allclose(sims, 1 - dist, atol=1e-5)
    assert head.index_desc_.startswith("IndexFlatIP")


def test_knn_votes_by_hand():
    X = np.array([[1, 0], [0.9, 0.1], [0, 1]], dtype=np.float32)
    Y = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1]], dtype=np.uint8)
    one = KNNHead(k=1).fit(X, Y)
    assert np.array_equal(one.predict_proba(np.array([[0.1, 1.0]], np.float32)), [[0, 0, 1]])
    two = KNNHead(k=2, temperature=1.0).fit(X, Y)
    q = np.array([[1.0, 0.05]], np.float32)
    sims = [float(q[0] @ x / np.linalg.norm(q) / np.linalg.norm(x)) for x in X[:2]]
    w = np.exp(np.array(sims) / 1.0)
    expected = (w[0] * Y[0] + w[1] * Y[1]) / w.sum()
    assert np.allclose(two.predict_proba(q)[0], expected, atol=1e-6)


@pytest.mark.parametrize("index", ["hnsw", "ivf"])
def test_knn_approximate_indexes_recorded_and_close(index):
    X, Y = blobs(2000, 32)
    exact = KNNHead(k=10).fit(X, Y)
    approx = KNNHead(k=10, index=index).fit(X, Y)
    assert approx.index_desc_.startswith({"hnsw": "IndexHNSW", "ivf": "IndexIVF"}[index])
    Q = blobs(100, 32, seed=2)[0]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact.kneighbors(Q)[1], approx.kneighbors(Q)[1], strict=True)])
    assert overlap > 0.8


def test_knn_pca():
    X, Y = blobs(500, 64)
    head = KNNHead(k=5, pca=8).fit(X, Y)
    assert head.projection_["components"].shape == (8, 64)
    assert head.index_.d == 8


def test_ovr_equals_scikit_learn_one_vs_rest():
    X, Y = blobs(300, 16)
    Y[:, -1] = 0  # a constant class: sklearn predicts 0 for it, so do we
    ours = OVRHead(pca=None, n_jobs=1).fit(X, Y).predict_proba(X)
    with pytest.warns(UserWarning, match="not present|Label"):
        theirs = OneVsRestClassifier(LogisticRegression(max_iter=100)).fit(X, Y).predict_proba(X)
    assert np.allclose(ours[:, :-1], theirs[:, :-1], atol=1e-4)
    assert (ours[:, -1] == 0).all()


@pytest.mark.parametrize("estimator", ["linearsvc", "sgd"])
def test_ovr_other_estimators_learn(estimator):
    X, Y = blobs(400, 16)
    scores = OVRHead(estimator=estimator, pca=8, n_jobs=1).fit(X[:300], Y[:300]).predict_proba(X[300:])
    from hashtagkit import metrics

    popular = np.tile(Y[:300].mean(0), (100, 1))
    assert metrics.precision_at_k(scores, Y[300:], 1) > metrics.precision_at_k(popular, Y[300:], 1) + 0.1


def test_mlp_is_the_papers_architecture_and_presets():
    X, Y = blobs(200, 32)
    head = MLPHead(hidden=64, epochs=2).fit(X, Y)
    shapes = [tuple(p.shape) for p in head.model_.parameters()]  # (the Standardize buffers are not parameters)
    assert shapes == [(64, 32), (64,), (64, 64), (64,), (6, 64), (6,)]
    cfg = MLPHead(preset="paper").config()
    assert (cfg["optimizer"], cfg["lr"], cfg["batch_size"], cfg["iterations"], cfg["step_every"]) == ("sgd", 0.1, 100, 100_000, 30_000)
    assert MLPHead(preset="paper", iterations=500).config()["iterations"] == 500
    assert MLPHead(preset="fast").config()["epochs"] == 30
    paper = MLPHead(preset="paper", iterations=40, hidden=32).fit(X, Y)
    assert paper.history_["iterations"] == 40 and paper.history_["n_val"] == 0
    with pytest.raises(ValueError, match="preset"):
        MLPHead(preset="nope").fit(X, Y)


def test_mlp_early_stopping_keeps_the_best_epoch():
    X, Y = blobs(400, 32)
    head = MLPHead(hidden=64, epochs=60, patience=2, lr=3e-3).fit(X, Y)
    epochs = head.history_["epochs"]
    assert head.history_["n_val"] == 40 and all("val_recall@5" in e for e in epochs)
    if len(epochs) < 60:  # stopped early: the last `patience` epochs did not beat the best
        best = max(e["val_recall@5"] for e in epochs)
        assert all(e["val_recall@5"] <= best for e in epochs[-2:])


# --- all heads on a small planted store, through the CLI -------------------------------------------
# 1,200 training rows give the fast preset only 5 steps an epoch: smaller batches and layers instead
MLP_SMALL = ["--set", "hidden=128", "--set", "batch_size=64", "--set", "epochs=60"]

@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    out = tmp_path_factory.mktemp("planted") / "p.zarr"
    res = CliRunner().invoke(cli, ["prepare", "planted", "-o", str(out), "--n", "1500", "--dim", "64", "--classes", "30",
                                   "--strength", "2", "--seed", "1"])
    assert res.exit_code == 0, res.output
    return out


def test_planted_signal_is_where_it_is_said(planted):
    s = open_store(planted)
    X, Y = s.features(), s.labels()
    meta = s.group.attrs["planted"]
    for block, classes, other in ((slice(0, 64), meta["object_classes"], slice(64, 128)),
                                  (slice(64, 128), meta["scene_classes"], slice(0, 64))):
        c = max(classes[:20], key=lambda j: Y[:, j].sum())  # a frequent class of that group
        pos, neg = Y[:, c] == 1, Y[:, c] == 0
        gap_here = np.abs(X[pos, block].mean(0) - X[neg, block].mean(0)).max()
        gap_other = np.abs(X[pos, other].astype(np.float32).mean(0) - X[neg, other].astype(np.float32).mean(0)).max()
        assert gap_here > 3 * gap_other
    assert 0 in meta["no_signal_classes"]
    assert 0.3 < (X == 0).mean() < 0.7  # ReLU-like


def fit_eval(store, tmp_path, head, view="both", *sets):
    out = tmp_path / f"{head}-{view}"
    res = CliRunner().invoke(cli, ["fit", str(store), "--head", head, "--features", view, "-o", str(out), *sets])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["evaluate", str(out), "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output), json.loads((out / "run.json").read_text())


@pytest.mark.parametrize("head, sets", [("knn", ["--set", "k=20"]), ("ovr", ["--set", "pca=32"]),
                                        ("mlp", MLP_SMALL)])
def test_every_head_beats_the_floor(planted, tmp_path, head, sets):
    floor, _ = fit_eval(planted, tmp_path, "popularity")
    got, run = fit_eval(planted, tmp_path, head, "both", *sets)
    for key in ("precision@1", "recall@5", "accuracy@5"):
        assert got[key] > floor[key], (head, key, got[key], floor[key])
    assert run["features"] == "both" and run["head"] == head
    assert run["store"]["blocks"][0]["backbone"] == "planted"


def test_both_views_beat_one_for_mlp(planted, tmp_path):
    sets = MLP_SMALL
    both, _ = fit_eval(planted, tmp_path, "mlp", "both", *sets)
    obj, run = fit_eval(planted, tmp_path, "mlp", "object", *sets)
    scene, _ = fit_eval(planted, tmp_path, "mlp", "scene", *sets)
    assert run["features"] == "object"
    assert both["recall@5"] >= max(obj["recall@5"], scene["recall@5"])
