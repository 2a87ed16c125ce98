"""The Zarr v3 feature store: the only hand-off between hashtagkit's steps.

`prepare` creates a store with paths, labels, vocabulary and split; `extract` adds features;
every head reads it. See `hashtagkit.stores.store` for the schema (format 2: every chunk, done
flag and chunk log its own object, so several workers can write one store), and
`hashtagkit.stores.upgrade` for the in-place upgrade of format-1 stores.
"""

from hashtagkit.stores.aside import AsideStore, aside_progress, finish_swap, has_aside, swap_in
from hashtagkit.stores.store import (
    FORMAT,
    SPLIT_CODES,
    SPLIT_NAMES,
    Store,
    blocks_differ_in,
    create_store,
    describe_blocks,
    open_store,
    store_lock,
)
from hashtagkit.stores.upgrade import upgrade_store

__all__ = ["AsideStore", "aside_progress", "finish_swap", "has_aside", "swap_in", "FORMAT", "SPLIT_CODES", "SPLIT_NAMES", "Store", "blocks_differ_in", "create_store", "describe_blocks",
           "open_store", "store_lock", "upgrade_store"]
