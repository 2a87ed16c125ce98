"""The extraction engine: reader -> model -> writer, resumable, batched, device and precision aware.

- reader: worker processes decode each image once with Pillow (EXIF orientation applied, any
  mode to RGB) and resize and crop it for every backbone's preprocessing, handing uint8 pixels
  over in shared memory; an image that is missing, unreadable, truncated or a decompression
  bomb becomes an invalid row with its reason, and the run goes on.
- model: all backbones in one pass over the decoded batch (normalised there), in inference
  mode, channels_last, on weights cast to bf16 (a CPU that has it) or fp16 (CUDA) unless fp32
  is asked for. On the CPU several batches run at once, one per lane of cores
  (`devices.extraction_budget`), so a decoder taking a core slows one lane, not every thread.
- writer: the store's `features` array is written one whole chunk at a time (`Store.write_chunk`,
  the same call a distributed worker makes); `chunk_log[c]` (who computed chunk c: host,
  worker, pid, device, precision, seconds) and then `done[c]` are set only after chunk c's
  features, `valid` flags and reasons are written, so a run killed at any instant resumes from
  the first chunk not done and loses at most one chunk of work. Batches never straddle a
  chunk, so a resumed fp32 run computes exactly what an uninterrupted one does.
- record: before any chunk, the store's `extraction` attribute says which run computes which
  chunk (precision, device, workers...) and a fingerprint of each chunk's photos (paths, sizes,
  mtimes), so even a killed run leaves the truth about its done chunks; after them, the
  coordinator folds the per-chunk logs into it (`gather_chunk_log`: per run its hosts, workers
  and compute seconds). Only the coordinating process writes the record. A resume that would
  mix precisions or photo sets is refused unless asked for (`allow_mixed_precision`,
  `allow_other_images`), and `info` says when the done chunks come from several settings.
- format: a store of format 1 (before per-chunk objects) is upgraded in place, under the lock,
  before anything else (`hashtagkit.stores.upgrade`).
- overwrite: the new features grow in the subgroup `overwriting` and replace the old ones only
  when complete; until then the old ones stay readable and a rerun of `--overwrite` resumes.
- a decode worker that dies (killed, out of memory) costs its image ('decoder died'), found by
  re-decoding the rest of its chunk one image at a time in a fresh process, never the run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hashtagkit import provenance
from hashtagkit.backbones import LoadedBackbone, Preprocessing
from hashtagkit.devices import Budget, compute_dtype, extraction_budget, pick_device, pick_precision
from hashtagkit.errors import InputError
from hashtagkit.images import (
    DECODE_MODES,
    MAX_PIXELS,
    DecodeError,
    decode,
    decode_jpegs_on,
    draft_side,
    jpeg_for_device,
    orient,
)
from hashtagkit.stores import Store, blocks_differ_in, describe_blocks, open_store
from hashtagkit.stores.store import SWAPPING, is_url, read_done
from hashtagkit.stores.upgrade import upgrade_store


# --- reader ------------------------------------------------------------------------------------
class ImageReader(torch.utils.data.Dataset):
    """Row -> (row, one uint8 pixel tensor per distinct preprocessing, reason or ''); the model's
    side normalises them (`Extractor`).

    `decode_mode` (images.DECODE_MODES): `fast` decodes JPEGs reduced down to the resize; `gpu`
    hands a whole RGB/grey JPEG over as its bytes and EXIF orientation (a 4th item, zeros in
    its pixel tensors), decoded in the main process on the model's device (`on_device`)."""

    def __init__(self, root: Path, paths: Sequence[str], transforms: Sequence[Preprocessing], allow_truncated: bool,
                 decode_mode: str = "default"):
        self.root, self.paths, self.transforms, self.allow_truncated = root, paths, list(transforms), allow_truncated
        self.decode_mode = decode_mode
        self.draft_side = draft_side(decode_mode)
        self.parent = os.getpid()  # decoding in another process than this one is a worker's

    @classmethod
    def exact(cls, root: Path, paths: Sequence[str], transforms: Sequence[Preprocessing],
              allow_truncated: bool) -> ImageReader:
        """A reader that never reduces a JPEG (Pillow at full size): the reference a
        pixel-changing decode is measured against."""
        reader = cls(root, paths, transforms, allow_truncated)
        reader.draft_side = 1 << 30
        return reader

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int):
        if os.getpid() != self.parent:
            kill_for_test(self.paths[row])
        if self.decode_mode == "gpu":
            try:
                jpeg = jpeg_for_device(self.root / self.paths[row])
            except DecodeError as e:
                return row, self.zeros(), str(e)
            if jpeg is not None:
                return row, self.zeros(), "", jpeg
        return self.decoded(row)

    def decoded(self, row: int) -> tuple:
        """The row decoded by Pillow: (row, pixels, '') or (row, zeros, reason)."""
        try:
            image = decode(self.root / self.paths[row], self.allow_truncated, draft_side=self.draft_side)
            return row, [t.pixels(image) for t in self.transforms], ""
        except DecodeError as e:
            return row, self.zeros(), str(e)

    def zeros(self) -> list[torch.Tensor]:
        return [torch.zeros(3, t.crop, t.crop, dtype=torch.uint8) for t in self.transforms]

    def on_device(self, batch: tuple, device: torch.device) -> tuple:
        """A collated batch -> (rows, inputs, reasons): the JPEGs a `gpu` reader handed over are
        decoded on `device` in one call, turned, resized and cropped there; one the device cannot
        decode goes through Pillow here (its pixels, or its reason)."""
        if len(batch) == 3:
            return batch
        rows, inputs, reasons, jpegs = batch
        if not jpegs:
            return rows, inputs, reasons
        inputs = [x.to(device) for x in inputs]
        decoded = decode_jpegs_on(device, [data for _, (data, _) in jpegs])
        for (i, (_, orientation)), image in zip(jpegs, decoded, strict=True):
            if image is None:
                _, pixels, reasons[i] = self.decoded(int(rows[i]))
            else:
                image = orient(image, orientation)
                pixels = [t.pixels_of_tensor(image) for t in self.transforms]
            for x, p in zip(inputs, pixels, strict=True):
                x[i] = p.to(device)
        return rows, inputs, reasons


