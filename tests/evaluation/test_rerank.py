"""Co-occurrence re-ranking against brute force, its identity at strength 0, the choice of the
strength on validation rows, and how a run keeps and applies it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from hashtagkit import metrics
from hashtagkit import rerank as cooc
from hashtagkit.cli.main import cli
from hashtagkit.evaluation import evaluate
from hashtagkit.heads.data import ArrayData, StoreData
from hashtagkit.runs import fit, load_postprocess, read_run

from ..conftest import make_store


def labels_matrix(n=200, c=12, seed=0):
    rng = np.random.default_rng(seed)
    Y = (rng.random((n, c)) < 0.2).astype(np.uint8)
    Y[:, 1] = Y[:, 0]  # tag 1 always comes with tag 0
    return Y


def brute_conditional(Y, beta):
    n, c = Y.shape
    out = np.zeros((c, c))
    for i in range(c):
        n_i = Y[:, i].sum()
        for j in range(c):
            n_ij = (Y[:, i] & Y[:, j]).sum()
            with np.errstate(invalid="ignore"):  # 0/0 for a tag never seen without smoothing
                out[i, j] = (n_ij + beta * Y[:, j].sum() / n) / (n_i + beta)
    return out


def brute_rerank(S, cond, alpha, m):
    """The module docstring's formula, one row and one tag at a time."""
    out = np.empty_like(S, dtype=np.float64)
    for r, s in enumerate(S):
        top = sorted(range(len(s)), key=lambda c: (-s[c], c))[:m]
        lo, hi = s.min(), s.max()
        w = {i: s[i] - lo for i in top}
        total = sum(w.values())
        prop = [sum(w[i] * cond[i, j] for i in top) / total if total > 0 else 0.0 for j in range(len(s))]
        out[r] = [(1 - alpha) * s[j] + alpha * (lo + (hi - lo) * prop[j]) for j in range(len(s))]
    return out


def test_pair_counts_by_block_equal_the_whole_matrix_product():
    Y = labels_matrix()
    pairs, n = cooc.pair_counts((Y[a : a + 16] for a in range(0, len(Y), 16)), Y.shape[1])
    assert n == len(Y)
    assert np.array_equal(pairs, Y.astype(np.int64).T @ Y.astype(np.int64))


def test_pair_counts_from_a_stores_label_chunks(tmp_path):
    store = make_store(tmp_path / "s.zarr", n=150, c=7, chunk_rows=16)
    rows = store.split_rows("train")
    data = StoreData(store, None, rows)
    blocks = list(data.labels())
    assert max(len(b) for b in blocks) <= store.group["labels"].chunks[0]  # a label chunk at a time
    pairs, _ = cooc.pair_counts(iter(blocks), 7)
    Y = store.labels(rows).astype(np.int64)
    assert np.array_equal(pairs, Y.T @ Y)


@pytest.mark.parametrize("beta", [0.0, 1.0, 10.0])
def test_conditional_equals_the_smoothed_formula(beta):
    Y = labels_matrix(c=8)
    Y[:, 5] = 0  # a tag never seen
    pairs, n = cooc.pair_counts([Y], 8)
    cond = cooc.conditional(pairs, n, beta)
    ref = brute_conditional(Y, beta)
    if beta == 0:  # nothing to condition on: the prior row
        ref[5] = Y.sum(axis=0) / len(Y)
    assert np.allclose(cond, ref, atol=1e-6)
    assert np.allclose(cond[0, 1], (Y[:, 0].sum() + beta * Y[:, 1].mean()) / (Y[:, 0].sum() + beta), atol=1e-6)


