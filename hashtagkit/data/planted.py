"""A planted benchmark: features generated from a real label matrix, with a known answer.

No pretrained weights can be had on our machines, so real fc7 features of HARRISON cannot be
computed here. To compare heads at HARRISON's size and label statistics anyway, this writes a
normal store whose labels are HARRISON's own (or, without them, a Zipf-shaped matrix of the
same size) and whose features are generated so that:

- a third of the classes (id % 3 == 1) shows in the *object* block,
- another third (id % 3 == 2) shows in the *scene* block,
- the rest (id % 3 == 0, which includes #love, class 0) carries no visual signal at all.

A visible class c has a sparse prototype (a few dozen active dimensions) in its block; an
image's block is ReLU(sum of its visible classes' prototypes + Gaussian noise), so about half
the values are zero, as in fc7. A tag is drawn into the image only with probability 0.8 (users
tag things that are barely visible). Every head and command runs on it unchanged; `both`
should beat either single view because each view holds only its own third of the classes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hashtagkit.data.harrison import read_harrison
from hashtagkit.data.vocabulary import multi_hot

GENERATOR_VERSION = 2  # 2: Zipf labels drawn per block of 4,096 rows (float32 draws)
HARRISON_ROWS, HARRISON_CLASSES, HARRISON_TAGS_PER_IMAGE = 57383, 997, 4.544


@dataclass(frozen=True)
class PlantedConfig:
    dim: int = 4096  # per block
    active: int | None = None  # prototype dimensions per visible class [default: dim / 16, 4..32]
    strength: float = 0.7  # prototype value scale against unit noise
    visible: float = 0.8  # probability a visual tag is actually drawn into the image
    seed: int = 0


def group_of(n_classes: int) -> np.ndarray:
    """0: no visual signal, 1: object block, 2: scene block (by class id modulo 3)."""
    return np.arange(n_classes) % 3


class ZipfLabels:
    """A long-tailed multi-hot matrix with HARRISON's mean tags per image, made on demand.

    Rows are generated in fixed blocks of GEN_ROWS, each from its own seed, so `labels[a:b]`
    is the same whatever slices it is read by, and a million-row store is written block by
    block without the matrix (1 GB as uint8, 8 GB of draws) ever existing. Behaves as an
    (n, C) uint8 array for slicing by rows."""

    GEN_ROWS = 4096

    def __init__(self, n: int, n_classes: int, seed: int, tags_per_image: float = HARRISON_TAGS_PER_IMAGE) -> None:
        self.n, self.n_classes, self.seed = n, n_classes, seed
        p = 1.0 / np.arange(1, n_classes + 1) ** 0.6  # 0.6: the top class in ~11% of images, as HARRISON's #love
        self.p = np.minimum(p * tags_per_image / p.sum(), 0.5)
        self.shape, self.dtype, self.ndim = (n, n_classes), np.dtype(np.uint8), 2

    def __len__(self) -> int:
        return self.n

    def _block(self, b: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 1, b])
        rows = min(self.GEN_ROWS, self.n - b * self.GEN_ROWS)
        labels = (rng.random((rows, self.n_classes), dtype=np.float32) < self.p).astype(np.uint8)
        empty = np.flatnonzero(labels.sum(1) == 0)  # every image has at least one hashtag
        labels[empty, rng.choice(self.n_classes, size=len(empty), p=self.p / self.p.sum())] = 1
        return labels

    def __getitem__(self, rows: slice) -> np.ndarray:
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise TypeError("ZipfLabels are read by contiguous row slices")
        start, stop, _ = rows.indices(self.n)
        if stop <= start:
            return np.zeros((0, self.n_classes), np.uint8)
        first, last = start // self.GEN_ROWS, (stop - 1) // self.GEN_ROWS
        block = np.concatenate([self._block(b) for b in range(first, last + 1)])
        return block[start - first * self.GEN_ROWS : stop - first * self.GEN_ROWS]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self[:] if dtype is None else self[:].astype(dtype)


def planted_labels(labels_root: str | Path | None, n: int | None, seed: int,
                   n_classes: int = HARRISON_CLASSES) -> tuple[np.ndarray, list[str], dict]:
    """(labels, vocab, source): HARRISON's labels when given (n rows kept: a seeded random subset,
    so the label distribution stays HARRISON's), else Zipf-shaped with n_classes, made on
    demand by row slices (`ZipfLabels`)."""
    if labels_root:
        data = read_harrison(labels_root)
        labels, vocab = multi_hot(data.tags, data.vocab), data.vocab
        source = {"labels": "HARRISON", **data.source}
    else:
        labels = ZipfLabels(HARRISON_ROWS if n is None else max(n, 1), n_classes, seed)
        vocab = [f"tag{c:03d}" for c in range(n_classes)]
        source = {"labels": "zipf"}
    if labels_root and n is not None and n < len(labels):
        keep = np.sort(np.random.default_rng([seed, 2]).permutation(len(labels))[:n])
        labels = labels[keep]
    return labels, vocab, source


class PlantedPaths(Sequence):
    """`planted/000000`, ... for n rows, made when read (a million names need no list)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [f"planted/{j:06d}" for j in range(*i.indices(self.n))]
        if not -self.n <= i < self.n:
            raise IndexError(i)
        return f"planted/{i % self.n:06d}"


