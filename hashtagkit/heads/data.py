"""What a head trains on: the features and labels of a set of rows, read block by block.

A head fits from a `TrainingData`, never from whole arrays, so that training on a million
rows needs the memory of a few blocks, not of the data set (16 GB of float16 features at
1 M x 8,192). Two kinds exist and a head cannot tell them apart:

- `StoreData`: rows of a store. A block is one step of `Store.iter_rows` (one feature chunk,
  or `block_chunks` of them), read when it is asked for and checked for NaN/inf then.
- `ArrayData`: arrays already in memory (`Head.fit(X, Y)`, tests, the MLP's cached path),
  cut into blocks of `block_rows`.

Rows are numbered by *position* 0..n_rows-1 (a StoreData's store rows ascending); block i
holds positions `bounds[i]:bounds[i+1]`. What a head does with blocks is its own affair:
shuffle their order per epoch (the MLP), give each DDP rank a disjoint share (`subset`), hold
some out for validation, fit a projection on a seeded sample of positions (`take`).

A StoreData pickles as the store path (or URL, with its storage options) and its rows, so
DataLoader worker processes reopen the store themselves.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from hashtagkit.heads.blocks import Block, layout_of
from hashtagkit.heads.checks import refuse_nonfinite_features

# A validation part's rows at most (the MLP's early stopping, fusion, a run's calibration): held in
# memory as float16 (160 MB at 8,192 columns); Recall@5 on 10,000 rows varies by ~0.4 points.
VAL_ROWS = 10_000
BLOCK_ROWS = 4096  # rows per block of an ArrayData: ~64 MB of float32 at 4,096 x 8,192 ... less as float16


class TrainingData:
    """Features X (n_rows, n_features) and multi-hot labels Y (n_rows, n_classes), by block.

    X comes as stored (float16 from a store; a head converts per batch), Y as uint8. A head
    that ignores the image gets X of width 0. `layout` names the feature blocks X's columns
    hold (a store's view: both backbones, or one); a head that compares rows joins them by its
    rule (`hashtagkit.heads.blocks`). Empty for arrays given without one: a single block."""

    layout: tuple[Block, ...] = ()
    n_rows: int
    n_features: int
    n_classes: int
    bounds: np.ndarray  # (n_blocks + 1,) block i holds positions bounds[i]:bounds[i + 1]

    @property
    def n_blocks(self) -> int:
        return len(self.bounds) - 1

    def block_sizes(self) -> np.ndarray:
        return np.diff(self.bounds)

    def positions(self, blocks: Sequence[int]) -> np.ndarray:
        """The positions these blocks hold, in the order of `blocks`."""
        return np.concatenate([np.arange(self.bounds[b], self.bounds[b + 1]) for b in blocks] or [np.zeros(0, np.int64)])

    def block(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(X, Y) of block i."""
        raise NotImplementedError

    def blocks(self, order: Sequence[int] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(X, Y) of every block in `order` (ascending by default): one block in memory at a time."""
        for i in range(self.n_blocks) if order is None else order:
            yield self.block(int(i))

    def labels(self) -> Iterator[np.ndarray]:
        """Y block by block, ascending, without reading features (for counts and priors)."""
        for _, Y in self.blocks():
            yield Y

    def take(self, positions: np.ndarray | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(X, Y) of these positions, in the order given, reading only the blocks that hold them
        (a seeded sample for a PCA, a validation set)."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size and (positions.min() < 0 or positions.max() >= self.n_rows):
            raise IndexError(f"positions must lie in 0..{self.n_rows - 1}")
        X = np.empty((len(positions), self.n_features), dtype=self.dtype)
        Y = np.empty((len(positions), self.n_classes), dtype=np.uint8)
        which = np.searchsorted(self.bounds, positions, side="right") - 1
        for b in np.unique(which):
            at = np.flatnonzero(which == b)
            Xb, Yb = self.block(int(b))
            local = positions[at] - self.bounds[b]
            X[at], Y[at] = Xb[local], Yb[local]
        return X, Y

    def sample_positions(self, k: int, rng: np.random.Generator) -> np.ndarray:
        """A seeded sample of k positions (all when k >= n_rows), ascending, drawn from whole
        blocks picked at random: `take` then reads about k rows' worth of blocks, not nearly
        every block as k scattered rows of a million would make it read."""
        if k >= self.n_rows:
            return np.arange(self.n_rows)
        order = rng.permutation(self.n_blocks)
        enough = int(np.searchsorted(np.cumsum(self.block_sizes()[order]), k)) + 1
        pool = self.positions(order[:enough])
        return np.sort(rng.choice(pool, k, replace=False))

    def held_out_blocks(self, fraction: float, max_rows: int, rng: np.random.Generator) -> np.ndarray:
        """Seeded whole blocks (ascending) holding about `fraction` of the rows, at most
        `max_rows` and at least one row, never every block: a validation part read as chunks,
        like any training data (fusion's weights, a run's re-ranking and thresholds)."""
        order = rng.permutation(self.n_blocks)
        want = max(1, min(int(self.n_rows * fraction), max_rows))
        enough = int(np.searchsorted(np.cumsum(self.block_sizes()[order]), want)) + 1
        return np.sort(order[: min(enough, self.n_blocks - 1)])

    def subset(self, blocks: Sequence[int]) -> TrainingData:
        """The rows of these blocks, as TrainingData of the same kind (a DDP rank's share, a
        validation part); blocks keep their boundaries."""
        raise NotImplementedError

    def rows_between(self, start: int, stop: int) -> TrainingData:
        """Positions start..stop-1 as TrainingData of the same kind (a DDP rank's share of rows:
        its blocks are those of the range, the first and last possibly partial)."""
        raise NotImplementedError

    def to_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Everything in memory: the fast path when it fits (`nbytes` says how much that is)."""
        return self.take(np.arange(self.n_rows))

    @property
    def dtype(self) -> np.dtype:
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        """Bytes of X and Y held whole, as `to_arrays` returns them."""
        return self.n_rows * (self.n_features * np.dtype(self.dtype).itemsize + self.n_classes)


class ArrayData(TrainingData):
    """In-memory X and Y as TrainingData (views, no copy)."""

    def __init__(self, X: np.ndarray, Y: np.ndarray, block_rows: int = BLOCK_ROWS,
                 layout: tuple[Block, ...] = ()) -> None:
        if len(X) != len(Y):
            raise ValueError(f"X has {len(X)} rows, Y {len(Y)}")
        self.X, self.Y, self.layout = X, Y, tuple(layout)
        self.n_rows, self.n_features, self.n_classes = len(X), int(X.shape[1]), int(Y.shape[1])
        self.bounds = np.unique(np.r_[np.arange(0, self.n_rows, max(1, block_rows)), self.n_rows]).astype(np.int64)

    @property
    def dtype(self) -> np.dtype:
        return self.X.dtype

    def block(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.bounds[i], self.bounds[i + 1]
        return self.X[a:b], np.asarray(self.Y[a:b], dtype=np.uint8)

    def take(self, positions: np.ndarray | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        positions = np.asarray(positions, dtype=np.int64)
        return self.X[positions], np.asarray(self.Y[positions], dtype=np.uint8)

    def to_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return self.X, np.asarray(self.Y, dtype=np.uint8)

    def rows_between(self, start: int, stop: int) -> ArrayData:
        return ArrayData(self.X[start:stop], self.Y[start:stop], layout=self.layout)

    def subset(self, blocks: Sequence[int]) -> ArrayData:
        idx = self.positions(blocks)
        out = ArrayData(self.X[idx], self.Y[idx], layout=self.layout)
        sizes = [self.bounds[b + 1] - self.bounds[b] for b in blocks]
        out.bounds = np.r_[0, np.cumsum(sizes)].astype(np.int64)
        return out


class StoreData(TrainingData):
    """Rows of a store: `view`'s features (None: a head that ignores the image, X of width 0)
    and labels, read one block (`block_chunks` feature chunks) at a time."""

    def __init__(self, store, view: str | None, rows: np.ndarray | Sequence[int], block_chunks: int = 1) -> None:
        self.store, self.path, self.view, self.block_chunks = store, store.path, view, int(block_chunks)
        self.storage_options = store.storage_options  # a URL store's: a worker process reopens it with them
        if view is not None:  # once here: block reads skip the check (see Store.iter_rows)
            store.check_features(view)
        self.rows = np.unique(store.row_indices(rows))
        self.what = ("features", "labels") if view is not None else ("labels",)
        step = store.step_rows(self.what) * self.block_chunks
        steps = self.rows // step
        self.bounds = np.r_[0, np.flatnonzero(np.diff(steps)) + 1, len(self.rows)].astype(np.int64)
        if not len(self.rows):
            self.bounds = np.zeros(1, np.int64)
        self.n_rows, self.n_classes = len(self.rows), store.n_classes
        self.n_features = store.feature_width if view is not None else 0
        self.layout = layout_of(store.blocks, view) if view is not None else ()
        self._dtype = np.dtype(store.feature_dtype) if view is not None else np.dtype(np.float32)

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["store"] = None  # reopened in the process that reads (a DataLoader worker)
        return state

    def _store(self):
        if self.store is None:
            from hashtagkit.stores import open_store

            # checked when the parent opened it
            self.store = open_store(self.path, check=False, storage_options=self.storage_options)
        return self.store

    def _read(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        store = self._store()
        parts = list(store.iter_rows(rows, what=self.what, view=self.view or "both", batch_chunks=self.block_chunks,
                                     checked=True))
        got = {name: np.concatenate([p[1][name] for p in parts]) if len(parts) > 1 else parts[0][1][name]
               for name in self.what}
        Y = got["labels"]
        if self.view is None:
            return np.zeros((len(rows), 0), np.float32), Y
        return refuse_nonfinite_features(self.path, rows, got["features"]), Y

    def block(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self._read(self.rows[self.bounds[i]:self.bounds[i + 1]])

    def blocks(self, order: Sequence[int] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if order is not None:
            yield from super().blocks(order)
            return
        # ascending: one pass of iter_rows, which decodes each label chunk once for all its blocks
        store = self._store()
        for picked, got in store.iter_rows(self.rows, what=self.what, view=self.view or "both",
                                           batch_chunks=self.block_chunks, checked=True):
            if self.view is None:
                yield np.zeros((len(picked), 0), np.float32), got["labels"]
            else:
                yield refuse_nonfinite_features(self.path, picked, got["features"]), got["labels"]

    def labels(self) -> Iterator[np.ndarray]:
        for _, got in self._store().iter_rows(self.rows, what=("labels",)):
            yield got["labels"]

    def rows_between(self, start: int, stop: int) -> StoreData:
        return StoreData(self._store(), self.view, self.rows[start:stop], self.block_chunks)

    def subset(self, blocks: Sequence[int]) -> StoreData:
        return StoreData(self._store(), self.view, self.rows[self.positions(blocks)], self.block_chunks)
