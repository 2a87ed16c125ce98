"""Every closed list of names a user chooses from, defined once, importing nothing heavy.

The library checks against these and the CLI offers them as its choices, without importing
torch (its start-up stays fast). tests/project/test_layout.py checks `HEAD_NAMES` against the
heads registry, `SPLITS` against the store's split codes, and the CLI's choices against these.
"""

from __future__ import annotations

HEAD_NAMES = ("mlp", "knn", "ovr", "popularity", "tagprop", "fusion")
VIEWS = ("object", "scene", "both")
SPLITS = ("test", "val", "train")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DECODE_MODES = ("default", "fast", "gpu")
FEATURE_DTYPES = ("float16", "float32")
RERANKS = ("none", "cooc")
THRESHOLDS = ("none", "global", "per-tag")
TAGS_FROM = ("auto", "json", "txt")  # where `prepare webdataset` finds a sample's hashtags
