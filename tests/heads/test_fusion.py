"""Fusion: one component ranks as that component, given weights blend by hand, the weights are
chosen on training rows only, the grid and the normalisations against brute force, and the CLI."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from click.testing import CliRunner

from hashtagkit import metrics
from hashtagkit.cli.main import cli
from hashtagkit.heads import FusionHead, Head, KNNHead, OVRHead, PopularityHead, make_head
from hashtagkit.heads.data import ArrayData
from hashtagkit.heads.fusion import normalise, weight_grid

from ..conftest import make_store


def data(n=400, d=16, c=10, seed=0):
    rng = np.random.default_rng(seed)
    Y = (rng.random((n, c)) < np.linspace(0.4, 0.05, c)).astype(np.uint8)
    X = (Y @ rng.normal(size=(c, d)) + 1.5 * rng.normal(size=(n, d))).astype(np.float32)
    return X, Y


def ranking(scores: np.ndarray) -> np.ndarray:
    """Every row's classes best first, ties by class id (the harness's order)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), axis=1, kind="stable")


@pytest.mark.parametrize("how", ["minmax", "rank"])
@pytest.mark.parametrize("name, single", [("knn", lambda: KNNHead(k=15, pca=None)),
                                          ("ovr", lambda: OVRHead(pca=None, n_jobs=1))])
def test_one_component_of_weight_one_ranks_exactly_like_it(name, single, how):
    X, Y = data()
    params = {"k": 15, "pca": None} if name == "knn" else {"pca": None, "n_jobs": 1}
    fused = FusionHead(components=name, normalise=how, component_params={name: params}).fit(X[:300], Y[:300])
    alone = single().fit(X[:300], Y[:300])
    a, b = fused.predict_proba(X[300:]), alone.predict_proba(X[300:])
    assert np.array_equal(ranking(a), ranking(b))
    tagged = Y[300:].any(axis=1)
    ours, theirs = metrics.summary(a[tagged], Y[300:][tagged]), metrics.summary(b[tagged], Y[300:][tagged])
    # every per-image metric is equal; per-class mAP compares images with each other, which a
    # per-image normalisation changes (the module's docstring says so)
    ours.pop("map_class"), theirs.pop("map_class")
    assert ours == theirs
    assert fused.fit_report()["chosen_by"] == "a single component" and fused.fit_report()["component_rows"] == 300


def test_given_weights_blend_the_normalised_scores_by_hand():
    X, Y = data()
    fused = FusionHead(components="knn,ovr,popularity", weights="1,3,0",
                       component_params={"knn": {"k": 15, "pca": None}, "ovr": {"pca": None, "n_jobs": 1}}).fit(X[:300], Y[:300])
    knn = KNNHead(k=15, pca=None).fit(X[:300], Y[:300]).predict_proba(X[300:]).astype(np.float64)
    ovr = OVRHead(pca=None, n_jobs=1).fit(X[:300], Y[:300]).predict_proba(X[300:]).astype(np.float64)

    def minmax(s):  # written out: per row, lowest to 0, highest to 1
        return (s - s.min(1, keepdims=True)) / (s.max(1, keepdims=True) - s.min(1, keepdims=True))

    np.testing.assert_allclose(fused.predict_proba(X[300:]), 0.25 * minmax(knn) + 0.75 * minmax(ovr), rtol=0, atol=1e-12)
    assert fused.fit_report()["weights"] == {"knn": 0.25, "ovr": 0.75, "popularity": 0.0}


def test_normalisations_against_brute_force():
    s = np.array([[0.2, 0.5, 0.5, 0.1], [3.0, 3.0, 3.0, 3.0], [-1.0, 0.0, 2.0, 1.0]])
    np.testing.assert_allclose(normalise(s, "minmax"), [[0.25, 1, 1, 0], [0, 0, 0, 0], [0, 1 / 3, 1, 2 / 3]])
    ranks = np.array([[sum(b < a for b in row) + (sum(b == a for b in row) + 1) / 2 for a in row] for row in s])
    np.testing.assert_allclose(normalise(s, "rank"), ranks / s.shape[1])


@pytest.mark.parametrize("n, step", [(1, 0.5), (2, 0.1), (3, 0.25), (4, 0.5)])
def test_weight_grid_is_every_point_of_the_simplex_lattice(n, step):
    m = round(1 / step)
    expected = {tuple(p) for p in itertools.product(range(m + 1), repeat=n) if sum(p) == m}
    got = weight_grid(n, step)
    assert {tuple(int(round(v * m)) for v in row) for row in got} == expected and len(got) == len(expected)
    np.testing.assert_allclose(got.sum(axis=1), 1)


