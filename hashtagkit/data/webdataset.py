"""Photos inside webdataset tar shards (as img2dataset writes them), read in place.

A shard is an uncompressed tar whose members group into samples by key: the member name up to
the first dot of its basename (`dir/000123.jpg`, `dir/000123.json` and `dir/000123.txt` are
sample `dir/000123`, with extensions `jpg`, `json`, `txt`), consecutive members sharing a key,
as webdataset's `tariterators.group_by_keys` groups them. Shards are local files or fsspec URLs
given brace-expanded (`shards/{00000..00099}.tar`).

`prepare` streams each shard once (`scan_shards`: tarfile's `r|` mode over the file object,
never unpacked, never read twice) and records, per sample with an image, the shard and member
(`paths`: `shard.tar#dir/000123.jpg`, relative to the shards' common parent) and the member's
byte range in the shard (the store's `members` array). Extraction then reads just those bytes
(`ShardPhotos`: one ranged read per photo, or one per shard and batch after `prefetch`), so a
shard is never downloaded whole to read one photo and no copy of the collection is made.
The shards' sizes and ETags (object stores) or sha256 (local files) are recorded, so a resume
can refuse shards rewritten since (`check_shards`): a byte range is only true of the shard it
was measured in.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import string
import tarfile
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import chain
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from hashtagkit import provenance, remote
from hashtagkit.choices import TAGS_FROM
from hashtagkit.data.photos import Photos
from hashtagkit.errors import InputError
from hashtagkit.images import DecodeError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # the sample's photo: the first present, in this order
HASHTAG = re.compile(r"(?<!\w)#(\w+)")  # `#word` in a caption; "#like4like" is rejected later by the cleaning
MAX_TEXT_MEMBER = 16 << 20  # a json/txt member larger than this is not read (no hashtags), never held in memory
STREAM_BUFSIZE = 256 << 10  # tarfile's read size while streaming (its default, 10 KiB, means many tiny reads)
REMOTE_BLOCK_SIZE = 8 << 20  # fsspec's read-ahead block while streaming a remote shard
PREFETCH_GAP = 1 << 20  # members this close in a shard are fetched by one ranged read (the gap is read too)
PREFETCH_SPAN = 256 << 20  # the most bytes one prefetch read holds
TRAILER_CHECK = 1 << 20  # bytes after the end-of-archive marker that are read to check they are padding


# --- shard lists ---------------------------------------------------------------------------------

_INT_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)(?:\.\.-?(\d+))?$")
_CHAR_RANGE = re.compile(r"^([A-Za-z])\.\.([A-Za-z])(?:\.\.-?(\d+))?$")
_ALPHABET = string.ascii_uppercase + string.ascii_lowercase


def expand_shards(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Shard names from brace patterns as webdataset takes them (the braceexpand package's rules):
    `{00000..00099}` (zero padding kept), `{1..9..2}`, `{a..e}`, `{train,val}`, nested; several
    specs are expanded in turn and concatenated, order kept. No backslash escapes."""
    specs = [spec] if isinstance(spec, str | os.PathLike) else list(spec)
    out: list[str] = []
    for one in specs:
        text = os.fspath(one)
        try:
            names = _expand(text)
        except ValueError as e:
            raise InputError(f"{{param}}: {text!r} is not a valid shard pattern ({e})", param="shards") from None
        if any(not n.strip() for n in names):
            raise InputError(f"{{param}}: {text!r} gives an empty shard name", param="shards")
        out.extend(names)
    if not out:
        raise InputError("{param}: no shard given", param="shards")
    return out


def _expand(pattern: str) -> list[str]:
    """braceexpand's expansion: the first top-level brace group's alternatives, times the rest."""
    depth, start = 0, 0
    for i, c in enumerate(pattern):
        if c == "{":
            if depth == 0:
                start = i
            depth += 1
        elif c == "}":
            depth -= 1
            if depth < 0:
                raise ValueError("a '}' without its '{'")
            if depth == 0:
                head, inner, tail = pattern[:start], pattern[start + 1 : i], _expand(pattern[i + 1 :])
                alternatives = _alternatives(inner)
                if alternatives is None:  # `{x}` is no expression: literal braces, as in bash
                    alternatives = ["{" + x + "}" for x in _expand(inner)]
                return [head + a + t for a in alternatives for t in tail]
    if depth:
        raise ValueError("a '{' without its '}'")
    return [pattern]


