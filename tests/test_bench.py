"""`hashtagkit bench`: every combination once, resumable, and a table with the right rows."""

from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner

from hashtagkit.cli.main import cli

from .conftest import make_store


def bench(store, out, *args):
    return CliRunner().invoke(cli, ["bench", str(store), "-o", str(out), *args])


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
