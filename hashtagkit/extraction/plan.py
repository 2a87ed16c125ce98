"""The plan of a run: the feature arrays made or checked, the chunks still to do, the record it continues."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hashtagkit.data.photos import Photos
from hashtagkit.errors import InputError
from hashtagkit.extraction.config import ExtractConfig
from hashtagkit.extraction.record import ExtractionRecord, check_resume, chunk_fingerprints
from hashtagkit.stores import AsideStore, Store, blocks_differ_in, describe_blocks
from hashtagkit.stores.store import chunk_bounds


@dataclass
class Plan:
    """What a run does: the chunks not done yet, of `n_chunks` of `chunk_rows` rows each."""

    chunk_rows: int
    pending: list[int]  # chunk ids not done
    n_chunks: int
    fresh: bool = False  # the arrays were just created (no earlier run's record applies)

    def rows(self, n_rows: int) -> int:
        """Rows in the pending chunks (the last chunk may be short)."""
        return sum(stop - start for start, stop in (chunk_bounds(c, self.chunk_rows, n_rows) for c in self.pending))

    def pending_rows(self, n_rows: int) -> list[int]:
        """The rows of the pending chunks, in order."""
        return [r for c in self.pending for r in range(*chunk_bounds(c, self.chunk_rows, n_rows))]


@dataclass
class Resume:
    """A run's plan and the record it continues (`check_resume` passed), or, writing aside
    (`overwrite`), why that record cannot be continued (`refused`: the caller starts the
    aside features again instead)."""

    plan: Plan
    done: np.ndarray
    record: ExtractionRecord
    prints: list[str] = field(default_factory=list)
    refused: str | None = None


def prepare_arrays(store: Store, blocks: list[dict], dtype: str, chunk_rows: int | None, overwrite: bool) -> Plan:
    """Create the feature arrays, or check that existing ones belong to the same extraction
    (`overwrite`: replace them if they do not)."""
    if store.feature_dtype is not None:
        same = Store.block_signatures_of(store.blocks) == Store.block_signatures_of(blocks) \
            and store.feature_dtype == dtype
        if not same and not overwrite:
            raise InputError(f"{store.path} already has features from "
                             f"{describe_blocks(store.blocks, store.feature_dtype)}, not "
                             f"{describe_blocks(blocks, dtype)}{blocks_differ_in(store.blocks, blocks)}; pass "
                             "{opt:overwrite=True} to replace them")
        if not same:
            store.drop_features()
    fresh = store.feature_dtype is None
    if fresh:
        store.init_features(blocks[-1]["columns"][1], dtype, blocks, chunk_rows)
    store.mark_not_done(list(store.damaged_chunks(decode=False)))  # a deleted chunk file is redone
    done = store.done_flags()
    return Plan(chunk_rows=store.chunk_rows(), pending=[int(c) for c in np.flatnonzero(~done)], n_chunks=len(done),
                fresh=fresh)


def plan_and_check(target: Store, blocks: list[dict], config: ExtractConfig, photos: Photos,
                   precision: str) -> Resume:
    """The plan of a run and the record it continues, checked by `check_resume`."""
    plan = prepare_arrays(target, blocks, config.dtype, config.chunk_rows, config.overwrite)
    done = target.done_flags()
    record = ExtractionRecord() if plan.fresh else ExtractionRecord.of(target)
    prints = chunk_fingerprints(photos, plan.chunk_rows)
    try:
        check_resume(record, done, photos.root, prints, precision, config.allow_truncated, config.allow_mixed_precision,
                     config.allow_other_images)
    except InputError as e:
        if not isinstance(target, AsideStore):
            raise
        return Resume(plan, done, record, prints, refused=str(e).split(":")[0])
    return Resume(plan, done, record, prints)