def _alternatives(expr: str) -> list[str] | None:
    if m := _INT_RANGE.match(expr):
        first, last, step = m.groups()
        padded = any(s.startswith(("0", "-0")) for s in (first, last) if s not in ("0", "-0"))
        width, step_n = (max(len(first), len(last)) if padded else 0), (int(step) or 1) if step else 1
        a, b = int(first), int(last)
        numbers = range(a, b + 1, step_n) if a < b else range(a, b - 1, -step_n)
        return [f"{n:0{width}d}" for n in numbers]
    if m := _CHAR_RANGE.match(expr):
        first, last, step = m.groups()
        step_n = (int(step) or 1) if step else 1
        a, b = _ALPHABET.index(first), _ALPHABET.index(last)
        return list(_ALPHABET[a : b + 1 : step_n] if a < b else _ALPHABET[a : (b - 1 if b else None) : -step_n])
    parts, depth, start = [], 0, 0
    for i, c in enumerate(expr):
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(expr[start:i])
            start = i + 1
    if not parts:
        return None
    parts.append(expr[start:])
    return list(chain.from_iterable(_expand(p) for p in parts))


# --- what identifies a shard ------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardInfo:
    """What identifies a shard's bytes: its size and, from an object store, its ETag; for a local
    file its sha256. A byte range recorded by `prepare` holds only while these are unchanged."""

    url: str
    size: int
    etag: str | None
    sha256: str | None


def _etag(info: Mapping[str, Any]) -> str | None:
    for key in ("ETag", "etag", "Etag"):
        if info.get(key):
            return str(info[key])
    return None


class _MissingShard(InputError):
    """A shard that is not there (`check_shards` words it as one gone since `prepare`)."""


def shard_info(url: str, storage_options: Mapping[str, Any] | None = None) -> ShardInfo:
    """The shard's size and ETag (`fs.info`, one request) or, for a local file, its size and
    sha256 (which reads it). A missing shard is an InputError naming it."""
    if remote.is_remote(url):
        fs, path = remote.filesystem(url, storage_options)
        try:
            info = remote.retrying(lambda: fs.info(path), f"reading {url}")
        except FileNotFoundError:
            raise _MissingShard(f"shard {url} does not exist") from None
        except (OSError, ValueError) as e:
            raise InputError(f"shard {url} cannot be read ({_first_line(e)})") from None
        return ShardInfo(url, int(info["size"]), _etag(info), None)
    path = remote.local_path(url)
    try:
        if path.is_dir():
            raise InputError(f"shard {path} is a folder, not a tar file")
        return ShardInfo(str(url), path.stat().st_size, None, provenance.sha256_file(path))
    except FileNotFoundError:
        raise _MissingShard(f"shard {path} does not exist") from None
    except OSError as e:
        raise InputError(f"shard {path} cannot be read ({e.strerror or e})") from None


def check_shards(recorded: Sequence[Mapping[str, Any]], image_root: str | Path,
                 storage_options: Mapping[str, Any] | None = None) -> None:
    """Refuse shards that changed since `prepare` recorded them (`source["shards"]`: url relative
    to `image_root`, size, etag, sha256): the store's byte ranges would then point at other
    bytes. Sizes are compared first; a local shard is hashed only when its size held."""
    for rec in recorded:
        url = _join(image_root, str(rec["url"]))
        try:
            if not remote.is_remote(url):  # the cheap check first: a changed size needs no hashing
                size = remote.local_path(url).stat().st_size
                if size != rec["size"]:
                    raise _changed(url, f"size {rec['size']:,} -> {size:,}")
            now = shard_info(url, storage_options)
        except (FileNotFoundError, _MissingShard):
            raise InputError(f"shard {url} is gone since `prepare webdataset`: put it back, or prepare the store "
                             "again") from None
        if now.size != rec["size"]:
            raise _changed(url, f"size {rec['size']:,} -> {now.size:,}")
        for key in ("etag", "sha256"):
            before, after = rec.get(key), getattr(now, key)
            if before is not None and after is not None and before != after:
                raise _changed(url, f"{key} {before[:16]} -> {after[:16]}")


