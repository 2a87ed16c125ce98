"""The FastAPI app around a loaded `Recommender`: the routes, the token check, the page's files."""

from __future__ import annotations

import asyncio
import hmac
import importlib.resources
import logging
import mimetypes
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

from hashtagkit import __version__
from hashtagkit.errors import InputError
from hashtagkit.images import DecodeError, decoded_pixels
from hashtagkit.recommend import Prepared, Recommendation
from hashtagkit.serve.batcher import MicroBatcher
from hashtagkit.serve.budget import PixelBudget
from hashtagkit.serve.uploads import MAX_FILES, Upload, read_uploads

log = logging.getLogger("hashtagkit.serve")

DECODE_THREADS = max(1, min(4, os.cpu_count() or 1))


class Hashtag(BaseModel):
    tag: str
    score: float


class ImageResult(BaseModel):
    image: str
    hashtags: list[Hashtag]
    error: str | None = None


class RecommendResponse(BaseModel):
    results: list[ImageResult]


class Detail(BaseModel):
    """An error's body: what went wrong, in one line."""

    detail: str


def result_json(name: str, hashtags: list[tuple[str, float]], error: str | None = None) -> dict:
    """One image's answer in `recommend --json`'s shape (the Recommendation decides it)."""
    return Recommendation(name, hashtags, error).as_json()


def page_files() -> dict[str, Any]:
    """The upload page's files (hashtagkit/static/*), by name: the only files GET serves."""
    root = importlib.resources.files("hashtagkit") / "static"
    if not root.is_dir():
        return {}
    return {f.name: f for f in root.iterdir() if f.is_file() and not f.name.startswith(".")}


MAX_REQUESTS = 64  # requests served at once: at most 64 x the upload limit held in memory


@dataclass
class RequestCount:
    """Requests being served now, against the limit (`app.state.requests`)."""

    limit: int
    active: int = 0


