"""F1 at thresholds against scikit-learn, the threshold search against brute force, and how a
run's thresholds reach evaluate, recommend and serve."""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from sklearn.metrics import f1_score

from hashtagkit import metrics
from hashtagkit.cli.main import cli
from hashtagkit.evaluation import evaluate, evaluation_rows
from hashtagkit.heads import Head
from hashtagkit.postprocess import Options
from hashtagkit.recommend import Recommender
from hashtagkit.runs import fit, load_postprocess, read_run
from hashtagkit.thresholds import choose_thresholds, global_threshold, per_tag_thresholds

from ..conftest import make_store


def scored(n=80, c=7, seed=0, ties=False):
    rng = np.random.default_rng(seed)
    Y = rng.random((n, c)) < 0.25
    Y[:, 3] = False  # a class without positives
    S = Y * 0.6 + rng.random((n, c))
    if ties:
        S = np.round(S, 1)  # many equal scores
    return S, Y


def sklearn_f1(S, Y, t):
    pred = S >= t
    present = np.flatnonzero(Y.sum(axis=0) > 0)
    return (f1_score(Y, pred, average="micro", zero_division=0),
            f1_score(Y, pred, average="macro", labels=present, zero_division=0))


@pytest.mark.parametrize("per_class", [False, True])
def test_f1_at_threshold_equals_scikit_learn(per_class):
    S, Y = scored()
    t = np.linspace(0.5, 1.1, S.shape[1]) if per_class else 0.8
    got = metrics.f1_at_threshold(S, Y, t)
    micro, macro = sklearn_f1(S, Y, t)
    assert got["f1_micro"] == pytest.approx(micro, abs=1e-12)
    assert got["f1_macro"] == pytest.approx(macro, abs=1e-12)
    assert got["tags_per_image"] == pytest.approx((S >= t).sum(axis=1).mean())


def test_the_accumulator_adds_f1_batch_by_batch():
    S, Y = scored(n=101)
    Y[:, 0] |= ~Y.any(axis=1)  # every image has a hashtag (recall needs it)
    t = np.linspace(0.6, 1.0, S.shape[1])
    acc = metrics.MetricAccumulator(S.shape[1], ks=(1, 5), thresholds=t)
    plain = metrics.MetricAccumulator(S.shape[1], ks=(1, 5))
    for a in range(0, len(S), 13):
        acc.update(S[a : a + 13], Y[a : a + 13])
        plain.update(S[a : a + 13], Y[a : a + 13])
    for a in range(0, len(S), 13):
        acc.rank_update(S[a : a + 13], Y[a : a + 13])
        plain.rank_update(S[a : a + 13], Y[a : a + 13])
    got, ref = acc.result(), metrics.f1_at_threshold(S, Y, t)
    for k in ("f1_micro", "f1_macro", "tags_per_image"):
        assert got[k] == pytest.approx(ref[k], abs=1e-12)
    assert "f1_micro" not in plain.result()  # only with thresholds
    assert got["map_class"] == plain.result()["map_class"]


@pytest.mark.parametrize("ties", [False, True])
def test_global_threshold_reaches_the_best_micro_f1_of_every_candidate(ties):
    S, Y = scored(ties=ties)
    t, f1 = global_threshold(S, Y)
    candidates = np.unique(np.r_[S.ravel(), np.inf])
    best = max(metrics.f1_at_threshold(S, Y, c)["f1_micro"] for c in candidates)  # == sklearn (tested above)
    assert f1 == pytest.approx(best, abs=1e-12)
    assert sklearn_f1(S, Y, t)[0] == pytest.approx(best, abs=1e-12)
    assert not np.isin(t, S)  # halfway between two scores: no validation score on the edge


