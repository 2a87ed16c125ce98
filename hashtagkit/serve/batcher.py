"""The micro-batcher: photos from concurrent requests gathered into one `predict` call at a time,
run in a single model thread (`Recommender.predict` is not thread-safe; the event loop must not
wait for the model)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import HTTPException

log = logging.getLogger("hashtagkit.serve")

DECODE_WAIT_S = 1.0  # the most a gathering batch waits, beyond max_wait, for photos being decoded
RETURN_S = 1.0  # clients answered by a batch of several requests are expected back within this long
RETRY_AFTER_S = 5  # what a client refused while the server drains is told to wait


class ShuttingDown(HTTPException):
    """503 with Retry-After: the server is draining (a restart, a deploy) and will not start this
    work; another instance, or this one once restarted, will. Never a 500."""

    def __init__(self) -> None:
        super().__init__(503, "the server is shutting down: send the request again in a few seconds",
                         headers={"Retry-After": str(RETRY_AFTER_S)})


@dataclass
class BatchStats:
    """What the batcher has done: a test proves batching by `largest_batch > 1`."""

    sizes: Counter = field(default_factory=Counter)  # batch size -> batches run; the rest follows
    failed_batches: int = 0

    def add(self, size: int) -> None:
        self.sizes[size] += 1

    def as_json(self) -> dict:
        batches = sum(self.sizes.values())
        images = sum(size * n for size, n in self.sizes.items())
        return {"batches": batches, "images": images, "largest_batch": max(self.sizes, default=0),
                "mean_batch": round(images / batches, 3) if batches else 0.0,
                "batch_sizes": {str(k): v for k, v in sorted(self.sizes.items())},
                "failed_batches": self.failed_batches}


class MicroBatcher:
    """Gathers prepared photos from concurrent requests into one `predict` call at a time.

    A batch starts with the first queued photo and closes when it holds `max_batch` photos or
    `max_wait_ms` later, except that while other requests' photos are being decoded it waits for
    them too (at most `DECODE_WAIT_S` more): clients answered by the previous batch come back
    while the next one gathers, and without this they would stay in a separate, smaller batch
    for good (two half-size batches in turn, each less efficient per photo).

    A photo nobody else can join goes at once: when no other request is being read or decoded
    and the previous batch answered a single request (or ended over `RETURN_S` ago), the batch
    closes without waiting `max_wait_ms` (a lone client's every photo paid it before). After a
    batch of several requests it waits as above, for those clients to come back.

    `submit(..., timing=dict)` fills the dict with when its photos' batch started, how long the
    model took and the batch's size: what the app reports in `Server-Timing`."""

    def __init__(self, predict, max_batch: int, max_wait_ms: float):
        self.predict = predict
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.stats = BatchStats()
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.decoding = 0  # requests whose photos are being decoded now
        self.arriving = 0  # requests whose bodies are being read now
        self.last_requests = 0  # requests the previous batch answered
        self.last_end = float("-inf")  # loop time the previous batch ended
        self.wake: asyncio.Event | None = None
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="hashtagkit-model")
        self.loop: asyncio.AbstractEventLoop | None = None
        self.last_start: float | None = None  # once draining: no batch starts after this loop time

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue, self.wake = asyncio.Queue(), asyncio.Event()
        self.task = asyncio.create_task(self._run(), name="hashtagkit-batcher")

    def alive(self) -> bool:
        return self.task is not None and not self.task.done()

    @property
    def draining(self) -> bool:
        return self.last_start is not None

    def request_drain(self, seconds: float) -> None:
        """Begin draining (from any thread, or a signal handler): new requests get 503; what is
        queued keeps being answered for `seconds`, then whatever has not started gets 503 too, so
        the batch running then can finish inside the server's grace period."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._drain, seconds)

    def _drain(self, seconds: float) -> None:
        if self.draining:
            return
        self.last_start = self.loop.time() + seconds
        self.loop.call_at(self.last_start, self._refuse_queued)
        log.info("draining: answering what is queued for %.1f s, refusing new work with 503", seconds)

    @staticmethod
    def _refuse(items) -> None:
        """Answer these (photo, top, future, timing) items with 503: they will not be started."""
        for _, _, future, _ in items:
            if not future.done():
                future.set_exception(ShuttingDown())

    def _refuse_queued(self) -> None:
        queued = []
        while self.queue is not None and not self.queue.empty():
            queued.append(self.queue.get_nowait())
        self._refuse(queued)
        if self.wake is not None:
            self.wake.set()

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self._refuse_queued()
        self.model_thread.shutdown(wait=True)

    @asynccontextmanager
    async def decoding_request(self):
        """Around a request's decoding: a gathering batch waits for its photos."""
        self.decoding += 1
        try:
            yield
        finally:
            self.decoding -= 1
            if self.wake is not None:
                self.wake.set()

    @asynccontextmanager
    async def arriving_request(self):
        """Around reading a request's body: a lone photo does not go alone while it is read (a
        gathering batch waits for it at most `max_wait_ms`, as for any photo not yet queued)."""
        self.arriving += 1
        try:
            yield
        finally:
            self.arriving -= 1
            if self.wake is not None:
                self.wake.set()

    def _alone(self, now: float) -> bool:
        """Nobody else can join a batch starting now: nothing queued, read or decoded, and no
        clients of a batch of several requests about to come back."""
        expected = self.last_requests > 1 and now - self.last_end < RETURN_S
        return not (expected or self.arriving or self.decoding or not self.queue.empty())

    async def submit(self, prepared: list, top: int, timing: dict | None = None) -> list[list[tuple[str, float]]]:
        """The top hashtags of each prepared photo, in order (they may run in several batches);
        `timing`, if given, gets `queued`, `started` (perf_counter seconds), `model` (seconds of
        its batches' predict) and `batch` (the largest batch's photos)."""
        if self.draining:
            raise ShuttingDown()
        if not self.alive():
            raise HTTPException(503, "the model's batcher is not running")
        loop = asyncio.get_running_loop()
        futures = []
        timing = {} if timing is None else timing
        timing["queued"] = time.perf_counter()
        for item in prepared:
            future = loop.create_future()
            self.queue.put_nowait((item, top, future, timing))
            futures.append(future)
        self.wake.set()
        try:
            return await asyncio.gather(*futures)
        finally:
            for f in futures:  # a cancelled request leaves nothing for the batcher to answer
                f.cancel()

    async def _gather(self) -> list:
        loop = asyncio.get_running_loop()
        batch = [await self.queue.get()]
        deadline = loop.time() + self.max_wait
        longest = deadline + (DECODE_WAIT_S if self.max_wait > 0 else 0)
        while True:
            while len(batch) < self.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            now = loop.time()
            until = longest if self.decoding else deadline
            if len(batch) >= self.max_batch or now >= until or self._alone(now):
                break
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), until - now)
            except TimeoutError:
                pass
        return [b for b in batch if not b[2].done()]  # drop photos of requests gone meanwhile

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if batch and self.draining and loop.time() >= self.last_start:  # too late to start it
                self._refuse(batch)
                continue
            if not batch:
                continue
            top = max(t for _, t, _, _ in batch)  # ranking is deterministic: a shorter top is a prefix
            requests = {id(timing): timing for _, _, _, timing in batch}
            started = time.perf_counter()
            try:
                ranked = await loop.run_in_executor(self.model_thread, self.predict, [p for p, _, _, _ in batch], top)
            except Exception as e:  # our bug, not the client's: answer 500 for these, keep serving
                log.exception("predict failed on a batch of %d", len(batch))
                self.stats.failed_batches += 1
                for _, _, future, _ in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            finally:
                self.last_requests, self.last_end = len(requests), loop.time()
            took = time.perf_counter() - started
            for timing in requests.values():
                timing.setdefault("started", started)
                timing["model"] = timing.get("model", 0.0) + took
                timing["batch"] = max(timing.get("batch", 0), len(batch))
            self.stats.add(len(batch))
            for (_, t, future, _), tags in zip(batch, ranked, strict=True):
                if not future.done():
                    future.set_result(list(tags)[:t])
