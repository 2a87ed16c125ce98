"""`hashtagkit bench`: every combination once, resumable, and a table with the right rows."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from PIL import Image

from hashtagkit.cli.main import cli
from hashtagkit.plots import curve_data, per_class_bins

from ..conftest import make_store


def bench(store, out, *args):
    return CliRunner().invoke(cli, ["bench", str(store), "-o", str(out), *args])


@pytest.mark.slow
def test_bench_writes_all_three_files_and_resumes(tmp_path):
    store = make_store(tmp_path / "s.zarr").path
    out = tmp_path / "bench"
    res = bench(store, out, "--heads", "knn,ovr", "--features", "object,both", "--seeds", "0,1",
                "--set", "knn.k=3", "--set", "ovr.pca=null", "--set", "ovr.n_jobs=1")
    assert res.exit_code == 0, res.output
    records = json.loads((out / "results.json").read_text())["records"]
    combos = {(r["head"], r["view"], r["seed"]) for r in records}
    assert combos == {("popularity", "-", 0)} | {(h, v, s) for h in ("knn", "ovr") for v in ("object", "both") for s in (0, 1)}
    assert all({"precision@1", "recall@5", "accuracy@5", "fit_seconds", "predict_seconds"} <= set(r) for r in records)
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == len(records) == 9
    table = (out / "table.md").read_text()
    assert "| popularity | - |" in table and "| knn | object |" in table and " ± " in table
    assert table.index("| popularity |") < table.index("| knn |")  # the floor first
    assert "paper" not in table  # not a HARRISON store
    assert "| knn | both |" in res.output  # the table is printed too
    # the store has 7 classes: K = 8..10 are computed at 7 and labelled so, never @8..@10
    assert all(f"precision@{k}" in r and f"recall@{k}" in r for r in records for k in range(1, 8))
    assert not any(f"precision@{k}" in r for r in records for k in (8, 9, 10))
    assert all(r["k_capped"] == {"asked": [8, 9, 10], "computed_at": 7} for r in records)
    assert all(len(r["per_class_recall@5"]) == 7 for r in records) and "per_class_recall@5" not in rows[0]
    for name in ("curves.png", "per_class_recall.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.width > 500
    # a second run with one more seed does only the new combinations
    res = bench(store, out, "--heads", "knn,ovr", "--features", "object,both", "--seeds", "0,1,2",
                "--set", "knn.k=3", "--set", "ovr.pca=null", "--set", "ovr.n_jobs=1")
    assert res.exit_code == 0, res.output
    assert "9 already done" in res.output
    again = json.loads((out / "results.json").read_text())["records"]
    assert len(again) == 13 and again[:9] == records  # earlier records untouched, four new ones


def test_paper_rows_on_harrison_and_skipped_views(tmp_path):
    store = make_store(tmp_path / "h.zarr", kind="harrison").path
    res = bench(store, tmp_path / "b", "--heads", "knn", "--features", "both,scene", "--set", "knn.k=3")
    assert res.exit_code == 0, res.output
    table = (tmp_path / "b" / "table.md").read_text()
    assert "paper: VGG-Object + VGG-Scene (reported, not measured) | both | 30.16 | 21.38 | 52.52" in table
    assert "paper: VGG-Object (reported, not measured) | object | 28.30 | 20.83 | 50.70" in table
    bare = make_store(tmp_path / "bare.zarr", features=False).path
    res = bench(bare, tmp_path / "c", "--heads", "knn")
    assert res.exit_code == 0 and "skipping view 'both'" in res.output
    assert "| popularity |" in (tmp_path / "c" / "table.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--heads", "nope"], "unknown head 'nope'"),
    (["--features", "people"], "unknown feature view 'people'"),
    (["--seeds", "a"], "--seeds takes"),
    (["--set", "k=3"], "HEAD.KEY=VALUE"),
])
def test_bench_errors(tmp_path, args, message):
    store = make_store(tmp_path / "s.zarr").path
    res = bench(store, tmp_path / "b", *args)
    assert res.exit_code == 2 and message in res.output


def test_paper_rows_beside_planted_harrison_features(tmp_path, harrison_root):
    store = tmp_path / "p.zarr"
    res = CliRunner().invoke(cli, ["prepare", "planted", "-o", str(store), "--labels", str(harrison_root),
                                   "--n", "300", "--dim", "8"])
    assert res.exit_code == 0, res.output
    res = bench(store, tmp_path / "b", "--heads", "popularity", "--features", "both")
    table = (tmp_path / "b" / "table.md").read_text()
    assert res.exit_code == 0 and "| 30.16 | 21.38 | 52.52 |" in table and "not comparable" in table


def records_for(rng, heads=("knn", "ovr"), seeds=(0, 1, 2), c=12):
    out = []
    for head in heads:
        for seed in seeds:
            r = {"head": head, "view": "both", "seed": seed}
            for k in range(1, 11):
                r[f"precision@{k}"], r[f"recall@{k}"] = rng.random(), rng.random()
            pcr = rng.random(c).round(3).tolist()
            pcr[3] = None  # a class without test positives
            r["per_class_recall@5"] = pcr
            out.append(r)
    return out


def test_curve_data_is_the_mean_over_seeds():
    records = records_for(np.random.default_rng(0))
    data = curve_data(records)
    assert set(data) == {("knn", "both"), ("ovr", "both")}
    ks, ys = data[("ovr", "both")]["recall"]
    assert ks == list(range(1, 11))
    ovr = [r for r in records if r["head"] == "ovr"]
    assert ys[6] == pytest.approx(100 * sum(r["recall@7"] for r in ovr) / 3)
    old = [dict(r) for r in records]  # a record from an older bench, without K = 10, drops only that K
    del old[0]["precision@10"]
    assert curve_data(old)[("knn", "both")]["precision"][0] == list(range(1, 10))


def test_per_class_bins_against_brute_force():
    rng = np.random.default_rng(1)
    records = records_for(rng)
    counts = [1, 2, 3, 5, 8, 13, 21, 40, 80, 160, 0, 500]  # class 10 has no training images
    bins = per_class_bins(records, counts, n_bins=4)
    edges = bins["edges"]
    assert len(edges) == 5 and edges[0] == 1 and edges[-1] >= 500
    knn = [r for r in records if r["head"] == "knn"]
    for b in range(4):
        members = [c for c in range(12) if counts[c] > 0 and edges[b] <= counts[c] < edges[b + 1] and c != 3]
        assert bins["n_classes"][b] == len(members)
        want = np.mean([np.mean([r["per_class_recall@5"][c] for r in knn]) for c in members]) if members else np.nan
        got = bins["groups"][("knn", "both")][b]
        assert (np.isnan(got) and np.isnan(want)) or got == pytest.approx(100 * want)


def test_table_says_when_features_come_from_random_weights(tmp_path):
    store = make_store(tmp_path / "s.zarr").path
    g = zarr.open_group(store, mode="r+")
    g.attrs["blocks"] = [{"name": "object", "columns": [0, 4], "backbone": "vgg16-object", "weights": {"source": "random"}},
                         {"name": "scene", "columns": [4, 8], "backbone": "vgg16-scene", "weights": {"source": "file"}}]
    assert bench(store, tmp_path / "b", "--heads", "popularity").exit_code == 0
    table = (tmp_path / "b" / "table.md").read_text()
    assert "RANDOM weights** (vgg16-object)" in table
    assert bench(make_store(tmp_path / "t.zarr").path, tmp_path / "c", "--heads", "popularity").exit_code == 0
    assert "RANDOM" not in (tmp_path / "c" / "table.md").read_text()


@pytest.mark.slow
def test_a_record_made_with_other_settings_is_recomputed(tmp_path):
    store = make_store(tmp_path / "s.zarr").path
    out = tmp_path / "b"
    args = ["--heads", "knn", "--features", "both", "--seeds", "0"]
    assert bench(store, out, *args, "--set", "knn.k=3").exit_code == 0
    first = {r["head"]: r for r in json.loads((out / "results.json").read_text())["records"]}
    assert first["knn"]["params"]["k"] == 3
    res = bench(store, out, *args, "--set", "knn.k=9")
    assert res.exit_code == 0, res.output
    assert "1 already done; 1 earlier record(s) made with other settings or another store recomputed" in res.output
    records = json.loads((out / "results.json").read_text())["records"]
    knn = [r for r in records if r["head"] == "knn"]
    assert len(knn) == 1 and knn[0]["params"]["k"] == 9  # the stale one is gone, not kept beside it
    assert [r for r in records if r["head"] == "popularity"] == [first["popularity"]]  # still valid: reused
    table = (out / "table.md").read_text()
    assert f"| knn | both | {100 * knn[0]['precision@1']:.2f} |" in table and table.count("| knn |") == 1
    assert "knn.k=9" in table
    # the same settings on a store whose features came from other weights: everything is redone
    g = zarr.open_group(store, mode="r+")
    g.attrs["blocks"] = [{**b, "weights": {"sha256": "d" * 64}} for b in g.attrs["blocks"]]
    res = bench(store, out, *args, "--set", "knn.k=9")
    assert res.exit_code == 0 and "0 already done; 2 earlier record(s)" in res.output
    # a re-extraction that finds a test image unreadable changes the rows scored: redone again
    from hashtagkit.stores import open_store

    s = open_store(store, mode="r+")
    row = int(s.split_rows("test")[0])
    chunk, step = row // s.chunk_rows(), s.chunk_rows()
    part = slice(chunk * step, (chunk + 1) * step)
    valid = s.valid()[part]
    valid[row - chunk * step] = False
    s.write_chunk(chunk, s.features()[part], valid)
    res = bench(store, out, *args, "--set", "knn.k=9")
    assert res.exit_code == 0 and "0 already done; 2 earlier record(s)" in res.output
    records = json.loads((out / "results.json").read_text())["records"]
    assert len(records) == 2 and {r["n_images"] for r in records} == {14}
    assert "test split, 14 images" in (out / "table.md").read_text()


def test_table_counts_the_rows_once_and_says_what_was_left_out(tmp_path):
    probe = make_store(tmp_path / "p.zarr", features=False)
    test_rows = probe.split_rows("test")[:2].tolist()
    store = make_store(tmp_path / "s.zarr", invalid=tuple(test_rows)).path
    res = bench(store, tmp_path / "b", "--heads", "knn", "--features", "object", "--set", "knn.k=3")
    assert res.exit_code == 0, res.output
    records = json.loads((tmp_path / "b" / "results.json").read_text())["records"]
    assert {r["head"] for r in records} == {"popularity", "knn"} and {r["n_images"] for r in records} == {13}
    table = (tmp_path / "b" / "table.md").read_text()
    assert "test split, 13 images, the same rows for every head" in table
    assert "Test rows left out (for every head): 2 invalid image." in table


def test_a_re_prepared_store_with_the_same_split_is_not_reused(tmp_path):
    """Same size and seed give the same split; other labels must still redo every record."""
    out = tmp_path / "b"
    args = ["--heads", "knn", "--features", "both", "--set", "knn.k=3"]
    store = make_store(tmp_path / "s.zarr", seed=0).path
    assert bench(store, out, *args).exit_code == 0
    first = json.loads((out / "results.json").read_text())["records"]
    g = zarr.open_group(store, mode="r+")  # other labels under the same split and vocabulary
    g["labels"][...] = np.roll(np.asarray(g["labels"][...]), 1, axis=1)
    res = bench(store, out, *args)
    assert res.exit_code == 0, res.output
    assert "0 already done; 2 earlier record(s)" in res.output
    again = json.loads((out / "results.json").read_text())["records"]
    assert {r["key"] for r in again}.isdisjoint({r["key"] for r in first})


def test_bench_on_a_vocabulary_smaller_than_five(tmp_path):
    """R@5 and A@5 of a 3-class store are computed at K = 3, and the table says so."""
    store = make_store(tmp_path / "s.zarr", c=3).path
    res = bench(store, tmp_path / "b", "--heads", "knn", "--features", "both", "--set", "knn.k=3")
    assert res.exit_code == 0, res.output
    records = json.loads((tmp_path / "b" / "results.json").read_text())["records"]
    knn = next(r for r in records if r["head"] == "knn")
    assert "recall@5" not in knn and knn["k_capped"]["computed_at"] == 3
    table = (tmp_path / "b" / "table.md").read_text()
    assert f"| knn | both | {100 * knn['precision@1']:.2f} | {100 * knn['recall@3']:.2f} | " \
           f"{100 * knn['accuracy@3']:.2f} |" in table
    assert "vocabulary has 3 classes" in table


def test_a_record_key_holds_every_parameter_not_only_a_presets():
    """mlp's key once held only its preset's resolved values: a resume with --set mlp.hidden=1024
    reused a record fitted at 4,096 hidden units."""
    from hashtagkit.benchmark import record_key

    keys = {record_key({}, "mlp", "both", 0, {"mlp": {"hidden": h}}) for h in (32, 64)}
    assert len(keys) == 2
    assert record_key({}, "mlp", "both", 0, {"mlp": {"lr": 1e-3}}) == record_key({}, "mlp", "both", 0, {})  # the preset's own lr
    assert len({record_key({}, "fusion", "both", 0, {"fusion": {"mlp.hidden": h}}) for h in (32, 64)}) == 2
