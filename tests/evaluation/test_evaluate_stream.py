"""Streaming evaluation (issue #13, item 5): the metrics accumulated batch by batch equal the
in-memory `metrics.summary` / `per_class_recall_at_k` on the whole score matrix, whatever the
batch size, ties included, and `hashtagkit evaluate` scores a split in bounded batches while
printing what the in-memory computation gives."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from hashtagkit import evaluation, metrics
from hashtagkit.cli.main import cli

from ..conftest import make_store, run_cli

KS = (1, 3, 5, 10, 50)  # 50 > C: capped at C, as summary does


def problem(kind: str, n: int = 61, c: int = 11, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.random((n, c)) < 0.25
    labels[np.arange(n), rng.integers(0, c - 1, n)] = True
    labels[:, c - 1] = False  # a class no image has: NaN per-class recall, left out of map_class
    labels[rng.integers(0, n), c - 1] = True if kind == "one-positive" else False
    if kind == "random":
        scores = rng.random((n, c))
    elif kind == "tied":  # few distinct values: ties inside and across batches, positives and negatives
        scores = rng.integers(0, 3, (n, c)).astype(np.float32)
    elif kind == "constant":  # a popularity head: every row the same, every image tied in every class
        scores = np.tile(rng.random(c), (n, 1))
    else:
        scores = rng.random((n, c)).astype(np.float16)
    return scores, labels


def streamed(scores, labels, batch, ks=KS, per_class_k=3, batch2=None):
    acc = metrics.MetricAccumulator(scores.shape[1], ks=ks, per_class_k=per_class_k)
    for start in range(0, len(scores), batch):
        acc.update(scores[start : start + batch], labels[start : start + batch])
    batch2 = batch2 or batch
    for start in range(0, len(scores), batch2):
        acc.rank_update(scores[start : start + batch2], labels[start : start + batch2])
    return acc.result()


@pytest.mark.parametrize("kind", ["random", "tied", "constant", "one-positive"])
@pytest.mark.parametrize("batch", [1, 2, 7, 16, 61, 1000])  # 7, 16: a remainder; 61: one batch
def test_streamed_metrics_equal_in_memory(kind, batch):
    scores, labels = problem(kind)
    want = metrics.summary(scores, labels, ks=KS)
    got = streamed(scores, labels, batch)
    key = "per_class_recall@3"
    assert set(got) == set(want) | {key}
    assert got["n_images"] == want["n_images"] == len(scores)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-12, rel=0), name
    np.testing.assert_allclose(got[key], metrics.per_class_recall_at_k(scores, labels, 3), rtol=0, atol=1e-12)
    assert np.isnan(got[key][-1]) == (kind != "one-positive")


@pytest.mark.parametrize("kind", ["random", "tied"])
def test_the_second_pass_may_batch_differently(kind):
    scores, labels = problem(kind, seed=3)
    want = metrics.summary(scores, labels, ks=KS)
    for batch, batch2 in ((7, 3), (1, 61), (61, 1), (16, 5)):
        got = streamed(scores, labels, batch, batch2=batch2)
        for name, value in want.items():
            assert got[name] == pytest.approx(value, abs=1e-12, rel=0), (name, batch, batch2)


def test_class_ap_ties_break_by_image_index_across_batches():
    """Class 0 ranks 4 images all tied: the positive at image 3 is last (AP 1/4) and the one at
    image 0 first (AP 1); a streaming count that ignored which batch came first gets this wrong."""
    scores = np.ones((4, 2))
    for positive, ap in ((3, 0.25), (0, 1.0), (2, 1 / 3)):
        labels = np.zeros((4, 2), bool)
        labels[:, 1] = True
        labels[positive, 0] = True
        ap_class1 = 1.0  # every image is positive
        for batch in (1, 2, 3):
            got = streamed(scores, labels, batch, ks=(1,), per_class_k=None)
            assert got["map_class"] == pytest.approx((ap + ap_class1) / 2, abs=1e-15)
            assert got["map_class"] == pytest.approx(metrics.mean_average_precision(scores, labels, "class"))


def test_accumulator_refuses_what_summary_refuses_and_misuse():
    scores, labels = problem("random")
    acc = metrics.MetricAccumulator(scores.shape[1])
    with pytest.raises(ValueError, match="no ground-truth"):
        acc.update(scores[:3], np.zeros((3, scores.shape[1]), bool))
    with pytest.raises(ValueError, match="NaN"):
        acc.update(np.full((1, scores.shape[1]), np.nan), labels[:1])
    with pytest.raises(ValueError, match="classes"):
        acc.update(scores[:2, :3], labels[:2, :3])
    acc.update(scores[:10], labels[:10])
    with pytest.raises(ValueError, match="pass 2"):
        acc.result()  # map_class needs the second pass
    acc.rank_update(scores[:5], labels[:5])
    with pytest.raises(ValueError, match="5 of 10"):
        acc.result()
    with pytest.raises(ValueError, match="more rows"):
        acc.rank_update(scores[:6], labels[:6])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evalstream")
    store = make_store(tmp / "s.zarr", n=90, c=7, test=37, invalid=(1, 2, 40))
    run_cli(["fit", store.path, "--head", "popularity", "-o", tmp / "popularity"],
            ["fit", store.path, "--head", "knn", "--set", "k=3", "-o", tmp / "knn"])
    return tmp


def in_memory(run_dir, ks, per_class_k=None) -> dict:
    """Today's harness: the whole N x C score matrix, then summary."""
    s = evaluation.score_split(run_dir)
    want = metrics.summary(s.scores, s.labels, ks=ks)
    if per_class_k:
        want[f"per_class_recall@{per_class_k}"] = metrics.per_class_recall_at_k(s.scores, s.labels, per_class_k)
    return want


