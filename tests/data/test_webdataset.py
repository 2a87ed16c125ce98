"""`prepare webdataset` and `ShardPhotos`: shards written by the webdataset package itself
(`webdataset.TarWriter`) with real JPEG/PNG photos, checked against the posts path on the same
photos written as files, against tarfile's own reading of the members, and on damaged, changed
and missing shards, locally and on S3 (moto's server)."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import hashtagkit.prepare as prepare
from hashtagkit.data.webdataset import (
    ShardPhotos,
    check_shards,
    expand_shards,
    read_webdataset,
    scan_shards,
    shard_info,
)
from hashtagkit.errors import InputError
from hashtagkit.images import DecodeError, decode_bytes

wds = pytest.importorskip("webdataset", reason="the webdataset package is not installed (the test extra installs it)")

TAGS = [
    ["#sea", "#love", "#beach"], ["#Sea", "#LOVE"], ["#sky", "#blue"], ["#sea", "#sunset", "#like4like"],
    ["#love", "#beach"], ["#sky", "#sea", "#love"], ["#dog", "#love"], ["#beach", "#sunset"],
    ["#sea", "#sky"], ["#love"], ["#blue", "#sea", "#사랑"], ["#dog", "#beach", "#sea"],
]


@dataclass
class Sample:
    key: str
    ext: str
    data: bytes
    tags: list[str] | None

    @property
    def member(self) -> str:
        return f"{self.key}.{self.ext}"


def photo(seed: int, fmt: str = "JPEG") -> bytes:
    """A small real photo: random colour blocks, so each decodes to its own pixels."""
    rng = np.random.default_rng(seed)
    pixels = np.kron(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), np.ones((4, 4, 1), np.uint8))
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def samples(n: int = len(TAGS), start: int = 0) -> list[Sample]:
    """n samples, every fourth a PNG, the rest JPEGs, with TAGS' hashtags."""
    out = []
    for i in range(start, start + n):
        ext = "png" if i % 4 == 3 else "jpg"
        out.append(Sample(f"{i:06d}", ext, photo(i, "PNG" if ext == "png" else "JPEG"), TAGS[i % len(TAGS)]))
    return out


