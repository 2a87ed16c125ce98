"""Bounded reads at size (issue #13, items 1 and 5): evaluation and the bench fingerprint read
the store chunk by chunk, never a whole N-sized array, and give what the whole-array
computation gives. A counting wrapper around the store's Zarr arrays records every read."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from hashtagkit import evaluation, metrics, provenance
from hashtagkit.benchmark import valid_sha256
from hashtagkit.cli.main import cli
from hashtagkit.stores import Store, create_store, open_store

from ..conftest import make_store, run_cli

LABEL_CHUNK, FEATURE_CHUNK = 24, 16


class CountingArray:
    """A Zarr array that records the rows of every read (slices and orthogonal selections)."""

    def __init__(self, arr, name: str, log: list):
        self._arr, self._name, self._log = arr, name, log

    def __getattr__(self, attr):
        return getattr(self._arr, attr)

    def _record(self, out):
        out = np.asarray(out)
        self._log.append((self._name, len(out) if out.ndim else 1))
        return out

    def __getitem__(self, key):
        return self._record(self._arr[key])

    def __setitem__(self, key, value):
        self._arr[key] = value

    def get_orthogonal_selection(self, sel):
        return self._record(self._arr.get_orthogonal_selection(sel))


class CountingGroup:
    def __init__(self, group, log: list):
        self._group, self._log = group, log

    def __getattr__(self, attr):
        return getattr(self._group, attr)

    def __contains__(self, name):
        return name in self._group

    def __getitem__(self, name):
        return CountingArray(self._group[name], name, self._log)


@pytest.fixture
def reads(monkeypatch) -> list:
    """Every read of a per-row array of any store opened from now on: (array name, rows)."""
    log: list = []
    real = Store.__init__

    def counting(self, path, group, storage_options=None):
        real(self, path, CountingGroup(group, log), storage_options)

    monkeypatch.setattr(Store, "__init__", counting)
    return log


def store_with_labels(path, labels: np.ndarray, test: int, monkeypatch) -> Store:
    """A store of these labels with small label chunks (LABEL_CHUNK rows) and feature chunks
    (FEATURE_CHUNK rows), so a split spans many chunks of both."""
    import hashtagkit.stores.store as store_module
    from hashtagkit.data.split import random_split

    n, c = labels.shape
    with monkeypatch.context() as m:
        m.setattr(store_module, "rows_per_chunk", lambda row_bytes, target=0: LABEL_CHUNK)
        split, info = random_split(n, test, 0, 0)
        create_store(path, paths=[f"i{i}" for i in range(n)], labels=labels, vocab=[f"t{j}" for j in range(c)],
                     split=split, split_info=info, kind="test", image_root=None, synthetic=True)
    store = open_store(path, mode="r+")
    rng = np.random.default_rng(1)
    X = rng.random((n, 8)).astype(np.float32) + labels[:, :1] * 2
    blocks = [{"name": "object", "columns": [0, 4]}, {"name": "scene", "columns": [4, 8]}]
    rows = store.init_features(8, "float32", blocks, FEATURE_CHUNK)
    for chunk, start in enumerate(range(0, n, rows)):
        store.write_chunk(chunk, X[start:start + rows], np.ones(len(X[start:start + rows]), bool))
    return open_store(path)


@pytest.fixture
def planted(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    labels = (rng.random((300, 6)) < 0.3).astype(np.uint8)
    labels[::7] = 0  # rows without ground truth: skipped, counted
    store = store_with_labels(tmp_path / "s.zarr", labels, test=60, monkeypatch=monkeypatch)
    run_cli(["fit", store.path, "--head", "knn", "--set", "k=3", "-o", tmp_path / "knn"],
            ["fit", store.path, "--head", "popularity", "-o", tmp_path / "pop"])
    return tmp_path, labels


@pytest.mark.parametrize("head", ["knn", "pop"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_evaluation_reads_chunk_by_chunk_and_equals_in_memory(planted, reads, head, split):
    tmp, labels = planted
    got = evaluation.evaluate(tmp / head, split=split, ks=(1, 3), batch_size=10)
    made = list(reads)  # evaluate's reads, not the reference's below
    store = open_store(tmp / "s.zarr")
    assert store.group["labels"].chunks[0] == LABEL_CHUNK < len(store.split_rows("train"))
    rows = store.split_rows(split)
    # the reference: every row of the split at once, empty ones dropped by hand
    keep = rows[labels[rows].any(axis=1)]
    assert got["skipped"] == {"no_ground_truth": int(len(rows) - len(keep))} and got["n_images"] == len(keep)
    from hashtagkit.runs import design_matrix, load_run

    _, fitted, _ = load_run(tmp / head)
    scores = fitted.predict_proba(design_matrix(store, fitted, "both", keep))
    want = metrics.summary(scores, labels[keep].astype(bool), ks=(1, 3))
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-12, rel=0), name
    by_name: dict[str, list[int]] = {}
    for name, n in made:
        by_name.setdefault(name, []).append(n)
    assert max(by_name["labels"]) <= LABEL_CHUNK  # never the split's N x C labels at once
    if head == "knn":
        assert max(by_name["features"]) <= FEATURE_CHUNK
    else:
        assert "features" not in by_name  # the popularity floor reads no feature


def test_evaluate_batch_size_option(planted):
    tmp, _ = planted
    outs = []
    for batch in ("1", "7", "5000"):
        res = CliRunner().invoke(cli, ["evaluate", str(tmp / "knn"), "--json", "--batch-size", batch])
        assert res.exit_code == 0, res.output
        outs.append({k: v for k, v in json.loads(res.output).items() if isinstance(v, float) and k != "predict_seconds"})
    assert len(outs[0]) > 10 and outs[0] == pytest.approx(outs[1], abs=1e-12) and outs[1] == pytest.approx(outs[2], abs=1e-12)
    for bad in ("0", "-3", "x"):
        res = CliRunner().invoke(cli, ["evaluate", str(tmp / "knn"), "--batch-size", bad])
        assert res.exit_code == 2 and "--batch-size" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("n, chunk", [(90, 16), (91, 3), (7, 5), (64, 8)])
def test_valid_fingerprint_is_the_whole_arrays_read_by_chunk(tmp_path, reads, n, chunk):
    store = make_store(tmp_path / "s.zarr", n=n, test=2, invalid=(1, 2, n - 1), chunk_rows=chunk)
    reads.clear()
    got = valid_sha256(store)
    assert max(r for name, r in reads if name == "valid") <= chunk
    assert got == provenance.sha256_bytes(np.packbits(store.valid()).tobytes())
