"""One contract, checked for every registered head (scikit-learn's parametrize_with_checks idea)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.base import clone

from hashtagkit.errors import InputError
from hashtagkit.heads import HEADS, Head, NotFittedError, Param, make_head

# the MLP's paper-size default (4,096 hidden units) is slow for nothing on 80 rows
SMALL = {"mlp": {"hidden": 32, "epochs": 4}, "fusion": {"mlp.hidden": 32, "mlp.epochs": 4}}


def small(name: str) -> Head:
    return make_head(name, **SMALL.get(name, {}))


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
    head = small(head_name)
    assert head.fit(X, Y) is head
    scores = head.predict_proba(X[:7])
    assert scores.shape == (7, Y.shape[1]) and np.isfinite(scores).all()
    assert head.predict_proba(X[:1]).shape == (1, Y.shape[1])  # a single row
    assert np.allclose(head.predict_proba(X[:1]), scores[:1])


def test_every_declared_parameter_is_a_constructor_argument(head_name):
    """param_spec and __init__ name the same parameters: a subclass that inherits its parent's
    spec but not a new constructor argument would list a parameter nobody can set."""
    klass = HEADS[head_name]
    assert set(klass.param_spec) == set(klass().get_params())


def test_set_params_and_clone_round_trip(head_name):
    head = small(head_name)
    copy = clone(head)  # scikit-learn's clone: rebuilds from get_params and checks each comes back as given
    assert type(copy) is type(head) and copy is not head and copy.get_params() == head.get_params()
    assert head.get_params(deep=True) == head.get_params(deep=False)
    assert type(head)().set_params(**head.get_params()).get_params() == head.get_params()
    if "random_state" in head.param_names():
        head.set_params(random_state=7)
        assert head.get_params()["random_state"] == 7 and clone(head).random_state == 7
        assert copy.random_state != 7  # the clone is independent


def test_unknown_parameter_is_a_value_error_and_an_input_error(head_name):
    with pytest.raises(ValueError, match="no parameter 'nope'"):
        small(head_name).set_params(nope=1)
    with pytest.raises(InputError, match="no parameter 'nope'"):
        make_head(head_name, nope=1)


def test_a_clone_fits_to_the_same_scores(head_name):
    X, Y = data()
    head = small(head_name)
    fitted = head.fit(X, Y).predict_proba(X)
    again = clone(head)
    assert not hasattr(again, "classes_")  # learned state is not copied
    assert np.array_equal(again.fit(X, Y).predict_proba(X), fitted)


def test_scikit_learn_fitted_attributes(head_name, tmp_path):
    X, Y = data()
    head = small(head_name).fit(X, Y)
    assert head.n_features_in_ == X.shape[1] and np.array_equal(head.classes_, np.arange(Y.shape[1]))
    assert (head.n_features_, head.n_classes_) == (X.shape[1], Y.shape[1])  # the old names still answer
    head.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "head.json").read_text())
    assert (meta["n_features_"], meta["n_classes_"]) == (X.shape[1], Y.shape[1])  # the format runs already hold
    again = Head.load(tmp_path / "m")
    assert again.n_features_in_ == X.shape[1] and np.array_equal(again.classes_, np.arange(Y.shape[1]))


def test_every_parameter_is_declared(head_name):
    klass = HEADS[head_name]
    assert list(klass.param_spec) == klass.param_names()
    for key, default in klass.param_defaults().items():
        assert klass.param_spec[key].admits(default), (key, default)


def bad_values(spec: Param) -> list:
    """Values the declaration must refuse: wrong types, bool for int, non-finite, just outside the range."""
    out = [] if spec.none else [None]
    if spec.kind is str:
        return [*out, "no-such-choice", 1]
    out += [True, False, "1", math.nan, math.inf, -math.inf, *spec.exclude]
    if spec.kind is int:
        out += [2.5, 3.0]
    if spec.low is not None:
        out.append(spec.low if spec.low_open else spec.low - 1)
    if spec.high is not None:
        out.append(spec.high if spec.high_open else spec.high + 1)
    return out


def test_bad_values_are_refused_by_make_head_and_by_fit(head_name):
    klass = HEADS[head_name]
    X, Y = data()
    for key, spec in klass.param_spec.items():
        for value in bad_values(spec):
            with pytest.raises(InputError, match=f"{head_name} parameter {key} must be .*, got {value!r}"):
                make_head(head_name, **{key: value})
            with pytest.raises(ValueError, match=f"parameter {key} must be"):
                klass(**{key: value}).fit(X, Y)  # the constructor does not check: fit does


@pytest.mark.parametrize("name, params", [
    ("knn", {"k": 2.5}), ("knn", {"k": True}), ("knn", {"temperature": 0}), ("knn", {"index": "lsh"}),
    ("knn", {"pca": 0}), ("knn", {"exact_limit": 0}),
    ("mlp", {"hidden": 0}), ("mlp", {"epochs": 0}), ("mlp", {"epochs": 3.0}), ("mlp", {"iterations": -5}),
    ("mlp", {"dropout": 1.0}), ("mlp", {"lr": -0.1}), ("mlp", {"batch_size": 0}), ("mlp", {"weight_decay": -1e-4}),
    ("mlp", {"momentum": 1.5}), ("mlp", {"val_fraction": 1.0}), ("mlp", {"patience": -1}), ("mlp", {"preset": "slow"}),
    ("mlp", {"device": "gpu"}), ("mlp", {"precision": "fp8"}), ("mlp", {"random_state": -1}),
    ("ovr", {"estimator": "tree"}), ("ovr", {"C": 0}), ("ovr", {"max_iter": 0}), ("ovr", {"n_jobs": 0}),
    ("ovr", {"pca": 1.5}),
    ("tagprop", {"weighting": "rank"}), ("tagprop", {"sigmoid": "logistic"}), ("tagprop", {"loo_rows": 0}),
    ("tagprop", {"k": 0}),
    ("fusion", {"components": "mlp,mlp"}), ("fusion", {"components": "fusion"}), ("fusion", {"components": ""}),
    ("fusion", {"weights": "1,-1"}), ("fusion", {"weights": "0,0"}), ("fusion", {"weights": "1,nan"}),
    ("fusion", {"weights": "1,2,3"}), ("fusion", {"grid_step": 0}), ("fusion", {"val_fraction": 1.0}),
    ("fusion", {"normalise": "zscore"}), ("fusion", {"component_params": {"mlp": 3}}),
    ("fusion", {"component_params": {"ovr": {"C": 1}}}), ("fusion", {"component_params": {"mlp": {"hidden": 0}}}),
])
def test_the_issues_bad_values(name, params):
    key, value = next(iter(params.items()))
    with pytest.raises(InputError, match=f"parameter {key} must be"):
        make_head(name, **params)


@pytest.mark.parametrize("name, params", [
    ("knn", {"k": 1, "pca": None, "temperature": 1e-6, "exact_limit": 1}),
    ("mlp", {"dropout": 0, "val_fraction": 0.0, "patience": 0, "momentum": 0, "lr": 1, "weight_decay": 0}),
    ("ovr", {"n_jobs": -1, "C": 10, "pca": None}), ("ovr", {"n_jobs": None}),
    ("tagprop", {"weighting": "fixed", "sigmoid": "identity", "loo_rows": 1}),
    ("fusion", {"components": "popularity", "weights": "1", "grid_step": 1, "final_fit": "part"}),
    ("fusion", {"components": "knn,tagprop,ovr", "weights": "0,2,1.5", "component_params": {"knn": {"k": 3}}}),
])
def test_edge_values_are_admitted(name, params):
    assert make_head(name, **params).get_params().items() >= params.items()


@pytest.mark.parametrize("where", ["X", "Y"])
def test_non_finite_training_input_names_the_rows(head_name, where):
    X, Y = data()
    X, Y = X.copy(), Y.astype(np.float32)
    bad = X if where == "X" else Y
    bad[3, 1], bad[40, 0] = np.nan, np.inf
    with pytest.raises(ValueError, match=rf"{where} has NaN or inf in 2 row\(s\): 3, 40"):
        small(head_name).fit(X, Y)


def test_non_finite_query_is_an_error(head_name):
    X, Y = data()
    head = small(head_name).fit(X, Y)
    Q = X[:4].copy()
    Q[2, 0] = np.nan
    with pytest.raises(ValueError, match=r"X has NaN or inf in 1 row\(s\): 2"):
        head.predict_proba(Q)


def test_save_load_gives_identical_scores(head_name, tmp_path):
    X, Y = data()
    head = small(head_name).fit(X, Y)
    head.save(tmp_path / "m")
    again = Head.load(tmp_path / "m")
    assert type(again) is type(head) and again.get_params() == head.get_params()
    assert np.array_equal(again.predict_proba(X), head.predict_proba(X))


def test_deterministic_under_a_seed(head_name):
    X, Y = data()
    a = small(head_name)
    b = small(head_name)
    if "random_state" in a.param_names():
        a.set_params(random_state=3)
        b.set_params(random_state=3)
    assert np.array_equal(a.fit(X, Y).predict_proba(X), b.fit(X, Y).predict_proba(X))


def test_float16_input(head_name):
    X, Y = data()
    head = small(head_name).fit(X.astype(np.float16), Y)
    scores = head.predict_proba(X.astype(np.float16))
    assert scores.shape == (len(X), Y.shape[1]) and np.isfinite(scores).all()


# heads that give a class with no training positive an exact constant score of 0 (no neighbour
# carries it; ovr's constant; a frequency of 0; tagprop's sigmoid is not applied to it); the MLP
# learns a score strictly below the others, and fusion blends that with knn's 0
SCORES_ZERO = {"knn", "ovr", "popularity", "tagprop"}


def test_class_without_positives_ranks_last(head_name):
    X, Y = data()
    scores = small(head_name).fit(X, Y).predict_proba(X)
    if head_name in SCORES_ZERO:
        assert (scores[:, -1] == 0).all()
    else:
        assert head_name in ("mlp", "fusion"), "a new head: say here what it scores a class without positives"
        assert (scores[:, -1] < np.median(scores[:, :-1], axis=1)).all()
        assert (scores[:, -1] < scores.max(axis=1)).all()


def test_wrong_width_is_an_error(head_name):
    """Every head checks the width it was fitted on, popularity too (it ignores the values)."""
    head = small(head_name)
    X, Y = data()
    head.fit(X, Y)
    with pytest.raises(ValueError, match="features"):
        head.predict_proba(X[:, :5])