def prototypes(n_classes: int, config: PlantedConfig) -> np.ndarray:
    """(n_classes, dim) sparse non-negative prototypes; classes with no signal are zero."""
    rng = np.random.default_rng([config.seed, 3])
    protos = np.zeros((n_classes, config.dim), dtype=np.float32)
    active = config.active or min(32, max(4, config.dim // 16))
    for c in np.flatnonzero(group_of(n_classes) != 0):
        dims = rng.choice(config.dim, size=min(active, config.dim), replace=False)
        protos[c, dims] = rng.uniform(0.5, 1.5, size=len(dims)) * config.strength
    return protos


def features_for(labels: np.ndarray, protos: np.ndarray, config: PlantedConfig, rng: np.random.Generator) -> np.ndarray:
    """Object and scene blocks for a batch of rows: ReLU(visible prototypes + noise)."""
    groups = group_of(labels.shape[1])
    shown = labels.astype(np.float32) * (rng.random(labels.shape, dtype=np.float32) < config.visible)
    blocks = []
    for g in (1, 2):
        signal = shown[:, groups == g] @ protos[groups == g]
        noise = rng.standard_normal((len(labels), config.dim), dtype=np.float32)
        blocks.append(np.maximum(signal + noise, 0))
    return np.concatenate(blocks, axis=1)


def planted_blocks(config: PlantedConfig) -> list[dict]:
    d = config.dim
    return [
        {"name": name, "backbone": "planted", "columns": [start, start + d], "dim": d,
         "layer": f"planted signal of classes with id % 3 == {g}",
         "weights": {"source": "synthetic", "sha256": None, "seed": config.seed, "path": None},
         "preprocessing": None, "dtype": "float16"}
        for name, start, g in (("object", 0, 1), ("scene", d, 2))
    ]


def fill_planted(labels, config: PlantedConfig, progress: Callable[[int], None] = lambda k: None):
    """A `fill` callback for create_store: writes the features chunk by chunk, deterministically."""

    def fill(store) -> None:
        rows = store.init_features(2 * config.dim, "float16", planted_blocks(config))
        protos = prototypes(labels.shape[1], config)
        for chunk, start in enumerate(range(0, len(labels), rows)):
            part = np.asarray(labels[start : start + rows])
            rng = np.random.default_rng([config.seed, 4, chunk])
            store.write_chunk(chunk, features_for(part, protos, config, rng), np.ones(len(part), bool))
            progress(len(part))
        groups = group_of(labels.shape[1])
        store.annotate("planted", {
            "generator_version": GENERATOR_VERSION, **config.__dict__,
            "object_classes": np.flatnonzero(groups == 1).tolist(),
            "scene_classes": np.flatnonzero(groups == 2).tolist(),
            "no_signal_classes": np.flatnonzero(groups == 0).tolist(),
        })

    return fill
