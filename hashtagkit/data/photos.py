"""Where a row's photo comes from: a file under a local folder, an object under a URL prefix
(`s3://bucket/photos/`), or a member of a webdataset tar shard (`hashtagkit.data.webdataset`).

Every kind answers the same question, `photos.get(row)`: the bytes (or, for a local file, the
path) that `hashtagkit.images.decode` turns into pixels, or a `DecodeError` whose message is
the reason recorded for the row ("missing", "unreadable (...)"). The extraction reader, `show`
and the Dask workers take a `Photos`; none of them knows where the bytes live. A `Photos` is
picklable (a DataLoader's worker processes and Dask's workers each get a copy) and opens its
file system lazily in the process that reads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hashtagkit import remote
from hashtagkit.images import DecodeError


class Photos:
    """Rows' photos: `get(row)` -> bytes or a local Path, or raises DecodeError (the reason).
    `paths` is indexed by store row (a list, or a dict of the rows a worker reads)."""

    root: str | Path
    paths: Sequence[str] | Mapping[int, str]

    def get(self, row: int) -> bytes | Path:
        raise NotImplementedError

    def prefetch(self, rows: Sequence[int]) -> None:
        """A hint that `rows` are read next (a batch): a remote kind may fetch them together."""

    def stamps(self) -> list[str | None]:
        """Per path (in order), what changes when its photo is replaced (size and modification
        time or ETag), None for a photo that is not there: what a resume compares."""
        raise NotImplementedError


class FolderPhotos(Photos):
    """Files under a local folder: `get` gives the path (decode opens it, bounded)."""

    def __init__(self, root: str | Path, paths: Sequence[str] | Mapping[int, str]):
        self.root, self.paths = Path(root), paths

    def get(self, row: int) -> Path:
        return self.root / self.paths[row]

    def stamps(self) -> list[str | None]:
        out = []
        for rel in self.paths:
            try:
                st = os.stat(self.root / rel)
                out.append(f"{st.st_size}\0{st.st_mtime_ns}")
            except OSError:
                out.append(None)
        return out


class URLPhotos(Photos):
    """Objects under a URL prefix: one GET per photo, retried through transient faults
    (`remote.retrying`); a missing object is the row's reason "missing", as a missing file is."""

    def __init__(self, root: str, paths: Sequence[str] | Mapping[int, str],
                 storage_options: Mapping[str, Any] | None = None):
        self.root, self.paths = str(root).rstrip("/"), paths
        self.storage_options = remote.storage_options(storage_options)

    def stamps(self) -> list[str | None]:
        """One listing of the prefix (a request per 1,000 objects), not a request per photo."""
        fs, path = remote.filesystem(self.root, self.storage_options)
        found = remote.retrying(lambda: fs.find(path, detail=True), f"listing {self.root}")
        by_rel = {name[len(path):].lstrip("/"): f"{info.get('size')}\0{info.get('ETag') or info.get('mtime')}"
                  for name, info in found.items()}
        return [by_rel.get(rel) for rel in self.paths]

    def get(self, row: int) -> bytes:
        url = f"{self.root}/{self.paths[row]}"
        fs, path = remote.filesystem(url, self.storage_options)
        try:
            return remote.retrying(lambda: fs.cat_file(path), f"reading {url}")
        except FileNotFoundError:
            raise DecodeError("missing") from None
        except remote.StoreUnreachable:
            raise
        except (OSError, ValueError) as e:
            raise DecodeError(f"unreadable ({str(e).splitlines()[0][:80] if str(e) else type(e).__name__})") from None
