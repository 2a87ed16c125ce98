"""A store in object storage (s3://, gs://...): what a local store gets from its file system,
done with whole-object writes only.

- **One writer** (`lease`): a lease object `STORE.lock` beside the store, created only if absent
  (S3's `If-None-Match: *`, fsspec's `mode="create"`), holding its holder (host, pid) and expiry;
  renewed while the writer runs, each renewal conditional on the lease still being the one it
  wrote (`If-Match` its ETag), so a writer that lost it knows. A lease past its expiry, or one
  whose holder was a process on this host that no longer runs (a SIGKILLed extract), is taken
  over, conditionally too: of two takers one wins. Where a backend cannot write conditionally,
  fsspec checks then writes (a narrow race): run one writer at a time there.
- **Swaps without rename** (`move_prefix`): an array moves by copying its objects (server-side),
  its `zarr.json` last, then deleting the source's `zarr.json` first: at every step either the
  source is complete (and the move is repeated) or the destination is; readers refuse the store
  while the group's `swapping` attribute says a swap is under way (`hashtagkit.stores.aside`).
- **Create in place**: a new store is written where it will live and becomes a hashtagkit store
  only when its last write, the group's `hashtagkit` attribute, lands; before that it is refused
  as a store whose `prepare` did not finish, and `overwrite` replaces it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

from hashtagkit import remote
from hashtagkit.errors import InputError

LEASE_SUFFIX = ".lock"
STARTED = "hashtagkit_being_prepared"  # group attr while `prepare` writes a store (its last write drops it)
LEASE_SECONDS_ENV = "HASHTAGKIT_LEASE_SECONDS"
LEASE_SECONDS = 60.0  # a lease not renewed for this long is free to take; renewed every third of it


def lease_seconds() -> float:
    try:
        return max(1.0, float(os.environ.get(LEASE_SECONDS_ENV, LEASE_SECONDS)))
    except ValueError:
        return LEASE_SECONDS


def _precondition_failed(e: BaseException) -> bool:
    return isinstance(e, FileExistsError) or "pre-condition" in str(e) or "PreconditionFailed" in str(e) \
        or "412" in str(e)


def _alive_here(holder: dict) -> bool:
    """Whether the holder may still run: always, unless it ran on this host and its pid is gone."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder.get("pid", -1)), 0)
    except ProcessLookupError:
        return False
    except (OSError, ValueError):
        return True
    return True


