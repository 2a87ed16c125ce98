"""hashtagkit.images.decode: every mode to the right RGB pixels, bounded cost, no hang, only DecodeError."""

from __future__ import annotations

import io
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from hashtagkit.backbones.preprocessing import IMAGENET, PLACES365_CAFFE
from hashtagkit.images import DecodeError, decode

SHARED = Path(__file__).resolve().parents[3] / "shared"
FIXED = SHARED / "fixtures" / "harrison_fixed"


def rgb(path: Path) -> np.ndarray:
    return np.asarray(decode(path))


# --- modes -------------------------------------------------------------------------------------
def test_16bit_grey_png_is_scaled_not_clipped(tmp_path):
    grey16 = np.full((8, 8), 128 * 257, dtype=np.uint16)  # a 16-bit mid-grey
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(tmp_path / "g8.png")
    assert (rgb(tmp_path / "g16.png") == 128).all()
    # the features of a 16-bit mid-grey are those of an 8-bit mid-grey
    for pre in (IMAGENET, PLACES365_CAFFE):
        assert np.array_equal(pre(decode(tmp_path / "g16.png")).numpy(), pre(decode(tmp_path / "g8.png")).numpy())


def test_16bit_gradient_keeps_its_levels(tmp_path):
    levels = np.arange(0, 65536, 257, dtype=np.uint16).reshape(16, 16)  # 0, 257, ... 65535
    Image.fromarray(levels).save(tmp_path / "ramp.png")
    out = rgb(tmp_path / "ramp.png")
    assert np.array_equal(out[..., 0], np.arange(256, dtype=np.uint8).reshape(16, 16))


def test_palette_with_and_without_transparency(tmp_path):
    im = Image.new("P", (4, 4))
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    im.putpixel((0, 0), 1)
    im.save(tmp_path / "p.png")
    out = rgb(tmp_path / "p.png")
    assert tuple(out[0, 0]) == (0, 0, 255) and tuple(out[1, 1]) == (255, 0, 0)
    im.save(tmp_path / "pt.png", transparency=1)  # index 1 transparent -> white background
    out = rgb(tmp_path / "pt.png")
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[1, 1]) == (255, 0, 0)


def test_la_and_rgba_are_composited_on_white(tmp_path):
    la = np.zeros((4, 4, 2), np.uint8)
    la[..., 0], la[..., 1] = 100, 255
    la[0, 0, 1] = 0  # fully transparent pixel
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    out = rgb(tmp_path / "la.png")
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[1, 1]) == (100, 100, 100)
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 128  # half-transparent red on white
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    r, g, b = rgb(tmp_path / "rgba.png")[0, 0].astype(int)
    assert abs(r - 227) <= 1 and abs(g - 127) <= 1 and abs(b - 127) <= 1


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)  # pure red
    out = rgb(tmp_path / "c.jpg").astype(int)
    assert (out[..., 0] > 240).all() and (out[..., 1:] < 15).all()


def test_exif_rotation_is_applied(tmp_path):
    a = np.zeros((10, 20, 3), np.uint8)
    a[:, :10] = (255, 0, 0)  # left half red, right half blue
    a[:, 10:] = (0, 0, 255)
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    im.save(tmp_path / "r.jpg", exif=exif, quality=100)
    out = rgb(tmp_path / "r.jpg").astype(int)
    assert out.shape == (20, 10, 3)
    assert out[2, 5, 0] > 200 and out[-3, 5, 2] > 200  # red on top, blue at the bottom


def test_animation_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    assert tuple(rgb(tmp_path / "a.gif")[3, 3]) == (255, 0, 0)


def test_float_and_32bit_grey(tmp_path):
    Image.fromarray(np.full((4, 4), 0.5, np.float32), mode="F").save(tmp_path / "f.tiff")
    assert (rgb(tmp_path / "f.tiff") == 128).all()
    Image.fromarray(np.full((4, 4), 128 * 257, np.int32), mode="I").save(tmp_path / "i.tiff")
    assert (rgb(tmp_path / "i.tiff") == 128).all()


