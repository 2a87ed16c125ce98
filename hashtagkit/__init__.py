"""hashtagkit: hashtag recommendation for photos, built around the HARRISON benchmark.

Everything the command line does is a Python call, named here (imported on first use, so
`import hashtagkit` stays instant and loads no torch):

    import hashtagkit
    store = hashtagkit.prepare_demo("demo.zarr", n=600)                # prepare demo
    hashtagkit.extract_features(store.path, [hashtagkit.load_backbone("vgg16-object", "random")])
    run = hashtagkit.fit_run(store.path, "knn", "runs/knn")            # fit
    hashtagkit.evaluate_run(run)["recall@5"]                           # evaluate
    hashtagkit.Recommender.from_run(run).recommend(["photo.jpg"])      # recommend

The layers: `hashtagkit.stores` (the feature store), `hashtagkit.data` (dataset readers),
`hashtagkit.backbones` (feature extractors), `hashtagkit.heads` (the classifiers, scikit-learn
style), `hashtagkit.metrics` (the one definition of every score).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> the module that defines it (or (module, its name there))
_API: dict[str, str | tuple[str, str]] = {
    "open_store": "hashtagkit.stores",
    "create_store": "hashtagkit.stores",
    "Store": "hashtagkit.stores",
    "prepare_harrison": "hashtagkit.prepare",
    "prepare_posts": "hashtagkit.prepare",
    "prepare_demo": "hashtagkit.prepare",
    "prepare_planted": "hashtagkit.prepare",
    "load_backbone": "hashtagkit.backbones",
    "extract_features": ("hashtagkit.extract", "extract"),  # `hashtagkit.extract` is the module
    "make_head": "hashtagkit.heads",
    "HEADS": "hashtagkit.heads",
    "fit_run": "hashtagkit.runs",
    "evaluate_run": "hashtagkit.evaluate",
    "run_bench": "hashtagkit.bench",
    "Recommender": "hashtagkit.recommend",
    "InputError": "hashtagkit.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    where = _API.get(name)
    if where is None:
        raise AttributeError(f"module 'hashtagkit' has no attribute {name!r}")
    module, attr = where if isinstance(where, tuple) else (where, name)
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # imported once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
