"""The extraction record: what a store's `extraction` attribute says about how its features were made.

Before any chunk, the record says which run computes which chunk (precision, device, workers...)
and a fingerprint of each chunk's photos (paths, sizes, mtimes), so even a killed run leaves the
truth about its done chunks (`start_record`); after them, the coordinator folds the per-chunk
logs in (`gather_chunk_log`: per run its hosts, workers and compute seconds). Only the
coordinating process writes the record. A resume that would mix precisions or photo sets is
refused unless asked for (`check_resume`), and `info` says when the done chunks come from
several settings (`extraction_summary`).
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hashtagkit.errors import InputError
from hashtagkit.stores import Store, aside_progress


def reasons_text(counts: dict) -> str:
    return ", ".join(f"{n:,} {reason}" for reason, n in sorted(counts.items())) or "none"



def chunk_fingerprints(root: Path, paths: Sequence[str], chunk_rows: int) -> list[str]:
    """Per chunk, a hash of its files' relative paths, sizes and mtimes: a resume that would read
    other photos (another --images, or files replaced since) changes the hash of a done chunk."""
    out = []
    for start in range(0, max(len(paths), 1), chunk_rows):
        h = hashlib.sha256()
        for rel in paths[start : start + chunk_rows]:
            try:
                st = os.stat(root / rel)
                h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{rel}\0-\n".encode())
        out.append(h.hexdigest()[:16])
    return out



def check_resume(record: dict, done: np.ndarray, root: Path, prints: list[str], precision: str,
                 allow_truncated: bool, allow_mixed_precision: bool, allow_other_images: bool) -> None:
    """Refuse a resume that would mix precisions, photo sets or truncated-photo handling in one
    feature array."""
    if not done.any() or not record:
        return
    runs = record.get("runs") or []
    before = {r.get("allow_truncated") for r in runs if "allow_truncated" in r} or \
        ({record["allow_truncated"]} if "allow_truncated" in record else set())
    if before and before != {allow_truncated}:
        flag = "with" if True in before else "without"
        raise InputError(f"the done chunks were extracted {flag} --allow-truncated: resume the same way, "
                         "or --overwrite to start again")
    used = settings_of_done_chunks(record, done)
    precisions = sorted({p for p, _ in used if p})
    if precisions and precisions != [precision] and not allow_mixed_precision:
        raise InputError(
            f"the done chunks were extracted in {', '.join(precisions)}, this run would use {precision}: "
            f"resume with --precision {precisions[0]}, or pass --allow-mixed-precision to mix them, "
            "or --overwrite to start again")
    if allow_other_images:
        return
    old_root = record.get("image_root")
    if old_root and Path(old_root) != root.resolve():
        raise InputError(f"the done chunks were read from {old_root}, this run would read {root.resolve()}: "
                         "pass the same --images, or --allow-other-images if the photos are the same, "
                         "or --overwrite to start again")
    old = record.get("fingerprints") or []
    changed = [c for c in np.flatnonzero(done).tolist() if c < len(old) and old[c] and old[c] != prints[c]]
    if changed:
        raise InputError(f"{len(changed)} done chunk(s) (first: {changed[0]}) hold features of photos that have "
                         "changed since (size or modification time): pass --overwrite to extract again, or "
                         "--allow-other-images to keep them")


def settings_of_done_chunks(record: dict, done: np.ndarray) -> list[tuple[str | None, str | None]]:
    """The distinct (precision, device) that computed the done chunks; stores made before the
    per-run record say only the last run's."""
    runs = record.get("runs") or []
    owner = record.get("chunk_runs")
    if owner is None:
        return [(record.get("precision"), record.get("device"))]
    out = []
    for c in np.flatnonzero(done).tolist():
        r = owner[c] if c < len(owner) else -1
        run = runs[r] if 0 <= r < len(runs) else record
        setting = (run.get("precision"), run.get("device"))
        if setting not in out:
            out.append(setting)
    return out


