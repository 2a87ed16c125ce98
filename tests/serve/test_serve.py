"""`hashtagkit serve` against a real uvicorn server on 127.0.0.1 (in a thread of this process, so
the test backbone registered here is known to it), with a real small run: a demo store, features
from the tiny test backbone, a kNN head. Every answer is checked against the in-process
`Recommender.recommend` of the same photo; every client call has a timeout and every loop a bound."""

from __future__ import annotations

import asyncio
import io
import os
import random
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from hashtagkit.cli.main import cli
from hashtagkit.recommend import Recommender
from hashtagkit.serve import create_app, exposure_warning, serve_in_thread

from ..conftest import run_cli
from ..extraction.test_extract import tiny_scene_backbone

TIMEOUT = 30  # seconds, every client call


# ---------------------------------------------------------------- the run, photos and helpers


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A demo store of 30 photos, tiny-scene features, a kNN run and a popularity run."""
    tiny_scene_backbone()
    root = tmp_path_factory.mktemp("serve")
    store = root / "demo.zarr"
    run_cli(["prepare", "demo", "-o", str(store), "--n", "30"],
                 ["extract", str(store), "--backbone", "tiny-scene=random", "--no-progress", "--workers", "0",
                  "--precision", "fp32"],
                 ["fit", str(store), "--head", "knn", "-o", str(root / "run"), "--set", "k=5"],
                 ["fit", str(store), "--head", "popularity", "-o", str(root / "floor")])
    photos = sorted((root / "demo_images").rglob("*.jpg"))[:12]
    assert len(photos) == 12
    return root, photos


@pytest.fixture(scope="module")
def rec(run):
    return Recommender.from_run(run[0] / "run", device="cpu")


@pytest.fixture(scope="module")
def reference(rec, run):
    """The in-process answer for each photo alone (top 5), by photo file name."""
    return {p.name: rec.recommend([p], top=5)[0] for p in run[1]}


@pytest.fixture(scope="module")
def server(rec):
    with serve_in_thread(create_app(rec, max_batch=8, max_wait_ms=20)) as url:
        yield url


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels but holds (almost) none: a decompression bomb's
    header, a few dozen bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def bad_files(photo: Path) -> dict[str, tuple[bytes, str]]:
    """name -> (content, a word its error must contain)."""
    data = photo.read_bytes()
    return {"notes.txt": (b"this is not a photo\n" * 10, "unreadable"),
            "empty.jpg": (b"", "empty"),
            "cut.jpg": (data[: len(data) // 2], "truncated"),
            "bomb.png": (png_header(40_000, 40_000), "decompression bomb"),
            "huge.png": (png_header(9_000, 9_000), "too large")}


def post(url: str, files: list[tuple[str, bytes]], top: int = 5, headers: dict | None = None) -> httpx.Response:
    return httpx.post(f"{url}/v1/recommend", params={"top": top}, headers=headers or {}, timeout=TIMEOUT,
                      files=[("files", (name, data, "application/octet-stream")) for name, data in files])


def assert_same(got: dict, expected, top: int = 5) -> None:
    """A served answer equals the in-process recommendation of that photo alone."""
    assert got["image"] == Path(expected.image).name
    assert got["error"] is None, got
    tags = [h["tag"] for h in got["hashtags"]]
    assert tags == [t for t, _ in expected.hashtags[:top]]
    assert [h["score"] for h in got["hashtags"]] == pytest.approx([s for _, s in expected.hashtags[:top]], abs=1e-5)


def raw_request(url: str, head: str, body: bytes = b"", timeout: float = TIMEOUT) -> tuple[int, bytes]:
    """Send a request by hand (a lying Content-Length, half a body) and read the status line."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(head.encode() + b"\r\n\r\n" + body)
        reply = b""
        for _ in range(1000):  # the head, then the body's declared length
            head_end = reply.find(b"\r\n\r\n")
            if head_end >= 0:
                length = next((int(line.split(b":")[1]) for line in reply[:head_end].split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                if len(reply) >= head_end + 4 + length:
                    break
            part = s.recv(4096)
            if not part:
                break
            reply += part
    return int(reply.split(b" ", 2)[1]), reply


# ---------------------------------------------------------------- answers


def test_answers_equal_the_in_process_recommendation(server, run, reference):
    photos = run[1][:5]
    for top in (5, 3):
        res = post(server, [(p.name, p.read_bytes()) for p in photos], top=top)
        assert res.status_code == 200, res.text
        results = res.json()["results"]
        assert [r["image"] for r in results] == [p.name for p in photos]  # upload order
        for got, p in zip(results, photos, strict=True):
            assert_same(got, reference[p.name], top)
            assert len(got["hashtags"]) == top


def test_bad_images_get_their_own_error_the_others_their_hashtags(server, run, reference):
    good = run[1][:2]
    bad = bad_files(good[0])
    files = [(good[0].name, good[0].read_bytes()), *[(n, d) for n, (d, _) in bad.items()],
             (good[1].name, good[1].read_bytes())]
    res = post(server, files)
    assert res.status_code == 200, res.text
    results = res.json()["results"]
    assert [r["image"] for r in results] == [n for n, _ in files]
    assert_same(results[0], reference[good[0].name])
    assert_same(results[-1], reference[good[1].name])
    for got, (name, (_, word)) in zip(results[1:-1], bad.items(), strict=True):
        assert got["hashtags"] == [] and word in got["error"], (name, got)
    assert httpx.get(f"{server}/healthz", timeout=TIMEOUT).json() == {"status": "ok"}


def test_nothing_usable_is_400_or_415_with_a_detail(server, run):
    """Photos that are all bad are each answered with their error (200, as when some are good:
    a schema-valid upload is accepted, Schemathesis' positive_data_acceptance); no photo at all is
    400, a body that is not multipart 415."""
    bad = bad_files(run[1][0])
    res = post(server, [(n, d) for n, (d, _) in bad.items()])
    assert res.status_code == 200
    body = res.json()
    assert [r["image"] for r in body["results"]] == list(bad) and all(r["error"] for r in body["results"])
    assert all(r["hashtags"] == [] for r in body["results"])
    # a form without any 'files' part, an empty multipart body, JSON instead of multipart, a broken body
    res = httpx.post(f"{server}/v1/recommend", data={"photo": "x"}, files=[("other", ("a.jpg", b"x"))],
                     timeout=TIMEOUT)
    assert res.status_code == 400 and "no files" in res.json()["detail"]
    res = httpx.post(f"{server}/v1/recommend", content=b"--b--\r\n", timeout=TIMEOUT,
                     headers={"content-type": "multipart/form-data; boundary=b"})
    assert res.status_code == 400 and "no files" in res.json()["detail"]
    res = httpx.post(f"{server}/v1/recommend", data={"files": "not a file"}, files=[("other", ("a.jpg", b"x"))],
                     timeout=TIMEOUT)  # a form field named files: not a file upload
    assert res.status_code == 400 and "must be a file upload" in res.json()["detail"]
    res = httpx.post(f"{server}/v1/recommend", json={"path": "/etc/passwd"}, timeout=TIMEOUT)
    assert res.status_code == 415 and "multipart/form-data" in res.json()["detail"]
    res = httpx.post(f"{server}/v1/recommend", content=b"garbage without boundaries", timeout=TIMEOUT,
                     headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert res.status_code == 400 and "malformed" in res.json()["detail"]
    res = httpx.post(f"{server}/v1/recommend", content=b"x", timeout=TIMEOUT,
                     headers={"content-type": "multipart/form-data"})
    assert res.status_code == 400 and "boundary" in res.json()["detail"]
    res = post(server, [(run[1][0].name, run[1][0].read_bytes())], top=0)
    assert res.status_code == 422
    res = post(server, [(f"{i}.jpg", b"x") for i in range(257)])  # MAX_FILES + 1
    assert res.status_code == 400 and "too many files" in res.json()["detail"]  # the schema's maxItems
    assert httpx.get(f"{server}/healthz", timeout=TIMEOUT).status_code == 200


def test_info_openapi_and_page(server, rec):
    info = httpx.get(f"{server}/v1/info", timeout=TIMEOUT).json()
    assert info["vocabulary_size"] == len(rec.vocab) and info["head"] == "knn"
    assert [b["backbone"] for b in info["backbones"]] == ["tiny-scene"]
    assert info["server"]["max_batch"] == 8 and info["server"]["token_required"] is False
    spec = httpx.get(f"{server}/openapi.json", timeout=TIMEOUT).json()
    body = spec["paths"]["/v1/recommend"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["files"]["items"]["format"] == "binary"
    assert {"/v1/info", "/healthz"} <= set(spec["paths"])
    docs = httpx.get(f"{server}/docs", timeout=TIMEOUT)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    page = httpx.get(f"{server}/", timeout=TIMEOUT)
    installed = (Path(__file__).parents[2] / "hashtagkit" / "static" / "index.html").is_file()
    if installed:
        assert page.status_code == 200 and "<html" in page.text.lower()
        assert page.headers["content-type"].startswith("text/html")
    else:  # said clearly, not a 500
        assert page.status_code == 404 and "index.html is missing" in page.text
    for evil in ("/static/..%2Fapp.py", "/static/%2e%2e%2f%2e%2e%2fsetup.py", "/static/..%2Fserve%2Fapp.py"):
        assert httpx.get(f"{server}{evil}", timeout=TIMEOUT).status_code == 404


def conforms(value, schema: dict, spec: dict, where: str = "body") -> list[str]:
    """Where `value` breaks `schema` (the OpenAPI 3.1 subset FastAPI writes: $ref, anyOf, type,
    required, properties, items, enum, minimum/maximum), as messages; [] when it conforms."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return conforms(value, spec["components"]["schemas"][name], spec, where)
    if "anyOf" in schema:
        tried = [conforms(value, s, spec, where) for s in schema["anyOf"]]
        return [] if any(not t for t in tried) else [f"{where}: matches none of anyOf ({tried})"]
    kinds = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
             "integer": int, "number": (int, float)}
    kind = schema.get("type")
    if kind is not None and (not isinstance(value, kinds[kind]) or (kind in ("integer", "number")
                                                                    and isinstance(value, bool))):
        return [f"{where}: {value!r} is not {kind}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{where}: {value!r} not in {schema['enum']}"]
    if "minimum" in schema and value < schema["minimum"] or "maximum" in schema and value > schema["maximum"]:
        return [f"{where}: {value!r} out of range"]
    out = []
    if isinstance(value, dict):
        out += [f"{where}: {k!r} missing" for k in schema.get("required", []) if k not in value]
        for k, sub in schema.get("properties", {}).items():
            if k in value:
                out += conforms(value[k], sub, spec, f"{where}.{k}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            out += conforms(item, schema["items"], spec, f"{where}[{i}]")
    return out


def test_a_client_driven_by_the_schema_alone_calls_the_service(server, run):
    """What a client generated from openapi.json does: read the operation, its multipart field
    and its query parameters from the schema, call it with real photos and a non-image, and
    check each answer against the schema of its status code (the conformance checker is tested
    on a wrong body too)."""
    spec = httpx.get(f"{server}/openapi.json", timeout=TIMEOUT).json()
    op = spec["paths"]["/v1/recommend"]["post"]
    (media, body), = op["requestBody"]["content"].items()
    assert media == "multipart/form-data"
    (field,) = body["schema"]["required"]
    params = {p["name"]: p for p in op.get("parameters", []) if p["in"] == "query"}
    top = params["top"]["schema"]["anyOf"][0]["maximum"] if "anyOf" in params["top"]["schema"] else 3
    top = min(3, top)
    photos = [(p.name, p.read_bytes()) for p in run[1][:2]] + [("notes.txt", b"not a photo")]
    res = httpx.post(f"{server}/v1/recommend", params={"top": top}, timeout=TIMEOUT,
                     files=[(field, (name, data, "application/octet-stream")) for name, data in photos])
    assert str(res.status_code) in op["responses"], res.status_code
    schema = op["responses"][str(res.status_code)]["content"]["application/json"]["schema"]
    assert res.status_code == 200 and conforms(res.json(), schema, spec) == []
    results = res.json()["results"]
    assert [len(r["hashtags"]) for r in results] == [top, top, 0] and results[2]["error"]
    # only non-images: each its error, in the documented shape
    res = httpx.post(f"{server}/v1/recommend", timeout=TIMEOUT,
                     files=[(field, ("a.txt", b"text", "text/plain"))])
    assert res.status_code == 200 and conforms(res.json(), schema, spec) == [] and res.json()["results"][0]["error"]
    # not multipart at all: the documented 415, its body as documented
    res = httpx.post(f"{server}/v1/recommend", json={"files": []}, timeout=TIMEOUT)
    assert res.status_code == 415
    assert conforms(res.json(), op["responses"]["415"]["content"]["application/json"]["schema"], spec) == []
    info = spec["paths"]["/v1/info"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert conforms(httpx.get(f"{server}/v1/info", timeout=TIMEOUT).json(), info, spec) == []
    assert conforms({"results": [{"image": 3}]}, schema, spec) != []  # the checker does find a wrong body


# ---------------------------------------------------------------- safety


def test_token_guards_every_api_call(rec, run):
    photo = run[1][0]
    with serve_in_thread(create_app(rec, token="s3cret-t0ken")) as url:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-t0ken"},
                        {"Authorization": "Bearer s3cret-t0ken-and-more"}):
            res = httpx.get(f"{url}/v1/info", headers=headers, timeout=TIMEOUT)
            assert res.status_code == 401 and res.headers["www-authenticate"] == "Bearer"
            assert post(url, [(photo.name, photo.read_bytes())], headers=headers).status_code == 401
        ok = {"Authorization": "Bearer s3cret-t0ken"}
        assert httpx.get(f"{url}/v1/info", headers=ok, timeout=TIMEOUT).json()["server"]["token_required"] is True
        res = post(url, [(photo.name, photo.read_bytes())], headers=ok)
        assert res.status_code == 200 and res.json()["results"][0]["hashtags"]
        # refused before the body is read: a declared 50 MB that never comes is answered at once
        status, _ = raw_request(url, "POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n"
                                     "Content-Type: multipart/form-data; boundary=b", timeout=10)
        assert status == 401
        assert httpx.get(f"{url}/healthz", timeout=TIMEOUT).status_code == 200  # open
        assert httpx.get(f"{url}/", timeout=TIMEOUT).status_code in (200, 404)  # the page loads; its calls need it


def test_uploads_over_the_limit_are_413_without_reading_them(rec, run):
    photo = run[1][0]
    with serve_in_thread(create_app(rec, max_upload_mb=0.25)) as url:
        # a declared length over the limit: answered before any body byte is sent
        status, reply = raw_request(url, "POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n"
                                         "Content-Type: multipart/form-data; boundary=b", timeout=10)
        assert status == 413 and b"0.25 MiB" in reply
        # no declared length (chunked): refused while reading, once the limit is crossed
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                      b"Content-Type: multipart/form-data; boundary=b\r\n\r\n")
            part = b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.jpg\"\r\n\r\n"
            piece = os.urandom(32768)
            sent, reply = 0, b""
            for _ in range(256):  # at most 8 MiB
                data = (part if sent == 0 else b"") + piece
                s.sendall(b"%x\r\n%s\r\n" % (len(data), data))
                sent += len(data)
                if select.select([s], [], [], 0.01)[0]:
                    reply = s.recv(4096)
                    break
            assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
        # under the limit: answered
        res = post(url, [(photo.name, photo.read_bytes())])
        assert res.status_code == 200 and res.json()["results"][0]["error"] is None
        assert httpx.get(f"{url}/healthz", timeout=TIMEOUT).status_code == 200


class DiskWrites:
    """Files opened for writing anywhere in this process while recording (an audit hook: it sees
    `open`, `os.open` and so tempfile's spooling)."""

    flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | getattr(os, "O_TMPFILE", 0)
    installed: DiskWrites | None = None

    def __init__(self):
        self.recording, self.seen = False, []
        if DiskWrites.installed is None:
            DiskWrites.installed = self
            sys.addaudithook(self.hook)

    def hook(self, event, args) -> None:
        if event == "open" and self.recording:
            path, mode, flags = args
            if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (flags or 0) & self.flags:
                self.seen.append(path)


def test_request_bodies_are_never_written_to_disk(server, rec):
    writes = DiskWrites.installed or DiskWrites()
    big = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (900, 900, 3), dtype=np.uint8)).save(big, "PNG")
    assert big.tell() > 2 * 2**20  # above starlette's 1 MiB spool threshold
    writes.recording, writes.seen = True, []
    try:
        res = post(server, [("noise.png", big.getvalue()), ("noise2.png", big.getvalue())])
    finally:
        writes.recording = False
    assert res.status_code == 200 and all(r["error"] is None for r in res.json()["results"])
    assert writes.seen == []
    # the probe sees spooling: SpooledTemporaryFile rolling over to disk is caught
    writes.recording = True
    try:
        with tempfile.SpooledTemporaryFile(max_size=1024) as f:
            f.write(b"x" * 4096)
    finally:
        writes.recording = False
    assert writes.seen


# ---------------------------------------------------------------- batching, load, faults


def test_concurrent_requests_are_batched_together(rec, run, reference):
    photos = run[1][:8]
    with serve_in_thread(create_app(rec, max_batch=16, max_wait_ms=300)) as url:
        barrier = threading.Barrier(len(photos), timeout=TIMEOUT)

        def one(p: Path) -> dict:
            barrier.wait()
            return post(url, [(p.name, p.read_bytes())]).json()["results"][0]

        with ThreadPoolExecutor(len(photos)) as pool:
            answers = list(pool.map(one, photos, timeout=TIMEOUT))
        for got, p in zip(answers, photos, strict=True):
            assert_same(got, reference[p.name])
        stats = httpx.get(f"{url}/v1/info", timeout=TIMEOUT).json()["server"]["batching"]
    assert stats["images"] == len(photos)
    assert stats["largest_batch"] > 1 and stats["batches"] < len(photos), stats


def test_a_gathering_batch_waits_for_photos_being_decoded(monkeypatch):
    """The batcher alone (a fake model that records batch sizes): photos arriving after
    max_wait_ms join the batch only while some request is still decoding, and that extra wait
    is bounded by DECODE_WAIT_S."""
    from hashtagkit.serve import batcher

    monkeypatch.setattr(batcher, "DECODE_WAIT_S", 0.5)
    sizes: list[int] = []

    def predict(items, top):
        sizes.append(len(items))
        return [[(str(i), 1.0)] * top for i in items]

    async def scenario(decoding_for: float | None) -> list[int]:
        sizes.clear()
        b = batcher.MicroBatcher(predict, max_batch=16, max_wait_ms=20)
        b.start()

        async def late_request():
            if decoding_for is None:  # nobody decoding: the late photo arrives after the batch closed
                await asyncio.sleep(0.2)
                return await b.submit([2], 1)
            async with b.decoding_request():
                await asyncio.sleep(decoding_for)
            return await b.submit([2], 1)

        late = asyncio.create_task(late_request())
        await asyncio.sleep(0.01)
        first = await asyncio.wait_for(b.submit([1], 1), TIMEOUT)
        second = await asyncio.wait_for(late, TIMEOUT)
        await b.stop()
        assert first == [[("1", 1.0)]] and second == [[("2", 1.0)]]
        return list(sizes)

    assert asyncio.run(scenario(None)) == [1, 1]  # max_wait_ms respected
    assert asyncio.run(scenario(0.2)) == [2]  # waited for the photo being decoded
    assert asyncio.run(scenario(1.5)) == [1, 1]  # but not beyond DECODE_WAIT_S


def batch_sizes_of(scenario) -> list[int]:
    """Run `scenario(batcher)` on a MicroBatcher with a fake model; the sizes of its batches."""
    from hashtagkit.serve import batcher

    sizes: list[int] = []

    def predict(items, top):
        sizes.append(len(items))
        return [[(str(i), 1.0)] * top for i in items]

    async def main(max_wait_ms: float) -> None:
        b = batcher.MicroBatcher(predict, max_batch=16, max_wait_ms=max_wait_ms)
        b.start()
        try:
            await asyncio.wait_for(scenario(b), TIMEOUT)
        finally:
            await b.stop()

    return main, sizes


def test_a_lone_photo_does_not_wait_max_wait():
    """Nobody else queued, read or decoded and no batch of several requests just answered: the
    batch of one closes at once. With max_wait_ms an hour, waiting for it would time out."""
    async def lone_client(b) -> None:
        for i in range(3):  # one client, requests back to back
            assert await asyncio.wait_for(b.submit([i], 1), 30) == [[(str(i), 1.0)]]

    main, sizes = batch_sizes_of(lone_client)
    asyncio.run(main(3_600_000))
    assert sizes == [1, 1, 1]


def test_a_photo_being_read_is_waited_for():
    """A request whose body is still being read when a lone photo is queued joins its batch
    (within max_wait_ms), as one being decoded does."""
    async def second_arriving(b) -> None:
        async def reading_then_submit():
            async with b.arriving_request():
                await asyncio.sleep(0.2)
            return await b.submit([2], 1)

        late = asyncio.create_task(reading_then_submit())
        await asyncio.sleep(0.01)
        await b.submit([1], 1)
        await late

    main, sizes = batch_sizes_of(second_arriving)
    asyncio.run(main(3_600_000))  # the wait ends when the read one is queued, not at max_wait
    assert sizes == [2]


def test_after_a_batch_of_several_requests_the_next_waits_for_their_clients(monkeypatch):
    """Batching under concurrency is kept: after a batch that answered two requests, the first
    client to come back waits max_wait_ms for the other (one batch of 2, not 1 + 1); once the
    batch is older than RETURN_S, a lone photo goes at once again."""
    from hashtagkit.serve import batcher

    monkeypatch.setattr(batcher, "RETURN_S", 2.0)

    async def two_clients(b) -> None:
        await asyncio.gather(b.submit([1], 1), b.submit([2], 1))  # both queued: one batch of 2

        async def come_back(i: int, delay: float):
            await asyncio.sleep(delay)
            return await b.submit([i], 1)

        await asyncio.gather(come_back(3, 0), come_back(4, 0.1))  # the second 0.1 s later
        await asyncio.sleep(2.2)  # past RETURN_S: nobody is expected back
        await asyncio.wait_for(b.submit([5], 1), 30)

    main, sizes = batch_sizes_of(two_clients)
    asyncio.run(main(1_000))
    assert sizes == [2, 2, 1]


def test_server_timing_says_where_a_request_spent_its_time(server, run):
    """Each answer of /v1/recommend carries Server-Timing: read, decode, wait, model (with its
    batch's size) and total, in ms; the parts fit inside the total."""
    res = post(server, [(run[1][0].name, run[1][0].read_bytes())])
    assert res.status_code == 200
    metrics = {}
    for part in res.headers["server-timing"].split(", "):
        name, *params = part.split(";")
        metrics[name] = dict(p.split("=", 1) for p in params)
    assert list(metrics) == ["read", "decode", "wait", "model", "total"]
    dur = {k: float(v["dur"]) for k, v in metrics.items()}
    assert all(v >= 0 for v in dur.values())
    assert dur["read"] + dur["decode"] + dur["wait"] + dur["model"] <= dur["total"]
    assert metrics["model"]["desc"] == '"batch of 1"'
    assert "server-timing" not in httpx.get(f"{server}/healthz", timeout=TIMEOUT).headers


def test_connections_to_the_server_have_nagle_off():
    """A connection accepted on `listen`'s socket has TCP_NODELAY (asyncio sets it only when the
    socket's protocol is TCP): with Nagle on, each answer's body waited for the client's delayed
    ACK of its headers, 40 ms per request on a kept-alive connection."""
    from hashtagkit.serve.run import listen

    async def accepted_nodelay() -> int:
        sock = listen("127.0.0.1", 0)
        seen = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport) -> None:
                s = transport.get_extra_info("socket")
                seen.set_result(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
            value = await asyncio.wait_for(seen, TIMEOUT)
            writer.close()
            return value
        finally:
            server.close()

    assert asyncio.run(accepted_nodelay()) != 0


def half_upload(url: str, photo: bytes, send_all: bool = False) -> None:
    """A client that sends part of a multipart body (or all of it) and hangs up without reading."""
    body = (b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"x.jpg\"\r\n\r\n" + photo
            + b"\r\n--b--\r\n")
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body))
        s.sendall(body if send_all else body[: len(body) // 2])
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset, not a polite close


def test_load_mixed_good_and_bad_with_clients_hanging_up(server, run, reference):
    """8 clients x 10 requests of 1-3 photos (good and bad mixed), while other clients hang up
    mid-upload: every answer is the photo's own, none is lost, the server is healthy afterwards."""
    photos = run[1]
    bad = bad_files(photos[0])
    before = httpx.get(f"{server}/v1/info", timeout=TIMEOUT).json()["server"]["batching"]

    def client(seed: int) -> int:
        rng = random.Random(seed)
        checked = 0
        with httpx.Client(timeout=TIMEOUT) as http:
            for _ in range(10):
                names = rng.sample([p.name for p in photos] + list(bad), rng.randint(1, 3))
                files = [(n, bad[n][0] if n in bad else (photos[0].parent / n).read_bytes()) for n in names]
                top = rng.choice([1, 3, 5])
                res = http.post(f"{server}/v1/recommend", params={"top": top},
                                files=[("files", f) for f in files])
                assert res.status_code == 200, res.text
                results = res.json()["results"]
                assert [r["image"] for r in results] == names
                for got, n in zip(results, names, strict=True):
                    if n in bad:
                        assert got["hashtags"] == [] and bad[n][1] in got["error"]
                    else:
                        assert_same(got, reference[n], top)
                    checked += 1
        return checked

    def hang_ups() -> int:
        data = photos[1].read_bytes()
        for i in range(6):
            half_upload(server, data, send_all=i % 3 == 2)
            time.sleep(0.05)
        return 6

    with ThreadPoolExecutor(9) as pool:
        rude = pool.submit(hang_ups)
        checked = list(pool.map(client, range(8), timeout=120))
        assert rude.result(timeout=TIMEOUT) == 6
    assert len(checked) == 8 and all(c >= 10 for c in checked)
    assert httpx.get(f"{server}/healthz", timeout=TIMEOUT).json() == {"status": "ok"}
    after = httpx.get(f"{server}/v1/info", timeout=TIMEOUT).json()["server"]["batching"]
    assert after["failed_batches"] == 0 and after["images"] > before["images"]
    res = post(server, [(photos[2].name, photos[2].read_bytes())])
    assert_same(res.json()["results"][0], reference[photos[2].name])


# ---------------------------------------------------------------- the command


def test_exposure_warning_only_for_a_reachable_server_without_token():
    assert exposure_warning("127.0.0.1", None) is None and exposure_warning("::1", None) is None
    assert exposure_warning("localhost", None) is None and exposure_warning("0.0.0.0", "t") is None
    assert "without a token" in exposure_warning("0.0.0.0", None)
    assert "without a token" in exposure_warning("myhost.example", None)


def test_cli_refuses_bad_input_in_one_line(run, tmp_path):
    runner = CliRunner()
    res = runner.invoke(cli, ["serve", str(tmp_path / "no-run")])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and res.output.startswith("Error:"), res.output
    (tmp_path / "empty").write_text("  \n")
    res = runner.invoke(cli, ["serve", str(run[0] / "run"), "--token-file", str(tmp_path / "empty")])
    assert res.exit_code == 2 and "is empty" in res.output
    res = runner.invoke(cli, ["serve", str(run[0] / "run"), "--max-upload-mb", "0"])
    assert res.exit_code == 2
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        res = runner.invoke(cli, ["serve", str(run[0] / "floor"), "--port", str(busy.getsockname()[1])])
    assert res.exit_code == 2 and "cannot listen" in res.output and res.output.count("\n") == 1, res.output


def wait_until_healthy(proc: subprocess.Popen, url: str, seconds: float = 60) -> None:
    """Until the `serve` process answers /healthz with 200 (it loads its models first)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f"serve did not become healthy within {seconds:g} s")


@pytest.mark.slow
def test_cli_serves_until_sigterm(run, tmp_path):
    """The real command in its own process (the popularity run needs no test backbone): it loads
    the run, answers as the library does, and stops cleanly on SIGTERM."""
    floor = Recommender.from_run(run[0] / "floor", device="cpu")
    photo = run[1][0]
    expected = floor.recommend([photo], top=3)[0]
    (tmp_path / "token").write_text("tok\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    exe = Path(sys.executable).with_name("hashtagkit")
    proc = subprocess.Popen([str(exe), "serve", str(run[0] / "floor"), "--port", str(port), "--token-file",
                             str(tmp_path / "token"), "--max-batch", "4"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(proc, url)
        res = post(url, [(photo.name, photo.read_bytes())], top=3, headers={"Authorization": "Bearer tok"})
        assert res.status_code == 200, res.text
        got = res.json()["results"][0]
        assert [h["tag"] for h in got["hashtags"]] == [t for t, _ in expected.hashtags]
        assert post(url, [(photo.name, photo.read_bytes())]).status_code == 401
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    output = proc.stdout.read()
    assert "Traceback" not in output and "hashtagkit serve: stopped" in output, output


# ---------------------------------------------------------------- draining on SIGTERM (issue #23)


def test_the_batcher_drains_queued_work_then_refuses_with_503():
    """Draining: what is queued keeps being answered for the drain window, then what has not
    started is refused with 503 + Retry-After; no other error, and new work is refused at once."""
    from hashtagkit.serve.batcher import MicroBatcher, ShuttingDown

    def slow_predict(photos, top):
        time.sleep(0.1)
        return [[(f"tag{p}", 1.0)] for p in photos]

    async def scenario():
        batcher = MicroBatcher(slow_predict, max_batch=1, max_wait_ms=0)
        batcher.start()
        tasks = [asyncio.create_task(batcher.submit([i], 1)) for i in range(20)]
        await asyncio.sleep(0.15)  # one batch done, the second running
        batcher.request_drain(0.35)
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        with pytest.raises(ShuttingDown):
            await batcher.submit([99], 1)
        await batcher.stop()
        return outcomes

    outcomes = asyncio.run(scenario())
    answered = [o for o in outcomes if isinstance(o, list)]
    refused = [o for o in outcomes if isinstance(o, ShuttingDown)]
    assert len(answered) + len(refused) == 20, [o for o in outcomes if not isinstance(o, list | ShuttingDown)]
    assert 2 <= len(answered) <= 10 and refused, (len(answered), len(refused))
    assert answered == [[[(f"tag{i}", 1.0)]] for i in range(len(answered))]  # in order, the first ones
    assert all(r.status_code == 503 and r.headers["Retry-After"] for r in refused)


@pytest.mark.slow
def test_sigterm_under_load_answers_every_request_200_or_503(run, tmp_path):
    """`hashtagkit serve` in its own process, 16 clients uploading 12 photos each, one photo a
    batch, then SIGTERM: every request gets its answer or a JSON 503 with Retry-After, never a 500;
    /healthz says draining; the server exits 0."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = ("import sys; from tests.extraction.test_extract import tiny_scene_backbone; tiny_scene_backbone(); "
            "from hashtagkit.cli.main import main; sys.argv = ['hashtagkit'] + sys.argv[1:]; main()")
    proc = subprocess.Popen([sys.executable, "-c", code, "serve", str(run[0] / "run"), "--port", str(port),
                             "--max-batch", "1", "--max-wait-ms", "0", "--grace", "3"],
                            cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    url = f"http://127.0.0.1:{port}"
    photos = [(p.name, p.read_bytes()) for p in run[1]]
    try:
        wait_until_healthy(proc, url)
        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(post, url, photos) for _ in range(16)]
            while httpx.get(f"{url}/v1/info", timeout=10).json()["server"]["batching"]["images"] < 12:
                assert not all(f.done() for f in futures)
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.05)
            try:
                health = httpx.get(f"{url}/healthz", timeout=5)
                assert health.status_code == 503 and health.json()["status"] == "draining"
            except httpx.TransportError:
                pass  # the listening socket may already be closed: no new connection is accepted
            responses = [f.result() for f in futures]
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    assert 503 in statuses, statuses  # 192 photos one at a time do not fit in the 1.5 s drain window
    for r in responses:
        if r.status_code == 503:
            assert r.headers["Retry-After"] == "5" and "shutting down" in r.json()["detail"]
        else:
            assert len(r.json()["results"]) == 12
    output = proc.stdout.read()
    assert "Traceback" not in output and "hashtagkit serve: stopped" in output, output


@pytest.mark.slow
def test_big_uploads_are_decoded_within_a_pixel_budget(run):
    """Six concurrent 64-megapixel PNGs of ~200 KB each (issue #23: 16 of them took the server from
    1.3 to 2.9 GB): with four decode threads at most two are decoded at once (the budget is two
    such photos), counted by the decoder's own calls, and every photo is still answered."""
    from hashtagkit.serve.budget import DECODE_PIXELS

    big = io.BytesIO()
    Image.new("RGB", (7990, 7990), (90, 140, 200)).save(big, format="PNG")
    assert big.tell() < 400_000  # small on the wire, 192 MB as pixels
    rec = Recommender.from_run(run[0] / "run", device="cpu")
    decode, lock, state = rec.prepare, threading.Lock(), {"now": 0, "most": 0}

    def counted(data, name=None):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        try:
            return decode(data, name)
        finally:
            with lock:
                state["now"] -= 1

    rec.prepare = counted
    app = create_app(rec, max_upload_mb=2)
    with serve_in_thread(app) as url, ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda i: post(url, [(f"big{i}.png", big.getvalue())]), range(6)))
        info = httpx.get(f"{url}/v1/info", timeout=TIMEOUT).json()["server"]["decode_pixels"]
    assert [r.status_code for r in responses] == [200] * 6
    assert all(r.json()["results"][0]["error"] is None for r in responses)
    assert state["most"] <= DECODE_PIXELS // (7990 * 7990) == 2
    assert info["peak"] <= info["limit"] == DECODE_PIXELS