@pytest.mark.parametrize("head", ["popularity", "knn"])
def test_evaluate_json_equals_in_memory(runs, head):
    res = CliRunner().invoke(cli, ["evaluate", str(runs / head), "--json", "--k", "1,2,5,9"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    want = in_memory(runs / head, ks=(1, 2, 5, 9))
    assert got["n_images"] == want["n_images"] == 37 - 2  # rows 1 and 2 are invalid test rows
    assert got["skipped"] == {"invalid_image": 2}
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-12, rel=0), name
    assert got["k_capped"] == {"asked": [9], "computed_at": 7}
    assert got["head"] == head and got["split"] == "test"


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("batch", [1, 4, 35, 500])
def test_evaluate_run_scores_in_batches_and_gives_the_same_numbers(runs, batch, cache, monkeypatch):
    seen = []
    real = evaluation.load_run

    def counting(*args, **kwargs):  # the rows each predict_proba call is given
        record, head, store = real(*args, **kwargs)
        predict = head.predict_proba
        head.predict_proba = lambda X: (seen.append(len(X)), predict(X))[1]
        return record, head, store

    monkeypatch.setattr(evaluation, "load_run", counting)
    if not cache:  # the train split of a large store: scores recomputed for the second pass
        monkeypatch.setattr(evaluation, "SCORE_CACHE_BYTES", 0)
    got = evaluation.evaluate(runs / "knn", ks=(1, 5), per_class_k=2, batch_size=batch)
    n = got["n_images"]
    assert max(seen) == min(batch, n)  # never more than one batch of features (and scores) at once
    # per-class AP ranks positives against every negative: two passes, the second from kept scores or recomputed
    assert sum(seen) == (1 if cache else 2) * n
    monkeypatch.setattr(evaluation, "load_run", real)
    want = in_memory(runs / "knn", ks=(1, 5), per_class_k=2)
    for name, value in want.items():
        if name.startswith("per_class"):
            assert got[name] == [None if np.isnan(v) else round(float(v), 6) for v in value]
        else:
            assert got[name] == pytest.approx(value, abs=1e-12, rel=0), name


def test_a_bad_batch_size_is_an_input_error(runs):
    from hashtagkit.errors import InputError

    with pytest.raises(InputError, match="batch size"):
        evaluation.evaluate(runs / "knn", batch_size=0)


def test_labels_are_read_a_batch_at_a_time(runs, monkeypatch):
    from hashtagkit.stores import open_store
    from hashtagkit.stores.store import Store

    sizes, real, real_iter = [], Store.labels, Store.iter_rows

    def counting(self, rows=None):
        sizes.append(self.n_rows if rows is None else len(rows))
        return real(self, rows)

    def counting_steps(self, *args, **kwargs):  # the labels read with the features to score
        for picked, data in real_iter(self, *args, **kwargs):
            if "features" in data:
                sizes.append(len(data["labels"]))
            yield picked, data

    monkeypatch.setattr(Store, "labels", counting)
    monkeypatch.setattr(Store, "iter_rows", counting_steps)
    res = CliRunner().invoke(cli, ["evaluate", str(runs / "knn"), "--json", "--batch-size", "8"])
    assert res.exit_code == 0, res.output
    step = open_store(runs / "s.zarr").step_rows()
    assert step < 37 - 2  # the split spans several steps
    assert sizes and max(sizes) <= step  # a store step at a time, never the split's whole N x C labels
    monkeypatch.undo()
    whole = json.loads(CliRunner().invoke(cli, ["evaluate", str(runs / "knn"), "--json"]).output)
    got = json.loads(res.output)
    assert set(got) == set(whole)
    for name, value in whole.items():
        if isinstance(value, float) and name != "predict_seconds":
            assert got[name] == pytest.approx(value, abs=1e-12), name  # (summed in another order)
        elif name != "predict_seconds":
            assert got[name] == value, name
    bad = CliRunner().invoke(cli, ["evaluate", str(runs / "knn"), "--batch-size", "0"])
    assert bad.exit_code == 2 and "--batch-size" in bad.output