def test_weights_are_chosen_on_a_validation_part_of_the_training_rows():
    """The report's numbers are recomputed: the same seeded blocks held out (TrainingData.subset),
    components fitted on the rest, every grid point scored by brute force; the best one is chosen."""
    X, Y = data(n=600)
    params = {"knn": {"k": 15, "pca": None}, "popularity": {}}
    head = FusionHead(components="knn,popularity", component_params=params, random_state=5).fit(X, Y)
    report = head.fit_report()
    whole, part, val = head._split(ArrayData(X, Y))
    assert part.n_rows + val.n_rows == 600 and report["validation_rows"] == val.n_rows == 60
    Xp, Yp = part.to_arrays()
    Xv, Yv = val.to_arrays()
    assert not ({r.tobytes() for r in Xp} & {r.tobytes() for r in Xv})  # disjoint rows
    knn = normalise(KNNHead(k=15, pca=None).fit(Xp, Yp).predict_proba(Xv), "minmax")
    pop = normalise(PopularityHead().fit(Xp, Yp).predict_proba(Xv), "minmax")
    tagged = Yv.any(axis=1)
    values = {w: metrics.recall_at_k(w * knn[tagged] + (1 - w) * pop[tagged], Yv[tagged], 5)
              for w in np.round(np.linspace(0, 1, 11), 10)}
    best = max(values.values())
    assert report["val_recall@5_fused"] == pytest.approx(best, abs=1e-6)
    assert values[report["weights"]["knn"]] == pytest.approx(best)
    assert report["val_recall@5_alone"]["knn"] == pytest.approx(values[1.0], abs=1e-6)
    assert report["weights"]["knn"] >= 0.5  # the head that sees the image carries the blend
    assert report["component_rows"] == 600 and report["final_fit"] == "all"  # refitted on every row


def test_final_fit_part_keeps_the_components_of_the_fit_part():
    X, Y = data(n=600)
    head = FusionHead(components="knn,popularity", final_fit="part",
                      component_params={"knn": {"k": 15, "pca": None}}).fit(X, Y)
    _, part, _ = head._split(ArrayData(X, Y))
    assert head.fit_report()["component_rows"] == part.n_rows == 540
    ref = KNNHead(k=15, pca=None).fit(*part.to_arrays())
    assert np.array_equal(head.components_[0].predict_proba(X[:50]), ref.predict_proba(X[:50]))


def test_components_are_saved_as_heads_inside_the_fusion(tmp_path):
    X, Y = data()
    head = make_head("fusion", **{"components": "knn,tagprop", "knn.k": 9, "tagprop.k": 9, "tagprop.pca": None}).fit(X, Y)
    head.save(tmp_path / "m")
    knn = Head.load(tmp_path / "m" / "components" / "0-knn")
    assert isinstance(knn, KNNHead) and knn.k == 9
    assert np.array_equal(knn.predict_proba(X[:20]), head.components_[0].predict_proba(X[:20]))
    again = Head.load(tmp_path / "m")
    assert again.fit_report() == head.fit_report() and np.array_equal(again.weights_, head.weights_)
    assert np.array_equal(again.predict_proba(X[:20]), head.predict_proba(X[:20]))


