"""A linear PCA projection shared by the heads that reduce features before fitting.

scikit-learn's randomized PCA on a row sample: on 52,383 x 8,192 features it takes seconds,
where a full covariance eigendecomposition (faiss.PCAMatrix) takes minutes. Stored as three
plain arrays so a head can save it in its .npz.
"""

from __future__ import annotations

import numpy as np

FIT_ROWS = 20_000
# The sample is drawn from whole blocks holding SPREAD x FIT_ROWS rows (all of them up to that):
# a store's order can follow its content (HARRISON's data_list groups the images by hashtag
# folder, so a 256-row block is mostly a few hashtags), and a PCA fitted on only the ~FIT_ROWS
# rows' worth of blocks then misses whole classes: on the planted HARRISON-size store, ovr's
# P@1 fell from 37.0% to 35.1% with it (benchmarks/results/knn_ovr_size.md). Reading 8x the
# sample's blocks bounds the extra read at 1 M rows to ~16% of the store.
SPREAD = 8


def sample_positions(data, rng: np.random.Generator) -> np.ndarray:
    """At most FIT_ROWS positions of `data` (a TrainingData), ascending: uniform over the rows
    of whole random blocks holding SPREAD x FIT_ROWS rows, i.e. uniform over all rows up to that."""
    pool = data.sample_positions(SPREAD * FIT_ROWS, rng)
    return pool if len(pool) <= FIT_ROWS else np.sort(rng.choice(pool, FIT_ROWS, replace=False))


def fit_projection(X: np.ndarray, n_components: int, whiten: bool, random_state: int) -> dict[str, np.ndarray]:
    """{'mean', 'components', 'scale'}; empty arrays mean 'no projection' (too few rows or dims)."""
    if not n_components or n_components >= min(X.shape):
        return {k: np.zeros(0, np.float32) for k in ("mean", "components", "scale")}
    from sklearn.decomposition import PCA  # imported by fitting, not by every start (recommend)

    rng = np.random.default_rng(random_state)
    rows = np.sort(rng.choice(len(X), min(len(X), FIT_ROWS), replace=False))
    pca = PCA(int(n_components), svd_solver="randomized", random_state=random_state)
    pca.fit(np.asarray(X[rows], dtype=np.float32))
    scale = np.sqrt(pca.explained_variance_) if whiten else np.ones(n_components)
    return {"mean": pca.mean_.astype(np.float32), "components": pca.components_.astype(np.float32),
            "scale": np.maximum(scale, 1e-12).astype(np.float32)}


def project(X: np.ndarray, projection: dict[str, np.ndarray], batch: int = 8192) -> np.ndarray:
    """X (any float dtype) -> float32, projected if a projection was fitted; in row batches so
    a float16 matrix is never copied whole into float32 before it shrinks."""
    if not projection["components"].size:
        return np.asarray(X, dtype=np.float32)
    out = np.empty((len(X), len(projection["components"])), dtype=np.float32)
    for i in range(0, len(X), batch):
        part = np.asarray(X[i : i + batch], dtype=np.float32) - projection["mean"]
        out[i : i + batch] = part @ projection["components"].T / projection["scale"]
    return out
