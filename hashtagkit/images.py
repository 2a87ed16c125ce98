"""Image files to pixels: the one decoder that extraction, `recommend` and `show` share.

A photo collection always holds some files that are not photos any more (missing, truncated,
not an image, a decompression bomb): each becomes a `DecodeError` whose message is the reason
recorded for its row, never an exception that stops a run.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, ImageFile, ImageOps


class DecodeError(Exception):
    """An image that cannot become pixels; the message is the reason recorded for its row."""


def decode(path: Path, allow_truncated: bool = False) -> Image.Image:
    """Open an image as RGB with its EXIF orientation applied, or raise DecodeError(reason)."""
    ImageFile.LOAD_TRUNCATED_IMAGES = allow_truncated
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                im = ImageOps.exif_transpose(im)
                if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                    im = im.convert("RGBA")
                    background = Image.new("RGBA", im.size, (255, 255, 255, 255))
                    return Image.alpha_composite(background, im).convert("RGB")
                return im.convert("RGB")
    except FileNotFoundError:
        raise DecodeError("missing") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DecodeError("decompression bomb") from None
    except Image.UnidentifiedImageError:
        raise DecodeError("unreadable") from None
    except OSError as e:
        raise DecodeError("truncated" if "truncated" in str(e) else "unreadable") from None
    except (ValueError, SyntaxError):  # Pillow's plugins raise these on malformed headers
        raise DecodeError("unreadable") from None
