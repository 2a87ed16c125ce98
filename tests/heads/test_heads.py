"""Each head against an independent reference, and all of them on a small planted store."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.neighbors import NearestNeighbors

from hashtagkit import metrics
from hashtagkit.cli.main import cli
from hashtagkit.heads import KNNHead, MLPHead, OVRHead
from hashtagkit.heads.knn import EXACT_LIMIT
from hashtagkit.heads.mlp import caffe_loss
from hashtagkit.stores import open_store

from ..conftest import make_store


def blobs(n=300, d=32, c=6, seed=0):
    rng = np.random.default_rng(seed)
    Y = (rng.random((n, c)) < 0.3).astype(np.uint8)
    centres = rng.normal(0, 1, (c, d))
    X = np.maximum(Y @ centres + rng.normal(0, 0.5, (n, d)), 0).astype(np.float32)
    return X, Y


def noisy(n=400, d=32, c=20, seed=0):
    """Overlapping classes: the MLP's validation recall climbs for a few epochs and then wobbles."""
    rng = np.random.default_rng(seed)
    Y = (rng.random((n, c)) < 0.15).astype(np.uint8)
    X = (Y @ rng.normal(0, 1, (c, d)) + rng.normal(0, 2.0, (n, d))).astype(np.float32)
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


def test_knn_switches_to_an_approximate_index_above_exact_limit():
    X, Y = blobs(2000, 32)
    exact = KNNHead(k=10, exact_limit=2000).fit(X, Y)  # n <= limit: exact
    approx = KNNHead(k=10, exact_limit=1999).fit(X, Y)
    assert exact.index_desc_.startswith("IndexFlatIP") and approx.index_desc_.startswith("IndexIVFFlat")
    assert KNNHead().exact_limit == EXACT_LIMIT
    Q = blobs(100, 32, seed=2)[0]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact.kneighbors(Q)[1], approx.kneighbors(Q)[1], strict=True)])
    assert overlap > 0.8


def test_knn_saved_before_exact_limit_existed_still_loads(tmp_path):
    from hashtagkit.heads import Head

    X, Y = blobs(200, 16)
    head = KNNHead(k=5, pca=None).fit(X, Y)
    head.save(tmp_path / "m")
    meta_path = tmp_path / "m" / "head.json"
    meta = json.loads(meta_path.read_text())
    del meta["params"]["exact_limit"]  # as an earlier hashtagkit wrote it
    meta_path.write_text(json.dumps(meta))
    again = Head.load(tmp_path / "m")
    assert again.exact_limit == EXACT_LIMIT and again.index_desc_ == head.index_desc_
    assert np.array_equal(again.predict_proba(X), head.predict_proba(X))


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


def tagged_val_rows(head, Y):
    return head.val_rows_[Y[head.val_rows_].any(axis=1)]


def test_mlp_early_stopping_keeps_the_best_epoch():
    X, Y = noisy()
    head = MLPHead(hidden=64, epochs=60, patience=2, lr=3e-3).fit(X, Y)
    h = head.history_
    scores = [e["val_recall@5"] for e in h["epochs"]]
    assert h["n_val"] == 40 and h["val_metric"] == "val_recall@5"
    assert len(scores) < 60 and h["best_epoch"] < len(scores)  # stopped early, after a better epoch than the last
    assert scores[h["best_epoch"] - 1] == max(scores) > scores[-1]
    rows = tagged_val_rows(head, Y)
    restored = metrics.recall_at_k(head.predict_proba(X[rows]), Y[rows], 5)
    assert restored == pytest.approx(max(scores), abs=1e-9)  # the weights are the best epoch's, not the last's


def test_mlp_validation_recall_leaves_out_rows_without_hashtags():
    X, Y = noisy()
    Y[:100] = 0  # as a store prepared with --min-tags 0 can hold
    head = MLPHead(hidden=32, epochs=3, lr=3e-3).fit(X, Y)
    h = head.history_
    untagged = int((~Y[head.val_rows_].any(axis=1)).sum())
    assert untagged > 0 and h["n_val_untagged"] == untagged and h["val_metric"] == "val_recall@5"
    scores = [e["val_recall@5"] for e in h["epochs"]]
    assert all(0 <= s <= 1 for s in scores)  # was minus the training loss when any row had no hashtag
    rows = tagged_val_rows(head, Y)
    assert metrics.recall_at_k(head.predict_proba(X[rows]), Y[rows], 5) == pytest.approx(max(scores), abs=1e-9)


