"""The decoding paths that change pixels (`extract --decode fast|gpu`) against the default one.

The gpu path's code runs here on the CPU (torchvision's libjpeg-turbo instead of nvJPEG, the
same calls with device="cpu"): its orientation, fallbacks and geometry are checked without a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from hashtagkit.backbones.preprocessing import IMAGENET, PLACES365_CAFFE
from hashtagkit.data.photos import FolderPhotos
from hashtagkit.extraction.reader import ImageReader, collate
from hashtagkit.images import EXIF_ORIENTATION, DecodeError, decode, jpeg_for_device, orient

CPU = torch.device("cpu")


def photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth photo-like image (gradients, a little noise): what JPEG and DCT scaling are made for."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x / w * 255, y / h * 255, (x + y) / (w + h) * 255], axis=-1)
    return np.clip(base + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)


def save_jpeg(path, arr: np.ndarray, orientation: int = 1) -> None:
    im = Image.fromarray(arr)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    im.save(path, quality=95, exif=exif.tobytes())


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_turns_as_pillow_does(orientation):
    arr = (np.arange(5 * 7 * 3) % 251).astype(np.uint8).reshape(5, 7, 3)
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[EXIF_ORIENTATION] = orientation
    im.info["exif"] = exif.tobytes()
    reference = np.asarray(ImageOps.exif_transpose(im))
    ours = orient(torch.from_numpy(arr).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    assert np.array_equal(ours, reference)


def test_jpeg_for_device_takes_whole_rgb_jpegs_only(tmp_path):
    save_jpeg(tmp_path / "a.jpg", photo(40, 60), orientation=6)
    data, orientation = jpeg_for_device(tmp_path / "a.jpg")
    assert data == (tmp_path / "a.jpg").read_bytes() and orientation == 6
    Image.fromarray(photo(40, 60)).save(tmp_path / "b.png")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "a.jpg").read_bytes()[:-400])
    Image.fromarray(photo(40, 60)).convert("CMYK").save(tmp_path / "cmyk.jpg")
    for name in ("b.png", "cut.jpg", "cmyk.jpg"):  # Pillow decides these
        assert jpeg_for_device(tmp_path / name) is None
    with pytest.raises(DecodeError, match="missing"):
        jpeg_for_device(tmp_path / "none.jpg")


def test_gpu_path_on_the_cpu_matches_the_default_pixels(tmp_path):
    """A rotated JPEG decoded by torchvision and resized on the tensor is within a few levels of
    Pillow's pixels, the right way up; a PNG and a truncated JPEG go through Pillow unchanged."""
    save_jpeg(tmp_path / "turned.jpg", photo(300, 420), orientation=6)
    Image.fromarray(photo(260, 330, seed=1)).save(tmp_path / "b.png")
    save_jpeg(tmp_path / "whole.jpg", photo(280, 350, seed=2))
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "whole.jpg").read_bytes()[:-2000])
    paths = ["turned.jpg", "b.png", "cut.jpg", "none.jpg"]
    transforms = [IMAGENET, PLACES365_CAFFE]
    gpu = ImageReader(FolderPhotos(tmp_path, paths), transforms, allow_truncated=False, decode_mode="gpu")
    default = ImageReader(FolderPhotos(tmp_path, paths), transforms, allow_truncated=False)
    rows, ours, reasons = gpu.on_device(collate([gpu[r] for r in range(4)]), CPU)
    _, theirs, their_reasons = collate([default[r] for r in range(4)])
    assert reasons == their_reasons == ["", "", "truncated", "missing"]
    for x, y in zip(ours, theirs, strict=True):
        assert x.dtype == torch.uint8 and x.shape == y.shape == (4, 3, 224, 224)
        diff = (x[0].float() - y[0].float()).abs()
        assert diff.mean() < 2.0 and torch.quantile(diff, 0.99) < 12  # other rounding, same picture
        assert torch.equal(x[1], y[1])  # the PNG: Pillow's pixels
    # the same picture the right way up: a wrong turn is far more than rounding
    wrong = ImageReader(FolderPhotos(tmp_path, paths), transforms, allow_truncated=False, decode_mode="gpu")
    item = wrong[0]
    _, turned_wrong, _ = wrong.on_device(collate([(item[0], item[1], item[2], (item[3][0], 1))]), CPU)
    assert (turned_wrong[0][0].float() - theirs[0][0].float()).abs().mean() > 10


def test_fast_decode_is_reduced_and_close(tmp_path):
    """--decode fast: a 2048 x 1536 JPEG decoded reduced to at least the resize (DCT scaling),
    crops within a few levels of the default's."""
    save_jpeg(tmp_path / "big.jpg", photo(1536, 2048))
    fast = decode(tmp_path / "big.jpg", draft_side=256)
    assert 256 <= min(fast.size) < 1536 // 2 and decode(tmp_path / "big.jpg").size == (1024, 768)
    reader = ImageReader(FolderPhotos(tmp_path, ["big.jpg"]), [IMAGENET, PLACES365_CAFFE], False, decode_mode="fast")
    default = ImageReader(FolderPhotos(tmp_path, ["big.jpg"]), [IMAGENET, PLACES365_CAFFE], False)
    for x, y in zip(reader[0][1], default[0][1], strict=True):
        assert (x.float() - y.float()).abs().mean() < 3.0


def test_pixels_of_tensor_geometry_as_pillow():
    """The tensor resize keeps `resize_and_crop`'s geometry, the strip case included."""
    for h, w in ((300, 500), (500, 300), (20, 3000)):
        arr = photo(h, w)
        x = torch.from_numpy(arr).permute(2, 0, 1)
        for t in (IMAGENET, PLACES365_CAFFE):
            ours, theirs = t.pixels_of_tensor(x).float(), t.pixels(Image.fromarray(arr)).float()
            assert ours.shape == theirs.shape == (3, 224, 224)
            assert (ours - theirs).abs().mean() < 3.0

