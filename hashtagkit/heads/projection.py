"""A linear PCA projection shared by the heads that reduce features before fitting.

scikit-learn's randomized PCA on a row sample: on 52,383 x 8,192 features it takes seconds,
where a full covariance eigendecomposition (faiss.PCAMatrix) takes minutes. Stored as three
plain arrays so a head can save it in its .npz.
"""

from __future__ import annotations

import numpy as np

FIT_ROWS = 20_000


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