def _changed(url: str, what: str) -> InputError:
    return InputError(f"shard {url} changed since `prepare webdataset` ({what}): prepare the store again")


def _join(root: str | Path, rel: str) -> str:
    """A shard's full name from the image root and its relative path (a URL, or a local path)."""
    if remote.is_remote(root):
        return f"{str(root).rstrip('/')}/{rel}"
    return str(remote.local_path(root) / rel)


def _first_line(e: BaseException) -> str:
    text = str(e).splitlines()[0][:120] if str(e) else ""
    return text or type(e).__name__


# --- scanning -----------------------------------------------------------------------------------


class ShardSample(NamedTuple):
    """A sample with a photo: its shard (index in the expanded list), key, the photo member's
    name, byte offset and size of the member's data in the shard, and its raw hashtags (None:
    the sample has no member to take hashtags from)."""

    shard: int
    key: str
    member: str
    offset: int
    size: int
    tags: list[str] | None


@dataclass
class ShardDamage:
    """A shard that could not be read to its end: where and why, and how many samples were kept."""

    url: str
    reason: str
    kept: int


class _Counting:
    """The shard's file object as tarfile reads it: counts the bytes, hashes them (a local shard's
    sha256 in the same pass) and keeps the last few reads, so the bytes after the end-of-archive
    marker can be checked to be zero padding (a damaged header also ends tarfile's iteration)."""

    def __init__(self, f, digest: bool):
        self.f, self.pos = f, 0
        self.hash = hashlib.sha256() if digest else None
        self.recent: deque[tuple[int, bytes]] = deque(maxlen=4)  # tarfile reads ahead by one buffer at most

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        if self.hash is not None:
            self.hash.update(data)
        self.recent.append((self.pos, data))
        self.pos += len(data)
        return data

    def since(self, start: int) -> bytes:
        """The bytes read from `start` on that are still held."""
        return b"".join(d[max(0, start - p):] for p, d in self.recent if p + len(d) > start)


def _key_ext(name: str) -> tuple[str | None, str]:
    """webdataset's `base_plus_ext`: (sample key, extensions) of a member name, (None, '') for a
    name without an extension (webdataset skips those too)."""
    m = re.match(r"^((?:.*/|)[^.]+)[.]([^/]*)$", name)
    return (m.group(1), m.group(2)) if m else (None, "")


def _is_meta(name: str) -> bool:
    """webdataset's metadata members (`__key__`-like names), which are no sample's."""
    return re.match(r"__[^/]*__($|/)", name) is not None


def _zeros(data: bytes) -> bool:
    return data.count(0) == len(data)