def test_mlp_without_a_tagged_validation_row_watches_the_validation_loss():
    X, Y = noisy()
    val_rows = MLPHead(hidden=32, epochs=1).fit(X, Y).val_rows_  # the split depends only on n and the seed
    Y[val_rows] = 0
    head = MLPHead(hidden=64, epochs=60, patience=2, lr=3e-3).fit(X, Y)
    h = head.history_
    assert np.array_equal(head.val_rows_, val_rows) and h["n_val_untagged"] == len(val_rows) == 40
    assert h["val_metric"] == "val_loss" and not any("val_recall@5" in e for e in h["epochs"])
    losses = [e["val_loss"] for e in h["epochs"]]
    assert all(v > 0 for v in losses) and losses[h["best_epoch"] - 1] == min(losses)
    assert len(losses) < 60  # the loss does give early stopping something to stop on
    logits = torch.from_numpy(head.decision_function(X[val_rows]))
    assert float(caffe_loss(logits, torch.from_numpy(Y[val_rows].astype(np.float32)))) == pytest.approx(min(losses), rel=1e-6)


def test_bad_parameters_are_one_line_errors_from_the_cli(tmp_path):
    store = make_store(tmp_path / "s.zarr").path
    for head, setting, expected in [("knn", "k=2.5", "knn parameter k must be an integer >= 1, got 2.5"),
                                    ("knn", "k=true", "knn parameter k must be an integer >= 1, got True"),
                                    ("mlp", "hidden=0", "mlp parameter hidden must be an integer >= 1, got 0"),
                                    ("mlp", "epochs=0", "mlp parameter epochs must be an integer >= 1 or null"),
                                    ("mlp", "epochs=3.0", "mlp parameter epochs must be an integer >= 1 or null"),
                                    ("mlp", "device=gpu", "mlp parameter device must be one of auto, cpu, cuda"),
                                    ("ovr", "nope=1", "head 'ovr' has no parameter 'nope'")]:
        out = tmp_path / f"run-{head}-{setting}"
        res = CliRunner().invoke(cli, ["fit", str(store), "--head", head, "--set", setting, "-o", str(out)])
        assert res.exit_code == 2, (setting, res.output)
        assert res.stderr.startswith(f"Error: {expected}") and res.stderr.count("\n") == 1, res.stderr
        assert not out.exists()


def test_fit_help_lists_every_parameter_from_the_declarations():
    from hashtagkit.heads import HEADS

    res = CliRunner().invoke(cli, ["fit", "--help"])
    assert res.exit_code == 0
    for klass in HEADS.values():
        for line in klass.describe_params():
            assert line in res.output
    assert f"exact_limit={EXACT_LIMIT}  an integer >= 1" in res.output


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


@pytest.mark.slow
def test_long_fits_show_progress_on_a_terminal():
    """ovr's per-class fits, kNN's index and fusion's weight grid draw a progress bar when stderr is a
    terminal (issue #23: a 650 s ovr fit printed nothing), and nothing when it is not (logs, tests)."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios

    code = ("import numpy as np; from hashtagkit.heads import OVRHead, KNNHead, FusionHead; "
            "rng = np.random.default_rng(0); X = rng.random((300, 8)).astype(np.float32); "
            "Y = (rng.random((300, 5)) < 0.3).astype(np.uint8); Y[:, 0] = 1 - Y[:, 1]; "
            "OVRHead(pca=None, n_jobs=1).fit(X, Y); KNNHead(k=3, pca=None).fit(X, Y); "
            "FusionHead(components='knn,ovr', component_params={'knn': {'k': 3}, 'ovr': {'n_jobs': 1}}).fit(X, Y)")
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal 100 columns wide
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=follower, stdout=subprocess.DEVNULL)
    os.close(follower)
    seen = b""
    while True:
        try:
            part = os.read(leader, 4096)
        except OSError:  # the terminal closed: the process is done
            break
        if not part:
            break
        seen += part
    assert proc.wait(timeout=120) == 0, seen[-2000:]
    os.close(leader)
    for bar in (b"ovr classes", b"knn index", b"fusion weights"):
        assert bar in seen, (bar, seen[-500:])
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert quiet.returncode == 0 and b"ovr classes" not in quiet.stderr
