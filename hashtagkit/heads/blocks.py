"""How a head joins the feature blocks of a view: each block normalised on its own, then weighted.

A store's "both" view is the object block and the scene block side by side, and the two come from
models that see pixels on different scales: on the demo store the scene block's rows have a mean
L2 norm of ~276, the object block's ~5 (the Places model takes Caffe's 0-255 BGR pixels,
torchvision's ImageNet model normalised 0-1 ones). A head that compares rows by distance or fits
on raw columns then sees only the louder block: "both" meant "scene" (issue #29). So the heads
that do (knn, tagprop, ovr, and fusion's components through them) join blocks by a rule:

- `l2` (cosine heads): each block of a row divided by its own L2 norm, then multiplied by
  sqrt(w_b). The joined row has unit norm, so its cosine with another row is sum_b w_b cos_b:
  each block's weight is its share of the similarity.
- `std` (heads that standardise): each block divided by its total standard deviation
  sqrt(sum of its columns' variances), measured on the training sample, then multiplied by
  sqrt(w_b): each block's weight is its share of the total variance.

Weights are shares (given ones are divided by their sum; `equal` by default). Either rule is
invariant to multiplying a block by a constant. A view of one block (or arrays fitted without a
layout) has nothing to join: no combiner, the features unchanged. The combiner is fitted state of
the head, saved with it (`head.json`) and recorded in the run; a head saved before this rule
has none and keeps scoring its raw concatenation, as it was trained.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

RULES = ("l2", "std")
EQUAL = "equal"


@dataclass(frozen=True)
class Block:
    """A named column range [start, stop) of a feature matrix (a backbone's block)."""

    name: str
    start: int
    stop: int


def layout_of(blocks: Sequence[Mapping[str, Any]], view: str) -> tuple[Block, ...]:
    """The blocks a store's `view` holds, from its block records ({'name', 'columns': [a, b]}):
    all of them for 'both', the named one otherwise."""
    return tuple(Block(str(b["name"]), int(b["columns"][0]), int(b["columns"][1]))
                 for b in blocks if view == "both" or b["name"] == view)


def parse_block_weights(value: Any) -> dict[str, float] | None:
    """'equal' -> {}; 'object:2,scene:1' -> {'object': 2.0, 'scene': 1.0}: distinct names,
    finite weights >= 0 summing above 0. None when the text is none of these."""
    if value == EQUAL:
        return {}
    if not isinstance(value, str) or not value.strip():
        return None
    out: dict[str, float] = {}
    for part in value.split(","):
        name, sep, number = part.partition(":")
        name = name.strip()
        try:
            weight = float(number)
        except ValueError:
            return None
        if not sep or not name or name in out or not math.isfinite(weight) or weight < 0:
            return None
        out[name] = weight
    return out if sum(out.values()) > 0 else None


def block_shares(blocks: Sequence[Block], weights: str) -> np.ndarray:
    """Each block's share (summing to 1) from a `block_weights` parameter; a ValueError naming
    the parameter when it names a block the view does not have or leaves one out."""
    given = parse_block_weights(weights)
    if given is None:
        raise ValueError(f"block_weights must be 'equal' or NAME:WEIGHT,... with weights >= 0, got {weights!r}")
    names = [b.name for b in blocks]
    if not given:
        return np.full(len(blocks), 1.0 / len(blocks))
    if set(given) != set(names):
        raise ValueError(f"block_weights names {', '.join(sorted(given))}, but the view's blocks are {', '.join(names)}")
    w = np.array([given[n] for n in names], dtype=np.float64)  # parse_block_weights: their sum is above 0
    return w / w.sum()


def _total_variance(X: np.ndarray, batch: int = 2048) -> float:
    """The sum of the columns' variances, in float64 sums over row batches (no float64 copy of a
    20,000 x 4,096 sample)."""
    total = np.zeros(X.shape[1])
    squares = np.zeros(X.shape[1])
    for i in range(0, len(X), batch):
        part = np.asarray(X[i : i + batch], dtype=np.float64)
        total += part.sum(axis=0)
        squares += (part * part).sum(axis=0)
    mean = total / max(1, len(X))
    return float(np.maximum(squares / max(1, len(X)) - mean * mean, 0).sum())


@dataclass(frozen=True)
class BlockCombiner:
    """The fitted join of a view's blocks: X -> float32 with block b's columns normalised by the
    rule and scaled by `scales[b]` (l2: sqrt(share); std: sqrt(share) / the block's std)."""

    rule: str
    blocks: tuple[Block, ...]
    shares: tuple[float, ...]
    scales: tuple[float, ...]

    @classmethod
    def fit(cls, rule: str, blocks: Sequence[Block], weights: str = EQUAL,
            sample: np.ndarray | None = None) -> BlockCombiner | None:
        """The combiner for these blocks (None for fewer than two: nothing to join). The `std`
        rule measures each block's spread on `sample` (training rows, any float dtype)."""
        if rule not in RULES:
            raise ValueError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
        blocks = tuple(blocks)
        if len(blocks) < 2:
            return None
        shares = block_shares(blocks, weights)
        scales = np.sqrt(shares)
        if rule == "std":
            if sample is None or not len(sample):
                raise ValueError("the std rule needs a sample of training rows")
            for i, b in enumerate(blocks):
                spread = math.sqrt(_total_variance(sample[:, b.start:b.stop]))
                scales[i] = scales[i] / spread if spread > 0 else scales[i]  # a constant block: nothing to scale
        return cls(rule, blocks, tuple(float(s) for s in shares), tuple(float(s) for s in scales))

    def transform(self, X: np.ndarray, batch: int = 8192) -> np.ndarray:
        """X (n, d) -> float32 (n, d), in row batches (no float64 copy of the whole matrix)."""
        out = np.array(X, dtype=np.float32, copy=True)
        for i in range(0, len(out), batch):
            part = out[i : i + batch]
            for b, scale in zip(self.blocks, self.scales, strict=True):
                cols = part[:, b.start:b.stop]
                if self.rule == "l2":
                    norms = np.sqrt(np.einsum("ij,ij->i", cols, cols, dtype=np.float64))
                    cols *= (scale / np.maximum(norms, 1e-30)).astype(np.float32)[:, None]
                else:
                    cols *= np.float32(scale)
        return out

    def to_dict(self) -> dict[str, Any]:
        """What head.json and the run record keep."""
        return {"rule": self.rule, "blocks": [[b.name, b.start, b.stop] for b in self.blocks],
                "shares": list(self.shares), "scales": list(self.scales)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BlockCombiner:
        return cls(str(d["rule"]), tuple(Block(str(n), int(a), int(b)) for n, a, b in d["blocks"]),
                   tuple(float(s) for s in d["shares"]), tuple(float(s) for s in d["scales"]))

    def describe(self) -> str:
        """'l2 per block, object 0.5 + scene 0.5' for a run's summary."""
        parts = " + ".join(f"{b.name} {s:g}" for b, s in zip(self.blocks, self.shares, strict=True))
        return f"{self.rule} per block, {parts}"
