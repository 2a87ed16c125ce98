"""The model: every backbone in one pass over a decoded batch, device and precision aware.

All backbones run on their own preprocessed input (normalised here), in inference mode,
channels_last, on weights cast to bf16 (a CPU that has it) or fp16 (CUDA) unless fp32 is asked
for. `Extractor` is shared by extraction (in process and on Dask workers) and by `Recommender`;
`rebuild_extractor` makes the extractor a store's features were computed with, from its record.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hashtagkit.backbones import LoadedBackbone, Preprocessing, load_backbone
from hashtagkit.devices import compute_dtype, pick_device, pick_precision
from hashtagkit.errors import InputError


class FeatureModel(nn.Module):
    """Every backbone on its own preprocessed input, outputs concatenated in block order."""

    def __init__(self, backbones: Sequence[LoadedBackbone]):
        super().__init__()
        self.nets = nn.ModuleList([b.module for b in backbones])
        distinct = list(dict.fromkeys(b.preprocessing for b in backbones))
        self.transforms = distinct
        self.input_of = [distinct.index(b.preprocessing) for b in backbones]

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([net(inputs[i]).float() for net, i in zip(self.nets, self.input_of, strict=True)], dim=1)


class Extractor:
    """The model half of the engine, shared by `extract` and `recommend`.

    bf16 and fp16 run on weights cast to that type, not under autocast: autocast casts every
    weight again at every call (VGG-16's fc6 alone is 103M values: benchmarks/results/
    roofline_extract.md); the features stay within bf16 tolerance of the fp32 forward
    (tests/extraction/test_extract.py checks it). The backbones' modules are the
    extractor's from then on (moved, cast and set to channels_last in place). Calls may come from
    several threads at once (the engine's lanes): nothing here changes state after __init__."""

    def __init__(self, backbones: Sequence[LoadedBackbone], device: torch.device, precision: str,
                 compile_batch: int | None = None):
        self.backbones = list(backbones)
        self.device, self.precision = device, precision
        self.dtype = compute_dtype(precision)
        self.model = FeatureModel(self.backbones).to(device).to(memory_format=torch.channels_last).eval()
        if self.dtype is not None:
            self.model.to(self.dtype)
        elif any(p.dtype != torch.float32 for p in self.model.parameters()):
            raise ValueError("fp32 asked for backbones whose weights an earlier Extractor cast to bf16/fp16: "
                             "load them again")
        self.dim = sum(b.spec.dim for b in self.backbones)
        # `extract --compile`: the model compiled for one batch shape (inductor, weights frozen as
        # constants: oneDNN prepacking, conv+ReLU fusion); a shorter batch is padded to it, so the
        # last batch of a run never compiles a second graph. Compiled before the lanes start
        # (`compile`), then called from every lane's thread like the eager model.
        self.compile_batch, self.forward = None, self.model
        if compile_batch:
            self.compile_lazily(compile_batch)

    def compile_lazily(self, batch_size: int) -> None:
        """Run the model compiled for batches of `batch_size` from now on; the first call compiles."""
        self.compile_batch = batch_size
        self.forward = torch.compile(self.model, dynamic=False, options={"freezing": True})

    def compile(self, batch_size: int) -> float:
        """Compile the model for batches of `batch_size` now, on a batch of zeros (so a compile
        that fails fails before any photo, and its cost is known); returns the seconds it took.
        On failure (an `InputError` naming the option) the extractor stays uncompiled."""
        self.compile_lazily(batch_size)
        zeros = [torch.zeros(batch_size, 3, t.crop, t.crop, dtype=torch.uint8) for t in self.transforms]
        started = time.perf_counter()
        try:
            self(zeros)
        except BaseException:
            self.compile_batch, self.forward = None, self.model
            raise
        return time.perf_counter() - started

    def architecture(self) -> list[str]:
        """Each backbone's name and layer structure (not its weights): what a compiled graph of
        this model depends on besides batch, precision and device."""
        return [f"{b.spec.name}:{hashlib.sha256(repr(b.module).encode()).hexdigest()[:16]}" for b in self.backbones]

    @property
    def transforms(self) -> list[Preprocessing]:
        return self.model.transforms

    @torch.inference_mode()
    def __call__(self, inputs: list[torch.Tensor]) -> np.ndarray:
        """One tensor per preprocessing (`transforms`): uint8 pixels (a decode worker's) or
        already normalised float32 -> (N, dim) float32 features."""
        inputs = [self.prepare(x, t) for x, t in zip(inputs, self.transforms, strict=True)]
        if not self.compile_batch:
            return self.model(inputs).float().cpu().numpy()
        n, size, out = len(inputs[0]), self.compile_batch, []
        for start in range(0, n, size):
            part = [x[start : start + size] for x in inputs]
            m = len(part[0])
            if m < size:  # zeros after the photos: their rows are dropped below
                part = [torch.cat([x, x.new_zeros((size - m, *x.shape[1:]))]).contiguous(memory_format=torch.channels_last)
                        for x in part]
            out.append(self.compiled(part)[:m].float().cpu())
        return torch.cat(out).numpy()

    def compiled(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """The compiled model's forward; a compile that fails here (inductor on the CPU needs a
        C++ compiler, Triton on CUDA a supported GPU) is the user's to avoid: one line, not the
        compiler's traceback."""
        try:
            return self.forward(inputs)
        except Exception as e:
            if not type(e).__module__.startswith(("torch._dynamo", "torch._inductor")):
                raise
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise InputError(f"{{opt:compile}}: torch.compile could not build the model on this machine ({first}); "
                             "run without {opt:compile}") from None

    def prepare(self, x: torch.Tensor, transform: Preprocessing) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = transform.normalize(x)
        return x.to(self.dtype or torch.float32).contiguous(memory_format=torch.channels_last)

    def describe(self) -> str:
        """How the model computes, for the run's record."""
        how = f"{self.precision} weights, channels_last" if self.dtype else "fp32, channels_last"
        return how + (f", torch.compile (batch {self.compile_batch})" if self.compile_batch else "")

    def columns(self) -> list[tuple[int, int]]:
        out, start = [], 0
        for b in self.backbones:
            out.append((start, start + b.spec.dim))
            start += b.spec.dim
        return out


def rebuild_extractor(blocks: list[dict], weights: dict[str, str], device: str, precision: str,
                      stored_precision: str | None = None) -> Extractor:
    """The extractor a store's features were computed with, from its recorded `blocks`: same
    backbones, weights (sha256 checked; `weights` maps a backbone to a moved file),
    preprocessing; `precision` auto keeps the store's (`stored_precision`) where this device
    can run it."""
    if not blocks:
        raise InputError("this run's store has no image features: fit on a store made by `hashtagkit extract`")
    if any(b.get("backbone") == "planted" for b in blocks):
        raise InputError("this run was fitted on planted (synthetic) features: there is no image extractor to rebuild")
    loaded = []
    for b in blocks:
        w = b["weights"]
        # the pixels the store's features were computed from, whatever the weights file says now
        recorded = b.get("preprocessing")
        if w.get("source") == "random":
            loaded.append(load_backbone(b["backbone"], "random", seed=int(w.get("seed") or 0), preprocessing=recorded))
            continue
        path = weights.get(b["backbone"]) or w.get("path")
        if not path or not Path(path).is_file():
            raise InputError(f"{b['backbone']}: weights file {path} not found; pass {{opt:weights}} {b['backbone']}=PATH "
                             f"(sha256 {str(w.get('sha256'))[:12]}...)")
        loaded.append(load_backbone(b["backbone"], path, expect_sha256=w.get("sha256"), preprocessing=recorded))
    dev = pick_device(device)
    if precision == "auto":  # the store's own precision where this device can run it
        stored = stored_precision
        precision = stored if stored in ("fp32", "bf16") or (stored == "fp16" and dev.type == "cuda") else "auto"
    return Extractor(loaded, dev, pick_precision(precision, dev))