def kill_for_test(rel: str) -> None:
    """Test-only hook: a decode worker reading a file named $HASHTAGKIT_TEST_KILL_DECODE dies
    as a decoder killed by the OS would (SIGKILL), to test that only that image is lost."""
    target = os.environ.get("HASHTAGKIT_TEST_KILL_DECODE")
    if target and Path(rel).name == target:
        os.kill(os.getpid(), signal.SIGKILL)


DECODER_DIED = "decoder died"


def is_worker_death(e: RuntimeError) -> bool:
    """DataLoader's error for a worker process that died (killed, out of memory, segfault)."""
    return "DataLoader worker" in str(e) and ("exited unexpectedly" in str(e) or "killed" in str(e))


def collate(items):
    """(rows, one stacked tensor per preprocessing, reasons), and when a `gpu` reader handed
    JPEGs over, a 4th item: [(index in the batch, (bytes, orientation))]."""
    rows = torch.tensor([it[0] for it in items])
    inputs = [torch.stack([it[1][i] for it in items]) for i in range(len(items[0][1]))]
    reasons = [it[2] for it in items]
    if any(len(it) > 3 for it in items):
        return rows, inputs, reasons, [(i, it[3]) for i, it in enumerate(items) if len(it) > 3]
    return rows, inputs, reasons


# --- model -------------------------------------------------------------------------------------
class FeatureModel(nn.Module):
    """Every backbone on its own preprocessed input, outputs concatenated in block order."""

    def __init__(self, backbones: Sequence[LoadedBackbone]):
        super().__init__()
        self.nets = nn.ModuleList([b.module for b in backbones])
        distinct = list(dict.fromkeys(b.preprocessing for b in backbones))
        self.transforms = distinct
        self.input_of = [distinct.index(b.preprocessing) for b in backbones]

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([net(inputs[i]).float() for net, i in zip(self.nets, self.input_of, strict=True)], dim=1)


