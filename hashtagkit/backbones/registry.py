"""A small backbone registry in the manner of torchvision's `models/_api.py`.

A `BackboneSpec` knows its architecture, which feature block it fills (`object`, `scene`), the
width and layer of its output, its preprocessing and where its pretrained weights come from.
`load_backbone(name, source)` resolves the weights and returns a ready, eval-mode module plus
a provenance record. Weights are resolved in exactly one of three explicit ways:

- the default source of the spec (torchvision's weights through its hub cache, or a converted
  file in hashtagkit's weights folder);
- `PATH`: a local state-dict file, checked against the architecture;
- `random`: random initialisation, for smoke runs only, loudly warned and recorded as such.

Nothing ever falls back to random weights on its own.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from hashtagkit import provenance
from hashtagkit.backbones.preprocessing import (
    PREPROCESSINGS,
    Preprocessing,
    preprocessing_from_dict,
    preprocessing_name,
)
from hashtagkit.errors import InputError

RANDOM = "random"


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    block: str  # the store block it fills: "object" or "scene"
    dim: int
    layer: str  # which activation is the feature, in words
    preprocessing: Preprocessing
    build: Callable[[dict | None], nn.Module]  # state dict (or None for random) -> feature module
    default_source: Callable[[], Path]  # finds (or fetches) the default weights file, or raises InputError
    default_source_help: str = ""
    notes: dict = field(default_factory=dict)


BACKBONES: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    if spec.name in BACKBONES:
        raise ValueError(f"backbone {spec.name!r} registered twice")
    BACKBONES[spec.name] = spec
    return spec


def get_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise InputError(f"unknown backbone {name!r}: choose one of {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name]


def weights_dir() -> Path:
    """Where converted or downloaded hashtagkit weights live ($HASHTAGKIT_WEIGHTS overrides)."""
    if os.environ.get("HASHTAGKIT_WEIGHTS"):
        return Path(os.environ["HASHTAGKIT_WEIGHTS"])
    base = os.environ.get("HASHTAGKIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hashtagkit")
    return Path(base) / "weights"


def weights_file_payload(state: dict, metadata: dict) -> dict:
    """What `torch.save` writes for a hashtagkit weights file: the tensors plus what they expect.

    `metadata` has at least kind="weights", arch, block ("scene" | "object" | None),
    preprocessing (a `Preprocessing.describe()` dict, or None when unknown) and source."""
    return {"state_dict": state, "hashtagkit": {"kind": "weights", **metadata}}


def read_state_dict(path: Path) -> tuple[dict, dict]:
    """(state dict, hashtagkit metadata or {}) from a .pth file (weights only: never unpickles
    code). Plain state dicts (torchvision's own files) have no metadata."""
    if not path.is_file():
        raise InputError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged or foreign file
        raise InputError(f"{path} is not a loadable PyTorch weights file: {str(e).splitlines()[0]}") from None
    meta = {}
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        meta = state.get("hashtagkit") if isinstance(state.get("hashtagkit"), dict) else {}
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path} does not hold a state dict (name -> tensor)")
    return state, meta


def choose_preprocessing(spec: BackboneSpec, path: Path, meta: dict, asked: str | dict | None) -> Preprocessing:
    """The preprocessing to feed these weights: what the file says it expects must agree with
    the backbone's, unless the user chose explicitly (`asked`: a name of PREPROCESSINGS,
    'weights' for the file's own, 'backbone' for the spec's, or a describe() dict)."""
    own = meta.get("preprocessing")
    if isinstance(asked, dict):
        return preprocessing_from_dict(asked)
    if asked == "weights":
        if not own:
            raise InputError(f"{path} does not record its preprocessing: choose one of "
                             f"{', '.join(PREPROCESSINGS)} for {spec.name}")
        return preprocessing_from_dict(own)
    if asked == "backbone":
        return spec.preprocessing
    if asked:
        if asked not in PREPROCESSINGS:
            raise InputError(f"unknown preprocessing {asked!r}: choose one of "
                             f"{', '.join([*PREPROCESSINGS, 'weights', 'backbone'])}")
        return PREPROCESSINGS[asked]
    block = meta.get("block")
    if own and preprocessing_from_dict(own) != spec.preprocessing or block and block != spec.block:
        wants = preprocessing_name(preprocessing_from_dict(own)) if own else "an unknown preprocessing"
        raise InputError(
            f"{path} was made for {wants} (block {block or '?'}), but {spec.name} feeds "
            f"{preprocessing_name(spec.preprocessing)} (block {spec.block}): use the right file, or say which "
            f"pixels to feed with {{opt:preprocessing}} {spec.name}=weights (the file's) or ={preprocessing_name(spec.preprocessing)}"
        )
    return spec.preprocessing


