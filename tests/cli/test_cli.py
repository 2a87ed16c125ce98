"""The CLI end to end: prepare -> fit -> evaluate -> info, its JSON, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from hashtagkit import metrics
from hashtagkit.cli.main import cli

from ..conftest import make_store


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.mark.slow
def test_popularity_floor_on_real_harrison(harrison_root, tmp_path):
    """Matches the reference measured independently (shared/README: seed 0, 5,000 test images)."""
    store, out = tmp_path / "h.zarr", tmp_path / "run"
    assert run("prepare", "harrison", harrison_root, "-o", store).exit_code == 0
    assert run("fit", store, "--head", "popularity", "-o", out).exit_code == 0
    res = run("evaluate", out, "--json")
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    assert {"precision@1", "recall@5", "accuracy@5", "map", "n_images", "precision@10"} <= set(got)
    assert got["n_images"] == 5000
    assert got["precision@1"] == pytest.approx(0.100, abs=0.0006)
    assert got["recall@5"] == pytest.approx(0.084, abs=0.0006)
    assert got["accuracy@5"] == pytest.approx(0.268, abs=0.0006)
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["store"]["split_sha256"] == json.loads(run("info", store, "--json").output)["split_sha256"]
    # the popular tags, in order, as the floor recommends them, against an independent count of the
    # train split's hashtags straight from HARRISON's text files (once per image, ties by class id)
    from collections import Counter

    from hashtagkit.heads import Head
    from hashtagkit.stores import open_store

    prepared = open_store(store)
    lines = (harrison_root / "tag_list.txt").read_text().splitlines()
    assert prepared.paths() == [p.strip() for p in (harrison_root / "data_list.txt").read_text().splitlines()]
    class_id = {t: int(i) for t, i in (line.split() for line in (harrison_root / "vocab_index.txt").read_text().splitlines())}
    counts = Counter(t for row in prepared.split_rows("train").tolist() for t in set(lines[row].split()))
    expected = sorted(counts, key=lambda t: (-counts[t], class_id[t]))[:10]
    head = Head.load(out / "model")
    ranked = metrics.top_k(head.predict_proba(np.zeros((1, 0), np.float32)), 10)[0]
    assert [prepared.vocab[c] for c in ranked] == expected


def test_end_to_end_on_demo(tmp_path):
    store, out = tmp_path / "d.zarr", tmp_path / "run"
    assert run("prepare", "demo", "-o", store, "--n", "60").exit_code == 0
    res = run("fit", store, "--head", "popularity", "-o", out)
    assert res.exit_code == 0, res.output
    result = json.loads(run("evaluate", out, "--json", "--k", "2").output)
    from hashtagkit.stores import open_store

    s = open_store(store)
    rows = s.split_rows("test")
    labels = s.labels(rows)
    freq = s.labels(s.split_rows("train")).mean(0)
    scores = np.tile(freq, (len(rows), 1))
    assert result["precision@2"] == pytest.approx(metrics.precision_at_k(scores, labels, 2))
    assert result["n_images"] == len(rows) == 12
    info = json.loads(run("info", store, "--json").output)
    assert {"rows", "classes", "split", "blocks"} <= set(info)
    assert info["split"]["test"] == 12 and info["rows"] == 60


def test_fit_errors(tmp_path):
    store = make_store(tmp_path / "s.zarr", features=False)
    cases = [
        (["--head", "nope"], "Invalid value for '--head': 'nope'"),
        (["--head", "popularity", "--set", "alpha=1"], "has no parameter 'alpha'"),
        (["--head", "popularity", "--set", "alpha"], "--set takes key=value"),
        (["--head", "popularity", "--features", "people"], "Invalid value for '--features'"),
    ]
    for args, message in cases:
        res = run("fit", store.path, *args, "-o", tmp_path / "run")
        assert res.exit_code == 2, (args, res.output)
        assert message in res.output
        assert not (tmp_path / "run").exists()
    res = run("fit", tmp_path / "missing.zarr", "--head", "popularity", "-o", tmp_path / "run")
    assert res.exit_code == 2 and "does not exist" in res.output


def test_evaluate_refuses_a_changed_split(tmp_path):
    store = make_store(tmp_path / "s.zarr", features=False)
    assert run("fit", store.path, "--head", "popularity", "-o", tmp_path / "run").exit_code == 0
    g = zarr.open_group(store.path, mode="r+")
    split = np.asarray(g["split"][...])
    split[:5] = 1 - np.minimum(split[:5], 1)
    g["split"][...] = split
    res = run("evaluate", tmp_path / "run")
    assert res.exit_code == 2 and "sha256" in res.output


def test_evaluate_errors(tmp_path):
    res = run("evaluate", tmp_path / "nothing")
    assert res.exit_code == 2 and "not a run directory" in res.output
    store = make_store(tmp_path / "s.zarr", features=False)
    run("fit", store.path, "--head", "popularity", "-o", tmp_path / "run")
    for bad in ("0", "a,b", ""):
        res = run("evaluate", tmp_path / "run", "--k", bad)
        assert res.exit_code == 2 and "--k takes" in res.output


def test_console_script_exit_status(tmp_path):
    """The installed `hashtagkit` command, as a user runs it: one line, exit 2, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "hashtagkit.cli.main", "info", str(tmp_path / "x")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr
