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
keeps its guarantees there in other ways (a lease object, swaps by copy).

Faults of the network or the service (503 SlowDown, 500, a reset, a timeout) are retried in layers,
each bounded, so that a store that stays away ends a command with one line (`StoreUnreachable`)
rather than hanging it:

- botocore retries every S3 request (`S3_RETRIES`: "standard" mode, 4 attempts, waits of
  rand(0, 1) x 1, 2 then 4 s; connect and read timeouts `S3_TIMEOUTS`);
- s3fs repeats a request that still failed by throttling (SlowDown), a reset or a timeout,
  5 times in all (its own `S3FileSystem.retries`, waits of 0.1 to 0.8 s), not a 500;
- hashtagkit's `retrying` repeats a whole step (open a store, read a photo, take the lease...)
  after a transient error (`transient`), starting no new try after `RETRY_SECONDS`.

What a store that stays away costs, at most, before a request gives up (botocore's waits are
jittered: about half of this on average):

- every request answered 503 SlowDown: 5 x (1 + 2 + 4) s of botocore's waits + 1.9 s of
  s3fs's = 37 s (a GET's or HEAD's 503 reaches s3fs without its code, so s3fs does not repeat
  it: 7 s);
- connections refused: 7 s; not accepted (a black hole): 4 x 5 s connect timeouts + 7 s = 27 s;
- connections accepted, never answered: 5 x (4 x 10 s read timeouts + 7 s) + 1.9 s = 4 min;

