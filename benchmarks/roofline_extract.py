"""Extraction against the machine's peak: VGG-16 to fc7, model-only and the engine, per backbone and both.

`extraction_rows(device, quick)` returns rows for `benchmarks/roofline.py` (keys `path, what,
achieved, unit, peak, peak_name, pct, notes`); run alone it also compares the ways of running
the model (issue #16 item 4) and writes `benchmarks/results/roofline_extract.md`:

    nice -n 10 python benchmarks/roofline_extract.py [--device cpu] [--quick] [--compile]

- FLOPs per image are counted on the model (`torch.utils.flop_counter`, a multiply-add = 2 FLOPs),
  not taken from the literature.
- The peak is the bf16 (or fp32, or fp16 on CUDA) matmul rate measured in the same run at
  VGG-16's fc6 shape (batch x 25,088 @ 25,088 x 4,096) and a square 4,096 GEMM, best of a few.
- Model variants (one backbone, the same pre-decoded photos): fp32 (the reference), bf16
  autocast, bf16 weights (NCHW and channels_last), a frozen TorchScript trace, batch sizes,
  lanes against one batch on all threads, `torch.compile` with `--compile` (minutes to
  compile). Each is checked against the fp32 forward: cosine of the fc7 features >= 0.999.
  They run interleaved (every variant once per round), medians reported.
- The engine (`hashtagkit extract` end to end) is timed on 64 and 320 photos, best of 2 each: the
  extra photos' rate is its steady state, what a long extraction sees, and the rest its fixed
  start-up. Its row also gives the bound decoding sets when the model already fills the cores:
  decode CPU seconds per photo (measured here, one thread) are taken from the model's cores.
- Random VGG-16 weights: the compute is that of the pretrained ones; the tables say so.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))  # extract_throughput, imported as roofline.py's neighbour too

from extract_throughput import commit, end_to_end, write_photos  # noqa: E402

from hashtagkit import provenance  # noqa: E402
from hashtagkit.backbones import load_backbone  # noqa: E402
from hashtagkit.devices import extraction_budget, pick_device, pick_precision  # noqa: E402
from hashtagkit.extraction import Extractor  # noqa: E402
from hashtagkit.extraction.local import torch_threads  # noqa: E402
from hashtagkit.images import decode  # noqa: E402

COSINE_FLOOR = 0.999
# The engine runs on two sizes of the same photos: the difference is its steady-state rate (what
# 57,383 or a million photos see) and the rest its fixed start-up (workers, store, provenance),
# which a 64-photo run alone would count as slowness (the first committed table did: 0.69-0.80x).
ENGINE_SIZES = {False: (64, 320), True: (4, 12)}
MODEL_PHOTOS = {False: 64, True: 4}
VARIANT_PHOTOS = {False: 128, True: 8}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, quick: bool) -> float:
    """Best GFLOPS of a few GEMMs at the model's shapes (fc6 at batch 32, a square 4,096)."""
    shapes = [(1024, 4096, 4096)] if quick else [(32, 25088, 4096), (4096, 4096, 4096), (2048, 8192, 4096)]
    best = 0.0
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device).to(dtype)
        b = torch.randn(k, n, device=device).to(dtype)
        torch.matmul(a, b)
        for _ in range(2 if quick else 4):
            sync(device)
            t0 = time.perf_counter()
            torch.matmul(a, b)
            sync(device)
            best = max(best, 2 * m * k * n / (time.perf_counter() - t0) / 1e9)
    return best


def flops_per_image(module: torch.nn.Module, device: torch.device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, 224, 224, device=device, dtype=next(module.parameters()).dtype)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        module(x)
    return float(counter.get_total_flops())


