"""The MLP streams its training data (issue #13, item 2): the statistics of one pass over the
blocks equal the whole-matrix ones, an epoch of `BlockStream` yields every training row exactly
once (in process and from spawned workers), the streamed path never reads the data whole, and
streamed and cached training reach the same quality. Issue #16: in process the blocks are read
by a thread ahead of the model (`read_ahead`), the default on 2 cores or fewer."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner

from hashtagkit import metrics
from hashtagkit.cli.main import cli
from hashtagkit.heads.data import ArrayData, StoreData
from hashtagkit.heads.mlp import VAL_ROWS, BlockStream, MLPHead, default_workers, training_stats
from hashtagkit.stores.store import read_ahead

from ..conftest import make_store, run_cli


def separable(n=1200, d=24, c=8, seed=0):
    rng = np.random.default_rng(seed)
    Y = (rng.random((n, c)) < 0.2).astype(np.uint8)
    Y[np.arange(n), rng.integers(0, c, n)] = 1
    X = np.maximum(Y @ rng.normal(0, 1.5, (c, d)) + rng.normal(0, 1.0, (n, d)), 0).astype(np.float16)
    return X, Y


def test_training_stats_equal_the_whole_matrix():
    X, Y = separable(500)
    mask = np.random.default_rng(1).random(500) < 0.8
    mean, std, prior, (Xv, Yv) = training_stats(ArrayData(X, Y, block_rows=37), mask)
    np.testing.assert_array_equal(Xv, X[~mask])
    np.testing.assert_array_equal(Yv, Y[~mask])
    Xt = X[mask].astype(np.float64)
    np.testing.assert_allclose(mean, Xt.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std, Xt.std(axis=0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(prior, Y[mask].mean(axis=0))


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_an_epoch_yields_every_training_row_once(workers):
    n = 700
    X = (np.arange(n)[:, None] * np.ones((1, 3))).astype(np.float32)  # column 0 names the row
    Y = np.zeros((n, 2), np.uint8)
    mask = np.ones(n, bool)
    mask[::7] = False  # the validation rows are never trained on
    stream = BlockStream(ArrayData(X, Y, block_rows=50), mask, batch=64, buffer_blocks=3, seed=5)
    epochs = stream.loader(workers)
    seen = []
    for _ in range(2):
        rows = np.concatenate([xb[:, 0].numpy() for xb, _ in next(epochs)]).astype(np.int64)
        np.testing.assert_array_equal(np.sort(rows), np.flatnonzero(mask))
        seen.append(rows)
    assert not np.array_equal(seen[0], seen[1])  # a fresh order each epoch
    if workers == 0:  # the same seed gives the same order
        again = BlockStream(ArrayData(X, Y, block_rows=50), mask, batch=64, buffer_blocks=3, seed=5)
        first = np.concatenate([xb[:, 0].numpy() for xb, _ in next(again.loader(0))]).astype(np.int64)
        np.testing.assert_array_equal(first, seen[0])


class Watched(StoreData):
    """A StoreData that records the blocks read and refuses to be read whole."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.read, self.taken = [], []

    def block(self, i):
        self.read.append(i)
        return super().block(i)

    def blocks(self, order=None):
        for i in range(self.n_blocks) if order is None else order:
            yield self.block(int(i))

    def take(self, positions):
        self.taken.append(len(positions))
        return super().take(positions)

    def to_arrays(self):
        raise AssertionError("the streamed path read the training data whole")


def test_streamed_path_reads_block_by_block(tmp_path):
    store = make_store(tmp_path / "s.zarr", n=300, chunk_rows=16)
    rows = store.split_rows("train")
    data = Watched(store, "both", rows)
    head = MLPHead(hidden=16, epochs=3, cache="stream", workers=0, buffer_blocks=2).fit_data(data)
    assert head.history_["data"] == "stream" and head.history_["iterations"] > 0
    # the stats pass (which also collects the validation rows) + 3 epochs, each reading every block once
    assert len(data.read) == 4 * data.n_blocks and data.taken == []
    assert 0 < head.history_["n_val"] <= VAL_ROWS
    # auto: a limit below the data's size streams, above it caches
    assert MLPHead(hidden=8, epochs=1, workers=0, cache_limit_gb=0.0).fit_data(
        StoreData(store, "both", rows)).history_["data"] == "stream"
    assert MLPHead(hidden=8, epochs=1).fit_data(StoreData(store, "both", rows)).history_["data"] == "memory"


