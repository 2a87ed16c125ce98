"""Heads: interchangeable classifiers from store features to one score per hashtag.

`HEADS` maps a name (as given to `hashtagkit fit --head`) to its class; `make_head` builds
one from parameters (checked against the head's `param_spec`), `Head.load` restores a saved
one, `params_help` lists every head's parameters for `fit --help`.
"""

from __future__ import annotations

from typing import Any

from hashtagkit.errors import InputError
from hashtagkit.heads.base import Head, InvalidParameterError, NotFittedError, Param
from hashtagkit.heads.fusion import FusionHead
from hashtagkit.heads.knn import KNNHead
from hashtagkit.heads.mlp import MLPHead
from hashtagkit.heads.ovr import OVRHead
from hashtagkit.heads.popularity import PopularityHead
from hashtagkit.heads.tagprop import TagPropHead

HEADS: dict[str, type[Head]] = {cls.name: cls for cls in (MLPHead, KNNHead, OVRHead, PopularityHead, TagPropHead,
                                                                      FusionHead)}


def make_head(name: str, **params: Any) -> Head:
    """A head from its name and parameters. An unknown head, an unknown parameter or a value
    its `param_spec` refuses is an InputError (InvalidParameterError is one), so the CLI
    reports it in one line; the same values are checked again by `fit`."""
    if name not in HEADS:
        raise InputError(f"unknown head {name!r}: choose one of {', '.join(HEADS)}")
    head = HEADS[name]().set_params(**params)
    head._validate_params()
    return head


def params_help() -> list[str]:
    """`fit --help`'s list: each head's name, then one indented line per parameter."""
    lines = []
    for name, klass in HEADS.items():
        lines.append(f"{name}:" + ("" if klass.param_spec else " no parameters"))
        lines += [f"  {line}" for line in klass.describe_params()]
    return lines


__all__ = ["FusionHead", "HEADS", "Head", "InvalidParameterError", "KNNHead", "MLPHead", "NotFittedError", "OVRHead", "Param",
           "PopularityHead", "TagPropHead", "make_head", "params_help"]