def cosine_min(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def load_nets(which: str) -> list:
    """Random-weight backbones (seeded): `object`, `scene` or `both`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nets = {"object": lambda: load_backbone("vgg16-object", "random"),
                "scene": lambda: load_backbone("vgg16-scene", "random", seed=1)}
        return [nets[w]() for w in (["object", "scene"] if which == "both" else [which])]


def pixels_of(folder: Path, names: list[str], transforms) -> list[torch.Tensor]:
    decoded = [decode(folder / n) for n in names]
    return [torch.stack([t.pixels(im) for im in decoded]) for t in transforms]


def model_rate(engine: Extractor, inputs: list[torch.Tensor], batch: int, lanes: int, threads: int) -> float:
    """Images/s of the model alone on pre-decoded pixels, `lanes` batches at once."""
    from concurrent.futures import ThreadPoolExecutor

    n = inputs[0].shape[0]
    batches = [[x[i : i + batch] for x in inputs] for i in range(0, n, batch)]
    with torch_threads(threads), ThreadPoolExecutor(lanes) as pool:
        sync(engine.device)
        t0 = time.perf_counter()
        list(pool.map(engine, batches))
        sync(engine.device)
        return n / (time.perf_counter() - t0)


def row(path: str, what: str, achieved: float, unit: str, peak: float, peak_name: str, notes: str) -> dict:
    return {"path": path, "what": what, "achieved": round(achieved, 2), "unit": unit, "peak": round(peak, 2),
            "peak_name": peak_name, "pct": round(100 * achieved / peak, 1) if peak else None, "notes": notes}


def pair(path: str, what: str, images_per_s: float, flops: float, peak: float, peak_name: str, notes: str) -> list:
    """The same measurement in images/s (against the peak as images/s) and in GFLOPS."""
    gflops = images_per_s * flops / 1e9
    return [row(path, what, images_per_s, "images/s", peak * 1e9 / flops, f"{peak_name} as images/s", notes),
            row(path, what, gflops, "GFLOPS", peak, peak_name, notes)]


def setup(device: str, quick: bool, work: Path):
    dev = pick_device(device)
    precision = pick_precision("auto", dev)
    peak_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    n = ENGINE_SIZES[quick][1]
    photos = work / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    names = write_photos(photos, n)
    return dev, precision, peak_dtype, photos, names[: MODEL_PHOTOS[quick]], names


def decode_core_seconds(photos: Path, names: list[str], transforms, mode: str) -> float:
    """CPU seconds one photo's decode, resize and crop take (one process, one thread)."""
    from hashtagkit.data.photos import FolderPhotos
    from hashtagkit.extraction.reader import ImageReader

    reader = ImageReader(FolderPhotos(photos, names), transforms, allow_truncated=False, decode_mode=mode)
    with torch_threads(1):
        reader[0]
        t0 = time.process_time()
        for i in range(len(names)):
            reader[i]
        return (time.process_time() - t0) / len(names)


def engine_rate(photos: Path, names: list[str], nets, work: Path, dev: torch.device, precision: str, batch: int,
                quick: bool, decode: str = "default", rounds: int = 2, compile: bool = False) -> tuple[float, float, float]:
    """(steady-state images/s, fixed start-up s, images/s of the small run alone): `hashtagkit
    extract` over the first n1 and then all n2 photos, `rounds` times each (interleaved), the
    best time of each size as `timeit` takes it (another job can only slow a run down, and a
    difference of two times magnifies that); the extra photos' rate is the steady state."""
    n1, n2 = ENGINE_SIZES[quick]
    seconds: dict[int, float] = {}
    for _ in range(rounds):
        for n in (n1, n2):
            rate, _ = end_to_end(photos, names[:n], nets, work, dev, precision, batch, None, decode=decode,
                                 compile=compile)
            seconds[n] = min(seconds.get(n, math.inf), n / rate)
    steady = (n2 - n1) / (seconds[n2] - seconds[n1])
    return steady, seconds[n1] - n1 / steady, n1 / seconds[n1]


def extraction_rows(device: str, quick: bool, compile_too: bool = False,
                    which_ones: tuple[str, ...] = ("object", "scene", "both"), fast: bool = True) -> list[dict]:
    """Model-only and engine rates per backbone and both, against the matmul peak of this run.

    The engine's row is its steady state; its note gives the bound decoding sets on a machine
    whose cores the model already fills: per image 1/model rate + decode CPU seconds / cores, so
    at most 1 / (1 + model rate x decode seconds / cores) of the model-only rate. With
    `compile_too` (a CPU) each also runs compiled (`Extractor.compile`, in the engine's lanes):
    what `extract` does by default on a run long enough to repay the compile
    (`hashtagkit.extraction.compiling`)."""
    work = Path(tempfile.mkdtemp(prefix="hashtagkit-roofline-"))
    try:
        dev, precision, peak_dtype, photos, names, all_names = setup(device, quick, work)
        peak = matmul_peak(dev, peak_dtype, quick)
        peak_name = f"{str(peak_dtype).removeprefix('torch.')} matmul peak (measured)"
        budget = extraction_budget(dev)
        cores = os.cpu_count() or 1
        batch = 4 if quick else 32
        n1, n2 = ENGINE_SIZES[quick]
        rows = []
        for which in which_ones:
            nets = load_nets(which)
            flops = sum(flops_per_image(b.module, torch.device("cpu")) for b in nets)
            engine = Extractor(nets, dev, precision)
            inputs = pixels_of(photos, names, engine.transforms)
            engine([x[:2] for x in inputs])  # warm-up
            rate = model_rate(engine, inputs, batch, budget.lanes, budget.threads)
            common = (f"{precision} ({engine.describe()}), batch {batch}, {budget.lanes} lane(s) x {budget.threads} "
                      f"thread(s); {flops / 1e9:.2f} GFLOP/image counted; random weights")
            rows += pair(f"extract model-only {which}", f"VGG-16 to fc7 x{len(nets)}, pre-decoded pixels", rate,
                         flops, peak, peak_name, common)
            rates = {False: rate}
            compiled_ok = compile_too and dev.type == "cpu"
            if compiled_ok:
                cengine = Extractor(load_nets(which), dev, precision)
                with torch_threads(budget.threads):
                    setup_s = cengine.compile(batch)
                cos = cosine_min(cengine([x[:batch] for x in inputs]), engine([x[:batch] for x in inputs]))
                rates[True] = model_rate(cengine, inputs, batch, budget.lanes, budget.threads)
                rows += pair(f"extract model-only {which} compiled",
                             f"VGG-16 to fc7 x{len(nets)}, pre-decoded pixels, torch.compile", rates[True], flops,
                             peak, peak_name, f"{precision} ({cengine.describe()}), batch {batch}, {budget.lanes} "
                             f"lane(s) x {budget.threads} thread(s); **{rates[True] / rate:.2f}x the eager model**; "
                             f"fc7 cosine vs the eager bf16 model >= {cos:.5f}; compile (in this process, after "
                             f"any earlier one: inductor's cache) {setup_s:.1f} s")
                del cengine
            ways = [("default", False)] + ([("fast", False)] if fast and which == "both" else []) + \
                ([("default", True)] if compiled_ok else [])
            for decode, compiled in ways:
                if compiled:
                    nets = load_nets(which)  # fresh modules: the compiled engine casts its own
                steady, fixed, small = engine_rate(photos, all_names, nets, work, dev, precision, batch, quick, decode,
                                                   compile=compiled)
                dec_s = decode_core_seconds(photos, names, engine.transforms, decode)
                model = rates[compiled]
                bound = 1 / (1 + model * dec_s / cores) if dev.type == "cpu" else 1.0
                label = (" --compile (what auto does on a run that repays the compile)" if compiled else
                         " --no-compile" if decode == "default" else
                         " --decode fast (other pixels: cosine in extract_throughput.md)")
                tag = " compiled" if compiled else " fast" if decode == "fast" else ""
                against = "the compiled model-only" if compiled else "model-only"
                rows += pair(f"extract engine {which}{tag}",
                             f"`hashtagkit extract{label}`: decode + model + store writes, steady state", steady, flops,
                             peak, peak_name, common + f"; {budget.workers} decode worker(s); **{steady / model:.2f}x "
                             f"{against}**; decoding takes {dec_s * 1e3:.1f} CPU ms/photo, which on {cores} busy "
                             f"core(s) bounds the engine at {bound:.2f}x ({steady / model / bound:.2f} of that bound); "
                             f"steady state = the {n2 - n1} photos between runs of {n1} and {n2} (best of 2 each); fixed start-up "
                             f"{fixed:.2f} s" + ("" if compiled else f", so a {n1}-photo run alone is {small / rate:.2f}x"))
        return rows
    finally:
        shutil.rmtree(work, ignore_errors=True)


COMPILE_COST = """
import sys, time, warnings
import torch
warnings.simplefilter("ignore")
sys.path.insert(0, {root!r})
from hashtagkit.backbones import load_backbone
from hashtagkit.devices import extraction_budget
from hashtagkit.extraction import Extractor
from hashtagkit.extraction.local import torch_threads
nets = [load_backbone("vgg16-object", "random")]
if {which!r} == "both":
    nets.append(load_backbone("vgg16-scene", "random", seed=1))
engine = Extractor(nets, torch.device("cpu"), "bf16")
with torch_threads(extraction_budget(torch.device("cpu")).threads):
    print(engine.compile({batch}))
"""


def compile_cost(which: str, batch: int) -> tuple[float, float]:
    """(cold, warm) seconds of `Extractor.compile` in fresh processes: once on an empty inductor
    cache, then again on the cache the first one filled (weights random: their values are not
    part of the cache's key)."""
    import subprocess

    with tempfile.TemporaryDirectory(prefix="hashtagkit-inductor-") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        code = COMPILE_COST.format(root=str(Path(__file__).resolve().parents[1]), which=which, batch=batch)
        out = []
        for _ in range(2):
            res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            out.append(float(res.stdout.strip().splitlines()[-1]))
        return out[0], out[1]


class Variant:
    """One way of running one VGG-16 to fc7 on normalised batches: `fn(x) -> features`."""

    def __init__(self, name: str, fn, batch: int = 32, lanes: int = 1, threads: int | None = None, setup_s: float = 0):
        self.name, self.fn, self.batch, self.lanes = name, fn, batch, lanes
        self.threads = threads or torch.get_num_threads()
        self.setup_s = setup_s
        self.rates: list[float] = []

    def features(self, x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return torch.cat([self.fn(x[i : i + self.batch]).float() for i in range(0, len(x), self.batch)]).numpy()

    def time(self, x: torch.Tensor) -> None:
        from concurrent.futures import ThreadPoolExecutor

        def one(i: int):
            with torch.inference_mode():
                return self.fn(x[i : i + self.batch])

        with torch_threads(self.threads), ThreadPoolExecutor(self.lanes) as pool:
            t0 = time.perf_counter()
            list(pool.map(one, range(0, len(x), self.batch)))
            self.rates.append(len(x) / (time.perf_counter() - t0))


def model_variants(x_fp32: torch.Tensor, compile_too: bool, quick: bool) -> list[Variant]:
    """The candidates of issue #16 item 4, each on its own copy of the same random VGG-16."""
    base = load_nets("object")[0].module.eval()
    cores = os.cpu_count() or 1
    budget = extraction_budget(torch.device("cpu"))
    cl = torch.channels_last
    fp32 = copy.deepcopy(base).to(memory_format=cl)
    bf16_cl = copy.deepcopy(base).to(torch.bfloat16).to(memory_format=cl)
    bf16_nchw = copy.deepcopy(base).to(torch.bfloat16)

    def autocast_fn(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fp32(x.contiguous(memory_format=cl))

    def bf16(m):
        return lambda x: m(x.to(torch.bfloat16).contiguous(memory_format=cl))

    big = 8 if quick else 64
    out = [
        Variant("fp32, channels_last (reference)", lambda x: fp32(x.contiguous(memory_format=cl)), threads=cores),
        Variant("bf16 autocast, channels_last (the engine before)", autocast_fn, threads=cores),
        Variant("bf16 weights, NCHW", lambda x: bf16_nchw(x.to(torch.bfloat16)), threads=cores),
        Variant("bf16 weights, channels_last, one batch on all threads", bf16(bf16_cl), threads=cores),
        Variant(f"bf16 weights, channels_last, {budget.lanes} lanes (the engine)", bf16(bf16_cl),
                lanes=budget.lanes, threads=budget.threads),
        Variant(f"same, batch 16, {budget.lanes} lanes", bf16(bf16_cl), batch=16, lanes=budget.lanes,
                threads=budget.threads),
        Variant(f"same, batch {big}, {budget.lanes} lanes", bf16(bf16_cl), batch=big, lanes=budget.lanes,
                threads=budget.threads),
    ]
    xb = x_fp32[:2].to(torch.bfloat16).contiguous(memory_format=cl)
    t0 = time.perf_counter()
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated: measured all the same
        traced = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(copy.deepcopy(bf16_cl), xb)))
    out.append(Variant(f"TorchScript trace + freeze (oneDNN fusion), bf16, {budget.lanes} lanes", bf16(traced),
                       lanes=budget.lanes, threads=budget.threads, setup_s=time.perf_counter() - t0))
    if compile_too:
        import torch._inductor.config as inductor

        inductor.freezing = True  # weights as constants: oneDNN prepacking, conv+ReLU fusion
        compiled = torch.compile(copy.deepcopy(bf16_cl))
        t0 = time.perf_counter()
        with torch.inference_mode():
            compiled(x_fp32[:32].to(torch.bfloat16).contiguous(memory_format=cl))
        out.append(Variant("torch.compile (inductor, freezing), bf16, one batch on all threads", bf16(compiled),
                           threads=cores, setup_s=time.perf_counter() - t0))
    return out


def compare_variants(device: torch.device, quick: bool, compile_too: bool, rounds: int, work: Path) -> list[dict]:
    """Issue #16 item 4: every variant once per round, interleaved; medians and cosines."""
    _, _, _, photos, _, names = setup(device.type, quick, work)
    names = names[: VARIANT_PHOTOS[quick]]  # two batches of the largest size at least: every lane busy
    transform = load_nets("object")[0].preprocessing
    x = transform.normalize(pixels_of(photos, names, [transform])[0])
    variants = model_variants(x, compile_too, quick)
    reference = variants[0].features(x)
    cos = {}
    for v in variants:
        cos[v.name] = cosine_min(v.features(x), reference)
    for _ in range(rounds):
        for v in variants:
            v.time(x)
    flops = flops_per_image(load_nets("object")[0].module, torch.device("cpu"))
    return [{"variant": v.name, "batch": v.batch, "lanes": v.lanes, "threads": v.threads,
             "images_per_s": float(np.median(v.rates)), "rounds": v.rates, "gflops": float(np.median(v.rates)) *
             flops / 1e9, "cosine": cos[v.name], "setup_s": v.setup_s} for v in variants]


def table(rows: list[dict]) -> list[str]:
    out = ["| path | what | achieved | unit | peak | peak | % of peak | notes |", "|---|---|---:|---|---:|---|---:|---|"]
    for r in rows:
        out.append(f"| {r['path']} | {r['what']} | {r['achieved']:.2f} | {r['unit']} | {r['peak']:.2f} | "
                   f"{r['peak_name']} | {r['pct']:.1f} | {r['notes']} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--quick", action="store_true", help="a tiny smoke run (4 photos, small GEMM)")
    ap.add_argument("--compile", action="store_true", help="also torch.compile (minutes of compiling on 2 cores)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--which", default="object,scene,both", help="backbones to measure: object, scene, both")
    ap.add_argument("--skip-variants", action="store_true", help="no table of ways to run one VGG-16")
    ap.add_argument("--no-fast", action="store_true", help="no --decode fast engine row")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "roofline_extract.md")
    args = ap.parse_args()
    dev = pick_device(args.device)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    which = tuple(w.strip() for w in args.which.split(",") if w.strip())
    rows = extraction_rows(dev.type, args.quick, args.compile, which, fast=not args.no_fast)
    costs = {w: compile_cost(w, 4 if args.quick else 32) for w in which} \
        if args.compile and dev.type == "cpu" else {}
    work = Path(tempfile.mkdtemp(prefix="hashtagkit-roofline-"))
    try:
        variants = compare_variants(dev, args.quick, args.compile, 1 if args.quick else args.rounds, work) \
            if dev.type == "cpu" and not args.skip_variants else []
    finally:
        shutil.rmtree(work, ignore_errors=True)
    peak_row = next(r for r in rows if r["unit"] == "GFLOPS")
    v = provenance.versions()
    command = "nice -n 10 python benchmarks/roofline_extract.py" + "".join(
        f" {a}" for a in sys.argv[1:])
    lines = [
        "# Extraction against the peak (VGG-16 to fc7)",
        "",
        f"`{command}`, {provenance.now()}, commit {commit()}; load average {load_before} before, "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} after.",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.platform()}, "
        f"AMX {getattr(torch.cpu, '_is_amx_tile_supported', lambda: False)()}, AVX-512 bf16 "
        f"{getattr(torch.cpu, '_is_avx512_bf16_supported', lambda: False)()}. Versions: Python {v.get('python')}, "
        f"torch {v.get('torch')}, torchvision {v.get('torchvision')}, numpy {v.get('numpy')}, Pillow {v.get('Pillow')}.",
        "**Random VGG-16 weights** (the compute of the pretrained ones). Peak: "
        f"{peak_row['peak']:.0f} GFLOPS ({peak_row['peak_name']}, best GEMM of this run).",
        "",
        "## Model-only and engine, per backbone and both",
        "",
        *table(rows),
    ]
    if costs:
        from hashtagkit.extraction import compiling

        lines += ["", "## The compile's cost, and where auto compiles", "",
                  "`Extractor.compile` (what `extract` runs before its first photo when it compiles), each in a fresh "
                  "process: on an empty inductor cache, then on the cache that run filled.", "",
                  "| backbones | cold s | warm s | saved per photo (measured: eager vs compiled engine) | "
                  "pays after (cold / warm) | auto compiles from (cold / warm) |", "|---|---:|---:|---:|---:|---:|"]
        by = {r["path"]: r for r in rows if r["unit"] == "images/s"}
        for w, (cold, warm) in costs.items():
            eager, comp = by.get(f"extract engine {w}"), by.get(f"extract engine {w} compiled")
            n = 2 if w == "both" else 1
            saved = 1 / eager["achieved"] - 1 / comp["achieved"] if eager and comp else float("nan")
            pays = (f"{cold / saved:,.0f} / {warm / saved:,.0f}" if saved > 0 else "never (no saving)")
            auto = [int(compiling.MARGIN * e / (compiling.SAVED_SECONDS_PER_PHOTO_PER_BACKBONE * n)) + 1
                    for e in (compiling.COLD_SECONDS_PER_BACKBONE * n, warm)]
            lines.append(f"| {w} | {cold:.1f} | {warm:.1f} | {saved * 1e3:.1f} ms | {pays} photos | "
                         f"{auto[0]:,} / {auto[1]:,} photos |")
    if variants:
        lines += [
            "",
            f"## Ways to run one VGG-16 to fc7 (interleaved, median of {1 if args.quick else args.rounds} rounds; "
            f"cosine: the worst photo's fc7 against the fp32 forward, floor {COSINE_FLOOR})",
            "",
            "| variant | batch | lanes x threads | images/s | each round | GFLOPS | % of peak | cosine vs fp32 | "
            "setup s |",
            "|---|---:|---|---:|---|---:|---:|---:|---:|",
        ]
        for r in variants:
            lines.append(f"| {r['variant']} | {r['batch']} | {r['lanes']} x {r['threads']} | {r['images_per_s']:.2f} | "
                         f"{' / '.join(f'{x:.2f}' for x in r['rounds'])} | {r['gflops']:.0f} | "
                         f"{100 * r['gflops'] / peak_row['peak']:.1f} | {r['cosine']:.5f} | {r['setup_s']:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