class ServerTiming:
    """`Server-Timing` on each answer of POST /v1/recommend (browsers' developer tools show it):
    read (body + multipart), decode, wait (queued until its batch started: the previous batch,
    max_wait), model (its batch's forward + head + ranking; desc: the batch's photos) and total
    (the request in the server, JSON included, until its answer starts), in milliseconds."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def timed_send(message) -> None:
            timing = (scope.get("state") or {}).get("timing")
            if message["type"] == "http.response.start" and timing:
                parts = [f"{name};dur={timing[name] * 1000:.2f}" for name in ("read", "decode", "wait") if name in timing]
                if "model" in timing:
                    parts.append(f'model;dur={timing["model"] * 1000:.2f};desc="batch of {timing["batch"]}"')
                parts.append(f"total;dur={(time.perf_counter() - started) * 1000:.2f}")
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"server-timing", ", ".join(parts).encode())]}
            await send(message)

        await self.app(scope, receive, timed_send)


class RequestLimit:
    """At most `count.limit` HTTP requests at once; beyond, a JSON 503 with Retry-After (uvicorn's
    own `limit_concurrency` answers plain text, which clients of a JSON API cannot read)."""

    def __init__(self, app, count: RequestCount) -> None:
        self.app, self.count = app, count

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.count.active >= self.count.limit:
            busy = JSONResponse({"detail": f"the server is busy ({self.count.limit} requests at once): try again "
                                           "shortly"}, status_code=503, headers={"Retry-After": "1"})
            await busy(scope, receive, send)
            return
        self.count.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.count.active -= 1


def create_app(recommender, *, max_batch: int = 32, max_wait_ms: float = 20, token: str | None = None,
               max_upload_mb: float = 20, max_requests: int = MAX_REQUESTS) -> FastAPI:
    """The API around a loaded `Recommender`: POST /v1/recommend, GET /v1/info, GET /healthz,
    the upload page at GET /; with a token, every /v1 call needs `Authorization: Bearer <token>`."""
    if max_batch < 1 or max_wait_ms < 0 or max_upload_mb <= 0 or max_requests < 1:
        raise InputError("max_batch must be >= 1, max_wait_ms >= 0, max_upload_mb > 0 and max_requests >= 1")
    if token is not None and not token.strip():
        raise InputError("the token is empty")
    limit = int(max_upload_mb * 2**20)
    batcher = MicroBatcher(recommender.predict, max_batch, max_wait_ms)
    decoder = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="hashtagkit-decode")
    pixels = PixelBudget()
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
    requests = RequestCount(max_requests)
    app.add_middleware(RequestLimit, count=requests)
    app.add_middleware(ServerTiming)
    app.state.requests = requests
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
        data = bytes(upload.data)
        upload.data = bytearray()
        # decoded pixels in flight stay bounded; the header is read in a decode thread (a PNG's text
        # chunks before its size can take Pillow a while)
        size = await loop.run_in_executor(decoder, partial(decoded_pixels, data, draft_side=recommender.draft_side))
        taken = await pixels.acquire(size)
        try:
            rgb = await loop.run_in_executor(decoder, recommender.decode, data)
            # each backbone's preprocessing in its own decode thread: a lone photo's two take the
            # time of one (Pillow resizes without the GIL); under load the threads are busy anyway
            inputs = await asyncio.gather(*(loop.run_in_executor(decoder, t, rgb) for t in recommender.transforms))
            return Prepared(upload.name, tuple(inputs))
        except DecodeError as e:
            return str(e) or "unreadable"
        except Exception:  # a decoder bug must cost this photo, not the request or the server
            log.exception("decoding %r failed unexpectedly", upload.name)
            return "unreadable"
        finally:
            del data
            await pixels.release(taken)

    multipart_body = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["files"],
        "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"},
                                 "minItems": 1, "maxItems": MAX_FILES,
                                 "description": "The photos (repeat the field for several)."}}}}}}}
    # the token check, and its place in the schema, only where there is a token to check
    guarded = [Depends(authorized)] if expected is not None else []
    unauthorized = {401: {"description": "token missing or wrong", "model": Detail}} if expected is not None else {}

    @app.post("/v1/recommend", response_model=RecommendResponse, dependencies=guarded,
              openapi_extra=multipart_body, tags=["api"],
              responses={400: {"description": "no files, more than 256, a `files` part that is a form field rather "
                                              "than a file, or threshold=true for a run without thresholds",
                               "model": Detail},
                         **unauthorized,
                         413: {"description": "upload too large", "model": Detail},
                         415: {"description": "not multipart/form-data", "model": Detail},
                         503: {"description": "the server is busy or shutting down (Retry-After says when to try "
                                               "again)", "model": Detail}})
    async def recommend(request: Request,
                        top: int | None = Query(None, ge=1, le=10_000, description="Hashtags per photo [default 5]; "
                                                "with threshold=true at most this many [default: no cap]."),
                        threshold: bool = Query(False, description="Return the hashtags whose score reaches the run's "
                                                "threshold (a variable number) instead of the top ones; the run must "
                                                "have been fitted with --threshold.")):
        """Top hashtags for each uploaded photo, in upload order; a bad photo gets its own error."""
        if threshold and not recommender.has_thresholds:
            raise HTTPException(400, "this run has no thresholds: fit it with --threshold global|per-tag")
        if top is None and not threshold:
            top = 5
        started = time.perf_counter()
        try:
            async with batcher.arriving_request():
                uploads = await read_uploads(request, limit)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is left to read it
        if not uploads:
            raise HTTPException(400, "no files: send one or more photos as multipart parts named 'files'")
        read = time.perf_counter()
        async with batcher.decoding_request():
            prepared = await asyncio.gather(*(prepare(u) for u in uploads))
        timing = request.state.timing = {"read": read - started, "decode": time.perf_counter() - read}
        good = [i for i, p in enumerate(prepared) if not isinstance(p, str)]
        errors = {i: p for i, p in enumerate(prepared) if isinstance(p, str)}
        if not good:  # every photo answered with its own error, as in a request with some good ones
            return {"results": [result_json(uploads[i].name, [], errors[i]) for i in errors]}
        n_ranked = len(recommender.vocab) if threshold else min(top, len(recommender.vocab))
        answers = await batcher.submit([prepared[i] for i in good], n_ranked, timing)
        timing["wait"] = timing.pop("started") - timing.pop("queued")
        if threshold:  # the full ranking, cut where the scores fall below their thresholds
            answers = [recommender.above_threshold(tags, top) for tags in answers]
        ranked = dict(zip(good, answers, strict=True))
        return {"results": [result_json(u.name, ranked.get(i, []), errors.get(i)) for i, u in enumerate(uploads)]}

    @app.get("/v1/info", dependencies=guarded, tags=["api"], responses=unauthorized)
    def info() -> dict:
        """The run being served (head, view, vocabulary, backbones and their weights' sha256, test
        scores) and what the server has done (batches run, images, largest batch)."""
        return {**recommender.info(), "server": {
            "version": __version__, "max_batch": max_batch, "max_wait_ms": max_wait_ms,
            "max_upload_mb": max_upload_mb, "max_files": MAX_FILES, "token_required": expected is not None,
            "uptime_s": round(time.time() - started, 1), "batching": batcher.stats.as_json(),
            "decode_pixels": {"limit": pixels.limit, "peak": pixels.peak}}}

    @app.get("/healthz", tags=["server"])
    def healthz() -> JSONResponse:
        """200 while the model's batcher runs; 503 if it died or the server is draining for a
        shutdown, so a load balancer stops sending to it (no token needed)."""
        ok = batcher.alive() and not batcher.draining
        status = "ok" if ok else "draining" if batcher.draining else "batcher stopped"
        return JSONResponse({"status": status}, status_code=200 if ok else 503)

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

    if not recommender.has_thresholds:  # the schema says what this run accepts: threshold=true is a 400 here
        generate = app.openapi

        def openapi() -> dict:
            schema = generate()
            for param in schema["paths"]["/v1/recommend"]["post"].get("parameters", []):
                if param["name"] == "threshold":
                    param["schema"] = {"type": "boolean", "enum": [False], "default": False, "title": "Threshold"}
                    param["description"] = "Only false: this run was fitted without --threshold."
            return schema

        app.openapi = openapi
    return app
