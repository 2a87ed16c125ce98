"""A run directory: a fitted head plus everything needed to judge or reuse it.

    RUN/run.json   head name and hyper-parameters, feature view, seed, the store's path,
                   split sha256 and backbone provenance, timings, versions, command line
    RUN/model/     the head's own files (Head.save)
    RUN/postprocess.npz  with `fit --rerank/--threshold`: the re-ranking and thresholds chosen on
                   validation rows (hashtagkit/postprocess.py); run.json's `postprocess` says how

`evaluate` refuses a run whose store split no longer matches the one it was trained on, and
`recommend` rebuilds the extractor from the store's recorded backbones.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from hashtagkit import ddp, provenance, remote
from hashtagkit.choices import VIEWS
from hashtagkit.errors import InputError
from hashtagkit.heads import Head, make_head
from hashtagkit.heads.base import refuse_nonfinite_features
from hashtagkit.heads.data import StoreData
from hashtagkit.outputs import atomic_dir, refuse_existing
from hashtagkit.postprocess import Options, Postprocess, calibrate
from hashtagkit.records import JsonRecord

if TYPE_CHECKING:  # zarr is imported where a store is opened: `recommend` and `serve` read a run only
    from hashtagkit.stores import Store

RUN_FILE = "run.json"
MODEL_DIR = "model"


@dataclass
class RunRecord(JsonRecord):
    """A run's `run.json`, typed: what was fitted (head, params, view, seed), on which store
    (`store`: path, split sha256, vocabulary, blocks, extraction settings), how it went
    (`fit_report`, `fit_seconds`, `distributed`) and how it was made (`provenance`); runs of
    earlier and later releases round-trip exactly (`JsonRecord`)."""

    OMIT_WHEN_NONE: ClassVar[tuple[str, ...]] = ("postprocess",)  # only runs fitted with --rerank/--threshold
    head: str = ""
    params: dict = field(default_factory=dict)
    features: str | None = None
    seed: int = 0
    n_train: int = 0
    train_skipped: dict = field(default_factory=dict)
    fit_seconds: float = 0.0
    fit_report: dict = field(default_factory=dict)
    distributed: dict | None = None
    store: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    postprocess: dict | None = None

    @classmethod
    def from_json(cls, data: dict) -> RunRecord:
        if not isinstance(data, dict) or not isinstance(data.get("head"), str):
            raise InputError("a run record must be a JSON object with a 'head'")
        return super().from_json(data)

    @property
    def store_path(self) -> str | Path:
        """The store the run was fitted on: a local Path, or its URL (s3://...) as a string."""
        return remote.normalise(self.store["path"])


@dataclass(frozen=True)
class Run:
    """A fitted run: its folder and its record. A path-like (`os.fspath(run)` is the folder),
    so it goes wherever a run directory does: `evaluate(run)`, `Recommender.from_run(run)`."""

    path: Path
    record: RunRecord

    @classmethod
    def load(cls, path: str | os.PathLike) -> Run:
        return cls(Path(path), read_run(path))

    def __fspath__(self) -> str:
        return str(self.path)

    def __truediv__(self, name: str) -> Path:
        """A file of the run: `run / "run.json"`, as with its folder's Path."""
        return self.path / name

    def load_head(self) -> Head:
        """The fitted head (a scikit-learn estimator) saved in the run."""
        return Head.load(self.path / MODEL_DIR)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    if "torch" in sys.modules:  # a torch head has imported it; the floor needs none of it
        sys.modules["torch"].manual_seed(seed)


def design_matrix(store: Store, head: Head, view: str, rows: np.ndarray) -> np.ndarray:
    """The head's input for these rows: the feature view, or an empty (n, 0) matrix for a head
    that ignores the image (so the popularity floor runs on a store without features)."""
    if view not in VIEWS:
        raise InputError(f"unknown feature view {view!r}: choose one of {', '.join(VIEWS)}")
    if not head.needs_features:
        return np.zeros((len(rows), 0), dtype=np.float32)
    return refuse_nonfinite_features(store.path, rows, store.features(view, rows))


def training_data(store: Store, head: Head, view: str, rows: np.ndarray) -> StoreData:
    """The head's training input, read block by block from the store: the view's features (none
    for a head that ignores the image) and the labels of `rows`."""
    if view not in VIEWS:
        raise InputError(f"unknown feature view {view!r}: choose one of {', '.join(VIEWS)}")
    return StoreData(store, view if head.needs_features else None, rows)


def training_rows(store: Store) -> tuple[np.ndarray, dict]:
    """The train split less the rows whose image failed to decode, for every head alike (see
    `Store.usable_rows`), with the count left out."""
    rows = store.split_rows("train")
    if len(rows) == 0:
        raise InputError(f"{store.path} has no training rows")
    rows, skipped = store.usable_rows(rows)
    if len(rows) == 0:
        raise InputError(f"{store.path}: training on a store with no valid rows "
                         f"(all {skipped['invalid_image']:,} training images failed to decode)")
    return rows, skipped


def fit(
    store_path: str | Path | Store,
    head_name: str,
    out: str | Path,
    *,
    params: dict[str, Any] | None = None,
    view: str = "both",
    seed: int = 0,
    overwrite: bool = False,
    postprocess: Options | None = None,
) -> Run:
    """Fit head `head_name` (see `HEADS`) with `params` on the store's train split, on the
    `view` of its features (object, scene or both), and write the run to `out` atomically;
    with `postprocess` (`Options`), also choose its re-ranking and thresholds on validation
    rows. Returns the run (on the other ranks of a torchrun, the folder rank 0 writes)."""
    from hashtagkit.stores import Store, open_store

    options = store_path.storage_options if isinstance(store_path, Store) else None  # a URL store's own
    store_path = store_path.path if isinstance(store_path, Store) else store_path
    out = refuse_existing(out, overwrite, kind="run", inputs=[store_path])
    store = open_store(store_path, storage_options=options)
    split_sha = store.verify_split()
    head = make_head(head_name, **(params or {}))
    if "random_state" in head.param_names() and (params or {}).get("random_state") is None:
        head.set_params(random_state=seed)
    world = ddp.from_env()
    if world.distributed and head.name != "mlp":
        raise InputError(f"only the mlp head trains on several processes; {head.name!r} was started by torchrun "
                         f"with {world.size} processes (run it as one process, without torchrun)")
    world = ddp.start(world, head.get_params().get("device", "auto"))
    try:
        written = _fit(store, head, out, view, seed, overwrite, split_sha, world, postprocess)
    finally:
        ddp.stop(world)  # the other ranks wait here until rank 0 has written the run
    if not (written / RUN_FILE).is_file():  # a rank of a torchrun on another machine than rank 0
        return Run(written, RunRecord(head=head.name, params=head.get_params(), seed=seed))
    return Run.load(written)


def _fit(store: Store, head: Head, out: Path, view: str, seed: int, overwrite: bool, split_sha: str,
         world: ddp.World, options: Options | None = None) -> Path:
    rows, skipped = training_rows(store)
    data = training_data(store, head, view, rows)
    seed_everything(seed)
    t0 = time.perf_counter()
    head.fit_data(data)
    fit_seconds = time.perf_counter() - t0
    if not world.writer:
        return Path(out)
    check_scores(head, data)
    post = None
    if options is not None and options.active:
        t0 = time.perf_counter()
        post = calibrate(store, head, data, view if head.needs_features else None, seed, options)
        post.record["seconds"] = round(time.perf_counter() - t0, 3)
    with atomic_dir(out, overwrite=overwrite, kind="run") as tmp:
        head.save(tmp / MODEL_DIR)
        if post is not None:
            post.save(tmp)
        record = RunRecord(
            head=head.name,
            params=head.get_params(),
            features=view if head.needs_features else None,
            seed=seed,
            n_train=int(len(rows)),
            train_skipped=skipped,
            fit_seconds=round(fit_seconds, 3),
            fit_report=head.fit_report(),
            distributed=distributed_record(world, head),
            store={
                "path": str(store.path) if remote.is_remote(store.path) else str(Path(store.path).resolve()),
                "kind": store.meta.get("kind"),
                "synthetic": store.meta.get("synthetic", False),
                "split_sha256": split_sha,
                "split_seed": store.split_info.get("seed"),
                "vocab_size": store.n_classes,
                "vocab": store.vocab,
                "blocks": store.blocks,
                "extraction": {k: v for k, v in store.extraction_record.items()
                               if k in ("precision", "dtype", "allow_truncated", "device")},
            },
            provenance=provenance.record(),
            postprocess=post.record if post is not None else None,
        )
        (tmp / RUN_FILE).write_text(json.dumps(record.to_json(), indent=2) + "\n")
    return Path(out)


PROBE_ROWS = 64


def check_scores(head: Head, data) -> None:
    """A fitted head must score: the first training rows are scored before the run is written,
    so a model that answers NaN (a setting that made it diverge) is refused, never saved for
    evaluate, recommend and serve to fail on later."""
    X, _ = data.take(np.arange(min(PROBE_ROWS, data.n_rows)))
    scores = np.asarray(head.predict_proba(X))
    if not np.isfinite(scores).all():
        raise InputError(f"the fitted {head.name} head scores NaN or infinity on training rows, so the run was not "
                         f"written; its parameters ({head.get_params()}) made it diverge: choose gentler ones")


def distributed_record(world: ddp.World, head: Head) -> dict | None:
    """How a torchrun-launched fit ran (None for one process): world size, backend and the
    global batch (what `batch_size` means under DDP; each process took batch_per_process)."""
    if not world.distributed:
        return None
    report = head.fit_report()
    return {**world.record(), "global_batch": report.get("batch_size"),
            "batch_per_process": report.get("batch_per_process"), "steps_per_epoch": report.get("steps_per_epoch")}


def read_run(run_dir: str | Path) -> RunRecord:
    """The run's record (`run.json`), typed; a folder that is not a run is a clear error."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_FILE
    if not path.is_file():
        raise InputError(f"{run_dir} is not a run directory ({RUN_FILE} missing; make one with `hashtagkit fit`)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is damaged: {e.msg}") from None
    try:
        return RunRecord.from_json(data)
    except InputError as e:
        raise InputError(f"{path} is damaged: {e}") from None


def load_postprocess(run_dir: str | Path, record: RunRecord) -> Postprocess | None:
    """The run's re-ranking and thresholds (None for a run fitted without them)."""
    return Postprocess.load(run_dir, record.postprocess, len(record.store.get("vocab") or []))


def load_run(run_dir: str | Path, store_path: str | Path | None = None) -> tuple[RunRecord, Head, Store]:
    """The run's record, its head and its store, checked to belong together."""
    record = read_run(run_dir)
    head = Head.load(Path(run_dir) / MODEL_DIR)
    from hashtagkit.stores import open_store

    store = open_store(store_path or record.store_path)
    if store.verify_split() != record.store["split_sha256"]:
        raise InputError(
            f"{store.path}: its split differs from the one this run was trained on "
            f"(sha256 {record.store['split_sha256'][:12]}...): evaluating would leak training rows"
        )
    check_store_fits(store, record, head)
    return record, head, store


def check_store_fits(store: Store, record: RunRecord, head: Head) -> None:
    """Refuse a store whose columns would mean something else to the head: another vocabulary
    (a scrambled class order scores nonsense), other backbones or weights, another width."""
    trained = record.store
    if store.n_classes != head.n_classes_:
        raise InputError(f"{store.path} has {store.n_classes} classes, the run's head {head.n_classes_}")
    if "vocab" in trained and store.vocab != list(trained["vocab"]):
        differ = next(i for i, (a, b) in enumerate(zip(store.vocab, trained["vocab"], strict=True)) if a != b)
        raise InputError(f"{store.path}: its vocabulary differs from the run's (class {differ} is "
                         f"{store.vocab[differ]!r} here, {trained['vocab'][differ]!r} in the run)")
    if not head.needs_features:
        return
    from hashtagkit.stores import Store, blocks_differ_in, describe_blocks

    ran_on = Store.block_signatures_of(trained.get("blocks") or [])
    if store.block_signatures() != ran_on:
        raise InputError(f"{store.path}: its features ({describe_blocks(store.blocks)}) are not those the run was "
                         f"trained on ({describe_blocks(trained.get('blocks') or [])})"
                         f"{blocks_differ_in(store.blocks, trained.get('blocks') or [])}")
    width = store.feature_width
    if width != head.n_features_:
        raise InputError(f"{store.path} has {width} feature columns, the run's head expects {head.n_features_}")
