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
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from hashtagkit.data.photos import Photos
from hashtagkit.errors import InputError
from hashtagkit.records import JsonRecord
from hashtagkit.stores import Store, aside_progress


@dataclass
class ExtractionRecord(JsonRecord):
    """A store's `extraction` attribute, typed. `runs`: one entry per `extract` call (started,
    device, precision, workers, decode, budget...; after it: finished, rows, seconds, invalid,
    and from the chunk logs hosts, worker_names, chunks, chunk_seconds); `chunk_runs[c]`: the
    run that computed chunk c (-1: none yet); `fingerprints[c]`: its photos' hash; then the
    last run's settings and provenance. Stores made before per-run records have no `runs` or
    `chunk_runs`: their top-level settings are the last run's."""

    runs: list = field(default_factory=list)
    chunk_runs: list | None = None
    fingerprints: list = field(default_factory=list)
    image_root: str | None = None
    created: str | None = None
    command: str | None = None
    versions: dict | None = None
    machine: dict | None = None
    device: str | None = None
    precision: str | None = None
    batch_size: int | None = None
    workers: int | None = None
    dtype: str | None = None
    chunk_rows: int | None = None
    allow_truncated: bool | None = None
    invalid: dict | None = None

    @classmethod
    def of(cls, store: Store) -> ExtractionRecord:
        """The store's record (an empty one before any extraction)."""
        return cls.from_json(store.extraction_record)

    def __bool__(self) -> bool:
        return bool(self.to_json())


def reasons_text(counts: dict) -> str:
    return ", ".join(f"{n:,} {reason}" for reason, n in sorted(counts.items())) or "none"



def chunk_fingerprints(photos: Photos, chunk_rows: int) -> list[str]:
    """Per chunk, a hash of its photos' relative paths and stamps (size and mtime, or ETag): a
    resume that would read other photos (another --images, files replaced since, a shard
    rewritten) changes the hash of a done chunk."""
    paths, stamps = photos.paths, photos.stamps()
    out = []
    for start in range(0, max(len(paths), 1), chunk_rows):
        h = hashlib.sha256()
        for rel, stamp in zip(paths[start : start + chunk_rows], stamps[start : start + chunk_rows], strict=True):
            h.update(f"{rel}\0{stamp}\n".encode() if stamp is not None else f"{rel}\0-\n".encode())
        out.append(h.hexdigest()[:16])
    return out



def check_resume(record: ExtractionRecord, done: np.ndarray, root: str | Path, prints: list[str], precision: str,
                 allow_truncated: bool, allow_mixed_precision: bool, allow_other_images: bool) -> None:
    """Refuse a resume that would mix precisions, photo sets or truncated-photo handling in one
    feature array."""
    if not done.any() or not record:
        return
    runs = record.runs
    before = {r.get("allow_truncated") for r in runs if "allow_truncated" in r} or \
        ({record.allow_truncated} if record.allow_truncated is not None else set())
    if before and before != {allow_truncated}:
        flag = "with" if True in before else "without"
        raise InputError(f"the done chunks were extracted {flag} {{opt:allow_truncated=True}}: resume the same "
                         "way, or {opt:overwrite=True} to start again")
    used = settings_of_done_chunks(record, done)
    precisions = sorted({p for p, _ in used if p})
    if precisions and precisions != [precision] and not allow_mixed_precision:
        raise InputError(
            f"the done chunks were extracted in {', '.join(precisions)}, this run would use {precision}: "
            f"resume with {{opt:precision}} {precisions[0]}, or pass {{opt:allow_mixed_precision=True}} to mix them, "
            "or {opt:overwrite=True} to start again")
    if allow_other_images:
        return
    old_root = record.image_root
    if old_root and str(old_root) != str(root):
        raise InputError(f"the done chunks were read from {old_root}, this run would read {root}: "
                         "pass the same {opt:images}, or {opt:allow_other_images=True} if the photos are the "
                         "same, or {opt:overwrite=True} to start again")
    old = record.fingerprints or []
    changed = [c for c in np.flatnonzero(done).tolist() if c < len(old) and old[c] and old[c] != prints[c]]
    if changed:
        raise InputError(f"{len(changed)} done chunk(s) (first: {changed[0]}) hold features of photos that have "
                         "changed since (size or modification time): pass {opt:overwrite=True} to extract again, or "
                         "{opt:allow_other_images=True} to keep them")


