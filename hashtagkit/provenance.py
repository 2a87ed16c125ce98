"""What every artefact records about how it was made: versions, command line, time."""

from __future__ import annotations

import datetime as _dt
import hashlib
import platform
import sys
from importlib import metadata
from pathlib import Path

_PACKAGES = ("hashtagkit", "numpy", "zarr", "torch", "torchvision", "faiss-cpu", "scikit-learn", "nltk", "Pillow")


def versions() -> dict[str, str]:
    """Installed versions of Python and of the packages whose behaviour shapes our results."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def command_line() -> str:
    """The command as typed, so an artefact can be remade."""
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else ""


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def record(**extra) -> dict:
    """The standard provenance block: created time, command line, versions, machine, plus extras."""
    return {
        "created": now(),
        "command": command_line(),
        "versions": versions(),
        "machine": {"platform": platform.platform(), "processor": platform.machine()},
        **extra,
    }


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
