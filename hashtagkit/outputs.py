"""Writing an output so that a crash never leaves half of it, nor loses the old one, and so
that `--overwrite` can only ever replace something hashtagkit made of the same kind.

Every command that makes a store or a run directory writes into a hidden sibling first and
renames it into place only when it is complete. With `overwrite`, the old output is moved
aside before the rename and deleted after it, so at every instant one complete copy exists.

`--overwrite` once deleted whatever `-o` named (the input store, the posts file, any folder).
Now every command calls `refuse_existing(target, overwrite, kind=..., inputs=[...])` before
any work: an output that is (or contains, or lies inside) one of the command's inputs is
refused, and an existing output is replaced only when its own metadata says it is a
hashtagkit artefact of that kind. Temporaries of a process that died (SIGKILL, power loss)
are removed by the next write beside them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from hashtagkit.errors import InputError

SHEET_MARKER = "hashtagkit-sheet"  # written into a contact sheet's metadata (PNG/PDF/SVG/JPEG)
DEMO_IMAGES_MARKER = ".hashtagkit-demo-images.json"  # written by `prepare demo` into its image folder
KINDS = ("store", "run", "bench", "sheet", "images", "weights")
_DESCRIPTIONS = {"store": "hashtagkit store", "run": "hashtagkit run directory", "bench": "hashtagkit bench folder",
                 "sheet": "hashtagkit contact sheet", "images": "hashtagkit demo image folder",
                 "weights": "weights file written by `hashtagkit convert-caffe`"}
_DIR_KINDS = {"store", "run", "bench", "images"}
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<what>tmp|old)-(?P<pid>\d+)(?P<suffix>(\.[^./]*)?)$")


class StopRequested(BaseException):
    """The process was asked to stop (Ctrl-C, SIGTERM) and the exception its signal handler
    raised was lost: Python drops an exception raised inside a C extension's import (numpy.random
    on its first use) or a `__del__`. Raised again at the next commit point, so the output is
    not put in place after all. A BaseException, like KeyboardInterrupt."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_stop_signal: int | None = None


def request_stop(signum: int) -> None:
    """Record that a stop signal arrived (the CLI's handlers call it before they raise)."""
    global _stop_signal
    _stop_signal = signum


def clear_stop() -> None:
    """Forget a stop signal: for a command whose normal end is a signal (`serve`)."""
    global _stop_signal
    _stop_signal = None


def stop_requested() -> int | None:
    """The stop signal that arrived, if any."""
    return _stop_signal


def raise_if_stop_requested() -> None:
    """A commit point: an output is not renamed into place once a stop was asked for."""
    if _stop_signal is not None:
        raise StopRequested(_stop_signal)


def _remove(path: Path, tries: int = 100) -> None:
    """Delete a file or a folder. An interrupted writer (zarr writes from its own I/O thread)
    may still add files to a folder for a moment after the exception: retry until it is gone."""
    if path.is_dir() and not path.is_symlink():
        for _ in range(tries):
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                return
            time.sleep(0.05)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _settle_background_writes(timeout: float = 30.0) -> None:
    """Wait (bounded) for the writes zarr already started in its own event-loop thread.

    An interrupt reaches the main thread only; zarr's I/O thread goes on with the chunk writes it
    had started and recreates their folders (zarr makes parent folders on write), so a
    temporary deleted at once could reappear. Once those tasks are done, deleting is final."""
    sync = sys.modules.get("zarr.core.sync")  # zarr not imported: nothing can be writing
    loop = sync.loop[0] if sync is not None and getattr(sync, "loop", None) else None
    if loop is None or loop.is_closed() or not loop.is_running():
        return

    async def others_done() -> None:
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if others:
            await asyncio.wait(others, timeout=timeout)

    with contextlib.suppress(Exception):
        asyncio.run_coroutine_threadsafe(others_done(), loop).result(timeout + 1)


