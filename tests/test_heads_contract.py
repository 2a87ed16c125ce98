"""One contract, checked for every registered head (scikit-learn's parametrize_with_checks idea)."""

from __future__ import annotations

import numpy as np
import pytest

from hashtagkit.heads import HEADS, Head, NotFittedError, make_head


def data(n=80, d=16, c=9, seed=0):
    rng = np.random.default_rng(seed)
    Y = (rng.random((n, c)) < 0.25).astype(np.uint8)
    Y[:, -1] = 0  # a class with no positive example
    X = rng.random((n, d)).astype(np.float32) + Y[:, :1]
    return X, Y


@pytest.fixture(params=sorted(HEADS))
def head_name(request):
    return request.param


def test_unfitted_predict_is_an_error(head_name):
    with pytest.raises(NotFittedError):
        make_head(head_name).predict_proba(np.zeros((2, 16)))


def test_shapes_and_finite_scores(head_name):
    X, Y = data()
    head = make_head(head_name)
    assert head.fit(X, Y) is head
    scores = head.predict_proba(X[:7])
    assert scores.shape == (7, Y.shape[1]) and np.isfinite(scores).all()
    assert head.predict_proba(X[:1]).shape == (1, Y.shape[1])  # a single row
    assert np.allclose(head.predict_proba(X[:1]), scores[:1])


def test_params_are_constructor_arguments(head_name):
    head = make_head(head_name)
    assert set(head.get_params()) == set(type(head).param_names())
    assert not any(k.endswith("_") for k in head.get_params())


def test_save_load_gives_identical_scores(head_name, tmp_path):
    X, Y = data()
    head = make_head(head_name).fit(X, Y)
    head.save(tmp_path / "m")
    again = Head.load(tmp_path / "m")
    assert type(again) is type(head) and again.get_params() == head.get_params()
    assert np.array_equal(again.predict_proba(X), head.predict_proba(X))


def test_deterministic_under_a_seed(head_name):
    X, Y = data()
    a = make_head(head_name)
    b = make_head(head_name)
    if "random_state" in a.param_names():
        a.set_params(random_state=3)
        b.set_params(random_state=3)
    assert np.array_equal(a.fit(X, Y).predict_proba(X), b.fit(X, Y).predict_proba(X))


def test_float16_input(head_name):
    X, Y = data()
    head = make_head(head_name).fit(X.astype(np.float16), Y)
    scores = head.predict_proba(X.astype(np.float16))
    assert scores.shape == (len(X), Y.shape[1]) and np.isfinite(scores).all()


def test_class_without_positives_ranks_last_or_ties(head_name):
    X, Y = data()
    scores = make_head(head_name).fit(X, Y).predict_proba(X)
    assert (scores[:, -1] <= scores.max(axis=1)).all()
    assert (scores[:, -1] <= np.median(scores, axis=1)).all()


def test_wrong_width_is_an_error(head_name):
    head = make_head(head_name)
    if not head.needs_features:
        pytest.skip(f"{head_name} ignores the features")
    X, Y = data()
    head.fit(X, Y)
    with pytest.raises(ValueError, match="features"):
        head.predict_proba(X[:, :5])