def test_requests_beyond_the_limit_get_a_json_503(rec):
    """One request held open (its body still streaming) with max_requests=1: the next gets a JSON
    503 with Retry-After (uvicorn's own limit answered plain text), and once the first is done
    the server answers again."""
    release = threading.Event()

    def slow_body():
        yield b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"x.jpg\"\r\n\r\n"
        release.wait(120)
        yield b"not an image\r\n--b--\r\n"

    app = create_app(rec, max_requests=1)
    with serve_in_thread(app) as url, ThreadPoolExecutor(1) as pool:
        held = pool.submit(httpx.post, f"{url}/v1/recommend", content=slow_body(), timeout=TIMEOUT,
                           headers={"Content-Type": "multipart/form-data; boundary=b"})
        deadline = time.monotonic() + 120
        while app.state.requests.active < 1 and time.monotonic() < deadline:  # the held one is being served
            time.sleep(0.02)
        busy = httpx.get(f"{url}/healthz", timeout=TIMEOUT)
        release.set()
        first = held.result()
        after = httpx.get(f"{url}/healthz", timeout=TIMEOUT)
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
    assert "busy" in busy.json()["detail"]
    assert first.status_code == 200  # the held request itself was served to its end
    assert after.status_code == 200


def test_serve_refuses_a_run_that_cannot_score(run, tmp_path):
    """A run whose model scores NaN (saved by an older hashtagkit, or edited) was served, answering
    500 to every photo while /healthz said ok (issue #23): `serve` now scores a plain photo
    first and refuses it in one line, before the port opens."""
    broken = tmp_path / "broken"
    shutil.copytree(run[0] / "floor", broken)
    state = broken / "model" / "state.npz"
    with np.load(state) as data:
        frequency = data["frequency_"].astype(np.float64)
    frequency[0] = np.nan
    np.savez(state, frequency_=frequency)
    res = CliRunner().invoke(cli, ["serve", str(broken), "--port", "0"])
    assert res.exit_code == 2 and "scores NaN or infinity on a plain photo" in res.output, res.output
    Recommender.from_run(run[0] / "floor", device="cpu").check_scores()  # a sound run passes


