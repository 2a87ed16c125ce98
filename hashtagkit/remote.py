"""Stores and photos at a URL (`s3://`, `gs://`, `az://`, `file://`...): the one place hashtagkit
turns a URL into an fsspec file system, and where storage options come from.

Credentials and endpoints come from where users already keep them: the backend's own
environment variables and profiles (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL_S3`, `AWS_PROFILE`,
`GOOGLE_APPLICATION_CREDENTIALS`...), which the backend reads itself. Anything else is a storage
option (s3fs: `endpoint_url`, `anon`, `key`, `secret`, `client_kwargs`...), given

- per call (`storage_options=` on `hashtagkit.open_store` and friends),
- for the whole process (`use_storage_options`, which the CLI's `--storage-option KEY=VALUE` calls),
- or in the environment: `HASHTAGKIT_STORAGE_OPTIONS`, a JSON object.

They are secrets: never printed, never written into a store's or a run's provenance; a run
records its store's URL only and reopens it with the options of the process that reads it.

A `file://` URL is a local path (every local guarantee holds: rename, locks). Every other
scheme is an object store: no rename, no locks, whole-object writes; `hashtagkit.stores`
keeps its guarantees there in other ways (a lease object, swaps by copy). S3 requests that
fail for the network's sake (503 SlowDown, 500, a reset, a timeout) are retried by botocore
with bounded backoff (`S3_RETRIES`), and the store's readers and writers retry the rest
(`retrying`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from hashtagkit.errors import InputError

ENV = "HASHTAGKIT_STORAGE_OPTIONS"
# botocore's own retries of throttling, 5xx, resets and timeouts ("standard" mode: exponential
# backoff with jitter, capped at 20 s a wait); with the timeouts below a store that stays away
# ends a command in about a minute rather than hanging it
S3_RETRIES = {"max_attempts": 6, "mode": "standard"}
S3_TIMEOUTS = {"connect_timeout": 10, "read_timeout": 30}
# hashtagkit's own retries around a whole step (a chunk read, a chunk write), over what the
# backend retried itself: attempts and the first wait, doubled each time
RETRY_ATTEMPTS = 4
RETRY_FIRST_WAIT = 0.5

_process_options: dict | None = None
_filesystems: dict[str, Any] = {}

T = TypeVar("T")


def is_url(target: str | os.PathLike) -> bool:
    """An fsspec URL (s3://, gs://, file://...) rather than a local path."""
    return "://" in str(target)


def is_remote(target: str | os.PathLike) -> bool:
    """A URL of an object store (anything but `file://`): no rename, no locks."""
    return is_url(target) and not str(target).startswith("file://")


def local_path(target: str | os.PathLike) -> Path:
    """A local path or `file://` URL as a Path (a remote URL is refused: the caller's bug)."""
    text = str(target)
    if text.startswith("file://"):
        return Path(text[len("file://"):])
    if is_url(text):
        raise ValueError(f"{text} is not a local path")
    return Path(text)


def normalise(target: str | os.PathLike) -> str | Path:
    """What a store or photo folder argument means: a Path for a local path or `file://` URL,
    the URL string (no trailing slash) for an object store."""
    if is_remote(target):
        return str(target).rstrip("/")
    return local_path(target)


def use_storage_options(options: Mapping[str, Any] | None) -> None:
    """Storage options for every URL this process opens without options of its own (the CLI's
    `--storage-option`); None clears them."""
    global _process_options
    _process_options = dict(options) if options is not None else None
    _filesystems.clear()


def parse_option(text: str) -> tuple[str, Any]:
    """`KEY=VALUE` -> (key, value): the value as JSON where it parses (`anon=true`,
    `client_kwargs={"region_name": "eu-west-1"}`), else the string (`endpoint_url=http://...`)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise InputError(f"{{param}} takes KEY=VALUE, not {text!r}", param="storage_option")
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = value
    return key.strip(), parsed


def storage_options(given: Mapping[str, Any] | None = None) -> dict:
    """The options a URL is opened with: `given`, else the process's (`use_storage_options`),
    else `HASHTAGKIT_STORAGE_OPTIONS` (a JSON object), else none."""
    if given is not None:
        return dict(given)
    if _process_options is not None:
        return dict(_process_options)
    text = os.environ.get(ENV, "").strip()
    if not text:
        return {}
    try:
        options = json.loads(text)
    except ValueError as e:
        raise InputError(f"{ENV} is not a JSON object ({e.msg})") from None
    if not isinstance(options, dict):
        raise InputError(f"{ENV} must hold a JSON object, e.g. {{\"endpoint_url\": \"http://127.0.0.1:9000\"}}")
    return options


def with_defaults(url: str, options: Mapping[str, Any]) -> dict:
    """`options` plus hashtagkit's defaults for the backend (S3: bounded retries and timeouts,
    merged under what the user set)."""
    options = dict(options)
    if url.startswith(("s3://", "s3a://")):
        config = dict(options.get("config_kwargs") or {})
        config.setdefault("retries", dict(S3_RETRIES))
        for key, value in S3_TIMEOUTS.items():
            config.setdefault(key, value)
        options["config_kwargs"] = config
    return options


def filesystem(url: str, options: Mapping[str, Any] | None = None):
    """(fsspec file system, path inside it) of an object-store URL, the file system cached per
    process and options (s3fs keeps one connection pool per instance). Per process: an async
    file system is not fork-safe, so a forked decode worker opens its own."""
    import fsspec.core

    opts = with_defaults(url, storage_options(options))
    key = f"{os.getpid()}:{url.split('://', 1)[0]}:{json.dumps(opts, sort_keys=True, default=str)}"
    try:
        fs = _filesystems.get(key)
        if fs is None:
            fs, _ = fsspec.core.url_to_fs(url, **opts)
            _filesystems[key] = fs
    except ImportError as e:
        raise InputError(f"{url}: this URL needs a package that is not installed ({e}); for s3:// "
                         "`pip install s3fs`, gs:// gcsfs, az:// adlfs") from None
    except (TypeError, ValueError) as e:
        raise InputError(f"{url}: the storage options do not suit this backend ({e})") from None
    return fs, fs._strip_protocol(url)


def zarr_options(url: str, options: Mapping[str, Any] | None = None) -> dict:
    """The `storage_options` Zarr opens `url` with (hashtagkit's defaults included)."""
    return with_defaults(url, storage_options(options))


def transient(e: BaseException) -> bool:
    """Whether an error of a remote call is worth another try (the network's, not the request's)."""
    if isinstance(e, (ConnectionError, TimeoutError)):
        return True
    text = f"{type(e).__name__} {e}"
    return any(s in text for s in ("SlowDown", "ServiceUnavailable", "InternalError", "503", "500 ",
                                   "Connection", "Timeout", "timed out", "reset", "Read timeout"))


def retrying(call: Callable[[], T], what: str, attempts: int = RETRY_ATTEMPTS,
             first_wait: float = RETRY_FIRST_WAIT, sleep: Callable[[float], None] = time.sleep) -> T:
    """`call()`, tried again after transient errors (`transient`) with doubling waits, at most
    `attempts` times; then one clear error naming `what`. A non-transient error goes through."""
    wait = first_wait
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as e:  # noqa: BLE001 - sorted by `transient` below
            if not transient(e):
                raise
            if attempt == attempts:
                raise StoreUnreachable(f"{what}: the object store stayed unreachable after {attempts} tries "
                                       f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})") from e
            sleep(wait)
            wait *= 2
    raise AssertionError("unreachable")


class StoreUnreachable(InputError):
    """An object store that stayed away through every retry: one line and a non-zero exit,
    nothing marked done that was not written; the same command again resumes."""
