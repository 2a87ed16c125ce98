"""Heads: interchangeable classifiers from store features to one score per hashtag.

`HEADS` maps a name (as given to `hashtagkit fit --head`) to its class; `make_head` builds
one from parameters (checked against the head's `param_spec`), `Head.load` restores a saved
one, `params_help` lists every head's parameters for `fit --help`. Every head is a
scikit-learn estimator (`hashtagkit.heads.estimator`).

Each head's module is imported when its head is first asked for (`HEADS[name]`, `make_head`,
`Head.load`, `from hashtagkit.heads import KNNHead`): a head brings scikit-learn and its own
libraries (torch, faiss), so importing this package, as `hashtagkit recommend` and the CLI do
at start, loads none of them; a run loads those of its one head.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any

from hashtagkit.errors import InputError
from hashtagkit.heads.base import Head, InvalidParameterError, Param

# name -> (module, class): the registry, in the order `fit --help` lists the heads
_WHERE = {
    "mlp": ("hashtagkit.heads.mlp", "MLPHead"),
    "knn": ("hashtagkit.heads.knn", "KNNHead"),
    "ovr": ("hashtagkit.heads.ovr", "OVRHead"),
    "popularity": ("hashtagkit.heads.popularity", "PopularityHead"),
    "tagprop": ("hashtagkit.heads.tagprop", "TagPropHead"),
    "fusion": ("hashtagkit.heads.fusion", "FusionHead"),
}
_CLASSES = {cls: where for where, cls in _WHERE.values()}


class _Registry(Mapping[str, type[Head]]):
    """Head name -> class, importing a head's module on first use (names alone import nothing)."""

    def __getitem__(self, name: str) -> type[Head]:
        module, cls = _WHERE[name]
        return getattr(importlib.import_module(module), cls)

    def __iter__(self) -> Iterator[str]:
        return iter(_WHERE)

    def __len__(self) -> int:
        return len(_WHERE)

    def __repr__(self) -> str:
        return f"HEADS({', '.join(_WHERE)})"


HEADS: Mapping[str, type[Head]] = _Registry()


def __getattr__(name: str) -> Any:
    """The head classes and scikit-learn's NotFittedError, imported when first named."""
    if name in _CLASSES:
        value = getattr(importlib.import_module(_CLASSES[name]), name)
    elif name == "NotFittedError":  # what predicting with an unfitted head raises
        from sklearn.exceptions import NotFittedError as value
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


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
