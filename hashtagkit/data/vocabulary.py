"""Vocabulary building and multi-hot encoding: class id = frequency rank, ties by name."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np


def count_tags(tag_lists: Sequence[Sequence[str]]) -> Counter:
    return Counter(tag for tags in tag_lists for tag in tags)


def rank_vocabulary(counts: Counter, size: int | None = None) -> list[str]:
    """The `size` most frequent tags, most frequent first; equal counts ordered by name so the
    vocabulary never depends on input order."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [tag for tag, _ in ranked[:size]]


def multi_hot(tag_lists: Sequence[Sequence[str]], vocab: Sequence[str]) -> np.ndarray:
    """(n_images, n_classes) uint8; tags outside the vocabulary must be removed first."""
    index = {tag: i for i, tag in enumerate(vocab)}
    labels = np.zeros((len(tag_lists), len(vocab)), dtype=np.uint8)
    rows = [r for r, tags in enumerate(tag_lists) for _ in tags]
    cols = [index[t] for tags in tag_lists for t in tags]
    labels[rows, cols] = 1
    return labels
