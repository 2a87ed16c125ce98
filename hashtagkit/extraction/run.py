"""`extract`: fill a store's features with backbones, resumably, in this process or on Dask.

The orchestration only: check the settings (`ExtractConfig`), load the backbones, take the
store's lock, finish what an earlier run left (a format-1 upgrade, an interrupted swap), plan
(`plan`), write the record's start (`record`), run the chunks (`local` or `distributed`), write
the record's end, and swap an `overwrite`'s new features in (`hashtagkit.stores.aside`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hashtagkit import provenance
from hashtagkit.backbones import DEFAULT_BACKBONES, LoadedBackbone, load_backbone, parse_backbone_option
from hashtagkit.data.sources import image_root, photos_for, root_problem
from hashtagkit.devices import extraction_budget, pick_device, pick_precision
from hashtagkit.errors import InputError
from hashtagkit.extraction.config import ExtractConfig, decode_record
from hashtagkit.extraction.engine import Extractor
from hashtagkit.extraction.plan import plan_and_check
from hashtagkit.extraction.reader import ImageReader, collate
from hashtagkit.extraction.record import finish_record, reasons_text, start_record
from hashtagkit.images import MAX_PIXELS
from hashtagkit.stores import AsideStore, Store, finish_swap, has_aside, open_store, swap_in, upgrade_store

BackboneInput = str | LoadedBackbone


@dataclass
class Summary:
    """What one `extract` call did (its run's entry in the store's record says more)."""

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


def load_backbones(backbones: Sequence[BackboneInput] | None, seed: int = 0,
                   preprocessing: Mapping[str, str] | None = None) -> list[LoadedBackbone]:
    """Backbones given by name (`"vgg16-object"`: its default weights; `"NAME=PATH"`; `"NAME=random"`)
    or already loaded; None: the paper's two (`DEFAULT_BACKBONES`). `preprocessing` feeds a
    backbone (by name) other pixels than its own; `seed` is the seed of random weights."""
    preprocessing = dict(preprocessing or {})
    given = [parse_backbone_option(b) if isinstance(b, str) else b for b in backbones or DEFAULT_BACKBONES]
    unknown = sorted(set(preprocessing) - {b[0] for b in given if isinstance(b, tuple)})
    if unknown:
        raise InputError(f"{{param}} names {unknown[0]!r}, not a backbone being extracted", param="preprocessing")
    return [load_backbone(b[0], b[1], seed=seed, preprocessing=preprocessing.get(b[0])) if isinstance(b, tuple) else b
            for b in given]


def extract(store: str | Path | Store, backbones: Sequence[BackboneInput] | None = None,
            config: ExtractConfig | None = None, *, seed: int = 0, preprocessing: Mapping[str, str] | None = None,
            storage_options: Mapping[str, Any] | None = None, log: Callable[[str], None] = print,
            **settings: Any) -> Summary:
    """Fill the store's features with the given backbones (None: vgg16-object and vgg16-scene);
    resumes an interrupted run unless `overwrite`.

    The settings are `ExtractConfig`'s, given as one (`config=`) or by name
    (`extract(store, device="cuda", batch_size=64)`: they override `config`'s).

    A resume must use the same backbones, weights, preprocessing and dtype (else `overwrite`),
    the same precision (else `allow_mixed_precision`) and the same photos (else
    `allow_other_images`). `config.cluster` ("local[:N]") or `config.scheduler` (an address)
    computes the chunks on Dask workers instead of in this process. Everything is checked
    before any weights are loaded.

    `store` and `config.images` may be URLs (`s3://bucket/h.zarr`, `s3://bucket/photos/`),
    opened with `storage_options` (or the store handle's, or the process's: `hashtagkit.remote`)."""
    config = config or ExtractConfig()
    if settings:
        known = {f.name for f in dataclasses.fields(ExtractConfig)}
        for name in settings:
            if name not in known:
                raise InputError(f"extract() has no setting {name!r} (ExtractConfig's: {', '.join(sorted(known))})")
        config = config.replace(**settings)
    config.check()
    given = store
    store_path = store.path if isinstance(store, Store) else store
    options = store.storage_options if isinstance(store, Store) else storage_options
    opened = open_store(store_path, storage_options=options)  # a missing store fails before any weights are loaded
    options = opened.storage_options
    root = image_root(config.images or opened.image_root)
    problem = root_problem(root, options)
    if problem:
        raise InputError(f"{problem}: pass {{param}}", param="images")
    loaded = load_backbones(backbones, seed, preprocessing)
    blocks_names = [b.spec.block for b in loaded]
    if len(set(blocks_names)) != len(blocks_names):
        raise InputError(f"two backbones fill the same block ({', '.join(blocks_names)}): choose one per block")
    dev = pick_device(config.device)
    prec = pick_precision(config.precision, dev)
    log(f"device {dev} ({'chosen automatically' if config.device == 'auto' else 'as asked'}), precision {prec}")
    engine = Extractor(loaded, dev, prec)
    blocks = [b.describe(cols) | {"dtype": config.dtype} for b, cols in zip(loaded, engine.columns(), strict=True)]
    if config.decode != "default":  # other pixels: part of each block's preprocessing (a resume must agree)
        for b in blocks:
            b["preprocessing"] = b["preprocessing"] | {"decode": decode_record(config.decode)}
    with opened.lock("extracted"):
        # re-read under the lock: a `prepare --overwrite` that swapped the store in before it was
        # taken must not be written through this stale handle
        store = open_store(store_path, mode="r+", storage_options=options)
        root = image_root(config.images or store.image_root or root)
        if upgrade_store(store, log=log):  # a format-1 store (or an interrupted upgrade): format 2 first
            store = open_store(store_path, mode="r+", storage_options=options)
        if finish_swap(store):  # an `--overwrite` killed while swapping: its new features are complete
            log("finished the swap of an interrupted `extract --overwrite`: its new features are in place")
            store, config = open_store(store_path, mode="r+", storage_options=options), config.replace(overwrite=False)
        target = store
        if config.overwrite and (store.feature_dtype is not None or has_aside(store)):
            target = AsideStore(store)
            log("--overwrite: the new features are written beside the old ones, which stay readable until "
                "the new ones are complete (a rerun with --overwrite resumes them)")
        paths = store.paths()
        photos = photos_for(root, paths, store.members(), options)
        resume = plan_and_check(target, blocks, config, photos, prec)
        if resume.refused and not resume.plan.fresh:
            # `--overwrite` resumed with other settings or photos than its own interrupted start:
            # that start is what is being overwritten, not a reason to refuse
            log(f"--overwrite: the interrupted new features differ ({resume.refused}); starting them again")
            target.drop_features()
            resume = plan_and_check(target, blocks, config, photos, prec)
        plan, n = resume.plan, store.n_rows
        budget = extraction_budget(dev, lanes=config.lanes, workers=config.workers)
        compiling = compile_model(engine, config, plan.rows(n) if plan.pending else 0, budget.threads, log)
        run = {"started": provenance.now(), "device": str(dev), "precision": prec, "batch_size": config.batch_size,
               "workers": budget.workers, "allow_truncated": config.allow_truncated,
               "image_root": str(root), "compute": engine.describe(), "compile": compiling,
               "budget": budget.describe() | {"cores": os.cpu_count()},
               # how pixels were decoded: JPEGs far larger than the crop are decoded reduced
               "decode": decode_record(config.decode) | {"max_pixels": MAX_PIXELS}}
        if config.distributed:
            from hashtagkit.extraction import distributed

            run["distributed"] = distributed.describe(config.cluster, config.scheduler)
        reader = ImageReader(photos, engine.transforms, config.allow_truncated, config.decode)
        if config.decode != "default" and plan.pending:
            check = decode_check(reader, engine, plan.pending_rows(n)[:DECODE_CHECK_ROWS])
            run["decode"]["check"] = check
            if check["photos"]:
                log(f"--decode {config.decode}: fc7 cosine against the exact decode on {check['photos']} of these "
                    f"photos: min {check['cosine_min']:.5f}, mean {check['cosine_mean']:.5f}")
        record = start_record(target, resume.record, resume.done, plan.pending, resume.prints, run, root)
        run_index = len(record.runs) - 1
        if config.distributed:
            todo, invalid, seconds = distributed.run_chunks(target, engine, plan, root, config, run, run_index, log)
        else:
            from hashtagkit.extraction.local import run_chunks

            todo, invalid, seconds = run_chunks(target, engine, plan, reader, config.batch_size, budget, dev,
                                                config.progress, run_index=run_index)
        store_invalid = target.invalid_counts()
        run.update(finished=provenance.now(), rows=todo, seconds=round(seconds, 2), invalid=dict(invalid),
                   images_per_second=round(todo / seconds, 2) if seconds > 0 else None)
        finish_record(target, record, run, provenance.record(
            device=str(dev), precision=prec, batch_size=config.batch_size, workers=budget.workers,
            dtype=config.dtype, chunk_rows=plan.chunk_rows, allow_truncated=config.allow_truncated,
            image_root=str(root), invalid=store_invalid,
        ))
        if target is not store:
            swap_in(store, target)
    summary = Summary(rows=n, extracted=todo, invalid=dict(invalid), seconds=seconds, device=str(dev),
                      precision=prec, skipped_chunks=plan.n_chunks - len(plan.pending), store_invalid=store_invalid)
    log(summary.text())
    if isinstance(given, Store):  # the caller's handle sees the features it asked for
        given.refresh()
    return summary


QUIET_BELOW = 1000  # photos: a shorter run does not say why it is not compiled (its record does)


def compile_model(engine: Extractor, config: ExtractConfig, photos: int, threads: int,
                  log: Callable[[str], None]) -> dict:
    """Compile the engine's model if `config.compile` asks for it or, auto, where it pays for
    `photos` (`compiling.plan_compile`), for lanes of `threads` torch threads (inductor's own
    kernels keep the thread count they were compiled with); returns what was decided and done,
    for the run's record. A compile that fails is one line: an error when asked for, a fallback
    to the uncompiled model under auto."""
    from hashtagkit.extraction import compiling
    from hashtagkit.extraction.local import torch_threads

    dev = engine.device
    plan = compiling.plan_compile(config.compile, device=dev.type, precision=engine.precision, photos=photos,
                                  architecture=engine.architecture(), batch_size=config.batch_size,
                                  distributed=config.distributed)
    done = plan.record()
    if not plan.compile:
        if plan.asked == "auto" and photos >= QUIET_BELOW:
            log(f"compile: not compiling the model ({plan.why})")
        return done
    log(f"compile: compiling the model ({plan.why}); " + (
        "a first compile takes ~15-100 s per backbone on a CPU, cached for later runs" if plan.cache != "warm"
        else "from inductor's cache"))
    try:
        with torch_threads(threads):
            seconds = engine.compile(config.batch_size)
    except InputError as e:
        if plan.asked == "on":
            raise
        log(f"{e}; extracting uncompiled")  # e names the option: "compile: torch.compile could not ..."
        return done | {"compile": False, "failed": str(e)}
    compiling.remember(plan.key, seconds)
    log(f"compile: compiled in {seconds:.1f}s")
    return done | {"seconds": round(seconds, 2)}


DECODE_CHECK_ROWS = 8  # photos a `--decode fast|gpu` run compares with the exact decode


def decode_check(reader: ImageReader, engine: Extractor, rows: list[int]) -> dict:
    """The fc7 cosine between `reader`'s pixels and the exact decode's (Pillow, full size, never
    reduced) on `rows`, computed by the run's own model: what a pixel-changing decode costs in
    features, on the run's own photos (rows that either way fails to decode are left out)."""
    exact = ImageReader.exact(reader.photos, reader.transforms, reader.allow_truncated)
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
