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

    def fit_data(self, data) -> PopularityHead:
        """Class frequencies counted block by block over the labels alone."""
        self._begin_fit(data)
        counts = np.zeros(data.n_classes, dtype=np.int64)
        for Y in data.labels():
            counts += (Y != 0).sum(axis=0)
        self.frequency_ = counts / data.n_rows
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        X = self._check_x(X)
        return np.broadcast_to(self.frequency_, (len(X), self.n_classes_)).copy()
