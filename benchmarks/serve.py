"""`hashtagkit serve` under load: photos/s and latency percentiles, batching on and off, against
the model alone and against one `hashtagkit recommend` process per photo, all in one run.

The run is the paper's pair (vgg16-object + vgg16-scene) with RANDOM weights: no pretrained
weights can be downloaded here, but the compute is exactly the real one, so speeds are real
(the hashtags are meaningless). Steps:

  1. a demo store (`hashtagkit prepare demo`), extracted with both VGG-16s, a kNN run (cached in
     benchmarks/.cache/serve/ between runs);
  2. model only: the run's Extractor timed directly on batches of 32 pre-decoded photos;
  3. the server (`hashtagkit serve RUN`, its own process) with --max-batch 32 and with
     --max-batch 1; 1, 4 and 16 concurrent clients each send one photo per request (JPEGs of
     320-1080 px written by the script); every answer is checked (200, no error);
  4. `hashtagkit recommend RUN PHOTO` as a new process per photo (a few photos).

Writes a Markdown table with the machine and versions (benchmarks/results/serve.md).

    python benchmarks/serve.py [--clients 1,4,16] [--requests 6] [--cli-photos 3] [--out ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from hashtagkit import provenance

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from extract_throughput import write_photos  # noqa: E402  (a sibling script, not a package)

CACHE = HERE / ".cache" / "serve"
TIMEOUT = 300


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


def model_only(run: Path, photos: list[Path], batch: int = 32, repeats: int = 3) -> tuple[float, str]:
    """Images/s of the run's Extractor alone on pre-decoded batches (the engine's settings)."""
    import torch

    from hashtagkit.recommend import Recommender

    rec = Recommender.from_run(run)
    prepared = [rec.prepare(p) for p in (photos * (batch // len(photos) + 1))[:batch]]
    inputs = [torch.stack([p.inputs[i] for p in prepared]) for i in range(len(rec.transforms))]
    rec.extractor(inputs)  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        rec.extractor(inputs)
    rate = batch * repeats / (time.perf_counter() - t0)
    return rate, f"{rec.extractor.precision} on {rec.extractor.device}"


class Server:
    """`hashtagkit serve RUN` in its own process, on a free port of 127.0.0.1."""

    def __init__(self, run: Path, max_batch: int, log: Path):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "w")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(hashtagkit("serve", str(run), "--port", str(self.port), "--max-batch",
                                                str(max_batch)), stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}); see {log}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
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


def load(url: str, photos: list[Path], clients: int, requests: int) -> dict:
    """`clients` threads, each sending `requests` one-photo requests back to back."""
    payloads = [(p.name, p.read_bytes()) for p in photos]
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def client(c: int) -> None:
        with httpx.Client(timeout=TIMEOUT) as http:
            start.wait(timeout=TIMEOUT)
            for r in range(requests):
                name, data = payloads[(c * requests + r) % len(payloads)]
                t0 = time.perf_counter()
                res = http.post(f"{url}/v1/recommend", files=[("files", (name, data, "image/jpeg"))])
                took = time.perf_counter() - t0
                ok = res.status_code == 200 and res.json()["results"][0]["error"] is None
                with lock:
                    latencies.append(took)
                    if not ok:
                        failures.append(f"{res.status_code} {res.text[:100]}")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - t0
    ms = np.array(latencies) * 1000
    return {"clients": clients, "requests": len(latencies), "failures": len(failures), "rate": len(latencies) / wall,
            "p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
            "p99": float(np.percentile(ms, 99))}


def serve_rows(run: Path, photos: list[Path], max_batch: int, clients: list[int], requests: int) -> tuple[list, float]:
    server = Server(run, max_batch, CACHE / f"server-b{max_batch}.log")
    try:
        load(server.url, photos[:4], 2, 2)  # warm-up (first passes allocate)
        rows = []
        for c in clients:
            before = server.batching()
            row = load(server.url, photos, c, max(requests, 24 // c))
            after = server.batching()
            batches = after["batches"] - before["batches"]
            row["mean_batch"] = (after["images"] - before["images"]) / batches if batches else 0.0
            row["max_batch"] = max_batch
            rows.append(row)
            print(f"  max-batch {max_batch:>2}, {c:>2} clients: {row['rate']:.2f} photos/s, p50 {row['p50']:.0f} ms, "
                  f"mean batch {row['mean_batch']:.1f}, failures {row['failures']}", flush=True)
        return rows, server.start_s
    finally:
        server.stop()


def process_per_photo(run: Path, photos: list[Path]) -> float:
    t0 = time.perf_counter()
    for p in photos:
        subprocess.run(hashtagkit("recommend", str(run), str(p), "--json"), check=True, capture_output=True)
    return len(photos) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store-n", type=int, default=64, help="Photos in the demo store the run is fitted on.")
    ap.add_argument("--photos", type=int, default=24, help="Distinct request photos (JPEGs of 320-1080 px).")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--requests", type=int, default=6, help="Requests per client (at least 24 in all).")
    ap.add_argument("--cli-photos", type=int, default=3, help="Photos for the process-per-photo baseline.")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "serve.md")
    args = ap.parse_args()
    clients = [int(c) for c in args.clients.split(",")]

    run = make_run(args.store_n)
    folder = CACHE / "photos"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    photos = [folder / n for n in write_photos(folder, args.photos, seed=1)]
    load_before = os.getloadavg()

    print("model only ...", flush=True)
    ceiling, settings = model_only(run, photos)
    print(f"  {ceiling:.2f} images/s ({settings})", flush=True)
    print("serve ...", flush=True)
    rows, starts = [], {}
    for max_batch in (32, 1):
        r, starts[max_batch] = serve_rows(run, photos, max_batch, clients, args.requests)
        rows += r
    print("process per photo ...", flush=True)
    per_process = process_per_photo(run, photos[: args.cli_photos])
    print(f"  {per_process:.3f} photos/s", flush=True)
    load_after = os.getloadavg()

    best = next(r for r in rows if r["max_batch"] == 32 and r["clients"] == max(clients))
    v = provenance.versions()
    from importlib.metadata import version

    lines = [
        "# `hashtagkit serve` under load",
        "",
        f"`{' '.join(['python benchmarks/serve.py', *sys.argv[1:]])}` (`make bench-serve`), {provenance.now()}.",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}; load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after (other jobs shared the CPU).",
        f"Versions: hashtagkit {v.get('hashtagkit')}, torch {v.get('torch')}, torchvision {v.get('torchvision')}, "
        f"fastapi {version('fastapi')}, uvicorn {version('uvicorn')}, Pillow {v.get('Pillow')}, "
        f"Python {v.get('python')}.",
        f"Run: kNN (k=10) on a {args.store_n}-photo demo store extracted with **vgg16-object=random + "
        f"vgg16-scene=random** (8,192-d): random weights, the real compute, so the speeds are real and the "
        f"hashtags meaningless. Model {settings}. Requests: one photo each, {args.photos} JPEGs of 320-1080 px, "
        "every answer checked (200, no error); clients are threads of this script, the server its own process "
        f"(started in {starts[32]:.1f} s and {starts[1]:.1f} s: load + first /healthz).",
        "",
        "| batching | clients | requests | failed | photos/s | p50 ms | p95 ms | p99 ms | mean batch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mode = "on (--max-batch 32)" if r["max_batch"] > 1 else "off (--max-batch 1)"
        lines.append(f"| {mode} | {r['clients']} | {r['requests']} | {r['failures']} | {r['rate']:.2f} | "
                     f"{r['p50']:.0f} | {r['p95']:.0f} | {r['p99']:.0f} | {r['mean_batch']:.1f} |")
    lines += [
        f"| model only: the Extractor on batches of 32 pre-decoded photos | | | | {ceiling:.2f} | | | | 32 |",
        f"| `hashtagkit recommend RUN PHOTO`, a process per photo ({args.cli_photos} photos) | 1 | "
        f"{args.cli_photos} | 0 | {per_process:.3f} | {1000 / per_process:.0f} | | | 1 |",
        "",
        f"With {best['clients']} clients and batching: **{best['rate'] / ceiling:.2f} x the model-only rate** "
        f"(target >= 0.8) and **{best['rate'] / per_process:.0f} x the process-per-photo rate** (target >= 10).",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
