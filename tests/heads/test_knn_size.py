"""kNN at size (issue #13, item 3): the index built block by block from a store equals the one
built from arrays, an IVF-PQ index is chosen above the size and memory thresholds with a recall
that matches brute force, the compact label lists vote exactly as the dense matrix, and a model
saved with the old packed labels still loads."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from hashtagkit.heads import Head, KNNHead
from hashtagkit.heads.data import ArrayData

from ..conftest import make_store
from ..heads.test_heads import blobs
from ..heads.test_mlp_stream import Watched


def dense_votes(head: KNNHead, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """The votes from an N x C label matrix, by hand: the reference for the compact lists."""
    sims, ids = head.kneighbors(X)
    w = np.exp((sims - sims[:, :1]) / head.temperature)
    w[ids < 0] = 0
    votes = np.einsum("qk,qkc->qc", w, Y[np.maximum(ids, 0)].astype(np.float64))
    return votes / w.sum(axis=1, keepdims=True)


def test_store_blocks_build_the_same_index_as_arrays(tmp_path):
    store = make_store(tmp_path / "s.zarr", n=300, chunk_rows=16)
    rows = store.split_rows("train")
    X, Y = store.features("both", rows), store.labels(rows)
    Q = store.features("both", store.split_rows("test"))
    for pca in (None, 4):
        data = Watched(store, "both", rows)  # fails if read whole
        streamed = KNNHead(k=5, pca=pca).fit_data(data)
        whole = KNNHead(k=5, pca=pca).fit(X, Y, blocks=data.layout)  # the same blocks, joined alike
        np.testing.assert_array_equal(streamed.kneighbors(Q)[1], whole.kneighbors(Q)[1])
        np.testing.assert_allclose(streamed.predict_proba(Q), whole.predict_proba(Q), atol=1e-6)
        np.testing.assert_allclose(streamed.predict_proba(Q), dense_votes(streamed, Q, Y), atol=1e-6)
        assert streamed.fit_report()["index"].startswith("IndexFlatIP")


def test_ivfpq_above_the_limits_with_recall_checked_by_brute_force():
    X, Y = blobs(6000, 64, c=12)
    head = KNNHead(k=10, pca=32, exact_limit=1000, index_mb=0.1).fit_data(ArrayData(X, Y, block_rows=500))
    report = head.fit_report()
    assert report["index"].startswith("IndexIVFPQ") and report["n_indexed"] == 6000
    # the recorded recall, recomputed independently on the same queries
    Z = head._embed(X)
    rng = np.random.default_rng(head.random_state)
    queries = Z[np.sort(rng.choice(len(X), 1000, replace=False))]  # the PCA sample is every row (n < FIT_ROWS)
    exact = NearestNeighbors(n_neighbors=10, metric="cosine", algorithm="brute").fit(Z).kneighbors(queries)[1]
    found = head.index_.search(queries, 10)[1]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact, strict=True)])
    assert report["recall@10"] == round(float(recall), 4) and report["recall_queries"] == 1000
    assert recall > 0.5  # PQ at 32 dims / 4 sub-quantizers on blobs: approximate, not noise
    np.testing.assert_allclose(head.predict_proba(X[:50]), dense_votes(head, X[:50], Y), atol=1e-5)


@pytest.mark.slow
def test_index_stores_its_vectors_as_finely_as_the_memory_budget_allows():
    """6,000 vectors of 32 dims: 750 KiB whole, 188 KiB at 8 bits a dimension, 24 KiB as PQ."""
    X, Y = blobs(6000, 64, c=12)
    kinds = {mb: KNNHead(k=10, pca=32, exact_limit=1000, index_mb=mb).fit(X, Y).fit_report()["index"].split()[0]
             for mb in (1.0, 0.5, 0.1)}
    assert kinds == {1.0: "IndexIVFFlat", 0.5: "IndexIVFScalarQuantizer", 0.1: "IndexIVFPQ"}


def brute_recall(head: KNNHead, Z: np.ndarray, queries: np.ndarray, k: int) -> float:
    exact = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(Z).kneighbors(queries)[1]
    found = head.index_.search(queries, k)[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, exact, strict=True)]))


def test_search_breadth_is_tuned_until_recall_reaches_the_target():
    """Features without cluster structure (isotropic noise, as the planted stores' are at
    heart) spread each row's neighbours over many IVF lists: the default nprobe finds few of
    them, and the tuning doubles it until brute force agrees on 90% of the neighbours."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((6000, 32)).astype(np.float32)
    Y = (rng.random((6000, 5)) < 0.3).astype(np.uint8)
    fixed = KNNHead(k=10, pca=None, exact_limit=1000, target_recall=None).fit(X, Y)
    tuned = KNNHead(k=10, pca=None, exact_limit=1000).fit(X, Y)
    Z = tuned._embed(X)
    queries = Z[np.sort(np.random.default_rng(0).choice(len(X), 1000, replace=False))]
    untuned, report = fixed.fit_report(), tuned.fit_report()
    assert "target_recall" not in untuned and untuned["nprobe"] == 16 and untuned["recall@10"] < 0.9
    assert report["target_recall"] == 0.9 and report["target_met"] and report["recall@10"] >= 0.9
    assert report["recall@10"] == round(brute_recall(tuned, Z, queries, 10), 4)
    points = report["recall_curve"]["points"]
    assert [p[0] for p in points] == [16 * 2**i for i in range(len(points))][:-1] + [report["nprobe"]]
    assert points[-1][0] == report["nprobe"] == tuned.index_.nprobe and f"nprobe={report['nprobe']}" in report["index"]
    tuned.index_.nprobe = points[-2][0]  # one step narrower: below the target, by brute force too
    assert brute_recall(tuned, Z, queries, 10) < 0.9


