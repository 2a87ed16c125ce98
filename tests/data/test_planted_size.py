"""`prepare planted` at size (issue #13, item 1): Zipf labels are made by row slices that agree
with the whole matrix, and writing a store allocates the same peak memory for 4x the rows."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from hashtagkit.data.planted import PlantedConfig, PlantedPaths, ZipfLabels, fill_planted
from hashtagkit.data.split import random_split
from hashtagkit.stores import create_store


def test_zipf_labels_do_not_depend_on_how_they_are_sliced():
    labels = ZipfLabels(10_000, 50, seed=3)
    whole = labels[:]
    assert whole.shape == (10_000, 50) and whole.dtype == np.uint8 and whole.any(axis=1).all()
    parts = np.concatenate([labels[a:b] for a, b in [(0, 1), (1, 4095), (4095, 4097), (4097, 9999), (9999, 10_000)]])
    np.testing.assert_array_equal(parts, whole)
    assert abs(whole.sum(1).mean() - 4.544) < 0.5  # HARRISON's mean tags per image
    assert not np.array_equal(ZipfLabels(10_000, 50, seed=4)[:], whole)
    assert PlantedPaths(3)[1:] == ["planted/000001", "planted/000002"] and PlantedPaths(3)[-1] == "planted/000002"


def _peak_bytes(path, n: int) -> int:
    labels = ZipfLabels(n, 997, seed=0)
    split, info = random_split(n, 100, 0, 0)
    tracemalloc.start()
    create_store(path, paths=PlantedPaths(n), labels=labels, vocab=[f"t{i}" for i in range(997)], split=split,
                 split_info=info, kind="planted", image_root=None, synthetic=True,
                 fill=fill_planted(labels, PlantedConfig(dim=512)))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


@pytest.mark.slow
def test_writing_a_planted_store_takes_flat_memory(tmp_path):
    small, large = _peak_bytes(tmp_path / "a.zarr", 20_000), _peak_bytes(tmp_path / "b.zarr", 80_000)
    # the whole label matrix would be 20 MB and 80 MB (features 20 and 80 MB more); a chunk at a time, the peak stays put
    assert large < 1.25 * small, (small, large)
    assert large < 80_000 * 997 / 2
