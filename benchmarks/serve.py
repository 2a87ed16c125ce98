"""`hashtagkit serve` close to the model: latency and throughput at 1, 4 and 16 clients against the
model's own time for a batch of the same size, and the service's overhead on one photo, in one run.

The run is the paper's pair (vgg16-object + vgg16-scene) with RANDOM weights: no pretrained
weights can be downloaded here, but the compute is exactly the real one, so speeds are real
(the hashtags are meaningless). Steps:

  1. a demo store (`hashtagkit prepare demo`), extracted with both VGG-16s, a kNN run (cached in
     benchmarks/.cache/serve/ between runs);
  2. the model alone, in this process: `Recommender.predict` (Extractor + head + ranking) on
     batches of 1, 4 and 16 pre-decoded photos, the forward pass and the head apart, and the
     decoding of one photo; timed before and after the server rows (the CPU may be shared);
  3. the server (`hashtagkit serve`, its own process, --max-batch 32): 1, 4 and 16 concurrent
     clients, each sending one photo per request (JPEGs of 320-1080 px written by the script),
     every answer checked (200, no error); each answer's Server-Timing header (read, decode,
     wait, model, total) says where its time went in the server;
  4. one client against the server of git revision BEFORE (exported with `git archive`), for the
     one-photo overhead before and after;
  5. optionally --max-batch 1 rows (`--batching-off`) and a `hashtagkit recommend` process per
     photo (`--cli-photos N`).

Writes a Markdown table with the machine, versions, commit and load average (benchmarks/results/serve.md).

    python benchmarks/serve.py [--clients 1,4,16] [--requests 8] [--before REV] [--out ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from hashtagkit import provenance

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from extract_throughput import write_photos  # noqa: E402  (sibling scripts, not a package)
from startup import export_revision, git_head  # noqa: E402

CACHE = HERE / ".cache" / "serve"
TIMEOUT = 300
TOP = 5
REPEATS = {1: 5, 4: 3, 16: 2}  # timings of the model alone at each batch size, before and after its row


def hashtagkit(*args: str) -> list[str]:
    exe = Path(sys.executable).with_name("hashtagkit")
    return [str(exe), *args] if exe.exists() else [sys.executable, "-m", "hashtagkit.cli.main", *args]


def make_run(n: int) -> Path:
    """The demo store extracted with both random VGG-16s and a kNN run on it (made once, cached)."""
    run = CACHE / f"run-n{n}"
    if (run / "run.json").is_file():
        return run
    shutil.rmtree(CACHE, ignore_errors=True)
    CACHE.mkdir(parents=True)
    store = CACHE / "demo.zarr"
    for args in (["prepare", "demo", "-o", str(store), "--n", str(n)],
                 ["extract", str(store), "--backbone", "vgg16-object=random", "--backbone", "vgg16-scene=random",
                  "--no-progress"],
                 ["fit", str(store), "--head", "knn", "-o", str(run), "--set", "k=10"]):
        subprocess.run(hashtagkit(*args), check=True)
    return run


class Model:
    """The run's Recommender in this process, timed on pre-decoded photos."""

    def __init__(self, run: Path, photos: list[Path]):
        from hashtagkit.recommend import Recommender

        self.rec = Recommender.from_run(run)
        self.photos = photos
        self.settings = f"{self.rec.extractor.precision} on {self.rec.extractor.device}"
        self.samples: dict[str, list[float]] = {}

    def prepared(self, n: int) -> list:
        return [self.rec.prepare(p) for p in (self.photos * (n // len(self.photos) + 1))[:n]]

    def warm_up(self, sizes: list[int]) -> None:
        """A first predict at each batch size (first passes allocate)."""
        for n in sizes:
            self.rec.predict(self.prepared(n), TOP)

    def measure(self, n: int, repeats: int) -> None:
        """Samples of `predict` on n photos (the model's batch time); at n = 1 also the forward
        alone, the head + ranking alone and decoding each request photo (from its file's bytes)."""
        from hashtagkit import metrics

        batch = self.prepared(n)
        for _ in range(repeats):
            t0 = time.perf_counter()
            self.rec.predict(batch, TOP)
            self.samples.setdefault(f"predict {n}", []).append(time.perf_counter() - t0)
            if n == 1:
                t0 = time.perf_counter()
                feats = self.rec.features(batch)
                t1 = time.perf_counter()
                metrics.top_k(self.rec.score_features(feats), TOP)
                self.samples.setdefault("forward 1", []).append(t1 - t0)
                self.samples.setdefault("head 1", []).append(time.perf_counter() - t1)
        if n == 1:
            for photo in self.photos:
                data = photo.read_bytes()
                t0 = time.perf_counter()
                self.rec.prepare(data, photo.name)
                self.samples.setdefault("decode", []).append(time.perf_counter() - t0)
        print(f"  model alone, batch of {n:>2}: predict {self.median(f'predict {n}') * 1000:.0f} ms so far", flush=True)

    def forward_one(self, key: str):
        """A callable timing one forward pass on one pre-decoded photo into samples[key]."""
        batch = self.prepared(1)

        def forward() -> None:
            t0 = time.perf_counter()
            self.rec.features(batch)
            self.samples.setdefault(key, []).append(time.perf_counter() - t0)

        return forward

    def median(self, key: str) -> float:
        return statistics.median(self.samples[key])

    def spread(self, key: str) -> str:
        v = self.samples[key]
        return f"{min(v) * 1000:.0f}-{max(v) * 1000:.0f}"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    """`hashtagkit serve RUN` in its own process, on a free port of 127.0.0.1 (`env`: another
    revision's code on PYTHONPATH)."""

    def __init__(self, run: Path, max_batch: int, log: Path, env: dict | None = None):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "w")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(hashtagkit("serve", str(run), "--port", str(self.port), "--max-batch",
                                                str(max_batch)), stdout=self.log, stderr=subprocess.STDOUT,
                                     env=env, cwd=tempfile.gettempdir())
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}); see {log}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise RuntimeError("the server did not start in 300 s")
        self.start_s = time.perf_counter() - t0

    def batching(self) -> dict:
        return httpx.get(f"{self.url}/v1/info", timeout=TIMEOUT).json()["server"]["batching"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.log.close()


def server_timing(header: str | None) -> dict[str, float]:
    """Server-Timing `name;dur=ms` parts -> seconds (empty for a server without the header)."""
    out = {}
    for part in (header or "").split(","):
        name, *params = part.strip().split(";")
        for p in params:
            if p.startswith("dur="):
                out[name] = float(p[4:]) / 1000
    return out


def load(url: str, photos: list[Path], clients: int, requests: int, between=None) -> dict:
    """`clients` threads, each sending `requests` one-photo requests back to back (`between`,
    if given, called after each request: the model timed in this process, interleaved)."""
    payloads = [(p.name, p.read_bytes()) for p in photos]
    latencies: list[float] = []
    timings: list[dict] = []
    failures: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def client(c: int) -> None:
        with httpx.Client(timeout=TIMEOUT) as http:
            start.wait(timeout=TIMEOUT)
            for r in range(requests):
                name, data = payloads[(c * requests + r) % len(payloads)]
                t0 = time.perf_counter()
                res = http.post(f"{url}/v1/recommend", params={"top": TOP},
                                files=[("files", (name, data, "image/jpeg"))])
                took = time.perf_counter() - t0
                ok = res.status_code == 200 and res.json()["results"][0]["error"] is None
                with lock:
                    latencies.append(took)
                    timings.append({**server_timing(res.headers.get("server-timing")), "e2e": took})
                    if not ok:
                        failures.append(f"{res.status_code} {res.text[:100]}")
                if between is not None:
                    between()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - t0
    ms = np.array(latencies)
    # one client with the model timed between its requests: its rate from its own requests' time
    rate = len(latencies) / (sum(latencies) if between is not None and clients == 1 else wall)
    return {"clients": clients, "requests": len(latencies), "failures": len(failures), "rate": rate,
            "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "timings": timings}


def serve_rows(run: Path, photos: list[Path], max_batch: int, clients: list[int], requests: int,
               env: dict | None = None, tag: str = "", model: Model | None = None) -> tuple[list, float]:
    """Rows of load at each number of clients; with `model`, the one-client row times the forward
    pass on one photo in this process after each request (same moment, same machine load)."""
    server = Server(run, max_batch, CACHE / f"server-b{max_batch}{tag}.log", env)
    try:
        load(server.url, photos[:4], 2, 2)  # warm-up (first passes allocate)
        rows = []
        for c in clients:
            before = server.batching()
            system_load, cpu0 = os.getloadavg()[0], cpu_seconds(server.proc.pid)
            sandwich = model is not None and not tag  # the model's batch time right before and after the row
            if sandwich:
                model.measure(c, REPEATS.get(c, 2))
            between = model.forward_one(f"forward 1, between {tag or 'after'}'s requests") if model and c == 1 else None
            row = load(server.url, photos, c, max(requests, 32 // c), between)
            if sandwich:
                model.measure(c, REPEATS.get(c, 2))
            row["per_cpu_s"] = row["requests"] / (cpu_seconds(server.proc.pid) - cpu0)
            after = server.batching()
            batches = after["batches"] - before["batches"]
            row["mean_batch"] = (after["images"] - before["images"]) / batches if batches else 0.0
            row["max_batch"], row["load"] = max_batch, system_load
            rows.append(row)
            print(f"  {tag or 'after'}, max-batch {max_batch:>2}, {c:>2} clients: {row['rate']:.2f} photos/s, "
                  f"p50 {row['p50'] * 1000:.0f} ms, mean batch {row['mean_batch']:.1f}, failures {row['failures']}",
                  flush=True)
        return rows, server.start_s
    finally:
        server.stop()


def process_per_photo(run: Path, photos: list[Path]) -> float:
    t0 = time.perf_counter()
    for p in photos:
        subprocess.run(hashtagkit("recommend", str(run), str(p), "--json"), check=True, capture_output=True)
    return len(photos) / (time.perf_counter() - t0)


def clients_of(rows: list) -> list[int]:
    return [r["clients"] for r in rows]


def overhead_rows(row: dict, model: Model) -> tuple[list[tuple[str, float]], float, float]:
    """The one-photo breakdown from a 1-client row's Server-Timing: (part, median seconds) rows,
    the median overhead and the median forward. Per request, the forward is the server's own
    model time less the head + ranking (timed in this process, ~1 ms): the same process at the
    same moment, so other jobs on the machine shift both alike."""
    head = model.median("head 1")
    t = row["timings"]

    def med(f) -> float:
        return statistics.median(f(x) for x in t)

    forward = med(lambda x: x["model"] - head)
    overhead = med(lambda x: x["e2e"] - (x["model"] - head))
    parts = [
        ("HTTP body + multipart parsing (read)", med(lambda x: x["read"])),
        ("decode + preprocess, 2 thread hops (decode)", med(lambda x: x["decode"])),
        ("queue: waiting for its batch to start, max_wait included (wait)", med(lambda x: x["wait"])),
        ("head + ranking (this process)", head),
        ("routing, validation, JSON, middleware (total - read - decode - wait - model)",
         med(lambda x: x["total"] - x["read"] - x["decode"] - x["wait"] - x["model"])),
        ("HTTP transport, uvicorn's parsing, the client (end to end - total)", med(lambda x: x["e2e"] - x["total"])),
    ]
    return parts, overhead, forward


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store-n", type=int, default=64, help="Photos in the demo store the run is fitted on.")
    ap.add_argument("--photos", type=int, default=24, help="Distinct request photos (JPEGs of 320-1080 px).")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--requests", type=int, default=8, help="Requests per client (at least 32 in all).")
    ap.add_argument("--before", default="6c89dd8", help="git revision whose server is measured with one client "
                                                        "('' to skip)")
    ap.add_argument("--after", default=None, help="git revision whose server is measured as 'after' [default: this "
                                                   "checkout, uncommitted changes included]")
    ap.add_argument("--batching-off", action="store_true", help="Also the --max-batch 1 rows.")
    ap.add_argument("--cli-photos", type=int, default=0, help="Photos for the process-per-photo baseline (0: none).")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "serve.md")
    args = ap.parse_args()
    try:
        clients = [int(c) for c in args.clients.split(",")]
    except ValueError:
        raise SystemExit(f"--clients {args.clients!r}: give numbers separated by commas, e.g. 1,4,16") from None
    if not clients or min(clients) < 1 or args.requests < 1:
        raise SystemExit("--clients and --requests must be at least 1")

    run = make_run(args.store_n)
    folder = CACHE / "photos"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    photos = [folder / n for n in write_photos(folder, args.photos, seed=1)]
    load_before = os.getloadavg()

    print("model alone: loading, a first pass at each batch size ...", flush=True)
    model = Model(run, photos)
    model.warm_up(clients)
    with tempfile.TemporaryDirectory(prefix="hashtagkit-serve-revisions-") as tmp:
        after_env = ({**os.environ, "PYTHONPATH": str(export_revision(args.after, Path(tmp) / "after"))}
                     if args.after else None)
        print("serve ...", flush=True)
        rows, starts = serve_rows(run, photos, 32, clients, args.requests, after_env, model=model)
        before_row = None
        if args.before:
            env = {**os.environ, "PYTHONPATH": str(export_revision(args.before, Path(tmp) / "before"))}
            print(f"serve at {args.before}, one client ...", flush=True)
            before_row = serve_rows(run, photos, 32, [1], args.requests, env, tag="before", model=model)[0][0]
        off_rows = serve_rows(run, photos, 1, clients, args.requests, after_env)[0] if args.batching_off else []
    per_process = process_per_photo(run, photos[: args.cli_photos]) if args.cli_photos else None
    load_after = os.getloadavg()
    write(args, model, rows, starts, before_row, off_rows, per_process, load_before, load_after)


def write(args, model: Model, rows: list, start_s: float, before_row: dict | None, off_rows: list,
          per_process: float | None, load_before, load_after) -> None:
    v = provenance.versions()
    from importlib.metadata import version

    lines = [
        "# `hashtagkit serve` against the model's own batch time",
        "",
        f"`{' '.join(['python benchmarks/serve.py', *sys.argv[1:]])}` (`make bench-serve`), {provenance.now()}; "
        f"the server's code: {'git revision ' + args.after if args.after else git_head()}.",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}; load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after (the `load` column: as each row started; above 2, "
        "other jobs shared the 2 cores and the times are longer and noisier).",
        f"Versions: hashtagkit {v.get('hashtagkit')}, torch {v.get('torch')}, fastapi {version('fastapi')}, "
        f"uvicorn {version('uvicorn')}, Pillow {v.get('Pillow')}, Python {v.get('python')}.",
        f"Run: kNN (k=10) on a {args.store_n}-photo demo store extracted with **vgg16-object=random + "
        f"vgg16-scene=random** (8,192-d): random weights, the real compute, so the speeds are real and the "
        f"hashtags meaningless. Model {model.settings}. Requests: one photo each (top {TOP}), {args.photos} JPEGs "
        "of 320-1080 px, every answer checked (200, no error); clients are threads of this script, the server "
        f"its own process (`hashtagkit serve --max-batch 32`, max_wait 20 ms; started in {start_s:.1f} s).",
        "The model's batch time: `Recommender.predict` (the Extractor + head + ranking) on that many pre-decoded "
        "photos in this process, the median of " + "/".join(str(2 * REPEATS.get(n, 2)) for n in clients_of(rows))
        + f" timings at {'/'.join(str(n) for n in clients_of(rows))} photos, half right before its row, half right "
        "after (other jobs on the machine then weigh on both alike).",
        "",
        "| clients | requests | failed | mean batch | p50 ms | p99 ms | model's batch time ms | p50 / model batch "
        "| photos/s | model's photos/s at that batch | photos/s / model's | photos per CPU-s | load |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        n = r["clients"]
        batch_time = model.median(f"predict {n}")
        lines.append(f"| {n} | {r['requests']} | {r['failures']} | {r['mean_batch']:.1f} | {r['p50'] * 1000:.0f} | "
                     f"{r['p99'] * 1000:.0f} | {batch_time * 1000:.0f} ({model.spread(f'predict {n}')}) | "
                     f"{r['p50'] / batch_time:.2f} | {r['rate']:.2f} | {n / batch_time:.2f} | "
                     f"{r['rate'] / (n / batch_time):.2f} | {r['per_cpu_s']:.2f} | {r['load']:.1f} |")
    lines += [
        "",
        "A request's latency under load is its own batch's time plus part of the batch before it (a photo that "
        "arrives while a batch runs waits for it), so p50 / model batch near 1 at one client and between 1 and 2 "
        "under load is the service adding little; photos/s / model's near 1 is the model kept busy (one client "
        "waits for each answer before it sends the next photo, so it cannot keep it busy: decoding and HTTP are "
        "not overlapped with the forward; its photos/s is its requests over their own time, the model being "
        "timed in this process between them). p99 over 32-128 requests is close to the slowest one.",
    ]
    for r in off_rows:
        lines.append(f"- `--max-batch 1`, {r['clients']} clients: {r['rate']:.2f} photos/s, p50 {r['p50'] * 1000:.0f} ms, "
                     f"p99 {r['p99'] * 1000:.0f} ms.")
    if per_process is not None:
        lines.append(f"- `hashtagkit recommend RUN PHOTO`, a process per photo ({args.cli_photos} photos): "
                     f"{per_process:.3f} photos/s.")
    one = next((r for r in rows if r["clients"] == 1), None)
    if one is not None and "total" in one["timings"][0]:
        parts, over, forward = overhead_rows(one, model)
        key = "forward 1, between after's requests"
        between, spread = model.median(key), model.spread(key)
        e2e = one["p50"]
        lines += [
            "",
            "## The service's overhead on one photo",
            "",
            f"One client, {one['requests']} requests in turn. Per request, from its Server-Timing header: the "
            "forward pass is the server's model time less the head + ranking, the overhead is everything else the "
            "client waited; medians over the requests, as a share of the forward. The parts are medians too, so "
            "they need not add up exactly.",
            "",
            "| | ms | % of the forward |",
            "|---|---:|---:|",
            f"| the forward pass on one photo, in the server | {forward * 1000:.1f} | 100 |",
            f"| end to end, p50 | {e2e * 1000:.1f} | {100 * e2e / forward:.1f} |",
            f"| **overhead: end to end - forward** | **{over * 1000:.1f}** | **{100 * over / forward:.1f}** |",
        ]
        for name, sec in parts:
            lines.append(f"| {name} | {sec * 1000:.1f} | {100 * sec / forward:.1f} |")
        lines += [
            f"| for comparison: decoding one photo in this process (median over the request photos) | {model.median('decode') * 1000:.1f} | "
            f"{100 * model.median('decode') / forward:.1f} |",
            f"| for comparison: the forward in this process after each request ({spread} ms) | "
            f"{between * 1000:.1f} | {100 * between / forward:.1f} |",
        ]
        if before_row is not None:
            b_between = model.median("forward 1, between before's requests")
            b_over, a_over = before_row["p50"] - b_between, e2e - between
            lines += [
                "",
                f"Before and after, against the forward timed in this process after each request (the server of git "
                f"revision {args.before} sends no Server-Timing), one client, same photos, same run: before p50 "
                f"{before_row['p50'] * 1000:.1f} ms - forward {b_between * 1000:.1f} ms = overhead "
                f"**{100 * b_over / b_between:.1f}%**; after p50 {e2e * 1000:.1f} ms - forward {between * 1000:.1f} ms "
                f"= **{100 * a_over / between:.1f}%** (target <= 10%).",
            ]
    lines.append("")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
