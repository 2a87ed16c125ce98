"""What every artefact records about how it was made: versions, command line, time, sha256."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import sys
import tempfile
import threading
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


# --- sha256 of weights files, cached -------------------------------------------------------------
SHA256_CACHE_ENV = "HASHTAGKIT_SHA256_CACHE"  # a file path: where the cache lives (tests, benchmarks)
SHA256_CACHE_ENTRIES = 256
_cache_lock = threading.Lock()


def cache_dir() -> Path:
    """hashtagkit's cache folder: $HASHTAGKIT_CACHE, else $XDG_CACHE_HOME/hashtagkit, else ~/.cache/hashtagkit."""
    if os.environ.get("HASHTAGKIT_CACHE"):
        return Path(os.environ["HASHTAGKIT_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path(os.path.expanduser("~")) / ".cache"
    return base / "hashtagkit"


def sha256_cache_file() -> Path:
    return Path(os.environ.get(SHA256_CACHE_ENV) or cache_dir() / "sha256.json")


def _signature(st: os.stat_result) -> list[int]:
    """What says a file is unchanged: size and mtime, plus ctime and inode, which no one can set
    back by hand (`touch -d` restores an mtime, not a ctime), so an edit that keeps the size and
    the mtime is still seen."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, unreadable or damaged: start afresh
        return {}
    entries = data.get("entries") if isinstance(data, dict) and data.get("version") == 1 else None
    return entries if isinstance(entries, dict) else {}


def _write_cache(path: Path, entries: dict) -> None:
    """Atomically (a unique temporary in the same folder, then rename): a reader never sees half a
    file. Two writers at once: the last one wins and the other's entry is hashed again next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"version": 1, "entries": entries}, f)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:  # a read-only home is no reason to fail: the next start hashes again
        pass


def sha256_file_cached(path: str | Path) -> str:
    """`sha256_file`, remembered by (absolute path, size, mtime, ctime, inode) in a small JSON
    under the cache folder, so starting a model does not re-read 500 MB of unchanged weights;
    a file whose size or times changed is hashed again."""
    path = Path(path).resolve()
    key, before = str(path), _signature(os.stat(path))
    cache = sha256_cache_file()
    with _cache_lock:
        hit = _read_cache(cache).get(key)
    if isinstance(hit, dict) and hit.get("stat") == before and isinstance(hit.get("sha256"), str) \
            and len(hit["sha256"]) == 64:
        return hit["sha256"]
    digest = sha256_file(path)
    if _signature(os.stat(path)) != before:  # changed while being read: do not remember a mixture
        return digest
    with _cache_lock:
        entries = _read_cache(cache)
        entries.pop(key, None)
        entries[key] = {"stat": before, "sha256": digest}
        _write_cache(cache, dict(list(entries.items())[-SHA256_CACHE_ENTRIES:]))
    return digest