def test_dotted_parameters_go_to_the_component():
    head = make_head("fusion", **{"mlp.hidden": 64, "knn.k": 5})
    assert head.component_params == {"mlp": {"hidden": 64}, "knn": {"k": 5}}
    assert head._component("mlp").hidden == 64 and head._component("knn").random_state == head.random_state
    with pytest.raises(ValueError, match="fusion parameter component_params must be valid for knn: knn parameter k must be"):
        make_head("fusion", **{"knn.k": 0})
    with pytest.raises(ValueError, match="has no parameter 'nope.k'"):
        make_head("fusion", **{"nope.k": 1})


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_fit_evaluate_and_help_through_the_cli(tmp_path):
    store = make_store(tmp_path / "s.zarr", n=120, c=6, test=30)
    for head, sets in (("tagprop", ["k=5"]), ("fusion", ["components=knn,tagprop", "knn.k=5", "tagprop.k=5"])):
        out = tmp_path / head
        res = run("fit", store.path, "--head", head, *[x for s in sets for x in ("--set", s)], "-o", out)
        assert res.exit_code == 0, res.output
        record = json.loads((out / "run.json").read_text())
        assert record["head"] == head and record["fit_report"]
        res = run("evaluate", out, "--json")
        assert res.exit_code == 0, res.output
        fitted = Head.load(out / "model")
        rows = store.split_rows("test")
        rows = rows[store.labels(rows).any(axis=1)]
        expected = metrics.precision_at_k(fitted.predict_proba(store.features("both", rows)), store.labels(rows), 1)
        assert json.loads(res.output)["precision@1"] == pytest.approx(expected)
    assert record["fit_report"]["validation_rows"] + record["fit_report"]["fit_part_rows"] == record["n_train"]
    helped = run("fit", "--help").output
    for line in ("tagprop:", "weighting=learned", "fusion:", "components=mlp,knn", "component_params=null"):
        assert line in helped
    for sets, message in ((["components=knn,nope"], "fusion parameter components must be comma-separated distinct heads"),
                          (["knn.k=0"], "knn parameter k must be an integer >= 1, got 0"),
                          (["weights=1,2,3"], "fusion parameter weights must be one weight per component"),
                          (["weighting=rank"], None)):
        res = run("fit", store.path, "--head", "fusion" if message else "tagprop",
                  *[x for s in sets for x in ("--set", s)], "-o", tmp_path / "bad")
        assert res.exit_code == 2 and res.output.count("\n") == 1 and res.output.startswith("Error: "), res.output
        assert message is None or message in res.output
        assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_recommend_and_bench_with_the_new_heads(tmp_path):
    """`recommend` re-extracts a store photo and ranks it as the saved head ranks the stored
    features (tagprop, and fusion of knn + tagprop); `bench` runs both and tables them."""
    from hashtagkit.benchmark import bench
    from hashtagkit.stores import open_store

    from ..conftest import run_cli
    from ..extraction.test_extract import tiny_scene_backbone

    tiny_scene_backbone()
    store = tmp_path / "demo.zarr"
    run_cli(["prepare", "demo", "-o", store, "--n", "40"],
            ["extract", store, "--backbone", "tiny-scene=random", "--no-progress", "--workers", "0", "--precision", "fp32"])
    s = open_store(store)
    rows = s.split_rows("test")[:2]
    photos = [str(tmp_path / "demo_images" / p) for p in s.paths(rows)]
    for head, sets in (("tagprop", ["k=5"]), ("fusion", ["components=knn,tagprop", "knn.k=5", "tagprop.k=5"])):
        run_cli(["fit", store, "--head", head, *[x for kv in sets for x in ("--set", kv)], "-o", tmp_path / head])
        res = run("recommend", tmp_path / head, *photos, "--json", "--top", "3", "--device", "cpu")
        assert res.exit_code == 0, res.output
        stored = Head.load(tmp_path / head / "model").predict_proba(s.features("both", rows))
        for got, scores in zip(json.loads(res.stdout)["results"], stored, strict=True):
            assert [t["tag"] for t in got["hashtags"]] == [s.vocab[c] for c in ranking(scores[None])[0][:3]]
    table = bench(store, tmp_path / "bench", ["knn", "tagprop", "fusion"], ["both"], [0, 1],
                      {"knn": {"k": 5}, "tagprop": {"k": 5}, "fusion": {"components": "knn,tagprop"}}, log=lambda _: None)
    fusion = [r for r in table if r["head"] == "fusion"]
    assert len(fusion) == 2 and fusion[0]["params"]["component_params"] == {"knn": {"k": 5}, "tagprop": {"k": 5}}
    text = (tmp_path / "bench" / "table.md").read_text()
    assert "| tagprop | both |" in text and "| fusion | both |" in text and "±" in text


def test_bench_gives_fusion_the_components_settings():
    from hashtagkit.benchmark import with_component_sets

    sets = {"mlp": {"epochs": 2, "hidden": 64}, "knn": {"k": 9}, "fusion": {"mlp.hidden": 32}}
    got = with_component_sets(sets, ["mlp", "knn", "fusion"])
    assert got["fusion"] == {"mlp.epochs": 2, "knn.k": 9, "mlp.hidden": 32}  # fusion's own setting wins
    assert make_head("fusion", **got["fusion"]).component_params == {"mlp": {"epochs": 2, "hidden": 32}, "knn": {"k": 9}}
    assert with_component_sets(sets, ["mlp", "knn"]) == sets  # no fusion row: untouched
    only_knn = with_component_sets({**sets, "fusion": {"components": "knn,ovr"}}, ["fusion"])
    assert only_knn["fusion"] == {"knn.k": 9, "components": "knn,ovr"}  # the mlp's settings are not its business
