"""Image files to pixels: the one decoder that extraction, `recommend` and `show` share.

A photo collection always holds some files that are not photos any more (missing, truncated,
not an image, a decompression bomb, a FIFO or a directory named like a photo): each becomes a
`DecodeError` whose message is the reason recorded for its row, never an exception that stops
a run, never a hang.

Decoding is bounded: a file is opened only if it is a regular file (a FIFO would block `open`
forever), JPEGs are decoded reduced (`draft`) when they are far larger than any backbone needs,
and an image whose decoded pixels would exceed `MAX_PIXELS` is refused before it is decoded.
Every mode becomes 8-bit RGB deliberately: 16-bit and 32-bit integer greys are scaled to 0-255
(Pillow's own `convert` clips them, so a mid-grey became white), alpha is composited on white,
CMYK and palettes go through Pillow's conversions, animations give their first frame.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import threading
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

# 64 megapixels: far above any camera photo a hashtag model sees, far below what kills a machine
MAX_PIXELS = 64_000_000
# decode JPEGs reduced (by 2, 4 or 8) as long as the shorter side stays at least this large
DRAFT_SIDE = 512
# `extract --decode fast`: reduced as far as the backbones' resize (256) allows, which changes
# pixels (the DCT-scaled image is a different low-pass than a bilinear resize); measured in
# benchmarks/results/extract_throughput.md ("Decode paths") and recorded in the blocks' preprocessing
FAST_DRAFT_SIDE = 256
# how `extract` decodes: default (Pillow, reduced only far above the crop), fast (Pillow, reduced
# down to the resize), gpu (nvJPEG through torchvision on the CUDA device, Pillow for the rest)


class DecodeError(Exception):
    """An image that cannot become pixels; the message is the reason recorded for its row."""


def check_regular_file(path: Path) -> None:
    """Refuse what is not a readable regular file before opening it (a FIFO blocks `open`)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DecodeError("missing") from None
    except OSError as e:
        raise DecodeError(f"unreadable ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise DecodeError("not a file (a directory)")
    if not stat.S_ISREG(st.st_mode):
        raise DecodeError("not a regular file (a FIFO, socket or device)")
    if not os.access(path, os.R_OK):
        raise DecodeError("unreadable (permission denied)")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, scaling high bit depths instead of clipping them."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im, dtype=np.float64)
        if im.mode.startswith("I;16") or (a.size and a.max() <= 65535 and a.min() >= 0):
            a = a / 257.0  # 16-bit (also Pillow's 'I' holding a 16-bit PNG): 65535 -> 255
        grey = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")
        return grey.convert("RGB")
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        scale = 255.0 if a.size and a.max() <= 1.0 else 1.0  # floats in [0, 1] or already 0-255
        return Image.fromarray(np.clip(np.rint(a * scale), 0, 255).astype(np.uint8), mode="L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")
    return im.convert("RGB")


def reduced(im: Image.Image, draft_side: int = DRAFT_SIDE) -> Image.Image:
    """`im` set to decode at fewer pixels where the format can (JPEG: the shorter side stays at
    least `draft_side`); its `size` is then what decoding will hold. Nothing is decoded here."""
    w, h = im.size
    if im.format == "JPEG" and min(w, h) >= 2 * draft_side:
        scale = min(8, min(w, h) // draft_side)
        im.draft("RGB", (max(1, w // scale), max(1, h // scale)))
    return im


def open_bounded(im: Image.Image, max_pixels: int, draft_side: int = DRAFT_SIDE) -> Image.Image:
    """Ask the decoder for fewer pixels where it can (`reduced`), refuse what stays over the limit."""
    w, h = im.size
    if Image.MAX_IMAGE_PIXELS and w * h > Image.MAX_IMAGE_PIXELS:
        # Pillow only warns up to twice its limit (and raises beyond): refused here, whatever the
        # process's warning filters say
        raise DecodeError("decompression bomb")
    w, h = reduced(im, draft_side).size
    if w * h > max_pixels:
        raise DecodeError(f"too large ({w}x{h} pixels, limit {max_pixels:,})")
    return im


class _TruncationMode:
    """Pillow reads `ImageFile.LOAD_TRUNCATED_IMAGES`, a module global, while it decodes. Threads
    (the server decodes uploads in a pool) must not see another thread's setting: decodes of one
    setting run together, the other setting waits until they are done. A process uses one setting
    in practice, so nobody waits."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._lenient = False
        self._active = 0

    @contextmanager
    def hold(self, lenient: bool):
        with self._cond:
            while self._active and self._lenient != lenient:
                self._cond.wait()
            self._lenient = lenient
            ImageFile.LOAD_TRUNCATED_IMAGES = lenient
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                if not self._active:
                    ImageFile.LOAD_TRUNCATED_IMAGES = False  # Pillow's default for everyone else
                    self._cond.notify_all()


_TRUNCATION = _TruncationMode()
# a forked decode worker starts with no decode in flight (its parent's threads are not copied)
os.register_at_fork(after_in_child=lambda: _TRUNCATION.__init__())


# The pixel limit is enforced by open_bounded, so Pillow's warning for images just over it is noise.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# The photo formats decoded: a store's photos and uploads alike. Pillow would otherwise try every
# plugin it has, EPS among them, which hands untrusted PostScript to Ghostscript where installed.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # JPEG includes MPO (phone photos)
Image.init()  # register every plugin now: Image.open(formats=...) looks each name up


def decoded_pixels(data: bytes | bytearray | memoryview, *, max_pixels: int = MAX_PIXELS,
                   draft_side: int = DRAFT_SIDE) -> int:
    """The pixels `decode_bytes(data, ...)` would hold, from the header alone (the same formats,
    the same JPEG reduction): at most `max_pixels`, since a larger image is refused unread, and 0
    for data that is no image of FORMATS (the decoder then says what it is)."""
    try:
        with Image.open(io.BytesIO(bytes(data)), formats=FORMATS) as im:
            w, h = reduced(im, draft_side).size
    except Exception:  # noqa: BLE001 - not an image, or a damaged one: the decoder reports it
        return 0
    return min(w * h, max_pixels)


def decode(path: Path, allow_truncated: bool = False, *, max_pixels: int = MAX_PIXELS,
           draft_side: int = DRAFT_SIDE) -> Image.Image:
    """Open an image as RGB with its EXIF orientation applied (first frame of an animation),
    or raise DecodeError(reason). A JPEG is decoded reduced while its shorter side stays at
    least `draft_side`."""
    path = Path(path)
    check_regular_file(path)
    return _decode(lambda: Image.open(path, formats=FORMATS), allow_truncated, max_pixels, draft_side=draft_side)


def decode_bytes(data: bytes | bytearray | memoryview, allow_truncated: bool = False, *,
                 max_pixels: int = MAX_PIXELS, draft_side: int = DRAFT_SIDE) -> Image.Image:
    """`decode` for an image held in memory (an upload): the same checks, nothing written to disk."""
    if not len(data):
        raise DecodeError("empty")
    return _decode(lambda: Image.open(io.BytesIO(bytes(data)), formats=FORMATS), allow_truncated, max_pixels,
                   draft_side=draft_side)


def decode_pil(image: Image.Image, allow_truncated: bool = False, *, max_pixels: int = MAX_PIXELS,
               draft_side: int = DRAFT_SIDE) -> Image.Image:
    """`decode` for a PIL image the caller opened: loaded (if lazy) within the same limits, EXIF
    orientation applied (a no-op on an image already transposed), any mode to 8-bit RGB.

    A lazily opened image from a file is decoded from a fresh handle on that file, so the
    caller's object is neither reduced (JPEG draft) nor loaded, and threads may share it."""
    filename = getattr(image, "filename", "")
    if getattr(image, "fp", None) is not None and filename:
        return decode(Path(filename), allow_truncated, max_pixels=max_pixels, draft_side=draft_side)
    return _decode(lambda: nullcontext(image), allow_truncated, max_pixels, own=False)  # loaded: nothing to reduce


def decode_image(source: Image.Image | str | os.PathLike | bytes | bytearray | memoryview,
                 allow_truncated: bool = False, *, max_pixels: int = MAX_PIXELS,
                 draft_side: int = DRAFT_SIDE) -> Image.Image:
    """Any of a path, the bytes of a file or a PIL image -> RGB (see `decode`); bytes are content,
    never a path."""
    kw = {"max_pixels": max_pixels, "draft_side": draft_side}
    if isinstance(source, Image.Image):
        return decode_pil(source, allow_truncated, **kw)
    if isinstance(source, bytes | bytearray | memoryview):
        return decode_bytes(source, allow_truncated, **kw)
    if isinstance(source, str | os.PathLike):
        return decode(Path(source), allow_truncated, **kw)
    raise TypeError(f"an image is a path, bytes or a PIL image, not {type(source).__name__}")


def draft_side(mode: str) -> int:
    """The shorter side a JPEG is reduced to at most, for a decode mode (DECODE_MODES): only
    `fast` reduces further than the default (`gpu`'s Pillow fallback decodes the default way)."""
    return FAST_DRAFT_SIDE if mode == "fast" else DRAFT_SIDE


def draft_side_of(blocks: list[dict]) -> int:
    """The JPEG reduction a store's features were extracted with (`extract --decode fast` records
    it in the blocks' preprocessing), so photos scored later are decoded the same way: a head
    was trained on those pixels. Blocks decoded in different ways get the default."""
    modes = {((b.get("preprocessing") or {}).get("decode") or {}).get("mode", "default") for b in blocks}
    return draft_side(modes.pop()) if len(modes) == 1 else DRAFT_SIDE


def _decode(open_image, allow_truncated: bool, max_pixels: int, own: bool = True,
            draft_side: int = DRAFT_SIDE) -> Image.Image:
    """The one decoding path: every way an image arrives ends in the same checks and reasons."""
    try:
        # no warnings.catch_warnings here: its filter list is process-wide, so threads decoding at
        # once would restore each other's filters; open_bounded refuses a bomb explicitly
        with _TRUNCATION.hold(allow_truncated):
            with open_image() as im:
                if own or getattr(im, "fp", None) is not None:  # a lazy image: bounded like a file
                    im.seek(0)
                    im = open_bounded(im, max_pixels, draft_side)
                elif im.width * im.height > max_pixels:
                    raise DecodeError(f"too large ({im.width}x{im.height} pixels, limit {max_pixels:,})")
                im.load()
                im = ImageOps.exif_transpose(im)
                return to_rgb(im)
    except DecodeError:
        raise
    except FileNotFoundError:
        raise DecodeError("missing") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DecodeError("decompression bomb") from None
    except Image.UnidentifiedImageError:
        raise DecodeError("unreadable") from None
    except OSError as e:
        raise DecodeError("truncated" if "truncated" in str(e) else "unreadable") from None
    except (ValueError, SyntaxError, TypeError, IndexError, KeyError, EOFError, struct.error):
        # Pillow's plugins raise these on malformed headers and metadata
        raise DecodeError("unreadable") from None
    except MemoryError:
        raise DecodeError("too large (out of memory)") from None
    except Exception:  # noqa: BLE001 - a plugin's own error on a malformed file (e.g. NotImplementedError)
        raise DecodeError("unreadable") from None



# --- `extract --decode gpu`: JPEGs decoded by nvJPEG on the model's device --------------------------
EXIF_ORIENTATION = 0x0112


def jpeg_for_device(source: Path | bytes, max_pixels: int = MAX_PIXELS) -> tuple[bytes, int] | None:
    """The bytes and EXIF orientation of a whole RGB or grey JPEG for the GPU to decode, or None
    when Pillow must decide (another format, CMYK, no end marker - truncated or trailing bytes -,
    over the pixel limit, unreadable): Pillow then gives the same pixels or reason as ever.
    Only the header is parsed here. `source` is a file (a missing one or a FIFO raises
    DecodeError as `decode` does) or a photo's bytes already read (from a URL or a shard)."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        opened = io.BytesIO(data)
    else:
        path = Path(source)
        check_regular_file(path)
        data, opened = None, path
    try:
        with Image.open(opened, formats=("JPEG",)) as im:
            w, h = im.size
            limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
            if im.format != "JPEG" or im.mode not in ("RGB", "L") or w * h > limit:
                return None
            orientation = int(im.getexif().get(EXIF_ORIENTATION, 1) or 1)
        if data is None:
            data = path.read_bytes()
    except Exception:  # noqa: BLE001 - whatever it is, Pillow's decode gives the reason
        return None
    if not data.rstrip(b"\0").endswith(b"\xff\xd9"):  # truncated: Pillow applies --allow-truncated
        return None
    return data, orientation if orientation in range(1, 9) else 1


def orient(x, orientation: int):
    """A (C, H, W) tensor turned as EXIF orientation 1-8 says (what `ImageOps.exif_transpose`
    does to a PIL image; nvJPEG does not apply it)."""
    import torch

    hw = (-2, -1)
    if orientation == 2:
        return x.flip(-1)
    if orientation == 3:
        return x.flip(hw)
    if orientation == 4:
        return x.flip(-2)
    if orientation == 5:
        return x.transpose(-1, -2)
    if orientation == 6:
        return torch.rot90(x, -1, hw)  # Pillow's ROTATE_270: a quarter turn clockwise
    if orientation == 7:
        return x.transpose(-1, -2).flip(hw)
    if orientation == 8:
        return torch.rot90(x, 1, hw)
    return x


def decode_jpegs_on(device, datas: list[bytes]) -> list:
    """(3, H, W) uint8 tensors on `device` (nvJPEG on CUDA, libjpeg-turbo on the CPU), one call for
    the batch; None for a JPEG it cannot decode (Pillow then decides)."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision.io's decoders point to TorchCodec
        try:
            return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:  # one bad file fails the batch: decode one by one
            out = []
            for t in tensors:
                try:
                    out.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    out.append(None)
            return out
