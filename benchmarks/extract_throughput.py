"""Extraction throughput: a naive loop vs the model alone vs `hashtagkit extract`, and store I/O.

Writes its own JPEGs at photo sizes (320-1080 px), runs both paper backbones (vgg16-object +
vgg16-scene; random weights, which cost exactly what pretrained ones do) three ways, in one run:

  (a) naive: one image at a time, fp32, Pillow + torchvision's transforms, as public HARRISON
      baselines do;
  (b) ceiling: the model alone on pre-decoded tensors at the engine's settings (batched,
      channels_last, the engine's precision and lanes), and on one batch at a time over all
      the cores (b1, what the engine did before lanes);
  (c) `hashtagkit extract` end to end (decode workers, both backbones, store writes), with its
      budget of lanes and decoders, with one lane (c1) and with `--decode fast` (cf);
  then the decode paths: ms per photo and fc7 cosine against the exact decode.

The model-only and engine variants run interleaved (b b1 c c1 cf, `--rounds` times) and the
table gives medians, so a machine shared with other jobs slows them alike.

Then the store's write and read speed against plain `.npy` of the same feature array, and its
compression ratio. Prints a Markdown table and writes it to benchmarks/results/ with the
machine and versions.

    python benchmarks/extract_throughput.py [--n 64] [--device cpu|cuda|auto]
                                            [--out benchmarks/results/extract_throughput[_cuda].md]

On a GPU (`make bench-extract DEVICE=cuda`) all three paths run on it, the engine at its
CUDA default (fp16); the table goes to extract_throughput_cuda.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import zarr
from PIL import Image

from hashtagkit import provenance
from hashtagkit.backbones import load_backbone
from hashtagkit.devices import extraction_budget, pick_device, pick_precision
from hashtagkit.extraction import Extractor, extract
from hashtagkit.extraction.local import torch_threads
from hashtagkit.images import decode
from hashtagkit.stores.store import feature_compressors


def write_photos(folder: Path, n: int, seed: int = 0) -> list[str]:
    """Photo-like JPEGs: smooth gradients plus noise and blocks, sides 320..1080 px."""
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        w, h = int(rng.integers(320, 1081)), int(rng.integers(320, 1081))
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([x / w * 255, y / h * 255, (x + y) / (w + h) * 255], axis=-1)
        img = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
        name = f"photo_{i:04d}.jpg"
        Image.fromarray(img).save(folder / name, quality=90)
        names.append(name)
    return names


def naive(folder: Path, names: list[str], nets, device: torch.device) -> float:
    from torchvision.models import VGG16_Weights

    tf_object = VGG16_Weights.IMAGENET1K_V1.transforms()
    tf_scene = nets[1].spec.preprocessing
    for net in nets:
        net.module.to(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        for name in names:
            img = Image.open(folder / name).convert("RGB")
            a = nets[0].module(tf_object(img).unsqueeze(0).to(device))
            b = nets[1].module(tf_scene(img).unsqueeze(0).to(device))
            torch.cat([a, b], 1).cpu().numpy()
    return len(names) / (time.perf_counter() - t0)


class Ceiling:
    """The model alone on pre-decoded uint8 pixels (what decode workers hand over), batch by
    batch, `lanes` batches at once on `threads` torch threads each: the engine minus decoding
    and the store."""

    def __init__(self, folder: Path, names: list[str], nets, device: torch.device, precision: str, batch: int):
        self.engine = Extractor(nets, device, precision)
        decoded = [decode(folder / n) for n in names]
        self.inputs = [torch.stack([t.pixels(im) for im in decoded]) for t in self.engine.transforms]
        self.n, self.batch = len(names), batch
        self.engine([x[:2] for x in self.inputs])  # warm-up: oneDNN picks its kernels

    def rate(self, lanes: int, threads: int) -> float:
        from concurrent.futures import ThreadPoolExecutor

        batches = [[x[i : i + self.batch] for x in self.inputs] for i in range(0, self.n, self.batch)]
        with torch_threads(threads), ThreadPoolExecutor(lanes) as pool:
            t0 = time.perf_counter()
            list(pool.map(self.engine, batches))
            return self.n / (time.perf_counter() - t0)


def end_to_end(folder: Path, names: list[str], nets, work: Path, device: torch.device, precision: str, batch: int,
               workers: int | None, lanes: int | None = None, decode: str = "default",
               compile: bool = False) -> tuple[float, Path]:
    from hashtagkit.data.split import random_split
    from hashtagkit.stores import create_store

    n = len(names)
    split, info = random_split(n, 1, 0, 0)
    store = work / "bench.zarr"
    shutil.rmtree(store, ignore_errors=True)
    create_store(store, paths=names, labels=np.ones((n, 1), np.uint8), vocab=["x"], split=split, split_info=info,
                 kind="benchmark", image_root=str(folder))
    t0 = time.perf_counter()
    extract(store, nets, device=device.type, precision=precision, batch_size=batch, workers=workers, lanes=lanes,
            decode=decode, compile=compile, progress=False, log=lambda s: None)
    return n / (time.perf_counter() - t0), store


def store_io(features: np.ndarray, work: Path) -> dict:
    """MB/s writing and reading the store's codec against .npy, on a ~128 MiB array."""
    reps = max(1, (128 << 20) // features.nbytes)
    data = np.concatenate([features] * reps)
    rows = max(1, (4 << 20) // (data.shape[1] * data.itemsize))
    mb = data.nbytes / 1e6
    out = {"array": f"{data.shape[0]:,} x {data.shape[1]:,} {data.dtype}", "mb": mb}
    t0 = time.perf_counter()
    np.save(work / "f.npy", data)
    out["npy_write"] = mb / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    np.load(work / "f.npy")
    out["npy_read"] = mb / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    arr = zarr.create_array(work / "f.zarr", shape=data.shape, dtype=data.dtype, chunks=(rows, data.shape[1]),
                            compressors=feature_compressors())
    arr[...] = data
    out["zarr_write"] = mb / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    np.asarray(zarr.open_array(work / "f.zarr", mode="r")[...])
    out["zarr_read"] = mb / (time.perf_counter() - t0)
    on_disk = sum(f.stat().st_size for f in (work / "f.zarr").rglob("*") if f.is_file())
    out["ratio"] = data.nbytes / on_disk
    out["zeros"] = float((features == 0).mean())
    return out


def pil_turbo() -> bool:
    from PIL import features

    return bool(features.check_feature("libjpeg_turbo"))


def commit() -> str:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=Path(__file__).parent,
                               text=True, capture_output=True).stdout.strip()
        return out + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


NAIVE_N = 16  # photos the naive loop times (one at a time, so a sample gives its rate)
SHARED = Path(__file__).resolve().parents[2] / "shared"
HARRISON_FIXED = SHARED / "fixtures" / "harrison_fixed" / "instagram_dataset"


def write_big_photos(folder: Path, n: int, seed: int = 1) -> list[str]:
    """Phone-camera-sized JPEGs (4032 x 3024, 12 MP) where DCT-scaled decoding matters most."""
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        w, h = 4032, 3024
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([x / w * 255, y / h * 255, (x + y) / (w + h) * 255], axis=-1)
        base += 40 * np.sin(x / (37 + 11 * i))[..., None] * np.cos(y / 53)[..., None]  # some structure
        img = np.clip(base + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
        names.append(f"big_{i}.jpg")
        Image.fromarray(img).save(folder / names[-1], quality=90)
    return names


def decode_modes(sets: dict[str, tuple[Path, list[str]]]) -> list[dict]:
    """Per photo set and decode mode: decode + resize + crop ms per photo (one process, one
    thread) and the fc7 cosine of both backbones (fp32, random weights) against the exact decode
    (Pillow, full size). `gpu` is its code path run on the CPU (torchvision's libjpeg-turbo for
    nvJPEG, the same tensor resize): its pixels, not nvJPEG's speed."""
    from hashtagkit.data.photos import FolderPhotos
    from hashtagkit.extraction.reader import ImageReader, collate

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nets = [load_backbone("vgg16-object", "random"), load_backbone("vgg16-scene", "random", seed=1)]
    engine = Extractor(nets, torch.device("cpu"), "fp32")
    out = []
    with torch_threads(1):
        for label, (folder, names) in sets.items():
            exact = ImageReader.exact(FolderPhotos(folder, names), engine.transforms, allow_truncated=True)
            rows = list(range(len(names)))
            t0 = time.perf_counter()
            reference = collate([exact.decoded(r) for r in rows])
            exact_ms = 1000 * (time.perf_counter() - t0) / len(rows)
            with torch_threads(os.cpu_count() or 1):
                f_ref = engine(reference[1]).astype(np.float64)
            out.append({"set": label, "mode": "exact (no reduction)", "ms": exact_ms, "cos_min": 1.0, "cos_mean": 1.0})
            for mode in ("default", "fast", "gpu"):
                reader = ImageReader(FolderPhotos(folder, names), engine.transforms, allow_truncated=True, decode_mode=mode)
                t0 = time.perf_counter()
                batch = reader.on_device(collate([reader[r] for r in rows]), torch.device("cpu"))
                ms = 1000 * (time.perf_counter() - t0) / len(rows)
                with torch_threads(os.cpu_count() or 1):
                    f = engine(batch[1]).astype(np.float64)
                cos = (f * f_ref).sum(1) / np.linalg.norm(f, axis=1) / np.linalg.norm(f_ref, axis=1)
                out.append({"set": label, "mode": mode + (" (its CPU code path)" if mode == "gpu" else ""), "ms": ms,
                            "cos_min": float(cos.min()), "cos_mean": float(cos.mean())})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="images per measurement")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, help="decode workers [default: the engine's budget]")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the model-only and engine variants")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--out", type=Path, help="[default: benchmarks/results/extract_throughput.md, _cuda.md on a GPU]")
    args = ap.parse_args()
    device = pick_device(args.device)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    precision = pick_precision("auto", device)
    results = Path(__file__).parent / "results"
    args.out = args.out or results / ("extract_throughput.md" if device.type == "cpu" else "extract_throughput_cuda.md")
    where = (f"GPU {torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}" if device.type == "cuda"
             else f"CPU, torch threads {torch.get_num_threads()}")
    work = Path(tempfile.mkdtemp(prefix="hashtagkit-bench-"))
    try:
        photos = work / "photos"
        photos.mkdir()
        names = write_photos(photos, args.n)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            nets = [load_backbone("vgg16-object", "random"), load_backbone("vgg16-scene", "random", seed=1)]
        a = naive(photos, names[:NAIVE_N], nets, device)
        budget = extraction_budget(device, workers=args.workers)
        one = extraction_budget(device, lanes=1, workers=args.workers)
        ceiling = Ceiling(photos, names, nets, device, precision, args.batch_size)
        runs: dict[str, list[float]] = {"b": [], "b1": [], "c": [], "c1": [], "cf": []}
        for _ in range(args.rounds):  # interleaved: b b1 c c1 cf b b1 c c1 cf ...
            runs["b"].append(ceiling.rate(budget.lanes, budget.threads))
            runs["b1"].append(ceiling.rate(1, one.threads))
            runs["c"].append(end_to_end(photos, names, nets, work, device, precision, args.batch_size,
                                        args.workers)[0])
            rate, store = end_to_end(photos, names, nets, work, device, precision, args.batch_size, args.workers, 1)
            runs["c1"].append(rate)
            runs["cf"].append(end_to_end(photos, names, nets, work, device, precision, args.batch_size, args.workers,
                                         decode="fast")[0])
        io = store_io(np.asarray(zarr.open_group(store, mode="r")["features"][...]), work)
        big = work / "big"
        big.mkdir()
        sets = {f"{args.n} photos, 320-1080 px": (photos, names),
                "3 photos, 4032 x 3024": (big, write_big_photos(big, 3))}
        real = [p.relative_to(HARRISON_FIXED).as_posix() for p in sorted(HARRISON_FIXED.rglob("*.jpg"))] \
            if HARRISON_FIXED.is_dir() else []
        if real:
            sets[f"{len(real)} real HARRISON photos (truncated, decoded with --allow-truncated)"] = (HARRISON_FIXED, real)
        modes = decode_modes(sets)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    v = provenance.versions()
    b, b1, c, c1, cf = (float(np.median(runs[k])) for k in ("b", "b1", "c", "c1", "cf"))
    per_round = ", ".join(f"{x:.2f}" for x in np.array(runs["c"]) / np.array(runs["b"]))

    def cells(k: str) -> str:
        return " / ".join(f"{x:.2f}" for x in runs[k])

    lines = [
        "# Extraction throughput",
        "",
        f"`nice -n 10 python benchmarks/extract_throughput.py --n {args.n} --device {device.type} --rounds "
        f"{args.rounds}` (`make bench-extract`), {provenance.now()}, commit {commit()}; load average "
        f"{load_before} before, {' '.join(f'{x:.2f}' for x in os.getloadavg())} after.",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, {where}, "
        f"{platform.platform()}. Versions: torch {v.get('torch')}, torchvision {v.get('torchvision')}, "
        f"zarr {v.get('zarr')}, numpy {v.get('numpy')}, Pillow {v.get('Pillow')}, Python {v.get('python')}.",
        f"Both paper backbones (vgg16-object + vgg16-scene, 8,192-d), {args.n} JPEGs of 320-1080 px written by the "
        f"script; engine: precision {precision} ({ceiling.engine.describe()}), batch {args.batch_size}, budget "
        f"{budget.lanes} lane(s) x {budget.threads} torch thread(s) + {budget.workers} decode worker(s), "
        "float16 storage. **Random weights** (same cost as pretrained).",
        "",
        f"| path | images/s (median of {args.rounds}) | each round | vs naive |",
        "|---|---:|---:|---:|",
        f"| (a) naive loop: one image at a time, fp32, Pillow + torchvision transforms | {a:.2f} | | 1.00x |",
        f"| (b) model alone on pre-decoded pixels ({precision}, batch {args.batch_size}, {budget.lanes} lane(s) x "
        f"{budget.threads} thread(s)) | {b:.2f} | {cells('b')} | {b / a:.2f}x |",
        f"| (b1) model alone, one batch at a time on {one.threads} thread(s) | {b1:.2f} | {cells('b1')} | "
        f"{b1 / a:.2f}x |",
        f"| (c) `hashtagkit extract` end to end (its budget) | {c:.2f} | {cells('c')} | {c / a:.2f}x |",
        f"| (c1) `hashtagkit extract --lanes 1` | {c1:.2f} | {cells('c1')} | {c1 / a:.2f}x |",
        f"| (cf) `hashtagkit extract --decode fast` (other pixels: see Decode paths) | {cf:.2f} | {cells('cf')} | "
        f"{cf / a:.2f}x |",
        "",
        f"Ratios in this run (medians): **c/a = {c / a:.2f}** (target >= 3), **c/b = {c / b:.2f}** (target >= 0.9; "
        f"per round {per_round}), c/b1 = {c / b1:.2f}, c1/b1 = {c1 / b1:.2f} (one lane against its own model-only "
        f"rate), b/b1 = {b / b1:.2f}, **cf/b = {cf / b:.2f}**. (a) times the first {min(NAIVE_N, args.n)} photos "
        "(one at a time: the rate of a sample).",
        "",
        f"## Store I/O ({io['array']}, {io['mb']:.0f} MB, the extracted features repeated)",
        "",
        "| format | write MB/s | read MB/s | size on disk |",
        "|---|---:|---:|---:|",
        f"| plain `.npy` | {io['npy_write']:.0f} | {io['npy_read']:.0f} | 1.00x |",
        f"| store (Zarr v3, zstd level 1, ~4 MiB chunks) | {io['zarr_write']:.0f} | {io['zarr_read']:.0f} | "
        f"1/{io['ratio']:.2f} |",
        "",
        f"Compression ratio {io['ratio']:.2f}x; {100 * io['zeros']:.0f}% of these fc7 values are exactly zero (ReLU).",
        "",
        "## Decode paths (`extract --decode default|fast|gpu`)",
        "",
        "Decode + resize + crop for both backbones, ms per photo in one process on one thread; fc7 cosine of both "
        "backbones (fp32, random weights) against the exact decode (Pillow at full size), worst and mean photo. "
        "`default` reduces a JPEG by DCT scaling only while its shorter side stays >= 512 px, `fast` down to 256 "
        "(the resize); `gpu` is measured through its own code on the CPU (torchvision's libjpeg-turbo standing in "
        "for nvJPEG, the same antialiased tensor resize): its pixels, not a GPU's speed. Pillow "
        f"{v.get('Pillow')} decodes with libjpeg-turbo {'yes' if pil_turbo() else 'no'}.",
        "",
        "| photos | decode | ms / photo | cosine min | cosine mean |",
        "|---|---|---:|---:|---:|",
        *[f"| {m['set']} | {m['mode']} | {m['ms']:.1f} | {m['cos_min']:.5f} | {m['cos_mean']:.5f} |" for m in modes],
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