class ShardScan:
    """`scan_shards`'s iterator over `ShardSample`s. Once it is exhausted: `infos` (a ShardInfo
    per shard, full name), `damaged` (shards not readable to their end), and the samples it met
    that give no or odd data: `no_image` (skipped: no photo member), `no_tags` (no hashtag found),
    `bad_json` (a json member that does not parse, or whose `hashtags` is no list), `repeated`
    (a member name seen again in its shard: skipped). Single-use: each shard is streamed once."""

    def __init__(self, shards: str | Sequence[str], storage_options: Mapping[str, Any] | None = None,
                 tags_from: str = "auto"):
        if tags_from not in TAGS_FROM:
            raise InputError(f"{{param}} must be one of {', '.join(TAGS_FROM)}, not {tags_from!r}", param="tags_from")
        self.urls = expand_shards(shards)
        self.tags_from = tags_from
        self.storage_options = remote.storage_options(storage_options)
        self.infos: list[ShardInfo] = []
        self.damaged: list[ShardDamage] = []
        self.no_image = self.no_tags = self.bad_json = self.repeated = 0
        self._samples = chain.from_iterable(self._shard(i, url) for i, url in enumerate(self.urls))

    def __iter__(self) -> Iterator[ShardSample]:
        return self

    def __next__(self) -> ShardSample:
        return next(self._samples)

    def _open(self, url: str) -> tuple[Any, int, str | None]:
        """(file object, size, ETag) of a shard; a missing or unreadable one is an InputError."""
        if remote.is_remote(url):
            info = shard_info(url, self.storage_options)  # one HEAD: the size and ETag recorded
            fs, path = remote.filesystem(url, self.storage_options)
            try:
                f = remote.retrying(lambda: fs.open(path, "rb", block_size=REMOTE_BLOCK_SIZE), f"reading {url}")
            except FileNotFoundError:
                raise _MissingShard(f"shard {url} does not exist") from None
            return f, info.size, info.etag
        path = remote.local_path(url)
        if path.is_dir():
            raise InputError(f"shard {path} is a folder, not a tar file")
        try:
            f = open(path, "rb")  # closed by `_shard`
        except FileNotFoundError:
            raise _MissingShard(f"shard {path} does not exist") from None
        except OSError as e:
            raise InputError(f"shard {path} cannot be read ({e.strerror or e})") from None
        return f, os.fstat(f.fileno()).st_size, None

    def _shard(self, index: int, url: str) -> Iterator[ShardSample]:
        """The samples of one shard, streamed. A sample is yielded once the next one's first
        header has been read, i.e. when all of its members are known to be whole; on damage the
        sample being read is dropped with everything after it."""
        f, size, etag = self._open(url)
        local = not remote.is_remote(url)
        kept, damage, group = 0, None, None
        with f:
            counted = _Counting(f, digest=local)
            try:
                tar = tarfile.open(fileobj=counted, mode="r|", bufsize=STREAM_BUFSIZE)
            except tarfile.ReadError as e:
                self._refuse_compressed(url, counted.since(0)[:6])
                tar, damage = None, f"not a tar file ({_first_line(e)})"
            if tar is not None:
                seen: set[str] = set()
                try:
                    for info in tar:
                        tar.members = []  # streaming: keep no list of every member met
                        name = info.name
                        key, ext = _key_ext(name)
                        if key is None or not info.isreg() or info.issparse() or _is_meta(name):
                            continue
                        if name in seen:
                            self.repeated += 1
                            continue
                        seen.add(name)
                        if group is None or key != group["key"]:
                            if group is not None and (sample := self._sample(index, group)) is not None:
                                kept += 1
                                yield sample
                            group = {"key": key, "members": {}, "text": {}}
                        ext = ext.lower()
                        group["members"].setdefault(ext, (name, info.offset_data, info.size))
                        if ext in ("json", "txt") and ext not in group["text"] and info.size <= MAX_TEXT_MEMBER:
                            group["text"][ext] = tar.extractfile(info).read()
                    damage = self._end_problem(tar.offset, counted, size, local)
                except (tarfile.TarError, EOFError) as e:
                    damage = f"{_first_line(e)} (near byte {counted.pos:,})"
                except OSError as e:
                    if remote.transient(e):
                        raise remote.StoreUnreachable(f"reading {url}: {_first_line(e)}") from None
                    raise InputError(f"shard {url} cannot be read ({_first_line(e)})") from None
            if damage is None and group is not None and (sample := self._sample(index, group)) is not None:
                kept += 1
                yield sample
            if damage is not None:
                self.damaged.append(ShardDamage(url, damage, kept))
            if local:
                while counted.read(1 << 20):  # the sha256 covers the whole file
                    pass
        digest = counted.hash.hexdigest() if counted.hash is not None else None
        self.infos.append(ShardInfo(url, counted.pos if local else size, etag, digest))

    @staticmethod
    def _refuse_compressed(url: str, head: bytes) -> None:
        """A gzip, bzip2, xz or zstd shard is the user's to decompress: say so rather than "damaged"."""
        if head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd")):
            raise InputError(f"shard {url} is compressed: photos are read from a shard by byte range, which needs "
                             "an uncompressed tar file (decompress the shards first)")

    @staticmethod
    def _end_problem(end: int, counted: _Counting, size: int, local: bool) -> str | None:
        """Why the archive's end at byte `end` (where tarfile found no further header) is not a
        proper end: no zero block there (the shard was cut short), or data after it (a damaged
        header ends tarfile's iteration silently)."""
        if size - end < tarfile.BLOCKSIZE:
            return f"truncated: it ends at byte {size:,} without the end-of-archive marker"
        unreadable = f"an unreadable header at byte {end:,}; the {size - end:,} bytes from there were not read"
        if not local and size - end > TRAILER_CHECK:
            return unreadable
        if not _zeros(counted.since(end)):
            return unreadable
        while chunk := counted.read(1 << 20):
            if not _zeros(chunk):
                return unreadable
        return None

    def _sample(self, index: int, group: dict[str, Any]) -> ShardSample | None:
        """The sample's photo member and hashtags, or None (counted) for a sample without a photo."""
        image = next((group["members"][ext] for ext in IMAGE_EXTENSIONS if ext in group["members"]), None)
        if image is None:
            self.no_image += 1
            return None
        tags = self._tags(group["text"])
        self.no_tags += not tags
        return ShardSample(index, group["key"], *image, tags)

    def _tags(self, text: dict[str, bytes]) -> list[str] | None:
        """`tags_from` json: the json member's `hashtags`; txt: the caption's `#words`; auto: json
        when it has `hashtags`, else txt. None: no member to take them from."""
        if self.tags_from != "txt" and "json" in text:
            tags = self._json_tags(text["json"])
            if tags is not None or self.tags_from == "json":
                return tags
        if self.tags_from != "json" and "txt" in text:
            return ["#" + t for t in HASHTAG.findall(text["txt"].decode("utf-8", errors="replace"))]
        return None

    def _json_tags(self, data: bytes) -> list[str] | None:
        try:
            meta = json.loads(data)
        except (ValueError, RecursionError):
            self.bad_json += 1
            return None
        if not isinstance(meta, dict) or "hashtags" not in meta:
            return None
        tags = meta["hashtags"]
        if not isinstance(tags, list):
            self.bad_json += 1
            return None
        return [t for t in tags if isinstance(t, str)]