class Extractor:
    """The model half of the engine, shared by `extract` and `recommend`.

    bf16 and fp16 run on weights cast to that type, not under autocast: autocast casts every
    weight again at every call (VGG-16's fc6 alone is 103M values), about 15% of a batch of 32
    on the CPU; the features stay within bf16 tolerance of the fp32 forward (cosine >= 0.9999,
    tests/test_extract.py, benchmarks/roofline_extract.py). The backbones' modules are the
    extractor's from then on (moved, cast and set to channels_last in place). Calls may come from
    several threads at once (the engine's lanes): nothing here changes state after __init__."""

    def __init__(self, backbones: Sequence[LoadedBackbone], device: torch.device, precision: str,
                 compile_batch: int | None = None):
        self.backbones = list(backbones)
        self.device, self.precision = device, precision
        self.dtype = compute_dtype(precision)
        self.model = FeatureModel(self.backbones).to(device).to(memory_format=torch.channels_last).eval()
        if self.dtype is not None:
            self.model.to(self.dtype)
        elif any(p.dtype != torch.float32 for p in self.model.parameters()):
            raise ValueError("fp32 asked for backbones whose weights an earlier Extractor cast to bf16/fp16: "
                             "load them again")
        self.dim = sum(b.spec.dim for b in self.backbones)
        # `extract --compile`: the model compiled for one batch shape (inductor, weights frozen as
        # constants: oneDNN prepacking, conv+ReLU fusion); a shorter batch is padded to it, so the
        # last batch of a run never compiles a second graph. Called from one thread only.
        self.compile_batch = compile_batch
        self.forward = self.model
        if compile_batch:
            self.forward = torch.compile(self.model, dynamic=False, options={"freezing": True})

    @property
    def transforms(self) -> list[Preprocessing]:
        return self.model.transforms

    @torch.inference_mode()
    def __call__(self, inputs: list[torch.Tensor]) -> np.ndarray:
        """One tensor per preprocessing (`transforms`): uint8 pixels (a decode worker's) or
        already normalised float32 -> (N, dim) float32 features."""
        inputs = [self.prepare(x, t) for x, t in zip(inputs, self.transforms, strict=True)]
        if not self.compile_batch:
            return self.model(inputs).float().cpu().numpy()
        n, size, out = len(inputs[0]), self.compile_batch, []
        for start in range(0, n, size):
            part = [x[start : start + size] for x in inputs]
            m = len(part[0])
            if m < size:  # zeros after the photos: their rows are dropped below
                part = [torch.cat([x, x.new_zeros((size - m, *x.shape[1:]))]).contiguous(memory_format=torch.channels_last)
                        for x in part]
            out.append(self.compiled(part)[:m].float().cpu())
        return torch.cat(out).numpy()

    def compiled(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """The compiled model's forward; a compile that fails here (inductor on the CPU needs a
        C++ compiler, Triton on CUDA a supported GPU) is the user's to avoid: one line, not the
        compiler's traceback."""
        try:
            return self.forward(inputs)
        except Exception as e:
            if not type(e).__module__.startswith(("torch._dynamo", "torch._inductor")):
                raise
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise InputError(f"--compile: torch.compile could not build the model on this machine ({first}); "
                             "run without --compile") from None

    def prepare(self, x: torch.Tensor, transform: Preprocessing) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = transform.normalize(x)
        return x.to(self.dtype or torch.float32).contiguous(memory_format=torch.channels_last)

    def describe(self) -> str:
        """How the model computes, for the run's record."""
        how = f"{self.precision} weights, channels_last" if self.dtype else "fp32, channels_last"
        return how + (f", torch.compile (batch {self.compile_batch})" if self.compile_batch else "")

    def columns(self) -> list[tuple[int, int]]:
        out, start = [], 0
        for b in self.backbones:
            out.append((start, start + b.spec.dim))
            start += b.spec.dim
        return out


# --- writer ------------------------------------------------------------------------------------
@dataclass
class Plan:
    chunk_rows: int
    pending: list[int]  # chunk ids not done
    n_chunks: int
    fresh: bool = False  # the arrays were just created (no earlier run's record applies)


def prepare_arrays(store: Store, blocks: list[dict], dtype: str, chunk_rows: int | None, overwrite: bool) -> Plan:
    """Create the feature arrays, or check that existing ones belong to the same extraction
    (`overwrite`: replace them if they do not)."""
    g = store.group
    if "features" in g:
        same = Store.block_signatures_of(store.blocks) == Store.block_signatures_of(blocks) \
            and str(g["features"].dtype) == dtype
        if not same and not overwrite:
            raise InputError(f"{store.path} already has features from "
                             f"{describe_blocks(store.blocks, str(g['features'].dtype))}, not "
                             f"{describe_blocks(blocks, dtype)}{blocks_differ_in(store.blocks, blocks)}; pass "
                             "--overwrite to replace them")
        if not same:
            store.drop_features()
    fresh = "features" not in g
    if fresh:
        store.init_features(blocks[-1]["columns"][1], dtype, blocks, chunk_rows)
    store.mark_not_done(list(store.damaged_chunks(decode=False)))  # a deleted chunk file is redone
    done = read_done(g)
    return Plan(chunk_rows=store.chunk_rows(), pending=[int(c) for c in np.flatnonzero(~done)], n_chunks=len(done),
                fresh=fresh)


# --- --overwrite: write aside, swap at the end -------------------------------------------------
ASIDE = "overwriting"  # the subgroup the new features grow in while the old ones stay readable
FEATURE_ARRAYS = ("features", "valid", "reason", "chunk_log", "done")  # done last: moved, it says "complete"


class AsideStore(Store):
    """The new features of `extract --overwrite`, in a subgroup of the store until complete."""

    def __init__(self, store: Store):
        super().__init__(store.path, store.group.require_group(ASIDE))
        self.parent = store

    @property
    def n_rows(self) -> int:
        return self.parent.n_rows


def swap_in(store: Store, aside: AsideStore) -> None:
    """Replace the store's features by the complete new ones.

    First the group records what it is about to become (`SWAPPING`: the new blocks and
    record), then `finish_swap` moves the arrays one by one. Killed at any step, the next
    `extract` of the store finishes the swap before anything else: the new features are never
    lost, and no reader takes a half-swapped store for a whole one (`Store.features` refuses)."""
    if SWAPPING not in store.group.attrs:
        store.group.attrs[SWAPPING] = {"blocks": aside.blocks, "extraction": aside.group.attrs.get("extraction") or {}}
    finish_swap(store)


def move_array(new: Path, old: Path) -> None:
    """One step of a swap: the array folder `new` takes the place of `old`."""
    if old.exists():
        shutil.rmtree(old)
    os.replace(new, old)


def finish_swap(store: Store) -> bool:
    """Complete a swap that `swap_in` started (see there); False when none was under way.
    Idempotent: an array still in the aside group replaces the store's copy, one already moved
    stays, then the record is written and the aside group removed."""
    pending = store.group.attrs.get(SWAPPING)
    if pending is None:
        return False
    base = Path(store.path)
    for name in FEATURE_ARRAYS:
        new, old = base / ASIDE / name, base / name
        if new.exists():
            move_array(new, old)
    store.group.attrs.update({"extraction": pending["extraction"], "blocks": pending["blocks"]})
    shutil.rmtree(base / ASIDE, ignore_errors=True)
    del store.group.attrs[SWAPPING]
    return True


class ChunkBatches(torch.utils.data.Sampler):
    """Batches that never straddle a chunk, so every chunk is computed the same way on a resume."""

    def __init__(self, chunks: list[int], chunk_rows: int, n_rows: int, batch_size: int):
        self.batches = []
        for c in chunks:
            rows = list(range(c * chunk_rows, min((c + 1) * chunk_rows, n_rows)))
            self.batches += [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


@dataclass
class Summary:
    rows: int
    extracted: int
    invalid: dict  # reason -> rows, of this run
    seconds: float
    device: str
    precision: str
    skipped_chunks: int
    store_invalid: dict | None = None  # reason -> rows, of the whole store after this run

    def text(self) -> str:
        rate = self.extracted / self.seconds if self.seconds > 0 else 0.0
        text = (f"extracted {self.extracted:,} of {self.rows:,} rows in {self.seconds:.1f}s ({rate:.1f} images/s, "
                f"{self.device}, {self.precision}); {self.skipped_chunks} chunk(s) already done; "
                f"invalid rows: {reasons_text(self.invalid)} in this run")
        if self.store_invalid is not None:
            text += f", {reasons_text(self.store_invalid)} in the store"
        return text


def reasons_text(counts: dict) -> str:
    return ", ".join(f"{n:,} {reason}" for reason, n in sorted(counts.items())) or "none"


# --- what a resume must agree with ------------------------------------------------------------
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


def plan_and_check(target: Store, blocks: list[dict], dtype: str, chunk_rows: int | None, overwrite: bool,
                   root: Path, paths: list[str], precision: str, allow_truncated: bool,
                   allow_mixed_precision: bool, allow_other_images: bool) -> tuple:
    """The plan of a run and the record it continues, checked by `check_resume`. Writing aside
    (`--overwrite`), a refusal is returned in the record (`_refused`) for the caller to start
    the aside again instead."""
    plan = prepare_arrays(target, blocks, dtype, chunk_rows, overwrite)
    done = read_done(target.group)
    record = {} if plan.fresh else dict(target.group.attrs.get("extraction") or {})
    prints = chunk_fingerprints(root, paths, plan.chunk_rows)
    try:
        check_resume(record, done, root, prints, precision, allow_truncated, allow_mixed_precision,
                     allow_other_images)
    except InputError as e:
        if not isinstance(target, AsideStore):
            raise
        record["_refused"] = str(e).split(":")[0]
    return plan, done, record, prints


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
    record = store.group.attrs.get("extraction")
    if not record or "done" not in store.group:
        return None
    overwriting = None
    if ASIDE in store.group and "done" in store.group[ASIDE]:
        new_done = read_done(store.group[ASIDE])
        overwriting = {"done": int(new_done.sum()), "total": int(new_done.size)}
    done = read_done(store.group)
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
        "invalid": dict(Counter(r for r in np.asarray(store.group["reason"][...]).tolist() if r)),
        "overwriting": overwriting,  # an interrupted `extract --overwrite`: its chunks done so far
    }


def gather_chunk_log(store: Store, record: dict) -> dict:
    """The record with the per-chunk logs of the done chunks folded in: which run computed each
    chunk (`chunk_runs`) and, per run that has logs, its `hosts`, `worker_names`, `chunks`,
    `rows_done`, `invalid` rows and `chunk_seconds` (the sum of its chunks' compute seconds; a run's `seconds` stays
    its wall time). The coordinator's job, after the chunks: workers only write their chunk's
    log, never the group's attributes. Chunks without a log (format 1) keep what the record said."""
    record = dict(record)
    runs = [dict(r) for r in record.get("runs") or []]
    done = read_done(store.group) if "done" in store.group else np.zeros(0, bool)
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


def chunk_info(run: int, device: torch.device, precision: str, seconds: float, worker: str = "in-process") -> dict:
    """What a writer records about the chunk it computed (see `Store.write_chunk`)."""
    return {"run": run, "host": socket.gethostname(), "worker": worker, "pid": os.getpid(), "device": str(device),
            "precision": precision, "seconds": round(seconds, 3)}


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
    store.group.attrs["extraction"] = record
    return record


def check_decode_option(decode: str, device: str, distributed: bool) -> None:
    """Refuse a --decode this run cannot do, before any weights are loaded."""
    if decode not in DECODE_MODES:
        raise InputError(f"--decode must be one of {', '.join(DECODE_MODES)}, got {decode!r}")
    if decode != "default" and distributed:
        raise InputError(f"--decode {decode} is for an in-process extraction; Dask workers decode the default way")
    if decode == "gpu" and (device == "cpu" or not torch.cuda.is_available()):
        raise InputError("--decode gpu decodes JPEGs with nvJPEG on a CUDA device: "
                         + ("pass --device cuda" if torch.cuda.is_available() else "none is available")
                         + " (use --decode default or fast)")


def check_compile_option(compile: bool, lanes: int | None, distributed: bool) -> None:
    """Refuse --compile where it cannot run, before any weights are loaded: a compiled model runs
    one batch at a time (it is not called from several lanes' threads), in this process."""
    if compile and lanes is not None and lanes > 1:
        raise InputError("--compile runs one batch at a time on all threads: drop --lanes (or use --lanes 1)")
    if compile and distributed:
        raise InputError("--compile is for an in-process extraction; Dask workers run the model uncompiled")


def extract(
    store_path: str | Path,
    backbones: Sequence[LoadedBackbone],
    *,
    images: str | Path | None = None,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 32,
    workers: int | None = None,
    lanes: int | None = None,
    decode: str = "default",
    compile: bool = False,
    dtype: str = "float16",
    chunk_rows: int | None = None,
    overwrite: bool = False,
    allow_truncated: bool = False,
    allow_mixed_precision: bool = False,
    allow_other_images: bool = False,
    progress: bool = True,
    log=print,
    cluster: str | None = None,
    scheduler: str | None = None,
) -> Summary:
    """Fill the store's features with the given backbones; resumes unless `overwrite`.

    A resume must use the same backbones, weights, preprocessing and dtype (else `overwrite`),
    the same precision (else `allow_mixed_precision`) and the same photos (else
    `allow_other_images`). `cluster` ("local[:N]") or `scheduler` (an address) computes the
    chunks on Dask workers (`hashtagkit.distributed`) instead of in this process."""
    if cluster and scheduler:
        raise InputError("--cluster and --scheduler are exclusive: choose one")
    if cluster or scheduler:
        from hashtagkit import distributed
        distributed.parse_cluster(cluster) if cluster else distributed.parse_scheduler(scheduler)
    if dtype not in ("float16", "float32"):
        raise InputError(f"--dtype must be float16 or float32, got {dtype!r}")
    check_decode_option(decode, device, bool(cluster or scheduler))
    check_compile_option(compile, lanes, bool(cluster or scheduler))
    if batch_size < 1:
        raise InputError("--batch-size must be at least 1")
    blocks_names = [b.spec.block for b in backbones]
    if len(set(blocks_names)) != len(blocks_names):
        raise InputError(f"two backbones fill the same block ({', '.join(blocks_names)}): choose one per block")
    store = open_store(store_path, mode="r+")
    root = Path(images) if images else (Path(store.image_root) if store.image_root else None)
    if root is None or not root.is_dir():
        raise InputError(f"image folder {root} does not exist: pass --images DIR")
    dev = pick_device(device)
    prec = pick_precision(precision, dev)
    log(f"device {dev} ({'chosen automatically' if device == 'auto' else 'as asked'}), precision {prec}")
    engine = Extractor(backbones, dev, prec, compile_batch=batch_size if compile else None)
    if compile:
        log("--compile: the first batch compiles the model (a minute or two on a CPU, cached for later runs)")
    blocks = [b.describe(cols) | {"dtype": dtype} for b, cols in zip(backbones, engine.columns(), strict=True)]
    if decode != "default":  # other pixels: part of each block's preprocessing (a resume must agree)
        for b in blocks:
            b["preprocessing"] = b["preprocessing"] | {"decode": decode_record(decode)}
    budget = extraction_budget(dev, lanes=1 if compile else lanes, workers=workers)
    workers = budget.workers
    with store.lock("extracted"):
        # re-read under the lock: a `prepare --overwrite` that swapped the store in before it was
        # taken must not be written through this stale handle
        store = open_store(store_path, mode="r+")
        root = Path(images) if images else Path(store.image_root or root)  # of the store read under the lock
        if upgrade_store(store, log=log):  # a format-1 store (or an interrupted upgrade): format 2 first
            store = open_store(store_path, mode="r+")
        if finish_swap(store):  # an `--overwrite` killed while swapping: its new features are complete
            log("finished the swap of an interrupted `extract --overwrite`: its new features are in place")
            store, overwrite = open_store(store_path, mode="r+"), False
        target = store
        if overwrite and ("features" in store.group or ASIDE in store.group):
            if is_url(store.path):  # the swap moves folders: a local file system only, for now
                raise InputError(f"{store_path}: --overwrite of a store at a URL is not supported; "
                                 "extract into a new store instead")
            target = AsideStore(store)
            log("--overwrite: the new features are written beside the old ones, which stay readable until "
                "the new ones are complete (a rerun with --overwrite resumes them)")
        paths = store.paths()
        plan, done, record, prints = plan_and_check(
            target, blocks, dtype, chunk_rows, overwrite, root, paths, prec, allow_truncated,
            allow_mixed_precision, allow_other_images)
        if target is not store and not plan.fresh and record.get("_refused"):
            # `--overwrite` resumed with other settings or photos than its own interrupted start:
            # that start is what is being overwritten, not a reason to refuse
            log(f"--overwrite: the interrupted new features differ ({record['_refused']}); starting them again")
            target.drop_features()
            plan, done, record, prints = plan_and_check(
                target, blocks, dtype, chunk_rows, overwrite, root, paths, prec, allow_truncated,
                allow_mixed_precision, allow_other_images)
        g = target.group
        n = store.n_rows
        run = {"started": provenance.now(), "device": str(dev), "precision": prec, "batch_size": batch_size,
               "workers": workers, "allow_truncated": allow_truncated, "image_root": str(root.resolve()),
               "compute": engine.describe(), "budget": budget.describe() | {"cores": os.cpu_count()},
               # how pixels were decoded: JPEGs far larger than the crop are decoded reduced
               "decode": decode_record(decode) | {"max_pixels": MAX_PIXELS}}
        if cluster or scheduler:
            run["distributed"] = distributed.describe(cluster, scheduler)
        reader = ImageReader(root, paths, engine.transforms, allow_truncated, decode)
        if decode != "default" and plan.pending:
            rows = [r for c in plan.pending for r in range(c * plan.chunk_rows, min((c + 1) * plan.chunk_rows, n))]
            check = decode_check(reader, engine, rows[:DECODE_CHECK_ROWS])
            run["decode"]["check"] = check
            if check["photos"]:
                log(f"--decode {decode}: fc7 cosine against the exact decode on {check['photos']} of these photos: "
                    f"min {check['cosine_min']:.5f}, mean {check['cosine_mean']:.5f}")
        record = start_record(target, record, done, plan.pending, prints, run, root)
        if cluster or scheduler:
            todo, invalid, seconds = distributed.run_chunks(target, engine, plan, root, batch_size, allow_truncated,
                                                            run, len(record["runs"]) - 1, cluster, scheduler,
                                                            progress, log)
        else:
            todo, invalid, seconds = run_chunks(target, engine, plan, reader,
                                                batch_size, budget, dev, progress, run_index=len(record["runs"]) - 1)
        store_invalid = dict(Counter(r for r in np.asarray(g["reason"][...]).tolist() if r))
        run.update(finished=provenance.now(), rows=todo, seconds=round(seconds, 2), invalid=dict(invalid),
                   images_per_second=round(todo / seconds, 2) if seconds > 0 else None)
        record["runs"][-1] = run
        record = gather_chunk_log(target, record)
        g.attrs["extraction"] = record | provenance.record(
            device=str(dev), precision=prec, batch_size=batch_size, workers=workers, dtype=dtype,
            chunk_rows=plan.chunk_rows, allow_truncated=allow_truncated, image_root=str(root.resolve()),
            invalid=store_invalid,
        )
        if target is not store:
            swap_in(store, target)
    summary = Summary(rows=n, extracted=todo, invalid=dict(invalid), seconds=seconds, device=str(dev),
                      precision=prec, skipped_chunks=plan.n_chunks - len(plan.pending), store_invalid=store_invalid)
    log(summary.text())
    return summary


DECODE_CHECK_ROWS = 8  # photos a `--decode fast|gpu` run compares with the exact decode


def decode_check(reader: ImageReader, engine: Extractor, rows: list[int]) -> dict:
    """The fc7 cosine between `reader`'s pixels and the exact decode's (Pillow, full size, never
    reduced) on `rows`, computed by the run's own model: what a pixel-changing decode costs in
    features, on the run's own photos (rows that either way fails to decode are left out)."""
    exact = ImageReader.exact(reader.root, reader.paths, reader.transforms, reader.allow_truncated)
    a = collate([exact.decoded(r) for r in rows])
    b = reader.on_device(collate([reader[r] for r in rows]), engine.device)
    keep = [i for i in range(len(rows)) if not a[2][i] and not b[2][i]]
    if not keep:
        return {"photos": 0}
    fa, fb = engine(a[1])[keep].astype(np.float64), engine(b[1])[keep].astype(np.float64)
    norms = np.linalg.norm(fa, axis=1) * np.linalg.norm(fb, axis=1)
    cos = (fa * fb).sum(1) / np.where(norms > 0, norms, 1.0)
    return {"photos": len(keep), "cosine_min": round(float(cos.min()), 6), "cosine_mean": round(float(cos.mean()), 6),
            "against": "Pillow, full-size decode"}


def decode_record(mode: str) -> dict:
    """How a run decodes pixels, as recorded (the run's `decode`; a block's preprocessing when
    not the default, since the pixels differ)."""
    if mode == "gpu":
        return {"mode": "gpu", "jpeg": "nvJPEG (torchvision.io.decode_jpeg), torchvision antialiased resize",
                "other_formats": "Pillow"}
    return {"mode": mode, "jpeg_draft_min_side": draft_side(mode)}


class ChunkBuffer:
    """One chunk's rows as they arrive from the model: features, valid flags, reasons, and which
    rows are in. The in-process writer and a Dask task fill a chunk the same way."""

    def __init__(self, start: int, stop: int, dim: int):
        self.start = start
        self.features = np.zeros((stop - start, dim), dtype=np.float32)
        self.valid = np.ones(stop - start, bool)
        self.reasons = [""] * (stop - start)
        self.received = np.zeros(stop - start, bool)

    def put(self, rows: Sequence[int], feats: np.ndarray, reasons: Sequence[str]) -> None:
        """Rows of one batch: an invalid row keeps zero features and gets its reason."""
        for j, (r, reason) in enumerate(zip(rows, reasons, strict=True)):
            i = r - self.start
            if reason:
                self.valid[i] = False
                self.reasons[i] = reason
            else:
                self.features[i] = feats[j]
            self.received[i] = True  # last: an interruption above leaves the row to do again

    def complete(self) -> bool:
        return bool(self.received.all())


class ChunkWriter:
    """Gathers decoded-and-extracted rows into the current chunk and writes each chunk when full."""

    def __init__(self, store: Store, engine: Extractor, plan: Plan, bar, run_index: int = -1):
        self.store, self.engine, self.bar = store, engine, bar
        self.chunk_rows, self.n = plan.chunk_rows, store.n_rows
        self.pending = list(plan.pending)
        self.invalid: Counter = Counter()
        self.buf = None
        self.run_index = run_index  # which run of the record computes the chunks (their logs say so)
        self.started = time.perf_counter()  # of the current chunk: its log's seconds

    def missing_rows(self) -> list[int]:
        """The rows of the current chunk not received yet (after a decode worker died)."""
        c = self.pending[0]
        rows = range(c * self.chunk_rows, min((c + 1) * self.chunk_rows, self.n))
        if self.buf is None:
            return list(rows)
        return [r for r in rows if not self.buf.received[r - rows.start]]

    def add(self, rows: torch.Tensor | np.ndarray, inputs: list[torch.Tensor], reasons: list[str]) -> None:
        self.put(rows, self.engine(inputs), reasons)

    def put(self, rows: torch.Tensor | np.ndarray, feats: np.ndarray, reasons: list[str]) -> None:
        """A batch's features (of the current chunk: batches arrive in order), written when the
        chunk is complete."""
        rows = np.asarray(rows)
        c = self.pending[0]
        start, stop = c * self.chunk_rows, min((c + 1) * self.chunk_rows, self.n)
        if self.buf is None:
            self.buf = ChunkBuffer(start, stop, self.engine.dim)
        self.buf.put(rows.tolist(), feats, reasons)
        self.invalid.update(r for r in reasons if r)
        self.bar.update(len(rows))
        self.flush()

    def flush(self) -> None:
        """Write the current chunk if every row of it is in: features first, then the done flag."""
        if self.buf is not None and self.buf.complete():
            info = chunk_info(self.run_index, self.engine.device, self.engine.precision,
                              time.perf_counter() - self.started)
            self.store.write_chunk(self.pending[0], self.buf.features, self.buf.valid, self.buf.reasons, info=info)
            self.pending.pop(0)
            self.buf = None
            self.started = time.perf_counter()

    def lost(self, row: int) -> None:
        """A row whose decoder died: invalid, with zero features."""
        dummy = [torch.zeros(1, 3, t.crop, t.crop) for t in self.engine.transforms]
        self.add(np.array([row]), dummy, [DECODER_DIED])


def loader_for(reader: ImageReader, batches: list[list[int]], workers: int, dev: torch.device):
    return torch.utils.data.DataLoader(
        reader, batch_sampler=batches, num_workers=workers, collate_fn=collate,
        pin_memory=dev.type == "cuda", persistent_workers=False, prefetch_factor=4 if workers > 0 else None,
    )


def decode_row(reader: ImageReader, row: int):
    return reader[row]


def one_thread() -> None:
    """In a forked decoder, as in DataLoader's workers: a forked OpenMP pool would deadlock."""
    torch.set_num_threads(1)


def isolate(writer: ChunkWriter, reader: ImageReader) -> None:
    """Decode the current chunk's missing rows one at a time in a separate process: a row whose
    decoder dies again is the culprit and becomes invalid ('decoder died'); the others are
    extracted as usual. A process pool, not a DataLoader, so that the death is reported by the
    one call that caused it (DataLoader reports it from a SIGCHLD handler, anywhere)."""
    import concurrent.futures as cf

    rows = writer.missing_rows()
    pool = cf.ProcessPoolExecutor(max_workers=1, initializer=one_thread)
    try:
        for row in rows:
            try:
                item = pool.submit(decode_row, reader, row).result()
            except cf.process.BrokenProcessPool:
                pool.shutdown(wait=True)
                pool = cf.ProcessPoolExecutor(max_workers=1, initializer=one_thread)
                writer.lost(row)
                continue
            writer.add(*reader.on_device(collate([item]), writer.engine.device))
    finally:
        pool.shutdown(wait=True)
    writer.flush()


class Lanes:
    """Up to `n` batches in the model at once, each on its own thread, results taken in order.

    The writer sees batches in exactly the order the loader gave them (a chunk is complete only
    when its last batch is in), so resume and done-flag semantics are those of one lane."""

    def __init__(self, engine: Extractor, writer: ChunkWriter, n: int):
        import concurrent.futures as cf
        from collections import deque

        self.engine, self.writer, self.n = engine, writer, n
        self.pool = cf.ThreadPoolExecutor(max_workers=n, thread_name_prefix="lane") if n > 1 else None
        self.queue: deque = deque()

    def submit(self, rows, inputs: list[torch.Tensor], reasons: list[str]) -> None:
        if self.pool is None:
            self.writer.add(rows, inputs, reasons)
            return
        self.queue.append((rows, self.pool.submit(self.engine, inputs), reasons))
        while len(self.queue) >= self.n:
            self.take()

    def take(self) -> None:
        rows, future, reasons = self.queue.popleft()
        self.writer.put(rows, future.result(), reasons)

    def drain(self) -> None:
        """Every batch in flight into the writer (before isolating a dead decoder's rows)."""
        while self.queue:
            self.take()

    def close(self) -> None:
        if self.pool is not None:
            for _, future, _ in self.queue:
                future.cancel()
            self.pool.shutdown(wait=True)


@contextmanager
def torch_threads(n: int):
    """Torch's intra-op threads for the extraction, restored after it (recommend and serve
    share the process)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_chunks(store: Store, engine: Extractor, plan: Plan, reader: ImageReader, batch_size: int, budget: Budget,
               dev: torch.device, progress: bool, run_index: int = -1) -> tuple[int, Counter, float]:
    """Decode, extract and write every pending chunk; returns (rows, invalid reasons, seconds).

    `budget.workers` processes decode (into shared memory, as uint8 pixels) while
    `budget.lanes` batches run in the model. A decode worker that dies (killed, out of memory)
    loses the batches it held: the rest of the current chunk is then decoded one image at a
    time in fresh workers (`isolate`), the culprit alone is marked invalid, and the run goes on
    with a new pool."""
    from tqdm import tqdm

    todo = sum(min((c + 1) * plan.chunk_rows, store.n_rows) - c * plan.chunk_rows for c in plan.pending)
    started = time.perf_counter()
    bar = tqdm(total=todo, unit="img", desc="extracting", disable=not progress, dynamic_ncols=True)
    writer = ChunkWriter(store, engine, plan, bar, run_index)
    lanes = Lanes(engine, writer, budget.lanes)
    try:
        with torch_threads(budget.threads):
            while writer.pending:
                batches = ChunkBatches(writer.pending, plan.chunk_rows, store.n_rows, batch_size).batches
                try:
                    for batch in loader_for(reader, batches, budget.workers, dev):
                        lanes.submit(*reader.on_device(batch, dev))
                    lanes.drain()
                except RuntimeError as e:
                    if budget.workers == 0 or not is_worker_death(e):
                        raise
                    lanes.drain()
                    if writer.pending:
                        isolate(writer, reader)
    finally:
        lanes.close()
    bar.close()
    return todo, writer.invalid, time.perf_counter() - started