def test_saved_with_packed_labels_still_loads(tmp_path):
    X, Y = blobs(200, 16)
    head = KNNHead(k=5, pca=None).fit(X, Y)
    head.save(tmp_path / "m")
    path = tmp_path / "m" / "labels.npz"
    with np.load(path) as data:
        rest = {k: data[k] for k in data.files if not k.startswith("label_") and k != "report"}
    np.savez_compressed(path, labels=np.packbits(Y.astype(bool), axis=1), **rest)  # as an earlier hashtagkit wrote it
    again = Head.load(tmp_path / "m")
    np.testing.assert_array_equal(again.predict_proba(X), head.predict_proba(X))


def test_fit_report_reaches_the_run(tmp_path):
    import json

    from ..conftest import run_cli

    store = make_store(tmp_path / "s.zarr", n=120).path
    run_cli(["fit", store, "--head", "knn", "--set", "k=3", "-o", tmp_path / "run"])
    report = json.loads((tmp_path / "run" / "run.json").read_text())["fit_report"]
    assert report["index"].startswith("IndexFlatIP") and report["n_indexed"] > 0


def test_ivfpq_on_too_few_rows_for_its_codebooks_keeps_flat_vectors():
    """8-bit PQ trains 256 centroids per sub-vector: below that many training rows FAISS
    refuses, so the head keeps IVF with whole vectors (and says so) instead of failing."""
    X, Y = blobs(200, 16)
    head = KNNHead(k=5, pca=None, index="ivfpq").fit(X, Y)
    assert head.fit_report()["index"].startswith("IndexIVFFlat") and "not PQ" in head.fit_report()["index"]
    exact = NearestNeighbors(n_neighbors=5, metric="cosine", algorithm="brute").fit(X).kneighbors(X[:20])[1]
    found = head.kneighbors(X[:20])[1]
    assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(found, exact, strict=True)]) > 0.9


