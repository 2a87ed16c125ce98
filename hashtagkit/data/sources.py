"""Which `Photos` a store's rows read (`hashtagkit.data.photos`): files under a folder, objects
under a URL prefix, or members of webdataset shards; and the checks of a photo root that every
command taking `--images` shares."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hashtagkit import remote
from hashtagkit.data.photos import FolderPhotos, Photos, URLPhotos


def photos_for(root: str | Path, paths: Sequence[str] | Mapping[int, str], members: Any = None,
               storage_options: Mapping[str, Any] | None = None) -> Photos:
    """The `Photos` of a store's rows: webdataset shards when the store has `members` (each
    row's byte range in its shard), objects under `root` when it is a URL, else files."""
    if members is not None:
        from hashtagkit.data.webdataset import ShardPhotos  # torch-free, but only a shard store needs it

        return ShardPhotos(root, paths, members, storage_options)
    if remote.is_remote(root):
        return URLPhotos(str(root), paths, storage_options)
    return FolderPhotos(remote.local_path(root), paths)


def image_root(root: str | os.PathLike | None) -> str | Path | None:
    """A photo folder as recorded and compared: a local one resolved to its absolute path, a
    URL prefix as given (no trailing slash)."""
    if root is None or str(root) == "":
        return None
    root = remote.normalise(root)
    return root.resolve() if isinstance(root, Path) else root


def root_problem(root: str | Path | None, storage_options: Mapping[str, Any] | None = None) -> str | None:
    """Why photos cannot be read from `root` (None when they can): no folder given, a local
    folder that does not exist, or a URL prefix the store cannot be reached at."""
    if root is None or root == "":
        return "no image folder is known"
    if not remote.is_remote(root):
        folder = remote.local_path(root)
        if folder.exists() and not folder.is_dir():
            return f"image folder {folder} is a file, not a folder"
        return None if folder.is_dir() else f"image folder {folder} does not exist"
    fs, path = remote.filesystem(str(root), storage_options)
    try:
        remote.retrying(lambda: fs.ls(path, detail=False), f"listing {root}")
    except FileNotFoundError:
        return f"image prefix {root} does not exist"
    except (OSError, PermissionError) as e:
        return f"image prefix {root} cannot be listed ({str(e).splitlines()[0][:80]})"
    return None
