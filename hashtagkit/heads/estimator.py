"""What makes a head a scikit-learn estimator, on scikit-learn's own terms.

Every registered head subclasses `HeadEstimator`: scikit-learn's `ClassifierMixin`,
`MultiOutputMixin` and `BaseEstimator` around the project's `Head` (hyper-parameters, the
`fit_data` path a run trains by, save/load). So `clone`, `Pipeline`, `GridSearchCV`,
`cross_val_score`, pickling and the HTML repr work on a head, and
`sklearn.utils.estimator_checks` checks it (tests/heads/test_sklearn.py). What it adds:

- `fit(X, Y)`: X (n, d) numbers, checked by `validate_data` (which sets `n_features_in_`, and
  `feature_names_in_` for a DataFrame) and for NaN/inf. Y is either an (n, C) 0/1 indicator
  matrix, one column per hashtag (the multilabel case every run trains; `classes_` is 0..C-1),
  or 1-d labels (binary or multiclass, of any values, which `classes_` then holds) one-hot
  encoded, so a head always trains on an indicator matrix. A 2-d 0/1 Y is always an indicator
  matrix, one column included (one hashtag); a column of other labels is taken as 1-d labels
  with scikit-learn's DataConversionWarning.
- `predict_proba(X)`: multilabel, the head's (n, C) scores, each in [0, 1]: exactly what the
  harness ranks. For 1-d labels, the scores divided by their row's sum, as scikit-learn's
  OneVsRestClassifier does (from the margins in float64 where the head has them).
- `predict(X)`: multilabel, the (n, C) int64 indicator of the hashtags the head recommends: by
  default those scored above THRESHOLD (0.5: more likely present than not, so predict equals
  predict_proba rounded); a head whose scores mean something else says its own rule (fusion).
  For 1-d labels, the label of the highest score.
- `decision_function(X)` on the heads with margins (mlp's logits, ovr's linear margins), whose
  sigmoid predict_proba is; for binary labels scikit-learn's (n,) form, positive for classes_[1].
- `score(X, Y)`: ClassifierMixin's accuracy; for an indicator Y the subset accuracy (a row
  counts when every one of its hashtags is right).
- tags: a multilabel, multi-output classifier of dense, finite, 2-d numbers.

Input a head cannot take is a ValueError naming the problem: sparse X, or an object X holding
anything but numbers (UnsupportedInputError, a TypeError too, as scikit-learn raises), complex
X or Y, 0 features (popularity excepted: it ignores the image, and `hashtagkit fit` gives it
a store's rows as X of width 0), a width other than the fitted one, NaN/inf (the rows named),
a Y that is neither 0/1 nor 1-d labels ('Unknown label type', as scikit-learn says).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from scipy import sparse
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin, MultiOutputMixin
from sklearn.exceptions import DataConversionWarning
from sklearn.utils import Tags
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import validate_data

from hashtagkit.heads.base import MULTILABEL, Head
from hashtagkit.heads.blocks import Block
from hashtagkit.heads.checks import UnsupportedInputError, check_finite
from hashtagkit.heads.data import ArrayData

THRESHOLD = 0.5  # multilabel predict: a hashtag is recommended when its score is above this


def _is_indicator(Y: np.ndarray) -> bool:
    """Whether Y holds only 0 and 1 (bool, integers, or whole floats)."""
    if Y.dtype.kind == "b":
        return True
    if Y.dtype.kind in "iu":
        return Y.size == 0 or (int(Y.min()) >= 0 and int(Y.max()) <= 1)
    if Y.dtype.kind == "f":
        return bool(((Y == 0) | (Y == 1)).all())
    return False


def targets(Y: Any, n_rows: int) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(the (n, C) indicator matrix a head trains on, the labels for 1-d Y or None, scikit-learn's
    target type): see the module's docstring for what is taken and what is refused."""
    if Y is None:
        raise ValueError("a head requires y to be passed, but the target y is None: give Y, the labels of X's rows")
    if sparse.issparse(Y):
        Y = Y.toarray()  # a sparse indicator matrix, as scikit-learn's multilabel classifiers take
    Y = np.asarray(Y)
    if Y.dtype.kind == "c":
        raise ValueError("Complex data not supported: Y must be an (n, C) 0/1 indicator matrix or 1-d labels")
    if Y.ndim not in (1, 2):
        raise ValueError(f"Y must be an (n, C) 0/1 indicator matrix or 1-d labels, got shape {Y.shape}")
    if len(Y) != n_rows:
        raise ValueError(f"X has {n_rows} rows but Y has {len(Y)}: one row of labels per row of features")
    if Y.dtype.kind in "biuf":
        check_finite(Y.reshape(len(Y), -1), "Y")
    if Y.ndim == 2 and _is_indicator(Y):
        return Y, None, MULTILABEL
    if Y.ndim == 2:
        if Y.shape[1] != 1:
            raise ValueError(f"Unknown label type: {type_of_target(Y, input_name='Y')}: Y must be an (n, C) 0/1 "
                             "indicator matrix (one column per hashtag) or 1-d labels")
        warnings.warn("A column-vector y was passed when a 1d array was expected: its values are taken as 1-d labels "
                      "(a 0/1 column would be one hashtag's indicator)", DataConversionWarning, stacklevel=3)
        Y = Y.ravel()
    check_classification_targets(Y)  # 'Unknown label type: continuous' for a regression target
    labels, codes = np.unique(Y, return_inverse=True)
    onehot = np.zeros((len(Y), len(labels)), dtype=np.uint8)
    onehot[np.arange(len(Y)), codes.ravel()] = 1
    return onehot, labels, type_of_target(Y)


