"""`hashtagkit serve`: hashtags for photos over HTTP, with the models loaded once.

Why it is shaped this way:

- **One model thread, fed by a micro-batcher.** `Recommender.predict` is not thread-safe, and a
  forward pass over 16 photos costs far less than 16 passes over one. Concurrent requests put
  their decoded photos on one queue; a batcher takes up to `max_batch` of them, waiting at most
  `max_wait_ms` after the first (the definition of Ray Serve's `@serve.batch`), and runs them as
  ONE `predict` call in a single worker thread, so the event loop never blocks on the model.
- **Decoding outside the model's thread.** `Recommender.prepare` (decode + preprocess, thread
  safe) runs in a small thread pool, so the next batch is decoded while the model runs.
- **The body is read by us, into memory, counted as it arrives.** Starlette's form parser spools
  each upload above 1 MiB to a temporary file on disk; we parse the multipart stream ourselves with
  python-multipart, stop with 413 as soon as the body crosses the limit (a too-large
  Content-Length is refused before any of it is read), and nothing is ever written to disk.
- **Bad photos are per-image errors.** An upload that is empty, not an image, truncated or a
  decompression bomb gets its own `error`, the others their hashtags; only a request with nothing
  usable is refused (400 no files, 415 no image). No endpoint takes a path from the client: the
  page's files are served from a list of names made when the app is created.
"""

from __future__ import annotations

import asyncio
import hmac
import importlib.resources
import ipaddress
import logging
import mimetypes
import os
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from hashtagkit import __version__
from hashtagkit.errors import InputError
from hashtagkit.images import DecodeError
from hashtagkit.recommend import Recommendation

log = logging.getLogger("hashtagkit.serve")

MAX_FILES = 256  # photos in one request: beyond this a client should send several requests
MAX_NAME = 255  # characters of a file name echoed back
DECODE_THREADS = max(1, min(4, os.cpu_count() or 1))


# ---------------------------------------------------------------- the JSON the API answers


class Hashtag(BaseModel):
    tag: str
    score: float


class ImageResult(BaseModel):
    image: str
    hashtags: list[Hashtag]
    error: str | None = None


class RecommendResponse(BaseModel):
    results: list[ImageResult]


def result_json(name: str, hashtags: list[tuple[str, float]], error: str | None = None) -> dict:
    """One image's answer in `recommend --json`'s shape (the Recommendation decides it)."""
    out = Recommendation(name, hashtags, error).as_json()
    out.setdefault("hashtags", [])
    out.setdefault("error", None)
    return out


# ---------------------------------------------------------------- micro-batcher


@dataclass
class BatchStats:
    """What the batcher has done: a test proves batching by `largest_batch > 1`."""

    batches: int = 0
    images: int = 0
    largest_batch: int = 0
    sizes: Counter = field(default_factory=Counter)
    failed_batches: int = 0

    def add(self, size: int) -> None:
        self.batches += 1
        self.images += size
        self.largest_batch = max(self.largest_batch, size)
        self.sizes[size] += 1

    def as_json(self) -> dict:
        return {"batches": self.batches, "images": self.images, "largest_batch": self.largest_batch,
                "mean_batch": round(self.images / self.batches, 3) if self.batches else 0.0,
                "batch_sizes": {str(k): v for k, v in sorted(self.sizes.items())},
                "failed_batches": self.failed_batches}


