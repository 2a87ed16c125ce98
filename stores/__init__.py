"""The Zarr v3 feature store: the only hand-off between hashtagkit's steps.

`prepare` creates a store with paths, labels, vocabulary and split; `extract` adds features;
every head reads it. See `hashtagkit.stores.store` for the schema.
"""

from hashtagkit.stores.store import SPLIT_CODES, SPLIT_NAMES, Store, create_store, open_store, store_lock

__all__ = ["SPLIT_CODES", "SPLIT_NAMES", "Store", "create_store", "open_store", "store_lock"]
