"""`extract --overwrite`'s aside group: new features grow beside the old ones and are swapped in whole.

Until the new features are complete the old ones stay readable; a rerun resumes the aside
group. The swap first records what the store is about to become (`SWAPPING`), then moves the
arrays one by one, so a swap killed at any step is finished by the next `extract` (or refused
by readers until then): the new features are never lost and never half in place.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from hashtagkit.stores.store import SWAPPING, Store, is_url, move_array, read_done

ASIDE = "overwriting"  # the subgroup the new features grow in while the old ones stay readable
FEATURE_ARRAYS = ("features", "valid", "reason", "chunk_log", "done")  # done last: moved, it says "complete"


class AsideStore(Store):
    """The new features of `extract --overwrite`, in a subgroup of the store until complete."""

    def __init__(self, store: Store):
        super().__init__(store.path, store.group.require_group(ASIDE), store.storage_options)
        self.parent = store

    @property
    def n_rows(self) -> int:
        return self.parent.n_rows


def has_aside(store: Store) -> bool:
    """Whether an `extract --overwrite` left new features growing beside the old ones."""
    return ASIDE in store.group


def aside_progress(store: Store) -> dict | None:
    """The chunks an interrupted `extract --overwrite` has done so far ({done, total}), or None."""
    if ASIDE not in store.group or "done" not in store.group[ASIDE]:
        return None
    done = read_done(store.group[ASIDE])
    return {"done": int(np.sum(done)), "total": int(done.size)}


def swap_in(store: Store, aside: AsideStore) -> None:
    """Replace the store's features by the complete new ones (see the module docstring)."""
    if SWAPPING not in store.group.attrs:
        store.group.attrs[SWAPPING] = {"blocks": aside.blocks, "extraction": aside.extraction_record}
    finish_swap(store)


def finish_swap(store: Store) -> bool:
    """Complete a swap that `swap_in` started; False when none was under way. Idempotent: an
    array still in the aside group replaces the store's copy, one already moved stays, then the
    record is written and the aside group removed."""
    pending = store.group.attrs.get(SWAPPING)
    if pending is None:
        return False
    if is_url(store.path):  # object storage: arrays move by copy (`objects.move_prefix`), no rename
        from hashtagkit.stores.objects import move_prefix, remove_prefix

        base = str(store.path)
        for name in FEATURE_ARRAYS:
            move_prefix(f"{base}/{ASIDE}/{name}", f"{base}/{name}", store.storage_options)
        store.group.attrs.update({"extraction": pending["extraction"], "blocks": pending["blocks"]})
        remove_prefix(f"{base}/{ASIDE}", store.storage_options)
    else:
        base = Path(store.path)
        for name in FEATURE_ARRAYS:
            new, old = base / ASIDE / name, base / name
            if new.exists():
                move_array(new, old)
        store.group.attrs.update({"extraction": pending["extraction"], "blocks": pending["blocks"]})
        shutil.rmtree(base / ASIDE, ignore_errors=True)
    del store.group.attrs[SWAPPING]
    return True
