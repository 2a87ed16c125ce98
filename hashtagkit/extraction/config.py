"""How an extraction runs: `ExtractConfig`, checked whole before any weights are loaded.

Imports no torch (the CLI builds one at start-up); the one check that asks whether CUDA is
there (`decode="gpu"`) imports it then.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

from hashtagkit.choices import DECODE_MODES, DEVICES, FEATURE_DTYPES, PRECISIONS
from hashtagkit.errors import InputError


@dataclass(frozen=True)
class ExtractConfig:
    """The settings of `hashtagkit.extract` (the CLI's `extract` options, by the same names).

    device: auto (CUDA when there is one), cpu or cuda. precision: auto (fp16 on CUDA, bf16 on a
    CPU that has it, else fp32), fp32, bf16 or fp16. batch_size: photos per forward pass.
    workers: decode processes (None: by the device, see `devices.extraction_budget`). lanes:
    batches in the model at once on a CPU (None: by the cores). decode: default, fast (JPEGs
    decoded reduced) or gpu (nvJPEG). compile: torch.compile the model, auto (where it pays: see
    `compiling.plan_compile`), on or off (True/False too). dtype: the features'
    storage type. chunk_rows: rows per store chunk (None: about 4 MiB a chunk). images: the
    photo folder (None: the store's). overwrite: extract again, replacing the features (else a
    run resumes). allow_truncated / allow_mixed_precision / allow_other_images: see `extract`.
    cluster ("local" or "local:N") or scheduler (a Dask address): compute the chunks on Dask.
    progress: show a progress bar.
    """

    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 32
    workers: int | None = None
    lanes: int | None = None
    decode: str = "default"
    compile: bool | str = "auto"
    dtype: str = "float16"
    chunk_rows: int | None = None
    images: str | Path | None = None
    overwrite: bool = False
    allow_truncated: bool = False
    allow_mixed_precision: bool = False
    allow_other_images: bool = False
    cluster: str | None = None
    scheduler: str | None = None
    progress: bool = True

    @property
    def distributed(self) -> bool:
        """Whether the chunks are computed on Dask workers."""
        return bool(self.cluster or self.scheduler)

    def replace(self, **changes) -> ExtractConfig:
        return dataclasses.replace(self, **changes)

    def check(self) -> None:
        """Refuse settings this run cannot use, each error naming its parameter."""
        for name, allowed in (("device", DEVICES), ("precision", PRECISIONS), ("dtype", FEATURE_DTYPES)):
            if getattr(self, name) not in allowed:
                raise InputError(f"{{param}} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}",
                                 param=name)
        for name, low, none in (("batch_size", 1, False), ("workers", 0, True), ("lanes", 1, True),
                                ("chunk_rows", 1, True)):
            value = getattr(self, name)
            if (value is None and none) or (isinstance(value, int) and not isinstance(value, bool) and value >= low):
                continue
            raise InputError(f"{{param}} must be an integer >= {low}, got {value!r}", param=name)
        if self.cluster and self.scheduler:
            raise InputError("{param} and scheduler are exclusive: choose one", param="cluster")
        if self.cluster:
            parse_cluster(self.cluster)
        if self.scheduler:
            parse_scheduler(self.scheduler)
        self.check_decode()
        self.check_compile()

    def check_decode(self) -> None:
        """Refuse a decode mode this run cannot do."""
        decode = self.decode
        if decode not in DECODE_MODES:
            raise InputError(f"{{param}} must be one of {', '.join(DECODE_MODES)}, got {decode!r}", param="decode")
        if decode != "default" and self.distributed:
            raise InputError(f"{{param}} {decode} is for an in-process extraction; Dask workers decode the default way",
                             param="decode")
        if decode == "gpu":
            import torch

            if self.device == "cpu" or not torch.cuda.is_available():
                raise InputError("{param} gpu decodes JPEGs with nvJPEG on a CUDA device: "
                                 + ("ask for device cuda" if torch.cuda.is_available() else "none is available")
                                 + " (use decode default or fast)", param="decode")

    def check_compile(self) -> None:
        """A compiled model (asked for: auto decides for itself) runs in this process."""
        from hashtagkit.extraction.compiling import normalise_mode

        if normalise_mode(self.compile) == "on" and self.distributed:
            raise InputError("{param} is for an in-process extraction; Dask workers run the model uncompiled",
                             param="compile")


SCHEDULER = re.compile(r"^(?:(tcp|tls|ws|wss|ucx)://)?(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


def parse_cluster(text: str) -> int | None:
    """`local` (None: the default size) or `local:N` -> N worker processes."""
    m = re.fullmatch(r"local(?::(\d+))?", text.strip())
    if not m or (m.group(1) is not None and int(m.group(1)) < 1):
        raise InputError(f"{{param}} takes local or local:N (N >= 1 worker processes), got {text!r}", param="cluster")
    return int(m.group(1)) if m.group(1) else None


def parse_scheduler(text: str) -> str:
    """A scheduler address, `tcp://HOST:PORT` (the scheme defaults to tcp)."""
    m = SCHEDULER.fullmatch(text.strip())
    if not m or not 0 < int(m.group(3)) < 65536:
        raise InputError(f"{{param}} takes a Dask scheduler address such as tcp://10.0.0.5:8786, got {text!r}",
                         param="scheduler")
    return text.strip() if m.group(1) else f"tcp://{text.strip()}"


def decode_record(mode: str) -> dict:
    """How a run decodes pixels, as recorded (the run's `decode`; a block's preprocessing when
    not the default, since the pixels differ)."""
    from hashtagkit.images import draft_side

    if mode == "gpu":
        return {"mode": "gpu", "jpeg": "nvJPEG (torchvision.io.decode_jpeg), torchvision antialiased resize",
                "other_formats": "Pillow"}
    return {"mode": mode, "jpeg_draft_min_side": draft_side(mode)}
