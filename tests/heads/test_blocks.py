"""The "both" view joins its blocks by a rule (issue #29): each backbone's block normalised on its
own and weighted, so a head that compares rows by distance sees both backbones, not the louder one.

The rule is checked against numpy written out here; every head's metrics are unchanged when one
block of a store is multiplied by 50; "both" differs from each single view where one block is 60x
louder; a head saved before the rule scores as it was trained."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hashtagkit.evaluation import evaluate, score_split
from hashtagkit.heads import HEADS, InvalidParameterError, KNNHead, OVRHead, make_head
from hashtagkit.heads.blocks import Block, BlockCombiner, layout_of, parse_block_weights
from hashtagkit.heads.data import ArrayData, StoreData
from hashtagkit.runs import fit, training_rows

from ..conftest import make_store

TWO = (Block("a", 0, 3), Block("b", 3, 8))


def test_l2_rule_against_numpy():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 8)).astype(np.float32)
    X[:, 3:] *= 300
    X[4] = 0  # an image that failed to decode: zeros stay zeros
    got = BlockCombiner.fit("l2", TWO, "a:3,b:1").transform(X)
    Xa, Xb = X[:, :3].astype(np.float64), X[:, 3:].astype(np.float64)
    na = np.linalg.norm(Xa, axis=1, keepdims=True)
    nb = np.linalg.norm(Xb, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        want = np.hstack([math.sqrt(0.75) * Xa / na, math.sqrt(0.25) * Xb / nb])
    want[4] = 0
    assert np.allclose(got, want, atol=1e-6) and got.dtype == np.float32
    # the joined cosine is the weighted mean of the blocks' cosines
    i, j = 0, 1
    cos = lambda u, v: float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))  # noqa: E731
    assert got[i] @ got[j] == pytest.approx(0.75 * cos(Xa[i], Xa[j]) + 0.25 * cos(Xb[i], Xb[j]), abs=1e-5)


def test_std_rule_against_numpy():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(50, 8)).astype(np.float32)
    X[:, :3] *= 0.01
    combiner = BlockCombiner.fit("std", TWO, "equal", sample=X[:30])
    Xs = X[:30].astype(np.float64)
    sa, sb = math.sqrt(Xs[:, :3].var(axis=0).sum()), math.sqrt(Xs[:, 3:].var(axis=0).sum())
    want = np.hstack([X[:, :3] * math.sqrt(0.5) / sa, X[:, 3:] * math.sqrt(0.5) / sb])
    assert np.allclose(combiner.transform(X), want, rtol=1e-5)
    joined = combiner.transform(X[:30]).astype(np.float64)
    assert joined[:, :3].var(axis=0).sum() == pytest.approx(joined[:, 3:].var(axis=0).sum(), rel=1e-4)
    again = BlockCombiner.from_dict(json.loads(json.dumps(combiner.to_dict())))
    assert np.array_equal(again.transform(X), combiner.transform(X))


def test_one_block_has_nothing_to_join():
    assert BlockCombiner.fit("l2", TWO[:1]) is None
    blocks = [{"name": "object", "columns": [0, 4]}, {"name": "scene", "columns": [4, 8]}]
    assert layout_of(blocks, "scene") == (Block("scene", 4, 8),)
    assert layout_of(blocks, "both") == (Block("object", 0, 4), Block("scene", 4, 8))


@pytest.mark.parametrize("text, parsed", [("equal", {}), ("object:2,scene:1", {"object": 2.0, "scene": 1.0}),
                                          ("object:0,scene:1", {"object": 0.0, "scene": 1.0}), ("object:1,object:2", None),
                                          ("object:-1,scene:1", None), ("object:nan,scene:1", None), ("object", None),
                                          ("object:0,scene:0", None), ("", None), (3, None)])
def test_block_weights_are_parsed_strictly(text, parsed):
    assert parse_block_weights(text) == parsed


def test_block_weights_must_name_the_views_blocks(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    data = StoreData(store, "both", training_rows(store)[0])
    with pytest.raises(InvalidParameterError, match="block_weights names object, sky, but the view's blocks are object, scene"):
        KNNHead(block_weights="object:1,sky:2").fit_data(data)
    with pytest.raises(InvalidParameterError, match="block_weights must be"):
        make_head("ovr", block_weights="object=1")


SETS = {"mlp": {"hidden": 16, "epochs": 5, "batch_size": 16}, "knn": {"k": 5}, "tagprop": {"k": 5},
        "ovr": {"n_jobs": 1}, "popularity": {},
        "fusion": {"component_params": {"mlp": {"hidden": 16, "epochs": 5, "batch_size": 16}, "knn": {"k": 5}}}}


def test_every_head_is_listed():
    assert set(SETS) == set(HEADS)


@pytest.fixture(scope="module")
def loud(tmp_path_factory):
    """The same store twice, its object block 50x louder in the second; the scene block is 60x
    louder than the object block in the first, as Places features are than ImageNet ones."""
    tmp = tmp_path_factory.mktemp("loud")
    return (make_store(tmp / "a.zarr", n=90, test=30, block_scales=(1.0, 60.0)).path,
            make_store(tmp / "b.zarr", n=90, test=30, block_scales=(50.0, 60.0)).path)


@pytest.mark.parametrize("head", sorted(SETS))
def test_both_is_invariant_to_rescaling_one_block(loud, tmp_path, head):
    results = []
    for i, store in enumerate(loud):
        run = fit(store, head, tmp_path / f"r{i}", params=SETS[head], view="both")
        results.append(evaluate(run, ks=(1, 3, 5)))
    keys = [k for k in results[0] if k.startswith(("precision@", "recall@", "accuracy@", "map"))]
    assert len(keys) >= 4
    for key in keys:
        assert results[0][key] == pytest.approx(results[1][key], abs=1e-6), (head, key)


@pytest.mark.parametrize("head", ["knn", "tagprop", "ovr"])
def test_both_is_neither_single_view(loud, tmp_path, head):
    """Where the scene block is 60x louder, "both" scores like neither view alone (it once scored
    exactly like "scene"), and its run records the rule."""
    scores, reports = {}, {}
    for view in ("both", "object", "scene"):
        run = fit(loud[0], head, tmp_path / view, params=SETS[head], view=view)
        scores[view] = score_split(run).scores
        reports[view] = json.loads((run / "run.json").read_text())["fit_report"]
    assert not np.allclose(scores["both"], scores["scene"], atol=1e-4)
    assert not np.allclose(scores["both"], scores["object"], atol=1e-4)
    assert "feature_blocks" not in reports["object"] and "feature_blocks" not in reports["scene"]
    rule = reports["both"]["feature_blocks"]
    assert rule["rule"] == ("std" if head == "ovr" else "l2") and rule["shares"] == [0.5, 0.5]


@pytest.mark.parametrize("klass", [KNNHead, OVRHead])
def test_a_head_saved_before_the_rule_scores_as_it_was_trained(loud, tmp_path, klass):
    """A saved head without a `blocks` record (hashtagkit before issue #29) is a head fitted on
    the raw concatenation: loaded, it scores the raw columns, never silently re-interpreted."""
    store = make_store(tmp_path / "s.zarr", block_scales=(1.0, 60.0))
    rows = training_rows(store)[0]
    X, Y = store.features("both", rows), store.labels()[rows]
    params = {"k": 5} if klass is KNNHead else {"n_jobs": 1}
    raw = klass(**params).fit_data(ArrayData(X, Y))  # no layout: the columns as they come
    joined = klass(**params).fit_data(StoreData(store, "both", rows))
    assert raw.blocks_ is None and joined.blocks_ is not None
    joined.save(tmp_path / "h")
    meta = json.loads((tmp_path / "h" / "head.json").read_text())
    assert meta["blocks"]["rule"] == klass.block_rule
    raw.save(tmp_path / "old")
    assert "blocks" not in json.loads((tmp_path / "old" / "head.json").read_text())
    old = klass.load(tmp_path / "old")
    assert old.blocks_ is None and np.array_equal(old.predict_proba(X), raw.predict_proba(X))
    assert np.array_equal(klass.load(tmp_path / "h").predict_proba(X), joined.predict_proba(X))


def test_fit_says_how_it_joined_the_blocks(loud, tmp_path):
    from click.testing import CliRunner

    from hashtagkit.cli.main import cli

    res = CliRunner().invoke(cli, ["fit", str(loud[0]), "--head", "knn", "--set", "k=5", "--set",
                                   "block_weights=object:3,scene:1", "-o", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert "joined the both view's blocks: l2 per block, object 0.75 + scene 0.25" in res.output
    res = CliRunner().invoke(cli, ["fit", str(loud[0]), "--head", "knn", "--features", "object", "-o",
                                   str(tmp_path / "o")])
    assert res.exit_code == 0 and "joined the" not in res.output
    res = CliRunner().invoke(cli, ["fit", str(loud[0]), "--head", "knn", "--set", "block_weights=object:1",
                                   "-o", str(tmp_path / "bad")])
    assert res.exit_code == 2 and "block_weights names object, but the view's blocks are object, scene" in res.output
    assert not (tmp_path / "bad").exists()
