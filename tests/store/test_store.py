"""The store: round trip, atomic creation, feature views, and refusing what is not a store."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

from hashtagkit.errors import InputError
from hashtagkit.outputs import atomic_dir
from hashtagkit.stores import SPLIT_CODES, create_store, open_store

from ..conftest import make_store


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
    with pytest.raises(InputError, match="overwrite=True"), atomic_dir(target):
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


# --- one writer per store ------------------------------------------------------------------------
HOLD_LOCK = """
import sys, time
from hashtagkit.stores import store_lock
with store_lock(sys.argv[1], "extracted"):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_prepare_overwrite_refused_while_a_writer_holds_the_lock(tmp_path):
    from click.testing import CliRunner

    from hashtagkit.cli.main import cli

    store = make_store(tmp_path / "s.zarr")
    before = (store.vocab, store.verify_split(), store.features().copy())
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(store.path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        res = CliRunner().invoke(cli, ["prepare", "demo", "-o", str(store.path), "--n", "20", "--overwrite"])
        assert res.exit_code == 2, res.output
        assert f"is being extracted by another process (pid {holder.pid})" in res.output
    finally:
        holder.kill()
        holder.wait()
    again = open_store(store.path)  # intact: same vocabulary, split and features
    assert (again.vocab, again.verify_split()) == before[:2] and np.array_equal(again.features(), before[2])
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no half-made sibling left
    # the holder is gone (SIGKILL releases a record lock): now the overwrite goes through
    res = CliRunner().invoke(cli, ["prepare", "demo", "-o", str(store.path), "--n", "20", "--overwrite"])
    assert res.exit_code == 0, res.output
    assert open_store(store.path).n_rows == 20


# --- crash safety of the group's attributes --------------------------------------------------------
REWRITE_ATTRS = """
import sys
import numpy as np
import zarr
g = zarr.open_group(sys.argv[1], mode="r+")
rng = np.random.default_rng(0)
print("writing", flush=True)
while True:  # a big, changing attribute, so that every rewrite of zarr.json takes a while
    g.attrs["extraction"] = {"runs": rng.random(20000).tolist()}
"""


@pytest.mark.slow
def test_store_survives_sigkill_while_its_attributes_are_rewritten(tmp_path):
    """zarr >= 3.1.3 replaces zarr.json atomically: a writer killed at any moment leaves the old or
    the new attributes, never a torn file that loses the vocabulary and split."""
    store = make_store(tmp_path / "s.zarr", features=False)
    vocab, sha = store.vocab, store.verify_split()
    rng = np.random.default_rng()
    for _ in range(6):
        writer = subprocess.Popen([sys.executable, "-c", REWRITE_ATTRS, str(store.path)], stdout=subprocess.PIPE,
                                  text=True)
        assert writer.stdout.readline().strip() == "writing"
        time.sleep(float(rng.uniform(0.0, 0.4)))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        again = open_store(store.path)
        assert again.vocab == vocab and again.verify_split() == sha
        assert again.split_rows("test").size == 15


# --- a done chunk is a chunk on disk ---------------------------------------------------------------
def chunk_file(store, name: str, chunk: int):
    arr = store.group[name]
    return store.path / name / arr.metadata.encode_chunk_key((chunk,) + (0,) * (arr.ndim - 1))


def test_an_all_invalid_chunk_still_has_its_files(tmp_path):
    # rows 0..15 (chunk 0) all failed to decode: all-zero features, all-False valid, the fill
    # values, which zarr skips writing unless told to write empty chunks
    store = make_store(tmp_path / "s.zarr", invalid=tuple(range(16)))
    for name in ("features", "valid", "reason"):
        assert chunk_file(store, name, 0).is_file(), name
    assert store.damaged_chunks() == {}
    assert store.features(rows=np.arange(16)).sum() == 0


def test_deleted_or_corrupt_chunk_is_an_error_naming_it(tmp_path):
    store = make_store(tmp_path / "s.zarr")  # 60 rows, 16 per chunk: chunks 0..3
    chunk_file(store, "features", 1).unlink()
    with pytest.raises(InputError, match=r"chunk 1 \(missing features/c/1/0\)"):
        store.features()
    with pytest.raises(InputError, match="chunk 1"):
        store.features("object", np.array([0, 20]))
    chunk_file(store, "features", 2).write_bytes(b"not zstd")
    assert set(store.damaged_chunks(decode=False)) == {1}  # presence only
    damaged = store.damaged_chunks()
    assert set(damaged) == {1, 2} and "does not decode" in damaged[2]


def test_info_verify_marks_damage_and_extract_redoes_only_it(tmp_path):
    from click.testing import CliRunner

    from hashtagkit.cli.main import cli
    from hashtagkit.extraction.plan import prepare_arrays

    store = make_store(tmp_path / "s.zarr")
    res = CliRunner().invoke(cli, ["info", "--verify", str(store.path)])
    assert res.exit_code == 0 and "all 4 done chunk(s) of 4 present and readable" in res.output
    chunk_file(store, "reason", 0).unlink()
    chunk_file(store, "features", 3).write_bytes(b"garbage")
    res = CliRunner().invoke(cli, ["info", "--verify", str(store.path)])
    assert res.exit_code == 1, res.output
    assert "chunk 0 (rows 0..): missing reason/c/0" in res.output and "chunk 3 (rows 48..)" in res.output
    assert "2 damaged chunk(s) marked not done" in res.output and "hashtagkit extract" in res.output
    again = open_store(store.path, mode="r+")
    assert again.completeness() == (2, 4)
    plan = prepare_arrays(again, again.blocks, "float32", None, overwrite=False)
    assert plan.pending == [0, 3]


def test_extract_redoes_a_deleted_chunk_end_to_end(tmp_path):
    """A tiny real extraction: delete a chunk file, and the next extract (without verify) redoes
    that chunk only, to the same features."""
    from click.testing import CliRunner

    from hashtagkit.cli.main import cli

    from ..extraction.test_extract import make_image_store

    path = make_image_store(tmp_path, n=4)
    args = ["extract", str(path), "--backbone", "resnet50-object=random", "--no-progress", "--workers", "0",
            "--precision", "fp32", "--dtype", "float32", "--chunk-rows", "2"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    store = open_store(path)
    first = store.features().copy()
    chunk_file(store, "features", 1).unlink()
    with pytest.raises(InputError, match="chunk 1"):
        open_store(path).features()
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "extracted 2 of 4 rows" in res.output and "1 chunk(s) already done" in res.output
    assert np.array_equal(open_store(path).features(), first)


def test_a_store_written_before_empty_chunks_were_kept_still_reads(tmp_path):
    """Stores extracted before `write_empty_chunks` lack the `reason` chunk of every chunk whose
    images all decoded (zarr skipped chunks equal to the fill value): not damage. Their features
    read, and nothing is marked for re-extraction; a chunk that does not decode still is."""
    from hashtagkit.stores.store import FILES_MARK

    store = make_store(tmp_path / "old.zarr", n=40, chunk_rows=16)
    g = zarr.open_group(tmp_path / "old.zarr", mode="r+")
    del g["done"].attrs[FILES_MARK]  # the layout of the earlier writer
    for f in (tmp_path / "old.zarr" / "reason" / "c").iterdir():
        f.unlink()
    store = open_store(tmp_path / "old.zarr")
    assert store.damaged_chunks() == {}
    assert store.features().shape == (40, 8)
    (tmp_path / "old.zarr" / "features" / "c" / "1" / "0").write_bytes(b"not zstd")
    assert list(store.damaged_chunks()) == [1]
    # with the mark (a store written now) a missing file is damage
    g["done"].attrs[FILES_MARK] = True
    assert set(open_store(tmp_path / "old.zarr").damaged_chunks(decode=False)) == {0, 1, 2}


def test_a_store_that_cannot_be_locked_is_verified_saying_so(tmp_path, monkeypatch):
    """A read-only store (root ignores chmod, so the refusal is simulated at the open):
    `info --verify` says it cannot lock it, in one line, and verifies it all the same (no
    PermissionError traceback; damage would be listed, unmarked)."""
    from click.testing import CliRunner

    from hashtagkit.cli.main import cli
    from hashtagkit.stores import store as store_module

    make_store(tmp_path / "s.zarr")
    real = store_module.os.open

    def read_only(path, flags, *a):
        if str(path).endswith(store_module.LOCK_FILE):
            raise PermissionError(13, "Permission denied")
        return real(path, flags, *a)

    monkeypatch.setattr(store_module.os, "open", read_only)
    res = CliRunner().invoke(cli, ["info", "--verify", str(tmp_path / "s.zarr")])
    # nothing damaged: verified all the same, saying it could not lock (it once stopped there)
    assert res.exit_code == 0 and "cannot be verified: Permission denied" in res.output, res.output
    assert "reading it without the lock" in res.output and "present and readable" in res.output
    assert "Traceback" not in res.output


def test_two_extractions_that_differ_are_described_apart():
    """A refusal once printed two identical descriptions for features that differed only in a random
    seed or in preprocessing (issue #23): the seed is shown, and what else differs is named."""
    from hashtagkit.stores import blocks_differ_in, describe_blocks

    def block(seed, size=224):
        return {"name": "object", "backbone": "vgg16-object", "columns": [0, 4096],
                "weights": {"source": "random", "seed": seed, "sha256": None}, "preprocessing": {"resize": size}}

    assert describe_blocks([block(0)], "float16") == "object: vgg16-object (random, seed 0) as float16"
    assert describe_blocks([block(0)]) != describe_blocks([block(1)])
    assert blocks_differ_in([block(0)], [block(1)]) == ""  # the descriptions already differ
    assert blocks_differ_in([block(0)], [block(0, 256)]) == " (they differ in their preprocessing)"
    real = {**block(0), "weights": {"source": "file", "sha256": "5c1f0a" + "0" * 58}}
    assert "sha256 5c1f0a000000" in describe_blocks([real])
