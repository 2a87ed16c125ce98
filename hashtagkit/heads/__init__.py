"""Heads: interchangeable classifiers from store features to one score per hashtag.

`HEADS` maps a name (as given to `hashtagkit fit --head`) to its class; `make_head` builds
one from parameters, `Head.load` restores a saved one.
"""

from __future__ import annotations

from typing import Any

from hashtagkit.errors import InputError
from hashtagkit.heads.base import Head, NotFittedError
from hashtagkit.heads.knn import KNNHead
from hashtagkit.heads.mlp import MLPHead
from hashtagkit.heads.ovr import OVRHead
from hashtagkit.heads.popularity import PopularityHead

HEADS: dict[str, type[Head]] = {cls.name: cls for cls in (MLPHead, KNNHead, OVRHead, PopularityHead)}


def make_head(name: str, **params: Any) -> Head:
    if name not in HEADS:
        raise InputError(f"unknown head {name!r}: choose one of {', '.join(HEADS)}")
    return HEADS[name]().set_params(**params)


__all__ = ["HEADS", "Head", "KNNHead", "MLPHead", "NotFittedError", "OVRHead", "PopularityHead", "make_head"]
