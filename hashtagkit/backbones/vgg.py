"""VGG-16 fc7 (after ReLU, 4,096-d): the paper's feature, from an ImageNet and a Places model."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from hashtagkit.backbones.preprocessing import IMAGENET, PLACES365_CAFFE
from hashtagkit.backbones.registry import BackboneSpec, build_with_weights, register, weights_dir
from hashtagkit.backbones.torchvision_weights import torchvision_source
from hashtagkit.errors import InputError

PLACES_FILE = "vgg16_places365.pth"


VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG16(nn.Module):
    """torchvision's VGG-16 (configuration D, no batch norm): the same modules under the same
    names, so the same state dict and the same forward, without importing torchvision (which
    imports torch._dynamo: about a second of every start). Weights come from a file only;
    random weights are made by torchvision itself (`vgg16_fc7`)."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for v in VGG16_LAYERS:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(p=0.5),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(p=0.5),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def vgg16_fc7(state: dict | None) -> nn.Module:
    """VGG-16 cut after fc7's ReLU: features -> avgpool -> flatten -> classifier[:5].

    The classifier's last layer (fc8) is not needed for the feature, so a state dict without it
    (a converted Caffe model with fc8 dropped) loads, and one with any number of classes does.
    Random weights (`state` None) are torchvision's own initialisation, drawn from the caller's
    seed, as stores made with `random` always were; given weights are put in place without any
    initialisation (`build_with_weights`).
    """
    n_out = state["classifier.6.weight"].shape[0] if state and "classifier.6.weight" in state else 1000
    if state is None:
        from torchvision.models import vgg16

        model = vgg16(weights=None, num_classes=n_out)
    else:
        model = build_with_weights(lambda: VGG16(num_classes=n_out), state, optional=("classifier.6.",))
    model.classifier = model.classifier[:5]  # Linear, ReLU, Dropout, Linear, ReLU = fc7 after ReLU
    return model


def imagenet_source() -> Path:
    from torchvision.models import VGG16_Weights

    return torchvision_source(VGG16_Weights.IMAGENET1K_V1, "vgg16-object")


def places_source() -> Path:
    path = weights_dir() / PLACES_FILE
    if path.is_file():
        return path
    raise InputError(
        f"vgg16-scene: no converted Places365 VGG-16 at {path}. Download vgg16_places365.caffemodel "
        f"(the Places365 project, CSAIL MIT) and run `hashtagkit convert-caffe vgg16_places365.caffemodel "
        f"--arch vgg16 -o {path}`, or pass {{opt:backbones}} vgg16-scene=PATH"
    )


register(BackboneSpec(
    name="vgg16-object", block="object", dim=4096, layer="fc7 after ReLU", preprocessing=IMAGENET,
    build=vgg16_fc7, default_source=imagenet_source,
    notes={"weights": "torchvision VGG16_Weights.IMAGENET1K_V1"},
))
register(BackboneSpec(
    name="vgg16-scene", block="scene", dim=4096, layer="fc7 after ReLU", preprocessing=PLACES365_CAFFE,
    build=vgg16_fc7, default_source=places_source,
    notes={"weights": "Places365 VGG-16 (Caffe), converted with hashtagkit convert-caffe"},
))