def settings_of_done_chunks(record: ExtractionRecord, done: np.ndarray) -> list[tuple[str | None, str | None]]:
    """The distinct (precision, device) that computed the done chunks; stores made before the
    per-run record say only the last run's."""
    runs, owner = record.runs, record.chunk_runs
    if owner is None:
        return [(record.precision, record.device)]
    out = []
    for c in np.flatnonzero(done).tolist():
        r = owner[c] if c < len(owner) else -1
        setting = (runs[r].get("precision"), runs[r].get("device")) if 0 <= r < len(runs) else \
            (record.precision, record.device)
        if setting not in out:
            out.append(setting)
    return out


def extraction_summary(store: Store) -> dict | None:
    """How the store's features were made, for `info`: the (precision, device) settings of the
    done chunks (several = mixed), runs, dates and invalid rows; None before any extraction."""
    record = ExtractionRecord.of(store)
    done = store.done_flags()
    if not record or not done.size:
        return None
    settings = settings_of_done_chunks(record, done) if done.any() else []
    runs = record.runs
    return {
        "settings": [{"precision": p, "device": d} for p, d in settings],
        # gathered from the per-chunk logs (format 2): who computed the chunks
        "hosts": sorted({h for r in runs for h in r.get("hosts") or []}),
        "workers": sorted({w for r in runs for w in r.get("worker_names") or []}),
        "mixed": len(settings) > 1,
        "runs": len(runs),
        "first": runs[0].get("started") if runs else record.created,
        "last": record.created,
        "invalid": store.invalid_counts(),
        "overwriting": aside_progress(store),  # an interrupted `extract --overwrite`: its chunks done so far
    }


def gather_chunk_log(store: Store, record: ExtractionRecord) -> ExtractionRecord:
    """The record with the per-chunk logs of the done chunks folded in: which run computed each
    chunk (`chunk_runs`) and, per run that has logs, its `hosts`, `worker_names`, `chunks`,
    `rows_done`, `invalid` rows and `chunk_seconds` (the sum of its chunks' compute seconds; a run's `seconds` stays
    its wall time). The coordinator's job, after the chunks: workers only write their chunk's
    log, never the group's attributes. Chunks without a log (format 1) keep what the record said."""
    runs = [dict(r) for r in record.runs]
    done = store.done_flags()
    owner = list(record.chunk_runs or [-1] * len(done))
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
    return replace(record, runs=runs, chunk_runs=owner)


def start_record(store: Store, record: ExtractionRecord, done: np.ndarray, pending: list[int], prints: list[str],
                 run: dict, root: str | Path) -> ExtractionRecord:
    """Write, before any chunk, which run computes which chunk and from which photos, so that even
    a killed run leaves the truth about its done chunks."""
    runs = list(record.runs)
    owner = record.chunk_runs
    if owner is None:  # a store from before per-chunk records: its done chunks are the last run's
        owner = [-1] * len(done)
        if record.precision:
            runs.append({"started": record.created, "device": record.device,
                         "precision": record.precision, "note": "recorded before per-run settings"})
            owner = [len(runs) - 1 if d else -1 for d in done.tolist()]
    owner = list(owner)
    fingerprints = list(record.fingerprints or [""] * len(done))
    for c in pending:
        owner[c], fingerprints[c] = len(runs), prints[c]
    runs.append(run)
    record = replace(record, runs=runs, chunk_runs=owner, fingerprints=fingerprints, image_root=str(root))
    store.write_extraction_record(record.to_json())
    return record


def finish_record(store: Store, record: ExtractionRecord, run: dict, settings: dict) -> ExtractionRecord:
    """Write, after the chunks, the run's outcome (`run`), the per-chunk logs folded in
    (`gather_chunk_log`) and the settings and provenance of this last run (`settings`)."""
    record = gather_chunk_log(store, replace(record, runs=[*record.runs[:-1], run]))
    known = ExtractionRecord.json_names()
    record = replace(record, **{k: v for k, v in settings.items() if k in known},
                     extra=record.extra | {k: v for k, v in settings.items() if k not in known})
    store.write_extraction_record(record.to_json())
    return record


