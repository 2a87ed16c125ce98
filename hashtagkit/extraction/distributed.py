"""`extract --cluster local[:N] | --scheduler ADDRESS`: the chunk tasks of an extraction on Dask.

Who does what:

- the coordinator (the `hashtagkit extract` process) holds the store's lock, creates the
  arrays, runs the resume checks and writes the record, all before any task (`extract`), then
  submits one task per pending chunk and, at the end, writes the record again. It alone
  writes the group's attributes (Zarr allows concurrent writers to different chunks only).
- a task (`extract_chunk`) decodes its chunk's photos, runs the backbones and writes the
  chunk's own objects, its done flag last, exactly as the in-process engine writes a chunk
  (the same `ImageReader`, `ChunkBatches`, `collate`, `Extractor`, `Store.write_chunk`), so
  the features are the in-process ones bit for bit in fp32.
- each worker process loads the backbones once (`worker_extractor`: a per-process cache keyed
  by the blocks' signature, device and precision). Weights come from the recorded blocks:
  a weights file is checked by its sha256 (`engine.rebuild_extractor`), random weights are
  rebuilt from their recorded seed, and a backbone registered only in the coordinator's
  process (a user's own) is shipped with the task and registered in the worker.

Decoding happens in the task's own process, in helper threads that decode the next batch
while torch runs the current one. Dask worker processes are daemonic and may not have
children, so the in-process engine's DataLoader worker processes are not an option; Pillow
releases the GIL while it decodes and resizes, so threads overlap decoding with the model as
the DataLoader's processes do (one thread on the CPU, the worker's cores on a GPU:
`decode_threads`). On the CPU a worker runs as many chunks side by side as it has Dask
threads (`local:N`: cores // N), each on one torch thread, all sharing one copy of the models
(see `connect`); on a GPU one chunk at a time.

The store goes to the workers as a string (a path or a URL, with its storage options) and is
opened there; the photos are read through `hashtagkit.data.photos` (files, objects under a URL
prefix, or members of webdataset shards): with the store and the photos at URLs, the workers
need no file system shared with the coordinator. Workers started by
`--cluster` are children of the coordinator and exit with it, even when it is SIGKILLed
(Dask's worker processes watch their parent); with `--scheduler` a task left running by a
killed coordinator sees that Dask cancelled it (`abandoned`) and writes nothing, so it cannot
overwrite the chunk of a newer run.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from hashtagkit.errors import InputError
from hashtagkit.extraction.config import parse_cluster, parse_scheduler

CONNECT_TIMEOUT = "15s"  # to reach a --scheduler
WAIT_FOR_WORKERS = 60  # seconds a --scheduler run waits for its first worker
IN_FLIGHT = 1000  # tasks submitted ahead (at least 2 per worker thread): the scheduler holds these, not all
NO_WORKER_S = 60.0  # a run whose scheduler has had no worker this long ends (it would wait forever)
STALL_S = 1800.0  # ... and one where no chunk finished this long, workers or not
POLL_S = 0.5  # how often the coordinator looks at the workers while it waits for a chunk


def describe(cluster: str | None, scheduler: str | None) -> dict:
    """What the run records about its cluster (the token names its tasks)."""
    return {"cluster": cluster, "scheduler": scheduler, "token": uuid.uuid4().hex[:16]}


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# --- what a task needs --------------------------------------------------------------------------
@dataclass
class Job:
    """Everything a chunk task needs, small and picklable; the same for every task of a run."""

    store: str  # path or URL, opened with Zarr in the worker
    aside: bool  # the features grow in the subgroup `overwriting` (extract --overwrite)
    image_root: str  # folder or URL prefix of the photos (of the shards, for a webdataset store)
    blocks: list[dict]
    device: str
    precision: str
    batch_size: int
    allow_truncated: bool
    chunk_rows: int
    n_rows: int
    run: int  # index of this run in the record's `runs`
    token: str  # this run's, unique
    torch_threads: int | None  # None: the worker's cores // its Dask threads
    decode_threads: int | None = None  # None: see `decode_threads`
    specs: dict = field(default_factory=dict)  # backbone name -> BackboneSpec, for the worker's registry
    # a URL store's and photos' storage options: they travel to the workers (which share no disk
    # and no environment with the coordinator), never shown (repr) nor recorded
    storage_options: dict | None = field(default=None, repr=False)

    def key(self) -> str:
        from hashtagkit.stores import Store

        return json.dumps([Store.block_signatures_of(self.blocks), self.device, self.precision], default=str)


# --- the worker side ----------------------------------------------------------------------------
_EXTRACTORS: dict = {}
_LOADING = threading.Lock()


def worker_extractor(job: Job):
    """This process's extractor for the job's blocks, built once (weights read and checked once)."""
    import warnings

    import torch

    from hashtagkit.backbones import BACKBONES, get_spec, register
    from hashtagkit.extraction.engine import rebuild_extractor

    key = job.key()
    # per calling thread: OpenMP's thread count belongs to the thread that sets it, and Dask's
    # nanny starts workers with OMP_NUM_THREADS=1 (measured: 1 thread, half the rate, without this)
    threads = job.torch_threads or max(1, cores() // max(1, worker_threads()))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    with _LOADING:
        if key in _EXTRACTORS:
            return _EXTRACTORS[key]
        _EXTRACTORS.clear()  # a long-lived worker keeps one set of models: the latest run's
        for name, spec in job.specs.items():
            if name not in BACKBONES:
                register(spec)
        weights = {}
        for b in job.blocks:  # the hub cache may live elsewhere on this machine: the sha256 decides
            w = b.get("weights") or {}
            if w.get("source") == "default" and not (w.get("path") and Path(w["path"]).is_file()):
                weights[b["backbone"]] = str(get_spec(b["backbone"]).default_source())
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # random weights: the coordinator already said so
                engine = rebuild_extractor(job.blocks, weights, job.device, job.precision)
        except InputError as e:
            raise InputError(f"worker on {socket.gethostname()}: {str(e).split('; pass weights')[0]} "
                             "(every worker needs the weights at the same path, or the same hub cache)") from None
        _EXTRACTORS[key] = engine
        return engine


def worker_threads() -> int:
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return 1


def worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return "-"


_OPENED: dict = {}


def open_target(job: Job):
    """The Store the features are written through, opened with Zarr from the job's string once
    per run and worker (the group's metadata holds the whole record: not read per chunk)."""
    from hashtagkit.stores import AsideStore, open_store

    with _LOADING:
        if job.token not in _OPENED:
            _OPENED.clear()
            root = open_store(job.store, mode="r+", check=False, storage_options=job.storage_options)
            _OPENED[job.token] = AsideStore(root) if job.aside else root
        return _OPENED[job.token]


def abandoned() -> bool:
    """Whether the coordinator of this task is gone: when its client disconnects (the coordinator
    was killed), the scheduler cancels its tasks, and one still running must not write (a newer
    run may own the store by now). A worker-local check: it reads nothing from the store."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):  # not in a Dask worker
        return False
    task = worker.state.tasks.get(worker.get_current_task())
    return task is None or task.state in ("cancelled", "released", "forgotten")


def decode_threads(job: Job) -> int:
    """Decoding threads of a task: on the CPU one keeps ahead of the model (a VGG-16 photo costs
    far more than its decode); a GPU worker needs several cores of decoding to be fed."""
    if job.decode_threads:
        return job.decode_threads
    return max(1, cores() // max(1, worker_threads())) if job.device == "cuda" else 1


class ChunkPaths:
    """The photo paths of one chunk, indexed by store row (what `ImageReader` expects)."""

    def __init__(self, start: int, paths: list[str]):
        self.start, self.paths = start, paths

    def __getitem__(self, row: int) -> str:
        return self.paths[row - self.start]

    def __len__(self) -> int:
        return self.start + len(self.paths)


def extract_chunk(job: Job, chunk: int) -> dict:
    """The task: decode, extract and write one chunk (done flag last); returns its log."""
    from hashtagkit.data.sources import photos_for
    from hashtagkit.extraction.chunks import ChunkBuffer, chunk_info
    from hashtagkit.extraction.reader import ChunkBatches, ImageReader, collate
    from hashtagkit.stores.store import chunk_bounds

    t0 = time.perf_counter()
    engine = worker_extractor(job)
    target = open_target(job)
    start, stop = chunk_bounds(chunk, job.chunk_rows, job.n_rows)
    store = target.parent if job.aside else target
    members = store.members(range(start, stop))
    photos = photos_for(job.image_root, ChunkPaths(start, store.paths_range(start, stop)),
                        None if members is None else ChunkPaths(start, members), job.storage_options)
    reader = ImageReader(photos, engine.transforms, job.allow_truncated)
    buf = ChunkBuffer(start, stop, engine.dim)
    batches = ChunkBatches([chunk], job.chunk_rows, job.n_rows, job.batch_size).batches
    with ThreadPoolExecutor(max_workers=decode_threads(job), thread_name_prefix="decode") as pool:
        photos.prefetch(batches[0])  # a shard's rows of a batch in one read (a no-op for files)
        coming = [pool.submit(reader.__getitem__, r) for r in batches[0]]
        for i in range(len(batches)):
            items = [f.result() for f in coming]
            if i + 1 < len(batches):  # the next batch decodes while the model runs this one
                photos.prefetch(batches[i + 1])
                coming = [pool.submit(reader.__getitem__, r) for r in batches[i + 1]]
            rows, inputs, why = collate(items)
            buf.put(rows.tolist(), engine(inputs), why)  # invalid rows ride along as zeros: batches as in-process
    info = chunk_info(job.run, engine.device, engine.precision, time.perf_counter() - t0, worker=worker_name())
    log = info | {"chunk": chunk, "rows": stop - start, "invalid": dict(Counter(r for r in buf.reasons if r))}
    if abandoned():
        return log | {"skipped": "its coordinator is gone"}
    target.write_chunk(chunk, buf.features, buf.valid, buf.reasons, info=info)
    return log


def warm_worker(job: Job) -> str:
    """Load the backbones on a worker before the clock starts (and fail early if it cannot)."""
    return worker_extractor(job).precision


def worker_facts() -> dict:
    """What the coordinator checks of every worker before submitting: same hashtagkit; GPUs."""
    import torch

    import hashtagkit

    return {"hashtagkit": hashtagkit.__version__, "host": socket.gethostname(), "pid": os.getpid(), "cores": cores(),
            "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0}


# --- the coordinator side -----------------------------------------------------------------------
def has_dashboard() -> bool:
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return False
    return True


@contextmanager
def connect(cluster: str | None, scheduler: str | None, device: str, log=print):
    """A Client on the asked cluster, and (torch threads, decoding threads) for each task (None:
    each worker decides from its own cores and Dask threads). On the CPU a local worker gets
    cores / N Dask threads, each running a chunk on one torch thread beside one decoding thread,
    all sharing one copy of the models: faster than one chunk at a time on all torch threads,
    whose OpenMP threads wait for each other while decoding takes a core
    (benchmarks/results/extract_distributed.md). Everything started here is stopped on the way out."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise InputError("{opt:cluster}/{opt:scheduler} need Dask distributed: pip install 'hashtagkit[distributed]'") from None
    if scheduler:
        try:
            client = Client(parse_scheduler(scheduler), timeout=CONNECT_TIMEOUT)
        except OSError as e:
            raise InputError(f"cannot reach the Dask scheduler at {scheduler}: {str(e).splitlines()[0]}") from None
        with client:
            yield client, (None, None)  # each worker decides from its own cores and threads
        return
    n = parse_cluster(cluster or "local")
    # every server on loopback: the scheduler, the workers and their HTTP endpoints (dashboard, /health)
    kw = dict(host="127.0.0.1", dashboard_address="127.0.0.1:0", worker_dashboard_address="127.0.0.1:0",
              silence_logs=logging.CRITICAL)  # errors reach us as task errors
    made, per = None, 1
    if device == "cuda":
        try:
            from dask_cuda import LocalCUDACluster

            made = LocalCUDACluster(n_workers=n, threads_per_worker=1, **kw)  # one worker per GPU (n: the first n)
        except ImportError:
            log("dask-cuda is not installed: a plain LocalCluster, its workers share the GPUs")
    if made is None:
        n = n or 1  # on the CPU one worker: one copy of the models, its threads run chunks side by side
        if n > cores():
            log(f"warning: {n} workers on {cores()} cores: they compete for the cores")
        per = 1 if device == "cuda" else max(1, cores() // n)
        made = LocalCluster(n_workers=n, threads_per_worker=per, processes=True, **kw)
    share = max(1, cores() // max(1, len(made.workers)))  # this machine's cores, shared by its workers
    threads = (max(1, share // per), 1) if device != "cuda" else (share, share)  # (torch, decode) per task
    try:
        with Client(made) as client:
            yield client, threads
    finally:
        made.close()


def check_workers(client, log=print) -> dict:
    """Wait for a worker, then refuse workers that cannot import this hashtagkit."""
    import hashtagkit

    try:
        client.wait_for_workers(1, timeout=WAIT_FOR_WORKERS)
    except TimeoutError:
        raise InputError(f"no Dask worker joined the scheduler within {WAIT_FOR_WORKERS} s: start one with "
                         f"`dask worker {client.scheduler.address}`") from None
    try:
        facts = client.run(worker_facts)
    except ImportError as e:
        raise InputError(f"a Dask worker cannot import hashtagkit ({e}): install hashtagkit[distributed] on "
                         "every worker") from None
    other = {w: f["hashtagkit"] for w, f in facts.items() if f["hashtagkit"] != hashtagkit.__version__}
    if other:
        w, v = next(iter(other.items()))
        raise InputError(f"worker {w} runs hashtagkit {v}, this is {hashtagkit.__version__}: install the same "
                         "version on every worker")
    return facts


class Watchdog:
    """Ends a run that would wait forever: one whose scheduler has had no worker for NO_WORKER_S
    (every worker killed, none coming back), or where no chunk finished for STALL_S. `check`
    raises the one-line error; the done chunks stay, so the same command resumes."""

    def __init__(self, client) -> None:
        self.client = client
        self.last_done = self.last_worker = self.checked = time.monotonic()

    def progressed(self) -> None:
        self.last_done = time.monotonic()

    def check(self) -> None:
        now = time.monotonic()
        if now - self.checked >= 2 * POLL_S:
            self.checked = now
            try:
                workers = len(self.client.nthreads())
            except Exception:  # noqa: BLE001 - the scheduler itself is gone: no worker either
                workers = 0
            if workers:
                self.last_worker = now
        if now - self.last_worker >= NO_WORKER_S:
            raise InputError(f"the Dask scheduler has had no worker for {NO_WORKER_S:g} s (all of them died or "
                             "left); the done chunks are kept: run the same command again once workers are back")
        if now - self.last_done >= STALL_S:
            raise InputError(f"no chunk finished in {STALL_S:g} s; the done chunks are kept: check the workers "
                             "(the dashboard), then run the same command again")


def _watched(running, client):
    """The result of each task of `running` (a distributed.as_completed) as it finishes,
    under a `Watchdog`: waiting for the next task and fetching its result both give up when the
    cluster has no worker (a result held only by a worker that died is recomputed, which with no
    worker never happens). A task's own error is raised by the result."""
    from distributed import TimeoutError as DaskTimeout

    dog = Watchdog(client)
    while not running.is_empty():
        if not running.has_ready():
            dog.check()
            time.sleep(POLL_S)
            continue
        for fut in running.next_batch(block=False):
            while True:
                try:
                    result = fut.result(timeout=POLL_S)
                    break
                except (TimeoutError, DaskTimeout):
                    dog.check()
            dog.progressed()
            yield result


def run_chunks(target, engine, plan, root: str | Path, config, run: dict, run_index: int, log=print
               ) -> tuple[int, Counter, float]:
    """The distributed stand-in for `local.run_chunks`: one task per pending chunk, submitted
    as earlier ones complete (a 100 M-photo store has ~400 k chunks: the scheduler holds the
    tasks in flight, not all of them); returns (rows, invalid reasons, seconds) and adds
    per-worker chunk counts to `run`."""
    from tqdm import tqdm

    from hashtagkit.stores import AsideStore

    n = target.n_rows
    todo = plan.rows(n)
    cluster, scheduler, progress = config.cluster, config.scheduler, config.progress
    job = Job(store=str(target.path), aside=isinstance(target, AsideStore), image_root=str(root),
              blocks=target.blocks, device=engine.device.type, precision=engine.precision,
              batch_size=config.batch_size, allow_truncated=config.allow_truncated, chunk_rows=plan.chunk_rows, n_rows=n, run=run_index,
              token=run["distributed"]["token"], torch_threads=None,
              specs={b.spec.name: b.spec for b in engine.backbones}, storage_options=target.storage_options)
    invalid: Counter = Counter()
    logs: list[dict] = []
    with connect(cluster, scheduler, engine.device.type, log) as (client, (job.torch_threads, job.decode_threads)):
        facts = check_workers(client, log)
        hosts = sorted({f["host"] for f in facts.values()})
        gpus = sum(f["gpus"] for f in facts.values())
        if gpus and engine.device.type != "cuda":
            log(f"warning: the workers have {gpus} GPU(s) but this run computes on the {engine.device.type}, the "
                "device this process chose; run the coordinator where --device cuda works to use them")
        log(f"dask: {len(facts)} worker(s) on {', '.join(hosts)}; scheduler {client.scheduler.address}; "
            f"dashboard {client.dashboard_link if has_dashboard() else 'none (pip install bokeh for one)'}")
        run["distributed"] |= {"scheduler_address": client.scheduler.address, "workers_at_start": len(facts)}
        client.run(warm_worker, job)  # a worker that joins later loads them with its first task
        started = time.perf_counter()
        from distributed import KilledWorker, as_completed

        queue = iter(plan.pending)
        running = as_completed()

        def submit_next() -> None:
            c = next(queue, None)
            if c is not None:
                running.add(client.submit(extract_chunk, job, c, key=f"hashtagkit-{job.token}-chunk-{c}", pure=False))

        for _ in range(max(IN_FLIGHT, 2 * sum(client.nthreads().values()))):
            submit_next()
        bar = tqdm(total=todo, unit="img", desc="extracting", disable=not progress, dynamic_ncols=True)
        try:  # a task's error (e.g. weights missing on a worker) ends the run here
            for entry in _watched(running, client):
                submit_next()
                logs.append(entry)
                invalid.update(entry["invalid"])
                bar.update(entry["rows"])
                bar.set_postfix_str(f"{len(logs)}/{len(plan.pending)} chunks")
        except KilledWorker as e:
            raise InputError(
                f"chunk {int(str(e.task).rsplit('-', 1)[1])} killed every worker that ran it (Dask's "
                "allowed-failures; a photo that crashes the decoder, or too little memory); the done chunks are "
                "kept: an in-process `hashtagkit extract` of this store isolates a crashing photo as an invalid "
                "row") from None
        bar.close()
        seconds = time.perf_counter() - started
    skipped = [e["chunk"] for e in logs if e.get("skipped")]
    if skipped:
        raise InputError(f"{len(skipped)} chunk(s) were not written ({logs[0].get('skipped')}); run the same "
                         "command again to do them")
    by_worker = Counter((e["host"], e["worker"], e["pid"]) for e in logs)
    run["distributed"]["chunks_by_worker"] = [{"host": h, "worker": w, "pid": p, "chunks": k}
                                              for (h, w, p), k in sorted(by_worker.items())]
    log("chunks by worker: " + "; ".join(f"{h} {w} (pid {p}): {k}" for (h, w, p), k in sorted(by_worker.items())))
    return todo, invalid, seconds
