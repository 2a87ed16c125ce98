"""A store xarray opens (issue #25, item 3): named dimensions (image, tag, feature, chunk), the
hashtags as the `tag` coordinate, `paths` and `split` as coordinates along `image`, no warning
with `consolidated=False`, the lock outside the Zarr hierarchy, rows not extracted read as NaN;
stores of the previous layout still read and score alike, and `hashtagkit upgrade` brings them
to this one; docs/store-format.md describes the arrays a real store holds."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from hashtagkit.cli.main import cli
from hashtagkit.errors import InputError
from hashtagkit.stores import open_store, store_lock
from hashtagkit.stores.store import COORDINATES, DIMS, FILES_MARK, LEGACY_LOCK_FILE, lock_path

from ..conftest import make_store, stop_upgrade_after

REPO = Path(__file__).resolve().parents[2]
OLD_COMMIT = "cc8f205"  # the last release of the layout before this one (format 2, dimensions row/class)


def open_silently(path: Path, how: str = "open_zarr"):
    """The store opened by xarray as docs/store-format.md says, every warning an error."""
    import xarray as xr

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        if how == "open_zarr":
            ds = xr.open_zarr(path, consolidated=False)
        else:
            ds = xr.open_dataset(path, engine="zarr", consolidated=False)
        ds.load()
    return ds


def zarr_json(path: Path, name: str) -> dict:
    return json.loads((path / name / "zarr.json").read_text())


# --- the Dataset -----------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["open_zarr", "open_dataset"])
def test_xarray_opens_a_store_with_its_coordinates_and_no_warning(tmp_path, how):
    """Every array under its named dimensions, the hashtags label the tag dimension, paths and
    split are coordinates along image; the values are what the store API reads. No warning at
    all, though a writer has held the store's lock (zarr warned about the lock file inside)."""
    store = make_store(tmp_path / "s.zarr", n=50, test=10, chunk_rows=16, invalid=(3, 40))
    with store_lock(store.path, "extracted"):
        ds = open_silently(store.path, how)  # while it is held, too
    assert lock_path(store.path) == tmp_path / "s.zarr.lock" and lock_path(store.path).is_file()
    assert not (store.path / LEGACY_LOCK_FILE).exists()
    ds = open_silently(store.path, how)
    assert dict(ds.sizes) == {"image": 50, "tag": 7, "feature": 8, "chunk": 4}
    assert {name: ds[name].dims for name in DIMS} == DIMS
    assert sorted(ds.coords) == ["paths", "split", "tag"] and list(ds.indexes) == ["tag"]
    assert sorted(ds.data_vars) == ["chunk_log", "done", "features", "labels", "reason", "valid"]
    assert ds["tag"].values.tolist() == store.vocab == ds.attrs["vocab"]
    assert ds["paths"].values.tolist() == store.paths()
    assert np.array_equal(ds["split"].values, store.split())
    assert ds["split"].attrs["flag_meanings"] == "train test val" and ds["split"].attrs["flag_values"] == [0, 1, 2]
    assert np.array_equal(ds["labels"].values, store.labels())
    assert np.array_equal(ds["features"].values, store.features())
    assert np.array_equal(ds["valid"].values, store.valid()) and not ds["valid"].values[[3, 40]].any()
    assert (ds["features"].values[[3, 40]] == 0).all()  # an image that failed: zeros, not missing
    assert ds["done"].values.all()
    # sliced by name: a hashtag's column, the rows of a split, with their paths
    tag = store.vocab[2]
    assert np.array_equal(ds["labels"].sel(tag=tag).values, store.labels()[:, 2])
    test = ds.isel(image=ds["split"].values == 1)
    rows = store.split_rows("test")
    assert test["paths"].values.tolist() == store.paths(rows)
    assert np.array_equal(test["features"].values, store.features(rows=rows))
    assert np.array_equal(test["labels"].sel(tag=[tag, store.vocab[0]]).values, store.labels(rows)[:, [2, 0]])


