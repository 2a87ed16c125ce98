"""The pipeline on object storage against the same pipeline on a local disk (issue #26, "Measured").

On this machine, against moto's S3 server on loopback (started here, `tests/s3.py`'s `S3Server`),
behind a `FaultProxy` with no faults that every S3 request of the run goes through (this script
derives a handler from it that also tallies each request by kind, object, status, bytes and
latency), side by side in one run:

  prepare   `hashtagkit.prepare.webdataset`: local shards -> local store / S3 shards -> S3 store
  extract   `hashtagkit.extract` (resnet50-object=random) from those stores, and from a local folder
            of the same JPEGs (`prepare.posts`) for reference
  fit       `hashtagkit.fit(..., "mlp", params={"cache": "stream", ...})` and `fit(..., "knn")`
  evaluate  `hashtagkit.evaluate(run)` of the mlp and the knn run

and fit/evaluate again on a larger `prepare.planted` store (written to the disk and to the bucket),
where per-chunk costs outweigh fixed ones, also with the s3fs option `max_concurrency=1`.
The steps are interleaved round by round (the local twin first in even rounds, the S3 one first in
odd rounds), `--rounds` times, each round on freshly prepared stores, and the table gives the best
of the rounds per step: the machine's load falls on both sides alike. The S3 side is checked to
give the local side's features bit for bit. Then the arithmetic for 100 M photos in shards on real
object storage from the measured per-photo, per-chunk and per-shard figures.

    .venv/bin/python benchmarks/object_store.py [--n 256] [--rounds 3] [--planted-rows 16000]
                                                [--out benchmarks/results/object_store.md]

`make bench-object-store` runs it with the defaults (3-4 minutes on 2 idle cores, up to 10 on busy ones).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.s3: the S3 server and proxy the test suite uses

import hashtagkit as hk  # noqa: E402
from hashtagkit import provenance, remote  # noqa: E402
from tests.s3 import CREDENTIALS, FaultProxy, S3Server  # noqa: E402

VOCAB = ["sea", "dog", "cat", "sun", "car", "tree", "city", "food"]
BACKBONE = "resnet50-object=random"
QUIET = lambda s: None  # noqa: E731

# --- counting every S3 request ---------------------------------------------------------------------


class Tally:
    """Requests seen by the proxy: (kind, object class) -> [requests, bytes up, bytes down,
    seconds, the proxy's CPU seconds], and the answers' status codes; `mark()`/`since()` give one
    step's share."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rows: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0, 0, 0.0, 0.0])
        self.status: Counter = Counter()

    def add(self, kind: str, what: str, status: int | None, up: int, down: int, seconds: float,
            cpu: float) -> None:
        with self.lock:
            row = self.rows[(kind, what)]
            for i, x in enumerate((1, up, down, seconds, cpu)):
                row[i] += x
            self.status[status] += 1

    def mark(self) -> tuple[dict, Counter]:
        with self.lock:
            return {k: list(v) for k, v in self.rows.items()}, Counter(self.status)

    def since(self, mark: tuple[dict, Counter]) -> Use:
        rows0, status0 = mark
        now, status = self.mark()
        out = {}
        for k, v in now.items():
            before = rows0.get(k, [0, 0, 0, 0.0, 0.0])
            d = [a - b for a, b in zip(v, before, strict=True)]
            if d[0]:
                out[k] = d
        return Use(out, status - status0)


class Use:
    """One step's requests (see Tally)."""

    def __init__(self, rows: dict, status: Counter) -> None:
        self.rows, self.status = rows, status

    def count(self, kind: str | None = None, what: str | None = None) -> int:
        return int(sum(v[0] for (k, w), v in self.rows.items() if kind in (None, k) and what in (None, w)))

    def bytes(self, direction: int, kind: str | None = None, what: str | None = None) -> int:
        return int(sum(v[direction] for (k, w), v in self.rows.items() if kind in (None, k) and what in (None, w)))

    @property
    def requests(self) -> int:
        return self.count()

    @property
    def up(self) -> int:
        return self.bytes(1)

    @property
    def down(self) -> int:
        return self.bytes(2)

    @property
    def seconds(self) -> float:
        return float(sum(v[3] for v in self.rows.values()))

    @property
    def cpu(self) -> float:
        """The proxy's CPU seconds (its handler threads, in this process)."""
        return float(sum(v[4] for v in self.rows.values()))

    @property
    def errors(self) -> int:
        return int(sum(n for s, n in self.status.items() if s is None or s >= 500))

    def by_kind(self) -> str:
        kinds: Counter = Counter()
        for (k, _), v in self.rows.items():
            kinds[k] += v[0]
        return ", ".join(f"{n} {k}" for k, n in kinds.most_common())


def classify(method: str, target: str, headers) -> tuple[str, str]:
    """(request kind, object class) of an S3 request: GET/range GET/HEAD/LIST/PUT/COPY/DELETE,
    and shard / lease / a store's array chunk (`features chunk`) or metadata (`zarr.json`)."""
    parts = urlsplit(target)
    key = unquote(parts.path.lstrip("/")).partition("/")[2]  # after the bucket
    query = parts.query
    if method == "GET" and (not key or "list-type" in query or "prefix=" in query or "delimiter" in query):
        kind = "LIST"
    elif method == "GET":
        kind = "range GET" if headers.get("Range") else "GET"
    elif method == "PUT":
        kind = "COPY" if headers.get("x-amz-copy-source") else "PUT"
    elif method == "POST" and "delete" in query:
        kind = "DELETE"
    else:
        kind = method
    if key.endswith(".tar"):
        what = "shard"
    elif key.endswith(".lock"):
        what = "lease"
    elif kind == "LIST":  # a listing of the shards' folder (their sizes and ETags) or of a store's prefix
        prefix = parse_qs(query).get("prefix", [""])[0]
        what = "store listing" if ".zarr" in prefix else "shard listing" if prefix else "bucket listing"
    elif not key:
        what = "bucket"
    else:
        inner = key.split("/")[1:]  # below the store's own name
        if not inner or inner[-1] == "zarr.json":
            what = "zarr.json"
        elif "c" in inner:
            what = f"{inner[inner.index('c') - 1] if inner.index('c') else '?'} chunk"
        else:
            what = "other object"
    return kind, what


def counting(proxy: FaultProxy, tally: Tally, target_port: int) -> None:
    """Derive the proxy's request handler so that every request it forwards is tallied: kind,
    object, status, body bytes each way (Content-Length), and its latency through the proxy."""
    base = proxy.server.RequestHandlerClass

    class Counted(base):
        def setup(self) -> None:
            super().setup()
            # FaultProxy writes an answer's headers and its body in two sends: without this, Nagle's
            # algorithm holds the body until the client's delayed ACK of the headers (~40 ms)
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _counted(self) -> None:
            self._status, self._length = None, 0
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                self._head() if self.command == "HEAD" else base._any(self)
            finally:
                up = int(self.headers.get("Content-Length") or 0)
                down = self._length if self.command != "HEAD" else 0
                tally.add(*classify(self.command, self.path, self.headers), self._status, up, down,
                          time.perf_counter() - t0, time.thread_time() - c0)

        def _head(self) -> None:
            """HEAD forwarded with the object's Content-Length: FaultProxy._any sends the length of
            the (empty) body it read, 0, so s3fs's `info` would see every object as empty."""
            proxy.draw(self.command)  # its request count (no faults are set)
            conn = http.client.HTTPConnection("127.0.0.1", target_port, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
            conn.request("HEAD", self.path, headers=headers)
            resp = conn.getresponse()
            resp.read()
            self.send_response(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in ("transfer-encoding", "connection"):
                    self.send_header(k, v)
            self.end_headers()
            conn.close()

        def send_response(self, code, message=None) -> None:
            self._status = code
            super().send_response(code, message)

        def send_header(self, keyword, value) -> None:
            if keyword.lower() == "content-length":
                self._length = int(value)
            super().send_header(keyword, value)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _counted

    proxy.server.RequestHandlerClass = Counted


# --- photos, shards, stores ----------------------------------------------------------------------


def make_photos(folder: Path, n: int, side: int, seed: int = 0) -> list[tuple[str, bytes, list[str]]]:
    """n photo-like JPEGs (side x side, gradients + noise + a colour that says the hashtags):
    (name, bytes, hashtags); also written to `folder` with a posts.jsonl naming them."""
    rng = np.random.default_rng(seed)
    (folder / "photos").mkdir(parents=True)
    y, x = np.mgrid[0:side, 0:side]
    out, lines = [], []
    for i in range(n):
        tags = sorted(set(rng.choice(VOCAB, size=int(rng.integers(1, 4)), replace=False).tolist()))
        colour = np.array([(VOCAB.index(t) * 31) % 256 for t in tags[:3]] + [0] * (3 - len(tags[:3])), float)
        base = np.stack([x / side * 255, y / side * 255, (x + y) / (2 * side) * 255], axis=-1) * 0.5 + colour * 0.5
        pixels = np.clip(base + rng.normal(0, 12, (side, side, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
        name = f"{i:06d}.jpg"
        (folder / "photos" / name).write_bytes(buf.getvalue())
        out.append((name, buf.getvalue(), tags))
        lines.append(json.dumps({"image": name, "hashtags": [f"#{t}" for t in tags]}))
    (folder / "posts.jsonl").write_text("\n".join(lines) + "\n")
    return out


def write_shards(folder: Path, photos: list, per_shard: int) -> list[Path]:
    """webdataset shards (webdataset.TarWriter): per sample a jpg and a json with its hashtags."""
    import webdataset

    folder.mkdir(parents=True)
    paths = []
    for s, start in enumerate(range(0, len(photos), per_shard)):
        path = folder / f"{s:05d}.tar"
        with open(path, "wb") as f, webdataset.TarWriter(f) as sink:
            for name, data, tags in photos[start : start + per_shard]:
                sink.write({"__key__": name.rsplit(".", 1)[0], "jpg": data,
                            "json": {"hashtags": [f"#{t}" for t in tags]}})
        paths.append(path)
    return paths


def shard_pattern(prefix: str, n_shards: int) -> str:
    return f"{prefix}/{{00000..{n_shards - 1:05d}}}.tar" if n_shards > 1 else f"{prefix}/00000.tar"


def process_cpu() -> float:
    """CPU seconds of this process and of its children that ended (decode workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def pid_cpu(pid: int) -> float:
    """CPU seconds of another process (moto's server), from /proc; 0 where there is none."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the steps ---------------------------------------------------------------------------------

Key = tuple  # (section, step, where)


class Bench:
    """Runs the steps, timing each and taking its share of the proxy's tally."""

    def __init__(self, args, work: Path, bucket: str, tally: Tally, n_shards: int, options: dict,
                 server_pid: int) -> None:
        self.args, self.work, self.bucket, self.tally, self.n_shards = args, work, bucket, tally, n_shards
        self.server_pid = server_pid
        self.cpu: dict[Key, list[tuple[float, float]]] = defaultdict(list)  # (client CPU s, moto CPU s)
        self.options = options  # the process's storage options (the proxy's endpoint)
        self.seconds: dict[Key, list[float]] = defaultdict(list)
        self.use: dict[Key, list[Use]] = defaultdict(list)
        self.loop: dict[Key, list[float]] = defaultdict(list)  # extract: seconds in its chunk loop
        self.load: list[float] = []
        self.rows = self.chunks = self.batches = self.expected_gets = 0
        self.planted: dict[str, str] = {}
        self.planted_chunks = self.planted_rows = self.planted_width = 0

    def timed(self, key: Key, call):
        import s3fs

        options = {**self.options, "max_concurrency": 1} if key[2] == "s3-mc1" else None
        remote.use_storage_options(options)  # None: HASHTAGKIT_STORAGE_OPTIONS, the default
        # every step starts with s3fs's listings forgotten, as a command in its own process does (they would
        # otherwise answer later steps' questions about the shards from memory); its clients are kept
        for fs in list(s3fs.S3FileSystem._cache.values()):
            fs.invalidate_cache()
        mark = self.tally.mark()
        cpu0, server0 = process_cpu(), pid_cpu(self.server_pid)
        t0 = time.perf_counter()
        try:
            out = call()
        finally:
            self.seconds[key].append(time.perf_counter() - t0)
            remote.use_storage_options(None)
        use = self.tally.since(mark)
        self.use[key].append(use)
        # this process and the children it waited for (decode workers), less the proxy's threads; moto's
        self.cpu[key].append((process_cpu() - cpu0 - use.cpu, pid_cpu(self.server_pid) - server0))
        self.load.append(os.getloadavg()[0])
        return out

    def best_cpu(self, key: Key) -> tuple[float, float]:
        """(client CPU s, moto CPU s) of the step's fastest round."""
        return self.cpu[key][int(np.argmin(self.seconds[key]))]

    def store(self, where: str, r: int) -> str:
        return f"{self.bucket}/r{r}.zarr" if where == "s3" else str(self.work / f"r{r}-{where}.zarr")

    def pipeline(self, r: int) -> None:
        """Round r of the photo pipeline: prepare, extract, fit mlp/knn, evaluate, local and S3."""
        a = self.args
        order = ("local", "s3") if r % 2 == 0 else ("s3", "local")
        shards = {"local": shard_pattern(str(self.work / "shards"), self.n_shards),
                  "s3": shard_pattern(f"{self.bucket}/shards", self.n_shards)}
        prep = dict(lemmatize=False, test_size=0.25, seed=0, log=QUIET)
        for where in order:
            self.timed(("photos", "prepare", where), lambda w=where: hk.prepare.webdataset(shards[w], self.store(w, r),
                                                                                            **prep))
        hk.prepare.posts(self.work / "posts.jsonl", self.work / "photos", self.store("folder", r), **prep)
        extract = dict(device="cpu", batch_size=a.batch_size, chunk_rows=a.chunk_rows, progress=False, log=QUIET)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "RANDOM weights": the table says so
            for where in (*order, "folder") if r % 2 == 0 else ("folder", *order):
                done = self.timed(("photos", "extract", where),
                                  lambda w=where: hk.extract(self.store(w, r), [BACKBONE], **extract))
                self.loop[("photos", "extract", where)].append(done.seconds)
        opened = {w: hk.open_store(self.store(w, r)) for w in ("local", "s3", "folder")}
        self.rows, self.chunks = opened["s3"].n_rows, opened["s3"].completeness()[1]
        shard_of = [p.partition("#")[0] for p in opened["s3"].paths()]
        batches = [shard_of[b : min(b + a.batch_size, (c + 1) * a.chunk_rows, self.rows)]
                   for c in range(self.chunks) for b in range(c * a.chunk_rows, min((c + 1) * a.chunk_rows, self.rows),
                                                              a.batch_size)]
        self.batches, self.expected_gets = len(batches), sum(len(set(b)) for b in batches)
        if not (np.array_equal(opened["local"].features(), opened["s3"].features())
                and np.array_equal(opened["local"].features(), opened["folder"].features())):
            raise AssertionError("the S3 store's features differ from the local store's")
        mlp = {"cache": "stream", "epochs": a.epochs, "hidden": a.hidden, "device": "cpu"}
        self.heads(("photos", r), order, {w: self.store(w, r) for w in order}, mlp)
        for where in ("folder", "local"):
            shutil.rmtree(self.store(where, r), ignore_errors=True)

    def heads(self, tag: tuple[str, int], order, stores: dict[str, str], mlp: dict) -> None:
        """fit mlp (streamed) and knn, then evaluate both, on each store in `order`; the scores
        must agree."""
        section, r = tag
        runs: dict[tuple[str, str], object] = {}
        for head, params in (("mlp", mlp), ("knn", {})):
            for where in order:
                out = self.work / f"{section}-r{r}-{where}-{head}"
                runs[(head, where)] = self.timed((section, f"fit {head}", where),
                                                 lambda w=where, o=out, h=head, p=params:
                                                 hk.fit(stores[w], h, o, params=p, seed=0))
        for head in ("mlp", "knn"):
            scores = {where: self.timed((section, f"evaluate {head}", where),
                                        lambda w=where, h=head: hk.evaluate(runs[(h, w)]).as_dict())
                      for where in order}
            keep = ("precision@1", "recall@5", "accuracy@5")
            if len({tuple(s[k] for k in keep) for s in scores.values()}) != 1:
                raise AssertionError(f"evaluate {head}: the stores' scores differ: {scores}")
        for run in runs.values():
            shutil.rmtree(Path(run), ignore_errors=True)

    def planted_stores(self) -> None:
        """The planted store (features without photos), written once locally and once to S3."""
        a = self.args
        kw = dict(n=a.planted_rows, dim=a.planted_dim, classes=a.planted_classes, seed=0)
        self.planted = {"local": str(self.work / "planted.zarr"), "s3": f"{self.bucket}/planted.zarr"}
        for where, target in self.planted.items():
            self.timed(("planted", "prepare planted", where), lambda t=target: hk.prepare.planted(t, **kw))
        self.planted["s3-mc1"] = self.planted["s3"]
        opened = hk.open_store(self.planted["s3"])
        self.planted_chunks, self.planted_rows = opened.completeness()[1], opened.n_rows
        self.planted_width = opened.feature_width

    def planted_round(self, r: int) -> None:
        wheres = ("local", "s3", "s3-mc1")
        order = wheres[r % 3:] + wheres[: r % 3]
        mlp = {"cache": "stream", "epochs": self.args.planted_epochs, "hidden": self.args.hidden, "device": "cpu"}
        self.heads(("planted", r), order, self.planted, mlp)


# --- the report ----------------------------------------------------------------------------------


def size(n: float) -> str:
    for unit, div in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:,.2f} {unit}"
    return f"{n:.0f} B"


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True, capture_output=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, text=True,
                               capture_output=True).stdout.split("\n")
        changed = [line[3:] for line in dirty if line.strip()]
        return out + (f" with uncommitted changes to {', '.join(changed)}" if changed else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as v

    try:
        return v(name)
    except PackageNotFoundError:
        return "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256, help="photos")
    ap.add_argument("--side", type=int, default=256, help="photo side in px")
    ap.add_argument("--per-shard", type=int, default=64, help="photos per shard")
    ap.add_argument("--batch-size", type=int, default=16, help="extraction batch")
    ap.add_argument("--chunk-rows", type=int, default=64, help="rows per feature chunk of the photo stores")
    ap.add_argument("--epochs", type=int, default=3, help="mlp epochs on the photo stores")
    ap.add_argument("--hidden", type=int, default=512, help="mlp hidden width")
    ap.add_argument("--planted-rows", type=int, default=16000, help="rows of the planted store (0: none)")
    ap.add_argument("--planted-dim", type=int, default=1024, help="features per block of the planted store")
    ap.add_argument("--planted-classes", type=int, default=200)
    ap.add_argument("--planted-epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "object_store.md")
    args = ap.parse_args()
    t_start = time.perf_counter()
    load0 = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="hashtagkit-objstore-"))
    server = proxy = None
    try:
        for k, v in CREDENTIALS.items():
            os.environ[k] = v
        server = S3Server()
        proxy = FaultProxy(server.port)  # Faults(): nothing injected
        tally = Tally()
        counting(proxy, tally, server.port)
        options = server.options(proxy.endpoint)
        os.environ[remote.ENV] = json.dumps(options)  # this process and any it starts
        remote.use_storage_options(None)
        bucket = server.bucket("bench")
        photos = make_photos(work, args.n, args.side)
        shards = write_shards(work / "shards", photos, args.per_shard)
        fs, path = remote.filesystem(f"{bucket}/shards")
        fs.put([str(p) for p in shards], [f"{path}/{p.name}" for p in shards])
        bench = Bench(args, work, bucket, tally, len(shards), options, server.process.pid)
        warm_up(work, shards[0])
        for r in range(args.rounds):
            t0 = time.perf_counter()
            bench.pipeline(r)
            print(f"photos, round {r}: {time.perf_counter() - t0:.0f} s", flush=True)
        if args.planted_rows:
            bench.planted_stores()
            for r in range(args.rounds):
                t0 = time.perf_counter()
                bench.planted_round(r)
                print(f"planted, round {r}: {time.perf_counter() - t0:.0f} s", flush=True)
        text = report(args, bench, photos, shards, load0, time.perf_counter() - t_start, proxy)
    finally:
        if proxy is not None:
            proxy.stop()
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


def warm_up(work: Path, shard: Path) -> None:
    """One untimed extraction first: the model's first passes (oneDNN picking kernels) and the
    imports are paid before the clock runs for either side."""
    store = work / "warm.zarr"
    hk.prepare.webdataset(str(shard), store, lemmatize=False, test_size=0.25, seed=0, log=QUIET)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hk.extract(store, [BACKBONE], device="cpu", progress=False, log=QUIET)
    shutil.rmtree(store)


# --- the report ----------------------------------------------------------------------------------

# S3 Standard list prices assumed for the arithmetic (us-east-1, as published by AWS through 2025;
# not fetched by this script: check the current page before relying on them)
PRICE_DATE = "2025"
GET_PER_1K = 0.0004  # GET, HEAD (and SELECT): USD per 1,000 requests
PUT_PER_1K = 0.005  # PUT, COPY, POST, LIST: USD per 1,000 requests
EGRESS_INTERNET_GB = 0.09  # USD per GB out to the internet (first 10 TB a month); in-region to EC2: 0
STORAGE_GB_MONTH = 0.023
# the 100 M scenario
PHOTOS = 100_000_000
JPEG_BYTES = 100_000
PER_SHARD = 10_000
BATCH = 32  # extract's default batch
WIDTH = 8192  # the paper's two fc7 blocks, float16: 16 KiB a row -> 256 rows a 4 MiB chunk
FC7_COMPRESSION = 1.93  # zstd on fc7 float16, measured in benchmarks/results/extract_throughput.md
STREAM_BLOCK = 8 << 20  # prepare's read-ahead block while streaming a remote shard (REMOTE_BLOCK_SIZE)
LEASE_RENEW_S = 20  # the lease (60 s) is renewed every third of it


def best(values: list[float]) -> float:
    return min(values) if values else float("nan")


def cells(values: list[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def straddles(n_shards: int, per_shard: int, batch: int) -> int:
    """Batches that span two shards when batch boundaries fall on multiples of `batch` (chunks of a
    multiple of `batch` rows): each costs a second ranged read."""
    return sum(1 for k in range(1, n_shards) if (k * per_shard) % batch)


def objects_line(use: Use) -> str:
    """'zarr.json 54 HEAD + 54 GET, done chunk 60 HEAD + 60 GET, ...' by requests, most first."""
    by_obj: dict[str, Counter] = defaultdict(Counter)
    for (kind, what), v in use.rows.items():
        by_obj[what][kind] += int(v[0])
    order = sorted(by_obj, key=lambda w: -sum(by_obj[w].values()))
    return "; ".join(f"{w}: " + " + ".join(f"{n} {k}" for k, n in by_obj[w].most_common()) for w in order)


def report(args, bench: Bench, photos, shards, load0, wall: float, proxy: FaultProxy) -> str:
    import torch

    from hashtagkit.devices import pick_precision
    from hashtagkit.stores.store import rows_per_chunk

    S, U = bench.seconds, bench.use
    v = provenance.versions()
    precision = pick_precision("auto", torch.device("cpu"))
    faults = {k: n for k, n in proxy.counts.items() if k != "requests"}
    all_uses = [u for us in U.values() for u in us]
    errors = sum(u.errors for u in all_uses)
    status = sum((u.status for u in all_uses), Counter())
    jpeg_total = sum(len(p[1]) for p in photos)
    shard_total = sum(p.stat().st_size for p in shards)
    lines = [
        "# The pipeline on object storage vs a local disk (issue #26, \"Measured\")",
        "",
        f"`python benchmarks/object_store.py {' '.join(sys.argv[1:])}`".replace(" `", "`") +
        f" (`make bench-object-store`), {provenance.now()}, commit {commit()}; {wall / 60:.1f} minutes in all. "
        f"1-minute load average {load0[0]:.2f} before, {os.getloadavg()[0]:.2f} after, "
        f"{min(bench.load):.2f}-{max(bench.load):.2f} after the timed steps (2 cores: other work shared the machine "
        "where it is above ~2; the interleaved rounds give both sides the same share of it).",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, {platform.platform()}. Versions: Python {v.get('python')}, "
        f"torch {version('torch')}, zarr {version('zarr')}, s3fs {version('s3fs')}, fsspec {version('fsspec')}, "
        f"aiobotocore {version('aiobotocore')}, botocore {version('botocore')}, moto {version('moto')}, "
        f"webdataset {version('webdataset')}, numpy {version('numpy')}.",
        "",
        "**S3 here** is moto's server (`python -m moto.server`, tests/s3.py's `S3Server`) on 127.0.0.1, "
        "a Python process on the same 2 cores, reached through tests/s3.py's `FaultProxy` with **no faults set**; "
        "this script derives its handler to tally every request (kind, object, status, body bytes each way, latency "
        "through the proxy) and to set TCP_NODELAY (see the notes). s3fs reaches it by `HASHTAGKIT_STORAGE_OPTIONS`, "
        "hashtagkit's S3 defaults (retries, timeouts) included. **Local** is the same step on this machine's disk.",
        "",
        f"Photos: {args.n} JPEGs of {args.side} x {args.side} px written by the script (seeded; "
        f"{jpeg_total / args.n / 1e3:.1f} kB each on average), in {len(shards)} webdataset shards of {args.per_shard} "
        f"samples (jpg + json with the hashtags; `webdataset.TarWriter`; {size(shard_total)} in all), kept locally "
        "and uploaded to the bucket. Each round prepares fresh stores (`prepare.webdataset`: local shards -> local "
        "store, S3 shards -> S3 store; `prepare.posts` of the same photos as files for the folder row), extracts "
        f"them with `{BACKBONE}` (**random weights**: the same cost as real ones; 2,048-d), precision {precision} "
        f"(what this CPU has, `devices.pick_precision`), batch {args.batch_size}, {args.chunk_rows} rows a chunk "
        f"({bench.chunks} chunks), then fits `mlp` (cache=stream, {args.epochs} epochs, hidden {args.hidden}) and "
        "`knn` (defaults) and evaluates both runs on the test split. "
        f"{args.rounds} rounds, the local twin first in even rounds and the S3 one first in odd rounds, after one "
        "untimed warm-up extraction; a table gives each step's best round. The S3 store's features equal the local "
        "store's (and the folder store's) bit for bit and both sides' scores are equal, checked every round.",
        "",
        "## The photo pipeline: S3 against its local twin",
        "",
        f"| step | local s (best of {args.rounds}) | S3 s (best of {args.rounds}) | local / S3 (target >= 0.8) | "
        "client CPU s, local / S3 | moto + proxy CPU s | S3 requests | bytes up / down | request-seconds | "
        "5xx / faults |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]

    def row(section: str, step: str, label: str) -> str:
        lo, s3 = S[(section, step, "local")], S[(section, step, "s3")]
        u = U[(section, step, "s3")][-1]
        (c_lo, _), (c_s3, server) = bench.best_cpu((section, step, "local")), bench.best_cpu((section, step, "s3"))
        return (f"| {label} | {best(lo):.2f} | {best(s3):.2f} | **{best(lo) / best(s3):.2f}** | {c_lo:.2f} / "
                f"{c_s3:.2f} | {server:.2f} + {u.cpu:.2f} | {u.requests:,} ({u.by_kind()}) | {size(u.up)} / "
                f"{size(u.down)} | {u.seconds:.2f} | {u.errors} / 0 |")

    steps = [("prepare", "prepare (`prepare.webdataset`: scan the shards, write the store)"),
             ("extract", "extract (`extract`, shards -> store)"),
             ("fit mlp", "fit mlp, cache=stream"), ("fit knn", "fit knn"),
             ("evaluate mlp", "evaluate the mlp run"), ("evaluate knn", "evaluate the knn run")]
    for step, label in steps:
        lines.append(row("photos", step, label))
    fo, s3x = S[("photos", "extract", "folder")], S[("photos", "extract", "s3")]
    lines.append(f"| extract from a local folder of the same JPEGs (`prepare.posts` store), for reference | "
                 f"{best(fo):.2f} | {best(s3x):.2f} | {best(fo) / best(s3x):.2f} | "
                 f"{bench.best_cpu(('photos', 'extract', 'folder'))[0]:.2f} / "
                 f"{bench.best_cpu(('photos', 'extract', 's3'))[0]:.2f} | | | | | |")
    loop = bench.loop
    lines += [
        "",
        "Every round, seconds (local; S3):",
        "",
        *[f"- {label.split(' (')[0]}: {cells(S[('photos', step, 'local')])}; {cells(S[('photos', step, 's3')])}"
          for step, label in steps],
        f"- extract from the folder: {cells(fo)}",
        f"- extract's chunk loop alone (`Summary.seconds`: decode, model, chunk writes; the rest of the call is "
        f"opening, planning, the record, the lease): local {cells(loop[('photos', 'extract', 'local')])}; "
        f"S3 {cells(loop[('photos', 'extract', 's3')])}; folder {cells(loop[('photos', 'extract', 'folder')])}",
        "",
    ]
    if bench.planted_rows:
        lines += planted_section(args, bench)
    lines += where_time_goes(args, bench, status, errors, faults)
    lines += notes(args, bench)
    lines += per_unit_and_100m(args, bench, photos, shards, jpeg_total, shard_total, rows_per_chunk)
    return "\n".join(lines) + "\n"


def planted_section(args, bench: Bench) -> list[str]:
    S, U = bench.seconds, bench.use
    prep = {w: S[("planted", "prepare planted", w)] for w in ("local", "s3")}
    pu = U[("planted", "prepare planted", "s3")][-1]
    lines = [
        f"## fit and evaluate on a larger store: {bench.planted_rows:,} rows, where the per-chunk costs show",
        "",
        f"The photo stores above are small ({bench.rows} rows), so their fit and evaluate are mostly fixed costs. "
        f"Here the same steps run on a `prepare.planted` store of {bench.planted_rows:,} rows x "
        f"{bench.planted_width:,} float16 features ({args.planted_classes} classes; {bench.planted_chunks} feature "
        f"chunks of ~4 MiB), written once to the disk ({best(prep['local']):.2f} s) and once to the bucket "
        f"({best(prep['s3']):.2f} s, {pu.requests:,} requests, {size(pu.up)} up). Each round fits mlp (cache=stream, "
        f"{args.planted_epochs} epochs, hidden {args.hidden}) and knn and evaluates both on the local store, on the S3 "
        "store as shipped, and on the S3 store opened with the s3fs storage option `max_concurrency=1` (no code "
        "change: see the notes), the three in rotating order.",
        "",
        f"| step | local s (best of {args.rounds}) | S3 s | local / S3 (target >= 0.8) | S3 requests | "
        "S3 with max_concurrency=1: s | local / that | its requests | client CPU s, local / S3 / mc=1 | "
        "moto + proxy CPU s, S3 / mc=1 | bytes down |",
        "|---|---:|---:|---:|---|---:|---:|---|---:|---:|---:|",
    ]
    for step in ("fit mlp", "fit knn", "evaluate mlp", "evaluate knn"):
        lo, s3, mc = (S[("planted", step, w)] for w in ("local", "s3", "s3-mc1"))
        u, um = U[("planted", step, "s3")][-1], U[("planted", step, "s3-mc1")][-1]
        label = step.replace("fit mlp", "fit mlp, cache=stream").replace("evaluate", "evaluate the") + \
            (" run" if step.startswith("evaluate") else "")
        cpu = [bench.best_cpu(("planted", step, w)) for w in ("local", "s3", "s3-mc1")]
        lines.append(f"| {label} | {best(lo):.2f} | {best(s3):.2f} | **{best(lo) / best(s3):.2f}** | {u.requests:,} "
                     f"({u.by_kind()}) | {best(mc):.2f} | **{best(lo) / best(mc):.2f}** | {um.requests:,} "
                     f"({um.by_kind()}) | {' / '.join(f'{c:.2f}' for c, _ in cpu)} | {cpu[1][1]:.2f} + {u.cpu:.2f} "
                     f"/ {cpu[2][1]:.2f} + {um.cpu:.2f} | {size(u.down)} |")
    lines += ["", "Every round, seconds (local; S3; S3 with max_concurrency=1):", ""]
    for step in ("fit mlp", "fit knn", "evaluate mlp", "evaluate knn"):
        lines.append(f"- {step}: " + "; ".join(cells(S[("planted", step, w)]) for w in ("local", "s3", "s3-mc1")))
    return lines + [""]


def where_time_goes(args, bench: Bench, status: Counter, errors: int, faults: dict) -> list[str]:
    U = bench.use
    lines = [
        "## Where the time goes: every S3 request, by object (each step's last round)",
        "",
        "Objects: `zarr.json` (a group's or array's metadata), `X chunk` (a chunk object of the store's array X; "
        "`done` and `chunk_log` have one object per feature chunk), `shard` (a webdataset tar), `lease` "
        "(STORE.lock), `store listing` / `shard listing` (LIST under a store's or the shards' prefix). Latency: from the request's arrival at the proxy to its answer's last "
        "byte (moto's time and the proxy's hop to it); requests overlap, so their sum is not wall time.",
        "",
        "| step | S3 requests by object | mean latency ms |",
        "|---|---|---:|",
    ]
    keys = [k for k in U if k[2] in ("s3", "s3-mc1")]
    for key in keys:
        u = U[key][-1]
        if not u.requests:
            continue
        where = " (max_concurrency=1)" if key[2] == "s3-mc1" else ""
        lines.append(f"| {key[0]}: {key[1]}{where} | {objects_line(u)} | {1000 * u.seconds / u.requests:.1f} |")
    codes = ", ".join(f"{c} x {n:,}" for c, n in sorted(status.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)))
    lines += [
        "",
        f"Answers over the whole run: {codes}. 404s are existence checks (zarr's, s3fs's, the lease's create-if-"
        f"absent), not failures. **Retries: none** — the proxy injected no faults ({faults or 'none counted'}) and "
        f"moto answered {errors} request(s) with a 5xx (what botocore or `remote.retrying` would have retried).",
        "",
    ]
    return lines


def notes(args, bench: Bench) -> list[str]:
    """Why the S3 side is slower where it is, and the fixes, from this run's figures."""
    U, S = bench.use, bench.seconds
    ratios = {(sec, step): best(S[(sec, step, "local")]) / best(S[(sec, step, "s3")])
              for (sec, step, where) in S if where == "s3" and (sec, step, "local") in S}
    below = [f"{sec}: {step} ({r:.2f})" for (sec, step), r in ratios.items() if r < 0.8]
    met = [f"{sec}: {step} ({r:.2f})" for (sec, step), r in ratios.items() if r >= 0.8]
    s3_uses = [u for (sec, step, w), us in U.items() if w in ("s3", "s3-mc1") for u in us[-1:]]
    requests = sum(u.requests for u in s3_uses)
    moto_cpu = sum(bench.best_cpu(k)[1] for k in U if k[2] in ("s3", "s3-mc1"))
    lat = sum(u.seconds for u in s3_uses) / max(1, requests)
    lines = [
        "## Why, and the fixes",
        "",
        f"**Target (each S3 path >= 0.8x its local twin): met by {', '.join(met) or 'none'}; missed by "
        f"{', '.join(below) or 'none'}.**",
        "",
    ]
    ev = ("planted", "evaluate mlp", "s3") if bench.planted_rows else ("photos", "evaluate mlp", "s3")
    chunks = bench.planted_chunks if bench.planted_rows else bench.chunks
    u = U[ev][-1]
    zarr_json = u.count("GET", "zarr.json") + u.count("HEAD", "zarr.json")
    done = (u.count("GET", "done chunk")) / chunks
    reads = [u2[-1] for (sec, step, w), u2 in U.items() if w == "s3" and step.split()[0] in ("fit", "evaluate")]
    head_store = sum(x.count("HEAD") for x in reads)
    get_store = sum(x.count("GET") for x in reads)
    ex, lo_key, s3_key = U[("photos", "extract", "s3")][-1], ("photos", "extract", "local"), ("photos", "extract", "s3")
    loop_lo, loop_s3 = (bench.loop[k][int(np.argmin(S[k]))] for k in (lo_key, s3_key))
    setup_lo, setup_s3 = best(S[lo_key]) - loop_lo, best(S[s3_key]) - loop_s3
    (cpu_lo, _), (cpu_s3, moto_ex) = bench.best_cpu(lo_key), bench.best_cpu(s3_key)
    paired = ", ".join(f"{a / b:.2f}" for a, b in zip(S[lo_key], S[s3_key], strict=True))
    per_chunk_s = sum(v[3] for (k, w), v in ex.rows.items()
                      if w == "shard" or w.replace(" chunk", "") in CHUNK_OBJECTS) / bench.chunks
    lines += [
        f"1. **Metadata read again and again.** One `evaluate` of the {ev[0]} store makes {u.requests} requests "
        f"before and while scoring; {zarr_json} of them read `zarr.json` objects. zarr 3 reads an array's "
        "`zarr.json` at every `group[name]` and answers `name in group` with a HEAD (and, when absent, s3fs adds a "
        "LIST), caching nothing across lookups; `hashtagkit.stores.Store` looks arrays up by name in every "
        "property and method (`n_rows`, `n_classes`, `split`, `valid`, `step_rows`, `feature_width`, "
        "`completeness`, ...). On a disk each lookup is a file read of microseconds; here each is one or two "
        f"round trips (mean {1000 * lat:.1f} ms through the proxy, on real S3 10-30 ms to the first byte), in "
        "sequence. This is most of the fixed cost of prepare, fit and evaluate in the tables. **Fix, "
        "stores/store.py:** keep the array handles per `Store`: one accessor (`self.array(name)`) that every "
        "`self.group[name]` becomes, filling a dict on first use, and `has(name)` answered from the group's member "
        "names listed once (`group.array_keys()`: one LIST); the dict emptied by `refresh()` and after the writes "
        "that create or replace arrays (`init_features`, `drop_features`, the aside swap, `upgrade`). Readers "
        "then read each array's metadata once per handle. (Zarr's consolidated metadata would make opening one "
        "GET, but it goes stale when `extract` adds arrays to a prepared store: the handle cache has no such "
        "hazard.)",
        f"2. **A HEAD before every whole-object GET.** The fits and evaluations on S3 (as shipped) made "
        f"{head_store:,} HEADs for {get_store:,} GETs: one before each. s3fs {version('s3fs')}'s `_cat_file` asks for an "
        "object's size before reading it whole whenever its `max_concurrency` (default 10) is above 1, to split "
        "objects over its block size (50 MiB) into concurrent ranged GETs; a store's objects are at most ~4 MiB, "
        "so the HEAD buys nothing and doubles every read (ranged reads of shards skip it). Measured above with the "
        "storage option `max_concurrency=1`: the same steps with half the requests. **Fix, hashtagkit/remote.py "
        "`with_defaults`:** for s3:// URLs `options.setdefault(\"max_concurrency\", 1)` beside the retry and "
        "timeout defaults (a user's own value still wins; s3fs writes objects under 100 MiB in one PUT either way, "
        "so writes are unchanged).",
        f"3. **Every done flag read three times by each reader.** `done` is one object per feature chunk (so that "
        f"workers write different objects); fit and evaluate read all of them {done:.0f} times "
        "(`check_features` -> `completeness`, `usable_rows` -> `completeness`, `damaged_chunks`), "
        f"{done:.0f} GETs per feature chunk before the first feature: at 100 M photos (390,625 chunks) about "
        f"{done * 390_625 / 1e6:.1f} M GETs per fit or evaluate, minutes of wall time at any concurrency. "
        "**Fix, stores/store.py:** read the flags once per handle (`read_done` cached on the Store, dropped by "
        "`write_chunk` and `refresh` on that handle), and let `finish_record` (hashtagkit/extraction/record.py) "
        "record that every chunk is done (the count and the run) so that a reader of a complete store checks that "
        "record instead of 390,625 objects; `info --verify` keeps reading them all. The same reader also lists "
        f"the features, valid and reason arrays to find deleted chunk objects (`damaged_chunks` -> `_listed`: "
        f"{u.count('LIST', 'store listing')} LISTs here): at 100 M photos about 1,200 LIST pages of 1,000 keys, "
        "one after another (minutes at 100-300 ms a page). List the three arrays concurrently and each by its "
        "leading chunk digit (`features/c/1`, ... `features/c/9`: ten listings at once), or keep the check for "
        "`extract`'s resume and `info --verify` and let readers rely on the fill value (NaN features) of a "
        "chunk that is gone.",
        f"4. **Extraction: the photos and the chunks cost little, the fixed part is point 1's.** The photos are "
        "read as designed, one ranged GET per batch and shard (measured = predicted, below), no shard read whole, "
        "and each chunk is written as 5 PUTs (features, valid, reason, chunk_log, done). In the fastest rounds the "
        f"call took {best(S[lo_key]):.2f} s locally and {best(S[s3_key]):.2f} s on S3: the chunk loop "
        f"{loop_lo:.2f} s against {loop_s3:.2f} s, the rest (opening, planning, the record, the lease) "
        f"{setup_lo:.2f} s against {setup_s3:.2f} s; this process's CPU (decode workers included) "
        f"{cpu_lo:.2f} s against {cpu_s3:.2f} s, moto's {moto_ex:.2f} s. The requests that grow with the photos "
        f"(ranged shard reads and the per-chunk objects) took {1000 * per_chunk_s:.0f} ms a chunk of "
        f"{args.chunk_rows} photos at the proxy, served one after another, against "
        f"{1000 * loop_lo / bench.chunks:.0f} ms of local chunk loop: "
        f"{100 * per_chunk_s / (loop_lo / bench.chunks):.0f}% at most. Each decode worker's first request also "
        "builds a botocore client (about 0.1 s of CPU in a probe), and the lease is 3 requests (renewed every "
        f"{LEASE_RENEW_S} s by one PUT and one HEAD: none in these short steps). "
        + (f"So extraction meets 0.8 here ({best(S[lo_key]) / best(S[s3_key]):.2f}; round by round {paired}), "
           "its S3 cost being the fixed part, which a longer run amortises further and points 1-3 shrink."
           if best(S[lo_key]) / best(S[s3_key]) >= 0.8 else
           f"So extraction misses 0.8 here ({best(S[lo_key]) / best(S[s3_key]):.2f}; round by round {paired}) on "
           "fixed costs that a longer run amortises and that points 1-3 shrink."),
        f"5. **This machine's share.** moto is a Python server on the same 2 cores: it used {moto_cpu:.1f} CPU "
        "seconds over the fastest rounds of the S3 steps, and the proxy's threads (in this process) the CPU "
        "shown beside it; a real object store spends none of this machine's CPU. The client's own CPU per request "
        "(botocore signing and parsing, aiohttp) is in the client CPU column. On real S3 each round trip is "
        "longer (10-30 ms to the first byte) but the server's work is not ours, so points 1-3 matter more there, "
        "not less.",
        "6. **The proxy measures the same whichever tests/s3.py is in place.** FaultProxy as committed at "
        "c38306f answered HEAD with `Content-Length: 0` (the length of the empty body it read), so s3fs's `info` "
        "saw every object as empty and `prepare webdataset` of shards behind it found no samples; and it wrote "
        "an answer's headers and body in two sends without TCP_NODELAY, so Nagle's algorithm held the body "
        "until the client's delayed ACK (~40 ms on a synchronous s3fs call). This script's derived handler "
        "forwards HEAD with the object's Content-Length and sets TCP_NODELAY itself (both are fixed in "
        "tests/s3.py by the same change that passes the upstream length and sets TCP_NODELAY).",
        "",
    ]
    return lines


CHUNKED_LISTED = ("features", "valid", "reason")  # the arrays a reader lists for deleted chunks (store.CHUNKED)
CHUNK_OBJECTS = ("features", "valid", "reason", "chunk_log", "done")  # one object per feature chunk each


def per_chunk(use: Use, kinds: tuple[str, ...], chunks: int) -> float:
    return sum(use.count(k, f"{o} chunk") for k in kinds for o in CHUNK_OBJECTS) / chunks


def usd(n: float) -> str:
    return f"${n:,.2f}"


def per_unit_and_100m(args, bench: Bench, photos, shards, jpeg_total: int, shard_total: int,
                      rows_per_chunk) -> list[str]:
    U = bench.use
    n, chunks, n_shards = bench.rows, bench.chunks, len(shards)
    ex = U[("photos", "extract", "s3")][-1]
    prep = U[("photos", "prepare", "s3")][-1]
    range_gets = ex.count("range GET", "shard")
    read = ex.bytes(2, "range GET", "shard")
    jpeg = jpeg_total / n
    read_over = read / n - jpeg  # tar headers and json members inside a batch's range
    shard_over = (shard_total - jpeg_total) / n  # per sample in a shard: headers, json, padding
    puts = {o: ex.count("PUT", f"{o} chunk") / chunks for o in CHUNK_OBJECTS}
    put_chunk = sum(puts.values())
    get_chunk = per_chunk(ex, ("GET", "HEAD"), chunks)
    fixed = ex.requests - ex.count(None, "shard") - sum(ex.count(None, f"{o} chunk") for o in CHUNK_OBJECTS)
    heads_shard = ex.count("HEAD", "shard") / n_shards
    shard_lists = ex.count("LIST", "shard listing")
    feat_row = ex.bytes(1, "PUT", "features chunk") / n
    width = 2048
    lease = ex.count(None, "lease")
    prep_gets = prep.count("range GET", "shard") + prep.count("GET", "shard")
    lines = [
        "## Measured per photo, per batch, per chunk and per shard (the photo pipeline's S3 extract and prepare)",
        "",
        f"`extract` on S3 (last round; requests in each round: "
        f"{' / '.join(str(u.requests) for u in U[('photos', 'extract', 's3')])}), {n} photos, "
        f"{chunks} chunks of {args.chunk_rows} rows, batch {args.batch_size}, {n_shards} shards of {args.per_shard}:",
        "",
        "| what | measured | per |",
        "|---|---:|---|",
        f"| ranged GETs of shard bytes | {range_gets} ({range_gets / bench.batches:.2f} a batch; the layout predicts "
        f"{bench.expected_gets}: one per batch and shard it touches) | `ShardPhotos.prefetch`: one read per batch "
        "and shard |",
        f"| shard bytes read | {size(read)} = {read / n / 1e3:.2f} kB a photo ({jpeg / 1e3:.2f} kB JPEG + "
        f"{read_over:,.0f} B of tar headers and json members inside the range) | photo |",
        f"| the shards' sizes and ETags (`check_shards` at the plan, `stamps` for the record) | "
        f"{ex.count('HEAD', 'shard')} HEADs, {shard_lists} LIST of the shards' folder (s3fs answers `info` from "
        "its listing: 1 LIST a 1,000 shards) | shard |",
        f"| PUTs of store objects per chunk | {put_chunk:.2f} (" +
        ", ".join(f"{o} {puts[o]:.2f}" for o in CHUNK_OBJECTS) + ") | chunk |",
        f"| GETs + HEADs of per-chunk store objects | {get_chunk:.2f} a chunk ("
        + ", ".join(f"{o} {(ex.count('GET', f'{o} chunk') + ex.count('HEAD', f'{o} chunk')) / chunks:.2f}"
                    for o in CHUNK_OBJECTS) + ": the plan's and the record's reads of done, reason and chunk_log) "
        "| chunk |",
        f"| other requests (metadata, listings, lease, the store's small arrays) | {fixed:.0f} | extraction |",
        f"| features written | {size(ex.bytes(1, 'PUT', 'features chunk'))} = {feat_row:,.0f} B a row "
        f"({width * 2:,} B raw: {width * 2 / feat_row:.2f}x compression of these random-weight resnet50 features) | "
        "row |",
        f"| lease requests | {lease} (take, release; a renewal every {LEASE_RENEW_S} s of a longer run: 1 PUT + "
        "1 HEAD) | extraction |",
        f"| `prepare` on S3: shard GETs | {prep_gets} ({prep_gets / n_shards:.2f} a shard: streamed in "
        f"{STREAM_BLOCK >> 20} MiB blocks), {size(prep.bytes(2, None, 'shard'))} read = every shard byte once; "
        f"{prep.count('HEAD', 'shard')} HEADs | shard |",
        "",
    ]
    # --- 100 M photos ---
    shards_100m = PHOTOS // PER_SHARD
    rows = rows_per_chunk(WIDTH * 2)
    chunks_100m = -(-PHOTOS // rows)
    batches_100m = chunks_100m * -(-rows // BATCH)
    ranged = batches_100m + straddles(shards_100m, PER_SHARD, BATCH)
    shard_bytes = PER_SHARD * (JPEG_BYTES + shard_over)
    lists_100m = shard_lists * -(-shards_100m // 1000)  # LIST: PUT-class pricing
    head_100m = heads_shard * shards_100m
    chunk_reads = get_chunk * chunks_100m
    chunk_puts = put_chunk * chunks_100m
    read_100m = PHOTOS * (JPEG_BYTES + read_over)
    written = PHOTOS * WIDTH * 2 / FC7_COMPRESSION
    gpu_hours = PHOTOS / 1000 / 3600
    renewals = gpu_hours * 3600 / LEASE_RENEW_S
    prep_heads = prep.count("HEAD", "shard") / n_shards
    prep_100m = int(shards_100m * (-(-int(shard_bytes) // STREAM_BLOCK) + prep_heads))
    get_class = ranged + head_100m + chunk_reads + renewals
    put_class = chunk_puts + renewals + lists_100m
    lines += [
        "## 100 M photos in shards on real object storage: arithmetic, not a measurement",
        "",
        f"Scenario: {PHOTOS:,} photos of {JPEG_BYTES / 1e3:.0f} kB in {shards_100m:,} shards of {PER_SHARD:,} "
        f"({size(shard_bytes)} a shard with the {shard_over:,.0f} B a sample of tar headers and json measured above), "
        f"the paper's two fc7 blocks ({WIDTH:,} float16 a row: {rows} rows a ~4 MiB chunk, {chunks_100m:,} chunks), "
        f"extract's default batch {BATCH}, the features compressed {FC7_COMPRESSION}x (zstd on fc7, measured in "
        "extract_throughput.md). Per-unit figures are this run's (above). Prices: S3 Standard, us-east-1 list "
        f"prices as published by AWS through {PRICE_DATE} (assumed, not fetched here): GET/HEAD ${GET_PER_1K} per "
        f"1,000, PUT/COPY/POST/LIST ${PUT_PER_1K} per 1,000, data transfer to EC2 in the same region $0, to the "
        f"internet ${EGRESS_INTERNET_GB}/GB, storage ${STORAGE_GB_MONTH}/GB-month.",
        "",
        "| one extraction pass | arithmetic | requests / bytes | cost |",
        "|---|---|---:|---:|",
        f"| ranged GETs of photos | {PHOTOS:,} / {BATCH} batches + {straddles(shards_100m, PER_SHARD, BATCH):,} "
        f"batches that span two shards | {ranged:,} | {usd(ranged / 1000 * GET_PER_1K)} |",
        f"| the shards' sizes and ETags | {heads_shard:.1f} HEADs x {shards_100m:,} shards + {shard_lists} "
        f"listing(s) x {-(-shards_100m // 1000)} pages | {head_100m:,.0f} HEADs + {lists_100m:,} LISTs | "
        f"{usd(head_100m / 1000 * GET_PER_1K + lists_100m / 1000 * PUT_PER_1K)} |",
        f"| GETs + HEADs of per-chunk store objects | {get_chunk:.2f} x {chunks_100m:,} chunks | {chunk_reads:,.0f} | "
        f"{usd(chunk_reads / 1000 * GET_PER_1K)} |",
        f"| PUTs of features, valid, reason, chunk_log, done | {put_chunk:.2f} x {chunks_100m:,} chunks | "
        f"{chunk_puts:,.0f} | {usd(chunk_puts / 1000 * PUT_PER_1K)} |",
        f"| lease renewals (at 1,000 photos/s: {gpu_hours:.1f} h) | 1 PUT + 1 HEAD every {LEASE_RENEW_S} s | "
        f"{2 * renewals:,.0f} | {usd(renewals / 1000 * (GET_PER_1K + PUT_PER_1K))} |",
        f"| **requests** | GET class + PUT class | **{get_class:,.0f} + {put_class:,.0f}** | "
        f"**{usd(get_class / 1000 * GET_PER_1K + put_class / 1000 * PUT_PER_1K)}** |",
        f"| bytes read | {PHOTOS:,} x ({JPEG_BYTES / 1e3:.0f} kB + {read_over:,.0f} B) | {size(read_100m)} | $0 in "
        f"region ({usd(read_100m / 1e9 * EGRESS_INTERNET_GB)} out to the internet) |",
        f"| bytes written | {PHOTOS:,} x {WIDTH * 2:,} B / {FC7_COMPRESSION} | {size(written)} | $0 in |",
        f"| `prepare webdataset` first (reads every shard once) | {shards_100m:,} x ceil({size(shard_bytes)} / "
        f"{STREAM_BLOCK >> 20} MiB) GETs + {prep_heads:.0f} HEADs a shard | {prep_100m:,} GETs and HEADs, "
        f"{size(shards_100m * shard_bytes)} | {usd(prep_100m / 1000 * GET_PER_1K)} |",
        f"| storage a month | shards + features | {size(shards_100m * shard_bytes + written)} | "
        f"{usd((shards_100m * shard_bytes + written) / 1e9 * STORAGE_GB_MONTH)} |",
        "",
    ]
    s3_rate = n / best(bench.loop[("photos", "extract", "s3")])
    lines += [
        "Request and byte rates of that pass at a given extraction rate (S3 serves at least 5,500 GET/HEAD and "
        "3,500 PUT per second per partitioned prefix, per AWS's documentation):",
        "",
        "| extraction rate | one pass | ranged GETs/s | PUTs/s | read | written |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, rate in ((f"this CPU, S3 extract's chunk loop here ({s3_rate:.1f} photos/s)", s3_rate),
                        ("one GPU worker (1,000 photos/s, extract_distributed.md's assumption)", 1000.0),
                        ("ten GPU workers (10,000 photos/s)", 10000.0)):
        hours = PHOTOS / rate / 3600
        lines.append(f"| {label} | {hours:,.1f} h ({hours / 24:,.1f} days) | {rate * ranged / PHOTOS:,.1f} | "
                     f"{rate * chunk_puts / PHOTOS:,.1f} | {size(rate * (JPEG_BYTES + read_over))}/s | "
                     f"{size(rate * WIDTH * 2 / FC7_COMPRESSION)}/s |")
    lines.append("")
    if bench.planted_rows:
        lines += [
            f"Reading the 100 M store back ({chunks_100m:,} feature chunks; per chunk as measured on the planted "
            f"store's {bench.planted_chunks} chunks, the store's other arrays and metadata left out):",
            "",
            "| pass | GETs + HEADs per feature chunk (as shipped; max_concurrency=1), of which done flags | "
            "at 100 M (as shipped) | LIST pages at 100 M (`damaged_chunks`) | cost (as shipped) |",
            "|---|---:|---:|---:|---:|",
        ]
        pages = len(CHUNKED_LISTED) * -(-chunks_100m // 1000)
        for step in ("fit mlp", "fit knn", "evaluate mlp"):
            u, um = U[("planted", step, "s3")][-1], U[("planted", step, "s3-mc1")][-1]
            pc, pm = (per_chunk(x, ("GET", "HEAD"), bench.planted_chunks) for x in (u, um))
            done = (u.count("GET", "done chunk") + u.count("HEAD", "done chunk")) / bench.planted_chunks
            lists = pages + max(0, u.count("LIST", "store listing") - len(CHUNKED_LISTED))
            label = f"{step} ({args.planted_epochs} epochs, streamed)" if step == "fit mlp" else step
            lines.append(f"| {label} | {pc:.2f}; {pm:.2f}, {done:.2f} | {pc * chunks_100m:,.0f} | {lists:,} | "
                         f"{usd(pc * chunks_100m / 1000 * GET_PER_1K + lists / 1000 * PUT_PER_1K)} |")
        lines.append("")
    return lines


if __name__ == "__main__":
    main()