def test_refit_does_not_search_a_previous_fits_gpu_copy(monkeypatch):
    """With GPUs the searches go to a cached GPU copy of the index; a refit must drop it.
    The GPU copy is simulated by a CPU clone (this machine has no GPU)."""
    import faiss

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", faiss.clone_index, raising=False)
    X, Y = blobs(400, 16)
    head = KNNHead(k=5, pca=None).fit(X[:200], Y[:200])
    head.predict_proba(X[:10])  # makes the "GPU" copy
    head.fit(X[200:], Y[200:])
    fresh = KNNHead(k=5, pca=None).fit(X[200:], Y[200:])
    np.testing.assert_array_equal(head.kneighbors(X[:50])[1], fresh.kneighbors(X[:50])[1])
    np.testing.assert_allclose(head.predict_proba(X[:50]), fresh.predict_proba(X[:50]), atol=1e-6)


def test_an_index_faiss_cannot_copy_to_gpu_is_searched_on_cpu(monkeypatch):
    """FAISS's GPU code has no HNSW: with GPUs present, such an index is searched where it is."""
    import faiss

    def no_gpu_hnsw(index):
        raise RuntimeError("Error: 'false' failed: This index type is not implemented on GPU.")

    X, Y = blobs(300, 16)
    head = KNNHead(k=5, pca=None, index="hnsw").fit(X, Y)
    expected = head.predict_proba(X[:30])
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", no_gpu_hnsw, raising=False)
    np.testing.assert_array_equal(head.predict_proba(X[:30]), expected)


def sorted_blocks(n_blocks: int = 10, rows: int = 100, d: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Rows ordered by content, one cluster (and one hashtag) per block, as HARRISON's data_list
    groups images by hashtag folder: a sample of whole blocks sees only some clusters."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(n_blocks * rows, d)).astype(np.float32)
    Y = np.zeros((len(X), n_blocks), np.uint8)
    for b in range(n_blocks):
        X[b * rows : (b + 1) * rows, b] += 4
        Y[b * rows : (b + 1) * rows, b] = 1
    return X, Y


def test_pca_sample_spans_every_block_of_a_store_ordered_by_content(monkeypatch):
    """The PCA sample is uniform over the rows (here every block could hold it 8 times), not a
    few whole blocks: its mean is the data's mean, as a whole-block sample's is not."""
    from hashtagkit.heads import projection

    monkeypatch.setattr(projection, "FIT_ROWS", 200)
    monkeypatch.setattr("hashtagkit.heads.knn.FIT_ROWS", 200, raising=False)  # as imported before the fix
    X, Y = sorted_blocks()
    head = KNNHead(k=5, pca=4).fit_data(ArrayData(X, Y, block_rows=100))
    Z = X / np.linalg.norm(X, axis=1, keepdims=True)
    assert head.fit_report()["pca_fit_rows"] == 200
    np.testing.assert_allclose(head.projection_["mean"], Z.mean(axis=0), atol=0.06)


def test_fit_report_says_where_the_time_went():
    """knn and ovr time their phases: each non-negative, together within the fit's wall time."""
    import time

    from hashtagkit.heads import OVRHead

    X, Y = blobs(3000, 32, c=6)
    for head, phases in ((KNNHead(k=5, pca=8, exact_limit=1000), ["sample_and_pca", "train_index", "read_embed_add", "tune_breadth"]),
                         (KNNHead(k=5, pca=8), ["sample_and_pca", "train_index", "read_embed_add"]),
                         (OVRHead(pca=8), ["sample_and_pca", "read_project", "class_models"])):
        t0 = time.perf_counter()
        seconds = head.fit_data(ArrayData(X, Y, block_rows=500)).fit_report()["seconds"]
        wall = time.perf_counter() - t0
        assert list(seconds) == phases and all(v >= 0 for v in seconds.values())
        assert sum(seconds.values()) <= wall + 0.0005 * len(seconds)  # each lap rounded to 1 ms
