"""Upgrading an older store in place to the current format and layout.

Format 1 kept `done` and `paths` in one chunk each and had no `chunk_log` (see
`hashtagkit.stores.store`). Its upgrade to format 2, in the store's root and in every subgroup
holding features (the write-aside group of an interrupted `extract --overwrite`):

1. marks the group as being upgraded (attr `UPGRADING`: readers of paths and features are told
   to finish it, never shown a half-moved array);
2. rebuilds `done` with one chunk per flag and `paths` in chunks of `PATH_CHUNK_ROWS`, each under
   a temporary name (`done.format2`) that is marked complete (attr `COMPLETE`) only after all its
   data is written, and then moved over the old array (the old folder removed, the new renamed);
3. adds an empty `chunk_log` beside every `done`;
4. brings the layout up to date (below);
5. sets the format to 2 and removes the mark.

The layout (what a format-2 store written before it lacks, and a format-1 store too) is what a
plain reader such as xarray needs: every array's `dimension_names` in the store's vocabulary
(`DIMS`: image, tag, feature, chunk), the `tag` array (the hashtags: the tag dimension's
coordinate), the per-image arrays' `coordinates` attribute ("paths split"), the split's CF flags,
and NaN as the features' fill value, so rows not extracted read as missing rather than zeros. Each
array's metadata is rewritten as a whole file (written aside, then renamed over `zarr.json`).
None of it changes what hashtagkit reads, so a layout upgrade needs no `UPGRADING` mark; the fill
value is changed only where that changes no written row (see `nan_fill_is_safe`).

Killed at any step, running it again finishes the job: a temporary that is not marked complete is
rebuilt from the old array (which is untouched until a complete copy exists), a complete one is
moved in (whether or not the old one was already removed), and every step checks whether it is
already done. No done flag and no path is lost. It moves folders, so it works on a local store
only, under the store's lock (the coordinator's job, like every change of the group's
attributes); a store at a URL is written as format 2 from the start (and keeps its layout).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zarr

from hashtagkit.errors import InputError
from hashtagkit.stores.store import (
    COORDINATES,
    DIMS,
    FILES_MARK,
    FORMAT,
    PATH_CHUNK_ROWS,
    SPLIT_FLAGS,
    UPGRADING,
    WITH_COORDINATES,
    Store,
    create_chunk_log,
    create_tag_array,
    is_url,
    move_array,
    read_done,
)

TMP = ".format2"  # suffix of an array rebuilt aside
COMPLETE = "hashtagkit_upgrade_complete"  # attr of a rebuilt array once all its data is written


def needs_upgrade(store: Store) -> bool:
    """A format-1 store, one whose upgrade was interrupted, or a local one whose layout is older
    than this version's (`layout_steps`)."""
    return needs_format_upgrade(store) or bool(layout_steps(store))


def needs_format_upgrade(store: Store) -> bool:
    return store.format < FORMAT or UPGRADING in store.group.attrs


def act(what: str, fn: Callable, *args) -> None:
    """Every change the upgrade makes goes through here: one step of the sequence (a test makes
    the k-th step fail to prove that a rerun finishes the upgrade from there)."""
    fn(*args)


def rechunk(folder: Path, group: zarr.Group, name: str, chunks: tuple[int, ...]) -> None:
    """Give array `name` these chunks, via a complete copy under a temporary name (idempotent)."""
    tmp = name + TMP
    if tmp in group:
        if group[tmp].attrs.get(COMPLETE):
            act(f"move {tmp} to {name}", move_array, folder / tmp, folder / name)
        else:  # killed while it was being written: the old array is intact, start the copy again
            act(f"remove partial {tmp}", shutil.rmtree, folder / tmp)
    if name not in group:
        return
    arr = group[name]
    if COMPLETE in arr.attrs:
        act(f"unmark {name}", arr.attrs.__delitem__, COMPLETE)
    if tuple(arr.chunks) == tuple(chunks):
        return
    new = group.create_array(tmp, shape=arr.shape, dtype=arr.dtype, chunks=chunks, fill_value=arr.fill_value,
                             compressors=arr.compressors, attributes=dict(arr.attrs),
                             dimension_names=arr.metadata.dimension_names)
    act(f"copy {name}", new.__setitem__, Ellipsis, np.asarray(arr[...]))
    act(f"mark {tmp} complete", new.attrs.__setitem__, COMPLETE, True)
    act(f"move {tmp} to {name}", move_array, folder / tmp, folder / name)
    act(f"unmark {name}", group[name].attrs.__delitem__, COMPLETE)


def feature_groups(store: Store) -> list[tuple[Path, zarr.Group]]:
    """The store's root and every subgroup that holds (or held) features, with their folders."""
    root = Path(store.path)
    out = [(root, store.group)]
    # the folders, not `group.groups()`: zarr warns about any file among them that is no Zarr node
    # (the lock file that older stores held inside)
    for folder in sorted(p for p in root.iterdir() if (p / "zarr.json").is_file()):
        if json.loads((folder / "zarr.json").read_text()).get("node_type") != "group":
            continue
        sub = store.group[folder.name]
        if any(k == "done" or k.startswith("done" + TMP) for k in sub.array_keys()):
            out.append((folder, sub))
    return out