@pytest.mark.slow
@pytest.mark.parametrize("token", [None, "tok"])
def test_schemathesis_finds_the_service_true_to_its_openapi_schema(run, tmp_path, token):
    """Schemathesis, the OpenAPI peers' own fuzzer, against `hashtagkit serve` with and without a
    token, every check (`--checks all`): no 5xx, status codes, bodies and headers as the schema
    says, the token asked for only when there is one, and every schema-valid upload accepted
    (issue #25 found 9 kinds of failure)."""
    schemathesis = Path(sys.executable).with_name("schemathesis")
    if not schemathesis.is_file():
        pytest.skip("schemathesis is not installed (pip install -e '.[test]')")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = []
    if token:
        (tmp_path / "token").write_text(token + "\n")
        args = ["--token-file", str(tmp_path / "token")]
    proc = subprocess.Popen([str(Path(sys.executable).with_name("hashtagkit")), "serve", str(run[0] / "floor"),
                             "--port", str(port), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(proc, url)
        found = subprocess.run([str(schemathesis), "run", f"{url}/openapi.json", "--checks", "all",
                                "--max-examples", "40", "--seed", "1",
                                "--no-color", *(["-H", f"Authorization: Bearer {token}"] if token else [])],
                               capture_output=True, text=True, timeout=300)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert found.returncode == 0, found.stdout[-4000:]
    assert "3 selected" in found.stdout or "Operations:" in found.stdout
