"""What every dataset reader returns (`LabelledImages`) and the checks every list of image paths passes.

HARRISON's label files, a user's posts file and the demo generator all end as the same record,
which `prepare` writes into a store; an image path must stay inside the image folder and name
one photo once, whichever reader found it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from hashtagkit.errors import InputError


@dataclass
class LabelledImages:
    """Image paths, one tag list per image and the vocabulary: what every reader returns."""

    paths: list[str]
    tags: list[list[str]]
    vocab: list[str]
    image_root: str | None
    source: dict = field(default_factory=dict)
    members: Any = None  # (n, 2) int64 byte ranges of photos inside webdataset shards, else None



def check_image_path(image: str, where: str) -> str:
    """A relative path that stays inside the image root: no absolute paths, no `..` escape.
    Returned normalised (`a/./b.jpg` -> `a/b.jpg`) so that two spellings count as one image."""
    if "\x00" in image or not image.isprintable() and any(ord(c) < 32 for c in image):
        raise InputError(f"{where}: image path {image!r} contains a control character")
    try:
        image.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{where}: image path {image!r} is not valid Unicode (a lone surrogate)") from None
    pure = PurePosixPath(image.replace("\\", "/"))
    if pure.is_absolute() or PureWindowsPath(image).drive:
        raise InputError(f"{where}: image path {image!r} is absolute: give it relative to the image folder")
    parts: list[str] = []
    for part in pure.parts:
        if part == "..":
            if not parts:
                raise InputError(f"{where}: image path {image!r} leaves the image folder ('..')")
            parts.pop()
        elif part != ".":
            parts.append(part)
    if not parts:
        raise InputError(f"{where}: image path {image!r} names no file")
    return "/".join(parts)


def refuse_duplicates(paths: list[str], where: Callable[[int], str]) -> None:
    """The same photo twice could land in both train and test: refuse, saying how many."""
    first: dict[str, int] = {}
    repeats = []
    for i, p in enumerate(paths):
        if p in first:
            repeats.append((i, first[p]))
        else:
            first[p] = i
    if repeats:
        i, j = repeats[0]
        raise InputError(f"{len(repeats):,} duplicate image path(s), e.g. {paths[i]!r} at {where(i)} and {where(j)}: "
                         "the same photo could land in both train and test; merge its hashtags into one line")
