"""hashtagkit: hashtag recommendation for photos, built around the HARRISON benchmark.

Everything the command line does is a Python call (imported on first use, so `import
hashtagkit` stays instant and loads no torch):

    import hashtagkit as hk
    store = hk.prepare.demo("demo.zarr", n=600)                          # prepare demo
    hk.extract(store, ["vgg16-object=random", "vgg16-scene=random"])      # extract
    run = hk.fit(store, "knn", "runs/knn", view="both")                  # fit -> Run
    hk.evaluate(run)["recall@5"]                                          # evaluate -> Scores
    hk.Recommender.from_run(run).recommend(["photo.jpg"])                 # recommend
    X, Y = store.arrays(view="both", split="train")                       # for your own models

The layers, lowest first: `hashtagkit.stores` (the feature store), `hashtagkit.data` (dataset
readers) and `hashtagkit.backbones` (feature extractors), `hashtagkit.extraction` and
`hashtagkit.heads` (scikit-learn estimators), then runs, evaluation, recommend, benchmark,
the service and the CLI on top; `hashtagkit.metrics` is the one definition of every score.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> the module that defines it (or (module, its name there)); a module named here is
# never also an attribute of another meaning (`extract` is a function: extraction is the package)
_API: dict[str, str | tuple[str, str]] = {
    "prepare": ("hashtagkit.prepare", None),  # the module: prepare.harrison / posts / demo / planted
    "open_store": "hashtagkit.stores",
    "Store": "hashtagkit.stores",
    "load_backbone": "hashtagkit.backbones",
    "extract": "hashtagkit.extraction.run",
    "ExtractConfig": "hashtagkit.extraction.config",
    "make_head": "hashtagkit.heads",
    "HEADS": "hashtagkit.heads",
    "fit": "hashtagkit.runs",
    "Run": "hashtagkit.runs",
    "RunRecord": "hashtagkit.runs",
    "evaluate": "hashtagkit.evaluation",
    "Scores": "hashtagkit.evaluation",
    "bench": "hashtagkit.benchmark",
    "contact_sheet": "hashtagkit.show",
    "convert_caffemodel": "hashtagkit.backbones.caffe",
    "verify": ("hashtagkit.stores.verify", "verify"),
    "upgrade_store": "hashtagkit.stores",
    "Recommender": "hashtagkit.recommend",
    "InputError": "hashtagkit.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    where = _API.get(name)
    if where is None:
        raise AttributeError(f"module 'hashtagkit' has no attribute {name!r}")
    module, attr = where if isinstance(where, tuple) else (where, name)
    value = importlib.import_module(module)
    if attr is not None:
        value = getattr(value, attr)
    globals()[name] = value  # imported once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
