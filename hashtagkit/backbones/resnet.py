"""ResNet-50 penultimate features (2,048-d): the second example that keeps the registry general."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from hashtagkit.backbones.preprocessing import IMAGENET
from hashtagkit.backbones.registry import BackboneSpec, build_with_weights, register
from hashtagkit.backbones.torchvision_weights import torchvision_source


def resnet50_pool(state: dict | None) -> nn.Module:
    from torchvision.models import resnet50  # imported when used: it costs a second of every start

    # random: torchvision's initialisation from the caller's seed; given weights: no initialisation
    model = resnet50(weights=None) if state is None else build_with_weights(lambda: resnet50(weights=None), state)
    model.fc = nn.Identity()  # global average pool output
    return model


def imagenet_source() -> Path:
    from torchvision.models import ResNet50_Weights

    return torchvision_source(ResNet50_Weights.IMAGENET1K_V1, "resnet50-object")


register(BackboneSpec(
    name="resnet50-object", block="object", dim=2048, layer="global average pool", preprocessing=IMAGENET,
    build=resnet50_pool, default_source=imagenet_source,
    notes={"weights": "torchvision ResNet50_Weights.IMAGENET1K_V1"},
))