def test_streamed_and_cached_training_reach_the_same_quality():
    X, Y = separable(1600)
    Xtr, Ytr, Xte, Yte = X[:1200], Y[:1200], X[1200:].astype(np.float32), Y[1200:]
    p1 = {}
    for cache in ("memory", "stream"):
        head = MLPHead(hidden=64, epochs=8, lr=2e-3, cache=cache, workers=0, buffer_blocks=4)
        head.fit_data(ArrayData(Xtr, Ytr, block_rows=40))
        p1[cache] = metrics.precision_at_k(head.predict_proba(Xte), Yte, 1)
    popular = metrics.precision_at_k(np.tile(Ytr.mean(0), (len(Yte), 1)), Yte, 1)
    assert min(p1.values()) > popular + 0.2  # both learned the signal ...
    assert abs(p1["memory"] - p1["stream"]) <= 0.04, p1  # ... equally well (400 test rows: 0.04 is ~2 s.e.)


@pytest.mark.slow
def test_fit_streams_from_a_store_through_the_cli_with_a_worker(tmp_path):
    store = make_store(tmp_path / "s.zarr", n=200, chunk_rows=16).path
    run_cli(["fit", store, "--head", "mlp", "--set", "hidden=16", "--set", "epochs=2", "--set", "cache=stream",
              "--set", "workers=1", "-o", tmp_path / "run"])
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["fit_report"]["data"] == "stream" and record["params"]["workers"] == 1
    res = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "run"), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["n_images"] == 15


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "mlp-prefetch"]


def test_read_ahead_yields_the_items_in_order_and_reads_ahead():
    produced = []

    def items():
        for i in range(50):
            produced.append(i)
            yield i

    it = read_ahead(items(), depth=3, name="mlp-prefetch")
    assert next(it) == 0
    deadline = time.monotonic() + 5
    while len(produced) < 5 and time.monotonic() < deadline:  # the thread fills the queue meanwhile
        time.sleep(0.01)
    assert len(produced) == 5  # one taken, 3 queued, one waiting to be put: no further
    assert [0] + list(it) == list(range(50))
    assert not prefetch_threads()


def test_read_ahead_raises_the_producers_error_in_the_consumer():
    def items():
        yield 1
        raise ValueError("store rows 7 have non-finite features")

    it = read_ahead(items(), depth=2, name="mlp-prefetch")
    assert next(it) == 1
    with pytest.raises(ValueError, match="non-finite"):
        next(it)
    assert not prefetch_threads()


def test_read_ahead_stops_its_thread_when_the_consumer_stops_early():
    it = read_ahead(iter(range(10**9)), depth=2, name="mlp-prefetch")  # endless for the test's purposes
    assert next(it) == 0
    assert prefetch_threads()
    it.close()  # what a training loop that breaks at its last step does, by dropping the generator
    assert not prefetch_threads()


def test_default_workers_read_in_a_thread_on_small_machines(tmp_path):
    assert default_workers(1) == 0 and default_workers(2) == 0 and default_workers(8) == 1
    store = make_store(tmp_path / "s.zarr", n=200, chunk_rows=16)
    head = MLPHead(hidden=8, epochs=1, cache="stream").fit_data(StoreData(store, "both", store.split_rows("train")))
    assert head.workers is None  # the parameter stays as given; the history says what ran
    assert head.history_["workers"] == default_workers()
    assert not prefetch_threads()


@pytest.mark.slow
def test_the_reading_thread_yields_the_batches_one_loader_process_yields():
    """Switching the default from one loader process to the in-process thread (on 2 cores)
    changes no batch: the same rows in the same order, epoch after epoch, so training is the same."""
    X, Y = separable(700, d=6)
    mask = np.ones(len(X), bool)
    mask[::9] = False

    def two_epochs(workers):
        stream = BlockStream(ArrayData(X, Y, block_rows=50), mask, batch=64, buffer_blocks=3, seed=3)
        epochs = stream.loader(workers)
        return [[(xb.numpy().copy(), yb.numpy().copy()) for xb, yb in next(epochs)] for _ in range(2)]

    thread, process = two_epochs(0), two_epochs(1)
    for a, b in zip(thread, process, strict=True):
        assert len(a) == len(b) > 5
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(thread[0][0][0], thread[1][0][0])  # and a fresh order each epoch
