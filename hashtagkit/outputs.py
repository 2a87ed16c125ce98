"""Writing an output so that a crash never leaves half of it, nor loses the old one.

Every command that makes a store or a run directory writes into a hidden sibling first and
renames it into place only when it is complete. With `overwrite`, the old output is moved
aside before the rename and deleted after it, so at every instant one complete copy exists.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from hashtagkit.errors import InputError


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def refuse_existing(target: str | Path, overwrite: bool) -> Path:
    """Fail early, before any work, when the output exists and may not be replaced."""
    target = Path(target)
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise InputError(f"{target} already exists: pass --overwrite to replace it")
    return target


@contextlib.contextmanager
def atomic_file(target: str | Path) -> Iterator[Path]:
    """Yield a hidden temporary path beside `target` (same suffix, so writers that infer the
    format from it still work) that replaces `target` when the block ends without error."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.tmp-{os.getpid()}{target.suffix}")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes `target` when the block ends without error."""
    target = refuse_existing(target, overwrite)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create {parent}: {e.strerror}") from None
    tmp = parent / f".{target.name}.tmp-{os.getpid()}"
    _remove(tmp)
    try:
        tmp.mkdir()
    except OSError as e:
        raise InputError(f"cannot write in {parent}: {e.strerror}") from None
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    old = None
    if target.exists() or target.is_symlink():
        old = parent / f".{target.name}.old-{os.getpid()}"
        _remove(old)
        os.rename(target, old)
    os.rename(tmp, target)
    if old is not None:
        _remove(old)