def scan_shards(shards: str | Sequence[str], storage_options: Mapping[str, Any] | None = None,
                tags_from: str = "auto") -> ShardScan:
    """Stream each shard once and give, per sample with a photo member (jpg, jpeg, png, webp:
    the first present in that order), a `ShardSample`: (shard index, key, member name, data
    offset, size, raw hashtags or None). A damaged or truncated shard keeps the samples read
    before the damage and is reported in the result's `damaged`; a missing shard is an InputError."""
    return ShardScan(shards, storage_options, tags_from)


# --- prepare ------------------------------------------------------------------------------------


def shard_root(urls: Sequence[str]) -> tuple[str, list[str]]:
    """(image root, each shard relative to it): the shards' common parent folder (an absolute
    path) or URL prefix. Shards must be all local or all under one bucket, and named once."""
    seen: set[str] = set()
    for u in urls:
        if u in seen:
            raise InputError(f"{{param}}: shard {u} is given twice", param="shards")
        seen.add(u)
    kinds = {remote.is_remote(u) for u in urls}
    if len(kinds) > 1:
        raise InputError("{param}: give shards all local or all at one URL prefix, not a mixture", param="shards")
    if kinds == {True}:
        schemes = {u.split("://", 1)[0] for u in urls}
        parts = [[p for p in u.split("://", 1)[1].split("/") if p] for u in urls]
        common = _common([p[:-1] for p in parts])
        if len(schemes) > 1 or not common:
            raise InputError("{param}: the shards' URLs share no bucket: put them under one prefix", param="shards")
        root, rels = f"{schemes.pop()}://" + "/".join(common), ["/".join(p[len(common):]) for p in parts]
    else:
        paths = [os.path.abspath(remote.local_path(u)) for u in urls]
        base = os.path.commonpath([os.path.dirname(p) for p in paths])
        # the root resolved, as a photo folder is recorded; the names below it as given (links kept)
        root, rels = str(Path(base).resolve()), [Path(os.path.relpath(p, base)).as_posix() for p in paths]
    bad = next((r for r in rels if "#" in r), None)
    if bad is not None:
        raise InputError(f"{{param}}: shard name {bad!r} contains '#', which separates shard and member in the "
                         "store's paths: rename it", param="shards")
    return root, rels


def _common(lists: list[list[str]]) -> list[str]:
    common = lists[0]
    for parts in lists[1:]:
        n = 0
        while n < min(len(common), len(parts)) and common[n] == parts[n]:
            n += 1
        common = common[:n]
    return common