def extraction_summary(store: Store) -> dict | None:
    """How the store's features were made, for `info`: the (precision, device) settings of the
    done chunks (several = mixed), runs, dates and invalid rows; None before any extraction."""
    record = store.extraction_record
    done = store.done_flags()
    if not record or not done.size:
        return None
    settings = settings_of_done_chunks(record, done) if done.any() else []
    runs = record.get("runs") or []
    return {
        "settings": [{"precision": p, "device": d} for p, d in settings],
        # gathered from the per-chunk logs (format 2): who computed the chunks
        "hosts": sorted({h for r in runs for h in r.get("hosts") or []}),
        "workers": sorted({w for r in runs for w in r.get("worker_names") or []}),
        "mixed": len(settings) > 1,
        "runs": len(runs),
        "first": runs[0].get("started") if runs else record.get("created"),
        "last": record.get("created"),
        "invalid": store.invalid_counts(),
        "overwriting": aside_progress(store),  # an interrupted `extract --overwrite`: its chunks done so far
    }


def gather_chunk_log(store: Store, record: dict) -> dict:
    """The record with the per-chunk logs of the done chunks folded in: which run computed each
    chunk (`chunk_runs`) and, per run that has logs, its `hosts`, `worker_names`, `chunks`,
    `rows_done`, `invalid` rows and `chunk_seconds` (the sum of its chunks' compute seconds; a run's `seconds` stays
    its wall time). The coordinator's job, after the chunks: workers only write their chunk's
    log, never the group's attributes. Chunks without a log (format 1) keep what the record said."""
    record = dict(record)
    runs = [dict(r) for r in record.get("runs") or []]
    done = store.done_flags()
    owner = list(record.get("chunk_runs") or [-1] * len(done))
    owner += [-1] * (len(done) - len(owner))
    folded: dict[int, dict] = {}
    for c, log in enumerate(store.chunk_log()):
        if log is None or c >= len(done) or not done[c] or not isinstance(log.get("run"), int):
            continue
        r = log["run"]
        owner[c] = r
        acc = folded.setdefault(r, {"hosts": set(), "workers": set(), "chunks": 0, "rows": 0,
                                    "chunk_seconds": 0.0, "invalid": Counter()})
        acc["hosts"].add(str(log.get("host")))
        acc["workers"].add(str(log.get("worker")))
        acc["chunks"] += 1
        acc["rows"] += int(log.get("rows") or 0)
        acc["chunk_seconds"] += float(log.get("seconds") or 0.0)
        acc["invalid"].update(log.get("invalid") or {})
    for r, acc in folded.items():
        if 0 <= r < len(runs):
            runs[r].update(hosts=sorted(acc["hosts"]), worker_names=sorted(acc["workers"]), chunks=acc["chunks"],
                           rows_done=acc["rows"], chunk_seconds=round(acc["chunk_seconds"], 3),
                           invalid=dict(acc["invalid"]))
    record.update(runs=runs, chunk_runs=owner)
    return record


def start_record(store: Store, record: dict, done: np.ndarray, pending: list[int], prints: list[str], run: dict,
                 root: Path) -> dict:
    """Write, before any chunk, which run computes which chunk and from which photos, so that even
    a killed run leaves the truth about its done chunks."""
    record = dict(record)
    runs = list(record.get("runs") or [])
    owner = record.get("chunk_runs")
    if owner is None:  # a store from before per-chunk records: its done chunks are the last run's
        owner = [-1] * len(done)
        if record.get("precision"):
            runs.append({"started": record.get("created"), "device": record.get("device"),
                         "precision": record.get("precision"), "note": "recorded before per-run settings"})
            owner = [len(runs) - 1 if d else -1 for d in done.tolist()]
    owner = list(owner)
    fingerprints = list(record.get("fingerprints") or [""] * len(done))
    for c in pending:
        owner[c], fingerprints[c] = len(runs), prints[c]
    runs.append(run)
    record.update(runs=runs, chunk_runs=owner, fingerprints=fingerprints, image_root=str(root.resolve()))
    store.write_extraction_record(record)
    return record