@pytest.mark.parametrize("ties", [False, True])
def test_per_tag_thresholds_are_a_coordinate_optimum_of_micro_f1(ties):
    S, Y = scored(n=120, ties=ties)
    t0, f0 = global_threshold(S, Y)
    t, few = per_tag_thresholds(S, Y, start=t0, min_positives=5, sweeps=50)
    micro = sklearn_f1(S, Y, t)[0]
    assert micro >= f0 - 1e-12  # never below the global threshold it starts from
    assert few[3] and t[3] == t0  # no positives: the global value
    for c in np.flatnonzero(~few):  # no single class's threshold can do better, the others held
        for x in np.unique(np.r_[S[:, c], np.inf]):
            moved = t.copy()
            moved[c] = x
            assert metrics.f1_at_threshold(S, Y, moved)["f1_micro"] <= micro + 1e-12  # == sklearn (tested above)


def test_a_class_the_head_cannot_predict_is_not_returned_for_every_photo():
    """Its own best F1 would keep it everywhere (2p/(1+p) > 0): the planted store's finding."""
    rng = np.random.default_rng(4)
    n, c = 400, 6
    Y = rng.random((n, c)) < 0.1
    Y[:, 0] = rng.random(n) < 0.5
    S = Y * 1.5 + rng.normal(0, 0.5, (n, c))
    S[:, 5] = rng.random(n)  # no signal
    t0, _ = global_threshold(S, Y)
    t, _ = per_tag_thresholds(S, Y, start=t0)
    own_best = max(metrics.f1_at_threshold(S[:, 5:], Y[:, 5:], x)["f1_micro"] for x in np.unique(S[:, 5]))
    assert own_best > 0 and (S[:, 5] >= t[5]).mean() < 0.2


def test_choose_thresholds_records_what_it_chose():
    S, Y = scored(n=120)
    t, record = choose_thresholds("per-tag", S, Y)
    assert record["kind"] == "per-tag" and record["classes_on_global"] >= 1
    assert record["val_f1_micro"] == pytest.approx(metrics.f1_at_threshold(S, Y, t)["f1_micro"], abs=1e-6)
    tg, rg = choose_thresholds("global", S, Y)
    assert np.all(tg == rg["global"])
    with pytest.raises(ValueError, match="threshold must be"):
        choose_thresholds("best", S, Y)


# --- through a run: evaluate, recommend, serve ------------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The popularity floor (no extractor needed: any photo will do) re-ranked and thresholded."""
    root = tmp_path_factory.mktemp("thresholds")
    store = make_store(root / "s.zarr", n=300, c=9, test=60, chunk_rows=16)
    fit(store.path, "popularity", root / "floor")
    fit(store.path, "popularity", root / "run", postprocess=Options(rerank="cooc", threshold="per-tag"))
    return store, root


