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

import os
import stat
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

# 64 megapixels: far above any camera photo a hashtag model sees, far below what kills a machine
MAX_PIXELS = 64_000_000
# decode JPEGs reduced (by 2, 4 or 8) as long as the shorter side stays at least this large
DRAFT_SIDE = 512


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


def open_bounded(im: Image.Image, max_pixels: int) -> Image.Image:
    """Ask the decoder for fewer pixels where it can (JPEG), refuse what stays over the limit."""
    w, h = im.size
    if im.format == "JPEG" and min(w, h) >= 2 * DRAFT_SIDE:
        scale = min(8, min(w, h) // DRAFT_SIDE)
        im.draft("RGB", (max(1, w // scale), max(1, h // scale)))
    w, h = im.size
    if w * h > max_pixels:
        raise DecodeError(f"too large ({w}x{h} pixels, limit {max_pixels:,})")
    return im


def decode(path: Path, allow_truncated: bool = False, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open an image as RGB with its EXIF orientation applied (first frame of an animation),
    or raise DecodeError(reason)."""
    path = Path(path)
    check_regular_file(path)
    ImageFile.LOAD_TRUNCATED_IMAGES = allow_truncated
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.seek(0)
                im = open_bounded(im, max_pixels)
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

