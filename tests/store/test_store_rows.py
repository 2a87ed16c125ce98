"""Bounded reads from the store (issue #13, item 1): `labels(rows)` and `valid(rows)` decode only
the chunks that hold the rows, `iter_rows` equals the whole-array reads it replaces while
decoding each chunk once, and `info`'s label statistics equal the whole-array computation.

Reads are counted at the Zarr store level (a WrapperStore that records every key fetched), so
the tests see what actually leaves the disk, not what hashtagkit believes it asked for."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import zarr
import zarr.storage

from hashtagkit.errors import InputError
from hashtagkit.stores import store as store_mod
from hashtagkit.stores.store import Store

from ..conftest import make_store

N, LABEL_ROWS, FEATURE_ROWS = 95, 10, 16  # 10 label chunks, 6 feature chunks: neither aligned


class CountingStore(zarr.storage.WrapperStore):
    """Records every key read through it (chunk objects and metadata alike)."""

    def __init__(self, store, reads: Counter):
        super().__init__(store)
        self.reads = reads

    async def get(self, key, prototype, byte_range=None):
        self.reads[key] += 1
        return await super().get(key, prototype, byte_range)

    async def get_partial_values(self, prototype, key_ranges):
        key_ranges = list(key_ranges)
        for key, _ in key_ranges:
            self.reads[key] += 1
        return await super().get_partial_values(prototype, key_ranges)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """A store whose labels, valid and features span several chunks of different sizes."""
    path = tmp_path_factory.mktemp("rows") / "s.zarr"
    with pytest.MonkeyPatch.context() as mp:  # label chunks of 10 rows instead of ~4 MiB
        mp.setattr(store_mod, "rows_per_chunk", lambda row_bytes, target=0: LABEL_ROWS)
        store = make_store(path, n=N, c=5, chunk_rows=FEATURE_ROWS, invalid=(3, 40, 41, 90))
    assert store.group["labels"].chunks[0] == LABEL_ROWS and store.chunk_rows() == FEATURE_ROWS
    return path


def counted(path: Path) -> tuple[Store, Counter]:
    reads: Counter = Counter()
    group = zarr.open_group(CountingStore(zarr.storage.LocalStore(path, read_only=True), reads), mode="r")
    return Store(path, group), reads


def chunks_read(reads: Counter, name: str) -> Counter:
    """Chunk index -> times read, for one array (keys `<name>/c/<i>[/<j>]`)."""
    return Counter({int(k.split("/")[2]): v for k, v in reads.items() if k.startswith(f"{name}/c/")})


def whole(path: Path, name: str) -> np.ndarray:
    """The reference: the whole array, read straight through Zarr."""
    return np.asarray(zarr.open_group(path, mode="r")[name][...])


ROWS = np.array([57, 3, 12, 93, 13, 57, 30])  # unsorted, a repeat, spanning chunks


def test_labels_and_valid_of_a_few_rows_read_only_their_chunks(small):
    store, reads = counted(small)
    got = store.labels(ROWS)
    assert np.array_equal(got, whole(small, "labels")[ROWS])
    assert set(chunks_read(reads, "labels")) == {r // LABEL_ROWS for r in ROWS.tolist()}  # 0,1,3,5,9 of 10
    reads.clear()
    ok = store.valid(ROWS)
    assert np.array_equal(ok, whole(small, "valid")[ROWS]) and not ok[1]  # row 3 failed to decode
    assert set(chunks_read(reads, "valid")) == {r // FEATURE_ROWS for r in ROWS.tolist()}
    assert not chunks_read(reads, "labels") and not chunks_read(reads, "features")


def test_row_selections_mean_what_numpy_means(small):
    store, _ = counted(small)
    labels = whole(small, "labels")
    mask = np.zeros(N, bool)
    mask[[1, 50, 94]] = True
    assert np.array_equal(store.labels(mask), labels[mask])
    assert np.array_equal(store.labels([-1, 0]), labels[[-1, 0]])
    assert store.labels([]).shape == (0, 5) and store.valid([]).shape == (0,)
    assert np.array_equal(store.labels(), labels)
    with pytest.raises(InputError, match="row 95 is out of range"):
        store.labels([2, 95])


@pytest.mark.parametrize("view", ["both", "object", "scene"])
@pytest.mark.parametrize("batch_chunks", [1, 2])
def test_iter_rows_equals_whole_reads(small, view, batch_chunks):
    store, _ = counted(small)
    for rows in (ROWS, None, np.arange(N)[::-1]):
        got_rows, parts = [], {"features": [], "labels": [], "valid": []}
        for picked, data in store.iter_rows(rows, view=view, batch_chunks=batch_chunks):
            step = FEATURE_ROWS * batch_chunks
            assert len(set((picked // step).tolist())) == 1  # one step at a time
            got_rows.append(picked)
            for name in parts:
                assert len(data[name]) == len(picked)
                parts[name].append(data[name])
        order = np.concatenate(got_rows)
        asked = np.arange(N) if rows is None else rows
        assert np.array_equal(order, asked[store.chunk_order(asked, batch_chunks=batch_chunks)])  # the documented order
        assert sorted(order.tolist()) == sorted(asked.tolist())  # every row asked, once per ask
        assert np.array_equal(np.concatenate(parts["features"]), store.features(view, order))
        assert np.array_equal(np.concatenate(parts["labels"]), whole(small, "labels")[order])
        assert np.array_equal(np.concatenate(parts["valid"]), whole(small, "valid")[order])


def test_iter_rows_decodes_each_chunk_once(small):
    store, reads = counted(small)
    n_rows = sum(len(picked) for picked, _ in store.iter_rows())
    assert n_rows == N
    for name, rows in (("features", FEATURE_ROWS), ("labels", LABEL_ROWS), ("valid", FEATURE_ROWS)):
        assert chunks_read(reads, name) == Counter(range(-(-N // rows))), name
    reads.clear()  # a selection reads just the feature chunks holding it (rows 12, 13: chunk 0)
    list(store.iter_rows([13, 12], what=("features",)))
    assert chunks_read(reads, "features") == Counter({0: 1}) and not chunks_read(reads, "labels")


def test_iter_rows_labels_only_and_bad_arguments(small):
    store, _ = counted(small)
    steps = [picked for picked, _ in store.iter_rows(what=("labels",))]
    assert [len(p) for p in steps] == [LABEL_ROWS] * 9 + [5]  # aligned with label chunks
    with pytest.raises(InputError, match="not \\['paths'\\]"):
        next(store.iter_rows(what=("paths",)))
    with pytest.raises(InputError, match="batch_chunks"):
        next(store.iter_rows(batch_chunks=0))
    with pytest.raises(InputError, match="no 'people' features"):
        next(store.iter_rows(view="people"))


def test_info_statistics_equal_whole_array_and_read_in_chunks(small):
    store, reads = counted(small)
    per_image = whole(small, "labels").sum(axis=1)
    assert store.info()["tags_per_image"] == {
        "mean": float(per_image.mean()), "min": int(per_image.min()), "max": int(per_image.max())}
    assert chunks_read(reads, "labels") == Counter(range(-(-N // LABEL_ROWS)))  # each chunk once
    assert per_image.min() != per_image.max()  # the statistics can tell rows apart


def test_info_of_a_store_without_features_or_rows(tmp_path):
    bare = make_store(tmp_path / "bare.zarr", n=30, features=False)
    per_image = whole(bare.path, "labels").sum(axis=1)
    assert bare.info()["tags_per_image"]["max"] == int(per_image.max())
    assert np.array_equal(bare.valid([4, 2]), [True, True])  # no verdict yet: every row counts


def test_bench_fingerprint_and_counts_stream_the_labels(small):
    from hashtagkit import provenance
    from hashtagkit.benchmark import labels_sha256, tag_counts

    store, reads = counted(small)
    labels = whole(small, "labels")
    assert labels_sha256(store) == provenance.sha256_bytes(np.ascontiguousarray(labels).tobytes())
    assert chunks_read(reads, "labels") == Counter(range(-(-N // LABEL_ROWS)))  # each chunk once
    train = store.split_rows("train")
    assert tag_counts(store, train) == labels[train].sum(axis=0).astype(int).tolist()
    assert tag_counts(store, train) != labels.sum(axis=0).tolist()  # the rows matter


def test_rows_read_do_not_pin_their_whole_chunk(tmp_path):
    """A few scattered rows kept by the caller (evaluation holds a batch of them) must not keep
    each one's whole decoded chunk alive through a numpy view."""
    store = make_store(tmp_path / "s.zarr", n=N, chunk_rows=FEATURE_ROWS)
    for _, got in store.iter_rows([3, 20, 41, 90], what=("features", "labels")):
        for name, arr in got.items():
            base = arr.base if arr.base is not None else arr
            assert base.nbytes <= arr.nbytes * 2, (name, arr.shape, base.nbytes)