def photo() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_evaluate_reports_f1_at_the_runs_thresholds(run):
    store, root = run
    record = read_run(root / "run")
    post = load_postprocess(root / "run", record)
    rows, _ = evaluation_rows(store, "test")
    head = Head.load(root / "run" / "model")
    scores = post.apply(head.predict_proba(np.zeros((len(rows), 0), np.float32)))
    Y = store.labels(rows).astype(bool)
    micro, macro = sklearn_f1(scores, Y, post.thresholds)
    got = evaluate(root / "run", batch_size=11)
    assert got["f1_micro"] == pytest.approx(micro, abs=1e-12) and got["f1_macro"] == pytest.approx(macro, abs=1e-12)
    assert got["postprocess"]["threshold"] == "per-tag"
    assert "f1_micro" not in evaluate(root / "run", raw=True) and "f1_micro" not in evaluate(root / "floor")
    res = CliRunner().invoke(cli, ["evaluate", str(root / "run")])
    assert res.exit_code == 0 and "at the per-tag threshold: F1 micro" in res.output
    res = CliRunner().invoke(cli, ["evaluate", str(root / "run"), "--raw", "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["postprocess"] == {"applied": False}


def test_recommend_returns_what_the_thresholds_keep(run):
    store, root = run
    rec = Recommender.from_run(root / "run")
    post = rec.post
    scores = post.apply(rec.head.predict_proba(np.zeros((1, 0), np.float32)))[0]
    order = sorted(range(len(scores)), key=lambda c: (-scores[c], c))
    expected = [store.vocab[c] for c in order if scores[c] >= post.thresholds[c]]
    got = rec.recommend([photo()], threshold=True, top=None)[0]
    assert [t for t, _ in got.hashtags] == expected
    assert [t for t, _ in rec.recommend([photo()], threshold=True, top=1)[0].hashtags] == expected[:1]
    top = rec.recommend([photo()], top=4)[0]  # top-K is the re-ranked ranking
    assert [t for t, _ in top.hashtags] == [store.vocab[c] for c in order[:4]]
    assert rec.info()["postprocess"]["threshold"] == "per-tag"


def test_recommend_cli_threshold_and_its_refusal(run, tmp_path):
    store, root = run
    (tmp_path / "p.png").write_bytes(photo())
    res = CliRunner().invoke(cli, ["recommend", str(root / "run"), str(tmp_path / "p.png"), "--threshold", "--json"])
    assert res.exit_code == 0
    rec = Recommender.from_run(root / "run")
    expected = rec.recommend([photo()], threshold=True, top=None)[0].hashtags
    assert [h["tag"] for h in json.loads(res.output)["results"][0]["hashtags"]] == [t for t, _ in expected]
    res = CliRunner().invoke(cli, ["recommend", str(root / "floor"), str(tmp_path / "p.png"), "--threshold"])
    assert res.exit_code == 2 and res.output.strip().splitlines() == [
        f"Error: {root / 'floor'} has no thresholds: fit it with --threshold global|per-tag"]


def test_serve_threshold_query(run):
    from hashtagkit.serve import create_app, serve_in_thread

    store, root = run
    rec = Recommender.from_run(root / "run")
    expected = [t for t, _ in rec.recommend([photo()], threshold=True, top=None)[0].hashtags]
    with serve_in_thread(create_app(rec, max_batch=4, max_wait_ms=5)) as url:
        files = [("files", ("p.png", photo(), "image/png"))]
        got = httpx.post(f"{url}/v1/recommend", params={"threshold": "true"}, files=files, timeout=30)
        assert got.status_code == 200
        assert [h["tag"] for h in got.json()["results"][0]["hashtags"]] == expected
        capped = httpx.post(f"{url}/v1/recommend", params={"threshold": "true", "top": 2}, files=files, timeout=30)
        assert [h["tag"] for h in capped.json()["results"][0]["hashtags"]] == expected[:2]
        plain = httpx.post(f"{url}/v1/recommend", files=files, timeout=30)
        assert len(plain.json()["results"][0]["hashtags"]) == 5  # top-K stays the default
    floor = Recommender.from_run(root / "floor")
    with serve_in_thread(create_app(floor, max_batch=4, max_wait_ms=5)) as url:
        got = httpx.post(f"{url}/v1/recommend", params={"threshold": "true"}, files=files, timeout=30)
        assert got.status_code == 400 and "no thresholds" in got.json()["detail"]


def test_bench_takes_the_options_and_keeps_their_records_apart(tmp_path):
    store = make_store(tmp_path / "s.zarr", n=200, c=8, test=40, chunk_rows=16)
    out = tmp_path / "bench"

    def bench(*args):
        res = CliRunner().invoke(cli, ["bench", str(store.path), "--heads", "popularity", "-o", str(out), *args])
        assert res.exit_code == 0, res.output
        return json.loads((out / "results.json").read_text())["records"]

    plain = bench()
    assert "f1_micro" not in plain[0] and plain[0]["postprocess"] is None
    done = bench("--rerank", "cooc", "--threshold", "global")  # other settings: recomputed, not mixed in
    assert len(done) == 1 and done[0]["key"] != plain[0]["key"]
    run = done[0]["run"]
    assert done[0]["f1_micro"] == pytest.approx(evaluate(run)["f1_micro"])
    assert read_run(run).postprocess["options"]["threshold"] == "global"
    res = CliRunner().invoke(cli, ["bench", str(store.path), "--heads", "popularity", "-o", str(out),
                                   "--threshold", "some"])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1