def test_zarr_lists_the_store_without_a_warning(tmp_path):
    """The lock lives beside the store: zarr's listing of the hierarchy finds only Zarr nodes."""
    store = make_store(tmp_path / "s.zarr", n=20, test=5)
    with store_lock(store.path):
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        names = sorted(name for name, _ in zarr.open_group(store.path, mode="r").members())
    assert names == sorted(DIMS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr", "s.zarr.lock"]


def test_an_old_lock_file_inside_a_store_is_removed_by_the_next_writer(tmp_path):
    """Stores held their lock inside (zarr warned about it): the next locked write removes it,
    unless it is held (an older hashtagkit writing the store: refused as any held lock is)."""
    import fcntl
    import os

    store = make_store(tmp_path / "s.zarr", n=20, test=5)
    old = store.path / LEGACY_LOCK_FILE
    old.write_text("pid 1:extracted")
    with pytest.warns(UserWarning, match="not recognized as a component of a Zarr hierarchy"):
        list(zarr.open_group(store.path, mode="r").members())
    fd = os.open(old, os.O_RDWR)  # held: by this process, so a child asks
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        import subprocess
        import sys

        res = subprocess.run([sys.executable, "-c", "import sys\nfrom hashtagkit.stores import store_lock\n"
                              "with store_lock(sys.argv[1], 'extracted'): pass", str(store.path)],
                             capture_output=True, text=True)
        assert res.returncode == 1 and "is being extracted by another process (pid 1)" in res.stderr, res.stderr
        assert old.exists()
    finally:
        os.close(fd)
    with store_lock(store.path, "extracted"):
        assert not old.exists()
    open_silently(store.path)


def test_rows_not_extracted_read_as_nan_and_hashtagkit_reads_only_complete_stores(tmp_path):
    """The features' fill value is NaN: a plain reader sees the rows of a chunk not done yet as
    missing, never as zeros; an image that failed to decode is written as zeros (valid False).
    hashtagkit refuses the incomplete store and, once complete, reads no NaN."""
    make_store(tmp_path / "s.zarr", n=40, test=10, features=False)
    store = open_store(tmp_path / "s.zarr", mode="r+")
    rows = store.init_features(4, "float16", [{"name": "object", "columns": [0, 4], "backbone": "t"}], 16)
    assert np.isnan(store.group["features"].fill_value) and zarr_json(store.path, "features")["fill_value"] == "NaN"
    X = np.random.default_rng(0).random((40, 4)).astype(np.float16)
    valid = np.ones(40, bool)
    valid[5] = False
    X[5] = 0
    store.write_chunk(0, X[:rows], valid[:rows], ["" if v else "unreadable image" for v in valid[:rows]])
    ds = open_silently(store.path)
    got = ds["features"].values
    assert np.array_equal(got[:rows], X[:rows]) and (got[5] == 0).all()
    assert np.isnan(got[rows:]).all() and not ds["valid"].values[rows:].any()
    with pytest.raises(InputError, match="incomplete"):
        open_store(store.path).features()
    with pytest.raises(InputError, match="incomplete"):
        next(open_store(store.path).iter_rows())
    store.write_chunk(1, X[rows:2 * rows], valid[rows:2 * rows])
    store.write_chunk(2, X[2 * rows:], valid[2 * rows:])
    done = open_store(store.path)
    assert np.isfinite(done.features()).all() and np.array_equal(done.features(), X)
    assert all(np.isfinite(part["features"]).all() for _, part in done.iter_rows())
    assert not np.isnan(open_silently(store.path)["features"].values).any()


# --- stores of the previous layout ---------------------------------------------------------------
def old_module():
    """stores/store.py of the last release before this layout (cc8f205), kept verbatim in tests/."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("format2_store", Path(__file__).parent / "format2_store.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.DIMS["labels"] == ("row", "class")
    return module


def test_the_old_module_is_the_release_code():
    import subprocess

    old = subprocess.run(["git", "show", f"{OLD_COMMIT}:stores/store.py"], cwd=REPO, capture_output=True, text=True)
    if old.returncode != 0:
        pytest.skip(f"commit {OLD_COMMIT} is not in this clone (shallow?)")
    assert old.stdout == (Path(__file__).parent / "format2_store.py").read_text()


BLOCKS = [{"name": "object", "columns": [0, 3], "backbone": "t-object", "weights": {"sha256": "a" * 64}},
          {"name": "scene", "columns": [3, 6], "backbone": "t-scene", "weights": {"sha256": "b" * 64}}]


def old_store(path: Path, n: int = 48, chunk_rows: int = 8, done: tuple[int, ...] | None = None,
              zero_chunk: int | None = None) -> dict:
    """A store written by the previous release: prepared, then the chunks in `done` (all by
    default) extracted with its init_features/write_chunk, its lock taken once (the file inside);
    `zero_chunk`'s images all failed (zeros). Returns what was written."""
    old = old_module()
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(6, 6)).astype(np.float32)
    tags = rng.integers(0, 6, n)
    labels = np.eye(6, dtype=np.uint8)[tags]
    labels[:, 0] = 1
    split = np.zeros(n, np.uint8)
    split[: n // 4] = 1
    paths = [f"photos/{i:03d}.jpg" for i in range(n)]
    vocab = ["#love", "#sea", "#sun", "#food", "#cat", "#city"]
    old.create_store(path, paths=paths, labels=labels, vocab=vocab, split=split, split_info={"seed": 0},
                     kind="test", image_root=None)
    with old.store_lock(path, "extracted"):
        store = old.open_store(path, mode="r+")
        X = np.abs(centres[tags] + rng.normal(size=(n, 6))).astype(np.float32)
        valid = np.ones(n, bool)
        if zero_chunk is not None:
            valid[zero_chunk * chunk_rows:(zero_chunk + 1) * chunk_rows] = False
        X[~valid] = 0
        reasons = ["" if v else "unreadable image" for v in valid]
        rows = store.init_features(6, "float32", BLOCKS, chunk_rows)
        n_chunks = -(-n // rows)
        done = tuple(range(n_chunks)) if done is None else done
        for c in done:
            s = slice(c * rows, min((c + 1) * rows, n))
            store.write_chunk(c, X[s], valid[s], reasons[s])
        store.write_extraction_record({"precision": "fp32", "device": "cpu", "runs": [{"precision": "fp32"}],
                                       "chunk_runs": [0 if c in done else -1 for c in range(n_chunks)]})
    assert (path / LEGACY_LOCK_FILE).is_file() and zarr_json(path, "features")["fill_value"] == 0.0
    assert zarr_json(path, "labels")["dimension_names"] == ["row", "class"] and not (path / "tag").exists()
    return {"X": X, "valid": valid, "paths": paths, "vocab": vocab, "labels": labels, "n_chunks": n_chunks,
            "done": done, "rows": rows}


def check_layout(path: Path, nan_fill: bool = True) -> None:
    """The store is in this version's layout, and xarray opens it with no warning."""
    for name, dims in DIMS.items():
        meta = zarr_json(path, name)
        assert tuple(meta["dimension_names"]) == dims, name
        assert (meta["attributes"].get("coordinates") == COORDINATES) == (name in ("labels", "features", "valid",
                                                                                     "reason")), name
    assert zarr_json(path, "features")["fill_value"] == ("NaN" if nan_fill else 0.0)
    assert zarr_json(path, "split")["attributes"]["flag_meanings"] == "train test val"
    ds = open_silently(path)
    assert ds["tag"].values.tolist() == open_store(path).vocab and sorted(ds.coords) == ["paths", "split", "tag"]
    assert not [p.name for p in path.rglob("*.format2")]  # no temporary left


def scores(path: Path, run: Path) -> dict:
    res = CliRunner().invoke(cli, ["evaluate", str(run), "--json", "--store", str(path)])
    assert res.exit_code == 0, res.output
    return {k: v for k, v in json.loads(res.stdout).items() if not k.endswith("seconds")}  # all but timings


def fit(path: Path, run: Path) -> Path:
    res = CliRunner().invoke(cli, ["fit", str(path), "--head", "knn", "--set", "k=5", "-o", str(run)])
    assert res.exit_code == 0, res.output
    return run


def test_a_store_of_the_previous_layout_reads_scores_alike_and_upgrades(tmp_path):
    """The previous release's store (fill 0, dimensions row/class, no tag array, no coordinates,
    its lock inside) reads and scores as it did; `hashtagkit upgrade` brings it to this layout
    (fill NaN: every done chunk has its file) without changing a value or a score; once is enough."""
    path = tmp_path / "old.zarr"
    w = old_store(path)
    store = open_store(path)
    assert np.array_equal(store.features(), w["X"]) and store.paths() == w["paths"] and store.vocab == w["vocab"]
    before = scores(path, fit(path, tmp_path / "run"))
    res = CliRunner().invoke(cli, ["info", str(path)])
    assert res.exit_code == 0 and "an older layout: `hashtagkit upgrade STORE`" in res.output, res.output
    res = CliRunner().invoke(cli, ["upgrade", str(path)])
    assert res.exit_code == 0, res.output
    assert "upgraded" in res.output and "current layout of store format 2" in res.output, res.output
    assert "older layout" not in CliRunner().invoke(cli, ["info", str(path)]).output
    assert "rows not extracted read as NaN" in res.output
    assert not (path / LEGACY_LOCK_FILE).exists()  # the upgrade took the lock beside the store
    check_layout(path)
    store = open_store(path)
    assert store.format == 2 and np.array_equal(store.features(), w["X"]) and np.array_equal(store.labels(), w["labels"])
    assert store.paths() == w["paths"] and store.damaged_chunks() == {} and store.damaged_base(decode=True) == []
    assert scores(path, tmp_path / "run") == before  # the run fitted before scores the upgraded store alike
    assert scores(path, fit(path, tmp_path / "run2")) == before
    res = CliRunner().invoke(cli, ["upgrade", str(path)])
    assert res.exit_code == 0 and "already store format 2: nothing to do" in res.output, res.output


def test_an_incomplete_old_store_upgrades_to_nan_and_extract_resumes(tmp_path):
    """Half extracted by the previous release: after the upgrade the chunks not done read as NaN
    to xarray, those done as written; writing the rest completes it."""
    path = tmp_path / "old.zarr"
    w = old_store(path, done=(0, 2, 5))
    from hashtagkit.stores.upgrade import upgrade_store

    with store_lock(path, "upgraded"):
        assert upgrade_store(open_store(path, mode="r+")) is True
    check_layout(path)
    got = open_silently(path)["features"].values
    rows = w["rows"]
    for c in range(w["n_chunks"]):
        s = slice(c * rows, (c + 1) * rows)
        assert np.array_equal(got[s], w["X"][s]) if c in w["done"] else np.isnan(got[s]).all()
    store = open_store(path, mode="r+")
    for c in sorted(set(range(w["n_chunks"])) - set(w["done"])):
        s = slice(c * rows, (c + 1) * rows)
        store.write_chunk(c, w["X"][s], w["valid"][s])
    assert np.array_equal(open_store(path).features(), w["X"])


def test_the_fill_value_stays_0_where_a_done_chunk_has_no_file(tmp_path):
    """Before `write_empty_chunks` (no `FILES_MARK`), zarr stored a done chunk of zeros (every
    image failed) as no file: NaN would change its rows, so the upgrade keeps 0 there and says
    so; everything else is upgraded, the rows read as before, and the next upgrade has nothing to do."""
    path = tmp_path / "old.zarr"
    w = old_store(path, zero_chunk=2)
    g = zarr.open_group(path, mode="r+")
    del g["done"].attrs[FILES_MARK]  # the layout of the writer before the mark
    (path / "features" / "c" / "2" / "0").unlink()  # as it skipped the chunk of zeros
    res = CliRunner().invoke(cli, ["upgrade", str(path)])
    assert res.exit_code == 0 and "fill value stays 0" in res.output, res.output
    check_layout(path, nan_fill=False)
    store = open_store(path)
    assert np.array_equal(store.features(), w["X"]) and (store.features()[16:24] == 0).all()
    res = CliRunner().invoke(cli, ["upgrade", str(path)])
    assert "nothing to do" in res.output, res.output


def test_a_layout_upgrade_killed_after_any_step_is_finished_by_the_next(tmp_path, monkeypatch):
    """The upgrade fails after step k (for every k): hashtagkit reads the store exactly as before
    at every point (no step changes a value it reads), and the next upgrade completes it."""
    from hashtagkit.stores import upgrade

    template = tmp_path / "template.zarr"
    w = old_store(template, done=(0, 1, 3))
    steps = []
    copy = tmp_path / "count.zarr"
    shutil.copytree(template, copy)
    real_act = upgrade.act
    monkeypatch.setattr(upgrade, "act", lambda what, fn, *a: (steps.append(what), real_act(what, fn, *a)))
    upgrade.upgrade_store(open_store(copy, mode="r+"))
    monkeypatch.setattr(upgrade, "act", real_act)
    # `done` and `chunk_log` had their dimension (chunk) already
    assert steps == [f"relabel {name}" for name in ("labels", "split", "paths", "features", "valid", "reason")] + [
        "add tag"]
    assert upgrade.upgrade_store(open_store(copy, mode="r+")) is False
    for k in range(len(steps)):
        path = tmp_path / f"k{k}.zarr"
        shutil.copytree(template, path)
        stop_upgrade_after(k, path, monkeypatch)
        half = open_store(path)
        assert half.paths() == w["paths"] and half.vocab == w["vocab"] and half.completeness() == (3, w["n_chunks"])
        rows = w["rows"]
        for c in (0, 1, 3):
            s = slice(c * rows, (c + 1) * rows)
            assert np.array_equal(half.group["features"][s], w["X"][s])
        with store_lock(path, "upgraded"):  # as `hashtagkit upgrade` does: the old lock file goes too
            assert upgrade.upgrade_store(open_store(path, mode="r+")) is True
        check_layout(path)
        assert upgrade.upgrade_store(open_store(path, mode="r+")) is False
        shutil.rmtree(path)


def test_extract_upgrades_a_store_of_the_previous_layout_and_resumes_it(tmp_path):
    """`extract` on a half-extracted store of the previous release: one line says it was
    upgraded, the chunks not done are computed, and the features equal an uninterrupted run's."""
    from ..conftest import TINY_EXTRACT as args
    from ..conftest import old_twin

    ref, path, writer = old_twin(tmp_path, old_module())
    for c in (0, 1):
        writer.write_chunk(c, ref.features()[2 * c:2 * c + 2], ref.valid()[2 * c:2 * c + 2],
                           info={"run": 0, "host": "h", "worker": "w", "pid": 1, "device": "cpu",
                                 "precision": "fp32", "seconds": 0.1})
    writer.write_extraction_record({k: v for k, v in ref.extraction_record.items()} | {"chunk_runs": [0, 0, -1, -1]})
    res = CliRunner().invoke(cli, ["extract", str(path), *args])
    assert res.exit_code == 0, res.output
    assert res.output.count("upgraded") == 1 and "current layout of store format 2" in res.output
    assert "2 chunk(s) already done" in res.output
    check_layout(path)
    assert np.array_equal(open_store(path).features(), ref.features())
    assert np.array_equal(open_silently(path)["features"].values, ref.features())


# --- docs/store-format.md ------------------------------------------------------------------------
ROW = re.compile(r"^\|\s*`(\w+)`\s*\|\s*\(([\w, ]*)\)\s*\|\s*([^|]+?)\s*\|\s*([^|]+?)\s*\|")
FILLS = {"0": 0, "NaN": "NaN", "false": False, '""': ""}


def documented_arrays() -> dict[str, tuple[tuple[str, ...], str, object]]:
    """The array table of docs/store-format.md: name -> (dimensions, dtype, fill value)."""
    out = {}
    for line in (REPO / "docs" / "store-format.md").read_text().splitlines():
        m = ROW.match(line)
        if m:
            name, dims, dtype, fill = m.groups()
            out[name] = (tuple(d.strip() for d in dims.split(",")), dtype, FILLS[fill])
    return out


def actual_arrays(path: Path) -> dict[str, tuple[tuple[str, ...], str, object]]:
    group = zarr.open_group(path, mode="r")
    out = {}
    for name, arr in group.arrays():
        dtype = "string" if arr.dtype.kind in "TUO" else str(arr.dtype)
        fill = arr.fill_value
        fill = "NaN" if isinstance(fill, float | np.floating) and np.isnan(fill) else \
            fill.item() if hasattr(fill, "item") else str(fill)
        out[name] = (tuple(arr.metadata.dimension_names), dtype, fill)
    return out


def test_the_documented_format_is_a_real_stores(tmp_path):
    """Every array docs/store-format.md lists, with its dimensions, dtype and fill value, is in a
    store made by `prepare demo` + `extract` and by `prepare planted`, and nothing more."""
    from ..extraction.test_extract import tiny_scene_backbone

    doc = documented_arrays()
    assert set(doc) == set(DIMS) and all(doc[name][0] == dims for name, dims in DIMS.items())
    tiny_scene_backbone()
    demo, planted = tmp_path / "demo.zarr", tmp_path / "planted.zarr"
    for args in (["prepare", "demo", "-o", demo, "--n", "20"],
                 ["extract", demo, "--backbone", "tiny-scene=random", "--no-progress", "--workers", "0",
                  "--precision", "fp32"],
                 ["prepare", "planted", "-o", planted, "--n", "60", "--dim", "8", "--classes", "12"]):
        res = CliRunner().invoke(cli, [str(a) for a in args])
        assert res.exit_code == 0, res.output
    for path in (demo, planted):
        got = actual_arrays(path)
        assert set(got) == set(doc), path
        for name, (dims, dtype, fill) in doc.items():
            assert got[name][0] == dims and got[name][2] == fill, (path, name, got[name])
            assert got[name][1] in dtype.split(" or "), (path, name, got[name])
        ds = open_silently(path)
        assert sorted(ds.coords) == ["paths", "split", "tag"]
        group = zarr.open_group(path, mode="r")
        documented_attrs = set(re.findall(r"^\| attribute `(\w+)`", (REPO / "docs" / "store-format.md").read_text(),
                                          re.M))
        assert set(group.attrs) <= documented_attrs, set(group.attrs) - documented_attrs
