"""Accepted values never give NaN later (issue #23): a tiny kNN temperature scores like the
nearest neighbour alone, a diverging MLP is stopped with the epoch named, and no run that
cannot score is ever written."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from hashtagkit.cli.main import cli
from hashtagkit.heads import KNNHead, TagPropHead

from ..conftest import make_store
from ..heads.test_heads import blobs


@pytest.mark.parametrize("temperature", [1e-300, 5e-324])
def test_a_tiny_temperature_is_the_nearest_neighbours_vote(temperature):
    X, Y = blobs(300, 16)
    head = KNNHead(k=10, pca=None, temperature=temperature).fit(X[:200], Y[:200])
    scores = head.predict_proba(X[200:])
    assert np.isfinite(scores).all()
    sims, ids = head.kneighbors(X[200:])
    alone = sims[:, 0] > sims[:, 1]  # no tie for the nearest: it alone votes
    assert alone.sum() > 50
    assert np.array_equal(scores[alone], Y[:200][ids[alone, 0]].astype(np.float32))


def test_tagprop_at_a_tiny_temperature_scores():
    X, Y = blobs(300, 16)
    head = TagPropHead(k=10, pca=None, temperature=1e-300, weighting="fixed").fit(X[:200], Y[:200])
    assert np.isfinite(head.predict_proba(X[200:])).all()


def test_a_diverging_mlp_is_stopped_and_nothing_is_written(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    res = CliRunner().invoke(cli, ["fit", str(store.path), "--head", "mlp", "--set", "lr=1e30", "--set", "hidden=16",
                                   "--set", "epochs=3", "-o", str(tmp_path / "run")])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert lines[-1].startswith("Error: mlp training diverged in epoch 1") and "lower lr (now 1e+30)" in lines[-1]
    assert not (tmp_path / "run").exists()


def test_a_head_that_scores_nan_is_not_saved(tmp_path, monkeypatch):
    store = make_store(tmp_path / "s.zarr")
    monkeypatch.setattr(KNNHead, "predict_proba", lambda self, X: np.full((len(X), self.n_classes_), np.nan))
    res = CliRunner().invoke(cli, ["fit", str(store.path), "--head", "knn", "-o", str(tmp_path / "run")])
    assert res.exit_code == 2 and "scores NaN or infinity on training rows, so the run was not written" in res.output
    assert not (tmp_path / "run").exists()
