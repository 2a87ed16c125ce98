"""The floor every result is shown beside: recommend the most frequent training hashtags.

It ignores the image, so any head worth having must beat it. On HARRISON (seed-0 split) it
scores about P@1 10%, R@5 8.4%, A@5 27%.
"""

from __future__ import annotations

import numpy as np

from hashtagkit.heads.estimator import HeadEstimator


class PopularityHead(HeadEstimator):
    """Each hashtag's score is its frequency among the training rows, whatever the image.

    X may have any width, 0 included (`hashtagkit fit` gives it a store's rows without features);
    predicting checks the width it was fitted on, like every head. `predict` recommends the
    hashtags on more than half of the training rows (usually none): the floor ranks, it does not
    decide. scikit-learn's DummyClassifier(strategy="prior") is the same model."""

    name = "popularity"
    needs_features = False
    min_features = 0
    poor_score = True
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

    def _predict_scores(self, X: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.frequency_, (len(X), self.n_classes_)).copy()
