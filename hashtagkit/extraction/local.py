"""The in-process runner: decode workers -> model lanes -> the chunk writer, for every pending chunk.

`budget.workers` processes decode (into shared memory, as uint8 pixels) while `budget.lanes`
batches run in the model; the writer writes each chunk whole (`Store.write_chunk`: features,
valid flags, reasons, its log, then its done flag), so a run killed at any instant resumes
from the first chunk not done and loses at most one chunk of work. A decode worker that dies
(killed, out of memory) costs its image ('decoder died'), found by re-decoding the rest of its
chunk one image at a time in a fresh process, never the run.
"""

from __future__ import annotations

import time
from collections import Counter
from contextlib import contextmanager

import numpy as np
import torch

from hashtagkit.devices import Budget
from hashtagkit.extraction.chunks import ChunkBuffer, chunk_info
from hashtagkit.extraction.engine import Extractor
from hashtagkit.extraction.plan import Plan
from hashtagkit.extraction.reader import DECODER_DIED, ChunkBatches, ImageReader, collate, is_worker_death
from hashtagkit.stores import Store
from hashtagkit.stores.store import chunk_bounds


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
        rows = range(*chunk_bounds(c, self.chunk_rows, self.n))
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
        start, stop = chunk_bounds(c, self.chunk_rows, self.n)
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


def recover(error: BaseException, loading, lanes: Lanes, writer: ChunkWriter, reader: ImageReader) -> None:
    """After a decode worker died: stop the loader's other workers, take in the batches already
    computed, and isolate the rest of the current chunk (`isolate`); `error` is re-raised if it
    was not a worker's death. DataLoader learns of a death twice, from the broken hand-over and
    from its SIGCHLD handler, which raises its own error wherever the main thread is, this
    recovery included: that second report of the same death is absorbed here (the recovery is
    idempotent), never the end of the run."""
    for _ in range(4):
        try:
            if not is_worker_death(error):
                raise error
            stop = getattr(loading, "_shutdown_workers", None)  # also ends its SIGCHLD watch of them
            if stop is not None:
                stop()
            lanes.drain()
            if writer.pending:
                isolate(writer, reader)
            return
        except RuntimeError as late:
            if late is error or not is_worker_death(late):
                raise
            error = late
    raise error


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

    todo = plan.rows(store.n_rows)
    started = time.perf_counter()
    bar = tqdm(total=todo, unit="img", desc="extracting", disable=not progress, dynamic_ncols=True)
    writer = ChunkWriter(store, engine, plan, bar, run_index)
    lanes = Lanes(engine, writer, budget.lanes)
    try:
        with torch_threads(budget.threads):
            while writer.pending:
                batches = ChunkBatches(writer.pending, plan.chunk_rows, store.n_rows, batch_size).batches
                loading = iter(loader_for(reader, batches, budget.workers, dev))
                try:
                    for batch in loading:
                        lanes.submit(*reader.on_device(batch, dev))
                    lanes.drain()
                except (RuntimeError, ConnectionError, EOFError) as e:  # see is_worker_death
                    if budget.workers == 0:
                        raise
                    recover(e, loading, lanes, writer, reader)
    finally:
        lanes.close()
    bar.close()
    return todo, writer.invalid, time.perf_counter() - started