def read_webdataset(shards: str | Sequence[str], *, tags_from: str = "auto",
                    storage_options: Mapping[str, Any] | None = None,
                    log: Callable[[str], None] | None = None
                    ) -> tuple[list[tuple[str, list[str]]], np.ndarray, str, dict]:
    """Scan the shards (`scan_shards`) into what `build_dataset` cleans: (path, raw hashtags)
    per sample with a photo, paths `shard.tar#member.jpg` relative to the image root; the
    members' byte ranges (n, 2) int64 (offset, size); the image root (the shards' common parent);
    and the source record, whose `shards` (relative url, size, etag, sha256) `check_shards` compares."""
    log = log or (lambda line: None)
    scan = scan_shards(shards, storage_options, tags_from)
    root, rels = shard_root(scan.urls)  # before any reading: a bad list fails at once
    posts: list[tuple[str, list[str]]] = []
    ranges: list[tuple[int, int]] = []
    for s in scan:
        posts.append((f"{rels[s.shard]}#{s.member}", s.tags or []))
        ranges.append((s.offset, s.size))
    log(f"{len(scan.urls):,} shard(s) read: {len(posts):,} samples with a photo")
    if scan.no_image:
        log(f"{scan.no_image:,} sample(s) skipped: no photo member ({', '.join(IMAGE_EXTENSIONS)})")
    if scan.repeated:
        log(f"{scan.repeated:,} member(s) skipped: a name seen before in the same shard")
    if scan.bad_json:
        log(f"{scan.bad_json:,} json member(s) unreadable or with 'hashtags' not a list: read as no hashtags")
    if scan.no_tags:
        log(f"{scan.no_tags:,} sample(s) have no hashtag (tags_from={tags_from})")
    for d in scan.damaged:
        rel = rels[scan.urls.index(d.url)]
        log(f"damaged shard {rel}: {d.reason}; its {d.kept:,} sample(s) before the damage are kept, "
            "any after it are lost")
    if not posts:
        raise InputError("{param}: no sample with a photo member (jpg, jpeg, png or webp) in the shards",
                         param="shards")
    infos = [asdict(ShardInfo(rel, i.size, i.etag, i.sha256)) for rel, i in zip(rels, scan.infos, strict=True)]
    source: dict[str, Any] = {"dataset": "webdataset", "tags_from": tags_from, "shards": infos}
    if scan.damaged:
        source["damaged"] = [{"shard": rels[scan.urls.index(d.url)], "reason": d.reason, "kept": d.kept}
                             for d in scan.damaged]
    return posts, np.asarray(ranges, dtype=np.int64).reshape(-1, 2), root, source


# --- reading photos -----------------------------------------------------------------------------


def _runs(members: list[tuple[str, int, int, int]]) -> Iterator[list[tuple[str, int, int, int]]]:
    """Sorted (shard, offset, size, row) cut into runs that one ranged read serves: the same
    shard, gaps below PREFETCH_GAP, spans up to PREFETCH_SPAN."""
    run: list[tuple[str, int, int, int]] = []
    end = 0
    for m in members:
        shard, offset, size, _ = m
        if run and (shard != run[0][0] or offset - end > PREFETCH_GAP or offset + size - run[0][1] > PREFETCH_SPAN):
            yield run
            run = []
        end = max(end, offset + size) if run else offset + size
        run.append(m)
    if run:
        yield run