def write_shard(path: Path, items: list[Sample], text: str = "json", extra: list[dict] = ()) -> Path:
    """A shard as webdataset writes it: per sample the photo, and its hashtags in a json
    (`{"hashtags": [...]}`) or as a caption in a txt; `extra` records are written after."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path)) as sink:
        for s in items:
            record = {"__key__": s.key, s.ext: s.data}
            if s.tags is not None and text == "json":
                record["json"] = {"hashtags": s.tags, "url": f"http://example.com/{s.key}"}
            elif s.tags is not None:
                record["txt"] = "a day out " + " ".join(s.tags) + " with friends."
                record["json"] = {"url": f"http://example.com/{s.key}", "caption": "no hashtags here"}
            sink.write(record)
        for record in extra:
            sink.write(record)
    return path


def write_posts(folder: Path, items: list[Sample]) -> Path:
    """The same photos as files with a posts.jsonl: the reference the shards must agree with."""
    images = folder / "images"
    images.mkdir(parents=True)
    lines = []
    for s in items:
        (images / s.member).write_bytes(s.data)
        lines.append(json.dumps({"image": s.member, "hashtags": s.tags or []}))
    (folder / "posts.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "posts.jsonl"


def member_bytes(shard: Path, name: str) -> bytes:
    with tarfile.open(shard) as tar:
        return tar.extractfile(name).read()


def shards_of(tmp_path: Path, items: list[Sample], per_shard: int = 5, text: str = "json") -> tuple[str, list[Path]]:
    paths = []
    for k, a in enumerate(range(0, len(items), per_shard)):
        paths.append(write_shard(tmp_path / "shards" / f"{k:05d}.tar", items[a : a + per_shard], text))
    return str(tmp_path / "shards" / f"{{00000..{len(paths) - 1:05d}}}.tar"), paths


def photos_of(store) -> ShardPhotos:
    return ShardPhotos(store.image_root, store.paths(), store.members())


# --- shard lists ---------------------------------------------------------------------------------


def test_expand_shards_by_hand_and_as_braceexpand_does():
    braceexpand = pytest.importorskip("braceexpand").braceexpand
    assert expand_shards("s/{00000..00011}.tar") == [f"s/{i:05d}.tar" for i in range(12)]
    assert expand_shards(["a/{x,y}.tar", "b/{8..10}.tar", "c.tar"]) == \
        ["a/x.tar", "a/y.tar", "b/8.tar", "b/9.tar", "b/10.tar", "c.tar"]
    for pattern in ["s3://b/p/{000..012}.tar", "{07..10}", "{4..1}", "{1..9..3}", "{a..e..2}", "x{a,b{1..3}}y{c,d}",
                    "{single}.tar", "a{,.bak}", "p{}q", "{0..2}-{a,b}", "{2..-1}"]:
        assert expand_shards(pattern) == list(braceexpand(pattern)), pattern
    for bad in ["s/{0..3.tar", "s/0..3}.tar", [], ""]:
        with pytest.raises(InputError, match="shards"):
            expand_shards(bad)


# --- prepare --------------------------------------------------------------------------------------


def test_prepare_gives_the_posts_paths_labels_and_vocabulary(tmp_path):
    items = samples()
    extra = [{"__key__": "nophoto", "json": {"hashtags": ["#sea"]}}]  # no image member: skipped, counted
    spec, shards = shards_of(tmp_path, items)
    write_shard(shards[-1], items[10:], extra=extra)
    log: list[str] = []
    store = prepare.webdataset(spec, tmp_path / "w.zarr", lemmatize=False, test_size=3, seed=4, log=log.append)
    ref = prepare.posts(write_posts(tmp_path / "posts", items), tmp_path / "posts" / "images", tmp_path / "p.zarr",
                        lemmatize=False, test_size=3, seed=4)
    assert store.vocab == ref.vocab and "like4like" not in store.vocab
    np.testing.assert_array_equal(store.labels(), ref.labels())
    np.testing.assert_array_equal(store.split(), ref.split())
    assert [p.split("#", 1)[1] for p in store.paths()] == ref.paths()
    assert store.paths()[0] == "00000.tar#000000.jpg" and store.paths()[-1] == "00002.tar#000011.png"
    assert store.image_root == str((tmp_path / "shards").resolve())
    assert any("1 sample(s) skipped: no photo member" in line for line in log), log
    # the byte ranges are tarfile's own, and the provenance identifies each shard
    for path, (offset, size) in zip(store.paths(), store.members(), strict=True):
        shard, member = path.split("#")
        with tarfile.open(tmp_path / "shards" / shard) as tar:
            info = tar.getmember(member)
        assert (offset, size) == (info.offset_data, info.size)
    source = store.meta["source"]
    assert source["dataset"] == "webdataset" and source["tags_from"] == "auto"
    assert source["shards"] == [{"url": p.name, "size": p.stat().st_size, "etag": None,
                                 "sha256": hashlib.sha256(p.read_bytes()).hexdigest()} for p in shards]
    assert shard_info(str(shards[0])).sha256 == source["shards"][0]["sha256"]


def test_scan_streams_each_shard_once(tmp_path, monkeypatch):
    spec, shards = shards_of(tmp_path, samples(), per_shard=4)
    opened = []
    real_open = open

    def counting_open(file, *a, **kw):
        if str(file).endswith(".tar"):
            opened.append(Path(file).name)
        return real_open(file, *a, **kw)

    monkeypatch.setattr("builtins.open", counting_open)
    scan = scan_shards(spec)
    got = list(scan)
    monkeypatch.undo()
    assert opened == [p.name for p in shards]  # one open per shard, the sha256 made in the same pass
    assert [(s.shard, s.key, s.member) for s in got] == [(i // 4, it.key, it.member) for i, it in enumerate(samples())]
    assert [s.tags for s in got] == TAGS
    assert [i.sha256 for i in scan.infos] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in shards]


def test_photos_get_the_members_bytes_and_prefetch_reads_once_per_shard(tmp_path, monkeypatch):
    items = samples()
    spec, shards = shards_of(tmp_path, items, per_shard=5)
    store = prepare.webdataset(spec, tmp_path / "w.zarr", lemmatize=False)
    photos = photos_of(store)
    reads: list[tuple[str, int, int]] = []
    real = ShardPhotos.read_range

    def counted(self, shard, start, stop):
        reads.append((shard, start, stop))
        return real(self, shard, start, stop)

    monkeypatch.setattr(ShardPhotos, "read_range", counted)
    for row, path in enumerate(store.paths()):
        shard, member = path.split("#")
        assert photos.get(row) == member_bytes(tmp_path / "shards" / shard, member) == items[row].data
    assert len(reads) == len(items)  # one ranged read per photo
    copy = pickle.loads(pickle.dumps(photos))  # what a DataLoader worker gets
    assert copy.get(7) == items[7].data

    reads.clear()
    rows = list(range(len(items)))
    photos.prefetch(rows)
    assert len(reads) == len(shards)  # a batch of consecutive rows: one read per shard
    assert [photos.get(r) for r in rows] == [it.data for it in items] and len(reads) == len(shards)
    photos.prefetch([0, 1])  # only the last prefetch is held
    photos.get(9)
    assert len(reads) == len(shards) + 2
    # a worker's photos: the rows it reads, as mappings
    part = ShardPhotos(store.image_root, {8: store.paths()[8], 9: store.paths()[9]},
                       {8: tuple(store.members()[8]), 9: tuple(store.members()[9])})
    part.prefetch([9, 8])
    assert (part.get(8), part.get(9)) == (items[8].data, items[9].data)


def cut(path: Path, at: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(at)


def test_a_truncated_shard_keeps_the_samples_before_the_damage(tmp_path):
    items = samples(6)
    shard = write_shard(tmp_path / "shards" / "00000.tar", items)
    store = prepare.webdataset(str(shard), tmp_path / "w.zarr", lemmatize=False)
    with tarfile.open(shard) as tar:
        info = tar.getmember(items[4].member)
    cut(shard, info.offset_data + info.size // 2)  # in the middle of the 5th photo
    photos = photos_of(store)
    assert [photos.get(r) for r in range(4)] == [it.data for it in items[:4]]
    for row in (4, 5):
        with pytest.raises(DecodeError, match=r"^truncated shard \(") as e:
            photos.get(row)
    photos.prefetch(range(6))  # the rows it cannot serve fall back to `get`, which says why
    assert photos.get(3) == items[3].data
    with pytest.raises(DecodeError, match="truncated shard"):
        photos.get(5)
    # the damaged shard scanned again: the samples before the damage, and the damage reported
    log: list[str] = []
    paths, members, _, source = read_webdataset(str(shard), log=log.append)
    assert [p for p, _ in paths] == [f"00000.tar#{it.member}" for it in items[:4]]
    damage = [line for line in log if line.startswith("damaged shard 00000.tar")]
    assert damage and "unexpected end of data" in damage[0] and "are lost" in damage[0], log
    assert source["damaged"][0]["shard"] == "00000.tar" and source["damaged"][0]["kept"] == 4
    assert str(e.value).count("\n") == 0


@pytest.mark.parametrize("damage", ["header cut", "garbage header", "not a tar"])
def test_other_damage_is_reported_not_raised(tmp_path, damage):
    items = samples(5)
    good = write_shard(tmp_path / "shards" / "00000.tar", items)
    shard = write_shard(tmp_path / "shards" / "00001.tar", samples(5, start=5))
    with tarfile.open(shard) as tar:
        header = tar.getmember(samples(5, start=5)[3].member).offset  # the 4th sample's first header
    data = bytearray(shard.read_bytes())
    if damage == "header cut":
        shard.write_bytes(data[: header + 100])
    elif damage == "garbage header":
        data[header : header + 512] = b"x" * 512
        shard.write_bytes(bytes(data))
    else:
        shard.write_bytes(b"not a tar at all" * 100)
    log: list[str] = []
    paths, _, _, source = read_webdataset(str(tmp_path / "shards" / "{00000..00001}.tar"), log=log.append)
    kept = 0 if damage == "not a tar" else 2  # the 3rd sample was being read when the damage came
    assert len(paths) == 5 + kept
    assert source["damaged"] == [{"shard": "00001.tar", "reason": source["damaged"][0]["reason"], "kept": kept}]
    assert {"header cut": "end-of-archive marker", "garbage header": "unreadable header",
            "not a tar": "not a tar file"}[damage] in source["damaged"][0]["reason"]
    assert any(line.startswith("damaged shard 00001.tar") for line in log), log
    assert good.exists()


def test_compressed_shards_are_refused(tmp_path):
    import gzip

    shard = write_shard(tmp_path / "00000.tar", samples(2))
    (tmp_path / "00000.tar.gz").write_bytes(gzip.compress(shard.read_bytes()))
    with pytest.raises(InputError, match="is compressed"):
        read_webdataset(str(tmp_path / "00000.tar.gz"))


def test_a_member_that_is_no_image_is_prepared_and_fails_at_decoding(tmp_path):
    items = samples(4)
    items[2].data = b"this is not a JPEG at all " * 8
    shard = write_shard(tmp_path / "00000.tar", items)
    store = prepare.webdataset(str(shard), tmp_path / "w.zarr", lemmatize=False)
    assert store.n_rows == 4
    photos = photos_of(store)
    assert photos.get(2) == items[2].data
    with pytest.raises(DecodeError, match="unreadable"):
        decode_bytes(photos.get(2))
    assert decode_bytes(photos.get(3)).size == (32, 24)


def test_a_sample_without_hashtags_is_dropped_by_min_tags_and_kept_without_labels(tmp_path):
    items = samples(6)
    items[2].tags = []  # a json with no hashtags
    items[4].tags = None  # no json member at all
    spec, _ = shards_of(tmp_path, items, per_shard=3)
    log: list[str] = []
    store = prepare.webdataset(spec, tmp_path / "a.zarr", lemmatize=False, log=log.append)
    assert [p.split("#")[1] for p in store.paths()] == [items[i].member for i in (0, 1, 3, 5)]
    assert any("2 sample(s) have no hashtag" in line for line in log), log
    photos = photos_of(store)  # the kept rows' byte ranges follow their rows
    assert [photos.get(r) for r in range(4)] == [items[i].data for i in (0, 1, 3, 5)]
    store0 = prepare.webdataset(spec, tmp_path / "b.zarr", lemmatize=False, min_tags=0)
    assert store0.n_rows == 6
    assert store0.labels()[[2, 4]].sum() == 0 and store0.labels()[[0, 1, 3, 5]].sum(axis=1).min() > 0
    assert photos_of(store0).get(4) == items[4].data


def test_hashtags_from_txt_captions(tmp_path):
    items = samples()
    spec, _ = shards_of(tmp_path, items, per_shard=6, text="txt")
    ref = prepare.posts(write_posts(tmp_path / "posts", items), tmp_path / "posts" / "images", tmp_path / "p.zarr",
                        lemmatize=False, test_size=2)
    for tags_from in ("txt", "auto"):  # auto: the json has no `hashtags`, so the caption's
        store = prepare.webdataset(spec, tmp_path / f"{tags_from}.zarr", tags_from=tags_from, lemmatize=False,
                                   test_size=2)
        assert store.vocab == ref.vocab and store.meta["source"]["tags_from"] == tags_from
        np.testing.assert_array_equal(store.labels(), ref.labels())
    with pytest.raises(InputError, match="no post is left"):  # json only: no sample has hashtags
        prepare.webdataset(spec, tmp_path / "json.zarr", tags_from="json", lemmatize=False)
    with pytest.raises(InputError, match="tags_from must be one of auto, json, txt"):
        prepare.webdataset(spec, tmp_path / "bad.zarr", tags_from="caption", lemmatize=False)


def test_check_shards_refuses_changed_and_gone_shards(tmp_path):
    spec, shards = shards_of(tmp_path, samples(), per_shard=5)
    store = prepare.webdataset(spec, tmp_path / "w.zarr", lemmatize=False)
    recorded, root = store.meta["source"]["shards"], store.image_root
    check_shards(recorded, root)
    data = bytearray(shards[1].read_bytes())
    data[2000] ^= 0xFF  # same size, other bytes
    shards[1].write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"shard .*00001\.tar changed since `prepare webdataset` \(sha256 .*\): "
                                         r"prepare the store again"):
        check_shards(recorded, root)
    shards[1].write_bytes(bytes(data[:-1024]))
    size = f"{len(data):,} -> {len(data) - 1024:,}"
    with pytest.raises(InputError, match=rf"00001\.tar changed .*\(size {size}\)"):
        check_shards(recorded, root)
    shards[1].unlink()
    with pytest.raises(InputError, match=r"shard .*00001\.tar is gone since `prepare webdataset`"):
        check_shards(recorded, root)
    with pytest.raises(DecodeError, match="^missing shard$"):
        photos_of(store).get(6)
    assert photos_of(store).stamps()[6] is None and photos_of(store).stamps()[0] is not None


def test_a_missing_shard_is_a_clear_error(tmp_path):
    spec, _ = shards_of(tmp_path, samples(), per_shard=5)
    with pytest.raises(InputError, match=r"^shard .*00003\.tar does not exist$"):
        prepare.webdataset(spec.replace("00002}", "00003}"), tmp_path / "w.zarr", lemmatize=False)
    assert not (tmp_path / "w.zarr").exists()
    with pytest.raises(InputError, match="all local or all at one URL prefix"):
        read_webdataset([str(tmp_path / "shards" / "00000.tar"), "s3://b/00001.tar"])
    with pytest.raises(InputError, match="given twice"):
        read_webdataset(str(tmp_path / "shards" / "{00000,00001,00000}.tar"))


# --- on S3 --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_shards_on_s3(tmp_path, s3, s3_server, monkeypatch):
    import fsspec

    items = samples()
    spec, shards = shards_of(tmp_path, items, per_shard=5)
    fs = fsspec.filesystem("s3", **s3_server.options())
    for p in shards:
        fs.put_file(str(p), f"{s3}/wds/train/{p.name}")
    url_spec = f"{s3}/wds/train/{{00000..00002}}.tar"
    store = prepare.webdataset(url_spec, tmp_path / "s3.zarr", lemmatize=False, test_size=3)
    local = prepare.webdataset(spec, tmp_path / "local.zarr", lemmatize=False, test_size=3)
    assert store.image_root == f"{s3}/wds/train" and store.paths() == local.paths()
    assert store.vocab == local.vocab
    np.testing.assert_array_equal(store.labels(), local.labels())
    np.testing.assert_array_equal(store.members(), local.members())
    recorded = store.meta["source"]["shards"]
    assert [r["url"] for r in recorded] == [p.name for p in shards]
    assert all(r["etag"] and r["sha256"] is None and r["size"] == p.stat().st_size
               for r, p in zip(recorded, shards, strict=True))

    photos = pickle.loads(pickle.dumps(photos_of(store)))
    assert [photos.get(r) for r in range(len(items))] == [it.data for it in items]
    reads = []
    real = ShardPhotos.read_range
    monkeypatch.setattr(ShardPhotos, "read_range", lambda self, *a: reads.append(a) or real(self, *a))
    photos.prefetch(range(len(items)))
    assert [photos.get(r) for r in range(len(items))] == [it.data for it in items] and len(reads) == 3

    check_shards(recorded, store.image_root)
    with tarfile.open(shards[1]) as tar:
        info = tar.getmember(items[7].member)
    fs.pipe_file(f"{s3}/wds/train/00001.tar", shards[1].read_bytes()[: info.offset_data + 10])  # rewritten, cut
    with pytest.raises(InputError, match=r"00001\.tar changed since `prepare webdataset` \(size"):
        check_shards(recorded, store.image_root)
    photos = photos_of(store)
    with pytest.raises(DecodeError, match="^truncated shard"):
        photos.get(9)  # the range starts past the object's end (S3 answers 416)
    with pytest.raises(DecodeError, match="^truncated shard"):
        photos.get(7)  # the range runs past the end
    fs.rm(f"{s3}/wds/train/00002.tar")
    with pytest.raises(DecodeError, match="^missing shard$"):
        photos.get(12 - 1)
    with pytest.raises(InputError, match=r"00002\.tar is gone since"):
        check_shards(recorded[2:], store.image_root)
    with pytest.raises(InputError, match=r"00002\.tar does not exist"):
        read_webdataset(url_spec)
