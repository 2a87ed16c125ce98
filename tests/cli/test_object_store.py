"""The whole pipeline with the store and the photos in object storage (moto's S3 server,
tests/s3.py), against the same pipeline on a local disk: one function, run in both places,
must give the same features bit for bit and the same scores, recommendations and service
answers. Then what only object storage has: the lease, creation in place, the swap by copy,
the storage options kept out of every record, and extraction on a Dask cluster whose workers
share no folder with the coordinator.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import hashtagkit as hk
from hashtagkit import remote
from hashtagkit.cli.main import cli
from hashtagkit.errors import InputError

from ..extraction.test_extract import tiny_scene_backbone

pytestmark = pytest.mark.slow  # an S3 server process, backbones, every head

VOCAB = ["sea", "dog", "cat", "sun", "car", "tree"]
QUIET = lambda s: None  # noqa: E731
PARAMS = {"mlp": {"hidden": 32, "epochs": 3, "cache": "stream"}, "knn": {}, "ovr": {}, "popularity": {},
          "tagprop": {}, "fusion": {}}


def photos_and_posts(folder: Path, n: int = 40, seed: int = 0) -> Path:
    """n small JPEGs whose colour says their hashtags, and a posts.jsonl naming them."""
    rng = np.random.default_rng(seed)
    (folder / "photos").mkdir(parents=True)
    lines = []
    for i in range(n):
        tags = sorted(set(rng.choice(VOCAB, size=int(rng.integers(1, 4)), replace=False).tolist()))
        colour = np.array([(VOCAB.index(t) * 40) % 256 for t in tags[:3]] + [0] * (3 - len(tags[:3])), np.uint8)
        pixels = np.clip(colour + rng.normal(0, 20, (48, 64, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / "photos" / f"{i:03d}.jpg", quality=90)
        lines.append(json.dumps({"image": f"{i:03d}.jpg", "hashtags": [f"#{t}" for t in tags]}))
    (folder / "posts.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "posts.jsonl"


def upload(folder: Path, url: str) -> None:
    fs, path = remote.filesystem(url)
    fs.put(str(folder) + "/", path + "/", recursive=True)


def places(tmp_path: Path, where: str, request) -> tuple[str | Path, str | Path, Path]:
    """(store, photo root, posts file) for `where`: a local folder, or a bucket holding the
    photos (the local copies are deleted: nothing but the bucket is read)."""
    posts = photos_and_posts(tmp_path)
    if where == "local":
        return tmp_path / "p.zarr", tmp_path / "photos", posts
    url = request.getfixturevalue("s3")
    upload(tmp_path / "photos", f"{url}/photos")
    (tmp_path / "query").mkdir()
    for name in ("000.jpg", "001.jpg"):  # the photos `recommend` is asked about, kept aside
        (tmp_path / "photos" / name).rename(tmp_path / "query" / name)
    for f in (tmp_path / "photos").iterdir():
        f.unlink()
    (tmp_path / "photos").rmdir()
    return f"{url}/p.zarr", f"{url}/photos", posts


def pipeline(tmp_path: Path, where: str, request) -> dict:
    """prepare (CLI) -> extract -> fit every head -> evaluate -> recommend (CLI) -> the service's
    scorer, with the store and photos `where`; what each step gave."""
    tiny_scene_backbone()
    store, photos, posts = places(tmp_path, where, request)
    res = CliRunner().invoke(cli, ["prepare", "posts", str(posts), "--images", str(photos), "-o", str(store),
                                   "--no-lemmatize", "--test-size", "0.25"])
    assert res.exit_code == 0, res.output
    with pytest.warns(UserWarning, match="RANDOM"):
        hk.extract(store, ["tiny-scene=random"], precision="fp32", dtype="float32",
                   chunk_rows=8, batch_size=4, workers=1, progress=False, log=QUIET)
    opened = hk.open_store(store)
    out = {"features": opened.features(), "valid": opened.valid(), "scores": {}, "record": {}}
    for head, params in PARAMS.items():
        run = hk.fit(store, head, tmp_path / f"run-{head}", params=params, seed=0)
        assert str(run.record.store_path) == str(store)  # the run names its store's URL and reopens it
        scores = hk.evaluate(run, split="test").as_dict()
        out["scores"][head] = {k: v for k, v in scores.items() if k not in ("store", "predict_seconds", "run")}
        assert scores["store"] == str(store)
        out["record"][head] = (run / "run.json").read_text()
    query = [str((tmp_path / "query" if where == "s3" else Path(photos)) / name) for name in ("000.jpg", "001.jpg")]
    res = CliRunner().invoke(cli, ["recommend", str(tmp_path / "run-knn"), *query, "--json", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    results = json.loads(res.stdout)["results"]
    assert all(r["error"] is None for r in results)
    out["recommend"] = [r["hashtags"] for r in results]
    sheet = hk.contact_sheet(tmp_path / "run-knn", tmp_path / "sheet.png", n=4, seed=0)  # `show`: photos read too
    out["sheet"] = [(e.row, e.path, e.predicted) for e in sheet]
    table = hk.bench(store, tmp_path / "bench", heads=["popularity", "knn"], views=["both"], seeds=[0], log=QUIET)
    out["bench"] = [{k: v for k, v in r.items() if "seconds" not in k and k not in ("run", "store", "key")} for r in table]
    recommender = hk.Recommender.from_run(tmp_path / "run-mlp", device="cpu")  # what `serve` answers with
    out["served"] = recommender.score_prepared([recommender.prepare(q) for q in query])
    return out


def test_the_pipeline_on_s3_equals_the_pipeline_on_a_local_disk(tmp_path, request):
    local = pipeline(tmp_path / "local", "local", request)
    s3 = pipeline(tmp_path / "s3", "s3", request)
    assert np.array_equal(local["features"], s3["features"]) and np.array_equal(local["valid"], s3["valid"])
    assert local["features"].shape[1] == 48
    for head in PARAMS:
        assert s3["scores"][head] == local["scores"][head], head
    assert s3["recommend"] == local["recommend"]
    assert np.array_equal(local["served"], s3["served"])
    assert s3["sheet"] == local["sheet"] and s3["bench"] == local["bench"] and len(s3["bench"]) == 2
    # storage options (the endpoint, the keys) are in no record
    secret = json.loads(os.environ[remote.ENV])["secret"]
    endpoint = json.loads(os.environ[remote.ENV])["endpoint_url"]
    for text in s3["record"].values():
        assert endpoint not in text and f'"{secret}"' not in text
    assert json.loads(s3["record"]["knn"])["store"]["path"].startswith("s3://")


def test_extract_on_dask_with_nothing_shared_on_disk(tmp_path, s3):
    """A 2-worker LocalCluster (`--cluster local:2`) extracting a store whose photos are only in
    the bucket: the same store, bit for bit, as in-process extraction from a local disk."""
    pytest.importorskip("distributed")
    tiny_scene_backbone()
    store, photos, posts = places(tmp_path / "remote", "s3", _Request(s3))
    local_store, local_photos, local_posts = places(tmp_path / "local", "local", None)
    for target, root, source in ((store, photos, posts), (local_store, local_photos, local_posts)):
        assert CliRunner().invoke(cli, ["prepare", "posts", str(source), "--images", str(root), "-o", str(target),
                                        "--no-lemmatize", "--test-size", "0.25"]).exit_code == 0
    kw = dict(precision="fp32", dtype="float32", chunk_rows=8, batch_size=4, progress=False, log=QUIET)
    with pytest.warns(UserWarning, match="RANDOM"):
        hk.extract(local_store, ["tiny-scene=random"], workers=0, **kw)
    with pytest.warns(UserWarning, match="RANDOM"):
        hk.extract(store, ["tiny-scene=random"], cluster="local:2", **kw)
    a, b = hk.open_store(store), hk.open_store(local_store)
    assert a.completeness() == b.completeness() and a.completeness()[0] == a.completeness()[1]
    assert np.array_equal(a.features(), b.features())
    run = a.extraction_record["runs"][-1]
    assert run["distributed"]["cluster"] == "local:2" and len(run["worker_names"]) >= 1
    assert run["image_root"] == str(photos)


class _Request:
    """`places` asks its request for the `s3` fixture: this one already has it."""

    def __init__(self, url: str):
        self.url = url

    def getfixturevalue(self, name: str) -> str:
        return self.url


# --- what only object storage has --------------------------------------------------------------------
def small_store(url: str, n: int = 20):
    from hashtagkit.data.split import random_split

    labels = np.zeros((n, 3), np.uint8)
    labels[np.arange(n), np.arange(n) % 3] = 1
    split, info = random_split(n, 5, 0, 0)
    return hk.stores.create_store(url, paths=[f"{i}.jpg" for i in range(n)], labels=labels, vocab=["a", "b", "c"],
                                  split=split, split_info=info, kind="test", image_root=None)


def test_a_second_writer_is_refused_while_the_lease_is_held_and_takes_over_an_expired_one(s3, monkeypatch):
    from hashtagkit.stores.objects import Lease

    store = small_store(f"{s3}/a.zarr")
    with store.lock("extracted"):
        with pytest.raises(InputError, match="is being extracted by another process"):
            with Lease(str(store.path), "extracted"):
                pass
        fs, path = remote.filesystem(str(store.path) + ".lock")
        held = json.loads(fs.cat_file(path))
        assert held["pid"] == os.getpid() and held["doing"] == "extracted" and "secret" not in json.dumps(held)
    assert not remote.filesystem(str(store.path) + ".lock")[0].exists(path)  # released
    # a lease left by a process on another host, expired: taken over; not expired: refused
    for expires, taken in ((0, True), (2e9, False)):
        fs.pipe_file(path, json.dumps({"host": "elsewhere", "pid": 1, "doing": "extracted",
                                       "expires": expires}).encode())
        if taken:
            with Lease(str(store.path), "extracted") as lease:
                assert json.loads(fs.cat_file(path))["id"] == lease.holder["id"]
        else:
            with pytest.raises(InputError, match="elsewhere pid 1"):
                Lease(str(store.path), "extracted").acquire()
    fs.rm_file(path)


def test_a_lease_taken_over_by_another_writer_is_known_lost(s3):
    from hashtagkit.stores.objects import Lease

    store = small_store(f"{s3}/b.zarr")
    lease = Lease(str(store.path), "extracted")
    lease.acquire()
    lease.fs.pipe_file(lease.path, b'{"host": "elsewhere", "pid": 2, "expires": 2e9}')  # someone took it
    lease.renew()
    assert lease.lost
    with pytest.raises(InputError, match="lost its lease"):
        lease.check()


def test_a_store_whose_prepare_died_is_refused_and_replaced_with_overwrite(s3):
    import zarr

    url = f"{s3}/c.zarr"
    group = zarr.open_group(url, mode="w", zarr_format=3, storage_options=remote.zarr_options(url))
    group.attrs["hashtagkit_being_prepared"] = {"kind": "test"}  # what a killed prepare leaves
    with pytest.raises(InputError, match="did not finish"):
        hk.open_store(url)
    with pytest.raises(InputError, match="already exists"):
        small_store(url)
    store = hk.stores.create_store(url, paths=["0.jpg", "1.jpg"], labels=np.eye(2, 3, dtype=np.uint8),
                                   vocab=["a", "b", "c"], split=np.array([0, 1], np.uint8), split_info={"seed": 0},
                                   kind="test", image_root=None, overwrite=True)
    assert store.n_rows == 2 and hk.open_store(url).n_rows == 2
    with pytest.raises(InputError, match="does not exist"):
        hk.open_store(f"{s3}/nothing.zarr")


def test_storage_options_come_from_the_flag_and_are_never_printed(s3, tmp_path):
    small_store(f"{s3}/d.zarr")
    env = {k: v for k, v in os.environ.items() if k != remote.ENV}
    opts = json.loads(os.environ[remote.ENV])
    base = [sys.executable, "-m", "hashtagkit.cli.main"]
    flags = ["--storage-option", f"endpoint_url={opts['endpoint_url']}", "--storage-option", "key=testing",
             "--storage-option", "secret=testing",
             "--storage-option", 'client_kwargs={"region_name": "us-east-1"}']
    ok = subprocess.run([*base, *flags, "info", f"{s3}/d.zarr", "--json"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    info = json.loads(ok.stdout)
    assert info["rows"] == 20 and info["path"] == f"{s3}/d.zarr"
    assert opts["endpoint_url"] not in ok.stdout + ok.stderr
    bad = subprocess.run([*base, "--storage-option", "novalue", "info", f"{s3}/d.zarr"], capture_output=True,
                         text=True, env=env)
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr and "Traceback" not in bad.stderr
    env[remote.ENV] = "[1, 2]"
    bad = subprocess.run([*base, "info", f"{s3}/d.zarr"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "JSON object" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_verify_finds_a_deleted_chunk_object_and_extract_redoes_it(tmp_path, s3):
    """`info --verify` on a store in a bucket: a done chunk whose features object was deleted is
    found by one listing (no local files to stat), marked not done, and `extract` redoes it to
    the same bits; a deleted labels object is damage `open_store` names."""
    from ..extraction.test_extract import make_image_store

    tiny_scene_backbone()
    store = make_image_store(tmp_path, n=12, url=s3)
    kw = dict(precision="fp32", dtype="float32", chunk_rows=4, batch_size=4, workers=0, progress=False, log=QUIET)
    with pytest.warns(UserWarning, match="RANDOM"):
        hk.extract(store, ["tiny-scene=random"], **kw)
    before = hk.open_store(store).features()
    fs, base = remote.filesystem(store)
    fs.rm_file(f"{base}/features/c/1/0")
    with pytest.raises(InputError, match="chunk.*1.*missing features/c/1/0"):
        hk.open_store(store).features()
    res = CliRunner().invoke(cli, ["info", "--verify", store])
    assert res.exit_code != 0 and "chunk 1" in res.output and "marked not done" in res.output
    assert hk.open_store(store).completeness() == (2, 3)
    with pytest.warns(UserWarning, match="RANDOM"):
        summary = hk.extract(store, ["tiny-scene=random"], **kw)
    assert summary.extracted == 4 and np.array_equal(hk.open_store(store).features(), before)
    fs.rm_file(f"{base}/labels/c/0/0")
    with pytest.raises(InputError, match="labels chunk labels/c/0/0 is missing"):
        hk.open_store(store)


def test_upgrade_of_a_url_store_is_refused_in_one_line(tmp_path, s3):
    """A store written by an older hashtagkit, uploaded to a bucket: its upgrade rewrites metadata
    file by file, which a bucket cannot do safely: refused, naming what to do instead."""
    from ..store.test_store_format import format1_store

    format1_store(tmp_path / "old.zarr")
    upload(tmp_path / "old.zarr", f"{s3}/old.zarr")
    res = CliRunner().invoke(cli, ["upgrade", f"{s3}/old.zarr"])
    assert res.exit_code == 2 and "local disk" in res.output and len(res.output.strip().splitlines()) == 1


def test_webdataset_shards_in_a_bucket_extract_as_local_shards_do_and_a_changed_shard_is_refused(tmp_path, s3):
    """prepare webdataset + extract with shards and store in a bucket equals the same from local
    shards, bit for bit; a shard rewritten afterwards makes the next extract refuse its done chunks."""
    from tests.s3 import demo_shards

    tiny_scene_backbone()
    local_shards = demo_shards(tmp_path / "local", str(tmp_path / "local"), n=24, shards=2)
    remote_shards = demo_shards(tmp_path / "remote", s3, n=24, shards=2)
    kw = dict(precision="fp32", dtype="float32", chunk_rows=8, batch_size=4, workers=1, progress=False, log=QUIET)
    stores = []
    for shards, out in ((local_shards, tmp_path / "w.zarr"), (remote_shards, f"{s3}/w.zarr")):
        hk.prepare.webdataset(shards, out, lemmatize=False, test_size=0.25)
        with pytest.warns(UserWarning, match="RANDOM"):
            hk.extract(out, ["tiny-scene=random"], **kw)
        stores.append(hk.open_store(out))
    a, b = stores
    assert a.paths() == b.paths() and a.paths()[0].startswith("00000.tar#")
    assert np.array_equal(a.features(), b.features()) and a.valid().all()
    fs, path = remote.filesystem(remote_shards[1])
    data = bytearray(fs.cat_file(path))
    data[-2048] ^= 0xFF  # the end-of-archive padding: same size, another ETag
    fs.pipe_file(path, bytes(data))
    with pytest.raises(InputError, match="changed"):
        hk.extract(f"{s3}/w.zarr", ["tiny-scene=random"], **kw)
