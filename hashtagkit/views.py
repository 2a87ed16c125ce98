"""The feature views (object, scene, both): which columns a one-view head sees.

Its own small module, importing only numpy: the store uses it in training and `recommend` /
`serve` on new photos, which read a run without opening a store (no zarr at their start-up)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def mask_view(data: np.ndarray, blocks: Sequence[dict], view: str) -> np.ndarray:
    """Zero the columns of every block but `view` (a copy; `both` keeps all): how a one-view
    head sees features, in training (the store's blocks) and in recommend (the run's record)."""
    if view != "both":
        data = data.copy()
        for block in blocks:
            if block["name"] != view:
                start, stop = block["columns"]
                data[:, start:stop] = 0
    return data
