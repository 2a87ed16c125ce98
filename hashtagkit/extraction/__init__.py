"""Extraction: photos -> backbone features in the store, resumable, in process or on Dask.

The pipeline, one module each:

- `config`: `ExtractConfig`, the settings, checked before any weights load (no torch);
- `reader`: a row -> decoded, resized uint8 pixels per preprocessing, in decode workers;
- `engine`: `Extractor`, every backbone in one pass (device, precision, channels_last);
- `plan`: the feature arrays made or checked, the chunks still to do;
- `record`: the store's `extraction` record: who computes which chunk, resume checks;
- `chunks`: one chunk's rows gathered before the store writes it whole;
- `local`: the in-process runner (decode processes -> model lanes -> chunk writer);
- `distributed`: the Dask runner (one task per chunk), built on the same reader and engine;
- `run`: `extract`, the entry that ties them together.

The store's own files (the aside group of an overwrite, the swap, the lock) belong to
`hashtagkit.stores`. Names are imported on first use, so `ExtractConfig` loads no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "extract": "hashtagkit.extraction.run",
    "load_backbones": "hashtagkit.extraction.run",
    "Summary": "hashtagkit.extraction.run",
    "ExtractConfig": "hashtagkit.extraction.config",
    "Extractor": "hashtagkit.extraction.engine",
    "rebuild_extractor": "hashtagkit.extraction.engine",
}

__all__ = list(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'hashtagkit.extraction' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value
