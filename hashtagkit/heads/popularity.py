"""The floor every result is shown beside: recommend the most frequent training hashtags.

It ignores the image, so any head worth having must beat it. On HARRISON (seed-0 split) it
scores about P@1 10%, R@5 8.4%, A@5 27%.
"""

from __future__ import annotations

import numpy as np

from hashtagkit.heads.base import Head


class PopularityHead(Head):
    name = "popularity"
    needs_features = False
    state_attrs = ("frequency_",)
    param_spec = {}

    def __init__(self) -> None:
        pass

    def fit(self, X: np.ndarray, Y: np.ndarray) -> PopularityHead:
        X, Y = self._check_xy(X, Y)
        self.frequency_ = Y.astype(bool).mean(axis=0)
        self._set_shape(X, Y)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        X = self._check_x(X)
        return np.broadcast_to(self.frequency_, (len(X), self.n_classes_)).copy()
