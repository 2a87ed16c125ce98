"""Extraction throughput: a naive loop vs the model alone vs `hashtagkit extract`, and store I/O.

Writes its own JPEGs at photo sizes (320-1080 px), runs both paper backbones (vgg16-object +
vgg16-scene; random weights, which cost exactly what pretrained ones do) three ways, in one run:

  (a) naive: one image at a time, fp32, Pillow + torchvision's transforms, as public HARRISON
      baselines do;
  (b) ceiling: the model alone on pre-decoded tensors at the engine's settings (batched,
      channels_last, the engine's precision);
  (c) `hashtagkit extract` end to end (decode workers, both backbones, store writes).

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
from hashtagkit.devices import pick_device, pick_precision
from hashtagkit.extract import Extractor, extract
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


def ceiling(folder: Path, names: list[str], nets, device: torch.device, precision: str, batch: int) -> float:
    engine = Extractor(nets, device, precision)
    decoded = [decode(folder / n) for n in names]
    inputs = [torch.stack([t(im) for im in decoded]) for t in engine.transforms]
    engine([x[:2] for x in inputs])  # warm-up: oneDNN picks its kernels
    t0 = time.perf_counter()
    for i in range(0, len(names), batch):
        engine([x[i : i + batch] for x in inputs])
    return len(names) / (time.perf_counter() - t0)


def end_to_end(folder: Path, names: list[str], nets, work: Path, device: torch.device, precision: str, batch: int,
               workers: int) -> tuple[float, Path]:
    from hashtagkit.data.split import random_split
    from hashtagkit.stores import create_store

    n = len(names)
    split, info = random_split(n, 1, 0, 0)
    store = work / "bench.zarr"
    create_store(store, paths=names, labels=np.ones((n, 1), np.uint8), vocab=["x"], split=split, split_info=info,
                 kind="benchmark", image_root=str(folder))
    t0 = time.perf_counter()
    extract(store, nets, device=device.type, precision=precision, batch_size=batch, workers=workers, progress=False,
            log=lambda s: None)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="images per measurement")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--out", type=Path, help="[default: benchmarks/results/extract_throughput.md, _cuda.md on a GPU]")
    args = ap.parse_args()
    device = pick_device(args.device)
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
        a = naive(photos, names, nets, device)
        b = ceiling(photos, names, nets, device, precision, args.batch_size)
        c, store = end_to_end(photos, names, nets, work, device, precision, args.batch_size, args.workers)
        io = store_io(np.asarray(zarr.open_group(store, mode="r")["features"][...]), work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    v = provenance.versions()
    lines = [
        "# Extraction throughput",
        "",
        f"`python benchmarks/extract_throughput.py --n {args.n} --device {device.type}` (`make bench-extract`), "
        f"{provenance.now()}.",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, {where}, "
        f"{platform.platform()}. Versions: torch {v.get('torch')}, torchvision {v.get('torchvision')}, "
        f"zarr {v.get('zarr')}, numpy {v.get('numpy')}, Pillow {v.get('Pillow')}, Python {v.get('python')}.",
        f"Both paper backbones (vgg16-object + vgg16-scene, 8,192-d), {args.n} JPEGs of 320-1080 px written by the "
        f"script; engine: precision {precision}, batch {args.batch_size}, {args.workers} decode worker(s), "
        "float16 storage. Random weights (same cost as pretrained).",
        "",
        "| path | images/s | vs naive |",
        "|---|---:|---:|",
        f"| (a) naive loop: one image at a time, fp32, Pillow + torchvision transforms | {a:.2f} | 1.00x |",
        f"| (b) model alone on pre-decoded tensors ({precision}, batch {args.batch_size}, channels_last) | {b:.2f} | {b / a:.2f}x |",
        f"| (c) `hashtagkit extract` end to end | {c:.2f} | {c / a:.2f}x |",
        "",
        f"Ratios in this run: **c/a = {c / a:.2f}** (target >= 3), **c/b = {c / b:.2f}** (target >= 0.8).",
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
    ]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