# --- bounds ------------------------------------------------------------------------------------
def test_extreme_aspect_ratio_is_cheap_and_right(tmp_path):
    Image.fromarray(np.full((2, 20000, 3), 128, np.uint8)).save(tmp_path / "strip.png")
    started = time.perf_counter()
    x = IMAGENET(decode(tmp_path / "strip.png"))
    assert time.perf_counter() - started < 2.0  # was 16 s and 3.4 GB
    y = IMAGENET(Image.new("RGB", (300, 300), (128, 128, 128)))
    assert x.shape == (3, 224, 224) and np.allclose(x.numpy(), y.numpy(), atol=1e-5)


def test_ordinary_photo_preprocessing_unchanged():
    from torchvision.transforms import v2

    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (220, 300, 3), dtype=np.uint8))
    ref = v2.Compose([v2.Resize(256, antialias=True), v2.CenterCrop(224), v2.PILToTensor(),
                      v2.ToDtype(__import__("torch").float32, scale=True),
                      v2.Normalize(IMAGENET.mean, IMAGENET.std)])(im)
    assert np.allclose(IMAGENET(im).numpy(), ref.numpy(), atol=1e-5)


def test_pixel_cap_refuses_before_decoding(tmp_path):
    Image.new("L", (400, 300), 0).save(tmp_path / "big.png")
    with pytest.raises(DecodeError, match="too large"):
        decode(tmp_path / "big.png", max_pixels=100_000)
    assert decode(tmp_path / "big.png", max_pixels=120_000).size == (400, 300)


def test_big_jpeg_is_decoded_reduced(tmp_path):
    Image.new("RGB", (4096, 2048), (10, 200, 30)).save(tmp_path / "big.jpg")
    # 8.4 Mpx over a 3 Mpx cap: draft decodes it at 1/4 (1024x512), so it fits
    im = decode(tmp_path / "big.jpg", max_pixels=3_000_000)
    assert im.size == (1024, 512) and np.abs(np.asarray(im).astype(int) - (10, 200, 30)).max() < 8


# --- files that are not photos -----------------------------------------------------------------
def decode_in_thread(path: Path, timeout: float = 5.0):
    box: dict = {}

    def run():
        try:
            box["image"] = decode(path)
        except Exception as e:  # noqa: BLE001  (reported to the test)
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"decode({path}) hung"
    return box


def test_fifo_does_not_hang(tmp_path):
    os.mkfifo(tmp_path / "x.jpg")
    box = decode_in_thread(tmp_path / "x.jpg")
    assert isinstance(box.get("error"), DecodeError) and "regular file" in str(box["error"])


def test_directory_device_socket_missing(tmp_path):
    (tmp_path / "d.jpg").mkdir()
    with pytest.raises(DecodeError, match="directory"):
        decode(tmp_path / "d.jpg")
    with pytest.raises(DecodeError, match="regular file"):
        decode(Path("/dev/null"))
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "s.jpg"))
        with pytest.raises(DecodeError, match="regular file"):
            decode(tmp_path / "s.jpg")
    with pytest.raises(DecodeError, match="missing"):
        decode(tmp_path / "nope.jpg")


