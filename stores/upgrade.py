"""Upgrading a format-1 store to format 2 in place, so that many workers can write it at once.

Format 1 kept `done` and `paths` in one chunk each and had no `chunk_log` (see
`hashtagkit.stores.store`). The upgrade, in the store's root and in every subgroup holding
features (the write-aside group of an interrupted `extract --overwrite`):

1. marks the group as being upgraded (attr `UPGRADING`: readers of paths and features are told
   to finish it, never shown a half-moved array);
2. rebuilds `done` with one chunk per flag and `paths` in chunks of `PATH_CHUNK_ROWS`, each under
   a temporary name (`done.format2`) that is marked complete (attr `COMPLETE`) only after all its
   data is written, and then moved over the old array (the old folder removed, the new renamed);
3. adds an empty `chunk_log` beside every `done`;
4. sets the format to 2 and removes the mark.

Killed at any step, running it again finishes the job: a temporary that is not marked complete is
rebuilt from the old array (which is untouched until a complete copy exists), a complete one is
moved in (whether or not the old one was already removed), and every step checks whether it is
already done. No done flag and no path is lost. It moves folders, so it works on a local store
only, under the store's lock (the coordinator's job, like every change of the group's
attributes); a store at a URL is written as format 2 from the start.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zarr

from hashtagkit.errors import InputError
from hashtagkit.stores.store import FORMAT, PATH_CHUNK_ROWS, UPGRADING, Store, create_chunk_log, is_url, move_array

TMP = ".format2"  # suffix of an array rebuilt aside
COMPLETE = "hashtagkit_upgrade_complete"  # attr of a rebuilt array once all its data is written


def needs_upgrade(store: Store) -> bool:
    """A format-1 store, or one whose upgrade was interrupted."""
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
    # the folders, not `group.groups()`: zarr warns about the lock file it finds among them
    for folder in sorted(p for p in root.iterdir() if (p / "zarr.json").is_file()):
        if json.loads((folder / "zarr.json").read_text()).get("node_type") != "group":
            continue
        sub = store.group[folder.name]
        if any(k == "done" or k.startswith("done" + TMP) for k in sub.array_keys()):
            out.append((folder, sub))
    return out


def upgrade_store(store: Store, log: Callable[[str], None] | None = None) -> bool:
    """Upgrade a format-1 store (opened 'r+', its lock held by the caller) to format 2 in place;
    False when there is nothing to do. See the module docstring for the steps and why a kill at
    any of them loses nothing."""
    if not needs_upgrade(store):
        return False
    if is_url(store.path):
        raise InputError(f"{store.path}: a format-1 store can only be upgraded on a local disk "
                         "(`hashtagkit upgrade` a local copy, then upload it)")
    g = store.group
    old = store.format
    if UPGRADING not in g.attrs:
        act("mark upgrading", g.attrs.__setitem__, UPGRADING, {"from": old})
    for folder, group in feature_groups(store):
        rechunk(folder, group, "done", (1,))
        if "done" in group and "chunk_log" not in group:
            act("add chunk_log", create_chunk_log, group, int(group["done"].shape[0]))
    rechunk(Path(store.path), g, "paths", (min(max(store.n_rows, 1), PATH_CHUNK_ROWS),))
    meta = dict(g.attrs["hashtagkit"])
    if meta.get("format") != FORMAT:
        act("set format", g.attrs.__setitem__, "hashtagkit", {**meta, "format": FORMAT})
    act("unmark upgrading", g.attrs.__delitem__, UPGRADING)
    if log is not None:
        log(f"upgraded {store.path} to store format {FORMAT} (one object per done flag and per chunk log, "
            f"paths in chunks of {PATH_CHUNK_ROWS:,}): several workers can now write it at once")
    return True
