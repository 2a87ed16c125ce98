"""`info --verify`: read everything a store says it has, and mark what is damaged to be redone."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from hashtagkit.errors import InputError
from hashtagkit.stores.store import open_store


@dataclass
class Verification:
    """`ok`: nothing damaged; `lines`: what was found and done, one line each, for a person."""

    ok: bool
    lines: list[str] = field(default_factory=list)


def verify(path: str | Path) -> Verification:
    """Every chunk marked done must exist and decode, and the labels, split and paths too.
    Damaged chunks are marked not done (under the store's writer lock), so the next `extract`
    redoes exactly them; a store that cannot be locked or written is verified all the same."""
    lines: list[str] = []
    store = open_store(path, mode="r+", check=False)  # damage is what it reports, not a reason to stop
    base = store.damaged_base(decode=True)
    lines.extend(base)
    if base:
        lines.append(f"{path}: its labels, split or paths are damaged: restore the store from a copy or make it "
                     "again with `hashtagkit prepare` (extract cannot repair them)")
        return Verification(False, lines)
    if not store.has_features():
        lines.append(f"{path}: labels, split and paths present; no features to verify")
        return Verification(True, lines)
    with contextlib.ExitStack() as held:
        unmarkable = None  # why the damaged chunks cannot be marked not done, if they cannot
        try:
            held.enter_context(store.lock("verified"))
        except InputError as e:  # a read-only store cannot be locked: report its damage all the same
            unmarkable = str(e)
            lines.append(f"note: {e}; reading it without the lock (nothing can be marked)")
        else:
            store = open_store(path, mode="r+", check=False)  # re-read under the lock (it may have been replaced)
        damaged = store.damaged_chunks(decode=True)
        for chunk, why in sorted(damaged.items()):
            lines.append(f"chunk {chunk} (rows {store.chunk_range(chunk)[0]}..): {why}")
        if damaged and unmarkable is None:
            try:
                store.mark_not_done(sorted(damaged))
            except OSError as e:  # a read-only `done`: the damage is reported all the same
                unmarkable = f"{e.strerror}: {os.fsdecode(e.filename or '')}"
        if damaged and unmarkable is not None:
            lines.append(f"{path}: {len(damaged)} damaged chunk(s), but they could not be marked not done "
                         f"({unmarkable}); make the store writable and verify again")
            return Verification(False, lines)
    done, total = store.completeness()
    if not damaged:
        lines.append(f"{path}: all {done} done chunk(s) of {total} present and readable")
        return Verification(True, lines)
    lines.append(f"{path}: {len(damaged)} damaged chunk(s) marked not done; repair with "
                 f"`hashtagkit extract {path}` and the same backbones (it redoes only those)")
    return Verification(False, lines)
