"""ovr at size (issue #13, item 4): fitted from a store block by block it equals the fit on
arrays, and above `max_rows` it fits its per-class models on a recorded sample of that many rows
(so memory and time stop growing) while still learning."""

from __future__ import annotations

import numpy as np

from hashtagkit import metrics
from hashtagkit.heads import OVRHead
from hashtagkit.heads.blocks import layout_of
from hashtagkit.heads.data import ArrayData

from ..conftest import make_store
from ..heads.test_heads import blobs
from ..heads.test_mlp_stream import Watched


def test_store_blocks_fit_the_same_models_as_arrays(tmp_path):
    store = make_store(tmp_path / "s.zarr", n=300, chunk_rows=16)
    rows = store.split_rows("train")
    Q = store.features("both", store.split_rows("test"))
    for pca in (None, 4):
        streamed = OVRHead(pca=pca, n_jobs=1).fit_data(Watched(store, "both", rows))  # fails if read whole
        whole = OVRHead(pca=pca, n_jobs=1).fit(store.features("both", rows), store.labels(rows),
                                               blocks=layout_of(store.blocks, "both"))
        np.testing.assert_allclose(streamed.coef_, whole.coef_, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(streamed.predict_proba(Q), whole.predict_proba(Q), atol=1e-6)
        assert streamed.fit_report()["rows_fitted"] == len(rows)


def test_max_rows_caps_the_rows_the_models_see():
    X, Y = blobs(3000, 16)
    capped = OVRHead(pca=8, max_rows=500, n_jobs=1).fit_data(ArrayData(X[:2500], Y[:2500], block_rows=128))
    assert capped.fit_report().items() >= {"rows_fitted": 500, "rows": 2500, "pca_fit_rows": 2500, "classes_fitted": Y.shape[1]}.items()
    full = OVRHead(pca=8, n_jobs=1).fit(X[:2500], Y[:2500])
    assert not np.allclose(capped.coef_, full.coef_)  # another set of rows ...
    popular = np.tile(Y[:2500].mean(0), (500, 1))
    floor = metrics.precision_at_k(popular, Y[2500:], 1)
    p_capped = metrics.precision_at_k(capped.predict_proba(X[2500:]), Y[2500:], 1)
    p_full = metrics.precision_at_k(full.predict_proba(X[2500:]), Y[2500:], 1)
    assert p_capped > floor + 0.1 and p_capped > p_full - 0.05  # ... that still learns the classes


def test_pca_sample_spans_every_block_of_a_store_ordered_by_content(monkeypatch):
    """As for kNN (tests/heads/test_knn_size.py): the whitened PCA's mean is the data's, not that of a
    few whole blocks of a store ordered by hashtag."""
    from hashtagkit.heads import projection

    from ..heads.test_knn_size import sorted_blocks

    monkeypatch.setattr(projection, "FIT_ROWS", 200)
    monkeypatch.setattr("hashtagkit.heads.ovr.FIT_ROWS", 200, raising=False)  # as imported before the fix
    X, Y = sorted_blocks()
    head = OVRHead(pca=4, n_jobs=1).fit_data(ArrayData(X, Y, block_rows=100))
    assert head.fit_report()["pca_fit_rows"] == 200
    np.testing.assert_allclose(head.pca_mean_, X.mean(axis=0), atol=0.25)
