"""Finding torchvision's pretrained weights in its hub cache, or fetching them where allowed."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from hashtagkit.errors import InputError


def cached_path(weights) -> Path:
    """Where torch.hub keeps (or would keep) the file of a torchvision `Weights` enum member."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def torchvision_source(weights, backbone: str) -> Path:
    """The cached weights file; downloaded (hash-checked by torchvision) if missing and the
    network allows; otherwise an error that says exactly where to put the file."""
    path = cached_path(weights)
    if path.is_file():
        return path
    try:
        weights.get_state_dict(progress=True, check_hash=True)
    except Exception as e:  # no network, proxy, disk: all end the same way for the user
        raise InputError(
            f"{backbone}: pretrained weights {path.name} are not in the torch hub cache ({path}) and could not be "
            f"downloaded ({type(e).__name__}). Copy {weights.url} to that path (or set TORCH_HOME), "
            f"or pass {{opt:backbones}} {backbone}=PATH"
        ) from None
    return path
