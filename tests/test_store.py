"""The store: round trip, atomic creation, feature views, and refusing what is not a store."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from hashtagkit.errors import InputError
from hashtagkit.outputs import atomic_dir
from hashtagkit.stores import SPLIT_CODES, create_store, open_store

from .conftest import make_store


def test_round_trip(tmp_path):
    labels = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 1], [0, 0, 1]], dtype=np.uint8)
    split = np.array([0, 1, 0, 2], dtype=np.uint8)
    store = create_store(tmp_path / "s.zarr", paths=["a/1.jpg", "b/2.jpg", "é/3.jpg", "4.jpg"], labels=labels,
                         vocab=["x", "y", "z"], split=split, split_info={"seed": 3}, kind="test", image_root="/imgs")
    again = open_store(tmp_path / "s.zarr")
    assert np.array_equal(again.labels(), labels)
    assert again.paths() == ["a/1.jpg", "b/2.jpg", "é/3.jpg", "4.jpg"]
    assert again.vocab == ["x", "y", "z"]
    assert again.split_rows("train").tolist() == [0, 2]
    assert again.split_rows("val").tolist() == [3]
    assert again.image_root == "/imgs"
    info = again.info()
    assert info["split"] == {"train": 2, "test": 1, "val": 1}
    assert info["rows"] == 4 and info["classes"] == 3 and info["blocks"] == []
    assert info["split_sha256"] == store.verify_split()
    assert "versions" in info["provenance"] and "command" in info["provenance"]


def test_split_tampering_detected(tmp_path):
    store = make_store(tmp_path / "s.zarr", features=False)
    g = zarr.open_group(store.path, mode="r+")
    split = np.asarray(g["split"][...])
    split[0] = SPLIT_CODES["test"] if split[0] != SPLIT_CODES["test"] else SPLIT_CODES["train"]
    g["split"][...] = split
    with pytest.raises(InputError, match="sha256"):
        open_store(store.path).verify_split()


def test_crash_leaves_nothing_and_keeps_old(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "f").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target, overwrite=True) as tmp:
        (tmp / "f").write_text("new")
        raise RuntimeError("crash mid-way")
    assert (target / "f").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(InputError, match="--overwrite"), atomic_dir(target):
        pass


def test_feature_views_zero_pad_the_other_block(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    both = store.features("both")
    obj = store.features("object", np.array([1, 5, 7]))
    scene = store.features("scene")
    assert obj.shape == (3, 8)
    assert np.array_equal(obj[:, :4], both[[1, 5, 7], :4]) and not obj[:, 4:].any()
    assert np.array_equal(scene[:, 4:], both[:, 4:]) and not scene[:, :4].any()


def test_missing_features_and_incomplete_extraction(tmp_path):
    bare = make_store(tmp_path / "bare.zarr", features=False)
    with pytest.raises(InputError, match="hashtagkit extract"):
        bare.features()
    store = make_store(tmp_path / "s.zarr")
    with pytest.raises(InputError, match="no 'people' features"):
        store.features("people")
    open_store(store.path, mode="r+").mark_not_done([2])
    with pytest.raises(InputError, match="3 of 4 chunks"):
        open_store(store.path).features()


def test_not_a_store(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        open_store(tmp_path / "nope")
    (tmp_path / "dir").mkdir()
    with pytest.raises(InputError, match="not a"):
        open_store(tmp_path / "dir")
    zarr.open_group(tmp_path / "z.zarr", mode="w")
    with pytest.raises(InputError, match="not a hashtagkit store"):
        open_store(tmp_path / "z.zarr")