def nan_fill_is_safe(folder: Path, group: zarr.Group) -> bool:
    """Whether NaN may become the fill value of `features` in this group without changing a
    written row. A chunk that has no file reads as the fill value: for a chunk not done that is
    the point (its rows are not extracted: NaN, not zeros); a done chunk must have its file.
    Where `done` carries `FILES_MARK`, every done chunk was written with its file, so one that is
    missing is damage (reported by `damaged_chunks`, and NaN reads it more truly than zeros);
    before the mark, zarr skipped writing a chunk equal to the fill value (a chunk whose images
    all failed: zeros), so each done chunk's file is looked for."""
    if "done" not in group or "features" not in group:
        return False
    if group["done"].attrs.get(FILES_MARK, False):
        return True
    arr = group["features"]
    return all((folder / "features" / arr.metadata.encode_chunk_key((c,) + (0,) * (arr.ndim - 1))).is_file()
               for c in np.flatnonzero(read_done(group)).tolist())


def wanted_metadata(name: str, meta: dict, nan_fill: bool) -> dict:
    """The array's `zarr.json` in this version's layout (a copy; equal to `meta` when current)."""
    out = {**meta, "dimension_names": list(DIMS[name]), "attributes": dict(meta.get("attributes") or {})}
    if name in WITH_COORDINATES:
        out["attributes"]["coordinates"] = COORDINATES
    if name == "split":
        out["attributes"].update(SPLIT_FLAGS)
    if name == "features" and nan_fill:
        out["fill_value"] = "NaN"
    return out


def is_nan(value) -> bool:
    return value == "NaN" or (isinstance(value, float) and math.isnan(value))


def rewrite_metadata(file: Path, meta: dict) -> None:
    """Replace an array's `zarr.json` whole: written aside, then renamed over it (a kill leaves
    the old file or the new one, never half of one)."""
    tmp = file.with_name(file.name + TMP)
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, file)


def layout_steps(store: Store) -> list[tuple[str, Callable, tuple]]:
    """What this store lacks of the current layout (see the module docstring), as `act` steps;
    none for a store at a URL (its metadata cannot be replaced file by file)."""
    if is_url(store.path):
        return []
    steps = []
    for folder, group in feature_groups(store):
        nan_fill = "features" in group and nan_fill_is_safe(folder, group)
        names = DIMS if folder == Path(store.path) else ("features", "valid", "reason", "done", "chunk_log")
        for name in names:
            file = folder / name / "zarr.json"
            if name == "tag" or not file.is_file():
                continue
            meta = json.loads(file.read_text())
            want = wanted_metadata(name, meta, nan_fill)
            if want != meta:
                where = name if folder == Path(store.path) else f"{folder.name}/{name}"
                steps.append((f"relabel {where}", rewrite_metadata, (file, want)))
    vocab, g = store.vocab, store.group
    if "tag" not in g or tuple(g["tag"].metadata.dimension_names or ()) != DIMS["tag"] or \
            np.asarray(g["tag"][...]).tolist() != vocab:
        steps.append(("add tag", create_tag_array, (g, vocab)))
    return steps


def upgrade_store(store: Store, log: Callable[[str], None] | None = None) -> bool:
    """Upgrade an older store (opened 'r+', its lock held by the caller) to the current format
    and layout in place; False when there is nothing to do. See the module docstring for the
    steps and why a kill at any of them loses nothing."""
    if not needs_upgrade(store):
        return False
    if is_url(store.path):
        raise InputError(f"{store.path}: a format-1 store can only be upgraded on a local disk "
                         "(`hashtagkit upgrade` a local copy, then upload it)")
    g = store.group
    old = store.format
    fill = features_fill(store)
    if needs_format_upgrade(store):
        if UPGRADING not in g.attrs:
            act("mark upgrading", g.attrs.__setitem__, UPGRADING, {"from": old})
        for folder, group in feature_groups(store):
            rechunk(folder, group, "done", (1,))
            if "done" in group and "chunk_log" not in group:
                act("add chunk_log", create_chunk_log, group, int(group["done"].shape[0]))
        rechunk(Path(store.path), g, "paths", (min(max(store.n_rows, 1), PATH_CHUNK_ROWS),))
    for what, fn, args in layout_steps(store):
        act(what, fn, *args)
    if UPGRADING in g.attrs:
        meta = dict(g.attrs["hashtagkit"])
        if meta.get("format") != FORMAT:
            act("set format", g.attrs.__setitem__, "hashtagkit", {**meta, "format": FORMAT})
        act("unmark upgrading", g.attrs.__delitem__, UPGRADING)
    if log is not None:
        log(upgrade_message(store, old, fill))
    return True


def features_fill(store: Store):
    """The fill value of the store's features (None without features), from its `zarr.json`."""
    file = Path(store.path) / "features" / "zarr.json"
    return json.loads(file.read_text()).get("fill_value") if file.is_file() else None


def upgrade_message(store: Store, old: int, fill_before) -> str:
    """The line that says what the upgrade did."""
    fill = features_fill(store)
    if fill is None or is_nan(fill_before):
        nan = ""
    elif is_nan(fill):
        nan = "; rows not extracted read as NaN"
    else:
        nan = ("; the features' fill value stays 0: a done chunk of zeros was stored as no file, which "
               "NaN would change")
    layout = (f"dimensions named {', '.join(dict.fromkeys(d for dims in DIMS.values() for d in dims))}, "
              f"the hashtags as `tag` coordinate, {COORDINATES.replace(' ', ' and ')} as coordinates along "
              f"image: xarray opens it{nan}")
    if old < FORMAT:
        return (f"upgraded {store.path} to store format {FORMAT} (one object per done flag and per chunk log, "
                f"paths in chunks of {PATH_CHUNK_ROWS:,}): several workers can now write it at once; {layout}")
    return f"upgraded {store.path} to the current layout of store format {FORMAT} ({layout})"
