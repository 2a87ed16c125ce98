"""The store: one Zarr v3 group per dataset, holding everything a step hands to the next.

| member      | shape / type          | meaning                                                  |
|-------------|-----------------------|----------------------------------------------------------|
| `labels`    | (N, C) uint8 multi-hot| C = vocabulary size                                      |
| `split`     | (N,) uint8            | 0 train, 1 test, 2 val; seed and sha256 in attrs `split` |
| `paths`     | (N,) str              | image path relative to attrs `hashtagkit.image_root`     |
| `features`  | (N, D) float16/32     | added by `extract`; column blocks described in `blocks`  |
| `valid`     | (N,) bool             | the row's image decoded (else `reason` says why)         |
| `reason`    | (N,) str              | why an image failed, '' for a valid row                  |
| `done`      | (n_chunks,) bool      | chunk c's rows of features/valid/reason are written      |
| attrs       | `vocab`, `split`, `blocks`, `hashtagkit` (kind, synthetic, image root, provenance) |

Rows per chunk are chosen so a chunk is a few MiB: big enough to compress and read fast,
small enough that a resumed extraction loses little. A store is created complete or not at
all (written to a hidden sibling, then renamed). One process writes a store at a time
(`store_lock`). A done chunk always has its files; one that is missing or does not decode is
an error naming it, never rows of zeros (`damaged_chunks`, `hashtagkit info --verify`).
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import zarr
import zarr.codecs

from hashtagkit import provenance
from hashtagkit.errors import InputError
from hashtagkit.outputs import atomic_dir, refuse_existing

FORMAT = 1
SPLIT_CODES = {"train": 0, "test": 1, "val": 2}
SPLIT_NAMES = {code: name for name, code in SPLIT_CODES.items()}
CHUNK_BYTES = 4 << 20
LOCK_FILE = ".extract.lock"  # the name extract always used: an old lock file stays harmless
CHUNKED = ("features", "valid", "reason")  # the per-row arrays a done chunk must hold
SWAPPING = "swapping"  # group attr while `extract --overwrite` moves its new arrays in
FILES_MARK = "every_done_chunk_has_files"  # attr of `done`: see Store._files_always_written


def rows_per_chunk(row_bytes: int, target: int = CHUNK_BYTES) -> int:
    """Rows in a chunk of about `target` bytes (at least one row)."""
    return max(1, target // max(1, row_bytes))


def split_sha256(split: np.ndarray) -> str:
    """The fingerprint a run records, so evaluation can prove it uses the split it trained on."""
    return provenance.sha256_bytes(np.ascontiguousarray(split, dtype=np.uint8).tobytes())


@contextlib.contextmanager
def store_lock(path: str | Path, doing: str = "written") -> Iterator[None]:
    """One writer per store: an OS lock on a file inside the store, released even if the
    process is killed. `extract` holds it while it writes; `create_store` takes the old store's
    lock before replacing it, so `prepare --overwrite` cannot rename a store away under an
    extraction (nor start one on a store being replaced).

    A POSIX record lock (`lockf`), not `flock`: decode workers are forked children, and an
    `flock` lock belongs to the open file they inherit, so after a SIGKILL of the main process
    the orphaned workers kept the store locked for seconds and the resume was refused. A
    record lock belongs to the process that took it and dies with it. `doing` ("extracted",
    "replaced") completes the refusal another process gets: "... is being extracted by ..."."""
    path = Path(path)
    try:
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:  # a read-only store, or one on a read-only disk: it cannot be written anyway
        raise InputError(f"{path} cannot be {doing}: {e.strerror} ({path / LOCK_FILE})") from None
    try:
        try:
            import fcntl

            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # not POSIX: no lock, but say so
            warnings.warn("no file locking on this platform: run one writer per store at a time", stacklevel=3)
        except OSError:  # EAGAIN / EACCES: held by another process
            pid, _, what = os.pread(fd, 80, 0).decode(errors="replace").strip().partition(":")
            raise InputError(f"{path} is being {what or 'written'} by another process ({pid or 'unknown pid'}); "
                             "wait for it to finish") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}:{doing}".encode(), 0)  # what the refused one is told
        yield
    finally:
        os.close(fd)


def _compressors() -> list:
    return [zarr.codecs.ZstdCodec(level=3)]


def feature_compressors() -> list:
    """The features' codec: plain zstd level 1. In a one-off comparison on ReLU-like float16
    features it compressed best (2.2x) and wrote about twice as fast as Blosc zstd-3 + shuffle
    (2.0x) and well ahead of lz4 (1.1-1.3x); benchmarks/extract_throughput.py measures it
    against .npy on every run."""
    return [zarr.codecs.ZstdCodec(level=1)]


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
) -> Store:
    """Write a new store (atomically) and return it opened read-only.

    `split_info` describes how the split was made (seed, method, sizes); its sha256 is
    computed here from the array itself, never trusted from the caller. `fill`, if given,
    writes more (e.g. generated features) into the store before it is renamed into place.
    """
    labels = np.asarray(labels)
    split = np.asarray(split)
    n = len(paths)
    if labels.shape != (n, len(vocab)):
        raise ValueError(f"labels shape {labels.shape} != ({n}, {len(vocab)})")
    if split.shape != (n,):
        raise ValueError(f"split shape {split.shape} != ({n},)")
    if not set(np.unique(split).tolist()) <= set(SPLIT_NAMES):
        raise ValueError("split codes must be 0 (train), 1 (test) or 2 (val)")
    if len(set(vocab)) != len(vocab):
        raise ValueError("vocabulary has duplicate hashtags")
    counts = {name: int((split == code).sum()) for name, code in SPLIT_CODES.items()}
    old = refuse_existing(path, overwrite, kind="store")  # before the lock touches anything in it
    replacing = overwrite and (old / "zarr.json").is_file()
    # the old store's writer (an extract) must finish first; held until the swap is done
    with (store_lock(old, "replaced") if replacing else contextlib.nullcontext()), \
            atomic_dir(path, overwrite=overwrite, kind="store") as tmp:
        group = zarr.open_group(tmp, mode="w", zarr_format=3)
        c = max(1, len(vocab))
        lab = group.create_array(
            "labels", shape=labels.shape, dtype="uint8",
            chunks=(min(max(n, 1), rows_per_chunk(c)), c), compressors=_compressors(),
        )
        lab[...] = labels.astype(np.uint8)
        sp = group.create_array("split", shape=(n,), dtype="uint8", chunks=(max(n, 1),), compressors=_compressors())
        sp[...] = split.astype(np.uint8)
        pa = group.create_array("paths", shape=(n,), dtype=str, chunks=(max(n, 1),))
        pa[...] = np.asarray(list(paths), dtype=str)
        group.attrs.update(
            {
                "vocab": list(vocab),
                "split": {**split_info, "counts": counts, "sha256": split_sha256(split)},
                "blocks": [],
                "hashtagkit": {
                    "format": FORMAT,
                    "kind": kind,
                    "synthetic": bool(synthetic),
                    "image_root": image_root,
                    "source": source or {},
                    "provenance": provenance.record(),
                },
            }
        )
        if fill is not None:
            fill(Store(tmp, group))
    return open_store(path)


def open_store(path: str | Path, mode: str = "r") -> Store:
    """Open an existing store; a path that is not a hashtagkit store is a clear user error."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"store {path} does not exist (make one with `hashtagkit prepare`)")
    try:
        group = zarr.open_group(path, mode=mode, zarr_format=3)
    except Exception as e:  # zarr raises several types for "not a group"
        raise InputError(f"{path} is not a Zarr v3 store: {e}") from None
    meta = group.attrs.get("hashtagkit")
    if not isinstance(meta, dict) or "labels" not in group or "split" not in group:
        raise InputError(f"{path} is a Zarr group but not a hashtagkit store (no labels/split)")
    if meta.get("format", 0) > FORMAT:
        raise InputError(f"{path} was written by a newer hashtagkit (format {meta['format']}); upgrade")
    return Store(path, group)