class ShardPhotos(Photos):
    """Photos inside webdataset shards: row -> `shard.tar#member` (`paths`) and the member's
    (offset, size) in the shard (`members`: an (n, 2) array indexed by row, or a mapping row ->
    (offset, size) for the rows a worker reads). `get` makes one ranged read (`cat_file` with
    start/end, or seek + read of a local file), retried through transient faults; `prefetch`
    fetches a batch's members with one read per shard and run of neighbouring members, and
    `get` serves those rows from it (only the last prefetch is held). A missing shard is the
    row's reason "missing shard"; a range past the shard's end "truncated shard (...)"."""

    def __init__(self, root: str | Path, paths: Sequence[str] | Mapping[int, str], members: Any,
                 storage_options: Mapping[str, Any] | None = None):
        self.root = str(root).rstrip("/") if remote.is_remote(root) else remote.local_path(root)
        self.paths, self.members = paths, members
        self.storage_options = remote.storage_options(storage_options)
        self._cache: dict[int, memoryview] = {}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cache"] = {}  # a copy in another process starts empty; file systems open where used
        return state

    def _member(self, row: int) -> tuple[str, int, int]:
        shard = self.paths[row].partition("#")[0]
        offset, size = self.members[row]
        return shard, int(offset), int(size)

    def shard_url(self, shard: str) -> str:
        """The full name (URL or local path) of a shard named relative to the root."""
        return _join(self.root, shard)

    def read_range(self, shard: str, start: int, stop: int) -> bytes:
        """Bytes start..stop-1 of a shard (fewer where the shard ends sooner); DecodeError for a
        missing or unreadable shard. Remote reads are retried through transient faults."""
        url = self.shard_url(shard)
        try:
            if remote.is_remote(url):
                fs, path = remote.filesystem(url, self.storage_options)
                return remote.retrying(lambda: fs.cat_file(path, start=start, end=stop), f"reading {url}")
            with open(url, "rb") as f:
                f.seek(start)
                return f.read(stop - start)
        except FileNotFoundError:
            raise DecodeError("missing shard") from None
        except remote.StoreUnreachable:
            raise
        except (OSError, ValueError) as e:
            if "range" in str(e).lower() and "satisfiable" in str(e).lower():  # S3's 416: start past the end
                return b""
            raise DecodeError(f"unreadable shard ({_first_line(e)[:80]})") from None

    def get(self, row: int) -> bytes:
        cached = self._cache.get(row)
        if cached is not None:
            return bytes(cached)
        shard, offset, size = self._member(row)
        data = self.read_range(shard, offset, offset + size)
        if len(data) < size:
            raise DecodeError("truncated shard (the photo's bytes lie past its end)")
        return data

    def prefetch(self, rows: Sequence[int]) -> None:
        """Fetch `rows`' members together: per shard, members closer than PREFETCH_GAP become one
        ranged read (a batch of consecutive rows: one read per shard), held until the next
        prefetch. A row whose read fails is left to `get`, which raises its reason."""
        wanted = sorted(self._member(row) + (row,) for row in dict.fromkeys(rows))
        cache: dict[int, memoryview] = {}
        for run in _runs(wanted):
            cache.update(self._fetch_run(run))
        self._cache = cache

    def _fetch_run(self, run: list[tuple[str, int, int, int]]) -> dict[int, memoryview]:
        shard, start = run[0][0], run[0][1]
        stop = max(offset + size for _, offset, size, _ in run)
        try:
            data = memoryview(self.read_range(shard, start, stop))
        except DecodeError:
            return {}
        return {row: data[offset - start : offset - start + size] for _, offset, size, row in run
                if offset - start + size <= len(data)}

    def stamps(self) -> list[str | None]:
        """Per path, its shard's size and ETag (object store) or modification time (local file),
        with the member's range: one request per shard, not per photo."""
        paths = list(self.paths.values()) if isinstance(self.paths, Mapping) else list(self.paths)
        rows = list(self.paths.keys()) if isinstance(self.paths, Mapping) else range(len(paths))
        by_shard: dict[str, str | None] = {}
        out: list[str | None] = []
        for row, path in zip(rows, paths, strict=True):
            shard = path.partition("#")[0]
            if shard not in by_shard:
                by_shard[shard] = self._shard_stamp(shard)
            stamp = by_shard[shard]
            offset, size = self.members[row]
            out.append(None if stamp is None else f"{stamp}\0{int(offset)}:{int(size)}")
        return out

    def _shard_stamp(self, shard: str) -> str | None:
        url = self.shard_url(shard)
        if remote.is_remote(url):
            fs, path = remote.filesystem(url, self.storage_options)
            try:
                info = remote.retrying(lambda: fs.info(path), f"reading {url}")
            except FileNotFoundError:
                return None
            return f"{info.get('size')}\0{_etag(info) or info.get('mtime')}"
        try:
            st = os.stat(url)
        except OSError:
            return None
        return f"{st.st_size}\0{st.st_mtime_ns}"
