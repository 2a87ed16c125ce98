"""Whether `extract` compiles its model: `compile="auto"` (the default) compiles where it pays.

torch.compile (inductor, weights frozen as constants: oneDNN prepacking, conv+ReLU fusion) runs
VGG-16 to fc7 in bf16 on a CPU at ~1.3-1.5x the eager model (benchmarks/results/
roofline_extract.md), with the same features to bf16 rounding, but compiles first: minutes on
a cold cache, seconds when inductor's on-disk cache already holds the graph (an earlier run on
this machine compiled the same architecture, batch size and precision; the weights' values are
not part of its key). `plan_compile` weighs the photos to extract against that cost: auto
compiles when their expected saving is at least `MARGIN` times the expected compile. The compile
seconds of each finished compile are remembered beside inductor's cache (`remember`), so a warm
cache is known, and clearing that cache forgets them too.

Auto compiles on a CPU in bf16 only, in process: where it was measured. `"on"` compiles anyway
(and fails in one line where it cannot), `"off"` never.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from hashtagkit.errors import InputError

COMPILE_MODES = ("auto", "on", "off")
# Estimates for the decision only (what a run did is measured and recorded): a cold compile of
# one VGG-16 to fc7 at batch 32 (~15 s measured on a 2-core AVX-512 bf16 EPYC, ~100 s once on a
# 2-core AMX Xeon: taken between the two), and the seconds a photo saves per backbone compiled
# (eager vs compiled engine, steady state: 7.5 ms on that Xeon, 2.9 ms on the EPYC, where the
# eager model is already at the matmul peak; benchmarks/results/roofline_extract.md).
COLD_SECONDS_PER_BACKBONE = 30.0
SAVED_SECONDS_PER_PHOTO_PER_BACKBONE = 0.004
MARGIN = 2.0  # another CPU may gain less than the one measured: compile only where it pays twice
MEMO = "hashtagkit-compiled.json"


def normalise_mode(value: object) -> str:
    """`compile` as given (auto/on/off, or a bool: True = on, False = off) -> auto, on or off."""
    if value is None:
        return "auto"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, str) and value in COMPILE_MODES:
        return value
    raise InputError(f"{{param}} must be one of {', '.join(COMPILE_MODES)} (or True/False), got {value!r}",
                     param="compile")


@dataclass(frozen=True)
class CompilePlan:
    """What `extract` does about compiling, and why (recorded in the run)."""

    asked: str  # auto, on or off
    compile: bool
    why: str
    expected_seconds: float | None = None  # the compile's expected cost (auto on a CPU)
    cache: str | None = None  # "warm" (compiled here before) or "cold"
    key: str | None = None  # the graph's `cache_key`: what `remember` files a finished compile under

    def record(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None and k != "key"}


def cache_dir() -> Path:
    """Inductor's on-disk cache (TORCHINDUCTOR_CACHE_DIR, else its default under the temp dir),
    found as inductor finds it but without its side effects (it creates the folder and sets the
    variable for the whole process)."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    return Path(os.path.abspath(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or default_cache_dir()))


def cache_key(architecture: Sequence[str], batch_size: int, precision: str, device: str) -> str:
    """What inductor's cache entry for the model depends on, as far as a run can tell: the
    backbones' architectures (not their weights), the batch shape, precision, device, the torch
    version and the CPU."""
    import torch

    text = json.dumps([list(architecture), batch_size, precision, device, torch.__version__, platform.machine(),
                       cpu_model()])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def remembered_seconds(key: str) -> float | None:
    """The seconds the last finished compile of `key` took on this machine, if its cache is there."""
    try:
        memo = json.loads((cache_dir() / MEMO).read_text())
        return float(memo[key]["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remember(key: str, seconds: float) -> None:
    """Note that `key` compiled (its graph is now in inductor's cache) and how long it took.
    Best effort: a cache that cannot be written only makes the next estimate a cold one."""
    path = cache_dir() / MEMO
    try:
        memo = json.loads(path.read_text()) if path.is_file() else {}
        if not isinstance(memo, dict):
            memo = {}
    except (OSError, ValueError):
        memo = {}
    memo[key] = {"seconds": round(seconds, 2)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(memo, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass


def has_compiler() -> bool:
    """Inductor on the CPU writes C++ and needs a compiler to build it."""
    from torch._inductor import config

    cxx = config.cpp.cxx
    names = [c for c in (cxx if isinstance(cxx, tuple | list) else (cxx,)) if c] or ["g++"]
    return any(shutil.which(c) for c in names)


def plan_compile(asked: object, *, device: str, precision: str, photos: int, architecture: Sequence[str],
                 batch_size: int, distributed: bool) -> CompilePlan:
    """Whether this run compiles: `asked` on/off decides; auto compiles on a CPU, in bf16, in
    process, with a C++ compiler, when `photos` would save `MARGIN` times the expected compile
    (the remembered seconds of a warm cache, else `COLD_SECONDS_PER_BACKBONE` each)."""
    mode = normalise_mode(asked)
    if photos <= 0:
        return CompilePlan(mode, False, "no photos to extract")
    key = cache_key(architecture, batch_size, precision, device)

    def plan(compile: bool, why: str, expected: float | None = None, cache: str | None = None) -> CompilePlan:
        return CompilePlan(mode, compile, why, expected, cache, key)

    if mode == "on":
        return plan(True, "asked for")
    if mode == "off":
        return plan(False, "asked not to")
    if distributed:
        return plan(False, "Dask workers run the model uncompiled")
    if device != "cpu":
        return plan(False, f"auto compiles on a CPU only (not measured on {device}: ask for it)")
    if precision != "bf16":
        return plan(False, f"auto compiles bf16 only (not measured in {precision}: ask for it)")
    n = max(1, len(architecture))
    warm = remembered_seconds(key)
    expected = warm if warm is not None else COLD_SECONDS_PER_BACKBONE * n
    cache = "warm" if warm is not None else "cold"
    needed = int(MARGIN * expected / (SAVED_SECONDS_PER_PHOTO_PER_BACKBONE * n)) + 1
    if photos < needed:
        return plan(False, f"{photos:,} photos to extract: compiling pays from ~{needed:,} "
                           f"(~{expected:.0f} s to compile, {cache} cache)", expected, cache)
    if not has_compiler():
        return plan(False, "no C++ compiler for inductor (install g++ to compile)", expected, cache)
    return plan(True, f"{photos:,} photos to extract: compiling (~{expected:.0f} s, {cache} cache) "
                      f"pays from ~{needed:,}", expected, cache)
