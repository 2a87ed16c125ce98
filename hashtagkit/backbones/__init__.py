"""Registry of feature extractors: `vgg16-object`, `vgg16-scene` (the paper's) and
`resnet50-object`. Each knows its architecture, output layer, preprocessing and weights."""

from hashtagkit.backbones import resnet, vgg  # noqa: F401  (registers the backbones)
from hashtagkit.backbones.preprocessing import (
    IMAGENET,
    PLACES365_CAFFE,
    PREPROCESSINGS,
    Preprocessing,
    preprocessing_from_dict,
)
from hashtagkit.backbones.registry import (
    BACKBONES,
    RANDOM,
    BackboneSpec,
    LoadedBackbone,
    get_spec,
    load_backbone,
    parse_backbone_option,
    read_state_dict,
    register,
    weights_dir,
    weights_file_payload,
)

DEFAULT_BACKBONES = ("vgg16-object", "vgg16-scene")

__all__ = [
    "BACKBONES", "DEFAULT_BACKBONES", "IMAGENET", "PLACES365_CAFFE", "RANDOM", "BackboneSpec", "LoadedBackbone",
    "PREPROCESSINGS", "Preprocessing", "get_spec", "load_backbone", "parse_backbone_option", "preprocessing_from_dict",
    "read_state_dict", "register", "weights_dir", "weights_file_payload",
]