class Store:
    """Read access to a store (and, opened with mode 'r+', the handle `extract` writes through)."""

    def __init__(self, path: Path, group: zarr.Group):
        self.path = path
        self.group = group

    # --- what the store describes -------------------------------------------------------
    @property
    def meta(self) -> dict:
        return dict(self.group.attrs["hashtagkit"])

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
        """Row indices of one split, ascending."""
        if name not in SPLIT_CODES:
            raise InputError(f"unknown split {name!r}: choose one of {', '.join(SPLIT_CODES)}")
        return np.flatnonzero(self.split() == SPLIT_CODES[name])

    def labels(self, rows: np.ndarray | None = None) -> np.ndarray:
        arr = self.group["labels"]
        data = np.asarray(arr[...])
        return data if rows is None else data[rows]

    def paths(self, rows: np.ndarray | None = None) -> list[str]:
        data = np.asarray(self.group["paths"][...])  # numpy StringDType; tolist gives str
        return [str(p) for p in (data if rows is None else data[rows]).tolist()]

    def verify_split(self) -> str:
        """Recompute the split's sha256 and check it against the recorded one."""
        actual = split_sha256(self.split())
        if actual != self.split_info.get("sha256"):
            raise InputError(f"{self.path}: split array does not match its recorded sha256 (store modified?)")
        return actual

    # --- features ---------------------------------------------------------------------------
    def lock(self, doing: str = "written") -> contextlib.AbstractContextManager:
        """This store's writer lock (see `store_lock`)."""
        return store_lock(self.path, doing)

    def init_features(self, dim: int, dtype: str, blocks: list[dict], chunk_rows: int | None = None) -> int:
        """Create the empty feature arrays (features, valid, reason, done) and record the blocks.

        Returns the rows per chunk. `done[c]` is the only truth about chunk c: writers set it
        after the chunk's features (see `write_chunk`)."""
        g, n = self.group, self.n_rows
        rows = chunk_rows or rows_per_chunk(dim * np.dtype(dtype).itemsize)
        rows = max(1, min(rows, max(n, 1)))
        g.create_array("features", shape=(n, dim), dtype=dtype, chunks=(rows, dim), compressors=feature_compressors(),
                       fill_value=0)
        g.create_array("valid", shape=(n,), dtype="bool", chunks=(rows,), fill_value=False)
        g.create_array("reason", shape=(n,), dtype=str, chunks=(rows,))
        n_chunks = max(1, -(-n // rows))
        g.create_array("done", shape=(n_chunks,), dtype="bool", chunks=(n_chunks,), fill_value=False,
                       attributes={FILES_MARK: True})
        g.attrs["blocks"] = blocks
        return rows

    def drop_features(self) -> None:
        for name in ("features", "done", "valid", "reason"):
            if name in self.group:
                del self.group[name]
        self.group.attrs["blocks"] = []

    def chunk_rows(self) -> int:
        return int(self.group["features"].chunks[0])

    def write_chunk(self, chunk: int, features: np.ndarray, valid: np.ndarray, reasons: list[str] | None = None) -> None:
        """Write one whole chunk, then flag it done: a crash in between only loses this chunk.

        Written with `write_empty_chunks`, so a done chunk always has its files (zarr skips a
        chunk equal to the fill value, e.g. all zeros, and a missing file is how `verify`
        recognises a deleted one)."""
        g = self.group
        rows = self.chunk_rows()
        start = chunk * rows
        stop = start + len(features)
        reasons = reasons if reasons is not None else [""] * len(features)
        for name, data in (("features", features.astype(g["features"].dtype, copy=False)), ("valid", valid),
                           ("reason", np.asarray(reasons, dtype=str))):
            g[name].with_config({"write_empty_chunks": True})[start:stop] = data
        g["done"][chunk] = True

    def has_features(self) -> bool:
        return "features" in self.group and bool(self.blocks)

    def valid(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Which rows have real features (an image that failed to decode has none)."""
        data = np.asarray(self.group["valid"][...]) if "valid" in self.group else np.ones(self.n_rows, bool)
        return data if rows is None else data[rows]

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
        done = np.asarray(self.group["done"][...])
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
        check_files = self._files_always_written()
        damaged = {}
        for c in np.flatnonzero(np.asarray(self.group["done"][...])).tolist():
            if check_files:
                # each array's own chunk key encoding: `<name>/c/<i>/<j>` by default
                files = [f"{name}/{arr.metadata.encode_chunk_key((c,) + (0,) * (arr.ndim - 1))}"
                         for name, arr in arrays.items()]
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
                        damaged[c] = f"{name} does not decode ({type(e).__name__}: {str(e).splitlines()[0][:80]})"
                        break
        return damaged

    def mark_not_done(self, chunks: Sequence[int]) -> None:
        """Clear the done flag of these chunks, so the next `extract` re-does exactly them."""
        if chunks:
            done = np.asarray(self.group["done"][...])
            done[list(chunks)] = False
            self.group["done"][...] = done

    def _refuse_damaged(self, damaged: dict[int, str]) -> None:
        if damaged:
            first = ", ".join(f"chunk {c} ({why})" for c, why in list(damaged.items())[:3])
            raise InputError(f"{self.path}: {len(damaged)} chunk(s) marked done are damaged: {first}; "
                             f"run `hashtagkit info --verify {self.path}`, then `hashtagkit extract` to redo them")

    def features(self, view: str = "both", rows: np.ndarray | None = None) -> np.ndarray:
        """Feature rows for a view: `both` is every block; a single block keeps its columns and
        zero-pads the others, as the paper does for its single-feature models, so a head's
        input width never depends on the view. A chunk marked done whose file is missing or
        does not decode is an error naming it, never rows of zeros."""
        if not self.has_features():
            raise InputError(f"{self.path} has no features yet: run `hashtagkit extract {self.path}` first")
        if SWAPPING in self.group.attrs:
            raise InputError(f"{self.path}: an `extract --overwrite` was interrupted while it swapped its new "
                             f"features in; run `hashtagkit extract {self.path}` to finish it")
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
        arr = self.group["features"]
        try:
            data = np.asarray(arr[...] if rows is None
                              else arr.get_orthogonal_selection((np.asarray(rows), slice(None))))
        except Exception:
            self._refuse_damaged(self.damaged_chunks(decode=True))
            raise  # not a damaged chunk: a bug, keep the traceback
        if view != "both":
            data = data.copy()
            for block in self.blocks:
                if block["name"] != view:
                    start, stop = block["columns"]
                    data[:, start:stop] = 0
        return data

    # --- summary ----------------------------------------------------------------------------
    def info(self) -> dict:
        """Everything `hashtagkit info` shows: size, split counts, label statistics, blocks."""
        split = self.split()
        labels = self.labels()
        per_image = labels.sum(axis=1)
        counts = {name: int((split == code).sum()) for name, code in SPLIT_CODES.items()}
        meta = self.meta
        return {
            "path": str(self.path),
            "kind": meta.get("kind"),
            "synthetic": meta.get("synthetic", False),
            "rows": self.n_rows,
            "classes": self.n_classes,
            "split": counts,
            "split_seed": self.split_info.get("seed"),
            "split_sha256": self.split_info.get("sha256"),
            "tags_per_image": {
                "mean": float(per_image.mean()) if len(per_image) else 0.0,
                "min": int(per_image.min()) if len(per_image) else 0,
                "max": int(per_image.max()) if len(per_image) else 0,
            },
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
