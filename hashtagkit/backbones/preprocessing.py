"""How a backbone wants its pixels: size, crop, colour order, value range, mean and std.

A backbone's weights are only meaningful with the preprocessing they were trained with, so
the preprocessing travels with the backbone (like torchvision's `weights.transforms()`) and is
recorded in the store next to the weights' sha256. Two conventions matter here:

- torchvision / ImageNet: RGB, values in [0, 1], resize the shorter side to 256, centre crop
  224, subtract mean (0.485, 0.456, 0.406) and divide by std (0.229, 0.224, 0.225).
- Caffe (the Places365 VGG-16): BGR, values in [0, 255], resize to 256 x 256, centre crop 224,
  subtract the per-channel mean (BGR), no division.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image


@dataclass(frozen=True)
class Preprocessing:
    resize: int | tuple[int, int]  # int: shorter side (keeps aspect); (h, w): exact size
    crop: int
    colour_order: str  # "RGB" or "BGR"
    value_range: float  # 1.0 (pixels / 255) or 255.0 (raw pixels)
    mean: tuple[float, float, float]  # in the colour order and value range above
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """A decoded RGB PIL image -> a float32 (3, crop, crop) tensor."""
        return self.normalize(self.pixels(image).unsqueeze(0))[0]

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """The resized and cropped RGB pixels as a uint8 (3, crop, crop) tensor: what a decode
        worker hands over (a quarter of the float32 bytes through shared memory), normalised by
        `normalize` where the model runs, with exactly the same arithmetic as `__call__`."""
        return torch.from_numpy(np.array(self.resize_and_crop(image), dtype=np.uint8)).permute(2, 0, 1)

    def pixels_of_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """`pixels` for a decoded (3, H, W) uint8 tensor, on its device (`extract --decode gpu`):
        torchvision's antialiased bilinear resize and centre crop, the same geometry as
        `resize_and_crop` but not Pillow's rounding, so not the same pixels (measured in
        benchmarks/results/extract_throughput.md, "Decode paths")."""
        from torchvision.transforms.v2 import functional as F

        size, box = self._geometry(int(x.shape[-1]), int(x.shape[-2]))
        if box is None:
            return F.center_crop(F.resize(x, size if isinstance(size, list) else [size], antialias=True),
                                 [self.crop, self.crop])
        left, top, right, bottom = box
        return F.resize(x[..., top:bottom, left:right], [self.crop, self.crop], antialias=True)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 RGB pixels (N, 3, H, W), on any device -> the float32 input the weights expect."""
        x = x.float()
        if self.colour_order == "BGR":
            x = x.flip(1)
        if self.value_range != 255.0:
            x = x * (self.value_range / 255.0)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def resize_and_crop(self, image: Image.Image) -> Image.Image:
        """Resize then centre-crop; for an extreme aspect ratio (a 20000x2 strip would be resized
        to 2,560,000x256 pixels: gigabytes and seconds) resize only the source box the crop keeps."""
        size, box = self._geometry(*image.size)
        if box is None:
            return center_crop(resize(image, size), self.crop)
        return resize(image.crop(box), [self.crop, self.crop])

    def _geometry(self, w: int, h: int) -> tuple[list[int] | int | None, tuple[int, int, int, int] | None]:
        """How a w x h image is resized and cropped, for Pillow and tensor images alike: (size,
        None) for the usual resize then centre crop, or (None, box) when the aspect ratio is so
        extreme that the resized image would be huge: then only the source box (left, top,
        right, bottom) the crop keeps is resized, straight to crop x crop."""
        if isinstance(self.resize, tuple):
            out_h, out_w = self.resize
        else:
            scale = self.resize / min(w, h)
            out_h, out_w = round(h * scale), round(w * scale)
        if max(out_h, out_w) <= 4 * max(self.resize if isinstance(self.resize, tuple) else (self.resize,)):
            return (list(self.resize) if isinstance(self.resize, tuple) else self.resize), None
        box_h, box_w = max(1.0, self.crop * h / out_h), max(1.0, self.crop * w / out_w)
        top, left = round((h - box_h) / 2), round((w - box_w) / 2)
        return None, (left, top, left + round(box_w), top + round(box_h))

    def describe(self) -> dict:
        d = asdict(self)
        d["resize"] = list(self.resize) if isinstance(self.resize, tuple) else self.resize
        return d


# torchvision.transforms.v2.functional's resize and center_crop on PIL images (bilinear, which for
# PIL always antialiases), pixel for pixel (tested against torchvision): importing torchvision
# imports torch._dynamo, about a second of every start, for three lines of arithmetic.
def resize(image: Image.Image, size: int | list[int]) -> Image.Image:
    """An int resizes the shorter side to it (the longer side truncated, as torchvision does);
    [h, w] resizes to exactly that."""
    w, h = image.size
    if isinstance(size, int):
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = size, int(size * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    else:
        new_h, new_w = size
    if (new_w, new_h) == (w, h):
        return image
    return image.resize((new_w, new_h), Image.Resampling.BILINEAR)


def center_crop(image: Image.Image, crop: int) -> Image.Image:
    w, h = image.size
    if crop > w or crop > h:  # torchvision pads with zeros first: leave that rare case to it
        from torchvision.transforms.v2 import functional as F

        return F.center_crop(image, [crop, crop])
    top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    return image.crop((left, top, left + crop, top + crop))


IMAGENET = Preprocessing(
    resize=256, crop=224, colour_order="RGB", value_range=1.0,
    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
)
# the Places365 training mean, BGR, 0-255 (places365 repository: places365CNN_mean.binaryproto)
PLACES365_CAFFE = Preprocessing(
    resize=(256, 256), crop=224, colour_order="BGR", value_range=255.0, mean=(104.051, 112.514, 116.676),
)

# the names a weights file (`convert-caffe --preprocessing`) and `extract --preprocessing` use
PREPROCESSINGS: dict[str, Preprocessing] = {"imagenet": IMAGENET, "places365-caffe": PLACES365_CAFFE}


def preprocessing_from_dict(d: dict) -> Preprocessing:
    """The inverse of `Preprocessing.describe()` (a store's or a weights file's record)."""
    resize = d["resize"]
    return Preprocessing(
        resize=tuple(resize) if isinstance(resize, list | tuple) else int(resize), crop=int(d["crop"]),
        colour_order=d["colour_order"], value_range=float(d["value_range"]), mean=tuple(d["mean"]),
        std=tuple(d.get("std", (1.0, 1.0, 1.0))),
    )


def preprocessing_name(p: Preprocessing) -> str:
    """A short name for messages: 'imagenet', 'places365-caffe' or the colour order and range."""
    for name, known in PREPROCESSINGS.items():
        if known == p:
            return name
    return f"{p.colour_order} 0-{p.value_range:g}"