def _json_file(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_store(path: Path) -> bool:
    meta = _json_file(path / "zarr.json")
    attrs = (meta or {}).get("attributes")
    return isinstance(attrs, dict) and isinstance(attrs.get("hashtagkit"), dict)


def _is_sheet(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return SHEET_MARKER.encode() in f.read(64 << 20)
    except OSError:
        return False


def _is_weights(path: Path) -> bool:
    try:
        import torch

        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not a torch file, or not one of plain tensors: not ours either way
        return False
    meta = data.get("hashtagkit") if isinstance(data, dict) else None
    return isinstance(meta, dict) and meta.get("kind") == "weights"


def artefact_kind(path: str | Path) -> str | None:
    """Which hashtagkit artefact `path` is, by its own metadata, or None if it is none of ours."""
    path = Path(path)
    if path.is_symlink():
        return None  # replacing a link would act on what it points to: never ours to judge
    if path.is_dir():
        if _is_store(path):
            return "store"
        if "head" in (_json_file(path / "run.json") or {}):
            return "run"
        if "records" in (_json_file(path / "results.json") or {}):
            return "bench"
        if (path / DEMO_IMAGES_MARKER).is_file():
            return "images"
        return None
    if path.is_file():
        if path.suffix.lower() in (".png", ".pdf", ".svg", ".jpg", ".jpeg") and _is_sheet(path):
            return "sheet"
        if path.suffix.lower() in (".pth", ".pt") and _is_weights(path):
            return "weights"
    return None


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def refuse_inputs(target: str | Path, inputs: Iterable[str | Path | None]) -> None:
    """An output may not be a command's input nor contain one (replacing it would delete the
    input), nor lie inside an input store (a run inside its store would be part of the store's
    folder). Inside another input folder is allowed (a store beside the photos, a sheet in its run):
    an existing output there is still replaced only if it is an artefact of the right kind."""
    out = Path(os.path.abspath(target))
    out_real = Path(os.path.realpath(target))
    for given in inputs:
        if given is None or "://" in str(given):  # an input at a URL is never a local output
            continue
        src, src_real = Path(os.path.abspath(given)), Path(os.path.realpath(given))
        if _within(src, out) or _within(src_real, out_real):
            what = "is" if src_real == out_real or src == out else "contains"
            raise InputError(f"-o {target} {what} the input {given}: choose another output path")
        if (_within(out, src) or _within(out_real, src_real)) and src_real.is_dir() and artefact_kind(src_real) == "store":
            raise InputError(f"-o {target} lies inside the input store {given}: choose a path outside it")


def _check_parent(target: Path) -> None:
    """The nearest existing ancestor of `target` must be a folder we can write in."""
    parent = Path(os.path.abspath(target)).parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"cannot write {target}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {target}: no permission to write in {parent}")


def refuse_existing(target: str | Path, overwrite: bool, kind: str | None = None,
                    inputs: Iterable[str | Path | None] = (), resume: bool = False) -> Path:
    """Fail early, before any work, when the output may not be written.

    Refused: an output that is or holds one of `inputs`; an existing output
    without `overwrite`; with `overwrite`, an existing output that is not a hashtagkit
    artefact of `kind` (an empty folder counts as one for folder kinds). `resume=True` (bench)
    accepts an existing artefact of `kind` or an empty folder without `overwrite`.
    `kind=None` is for library callers that do not know it: any hashtagkit artefact then
    may be replaced, never anything else."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}")
    target = Path(target)
    refuse_inputs(target, inputs)
    _check_parent(target)
    remove_stale_temporaries(target)  # first: a restored `.old` output is then checked like any other
    if not (target.exists() or target.is_symlink()):
        return target
    found = artefact_kind(target)
    empty_dir = target.is_dir() and not target.is_symlink() and not any(target.iterdir())
    matches = (found == kind if kind else found is not None) or (empty_dir and (kind is None or kind in _DIR_KINDS))
    if resume and matches:
        return target
    if not overwrite and not resume:
        raise InputError(f"{target} already exists: pass {{opt:overwrite=True}} to replace it")
    if not matches:
        what = _DESCRIPTIONS[kind] if kind else "hashtagkit output"
        it_is = f"it is a {_DESCRIPTIONS[found]}" if found else \
            "it has no hashtagkit mark; sheets and weights files of earlier versions have none either"
        verb = "write into" if resume else "replace"
        raise InputError(f"{target} is not a {what} ({it_is}): refusing to {verb} it; choose another output path")
    return target


def _pid_alive(pid: int) -> bool:
    """Whether the process that would own a temporary may still run (when in doubt: yes, so
    that nothing of a live writer is ever touched)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):  # another user's process; no such pid at all
        return True
    return True


def remove_stale_temporaries(target: str | Path) -> list[Path]:
    """Remove the hidden temporaries left beside `target` by processes that no longer run.

    `.NAME.tmp-PID[.suffix]` is a half-written output: deleted. `.NAME.old-PID` is the previous
    output moved aside; if the process died before the new one took its place, it is moved
    back, else deleted. Returns what was removed or restored."""
    target = Path(target)
    parent = target.parent
    if not parent.is_dir():
        return []
    handled = []
    for entry in parent.iterdir():
        m = _TEMP.match(entry.name)
        if not m or _pid_alive(int(m["pid"])):
            continue
        mine = (m["name"], m["suffix"]) in ((target.name, ""), (target.stem, target.suffix))
        if not mine:
            continue
        try:
            if m["what"] == "old" and not (target.exists() or target.is_symlink()):
                os.rename(entry, target)
            else:
                _remove(entry)
        except OSError:  # not ours to remove (another user's, a read-only folder): leave it
            continue
        handled.append(entry)
    return handled


@contextlib.contextmanager
def atomic_file(target: str | Path) -> Iterator[Path]:
    """Yield a hidden temporary path beside `target` (same suffix, so writers that infer the
    format from it still work) that replaces `target` when the block ends without error."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp = target.with_name(f".{target.stem}.tmp-{os.getpid()}{target.suffix}")
    try:
        yield tmp
        raise_if_stop_requested()
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(target: str | Path, overwrite: bool = False, kind: str | None = None) -> Iterator[Path]:
    """Yield a temporary directory that becomes `target` when the block ends without error.

    With a `kind`, `target` must pass `refuse_existing(target, overwrite, kind)`; without one
    (a low-level use whose caller has checked `target` itself) it only must not exist unless
    `overwrite`. The old one, if any, is deleted only after the new one is in place."""
    target = Path(target)
    if kind is not None:
        refuse_existing(target, overwrite, kind=kind)  # removes stale temporaries first
    else:
        remove_stale_temporaries(target)
    if kind is None and (target.exists() or target.is_symlink()) and not overwrite:
        raise InputError(f"{target} already exists: pass {{opt:overwrite=True}} to replace it")
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
        raise_if_stop_requested()
    except BaseException:
        _settle_background_writes()
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