class MicroBatcher:
    """Gathers prepared photos from concurrent requests into one `predict` call at a time."""

    def __init__(self, predict, max_batch: int, max_wait_ms: float):
        self.predict = predict
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.stats = BatchStats()
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="hashtagkit-model")

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._run(), name="hashtagkit-batcher")

    def alive(self) -> bool:
        return self.task is not None and not self.task.done()

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        while self.queue is not None and not self.queue.empty():
            _, _, future = self.queue.get_nowait()
            if not future.done():
                future.set_exception(RuntimeError("the server is shutting down"))
        self.model_thread.shutdown(wait=True)

    async def submit(self, prepared: list, top: int) -> list[list[tuple[str, float]]]:
        """The top hashtags of each prepared photo, in order (they may run in several batches)."""
        if not self.alive():
            raise HTTPException(503, "the model's batcher is not running")
        loop = asyncio.get_running_loop()
        futures = []
        for item in prepared:
            future = loop.create_future()
            self.queue.put_nowait((item, top, future))
            futures.append(future)
        try:
            return await asyncio.gather(*futures)
        finally:
            for f in futures:  # a cancelled request leaves nothing for the batcher to answer
                f.cancel()

    async def _gather(self) -> list:
        loop = asyncio.get_running_loop()
        batch = [await self.queue.get()]
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            if not self.queue.empty():
                batch.append(self.queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:  # Queue.get leaves its item in the queue if cancelled, so a timeout loses nothing
                batch.append(await asyncio.wait_for(self.queue.get(), remaining))
            except TimeoutError:
                break
        return [b for b in batch if not b[2].done()]  # drop photos of requests gone meanwhile

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch:
                continue
            top = max(t for _, t, _ in batch)  # ranking is deterministic: a shorter top is a prefix
            try:
                ranked = await loop.run_in_executor(self.model_thread, self.predict, [p for p, _, _ in batch], top)
            except Exception as e:  # our bug, not the client's: answer 500 for these, keep serving
                log.exception("predict failed on a batch of %d", len(batch))
                self.stats.failed_batches += 1
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            self.stats.add(len(batch))
            for (_, t, future), tags in zip(batch, ranked, strict=True):
                if not future.done():
                    future.set_result(list(tags)[:t])


# ---------------------------------------------------------------- reading the upload


@dataclass
class Upload:
    name: str
    data: bytearray


class UploadReader:
    """python-multipart callbacks that keep the parts named `files` in memory (other fields are
    counted against the limit and dropped)."""

    def __init__(self):
        self.uploads: list[Upload] = []
        self.header_name = b""
        self.header_value = b""
        self.disposition = b""
        self.current: Upload | None = None

    def callbacks(self) -> dict:
        return {"on_part_begin": self.on_part_begin, "on_part_data": self.on_part_data,
                "on_part_end": self.on_part_end, "on_header_field": self.on_header_field,
                "on_header_value": self.on_header_value, "on_header_end": self.on_header_end,
                "on_headers_finished": self.on_headers_finished}

    def on_part_begin(self) -> None:
        self.current, self.disposition = None, b""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        if self.header_name.strip().lower() == b"content-disposition":
            self.disposition = self.header_value
        self.header_name, self.header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.disposition)
        if options.get(b"name") != b"files":
            return
        if len(self.uploads) >= MAX_FILES:
            raise HTTPException(413, f"too many files in one request (limit {MAX_FILES}); send several requests")
        filename = options.get(b"filename", b"").decode("utf-8", "replace")[:MAX_NAME]
        self.current = Upload(filename or f"upload {len(self.uploads) + 1}", bytearray())

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.current is not None:
            self.current.data += data[start:end]

    def on_part_end(self) -> None:
        if self.current is not None:
            self.uploads.append(self.current)
        self.current = None


async def read_uploads(request: Request, limit: int) -> list[Upload]:
    """The `files` parts of a multipart body, read from the stream into memory, at most `limit`
    bytes of body: a larger Content-Length is refused before reading, a longer stream at the byte
    that crosses the limit."""
    kind, params = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data":
        raise HTTPException(415, "send the photos as multipart/form-data, one part named 'files' per photo")
    boundary = params.get(b"boundary")
    if not boundary:
        raise HTTPException(400, "the multipart Content-Type has no boundary")
    too_large = HTTPException(413, f"upload larger than the server's limit of {limit / 2**20:g} MiB")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    reader = UploadReader()
    parser = MultipartParser(boundary, reader.callbacks())
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise too_large
            parser.write(chunk)
        parser.finalize()
    except FormParserError as e:
        raise HTTPException(400, f"malformed multipart body ({e})") from None
    return reader.uploads


# ---------------------------------------------------------------- the app


def page_files() -> dict[str, Any]:
    """The upload page's files (hashtagkit/static/*), by name: the only files GET serves."""
    root = importlib.resources.files("hashtagkit") / "static"
    if not root.is_dir():
        return {}
    return {f.name: f for f in root.iterdir() if f.is_file() and not f.name.startswith(".")}