def build_with_weights(make: Callable[[], nn.Module], state: dict, optional: tuple[str, ...] = ()) -> nn.Module:
    """`make()` on the meta device (no memory, no random initialisation: VGG-16's costs ~2 s)
    and then the state's tensors put in place (`load_state_dict(assign=True)`), cast to each
    parameter's dtype as a copying load would; the result equals `make()` + `load_state_dict`
    bit for bit (tested). Keys starting with one of `optional` may be absent: the caller removes
    those layers; any other missing or unexpected key is a RuntimeError as load_state_dict raises."""
    with torch.device("meta"):
        model = make()
    own = model.state_dict(keep_vars=True)
    state = {k: v.to(own[k].dtype).contiguous() if k in own and v.dtype != own[k].dtype else v.contiguous()
             for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)  # shapes checked by torch
    missing = [k for k in missing if not k.startswith(optional)] if optional else missing
    if missing or unexpected:
        raise RuntimeError(f"state dict does not match {type(model).__name__}\n"
                           f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model


def check_materialised(module: nn.Module, name: str) -> None:
    """No parameter or buffer may stay on the meta device (it would fail at the first forward)."""
    left = [k for k, v in [*module.named_parameters(), *module.named_buffers()] if v.is_meta]
    if left:
        raise RuntimeError(f"{name}: weights missing for {', '.join(left[:3])}")


class RandomWeightsWarning(UserWarning):
    pass


def warn_random(name: str) -> None:
    warnings.warn(
        f"backbone {name} uses RANDOM weights: its features carry no pretrained knowledge; "
        "use this only for smoke tests (recorded in the store as source 'random')",
        RandomWeightsWarning, stacklevel=3,
    )


@dataclass
class LoadedBackbone:
    spec: BackboneSpec
    module: nn.Module
    weights: dict  # provenance: source, path, sha256 (and the file's own hashtagkit metadata)
    preprocessing: Preprocessing  # what these weights are fed (the spec's unless the file or the user said)

    def describe(self, columns: tuple[int, int]) -> dict:
        return {
            "name": self.spec.block,
            "backbone": self.spec.name,
            "columns": list(columns),
            "dim": self.spec.dim,
            "layer": self.spec.layer,
            "weights": self.weights,
            "preprocessing": self.preprocessing.describe(),
        }


def load_backbone(name: str, source: str | None = None, seed: int = 0, expect_sha256: str | None = None,
                  preprocessing: str | dict | None = None) -> LoadedBackbone:
    """Resolve weights and build the module. `source` is None (the spec's default), a path or
    'random'. `expect_sha256` (from a store's provenance) refuses different weights.
    `preprocessing` overrides the check of the file's own (see `choose_preprocessing`)."""
    spec = get_spec(name)
    if source == RANDOM:
        warn_random(name)
        torch.manual_seed(seed)
        module = spec.build(None)
        weights = {"source": RANDOM, "seed": seed, "sha256": None, "path": None}
        chosen = choose_preprocessing(spec, Path(RANDOM), {}, preprocessing)
    else:
        path = Path(source) if source else spec.default_source()
        sha = provenance.sha256_file_cached(path) if path.is_file() else None
        if expect_sha256 and sha != expect_sha256:
            raise InputError(
                f"{name}: weights at {path} have sha256 {str(sha)[:12]}..., but the store was extracted with "
                f"{expect_sha256[:12]}...: pass the same weights file"
            )
        state, meta = read_state_dict(path)
        chosen = choose_preprocessing(spec, path, meta, preprocessing)
        try:
            module = spec.build(state)
            check_materialised(module, name)
        except RuntimeError as e:  # load_state_dict's shape / key mismatch
            raise InputError(f"{path} does not fit {name}: {str(e).splitlines()[0]} {str(e).splitlines()[1:2]}") from None
        weights = {"source": "default" if not source else "file", "path": str(path.resolve()), "sha256": sha}
        if meta:
            weights["metadata"] = {k: v for k, v in meta.items() if k != "preprocessing"}
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return LoadedBackbone(spec=spec, module=module, weights=weights, preprocessing=chosen)


def parse_backbone_option(text: str) -> tuple[str, str | None]:
    """`NAME`, `NAME=PATH` or `NAME=random` (the `--backbone` option)."""
    name, sep, source = text.partition("=")
    get_spec(name)
    if sep and not source:
        raise InputError(f"{{opt:backbones}} {text!r}: give a weights path or 'random' after '='")
    return name, (source or None)