def test_rerank_equals_brute_force_and_strength_zero_is_the_identity():
    rng = np.random.default_rng(1)
    Y = labels_matrix(c=10)
    cond = cooc.conditional(*cooc.pair_counts([Y], 10), 10.0)
    S = rng.normal(size=(30, 10))  # negative scores too: decision values
    S[3] = 0.25  # a constant row: no vote, left as is
    for alpha in (0.3, 0.9):
        assert np.allclose(cooc.rerank(S, cond, alpha, 3), brute_rerank(S, cond, alpha, 3), atol=1e-9)
    assert cooc.rerank(S, cond, 0.0, 3) is S
    assert np.array_equal(cooc.blend(S, cooc.propagate(S, cond, 3), 0.0), S)


def test_rerank_does_not_depend_on_the_score_scale():
    rng = np.random.default_rng(2)
    cond = cooc.conditional(*cooc.pair_counts([labels_matrix(c=10)], 10), 5.0)
    S = rng.random((20, 10))
    scaled = cooc.rerank(3.0 * S - 7.0, cond, 0.4, 5)
    assert np.allclose(scaled, 3.0 * cooc.rerank(S, cond, 0.4, 5) - 7.0)


def test_choose_alpha_helps_where_companions_are_missed_and_stays_zero_where_not():
    rng = np.random.default_rng(3)
    n, c = 400, 12
    Y = labels_matrix(n, c, seed=3)
    cond = cooc.conditional(*cooc.pair_counts([Y], c), 1.0)
    # a head that sees tag 0 but is blind to its companion tag 1: re-ranking should lift tag 1
    S = Y + rng.normal(0, 0.6, (n, c))
    S[:, 1] = rng.normal(0, 0.6, n)
    tagged = Y.any(axis=1)
    alpha, table = cooc.choose_alpha(S[tagged], Y[tagged].astype(bool), cond, 3)
    assert alpha > 0
    assert table[0]["alpha"] == 0 and max(r["map"] for r in table) > table[0]["map"]
    # independent tags: the prior carries no information about a row, nothing to gain
    flat = np.tile(Y.mean(axis=0), (c, 1)).astype(np.float32)
    alpha0, table0 = cooc.choose_alpha(S[tagged], Y[tagged].astype(bool), flat, 3)
    assert alpha0 == 0.0 or table0[[r["alpha"] for r in table0].index(alpha0)]["map"] > table0[0]["map"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("rerank")
    store = make_store(root / "s.zarr", n=320, c=9, test=60, chunk_rows=16)
    from hashtagkit.postprocess import Options

    fit(store.path, "knn", root / "plain", params={"k": 5})
    fit(store.path, "knn", root / "cooc", params={"k": 5}, postprocess=Options(rerank="cooc", top_m=3))
    return store, root


def test_a_run_keeps_its_reranking_and_evaluate_applies_it(runs):
    store, root = runs
    record = read_run(root / "cooc")
    pp = record.postprocess
    assert pp["validation"]["source"].startswith("held-out training rows")
    n_val = pp["validation"]["rows"] + pp["validation"]["untagged_left_out"]
    assert pp["rerank"]["pairs_from_rows"] == record.n_train - n_val  # validation labels left out
    assert [r["alpha"] for r in pp["rerank"]["grid"]] == list(cooc.ALPHAS)
    assert pp["rerank"]["alpha"] == max(pp["rerank"]["grid"], key=lambda r: (r["map"], -r["alpha"]))["alpha"]
    # the head is the one fitted on every row: raw scores equal the run fitted without options
    raw, plain = evaluate(root / "cooc", raw=True), evaluate(root / "plain")
    for k in ("precision@1", "recall@5", "map", "map_class"):
        assert raw[k] == plain[k]
    assert raw["postprocess"] == {"applied": False} and plain["postprocess"] is None
    # evaluate applies the kept re-ranking: equal to re-ranking the raw scores here
    from hashtagkit.evaluation import evaluation_rows
    from hashtagkit.heads import Head

    rows, _ = evaluation_rows(store, "test")
    head = Head.load(root / "cooc" / "model")
    post = load_postprocess(root / "cooc", record)
    scores = cooc.rerank(head.predict_proba(store.features("both", rows)), post.cond, pp["rerank"]["alpha"], 3)
    expected = metrics.summary(scores, store.labels(rows), ks=(1, 5, 10))
    got = evaluate(root / "cooc", batch_size=7)
    for k in ("precision@1", "recall@5", "accuracy@5", "map", "map_class"):
        assert got[k] == pytest.approx(expected[k], abs=1e-12)
    assert got["postprocess"]["rerank"] == "cooc" and got["postprocess"]["alpha"] == pp["rerank"]["alpha"]


def test_forced_strength_changes_rankings_through_the_run(runs):
    """With a > 0 the run's answers are the re-ranked ones (strength set by hand on a copy)."""
    import shutil

    store, root = runs
    shutil.copytree(root / "cooc", root / "forced")
    record = read_run(root / "forced")
    record.postprocess["rerank"]["alpha"] = 0.8
    (root / "forced" / "run.json").write_text(json.dumps(record.to_json()))
    forced, raw = evaluate(root / "forced"), evaluate(root / "forced", raw=True)
    assert forced["postprocess"]["alpha"] == 0.8
    assert (forced["map"], forced["precision@1"]) != (raw["map"], raw["precision@1"])


def test_store_val_split_is_used_before_anything_else(tmp_path):
    from hashtagkit.data.split import random_split
    from hashtagkit.postprocess import Options
    from hashtagkit.stores import create_store

    rng = np.random.default_rng(0)
    n, c = 200, 6
    Y = (rng.random((n, c)) < 0.3).astype(np.uint8)
    split, info = random_split(n, 40, 30, 0)
    create_store(tmp_path / "v.zarr", paths=[f"{i}.jpg" for i in range(n)], labels=Y, vocab=[f"t{j}" for j in range(c)],
                 split=split, split_info=info, kind="test", image_root=None, synthetic=True)
    fit(tmp_path / "v.zarr", "popularity", tmp_path / "run", postprocess=Options(rerank="cooc"))
    pp = read_run(tmp_path / "run").postprocess
    assert pp["validation"]["source"] == "the store's val split"
    assert pp["validation"]["rows"] + pp["validation"]["untagged_left_out"] == 30
    assert pp["rerank"]["pairs_from_rows"] == 130  # every training row: the val split is not training


def test_mlp_calibrates_on_its_own_held_out_rows():
    from hashtagkit.heads import MLPHead
    from hashtagkit.postprocess import validation_scores

    rng = np.random.default_rng(0)
    X, Y = rng.random((200, 6)).astype(np.float32), (rng.random((200, 5)) < 0.3).astype(np.uint8)
    data = ArrayData(X, Y)
    head = MLPHead(hidden=8, epochs=2, device="cpu", workers=0).fit_data(data)

    class NoVal:  # a store without a val split
        def split_rows(self, name):
            return np.zeros(0, np.int64)

    scores, labels, left_out, how = validation_scores(NoVal(), head, data, "both", 0)
    assert np.array_equal(left_out, head.val_rows_) and len(left_out) == 20
    assert np.array_equal(labels, Y[head.val_rows_].astype(bool))
    assert np.allclose(scores, head.predict_proba(X[head.val_rows_]), atol=1e-6)
    assert "held out" in how["source"]


@pytest.mark.parametrize("args,needle", [
    (["--rerank", "graph"], "'graph' is not one of"),
    (["--rerank", "cooc", "--rerank-m", "0"], "--rerank-m"),
    (["--rerank", "cooc", "--rerank-smoothing", "nan"], "not a finite number"),
    (["--threshold", "best"], "'best' is not one of"),
])
def test_bad_options_are_one_line_errors(tmp_path, args, needle):
    store = make_store(tmp_path / "s.zarr", n=40)
    res = CliRunner().invoke(cli, ["fit", str(store.path), "--head", "popularity", "-o", str(tmp_path / "r"), *args])
    assert res.exit_code == 2 and needle in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