class HeadEstimator(ClassifierMixin, MultiOutputMixin, Head, BaseEstimator):
    """A head as a scikit-learn multilabel classifier (see the module's docstring).

    A subclass implements `fit_data` and `_predict_scores(X)` (the (n, C) scores of rows already
    checked), and `_margins(X)` where its scores are the sigmoid of margins (then it also defines
    `decision_function` as `self._decision(X)`: only heads with margins have the method, since
    scikit-learn's tools look for it)."""

    min_features: ClassVar[int] = 1  # popularity takes X of width 0
    poor_score: ClassVar[bool] = False  # popularity: a floor, not a classifier of the image

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.classifier_tags.multi_label = True
        tags.classifier_tags.poor_score = self.poor_score
        tags.input_tags.sparse = False
        tags.input_tags.allow_nan = False
        return tags

    # --- input ----------------------------------------------------------------------------
    def _validate_x(self, X: Any, reset: bool) -> np.ndarray:
        """X as a 2-d numeric array (float16 stays float16: no copy of a store's features), checked
        by scikit-learn's validate_data (`reset`: at fit, recording its width; else checked
        against it) and for NaN/inf, row by row. Predicting on 0 rows gives 0 rows of scores."""
        if sparse.issparse(X):
            raise UnsupportedInputError(f"{self.name} takes dense features: X is a sparse matrix, which is not "
                                        "supported (X.toarray() makes it dense)")
        try:
            X = validate_data(self, X, reset=reset, accept_sparse=False, dtype="numeric", ensure_all_finite=False,
                              ensure_min_samples=1 if reset else 0, ensure_min_features=self.min_features)
        except TypeError as e:  # numpy's float() of an object that is no number
            raise UnsupportedInputError(f"X must hold numbers: {e}") from e
        check_finite(X, "X")
        return X

    def _check_x(self, X: Any) -> np.ndarray:
        """X for a prediction: the head fitted (NotFittedError otherwise), then `_validate_x`."""
        self._check_fitted()
        return self._validate_x(X, reset=False)

    # --- fitting --------------------------------------------------------------------------
    def fit(self, X: Any, Y: Any, blocks: Sequence[Block] = ()) -> HeadEstimator:
        """Fit on in-memory arrays: X and Y checked whole here (see the module's docstring), then
        `fit_data` on them, so arrays and a store's blocks train alike. `blocks` names the
        backbones' column ranges in X (`hashtagkit.heads.blocks.layout_of(store.blocks, view)`),
        which a head that compares rows joins by its rule; none: X is one block."""
        self._validate_params()
        X = self._validate_x(X, reset=True)
        names = getattr(self, "feature_names_in_", None)
        Y, labels, target_type = targets(Y, len(X))
        self.fit_data(ArrayData(X, Y, layout=tuple(blocks)))
        if names is not None:
            self.feature_names_in_ = names
        if labels is not None:
            self.classes_, self.target_type_ = labels, target_type
        return self

    # --- prediction -----------------------------------------------------------------------
    def _predict_scores(self, X: np.ndarray) -> np.ndarray:
        """(n, C) scores in [0, 1] of checked rows: what each head computes."""
        raise NotImplementedError

    def _margins(self, X: np.ndarray) -> np.ndarray | None:
        """(n, C) margins whose sigmoid `_predict_scores` is, for a head that has them; else None."""
        return None

    def predict_proba(self, X: Any) -> np.ndarray:
        """Multilabel: the (n, C) scores, each in [0, 1] (what the harness ranks). Fitted on 1-d
        labels: (n, n_classes) probabilities summing to 1 per row."""
        X = self._check_x(X)
        if self.target_type_ == MULTILABEL:
            return self._predict_scores(X)
        return self._label_proba(X)

    def _label_proba(self, X: np.ndarray) -> np.ndarray:
        """Each class's score over its row's sum, float64 (uniform for a row scoring 0 everywhere);
        from the margins where the head has them, so a binary decision_function ranks rows exactly
        as predict_proba[:, 1] does (no float32 sigmoid saturating at 1)."""
        margins = self._margins(X)
        S = expit(np.asarray(margins, np.float64)) if margins is not None else np.asarray(self._predict_scores(X), np.float64)
        total = S.sum(axis=1, keepdims=True)
        return np.divide(S, total, out=np.full_like(S, 1 / S.shape[1]), where=total > 0)

    def predict(self, X: Any) -> np.ndarray:
        """Multilabel: the (n, C) int64 indicator of the recommended hashtags (`_recommend`: by
        default a score above THRESHOLD, i.e. predict_proba rounded). Fitted on 1-d labels: the
        label of each row's highest probability."""
        X = self._check_x(X)
        if self.target_type_ == MULTILABEL:
            return self._recommend(X)
        return self.classes_[np.argmax(self._label_proba(X), axis=1)]

    def _recommend(self, X: np.ndarray) -> np.ndarray:
        """The multilabel prediction of checked rows: a hashtag whose score is above THRESHOLD."""
        return (np.asarray(self._predict_scores(X)) > THRESHOLD).astype(np.int64)

    def _decision(self, X: Any) -> np.ndarray:
        """What a head with margins returns as decision_function: the (n, C) margins; fitted on
        binary labels scikit-learn's (n,) score for classes_[1], log p1 - log p0 of the two
        classes' sigmoids (positive exactly when predict says classes_[1])."""
        margins = self._margins(self._check_x(X))
        if self.target_type_ == "binary" and margins.shape[1] == 2:
            log_p = -np.logaddexp(0.0, -np.asarray(margins, np.float64))  # log sigmoid, stable
            return log_p[:, 1] - log_p[:, 0]
        return margins