def test_unreadable_file(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not make a file unreadable")
    Image.new("RGB", (4, 4)).save(tmp_path / "u.jpg")
    os.chmod(tmp_path / "u.jpg", 0)
    with pytest.raises(DecodeError, match="unreadable"):
        decode(tmp_path / "u.jpg")


# --- property: anything in, an image or a DecodeError out --------------------------------------
def drawn_files() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    out = {}
    for fmt, ext in (("JPEG", "jpg"), ("PNG", "png"), ("GIF", "gif"), ("WEBP", "webp")):
        buf = io.BytesIO()
        im.save(buf, format=fmt)
        out[ext] = buf.getvalue()
    for p in sorted(FIXED.rglob("*.jpg"))[:2] if FIXED.is_dir() else []:
        if p.is_file():
            out[p.name] = p.read_bytes()  # a real truncated HARRISON photo
    return out


FILES = drawn_files()
PROPERTY = settings(max_examples=150, deadline=3000, suppress_health_check=[HealthCheck.function_scoped_fixture])


def decode_bytes(tmp_path: Path, data: bytes, ext: str) -> None:
    path = tmp_path / f"case.{ext}"
    path.write_bytes(data)
    started = time.perf_counter()
    try:
        image = decode(path)
        assert image.mode == "RGB"
    except DecodeError:
        pass
    assert time.perf_counter() - started < 3.0


@PROPERTY
@given(data=st.binary(max_size=4096), ext=st.sampled_from(["jpg", "png", "gif", "bin"]))
def test_random_bytes_give_only_decode_error(tmp_path, data, ext):
    decode_bytes(tmp_path, data, ext)


@PROPERTY
@given(which=st.sampled_from(sorted(FILES)), cut=st.floats(0, 1), flip=st.integers(0, 10**9))
def test_truncated_and_damaged_files_give_only_decode_error(tmp_path, which, cut, flip):
    data = bytearray(FILES[which][: int(len(FILES[which]) * cut)])
    if data and flip % 3 == 0:  # also flip one byte of what is left
        data[flip % len(data)] ^= 0xFF
    decode_bytes(tmp_path, bytes(data), which)


# --- formats and the caller's own images (review findings) ------------------------------------
def test_only_photo_formats_are_decoded(tmp_path):
    """A format outside the photo list (PPM here; EPS would run Ghostscript) is refused, from a
    file and from uploaded bytes, although Pillow itself could open it."""
    from hashtagkit.images import decode_bytes

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, format="PPM")
    assert Image.open(io.BytesIO(buf.getvalue())).format == "PPM"  # Pillow would take it
    (tmp_path / "a.jpg").write_bytes(buf.getvalue())
    for call in (lambda: decode(tmp_path / "a.jpg"), lambda: decode_bytes(buf.getvalue())):
        with pytest.raises(DecodeError, match="unreadable"):
            call()


def test_a_plugin_error_of_any_type_is_an_unreadable_image():
    """Fuzzed files make some Pillow plugins raise NotImplementedError or ZeroDivisionError: that
    file's error, never the end of a run."""
    from hashtagkit.images import MAX_PIXELS, _decode

    for error in (NotImplementedError("Unimplemented pixel format 0"), ZeroDivisionError()):
        def opener(error=error):
            raise error
        with pytest.raises(DecodeError, match="unreadable"):
            _decode(opener, False, MAX_PIXELS)


def test_decoding_a_callers_lazy_image_leaves_it_as_it_was(tmp_path):
    """decode_pil reduces a big JPEG for the model but not the caller's object, which the caller
    may save or show afterwards."""
    from hashtagkit.images import decode_pil

    Image.fromarray(np.zeros((2400, 3200, 3), np.uint8)).save(tmp_path / "big.jpg")
    im = Image.open(tmp_path / "big.jpg")
    out = decode_pil(im)
    assert out.size[0] < 3200  # reduced for decoding (JPEG draft)
    assert im.size == (3200, 2400) and im.mode == "RGB"
    assert np.asarray(im).shape == (2400, 3200, 3)


def test_decoded_pixels_is_what_decoding_holds(tmp_path):
    """The header alone says how many pixels a decode will hold (the server's pixel budget counts
    by it): a JPEG's reduction included, the decoder's cap as the most, 0 for what is no image."""
    import io

    from PIL import Image

    from hashtagkit.images import MAX_PIXELS, decode_bytes, decoded_pixels

    for fmt, size in (("JPEG", (1600, 1200)), ("PNG", (300, 200)), ("JPEG", (300, 200))):
        buf = io.BytesIO()
        Image.new("RGB", size, (40, 90, 160)).save(buf, format=fmt)
        held = decode_bytes(buf.getvalue())
        assert decoded_pixels(buf.getvalue()) == held.size[0] * held.size[1]
    assert decoded_pixels(b"these are notes") == 0
    huge = io.BytesIO()
    Image.new("1", (9000, 9000)).save(huge, format="PNG")  # 81 MP: refused unread by the decoder
    assert decoded_pixels(huge.getvalue()) == MAX_PIXELS