class Lease:
    """The writer's lease on a store at a URL (see the module docstring)."""

    def __init__(self, url: str, doing: str, options: Mapping[str, Any] | None = None):
        self.url = url.rstrip("/") + LEASE_SUFFIX
        self.store_url = url
        self.doing = doing
        self.fs, self.path = remote.filesystem(self.url, options)
        self.seconds = lease_seconds()
        self.holder = {"host": socket.gethostname(), "pid": os.getpid(), "id": uuid.uuid4().hex, "doing": doing}
        self.etag: str | None = None
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps({**self.holder, "expires": time.time() + self.seconds}).encode()

    def _put(self, **condition) -> None:
        out = self.fs.pipe_file(self.path, self._body(), **condition)
        etag = out.get("ETag") if isinstance(out, dict) else None
        self.etag = etag or self.fs.info(self.path).get("ETag")

    def acquire(self) -> None:
        try:
            remote.retrying(lambda: self._put(mode="create"), f"taking the lease {self.url}")
            return
        except Exception as e:  # noqa: BLE001 - a failed precondition is "held", anything else is raised
            if not _precondition_failed(e):
                raise
        try:
            info = self.fs.info(self.path)
            current = json.loads(self.fs.cat_file(self.path))
        except FileNotFoundError:  # released between our try and this read: try once more
            self._put(mode="create")
            return
        except ValueError:
            current, info = {}, self.fs.info(self.path)
        if current.get("id") == self.holder["id"]:  # our own create, retried after its answer was lost
            self.etag = info.get("ETag")
            return
        expired = float(current.get("expires", 0)) < time.time()
        if expired or not _alive_here(current):
            try:  # take it over, only if it is still the lease we read
                self._put(IfMatch=info.get("ETag"))
                return
            except Exception as e:  # noqa: BLE001
                if not _precondition_failed(e):
                    raise
                current = {}
        left = max(0, int(float(current.get("expires", time.time())) - time.time()))
        who = f"{current.get('host', '?')} pid {current.get('pid', '?')}"
        raise InputError(f"{self.store_url} is being {current.get('doing') or 'written'} by another process ({who}; "
                         f"its lease {self.url} expires in {left} s unless renewed); wait for it to finish")

    def renew(self) -> None:
        """Extend the lease, only if it is still ours; else remember that it was lost."""
        try:
            remote.retrying(lambda: self._put(IfMatch=self.etag), f"renewing the lease {self.url}")
        except Exception as e:  # noqa: BLE001
            self.lost = f"{type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"

    def _renewing(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            self.renew()
            if self.lost:
                return

    def check(self) -> None:
        """Refuse to go on (before a commit: the record, a swap) when the lease was lost."""
        if self.lost:
            raise InputError(f"{self.store_url}: this process lost its lease {self.url} ({self.lost}); another "
                             "writer may have taken the store over: nothing more is committed")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(Exception):  # best effort: an expired lease is free anyway
            if self.fs.info(self.path).get("ETag") == self.etag:
                self.fs.rm_file(self.path)

    def __enter__(self) -> Lease:
        self.acquire()
        self._thread = threading.Thread(target=self._renewing, name="store-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.release()
        if kind is None:
            self.check()  # a writer that lost its lease ends with an error, not a success


def remove_prefix(url: str, options: Mapping[str, Any] | None = None) -> None:
    """Delete every object under `url/` (a folder's worth), its `zarr.json` first so that a
    half-deleted array is no array at all to a reader."""
    fs, path = remote.filesystem(url, options)
    files = sorted(remote.retrying(lambda: fs.find(path), f"listing {url}"))
    meta = [f for f in files if f == f"{path}/zarr.json"]
    for batch in (meta, [f for f in files if f not in meta]):
        if batch:
            remote.retrying(lambda b=batch: fs.rm(b), f"deleting under {url}")
    fs.invalidate_cache(path)


def move_prefix(new: str, old: str, options: Mapping[str, Any] | None = None) -> None:
    """The array `new` (complete) takes the place of `old`: `old` deleted, `new`'s objects copied
    there (`zarr.json` last), then `new` deleted (`zarr.json` first). Safe to repeat from any
    point while `new/zarr.json` exists: the object-store twin of `move_array`."""
    fs, src = remote.filesystem(new, options)
    _, dst = remote.filesystem(old, options)
    if not remote.retrying(lambda: fs.exists(f"{src}/zarr.json"), f"looking for {new}"):
        return
    remove_prefix(old, options)
    files = sorted(remote.retrying(lambda: fs.find(src), f"listing {new}"))
    meta = f"{src}/zarr.json"
    rest = [f for f in files if f != meta]
    if rest:
        remote.retrying(lambda: fs.copy(rest, [dst + f[len(src):] for f in rest]), f"copying {new}")
    remote.retrying(lambda: fs.copy(meta, f"{dst}/zarr.json"), f"copying {new}")
    remove_prefix(new, options)
    fs.invalidate_cache(dst)


def refuse_existing_url(url: str, overwrite: bool, options: Mapping[str, Any] | None = None) -> bool:
    """Before `prepare` writes a store at `url`: refuse an existing object there without
    `overwrite`, or, with it, anything but a hashtagkit store (or one whose prepare never
    finished). Returns whether something is to be replaced."""
    fs, path = remote.filesystem(url, options)
    try:
        meta = json.loads(remote.retrying(lambda: fs.cat_file(f"{path}/zarr.json"), f"reading {url}"))
    except FileNotFoundError:
        if remote.retrying(lambda: bool(fs.find(path, maxdepth=1)), f"listing {url}"):
            if not overwrite:
                raise InputError(f"{url} already exists: pass {{opt:overwrite=True}} to replace it") from None
            raise InputError(f"{url} holds objects but no Zarr group: refusing to replace it; choose another "
                             "output URL") from None
        return False
    except ValueError:
        meta = {}
    if not overwrite:
        raise InputError(f"{url} already exists: pass {{opt:overwrite=True}} to replace it")
    attrs = meta.get("attributes") or {}
    # a store, or one whose `prepare` died before its last write (its STARTED mark, or nothing yet)
    ours = isinstance(attrs.get("hashtagkit"), dict) or (meta.get("node_type") == "group" and
                                                         (not attrs or STARTED in attrs))
    if not ours:
        raise InputError(f"{url} is not a hashtagkit store: refusing to replace it; choose another output URL")
    return True