def create_app(recommender, *, max_batch: int = 32, max_wait_ms: float = 20, token: str | None = None,
               max_upload_mb: float = 20) -> FastAPI:
    """The API around a loaded `Recommender`: POST /v1/recommend, GET /v1/info, GET /healthz,
    the upload page at GET /; with a token, every /v1 call needs `Authorization: Bearer <token>`."""
    if max_batch < 1 or max_wait_ms < 0 or max_upload_mb <= 0:
        raise InputError("max_batch must be >= 1, max_wait_ms >= 0 and max_upload_mb > 0")
    if token is not None and not token.strip():
        raise InputError("the token is empty")
    limit = int(max_upload_mb * 2**20)
    batcher = MicroBatcher(recommender.predict, max_batch, max_wait_ms)
    decoder = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="hashtagkit-decode")
    files = page_files()
    started = time.time()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            decoder.shutdown(wait=True)

    app = FastAPI(title="hashtagkit", version=__version__, lifespan=lifespan,
                  description="Hashtags for photos: a fitted hashtagkit run served with its models loaded once.")
    app.state.batcher = batcher
    bearer = HTTPBearer(auto_error=False, description="Needed when the server was started with --token-file.")
    expected = token.strip().encode() if token is not None else None

    def authorized(credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:
        if expected is None:
            return
        given = credentials.credentials.encode() if credentials is not None else b""
        if not hmac.compare_digest(given, expected):  # constant time: no timing oracle on the token
            raise HTTPException(401, "missing or wrong token: send 'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})

    async def prepare(upload: Upload):
        """A decoded photo, or the reason it is not one."""
        if not upload.data:
            return "empty file"
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(decoder, recommender.prepare, bytes(upload.data), upload.name)
        except DecodeError as e:
            return str(e) or "unreadable"
        except Exception:  # a decoder bug must cost this photo, not the request or the server
            log.exception("decoding %r failed unexpectedly", upload.name)
            return "unreadable"
        finally:
            upload.data = bytearray()

    multipart_body = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["files"],
        "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"},
                                 "description": "The photos (repeat the field for several)."}}}}}}}

    @app.post("/v1/recommend", response_model=RecommendResponse, dependencies=[Depends(authorized)],
              openapi_extra=multipart_body, tags=["api"],
              responses={400: {"description": "no files"}, 401: {"description": "token missing or wrong"},
                         413: {"description": "upload too large"}, 415: {"description": "no file is an image"}})
    async def recommend(request: Request, top: int = Query(5, ge=1, le=10_000, description="Hashtags per photo.")):
        """Top hashtags for each uploaded photo, in upload order; a bad photo gets its own error."""
        try:
            uploads = await read_uploads(request, limit)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is left to read it
        if not uploads:
            raise HTTPException(400, "no files: send one or more photos as multipart parts named 'files'")
        prepared = await asyncio.gather(*(prepare(u) for u in uploads))
        good = [i for i, p in enumerate(prepared) if not isinstance(p, str)]
        errors = {i: p for i, p in enumerate(prepared) if isinstance(p, str)}
        if not good:
            reasons = "; ".join(f"{uploads[i].name}: {errors[i]}" for i in errors)
            return JSONResponse({"detail": f"no uploaded file is an image ({reasons})",
                                 "results": [result_json(uploads[i].name, [], errors[i]) for i in errors]},
                                status_code=415)
        ranked = dict(zip(good, await batcher.submit([prepared[i] for i in good], min(top, len(recommender.vocab))),
                          strict=True))
        return {"results": [result_json(u.name, ranked.get(i, []), errors.get(i)) for i, u in enumerate(uploads)]}

    @app.get("/v1/info", dependencies=[Depends(authorized)], tags=["api"])
    def info() -> dict:
        """The run being served (head, view, vocabulary, backbones and their weights' sha256, test
        scores) and what the server has done (batches run, images, largest batch)."""
        return {**recommender.info(), "server": {
            "version": __version__, "max_batch": max_batch, "max_wait_ms": max_wait_ms,
            "max_upload_mb": max_upload_mb, "max_files": MAX_FILES, "token_required": expected is not None,
            "uptime_s": round(time.time() - started, 1), "batching": batcher.stats.as_json()}}

    @app.get("/healthz", tags=["server"])
    def healthz() -> JSONResponse:
        """200 while the model's batcher runs, 503 if it died (no token needed)."""
        ok = batcher.alive()
        return JSONResponse({"status": "ok" if ok else "batcher stopped"}, status_code=200 if ok else 503)

    @app.get("/", include_in_schema=False)
    def page() -> Response:
        if "index.html" not in files:
            return Response("hashtagkit: the upload page is not installed (hashtagkit/static/index.html is missing "
                            "from this installation); the API is at /v1/recommend, its documentation at /docs\n",
                            status_code=404, media_type="text/plain")
        return HTMLResponse(files["index.html"].read_bytes())

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in files:  # a name from the list, never a path joined from the client's text
            raise HTTPException(404, "no such file")
        media = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return Response(files[name].read_bytes(), media_type=media, headers={"X-Content-Type-Options": "nosniff"})

    return app


# ---------------------------------------------------------------- running it


def read_token(path) -> str:
    """The bearer token from a file (surrounding whitespace removed); empty or unreadable is an error."""
    try:
        token = open(path, encoding="utf-8").read().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--token-file {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    if not token:
        raise InputError(f"--token-file {path} is empty")
    if any(c.isspace() or not c.isprintable() for c in token):
        raise InputError(f"--token-file {path}: the token must be one line of printable characters without spaces")
    return token


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def exposure_warning(host: str, token: str | None) -> str | None:
    """The warning for a server others can reach without a token, or None."""
    if is_loopback(host) or token is not None:
        return None
    return (f"warning: serving on {host} without a token: anyone who can reach this machine can use the API "
            "(pass --token-file, or bind 127.0.0.1)")


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, opened before uvicorn starts so a busy port is a one-line error."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    return sock


def run_server(recommender, host: str = "127.0.0.1", port: int = 8000, *, token: str | None = None,
               log_level: str = "info", **options) -> None:
    """Serve until Ctrl-C/SIGTERM; `options` go to `create_app` (max_batch, max_wait_ms, max_upload_mb)."""
    import uvicorn

    warning = exposure_warning(host, token)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    app = create_app(recommender, token=token, **options)
    sock = listen(host, port)
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=10, server_header=False)
    uvicorn.Server(config).run(sockets=[sock])


@contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0) -> Iterator[str]:
    """Run `app` on uvicorn in a background thread (tests, benchmarks, notebooks) and yield its
    base URL; port 0 picks a free port. Stopped (and joined) on exit."""
    import uvicorn

    sock = listen(host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="hashtagkit-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"the server did not start within {timeout:g} s")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
