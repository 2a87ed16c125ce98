"""The harness and runs: every head on the same rows, a run refusing a store it does not fit,
and the one-line errors for features a head cannot use."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from hashtagkit import metrics
from hashtagkit.cli.main import cli
from hashtagkit.stores import SPLIT_CODES, open_store

from ..conftest import make_store


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def fit(store, head, out, *sets):
    res = run("fit", store, "--head", head, "-o", out, *[a for kv in sets for a in ("--set", kv)])
    assert res.exit_code == 0, res.output
    return json.loads((out / "run.json").read_text())


def test_every_head_fits_and_is_scored_on_the_same_rows(tmp_path):
    split = make_store(tmp_path / "probe.zarr", features=False).split()  # the split make_store draws
    train, test = np.flatnonzero(split == SPLIT_CODES["train"]), np.flatnonzero(split == SPLIT_CODES["test"])
    invalid = (*train[:4].tolist(), *test[:3].tolist())
    store = make_store(tmp_path / "s.zarr", invalid=invalid)
    results = {}
    for head, sets in (("popularity", ()), ("knn", ("k=3",))):
        record = fit(store.path, head, tmp_path / head, *sets)
        assert record["n_train"] == len(train) - 4 == 41
        assert record["train_skipped"] == {"invalid_image": 4}
        res = run("evaluate", tmp_path / head, "--json")
        assert res.exit_code == 0, res.output
        results[head] = json.loads(res.output)
        assert results[head]["n_images"] == len(test) - 3 == 12
        assert results[head]["skipped"] == {"invalid_image": 3}
    # the floor counts tags on the 41 valid training rows only, and is scored on the 12 valid test rows
    kept_train = np.setdiff1d(train, invalid)
    kept_test = np.setdiff1d(test, invalid)
    freq = store.labels(kept_train).mean(0)
    scores = np.tile(freq, (len(kept_test), 1))
    assert results["popularity"]["precision@1"] == pytest.approx(metrics.precision_at_k(scores, store.labels(kept_test), 1))
    assert results["popularity"]["recall@5"] == pytest.approx(metrics.recall_at_k(scores, store.labels(kept_test), 5))
    table = run("evaluate", tmp_path / "popularity").output
    assert "on test: 12 images" in table and "skipped 3 image(s): invalid image" in table


def test_no_valid_training_rows_is_one_line(tmp_path):
    store = make_store(tmp_path / "s.zarr", n=20, test=5, invalid=tuple(range(20)), chunk_rows=8)
    for head in ("popularity", "knn"):
        res = run("fit", store.path, "--head", head, "-o", tmp_path / head)
        assert res.exit_code == 2, res.output
        assert "training on a store with no valid rows (all 15 training images failed to decode)" in res.output
        assert res.output.strip().count("\n") == 0 and not (tmp_path / head).exists()


def write_rows(path, rows, value):
    """Rewrite the chunks holding `rows` through the store API, with `value` in their first column."""
    store = open_store(path, mode="r+")
    X, valid, step = store.features(), store.valid(), store.chunk_rows()
    X[rows, 0] = value
    for chunk in sorted({r // step for r in rows}):
        s = slice(chunk * step, (chunk + 1) * step)
        store.write_chunk(chunk, X[s], valid[s])


def test_non_finite_features_are_refused_with_their_rows(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    train, test = store.split_rows("train"), store.split_rows("test")
    fit(store.path, "knn", tmp_path / "ok", "k=3")  # fitted before the damage
    write_rows(store.path, [int(train[2]), int(train[7])], np.nan)
    res = run("fit", store.path, "--head", "knn", "-o", tmp_path / "run")
    assert res.exit_code == 2
    assert f"rows {train[2]}, {train[7]} have non-finite features (NaN/inf)" in res.output
    write_rows(store.path, [int(test[0])], np.inf)
    res = run("evaluate", tmp_path / "ok")
    assert res.exit_code == 2 and f"rows {test[0]} have non-finite features" in res.output
    assert fit(store.path, "popularity", tmp_path / "floor")["n_train"] == len(train)  # reads no features


def copy_with(tmp_path, store, name, **attrs):
    """A copy of the store (same split, labels and features) with some attributes changed."""
    shutil.copytree(store.path, tmp_path / name)
    g = zarr.open_group(tmp_path / name, mode="r+")
    g.attrs.update(attrs)
    return tmp_path / name


def test_a_run_refuses_a_store_it_does_not_fit(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    fit(store.path, "knn", tmp_path / "knn", "k=3")
    fit(store.path, "popularity", tmp_path / "floor")
    assert run("evaluate", tmp_path / "knn", "--store", store.path).exit_code == 0
    renamed = copy_with(tmp_path, store, "vocab.zarr", vocab=[*store.vocab[1:], store.vocab[0]])
    other = [dict(b) for b in store.blocks]
    other[1]["weights"] = {"sha256": "c" * 64}
    reweighted = copy_with(tmp_path, store, "weights.zarr", blocks=other)
    cases = [
        ("knn", renamed, "its vocabulary differs from the run's (class 0 is 'tag1' here, 'tag0' in the run)"),
        ("floor", renamed, "its vocabulary differs"),  # the floor ranks classes too
        ("knn", reweighted, "its features (object: test-object (sha256 aaaaaaaaaaaa), scene: test-scene "
                            "(sha256 cccccccccccc)) are not those the run was trained on (object: test-object "
                            "(sha256 aaaaaaaaaaaa), scene: test-scene (sha256 bbbbbbbbbbbb))"),
    ]
    for run_dir, path, message in cases:
        for command in ("evaluate", "show"):
            res = run(command, tmp_path / run_dir, "--store", path, *(["-o", tmp_path / "x.png"] if command == "show" else []))
            assert res.exit_code == 2, (command, res.output)
            assert message in res.output and res.output.strip().count("\n") == 0
    assert run("evaluate", tmp_path / "floor", "--store", reweighted).exit_code == 0  # reads no features
    # another width: a store whose blocks are 3 columns wide
    narrow = make_store(tmp_path / "n.zarr", features=False)
    narrow = open_store(narrow.path, mode="r+")
    rows = narrow.init_features(6, "float32", [{**b, "columns": [3 * i, 3 * i + 3]} for i, b in enumerate(store.blocks)])
    for chunk, start in enumerate(range(0, narrow.n_rows, rows)):
        n = min(rows, narrow.n_rows - start)
        narrow.write_chunk(chunk, np.ones((n, 6), np.float32), np.ones(n, bool))
    res = run("evaluate", tmp_path / "knn", "--store", narrow.path)
    assert res.exit_code == 2 and "are not those the run was trained on" in res.output


def test_k_above_the_vocabulary_is_labelled_as_computed(tmp_path):
    store = make_store(tmp_path / "s.zarr", features=False)  # 7 classes
    fit(store.path, "popularity", tmp_path / "run")
    got = json.loads(run("evaluate", tmp_path / "run", "--k", "3,1000", "--json").output)
    assert "precision@1000" not in got and got["k_capped"] == {"asked": [1000], "computed_at": 7}
    assert got["recall@7"] == 1.0  # every class ranked: all of the ground truth is found

    rows = store.split_rows("test")
    labels = store.labels(rows)
    scores = np.tile(store.labels(store.split_rows("train")).mean(axis=0), (len(rows), 1))
    assert got["precision@3"] == pytest.approx(metrics.precision_at_k(scores, labels, 3))
    assert got["precision@7"] == pytest.approx(labels.sum() / (7 * len(rows)))  # K = C: |GT| / C
    table = run("evaluate", tmp_path / "run", "--k", "1000").output
    assert "K = 1000 exceed(s) the vocabulary: computed at K = 7" in table
    assert "\n   7 " in table and "1000 " not in table.split("K = 1000")[0]


def test_a_split_of_untagged_rows_says_so(tmp_path):
    """A test split whose rows have no hashtag was reported as 'has no rows to evaluate' alone
    (issue #23): the reason is named."""
    from hashtagkit.data.split import random_split
    from hashtagkit.stores import create_store

    split, info = random_split(12, 4, 0, 0)
    labels = np.zeros((12, 3), np.uint8)
    labels[split == SPLIT_CODES["train"], 0] = 1  # only the training rows are tagged
    store = create_store(tmp_path / "s.zarr", paths=[f"{i}.jpg" for i in range(12)], labels=labels,
                         vocab=["a", "b", "c"], split=split, split_info=info, kind="test", image_root=None)
    res = CliRunner().invoke(cli, ["fit", str(store.path), "--head", "popularity", "-o", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "r")])
    assert res.exit_code == 2
    assert "the 'test' split has no rows to evaluate: of its 4 row(s), 4 have no hashtag" in res.output