and a step (`retrying`) at most `RETRY_SECONDS` more than its last request. botocore's retry
quota (a client retries at most about 100 times while nothing succeeds) shortens a long outage
further. Storage options override any of botocore's part (`config_kwargs`: `retries`,
`connect_timeout`, `read_timeout`).
"""

from __future__ import annotations

import errno
import json
import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from hashtagkit.errors import InputError

ENV = "HASHTAGKIT_STORAGE_OPTIONS"
# botocore's own retries of throttling, 5xx, resets and timeouts ("standard" mode: exponential
# backoff with jitter); s3fs repeats throttled, reset and timed-out requests 5 times over these
# (see the module docstring for what a store that stays away costs)
S3_RETRIES = {"total_max_attempts": 4, "mode": "standard"}  # 4 in all (botocore's `max_attempts` counts retries)
S3_TIMEOUTS = {"connect_timeout": 5, "read_timeout": 10}
# hashtagkit's own retries around a whole step (a chunk read, a chunk write), over what the
# backend retried itself: attempts, the first wait (doubled each time), and the time after
# which no new try starts (a step whose request already waited through the backend's retries
# is not repeated for long)
RETRY_ATTEMPTS = 4
RETRY_FIRST_WAIT = 0.5
RETRY_SECONDS = 20.0

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
    # no listing cache: other processes (a Dask worker, an extract beside this reader) add objects,
    # and a listing kept from before says they are not there
    options.setdefault("use_listings_cache", False)
    if url.startswith(("s3://", "s3a://")):
        config = dict(options.get("config_kwargs") or {})
        config.setdefault("retries", dict(S3_RETRIES))
        for key, value in S3_TIMEOUTS.items():
            config.setdefault(key, value)
        options["config_kwargs"] = config
        # s3fs splits a whole-object GET into concurrent ranges when max_concurrency > 1, after a
        # HEAD for the size: a store's objects are a few MiB, so that HEAD only doubled the
        # requests (benchmarks/results/object_store.md)
        options.setdefault("max_concurrency", 1)
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


# errors that say the network or the service failed, not the request: by class name (anywhere
# in the class's MRO, so no backend needs importing): botocore's, aiohttp's, fsspec's, Python's
_TRANSIENT_TYPES = frozenset({
    "ConnectionError", "TimeoutError", "HTTPClientError", "EndpointConnectionError", "ConnectTimeoutError",
    "ReadTimeoutError", "ConnectionClosedError", "IncompleteReadError", "ResponseStreamingError",
    "ClientConnectionError", "ClientPayloadError", "ServerTimeoutError", "ServerDisconnectedError",
    "FSTimeoutError", "ServiceRequestError", "ServiceResponseError", "IncompleteRead", "RemoteDisconnected",
})
# ...unless they say the request itself is wrong (a certificate, a URL)
_PERMANENT_TYPES = frozenset({"SSLError", "ClientSSLError", "ClientConnectorCertificateError", "InvalidURL",
                              "FileNotFoundError", "FileExistsError", "PermissionError", "IsADirectoryError",
                              "NotADirectoryError", "NoCredentialsError", "ParamValidationError"})
# S3 error codes and HTTP statuses worth another try (throttling, the service's own failures)
_TRANSIENT_CODES = frozenset({"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling",
                              "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
                              "OperationAborted", "ConditionalRequestConflict",
                              "500", "502", "503", "504", "429"})
_TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
# how s3fs translates those codes: OSError(EBUSY) for SlowDown/503/ServiceUnavailable/409,
# OSError(EREMOTEIO) for InternalError/500, TimeoutError for RequestTimeout
_TRANSIENT_ERRNO = frozenset(getattr(errno, name) for name in (
    "EBUSY", "EREMOTEIO", "ETIMEDOUT", "ECONNRESET", "ECONNREFUSED", "ECONNABORTED", "EPIPE", "EHOSTUNREACH",
    "ENETUNREACH", "ENETDOWN", "ENETRESET", "EAGAIN") if hasattr(errno, name))
# what botocore writes when an error response has a code: "An error occurred (SlowDown) when ..."
_CODE_IN_TEXT = re.compile(r"\((" + "|".join(sorted(_TRANSIENT_CODES)) + r")\)")
_ENDPOINT = re.compile(r"\bhttps?://[^/\s\"'<>]+", re.IGNORECASE)


def _chain(e: BaseException) -> list[BaseException]:
    """`e` and what it was raised from or during (s3fs keeps botocore's error as the cause)."""
    out: list[BaseException] = []
    while e is not None and len(out) < 8 and all(e is not seen for seen in out):
        out.append(e)
        e = e.__cause__ if e.__cause__ is not None else (None if e.__suppress_context__ else e.__context__)
    return out


def _transient_one(e: BaseException) -> bool | None:
    """True/False where `e` alone says whether it is worth another try, None where it does not."""
    names = {k.__name__ for k in type(e).__mro__}
    if names & _PERMANENT_TYPES:
        return False
    response = getattr(e, "response", None)  # botocore's ClientError
    if isinstance(response, dict):
        error = response.get("Error") or {}
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        return str(error.get("Code")) in _TRANSIENT_CODES or status in _TRANSIENT_STATUS
    for attr in ("status_code", "status", "code"):  # gcsfs's HttpError.code, adlfs's status_code
        value = getattr(e, attr, None)
        if isinstance(value, int) and value >= 400:
            return value in _TRANSIENT_STATUS
    if names & _TRANSIENT_TYPES:
        return True
    if isinstance(e, OSError) and e.errno is not None:
        return e.errno in _TRANSIENT_ERRNO
    return None


def transient(e: BaseException) -> bool:
    """Whether an error of a remote call is worth another try: the network's or the service's
    (throttling, a 5xx, a reset, a timeout), not the request's (a missing object, a refused
    credential, a bad certificate), as it arrives from botocore, from s3fs (which translates
    S3's codes into OSErrors and keeps botocore's error as the cause) or through Zarr. An
    `InputError` never is: it is a verdict already."""
    if isinstance(e, InputError):
        return False  # decided already (a StoreUnreachable: retried to the end)
    for link in _chain(e):
        verdict = _transient_one(link)
        if verdict is not None:
            return verdict
    return bool(_CODE_IN_TEXT.search(str(e)))


def describe(e: BaseException) -> str:
    """One line about an error of a remote call: the service's status and code where it answered
    (`503 SlowDown: Please reduce your request rate.`), else the error's type and first line,
    with any endpoint (a storage option, never printed) left out."""
    for link in _chain(e):
        response = getattr(link, "response", None)
        if isinstance(response, dict) and response.get("Error"):
            error = response["Error"]
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            code = str(error.get("Code") or "")
            head = " ".join(x for x in (str(status or ""), "" if code == str(status) else code) if x)
            text = f"{head}: {error.get('Message')}" if error.get("Message") else head
            break
    else:
        first = (str(e).strip().splitlines() or [""])[0]
        text = f"{type(e).__name__}: {first}" if first else type(e).__name__
    return _ENDPOINT.sub("<endpoint>", text)[:200]


def retrying(call: Callable[[], T], what: str, attempts: int | None = None, first_wait: float | None = None,
             sleep: Callable[[float], None] = time.sleep, seconds: float | None = None,
             clock: Callable[[], float] = time.monotonic) -> T:
    """`call()`, tried again after transient errors (`transient`) with doubling waits, at most
    `attempts` times and no new try after `seconds` (by default `RETRY_ATTEMPTS`,
    `RETRY_FIRST_WAIT`, `RETRY_SECONDS`, read when called); then one clear error naming `what`
    (`StoreUnreachable`). A non-transient error goes through."""
    attempts = RETRY_ATTEMPTS if attempts is None else attempts
    seconds = RETRY_SECONDS if seconds is None else seconds
    wait, started = RETRY_FIRST_WAIT if first_wait is None else first_wait, clock()
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as e:  # noqa: BLE001 - sorted by `transient` below
            if not transient(e):
                raise
            if attempt == attempts or clock() - started + wait > seconds:
                raise unreachable(e, what, attempt) from e
            sleep(wait)
            wait *= 2
    raise AssertionError("unreachable")


def unreachable(e: BaseException, what: str | None = None, tries: int | None = None) -> StoreUnreachable:
    """The one-line error for a transient fault that retries did not get past (`e`), about `what`
    ("writing chunk 3 of s3://b/h.zarr") where known."""
    after = f" after {tries} tr{'y' if tries == 1 else 'ies'}" if tries else ""
    where = f"{what}: " if what else ""
    return StoreUnreachable(f"{where}the object store stayed unreachable{after} ({describe(e)}); run the same "
                            "command again once it answers")


# where an error of an object store's backend comes from (its module's top package)
_BACKENDS = frozenset({"botocore", "aiobotocore", "aiohttp", "s3fs", "gcsfs", "adlfs", "azure", "google", "fsspec",
                       "urllib3", "requests", "httpx"})


def escaped(e: BaseException) -> StoreUnreachable | None:
    """For a front end (the CLI): the one-line `StoreUnreachable` for a transient error of an
    object store that got past every retry where no `retrying` wraps the call (a Zarr read or
    write: s3fs's OSError(EBUSY) with botocore's 503 as its cause); None for any other error,
    a local disk's included."""
    if isinstance(e, InputError) or not transient(e):
        return None
    if not any(type(link).__module__.split(".")[0] in _BACKENDS for link in _chain(e)):
        return None
    return unreachable(e)


class StoreUnreachable(InputError):
    """An object store that stayed away through every retry: one line and a non-zero exit,
    nothing marked done that was not written; the same command again resumes."""
