"""Where torch runs and in which precision: the one place extraction, heads and recommend ask.

`pick_device` and `pick_precision` turn the user's `auto|cpu|cuda` and `auto|fp32|bf16|fp16`
into a concrete choice (or a one-line error for a choice this machine cannot run), and
`autocast` is the matching context. Keeping them together means a flag means the same thing
in `extract`, `fit --set device=...` and `recommend`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from hashtagkit.choices import DEVICES, PRECISIONS
from hashtagkit.errors import InputError


def pick_device(device: str) -> torch.device:
    """`auto` is CUDA when present, else the CPU; asking for CUDA without one is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise InputError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("device cuda: no CUDA device is available (use cpu or auto)")
    return torch.device(device)


def cpu_has_bf16() -> bool:
    """AVX-512 bf16 or AMX: where bf16 autocast is fast on the CPU (elsewhere it is emulated)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, c, lambda: False)() for c in checks)


def pick_precision(precision: str, device: torch.device, training: bool = False) -> str:
    """`auto`: on CUDA fp16 for inference and bf16 for training where the GPU has it (no loss
    scaling needed); on the CPU bf16 where it is native, else fp32. fp16 on the CPU is refused:
    it is emulated and slower than fp32."""
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if training and torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_bf16() else "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise InputError("precision fp16 is for CUDA; on the CPU use bf16 or fp32")
    return precision


def autocast(device: torch.device, precision: str):
    """The autocast context for a precision; fp32 disables autocast (even an enclosing one)."""
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def compute_dtype(precision: str) -> torch.dtype | None:
    """The dtype the weights are cast to for inference (None: fp32, nothing cast)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


@dataclass(frozen=True)
class Budget:
    """How an in-process extraction spends the machine's cores.

    lanes: batches computed at once, each by its own thread with `threads` torch threads. On
    the CPU one batch on all cores loses to one batch per core: OpenMP's threads wait at every
    layer for the slowest of them, and a decoder or any other process taking a core for a
    moment stalls them all; independent lanes only lose the time actually taken (measured in
    benchmarks/results/extract_throughput.md). workers: decoding processes. On the CPU a photo's
    decode costs a few % of two VGG-16s, so one decoder feeds 8 cores; a GPU needs every core
    but one decoding."""

    lanes: int
    threads: int
    workers: int

    def describe(self) -> dict:
        return {"lanes": self.lanes, "threads_per_lane": self.threads, "decode_workers": self.workers}


MAX_LANES = 4  # each lane holds its own activations (about 0.5 GB for a VGG-16 batch of 32 in bf16)


def extraction_budget(device: torch.device, cores: int | None = None, lanes: int | None = None,
                      workers: int | None = None) -> Budget:
    """The budget from the core count; `lanes` and `workers` override their part (0 workers:
    decode in this process)."""
    cores = max(1, cores or os.cpu_count() or 1)
    if lanes is not None and lanes < 1:
        raise InputError(f"{{param}} must be at least 1, got {lanes}", param="lanes")
    if device.type == "cuda":
        lanes = lanes or 1
        workers = max(1, min(8, cores - 1)) if workers is None else workers
        return Budget(lanes=lanes, threads=max(1, cores // (lanes + workers)), workers=workers)
    lanes = lanes or min(cores, MAX_LANES)
    workers = max(1, cores // 8) if workers is None else workers
    return Budget(lanes=lanes, threads=max(1, cores // lanes), workers=workers)
