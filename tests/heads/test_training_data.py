"""TrainingData (hashtagkit/heads/data.py): a store's rows read block by block equal the
same rows read whole, blocks follow the store's feature chunks, `take`/`subset` pick the right
rows, a StoreData survives pickling (DataLoader workers), and a NaN names its store row."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from hashtagkit.errors import InputError
from hashtagkit.heads.data import ArrayData, StoreData
from hashtagkit.stores import open_store

from ..conftest import make_store


@pytest.fixture()
def store(tmp_path):
    return make_store(tmp_path / "s.zarr", n=70, c=5, chunk_rows=16)


def test_store_data_equals_whole_reads(store):
    rows = store.split_rows("train")
    data = StoreData(store, "object", rows[::-1])  # order given does not matter: positions ascend
    assert data.n_rows == len(rows) and data.n_features == 8 and data.n_classes == 5
    X = np.concatenate([x for x, _ in data.blocks()])
    Y = np.concatenate([y for _, y in data.blocks()])
    np.testing.assert_array_equal(X, store.features("object", rows))
    np.testing.assert_array_equal(Y, store.labels(rows))
    np.testing.assert_array_equal(np.concatenate(list(data.labels())), store.labels(rows))
    # every block lies in one feature chunk of 16 rows
    for i in range(data.n_blocks):
        chunk = data.rows[data.bounds[i]:data.bounds[i + 1]] // 16
        assert len(set(chunk.tolist())) == 1
    assert data.n_blocks == len(set((rows // 16).tolist()))
    # any order of blocks gives the same rows, block for block
    order = np.random.default_rng(0).permutation(data.n_blocks)
    for i, (x, y) in zip(order, data.blocks(order), strict=True):
        a, b = data.bounds[i], data.bounds[i + 1]
        np.testing.assert_array_equal(x, X[a:b])
        np.testing.assert_array_equal(y, Y[a:b])


def test_take_subset_and_pickle(store):
    rows = store.split_rows("train")
    data = StoreData(store, "both", rows)
    X, Y = data.to_arrays()
    pick = np.array([5, 0, len(rows) - 1, 17, 5])
    x, y = data.take(pick)
    np.testing.assert_array_equal(x, X[pick])
    np.testing.assert_array_equal(y, Y[pick])
    part = data.subset([2, 0])
    want = np.r_[np.arange(data.bounds[0], data.bounds[1]), np.arange(data.bounds[2], data.bounds[3])]
    np.testing.assert_array_equal(part.to_arrays()[0], X[want])
    again = pickle.loads(pickle.dumps(data))
    assert again.store is None  # reopened by whoever reads it
    np.testing.assert_array_equal(again.to_arrays()[1], Y)
    arrays = ArrayData(X, Y, block_rows=10)
    assert arrays.n_blocks == -(-len(X) // 10)
    np.testing.assert_array_equal(arrays.take(pick)[0], X[pick])
    np.testing.assert_array_equal(arrays.subset([1]).to_arrays()[0], X[10:20])


def test_labels_only_for_a_head_without_features(tmp_path):
    store = make_store(tmp_path / "s.zarr", features=False)
    data = StoreData(store, None, np.arange(store.n_rows))
    X, Y = data.to_arrays()
    assert X.shape == (store.n_rows, 0)
    np.testing.assert_array_equal(Y, store.labels())


def test_nonfinite_row_is_named(tmp_path):
    path = tmp_path / "s.zarr"
    make_store(path, n=40, chunk_rows=16)
    writable = open_store(path, mode="r+")
    X = writable.features("both")
    X[21, 3] = np.nan
    writable.write_chunk(1, X[16:32], np.ones(16, bool))
    data = StoreData(open_store(path), "both", np.arange(40))
    with pytest.raises(InputError, match="rows 21 have non-finite"):
        list(data.blocks())
    with pytest.raises(InputError, match="rows 21 have"):
        data.block(1)


def test_the_store_is_checked_once_not_per_block(store, monkeypatch):
    """A check reads every chunk's `done` flag: once per block would make a pass over a
    million-row store quadratic in its ~4,000 chunks."""
    from hashtagkit.stores.store import Store

    calls, real = [], Store.check_features
    monkeypatch.setattr(Store, "check_features", lambda self, view: (calls.append(view), real(self, view))[1])
    data = StoreData(store, "both", np.arange(store.n_rows))
    for i in np.random.default_rng(0).permutation(data.n_blocks):
        data.block(int(i))
    data.take([3, 50, 7])
    assert data.n_blocks > 3 and calls == ["both"]
