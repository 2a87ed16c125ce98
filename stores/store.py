"""The store: one Zarr v3 group per dataset, holding everything a step hands to the next.

| member      | dimensions / type            | meaning                                                 |
|-------------|------------------------------|---------------------------------------------------------|
| `labels`    | (image, tag) uint8 multi-hot | tag = vocabulary size                                   |
| `tag`       | (tag,) str                   | the vocabulary again: the tag dimension's coordinate    |
| `split`     | (image,) uint8               | 0 train, 1 test, 2 val; seed and sha256 in attrs `split`|
| `paths`     | (image,) str, chunks 4,096   | image path relative to attrs `hashtagkit.image_root`    |
| `features`  | (image, feature) float16/32  | added by `extract`; chunks (rows, D); fill NaN; `blocks`|
| `valid`     | (image,) bool, chunks rows   | the row's image decoded (else `reason` says why)        |
| `reason`    | (image,) str, chunks rows    | why an image failed, '' for a valid row                 |
| `chunk_log` | (chunk,) str, chunks (1,)    | JSON: who computed chunk c (run, host, worker, pid, ...)|
| `done`      | (chunk,) bool, chunks (1,)   | chunk c's rows of features/valid/reason are written     |
| attrs       | `vocab`, `split`, `blocks`, `extraction`, `hashtagkit` (format, kind, image root, ...) |

docs/store-format.md is the exact reference (dtypes, fill values, every attribute). Every array
names its dimensions (`DIMS`) and the per-image ones name `paths` and `split` as their CF
`coordinates`, so `xarray.open_zarr(STORE, consolidated=False)` gives a Dataset sliced by image,
tag and feature. A store has no consolidated metadata, on purpose: its writer adds arrays and
attributes as it goes, and a stale consolidated copy would mislead every Zarr reader.

Format 2 (this one) lets many processes write one store at once: whatever a worker writes for
chunk c (its rows of `features`, `valid`, `reason`, then `chunk_log[c]`, then `done[c]`) is a
Zarr chunk object of its own, so workers writing different chunks never read-modify-write a
shared object (Zarr v3 is safe for concurrent writers of *different* chunks only). The group's
attributes are written by the coordinating process alone. Format 1 (hashtagkit before it) kept
`done` and `paths` in one chunk each and had no `chunk_log`: it is still read, and
`upgrade_store` (`hashtagkit upgrade`, or any `extract`) rewrites it in place; so it does a
format-2 store of the layout before the named coordinates (dimensions row/class, fill 0).

Rows per chunk are chosen so a chunk is a few MiB: big enough to compress and read fast,
small enough that a resumed extraction loses little. A store is created complete or not at
all (written to a hidden sibling, then renamed). One process writes a store at a time
(`store_lock`, on `STORE.lock` beside the store's folder). A done chunk always has its files;
one that is missing or does not decode is an error naming it, never rows of zeros or NaN
(`damaged_chunks`, `hashtagkit info --verify`); rows of a chunk not done read as NaN to a
plain reader, and hashtagkit reads features only from a complete store.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import zarr
import zarr.codecs

from hashtagkit import provenance, remote
from hashtagkit.errors import InputError
from hashtagkit.outputs import atomic_dir, refuse_existing
from hashtagkit.stores.objects import STARTED
from hashtagkit.views import mask_view

FORMAT = 2  # 1: `done` and `paths` in one chunk each, no `chunk_log` (see the module docstring)
SPLIT_CODES = {"train": 0, "test": 1, "val": 2}
SPLIT_NAMES = {code: name for name, code in SPLIT_CODES.items()}
CHUNK_BYTES = 4 << 20
LOCK_FILE = ".lock"  # the writer's lock is STORE.lock, beside the store's folder (see `lock_path`)
LEGACY_LOCK_FILE = ".extract.lock"  # where the lock was, inside the store: removed by the next writer
CHUNKED = ("features", "valid", "reason")  # the per-row arrays a done chunk must hold
SWAPPING = "swapping"  # group attr while `extract --overwrite` moves its new arrays in
FILES_MARK = "every_done_chunk_has_files"  # attr of `done`: see Store._files_always_written
UPGRADING = "upgrading_to_format_2"  # group attr while `upgrade_store` rewrites a format-1 store
ROW_ARRAYS = ("features", "labels", "valid")  # what iter_rows reads by default
PATH_CHUNK_ROWS = 4096  # paths per chunk: a worker reads one or two such chunks for its rows
BASE_ARRAYS = ("labels", "split", "paths")  # written whole by `prepare`: every chunk is there
ALL_CHUNKS_MARK = "every_chunk_has_a_file"  # attr of a base array written with its empty chunks too
DTYPES = {"labels": "uint8", "split": "uint8", "valid": "bool", "done": "bool"}  # what each array must hold
# each array's dimensions, by name (Zarr v3 `dimension_names`): xarray opens a store by them. One
# vocabulary: a row is an `image`, a column of labels a `tag` (the `tag` array names them: the tag
# dimension's coordinate), a column of features a `feature`, a feature chunk a `chunk`
DIMS = {"labels": ("image", "tag"), "split": ("image",), "paths": ("image",), "features": ("image", "feature"),
        "valid": ("image",), "reason": ("image",), "done": ("chunk",), "chunk_log": ("chunk",), "tag": ("tag",)}
MEMBERS_DIMS = ("image", "range")  # `members`, of a store of webdataset shards only
# the per-image arrays' non-dimension coordinates: their CF `coordinates` attribute, which xarray decodes
COORDINATES = "paths split"
WITH_COORDINATES = ("labels", "features", "valid", "reason")  # the data variables along `image`
# CF flags of `split`, so a plain reader sees what its codes mean
SPLIT_FLAGS = {"flag_values": list(SPLIT_NAMES), "flag_meanings": " ".join(SPLIT_NAMES.values())}


def is_url(path: str | Path) -> bool:
    """A store in object storage (s3://, gs://...; `file://` is a local path): no rename, no
    locks, no chunk files to stat; `hashtagkit.stores.objects` does those parts there."""
    return remote.is_remote(path)


def rows_per_chunk(row_bytes: int, target: int = CHUNK_BYTES) -> int:
    """Rows in a chunk of about `target` bytes (at least one row)."""
    return max(1, target // max(1, row_bytes))


def split_sha256(split: np.ndarray) -> str:
    """The fingerprint a run records, so evaluation can prove it uses the split it trained on."""
    return provenance.sha256_bytes(np.ascontiguousarray(split, dtype=np.uint8).tobytes())


def lock_path(path: str | Path) -> Path:
    """The writer's lock of a local store: `STORE.lock`, a file beside the store's folder (of the
    folder itself where the path is a symbolic link). Not inside it: zarr warns about every file in
    a group's folder that is not a Zarr node (listing the hierarchy, and so opening it in
    xarray). The file stays between writes (removing a lock file on release races with the
    next writer's open); it is empty but for the holder's pid."""
    real = Path(path).resolve()
    return real.with_name(real.name + LOCK_FILE)


@contextlib.contextmanager
def store_lock(path: str | Path, doing: str = "written", storage_options: dict | None = None) -> Iterator[None]:
    """One writer per store: an OS lock on `lock_path(path)`, beside the store, released even if
    the process is killed. `extract` holds it while it writes; `create_store` takes the old
    store's lock before replacing it, so `prepare --overwrite` cannot rename a store away under
    an extraction (nor start one on a store being replaced). The lock outlives the store folder
    it guards, so a replaced store keeps its lock.

    A POSIX record lock (`lockf`), not `flock`: decode workers are forked children, and an
    `flock` lock belongs to the open file they inherit, so after a SIGKILL of the main process
    the orphaned workers kept the store locked for seconds and the resume was refused. A
    record lock belongs to the process that took it and dies with it. `doing` ("extracted",
    "replaced") completes the refusal another process gets: "... is being extracted by ...".

    Stores used to hold their lock inside (`LEGACY_LOCK_FILE`): the holder of the new lock
    removes that file unless a process holds it (a hashtagkit from before, still writing: then
    this is refused as any held lock is), and a store where it cannot be removed (read-only) only
    keeps a harmless file.

    A store at a URL (s3://...) has no file to lock: there the lock is a lease object beside the
    store (`hashtagkit.stores.objects.Lease`), taken and renewed with conditional writes."""
    if is_url(path):
        from hashtagkit.stores.objects import Lease

        with Lease(str(path), doing, storage_options):
            yield
        return
    path, lock = remote.local_path(path), lock_path(path)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:  # a read-only folder or disk: the store cannot be written anyway
        raise InputError(f"{path} cannot be {doing}: {e.strerror} ({lock})") from None
    try:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, but say so
            fcntl = None
            warnings.warn("no file locking on this platform: run one writer per store at a time", stacklevel=3)
        if fcntl is not None:
            _take(fd, path)
            _remove_legacy_lock(path)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}:{doing}".encode(), 0)  # what the refused one is told
        yield
    finally:
        os.close(fd)


def _take(fd: int, path: Path) -> None:
    """Lock the open lock file `fd`, or refuse naming the process that holds it."""
    import fcntl

    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # EAGAIN / EACCES: held by another process
        pid, _, what = os.pread(fd, 80, 0).decode(errors="replace").strip().partition(":")
        raise InputError(f"{path} is being {what or 'written'} by another process ({pid or 'unknown pid'}); "
                         "wait for it to finish") from None


def _remove_legacy_lock(path: Path) -> None:
    """Remove the lock file a store used to hold inside it (`LEGACY_LOCK_FILE`), unless held."""
    old = path / LEGACY_LOCK_FILE
    try:
        fd = os.open(old, os.O_RDWR)
    except OSError:  # none (the usual case), or one this process may not open: leave it
        return
    try:
        _take(fd, path)  # held: an older hashtagkit is writing the store
        with contextlib.suppress(OSError):  # a read-only store keeps it: zarr only warns about it
            os.unlink(old)
    finally:
        os.close(fd)


def _compressors() -> list:
    """zstd, then a CRC32C checksum of each chunk object: bit rot in a file is an error when it
    is read, not other numbers (without it most single-bit flips decoded to other values)."""
    return [zarr.codecs.ZstdCodec(level=3), zarr.codecs.Crc32cCodec()]


def feature_compressors() -> list:
    """The features' codec: plain zstd level 1, which on ReLU-like float16 features compressed
    better and wrote faster than Blosc zstd + shuffle and lz4; benchmarks/extract_throughput.py
    measures it against .npy on every run (benchmarks/results/extract_throughput.md). CRC32C
    after it, so damage on disk is found on read."""
    return [zarr.codecs.ZstdCodec(level=1), zarr.codecs.Crc32cCodec()]


def create_store(
    path: str | Path,
    *,
    paths: Sequence[str],
    labels: np.ndarray,
    vocab: Sequence[str],
    split: np.ndarray,
    split_info: dict,
    kind: str,
    image_root: str | None,
    synthetic: bool = False,
    source: dict | None = None,
    overwrite: bool = False,
    fill: Callable[[Store], None] | None = None,
    members: np.ndarray | None = None,
    storage_options: dict | None = None,
) -> Store:
    """Write a new store (atomically) and return it opened read-only.

    `split_info` describes how the split was made (seed, method, sizes); its sha256 is
    computed here from the array itself, never trusted from the caller. `fill`, if given,
    writes more (e.g. generated features) into the store before it is renamed into place.
    `members` (n, 2) int64, for photos inside webdataset shards: each row's member's byte
    offset and size within its shard (`paths` names shard and member, `shard.tar#key.jpg`).
    `labels` (anything with a shape, sliced by rows) and `paths` (a sequence) are written one
    chunk at a time, so labels made on demand never exist whole.
    """
    if not hasattr(labels, "shape"):
        labels = np.asarray(labels)
    split = np.asarray(split)
    n = len(paths)
    if tuple(labels.shape) != (n, len(vocab)):
        raise ValueError(f"labels shape {labels.shape} != ({n}, {len(vocab)})")
    if split.shape != (n,):
        raise ValueError(f"split shape {split.shape} != ({n},)")
    if not set(np.unique(split).tolist()) <= set(SPLIT_NAMES):
        raise ValueError("split codes must be 0 (train), 1 (test) or 2 (val)")
    if len(set(vocab)) != len(vocab):
        raise ValueError("vocabulary has duplicate hashtags")
    counts = {name: int((split == code).sum()) for name, code in SPLIT_CODES.items()}
    def write(group: zarr.Group, handle: str | Path) -> None:
        c = max(1, len(vocab))
        every = {"write_empty_chunks": True}  # a chunk of zeros gets its file too: a missing one is damage
        marked = {ALL_CHUNKS_MARK: True}
        lab = group.create_array(
            "labels", shape=labels.shape, dtype="uint8", chunks=(min(max(n, 1), rows_per_chunk(c)), c),
            compressors=_compressors(), config=every, attributes={**marked, "coordinates": COORDINATES},
            dimension_names=DIMS["labels"],
        )
        for a in range(0, n, lab.chunks[0]):  # a chunk at a time: labels may be made on demand
            lab[a : a + lab.chunks[0]] = np.asarray(labels[a : a + lab.chunks[0]], dtype=np.uint8)
        sp = group.create_array("split", shape=(n,), dtype="uint8", chunks=(max(n, 1),), compressors=_compressors(),
                                config=every, attributes={**marked, **SPLIT_FLAGS}, dimension_names=DIMS["split"])
        sp[...] = split.astype(np.uint8)
        pa = group.create_array("paths", shape=(n,), dtype=str, chunks=(min(max(n, 1), PATH_CHUNK_ROWS),),
                                compressors=_compressors(), config=every, attributes=marked,
                                dimension_names=DIMS["paths"])
        for a in range(0, n, PATH_CHUNK_ROWS):
            pa[a : a + PATH_CHUNK_ROWS] = np.asarray(list(paths[a : a + PATH_CHUNK_ROWS]), dtype=str)
        create_tag_array(group, vocab)
        if members is not None:
            create_members_array(group, members)
        meta = {"format": FORMAT, "kind": kind, "synthetic": bool(synthetic), "image_root": image_root,
                "source": source or {}, "provenance": provenance.record()}
        group.attrs.update({"vocab": list(vocab), "split": {**split_info, "counts": counts,
                                                             "sha256": split_sha256(split)},
                            "blocks": [], STARTED: meta})
        if fill is not None:
            fill(Store(handle, group, storage_options))
        # last: the group is a hashtagkit store from this write on (what a store at a URL, written
        # in place, relies on; a local one is renamed into place after it anyway)
        group.attrs.update({"hashtagkit": meta})
        del group.attrs[STARTED]

    if is_url(path):  # object storage: no rename; written in place, marked a store by its last write
        from hashtagkit.stores.objects import refuse_existing_url, remove_prefix

        url = str(remote.normalise(path))
        replacing = refuse_existing_url(url, overwrite, storage_options)
        with store_lock(url, "replaced" if replacing else "created", storage_options):
            if replacing:
                remove_prefix(url, storage_options)
            write(zarr.open_group(url, mode="w", zarr_format=3,
                                  storage_options=remote.zarr_options(url, storage_options)), url)
        return open_store(url, storage_options=storage_options)
    path = remote.local_path(path)
    old = refuse_existing(path, overwrite, kind="store")  # before the lock touches anything in it
    replacing = overwrite and (old / "zarr.json").is_file()
    # the old store's writer (an extract) must finish first; held until the swap is done
    with (store_lock(old, "replaced") if replacing else contextlib.nullcontext()), \
            atomic_dir(path, overwrite=overwrite, kind="store") as tmp:
        write(zarr.open_group(tmp, mode="w", zarr_format=3), tmp)
    return open_store(path)


def open_store(path: str | Path, mode: str = "r", check: bool = True, *,
               storage_options: dict | None = None) -> Store:
    """Open an existing store; a path that is not a hashtagkit store is a clear user error, and
    so (with `check`) is one whose arrays' metadata or base chunks are damaged (`damaged_base`).

    `path` may be a URL (s3://bucket/h.zarr, gs://..., file://...), opened with
    `storage_options` (else the process's: `hashtagkit.remote.storage_options`). The handle keeps
    them, so everything it opens again (a refresh, a Dask worker's copy) uses the same."""
    path = remote.normalise(path)
    if not is_url(path) and not path.exists():
        raise InputError(f"store {path} does not exist (make one with `hashtagkit prepare`)")
    opts = remote.storage_options(storage_options) if is_url(path) else None
    try:
        group = _open_group(path, mode, opts)
    except InputError:
        raise
    except FileNotFoundError as e:
        if is_url(path):
            raise InputError(f"store {path} does not exist (make one with `hashtagkit prepare`)") from None
        raise InputError(f"{path} is not a Zarr v3 store: {e}") from None
    except Exception as e:  # zarr raises several types for "not a group"
        raise InputError(f"{path} is not a Zarr v3 store: {str(e).splitlines()[0] if str(e) else type(e).__name__}") \
            from None
    meta = group.attrs.get("hashtagkit")
    if not isinstance(meta, dict) and STARTED in group.attrs:
        raise InputError(f"{path}: its `prepare` did not finish; make it again with {{opt:overwrite=True}}")
    if not isinstance(meta, dict) or "labels" not in group or "split" not in group:
        raise InputError(f"{path} is a Zarr group but not a hashtagkit store (no labels/split)")
    if meta.get("format", 0) > FORMAT:
        raise InputError(f"{path} was written by a newer hashtagkit (format {meta['format']}); upgrade")
    store = Store(path, group, opts)
    if check:
        store.refuse_damaged_base()
    return store


def _open_group(path: str | Path, mode: str, options: dict | None) -> zarr.Group:
    """The store's Zarr group; at a URL through fsspec with the storage options (and
    hashtagkit's retry defaults), transient faults retried."""
    if not is_url(path):
        return zarr.open_group(path, mode=mode, zarr_format=3)
    url = str(path)
    return remote.retrying(lambda: zarr.open_group(url, mode=mode, zarr_format=3,
                                                   storage_options=remote.zarr_options(url, options)),
                           f"opening {url}")


def describe_blocks(blocks: Sequence[dict], dtype: str | None = None) -> str:
    """'object: vgg16-object (random, seed 3), scene: vgg16-scene (sha256 5c1f0a...) as float16':
    enough to tell two extractions apart in one line (a random block's seed included)."""
    def one(b: dict) -> str:
        w = b.get("weights") or {}
        made = f"random, seed {w.get('seed')}" if w.get("source") == "random" else \
            f"sha256 {str(w.get('sha256'))[:12]}" if w.get("sha256") else str(w.get("source") or "unknown weights")
        return f"{b.get('name')}: {b.get('backbone')} ({made})"
    return (", ".join(one(b) for b in blocks) or "no features") + (f" as {dtype}" if dtype else "")


def blocks_differ_in(have: Sequence[dict], want: Sequence[dict]) -> str:
    """' (they differ in their preprocessing)' when `describe_blocks` alone shows no difference."""
    if describe_blocks(have) != describe_blocks(want):
        return ""
    fields = ("name", "backbone", "columns", "weights", "seed", "preprocessing")
    pairs = zip(Store.block_signatures_of(list(have)), Store.block_signatures_of(list(want)), strict=False)
    names = sorted({fields[i] for a, b in pairs for i in range(len(fields)) if a[i] != b[i]})
    return f" (they differ in their {', '.join(names)})" if names else ""


def read_per_chunk(arr: zarr.Array, damaged) -> list:
    """The elements of a format-2 array of one object per element (`done`, `chunk_log`); an
    element whose object does not decode (a damaged file) reads as `damaged` instead of failing
    every reader of the store. Another chunking (format 1's one-chunk `done`) keeps the error."""
    try:
        return np.asarray(arr[...]).tolist()
    except Exception as e:  # zarr and its codecs raise many types for a damaged file
        if arr.chunks != (1,) or remote.transient(e):  # an object store's passing fault is no damage
            raise
    out = []
    for c in range(arr.shape[0]):
        try:
            out.append(np.asarray(arr[c]).item())
        except Exception as e:  # noqa: BLE001 - this element's object is damaged
            if remote.transient(e):
                raise
            out.append(damaged)
    return out


def chunk_bounds(chunk: int, chunk_rows: int, n_rows: int) -> tuple[int, int]:
    """The rows (start, stop) of chunk `chunk` of an array of `n_rows` rows in chunks of
    `chunk_rows` (the last one may be short): the one place this arithmetic is written."""
    return chunk * chunk_rows, min((chunk + 1) * chunk_rows, n_rows)


def move_array(new: Path, old: Path) -> None:
    """The complete array folder `new` takes the place of `old` (which may be gone already): one
    step of a swap or an upgrade, safe to repeat."""
    if old.exists():
        shutil.rmtree(old)
    os.replace(new, old)


def read_done(group: zarr.Group) -> np.ndarray:
    """The group's done flags: a flag that does not decode reads as not done, so the next
    `extract` redoes that chunk."""
    return np.asarray(read_per_chunk(group["done"], False), dtype=bool)


class _KeptMembers:
    """A URL store's Zarr group, its members' handles kept: zarr 3 reads an array's `zarr.json`
    again at every `group[name]` and `name in group`, one request each in object storage (a
    third of an evaluation's requests were those). Member names come from one listing. Any
    other call on the group (creating, deleting, moving members) forgets what was kept; the
    arrays' data is never kept. Local stores use the plain group (a file read is cheap)."""

    _PLAIN = frozenset({"attrs", "path", "store", "name", "basename", "metadata", "read_only", "store_path"})

    def __init__(self, group: zarr.Group):
        self._group = group
        self._members: dict[str, object] = {}
        self._names: set[str] | None = None

    def _forget(self) -> None:
        self._members.clear()
        self._names = None

    def __getitem__(self, name: str):
        if name not in self._members:
            self._members[name] = self._group[name]
        return self._members[name]

    def __contains__(self, name: str) -> bool:
        if "/" in name:
            return name in self._group
        if self._names is None:
            self._names = set(self._group.keys())
        return name in self._names

    def __delitem__(self, name: str) -> None:
        self._forget()
        del self._group[name]

    def __getattr__(self, name: str):
        if name not in self._PLAIN:
            self._forget()  # a method that may add, remove or move members
        return getattr(self._group, name)


class Store:
    """Read access to a store (and, opened with mode 'r+', the handle `extract` writes through)."""

    def __init__(self, path: str | Path, group: zarr.Group, storage_options: dict | None = None):
        self.path = path
        self.group = _KeptMembers(group) if is_url(path) and not isinstance(group, _KeptMembers) else group
        self.storage_options = storage_options  # a URL store's (secrets: never printed nor recorded)

    def __repr__(self) -> str:
        return f"<hashtagkit Store {self.path}>"

    def refresh(self) -> Store:
        """Read the store's metadata again (Zarr reads it once, at open): after an `extract`
        through another handle, this one sees the new features. Returns self."""
        root = _open_group(self.path, "r" if self.group.store.read_only else "r+", self.storage_options)
        self.group = root[self.group.path] if self.group.path else root
        return self

    # --- what the store describes -------------------------------------------------------
    @property
    def meta(self) -> dict:
        return dict(self.group.attrs["hashtagkit"])

    @property
    def format(self) -> int:
        """1 for stores written before per-chunk objects (see the module docstring), else 2."""
        return int(self.meta.get("format", 1))

    @property
    def vocab(self) -> list[str]:
        return list(self.group.attrs["vocab"])

    @property
    def n_rows(self) -> int:
        return int(self.group["labels"].shape[0])

    @property
    def n_classes(self) -> int:
        return int(self.group["labels"].shape[1])

    @property
    def split_info(self) -> dict:
        return dict(self.group.attrs["split"])

    @property
    def blocks(self) -> list[dict]:
        return list(self.group.attrs.get("blocks", []))

    @property
    def image_root(self) -> str | None:
        return self.meta.get("image_root")

    # --- rows -------------------------------------------------------------------------------
    def split(self) -> np.ndarray:
        return np.asarray(self.group["split"][...])

    def split_rows(self, name: str) -> np.ndarray:
        """Row indices of one split, ascending.

        Reads the whole `split` array: one byte a row (1 MB at a million rows), stored as one
        chunk, so there is nothing smaller to read; the indices it returns are what costs."""
        if name not in SPLIT_CODES:
            raise InputError(f"unknown split {name!r}: choose one of {', '.join(SPLIT_CODES)}")
        return np.flatnonzero(self.split() == SPLIT_CODES[name])

    def row_indices(self, rows: np.ndarray | Sequence[int]) -> np.ndarray:
        """`rows` as int64 indices: a boolean mask becomes its indices, negative ones count
        from the end, out of range is a clear error rather than numpy's IndexError."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            if rows.shape != (self.n_rows,):
                raise InputError(f"{self.path}: a row mask of {rows.shape} for {self.n_rows} rows")
            return np.flatnonzero(rows)
        rows = rows.astype(np.int64, copy=False).ravel()
        rows = np.where(rows < 0, rows + self.n_rows, rows)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_rows):
            raise InputError(f"{self.path}: row {int(rows[(rows < 0) | (rows >= self.n_rows)][0])} is out of range "
                             f"(the store has {self.n_rows} rows)")
        return rows

    def _read_rows(self, name: str, rows: np.ndarray | Sequence[int] | None) -> np.ndarray:
        """Rows of a per-row array, in the order asked, decoding only the chunks that hold
        them (an orthogonal selection of the distinct rows: Zarr fetches just the chunks it
        touches), so a few rows of an N x C array never cost the whole array."""
        arr = self.group[name]
        if rows is None:
            return np.asarray(arr[...])
        rows = self.row_indices(rows)
        if rows.size == 0:
            return np.zeros((0, *arr.shape[1:]), dtype=arr.dtype)
        wanted, back = np.unique(rows, return_inverse=True)
        sel = (wanted,) + (slice(None),) * (arr.ndim - 1)
        data = np.asarray(arr.get_orthogonal_selection(sel))
        return data if len(wanted) == len(rows) and np.array_equal(wanted, rows) else data[back]

    def labels(self, rows: np.ndarray | Sequence[int] | None = None) -> np.ndarray:
        """Multi-hot labels of `rows` (all by default), reading only the label chunks that
        hold them. For every row of a large store, prefer `iter_rows(what=("labels",))`."""
        return self._read_rows("labels", rows)

    def paths(self, rows: np.ndarray | Sequence[int] | None = None) -> list[str]:
        """Image paths of `rows` (all by default), reading only the path chunks that hold them."""
        self._refuse_upgrading()
        arr = self.group["paths"]
        if rows is None:
            return [str(p) for p in np.asarray(arr[...]).tolist()]  # numpy StringDType; tolist gives str
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        rows = np.where(rows < 0, rows + self.n_rows, rows).astype(np.int64)
        if rows.size == 0:
            return []
        wanted, back = np.unique(rows, return_inverse=True)
        data = np.asarray(arr.get_orthogonal_selection(wanted))
        return [str(p) for p in data[back].tolist()]

    def paths_range(self, start: int, stop: int) -> list[str]:
        """Paths of rows start..stop-1: what a worker reads for its chunk (only Zarr reads)."""
        return [str(p) for p in np.asarray(self.group["paths"][start:stop]).tolist()]

    def members(self, rows: np.ndarray | Sequence[int] | None = None) -> np.ndarray | None:
        """(byte offset, size) within their webdataset shard of `rows` (all by default), reading
        only the chunks that hold them; None for a store whose photos are files (see
        `create_store`'s `members`)."""
        return self._read_rows("members", rows) if "members" in self.group else None

    def chunk_range(self, chunk: int) -> tuple[int, int]:
        """The rows (start, stop) of feature chunk `chunk`."""
        return chunk_bounds(chunk, self.chunk_rows(), self.n_rows)

    def damaged_base(self, decode: bool = False) -> list[str]:
        """What is wrong with the arrays every store holds, one line each: a base array missing or
        whose metadata does not parse, an array whose dtype is not what hashtagkit wrote (its
        zarr.json edited), and, in a local store written with every chunk's file
        (`ALL_CHUNKS_MARK`), a labels, split or paths chunk whose file is missing (Zarr would read
        it as zeros: labels silently empty): a stat per chunk file. With `decode`, every base
        chunk is read too (a flipped bit fails its checksum): what `info --verify` does."""
        out, arrays = [], {}
        for name in (*BASE_ARRAYS, *(n for n in DTYPES if n not in BASE_ARRAYS), "features"):
            try:
                if name in self.group:
                    arrays[name] = self.group[name]
                elif name in BASE_ARRAYS:
                    out.append(f"{name} is missing")
            except Exception as e:  # noqa: BLE001 - zarr raises many types for metadata it cannot parse
                out.append(f"{name}'s metadata does not parse ({type(e).__name__}: {str(e).splitlines()[0][:80]})")
        for name, arr in arrays.items():
            want = ("float16", "float32") if name == "features" else (DTYPES.get(name),)
            if want[0] is not None and np.dtype(arr.dtype) not in [np.dtype(w) for w in want]:
                out.append(f"{name} holds {np.dtype(arr.dtype)}, not {'/'.join(want)} (its zarr.json was edited)")
        folder = None if is_url(self.path) else Path(self.path) / self.group.path
        listed = self._listed([n for n in BASE_ARRAYS if n in arrays]) if folder is None else None
        for name in BASE_ARRAYS:
            arr = arrays.get(name)
            if arr is None:
                continue
            grid = [range(-(-size // chunk)) for size, chunk in zip(arr.shape, arr.chunks, strict=True)]
            for coords in itertools.product(*grid):
                key = arr.metadata.encode_chunk_key(coords)
                present = f"{name}/{key}" in listed if listed is not None else (folder / name / key).is_file()
                # written before the mark, a chunk of zeros may rightly have no file
                if arr.attrs.get(ALL_CHUNKS_MARK, False) and not present:
                    out.append(f"{name} chunk {name}/{key} is missing")
                    break  # one per array says enough
                if decode:
                    try:
                        arr.blocks[coords]  # the chunk's own rows: Zarr's block indexing
                    except Exception as e:  # noqa: BLE001 - zarr and its codecs raise many types
                        if remote.transient(e):
                            raise
                        out.append(f"{name} chunk {name}/{key} does not decode "
                                   f"({type(e).__name__}: {str(e).splitlines()[0][:60]})")
                        break
        return out

    def _listed(self, names: Sequence[str]) -> set[str]:
        """The objects of these arrays of a store at a URL, as keys relative to the group
        (`features/c/3/0`): one listing per array, a request per 1,000 objects."""
        fs, root = remote.filesystem(str(self.path), self.storage_options)
        base = f"{root}/{self.group.path}".rstrip("/")
        out: set[str] = set()
        for name in names:
            found = remote.retrying(lambda n=name: fs.find(f"{base}/{n}"), f"listing {self.path}/{name}")
            out.update(f[len(base) + 1:] for f in found)
        return out

    def refuse_damaged_base(self) -> None:
        damaged = self.damaged_base()
        if damaged:
            raise InputError(f"{self.path} is damaged: {'; '.join(damaged)}; restore it from a copy or make it again "
                             "with `hashtagkit prepare`")

    def verify_split(self) -> str:
        """Recompute the split's sha256 and check it against the recorded one."""
        actual = split_sha256(self.split())
        if actual != self.split_info.get("sha256"):
            raise InputError(f"{self.path}: split array does not match its recorded sha256 (store modified?)")
        return actual

    # --- features ---------------------------------------------------------------------------
    def lock(self, doing: str = "written") -> contextlib.AbstractContextManager:
        """This store's writer lock (see `store_lock`)."""
        return store_lock(self.path, doing, self.storage_options)

    def init_features(self, dim: int, dtype: str, blocks: list[dict], chunk_rows: int | None = None) -> int:
        """Create the empty feature arrays (features, valid, reason, chunk_log, done) and record
        the blocks: the coordinator's job, before any worker writes a chunk.

        Returns the rows per chunk. `done[c]` is the only truth about chunk c: writers set it
        after the chunk's features (see `write_chunk`). `done` and `chunk_log` have one element
        per chunk object, so concurrent writers of different chunks touch different objects."""
        g, n = self.group, self.n_rows
        rows = chunk_rows or rows_per_chunk(dim * np.dtype(dtype).itemsize)
        rows = max(1, min(rows, max(n, 1)))
        coords = {"coordinates": COORDINATES}
        # NaN: rows not extracted yet read as missing to a plain reader, not as zeros (hashtagkit
        # reads only complete stores, and every done chunk has its files: see `write_chunk`)
        g.create_array("features", shape=(n, dim), dtype=dtype, chunks=(rows, dim), compressors=feature_compressors(),
                       fill_value=np.nan, attributes=coords, dimension_names=DIMS["features"])
        g.create_array("valid", shape=(n,), dtype="bool", chunks=(rows,), fill_value=False, compressors=_compressors(),
                       attributes=coords, dimension_names=DIMS["valid"])
        g.create_array("reason", shape=(n,), dtype=str, chunks=(rows,), compressors=_compressors(),
                       attributes=coords, dimension_names=DIMS["reason"])
        n_chunks = max(1, -(-n // rows))
        create_chunk_log(g, n_chunks)
        g.create_array("done", shape=(n_chunks,), dtype="bool", chunks=(1,), fill_value=False,
                       attributes={FILES_MARK: True}, compressors=_compressors(), dimension_names=DIMS["done"])
        g.attrs["blocks"] = blocks
        return rows

    def drop_features(self) -> None:
        for name in ("features", "done", "valid", "reason", "chunk_log"):
            if name in self.group:
                del self.group[name]
        self.group.attrs["blocks"] = []

    def chunk_rows(self) -> int:
        return int(self.group["features"].chunks[0])

    @property
    def feature_dtype(self) -> str | None:
        """The features' storage type (float16, float32), None before any extraction."""
        return str(self.group["features"].dtype) if "features" in self.group else None

    @property
    def feature_width(self) -> int:
        """Columns of the features array (every block's), 0 before any extraction."""
        return int(self.group["features"].shape[1]) if "features" in self.group else 0

    def done_flags(self) -> np.ndarray:
        """Per chunk, whether its features are written (empty before any extraction); a flag
        that does not decode reads as not done, so the next `extract` redoes that chunk."""
        return read_done(self.group) if "done" in self.group else np.zeros(0, bool)

    def invalid_counts(self) -> dict[str, int]:
        """Rows whose image gave no features, by reason ({} before any extraction)."""
        if "reason" not in self.group:
            return {}
        return dict(Counter(r for r in np.asarray(self.group["reason"][...]).tolist() if r))

    @property
    def extraction_record(self) -> dict:
        """How the features were made (the `extraction` attribute; {} before any extraction)."""
        return dict(self.group.attrs.get("extraction") or {})

    def write_extraction_record(self, record: dict) -> None:
        """Replace the `extraction` attribute: the coordinator's job, never a chunk writer's."""
        self.group.attrs["extraction"] = record

    def annotate(self, name: str, value: dict) -> None:
        """Record what made this store beyond the schema (e.g. `planted`'s generator settings)."""
        if name in ("hashtagkit", "vocab", "split", "blocks", "extraction"):
            raise ValueError(f"{name!r} is the store's own attribute")
        self.group.attrs[name] = value

    def write_chunk(self, chunk: int, features: np.ndarray, valid: np.ndarray, reasons: Sequence[str] | None = None,
                    info: dict | None = None) -> None:
        """Write one whole chunk, then its log (`info`, when given), then flag it done: a crash
        in between only loses this chunk. What a worker calls: only Zarr writes, each a whole
        chunk object of its own (features, valid, reason, chunk_log[chunk], done[chunk]), so
        workers writing different chunks at once never touch the same object.

        `info` is the chunk's log: run (index into the record's runs), host, worker, pid,
        device, precision, seconds; `rows`, `invalid` ({reason: count}) and `finished` are
        filled in here unless given. Written with `write_empty_chunks`, so a done chunk always
        has its files (zarr skips a chunk equal to the fill value, e.g. all zeros, and a missing
        file is how `verify` recognises a deleted one)."""
        g = self.group
        start, stop = self.chunk_range(chunk)
        if len(features) != stop - start or len(valid) != stop - start:
            raise ValueError(f"chunk {chunk} has {stop - start} rows, got {len(features)} features, {len(valid)} flags")
        reasons = list(reasons) if reasons is not None else [""] * len(features)
        log = None if info is None else json.dumps({"rows": stop - start,
                                                    "invalid": dict(Counter(r for r in reasons if r)),
                                                    "finished": provenance.now(), **info})

        def write() -> None:
            for name, data in (("features", features.astype(g["features"].dtype, copy=False)), ("valid", valid),
                               ("reason", np.asarray(reasons, dtype=str))):
                g[name].with_config({"write_empty_chunks": True})[start:stop] = data
            if log is not None:
                g["chunk_log"][chunk] = log
            g["done"][chunk] = True  # last

        if is_url(self.path):  # each write replaces one whole object: repeating them is safe
            remote.retrying(write, f"writing chunk {chunk} of {self.path}")
        else:
            write()

    def chunk_log(self) -> list[dict | None]:
        """Per chunk, the log its writer left (see `write_chunk`), None where there is none
        (not computed yet, or computed before format 2)."""
        if "chunk_log" not in self.group:
            return [None] * self.completeness()[1]
        out = []
        for text in read_per_chunk(self.group["chunk_log"], ""):  # the log is advisory: damaged is none
            try:
                out.append(json.loads(text) if text else None)
            except ValueError:
                out.append(None)
        return out

    def has_features(self) -> bool:
        return "features" in self.group and bool(self.blocks)

    def valid(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Which rows have real features (an image that failed to decode has none)."""
        if "valid" not in self.group:
            return np.ones(self.n_rows if rows is None else len(self.row_indices(rows)), bool)
        return self._read_rows("valid", rows)

    def usable_rows(self, rows: np.ndarray) -> tuple[np.ndarray, dict]:
        """`rows` less those whose image failed to decode, with the count left out.

        Every head of a store, popularity included, fits and is scored on these same rows, so
        the rows of one table are comparable. A store without complete features has no
        verdict on its images yet: every row is kept."""
        done, total = self.completeness()
        if not self.has_features() or done < total:
            return rows, {}
        ok = self.valid(rows)
        return (rows, {}) if ok.all() else (rows[ok], {"invalid_image": int((~ok).sum())})

    def block_signatures(self) -> list[tuple]:
        """What makes the feature columns what they are: per block its name, backbone, columns,
        weights (sha256 and seed) and the pixels they were fed (preprocessing). Runs compare it with the store they are scored on."""
        return self.block_signatures_of(self.blocks)

    @staticmethod
    def block_signatures_of(blocks: list[dict]) -> list[tuple]:
        """`block_signatures` of a recorded list of blocks (e.g. a run's)."""
        return [(b.get("name"), b.get("backbone"), tuple(b.get("columns") or ()),
                 (b.get("weights") or {}).get("sha256"), (b.get("weights") or {}).get("seed"),
                 json.dumps(b.get("preprocessing"), sort_keys=True)) for b in blocks]

    def completeness(self) -> tuple[int, int]:
        """(chunks done, chunks in all): `done` is the only truth, a missing chunk reads as zeros."""
        if "done" not in self.group:
            return (0, 0) if not self.has_features() else (0, 1)
        done = read_done(self.group)
        return int(done.sum()), int(done.size)

    def _files_always_written(self) -> bool:
        """Whether every done chunk has its files: true for stores whose features were created
        by this version (`write_chunk` writes empty chunks). Before it, zarr skipped a chunk equal
        to the fill value (every `reason` chunk of a chunk whose images all decoded), so there a
        missing file is no sign of damage and only decoding can tell."""
        return bool(self.group["done"].attrs.get(FILES_MARK, False))

    def damaged_chunks(self, decode: bool = True) -> dict[int, str]:
        """Chunks marked done whose files are missing or (with `decode`) do not decode, with why.

        Without `decode` only the files' presence is checked: a stat per file, cheap enough for
        every read (each array is opened once, not per chunk)."""
        if "done" not in self.group:
            return {}
        rows, n = self.chunk_rows(), self.n_rows
        arrays = {name: self.group[name] for name in CHUNKED}
        # a stat per file on a local disk; at a URL one listing of the arrays (a request per 1,000 objects)
        check_files = self._files_always_written()
        listed = self._listed(CHUNKED) if check_files and is_url(self.path) else None
        damaged = {}
        for c in np.flatnonzero(read_done(self.group)).tolist():
            if check_files:
                # each array's own chunk key encoding: `<name>/c/<i>/<j>` by default
                files = [f"{name}/{arr.metadata.encode_chunk_key((c,) + (0,) * (arr.ndim - 1))}"
                         for name, arr in arrays.items()]
                if listed is not None:
                    missing = [f for f in files if f not in listed]
                else:
                    folder = Path(self.path) / self.group.path  # a subgroup (extract --overwrite) has its own
                    missing = [f for f in files if not (folder / f).is_file()]
                if missing:
                    damaged[c] = f"missing {missing[0]}"
                    continue
            if decode:
                start, stop = c * rows, min((c + 1) * rows, n)
                for name, arr in arrays.items():
                    try:
                        arr[start:stop]
                    except Exception as e:  # zarr and its codecs raise many types for a damaged file
                        if remote.transient(e):
                            raise
                        damaged[c] = f"{name} does not decode ({type(e).__name__}: {str(e).splitlines()[0][:80]})"
                        break
        return damaged

    def mark_not_done(self, chunks: Sequence[int]) -> None:
        """Clear the done flag of these chunks, so the next `extract` re-does exactly them."""
        if not chunks:
            return
        arr = self.group["done"]
        if arr.chunks == (1,):  # format 2: one object per flag, rewrite only these
            for c in chunks:
                arr[int(c)] = False
        else:
            done = np.asarray(arr[...])
            done[list(chunks)] = False
            arr[...] = done

    def _refuse_upgrading(self) -> None:
        if UPGRADING in self.group.attrs:
            raise InputError(f"{self.path}: an upgrade to store format {FORMAT} was interrupted; "
                             f"run `hashtagkit upgrade {self.path}` to finish it")

    def _refuse_damaged(self, damaged: dict[int, str]) -> None:
        if damaged:
            first = ", ".join(f"chunk {c} ({why})" for c, why in list(damaged.items())[:3])
            raise InputError(f"{self.path}: {len(damaged)} chunk(s) marked done are damaged: {first}; "
                             f"run `hashtagkit info --verify {self.path}`, then `hashtagkit extract` to redo them")

    def arrays(self, view: str = "both", split: str = "train") -> tuple[np.ndarray, np.ndarray]:
        """(X, Y) of a split for a user's own model: features of `view` as float32 and the
        (n, C) 0/1 label matrix, of the split's rows whose image gave features (the rows every
        head of this store fits or is scored on, `usable_rows`), in row order."""
        rows, _ = self.usable_rows(self.split_rows(split))
        return self.features(view, rows).astype(np.float32, copy=False), self.labels(rows)

    def features(self, view: str = "both", rows: np.ndarray | None = None) -> np.ndarray:
        """Feature rows for a view: `both` is every block; a single block keeps its columns and
        zero-pads the others, as the paper does for its single-feature models, so a head's
        input width never depends on the view. A chunk marked done whose file is missing or
        does not decode is an error naming it, never rows of zeros."""
        self.check_features(view)
        arr = self.group["features"]
        try:
            data = np.asarray(arr[...] if rows is None
                              else arr.get_orthogonal_selection((np.asarray(rows), slice(None))))
        except Exception:
            self._refuse_damaged(self.damaged_chunks(decode=True))
            raise  # not a damaged chunk: a bug, keep the traceback
        return self._mask_view(data, view)

    def check_features(self, view: str) -> None:
        """Refuse to read features that are not all there (none yet, a swap or an upgrade
        interrupted, extraction incomplete, a done chunk's file missing) or a view not stored."""
        if not self.has_features():
            raise InputError(f"{self.path} has no features yet: run `hashtagkit extract {self.path}` first")
        if SWAPPING in self.group.attrs:
            raise InputError(f"{self.path}: an `extract --overwrite` was interrupted while it swapped its new "
                             f"features in; run `hashtagkit extract {self.path}` to finish it")
        self._refuse_upgrading()
        done, total = self.completeness()
        if done < total:
            raise InputError(
                f"{self.path}: feature extraction is incomplete ({done} of {total} chunks); "
                f"run `hashtagkit extract {self.path}` again to resume"
            )
        names = [b["name"] for b in self.blocks]
        if view != "both" and view not in names:
            raise InputError(f"{self.path} has no {view!r} features (blocks: {', '.join(names)})")
        self._refuse_damaged(self.damaged_chunks(decode=False))

    def _mask_view(self, data: np.ndarray, view: str) -> np.ndarray:
        return mask_view(data, self.blocks, view)

    # --- reading in bounded memory ----------------------------------------------------------
    def step_rows(self, what: Sequence[str] = ROW_ARRAYS) -> int:
        """The rows per step of `iter_rows`: a feature chunk when features are read (the
        largest objects, so each is decoded once and whole), else a label chunk."""
        name = "features" if "features" in what else "labels" if "labels" in what else what[0]
        return int(self.group[name].chunks[0])

    def chunk_order(self, rows: np.ndarray | Sequence[int], what: Sequence[str] = ROW_ARRAYS,
                    batch_chunks: int = 1) -> np.ndarray:
        """Positions in `rows` in the order `iter_rows(rows, what=..., batch_chunks=...)`
        yields them (by step, the caller's order kept within one), e.g. to put per-row
        results back in place."""
        rows = self.row_indices(rows)
        return np.argsort(rows // (self.step_rows(what) * batch_chunks), kind="stable")

    def iter_rows(self, rows: np.ndarray | Sequence[int] | None = None, *, what: Sequence[str] = ROW_ARRAYS,
                  view: str = "both", batch_chunks: int = 1,
                  checked: bool = False) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Yield (row indices, {name: rows of that array}) step by step over the store, so a
        pass over every row holds at most `batch_chunks` steps (see `step_rows`) in memory.

        `what` names the per-row arrays to read (`features`, `labels`, `valid`, `split`);
        `features` are masked by `view` exactly as `features(view, rows)` masks them. `rows`
        (all by default) may be unsorted: they are grouped by step, steps ascending, the
        caller's order kept within a step (`chunk_order` gives the permutation). Each chunk of
        every array is decoded once: a step reads its rows as one contiguous slice, and a label
        chunk that spans several steps is kept until the steps move past it.

        The features are checked to be all there before the first step (`checked=True`: the
        caller already did, e.g. a StoreData reading one block at a time, where a check per
        block would read every chunk's `done` flag per block: quadratic in the chunks)."""
        what = tuple(what)
        unknown = [w for w in what if w not in ROW_ARRAYS + ("split",)]
        if unknown or not what:
            raise InputError(f"iter_rows reads {', '.join(ROW_ARRAYS + ('split',))}; not {unknown or 'nothing'}")
        if batch_chunks < 1:
            raise InputError(f"batch_chunks must be at least 1, not {batch_chunks}")
        if "features" in what and not checked:  # (reads every chunk's flag: once per pass, not per block)
            self.check_features(view)
        step = self.step_rows(what) * batch_chunks
        steps = self._steps(rows, what, view, step)
        # a store at a URL: the next steps are fetched while the caller works on this one, so the
        # network does not stall the model (a local disk keeps up by itself)
        yield from read_ahead(steps, READ_AHEAD if is_url(self.path) else 0)

    def _steps(self, rows, what: tuple[str, ...], view: str,
               step: int) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """`iter_rows`' steps, read in turn."""
        readers = {name: _SliceReader(self.group[name]) if name in self.group else None for name in what}
        if rows is None:
            starts = range(0, self.n_rows, step)
            groups = ((np.arange(a, min(a + step, self.n_rows)), a, min(a + step, self.n_rows)) for a in starts)
        else:
            idx = self.row_indices(rows)
            idx = idx[np.argsort(idx // step, kind="stable")]
            bounds = np.flatnonzero(np.diff(idx // step)) + 1
            groups = ((g, int(g.min()), int(g.max()) + 1) for g in np.split(idx, bounds) if len(g))
        for picked, start, stop in groups:
            out = {}
            for name, reader in readers.items():
                if reader is None:  # a store without `valid` yet: every row counts as valid
                    out[name] = np.ones(len(picked), bool)
                    continue
                try:
                    block = reader.read(start, stop)
                except Exception:
                    if name in CHUNKED:
                        self._refuse_damaged(self.damaged_chunks(decode=True))
                    raise
                data = block if len(picked) == stop - start and picked[0] == start and (
                    len(picked) == 1 or np.all(np.diff(picked) == 1)) else block[picked - start]
                out[name] = self._mask_view(data, view) if name == "features" else data
            yield picked, out

    # --- summary ----------------------------------------------------------------------------
    def tags_per_image(self) -> dict:
        """Hashtags per image (mean, min, max), one label chunk at a time: `info` on a store of
        a million rows holds a chunk of labels, never the N x C array."""
        total, low, high = 0, None, None
        for _, data in self.iter_rows(what=("labels",)):
            per_image = data["labels"].sum(axis=1, dtype=np.int64)
            total += int(per_image.sum())
            low = int(per_image.min()) if low is None else min(low, int(per_image.min()))
            high = int(per_image.max()) if high is None else max(high, int(per_image.max()))
        n = self.n_rows
        return {"mean": total / n if n else 0.0, "min": low or 0, "max": high or 0}

    def info(self) -> dict:
        """Everything `hashtagkit info` shows: size, split counts, label statistics, blocks."""
        split = self.split()  # one byte a row (see split_rows)
        counts = {name: int((split == code).sum()) for name, code in SPLIT_CODES.items()}
        meta = self.meta
        return {
            "path": str(self.path),
            "format": self.format,
            "upgrading": UPGRADING in self.group.attrs,  # an interrupted upgrade to format 2
            "kind": meta.get("kind"),
            "synthetic": meta.get("synthetic", False),
            "rows": self.n_rows,
            "classes": self.n_classes,
            "split": counts,
            "split_seed": self.split_info.get("seed"),
            "split_sha256": self.split_info.get("sha256"),
            "tags_per_image": self.tags_per_image(),
            "image_root": meta.get("image_root"),
            "blocks": self.blocks,
            "completeness": list(self.completeness()) if self.has_features() else None,
            "features": None if "features" not in self.group else {
                "shape": list(self.group["features"].shape),
                "dtype": str(self.group["features"].dtype),
            },
            "source": meta.get("source", {}),
            "provenance": meta.get("provenance", {}),
        }


READ_AHEAD = 2  # steps a URL store's reader fetches ahead of its caller


def read_ahead(items: Iterator, depth: int, name: str = "read-ahead") -> Iterator:
    """`items`, produced by a background thread up to `depth` ahead of the consumer (0: in
    turn): reads and decompression (which release the GIL) overlap the consumer's work instead
    of adding to it (a URL store's steps; the MLP's streamed blocks). An error in the producer
    is raised in the consumer, in order; a consumer that stops early (the last step, a closed
    generator) tells the thread to stop, and its buffers are freed."""
    if depth <= 0:
        yield from items
        return
    import queue
    import threading

    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    end = object()

    def offer(entry) -> bool:
        """Put unless the consumer has gone (then False): a full queue never strands the thread."""
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer((None, item)):
                    return
            offer((None, end))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised in its thread
            offer((e, None))

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            error, item = q.get()
            if error is not None:
                raise error
            if item is end:
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=10)


class _SliceReader:
    """Contiguous row slices of one array for a pass in ascending order, each chunk decoded
    once: the chunk that the last slice ended in is kept, so the next slice that starts in it
    (label chunks are bigger than feature chunks) does not decode it again. At most one chunk
    plus the slice asked for are held."""

    def __init__(self, arr: zarr.Array):
        self.arr = arr
        self.rows = int(arr.chunks[0])
        self.kept: tuple[int, np.ndarray] | None = None  # (chunk index, its rows)

    def read(self, start: int, stop: int) -> np.ndarray:
        first, last = start // self.rows, (stop - 1) // self.rows
        parts = []
        for c in range(first, last + 1):
            lo, hi = max(start, c * self.rows), min(stop, (c + 1) * self.rows)
            whole = lo == c * self.rows and hi == min((c + 1) * self.rows, self.arr.shape[0])
            # a part of a kept chunk is copied: a view would keep the whole decoded chunk alive for
            # as long as the caller keeps the rows (a few scattered test rows held for a batch
            # pinned one 4 MB chunk each: 6.4 GB when evaluating at 1 M rows)
            if self.kept is not None and self.kept[0] == c:
                parts.append(self.kept[1][lo - c * self.rows:hi - c * self.rows].copy())
            elif whole:
                parts.append(np.asarray(self.arr[lo:hi]))
            else:  # a part of a chunk: decode it all once and keep it for the next slice
                chunk = np.asarray(self.arr[c * self.rows:min((c + 1) * self.rows, self.arr.shape[0])])
                self.kept = (c, chunk)
                parts.append(chunk[lo - c * self.rows:hi - c * self.rows].copy())
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def create_tag_array(group: zarr.Group, vocab: Sequence[str]) -> zarr.Array:
    """The `tag` array: the vocabulary again (the `vocab` attribute is what hashtagkit reads), as
    the coordinate of the `tag` dimension, so xarray labels the columns of `labels` by hashtag."""
    arr = group.create_array("tag", shape=(len(vocab),), dtype=str, chunks=(max(1, len(vocab)),),
                             compressors=_compressors(), config={"write_empty_chunks": True},
                             dimension_names=DIMS["tag"], overwrite=True)
    if len(vocab):
        arr[...] = np.asarray(list(vocab), dtype=str)
    return arr


def create_members_array(group: zarr.Group, members: np.ndarray) -> zarr.Array:
    """The `members` array of a store of webdataset shards: per row, (byte offset, size) of its
    photo's member within the shard its path names, so a reader fetches exactly those bytes."""
    members = np.asarray(members, dtype=np.int64)
    n = int(group["paths"].shape[0])
    if members.shape != (n, 2):
        raise ValueError(f"members shape {members.shape} != ({n}, 2)")
    arr = group.create_array("members", shape=members.shape, dtype="int64", chunks=(max(1, min(n, 65536)), 2),
                             compressors=_compressors(), config={"write_empty_chunks": True},
                             attributes={ALL_CHUNKS_MARK: True, "columns": ["offset", "size"]},
                             dimension_names=MEMBERS_DIMS)
    arr[...] = members
    return arr


def create_chunk_log(group: zarr.Group, n_chunks: int) -> zarr.Array:
    """The per-chunk log array: one JSON string per chunk, each its own object."""
    return group.create_array("chunk_log", shape=(n_chunks,), dtype=str, chunks=(1,), compressors=_compressors(),
                              dimension_names=DIMS["chunk_log"])
