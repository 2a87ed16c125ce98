"""The extraction engine against torchvision's own forward pass, its resume, its bad-image policy."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner
from PIL import Image

from hashtagkit.backbones import IMAGENET, PLACES365_CAFFE, load_backbone
from hashtagkit.cli.main import cli
from hashtagkit.errors import InputError
from hashtagkit.extraction import extract
from hashtagkit.images import decode
from hashtagkit.stores import open_store
from tests import faults

from ..conftest import SHARED, need_data
from ..extraction.test_backbones import vgg_file, vgg_state  # noqa: F401  (session fixtures)

FIXED = SHARED / "fixtures" / "harrison_fixed"


def make_image_store(tmp_path, n=6, name="s.zarr", seed=0, extra: dict | None = None, url: str | None = None):
    """A store over n small JPEGs (plus optional extra files by relative path -> bytes); with
    `url` (a bucket's s3://...), store and photos live there only (`url/name`, `url/images/`)."""
    from hashtagkit.data.split import random_split
    from hashtagkit.stores import create_store

    images = tmp_path / "images"
    images.mkdir(parents=True, exist_ok=True)
    paths = []
    rng = np.random.default_rng(seed)
    for i in range(n):
        w, h = int(rng.integers(160, 400)), int(rng.integers(160, 400))
        arr = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(images / f"{i}.jpg", quality=90)
        paths.append(f"{i}.jpg")
    for rel, data in (extra or {}).items():
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        if data is not None:
            (images / rel).write_bytes(data)
        paths.append(rel)
    labels = np.eye(len(paths), 3, dtype=np.uint8)
    labels[:, 0] = 1
    split, info = random_split(len(paths), 1, 0, 0)
    if url is not None:
        from hashtagkit import remote

        fs, base = remote.filesystem(url)
        fs.put(str(images) + "/", f"{base}/images/", recursive=True)
        create_store(f"{url}/{name}", paths=paths, labels=labels, vocab=["a", "b", "c"], split=split,
                     split_info=info, kind="test", image_root=f"{url}/images")
        shutil.rmtree(images)  # nothing local left to read
        return f"{url}/{name}"
    create_store(tmp_path / name, paths=paths, labels=labels, vocab=["a", "b", "c"], split=split,
                 split_info=info, kind="test", image_root=str(images))
    return tmp_path / name


@pytest.mark.slow
def test_fp32_features_equal_torchvision_forward(tmp_path, vgg_file, vgg_state):  # noqa: F811
    store = make_image_store(tmp_path, n=3)
    backbone = load_backbone("vgg16-object", str(vgg_file))
    extract(store, [backbone], precision="fp32", dtype="float32", workers=0, batch_size=2, progress=False, log=lambda s: None)
    s = open_store(store)
    ours = s.features()
    reference = vgg16_reference(vgg_state)
    for row, path in enumerate(s.paths()):
        x = backbone.spec.preprocessing(decode(tmp_path / "images" / path)).unsqueeze(0)
        with torch.no_grad():
            y = reference.classifier[:5](torch.flatten(reference.avgpool(reference.features(x)), 1))
        assert np.allclose(ours[row], y[0].numpy(), rtol=1e-4, atol=1e-5)
    assert s.valid().all() and s.completeness() == (1, 1)
    block = s.blocks[0]
    assert block["backbone"] == "vgg16-object" and block["columns"] == [0, 4096]
    assert block["weights"]["sha256"] and block["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    ext = s.group.attrs["extraction"]
    assert ext["precision"] == "fp32" and ext["device"] == "cpu" and "torch" in ext["versions"]


def vgg16_reference(state):
    from torchvision.models import vgg16

    model = vgg16(weights=None)
    model.load_state_dict(state)
    return model.eval()


def test_bf16_close_to_fp32(tmp_path, vgg_file):  # noqa: F811
    if not torch.cpu._is_avx512_bf16_supported() and not torch.cpu._is_amx_tile_supported():
        pytest.skip("this CPU has no bf16 support")
    store = make_image_store(tmp_path, n=3)
    backbone = load_backbone("vgg16-object", str(vgg_file))
    extract(store, [backbone], precision="fp32", dtype="float32", workers=0, progress=False, log=lambda s: None)
    fp32 = open_store(store).features()
    extract(store, [backbone], precision="bf16", dtype="float32", workers=0, progress=False, log=lambda s: None,
            overwrite=True)
    bf16 = open_store(store).features()
    cos = (fp32 * bf16).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(bf16, axis=1)
    assert cos.min() >= 0.999, cos  # bf16 weights, not autocast: still within bf16 tolerance
    assert not np.array_equal(fp32, bf16)  # bf16 really ran
    assert open_store(store).group.attrs["extraction"]["runs"][-1]["compute"] == "bf16 weights, channels_last"
    with pytest.raises(ValueError, match="load them again"):  # the modules were cast: never fp32 on bf16 weights
        extract(store, [backbone], precision="fp32", dtype="float32", workers=0, progress=False, log=lambda s: None,
                overwrite=True)


@pytest.mark.slow
def test_two_backbones_one_pass(tmp_path):
    store = make_image_store(tmp_path, n=4)
    with pytest.warns(UserWarning):
        obj = load_backbone("resnet50-object", "random", seed=1)
        scene = load_backbone("vgg16-scene", "random", seed=2)
    extract(store, [obj, scene], precision="fp32", workers=1, progress=False, log=lambda s: None, chunk_rows=3)
    s = open_store(store)
    assert s.features().shape == (4, 2048 + 4096)
    assert [b["name"] for b in s.blocks] == ["object", "scene"]
    assert s.blocks[1]["preprocessing"]["colour_order"] == "BGR"
    assert s.blocks[0]["weights"]["source"] == "random"
    assert s.features().dtype == np.float16 and s.completeness() == (2, 2)
    # each block equals that backbone run alone
    x = scene.spec.preprocessing(decode(tmp_path / "images" / "0.jpg")).unsqueeze(0)
    with torch.no_grad():
        alone = scene.module(x)[0].numpy()
    assert np.allclose(s.features("scene")[0, 2048:], alone, rtol=2e-2, atol=2e-2)  # float16 storage


def test_bad_images_become_invalid_rows(tmp_path):
    Image.MAX_IMAGE_PIXELS, saved = 1_000_000, Image.MAX_IMAGE_PIXELS
    bomb = tmp_path / "bomb.png"
    Image.new("L", (2500, 1000)).save(bomb)  # 2.5 MP > 2 x the lowered limit: a bomb by Pillow's rule
    try:
        extra = {"missing.jpg": None, "text.jpg": b"this is not an image", "bomb.png": bomb.read_bytes()}
        good = tmp_path / "good.jpg"
        Image.new("RGB", (300, 300), (200, 10, 10)).save(good)
        data = good.read_bytes()
        extra["cut.jpg"] = data[: len(data) // 2]
        rgba = tmp_path / "rgba.png"
        Image.new("RGBA", (200, 200), (0, 0, 0, 0)).save(rgba)
        extra["rgba.png"] = rgba.read_bytes()
        store = make_image_store(tmp_path, n=2, extra=extra)
        with pytest.warns(UserWarning):
            backbone = load_backbone("resnet50-object", "random")
        summary = extract(store, [backbone], workers=0, progress=False, log=lambda s: None)
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    s = open_store(store)
    reasons = dict(zip(s.paths(), np.asarray(s.group["reason"][...]).tolist(), strict=True))
    assert reasons == {"0.jpg": "", "1.jpg": "", "missing.jpg": "missing", "text.jpg": "unreadable",
                       "bomb.png": "decompression bomb", "cut.jpg": "truncated", "rgba.png": ""}
    assert summary.invalid == {"missing": 1, "unreadable": 1, "decompression bomb": 1, "truncated": 1}
    valid = s.valid()
    assert valid.tolist() == [r == "" for r in reasons.values()]
    assert not s.features()[~valid].any()
    # transparent pixels are composited on white, not black
    assert decode(tmp_path / "images" / "rgba.png").getpixel((5, 5)) == (255, 255, 255)


def test_real_truncated_harrison_photos(tmp_path):
    need_data(FIXED.is_dir(), f"{FIXED} absent (../shared not beside the repository)")
    rel = ["instagram_dataset/sun/image_99.jpg", "instagram_dataset/family/image_2411.jpg"]
    for r in rel:
        with pytest.raises(Exception, match="truncated"):
            decode(FIXED / r)
        img = decode(FIXED / r, allow_truncated=True)
        assert img.mode == "RGB" and min(img.size) > 100
    from hashtagkit.data.split import random_split
    from hashtagkit.stores import create_store

    split, info = random_split(2, 1, 0, 0)
    store = tmp_path / "fixed.zarr"
    create_store(store, paths=rel, labels=np.ones((2, 1), np.uint8), vocab=["sun"], split=split, split_info=info,
                 kind="test", image_root=str(FIXED))
    res = CliRunner().invoke(cli, ["extract", str(store), "--backbone", "resnet50-object=random", "--no-progress",
                                   "--workers", "0"])
    assert res.exit_code == 0, res.output
    assert "2 truncated" in res.output
    assert not open_store(store).valid().any()
    res = CliRunner().invoke(cli, ["extract", str(store), "--backbone", "resnet50-object=random", "--no-progress",
                                   "--workers", "0", "--allow-truncated", "--overwrite"])
    assert res.exit_code == 0, res.output
    assert open_store(store).valid().all()
    assert open_store(store).group.attrs["extraction"]["allow_truncated"] is True


@pytest.mark.slow
def test_second_extract_is_refused_while_one_runs(tmp_path):
    store = make_image_store(tmp_path, n=2)
    with open_store(store).lock("extracted"):
        res = subprocess.run([sys.executable, "-m", "hashtagkit.cli.main", "extract", str(store),
                              "--backbone", "resnet50-object=random", "--no-progress"], capture_output=True, text=True)
    assert res.returncode == 2 and "being extracted by another process" in res.stderr
    assert "features" not in zarr.open_group(store, mode="r")


def test_different_backbone_needs_overwrite(tmp_path):
    store = make_image_store(tmp_path, n=2)
    args = ["extract", str(store), "--no-progress", "--workers", "0"]
    assert CliRunner().invoke(cli, [*args, "--backbone", "resnet50-object=random"]).exit_code == 0
    res = CliRunner().invoke(cli, [*args, "--backbone", "resnet50-object=random", "--seed", "7"])
    assert res.exit_code == 2 and "--overwrite" in res.output
    res = CliRunner().invoke(cli, [*args, "--backbone", "resnet50-object=random"])  # same: resumes, nothing to do
    assert res.exit_code == 0 and "extracted 0 of 2 rows" in res.output


def test_cli_errors(tmp_path):
    res = CliRunner().invoke(cli, ["extract", str(tmp_path / "none.zarr")])
    assert res.exit_code == 2 and "does not exist" in res.output
    store = make_image_store(tmp_path, n=2)
    res = CliRunner().invoke(cli, ["extract", str(store), "--backbone", "resnet50-object=random", "--device", "cuda"])
    if not torch.cuda.is_available():
        assert res.exit_code == 2 and "no CUDA device" in res.output
    res = CliRunner().invoke(cli, ["extract", str(store), "--backbone", "resnet50-object=random", "--images", str(tmp_path / "x")])
    assert res.exit_code == 2 and "does not exist" in res.output
    with pytest.raises(InputError, match="fp16 is for CUDA"):
        from hashtagkit.devices import pick_precision

        pick_precision("fp16", torch.device("cpu"))


def done_flags(store) -> np.ndarray:
    """The store's done flags as another process sees them now (zeros before they exist)."""
    try:
        return open_store(store, check=False).done_flags()
    except Exception:  # noqa: BLE001 - arrays not created yet
        return np.zeros(1, bool)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["local", "s3"])
def test_killed_run_resumes_to_the_same_store(tmp_path, where, request):
    """SIGKILL mid-way, run again: the store equals one from an uninterrupted run (fp32); on a
    local disk, and with store and photos in object storage (the killed run's lease is taken
    over: its holder is gone)."""
    url = request.getfixturevalue("s3") if where == "s3" else None
    store = make_image_store(tmp_path, n=30, url=url)
    reference = make_image_store(tmp_path / "ref", n=30, name="b.zarr")  # the same photos, local, uninterrupted
    cmd = [sys.executable, "-m", "hashtagkit.cli.main", "extract", "--backbone", "resnet50-object=random",
           "--precision", "fp32", "--dtype", "float32", "--chunk-rows", "4", "--batch-size", "3", "--no-progress",
           "--workers", "1"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([*cmd, str(store)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 120
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        done = done_flags(store)
        if 2 <= done.sum() < len(done):
            proc.send_signal(signal.SIGKILL)
            killed_at = int(done.sum())
            break
        time.sleep(0.05)
    out, err = proc.communicate()
    assert killed_at is not None, f"the run finished before it could be killed: {err.decode()[-2000:]}"
    assert open_store(store).completeness()[0] < 8
    resumed = subprocess.run([*cmd, str(store)], capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "already done" in resumed.stderr
    fresh = subprocess.run([*cmd, str(reference)], capture_output=True, text=True, env=env)
    assert fresh.returncode == 0, fresh.stderr
    a, b = open_store(store), open_store(reference)
    assert a.completeness() == b.completeness() == (8, 8)
    assert np.array_equal(a.features(), b.features())
    assert np.array_equal(a.valid(), b.valid())
    info = json.loads(CliRunner().invoke(cli, ["info", str(store), "--json"]).output)
    assert info["completeness"] == [8, 8]


# --- recommend: re-extracting with the run's exact backbones -----------------------------------------
PHOTO_DIR = None


def sample_photo() -> str:
    """A photo-like JPEG drawn here (sky, ground, a sun), so no test depends on a file it does not need."""
    import tempfile
    from pathlib import Path

    from PIL import ImageDraw

    global PHOTO_DIR
    if PHOTO_DIR is None:
        PHOTO_DIR = Path(tempfile.mkdtemp(prefix="hashtagkit-photo-"))
        im = Image.new("RGB", (427, 320), (90, 150, 230))
        draw = ImageDraw.Draw(im)
        draw.rectangle([0, 200, 427, 320], fill=(60, 140, 50))
        draw.ellipse([300, 30, 370, 100], fill=(250, 220, 60))
        noise = np.random.default_rng(0).integers(-20, 20, (320, 427, 3))
        im = Image.fromarray(np.clip(np.asarray(im, int) + noise, 0, 255).astype(np.uint8))
        im.save(PHOTO_DIR / "photo.jpg", quality=90)
    return str(PHOTO_DIR / "photo.jpg")


@pytest.fixture(scope="module")
def extracted_demo(tmp_path_factory):
    """A demo store extracted by `hashtagkit extract` (random resnet50 weights from a file) and a kNN run on it."""
    tmp = tmp_path_factory.mktemp("rec")
    from torchvision.models import resnet50

    torch.manual_seed(0)
    weights = tmp / "resnet50.pth"
    torch.save(resnet50().state_dict(), weights)
    store = tmp / "demo.zarr"
    runner = CliRunner()
    assert runner.invoke(cli, ["prepare", "demo", "-o", str(store), "--n", "40"]).exit_code == 0
    res = runner.invoke(cli, ["extract", str(store), "--backbone", f"resnet50-object={weights}", "--no-progress",
                              "--workers", "0", "--precision", "fp32"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["fit", str(store), "--head", "knn", "--features", "object", "-o", str(tmp / "run"),
                              "--set", "k=5"])
    assert res.exit_code == 0, res.output
    return tmp, store, weights


@pytest.mark.slow
def test_recommend_reproduces_store_features(extracted_demo):
    """An image of the store, re-extracted by `recommend`, scores as its stored features do."""
    tmp, store, _ = extracted_demo
    s = open_store(store)
    row = int(s.split_rows("test")[0])
    image = str(tmp / "demo_images" / s.paths([row])[0])
    res = CliRunner().invoke(cli, ["recommend", str(tmp / "run"), image, sample_photo(), "--json", "--top", "3"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)["results"]
    assert [r["image"] for r in out] == [image, sample_photo()]
    assert all(len(r["hashtags"]) == 3 and set(r["hashtags"][0]) == {"tag", "score"} for r in out)
    from hashtagkit.heads import Head

    head = Head.load(tmp / "run" / "model")
    stored = head.predict_proba(s.features("object", np.array([row])))[0]
    expected = [s.vocab[j] for j in np.argsort(-stored, kind="stable")[:3]]
    assert [h["tag"] for h in out[0]["hashtags"]] == expected
    assert [h["score"] for h in out[0]["hashtags"]] == pytest.approx(np.sort(stored)[::-1][:3].tolist(), abs=1e-3)
    text = CliRunner().invoke(cli, ["recommend", str(tmp / "run"), sample_photo()]).output
    assert text.startswith(sample_photo()) and "#" in text


def test_recommend_refuses_other_weights_and_reports_bad_images(extracted_demo):
    tmp, store, weights = extracted_demo
    other = tmp / "other.pth"
    from torchvision.models import resnet50

    torch.save(resnet50().state_dict(), other)
    res = CliRunner().invoke(cli, ["recommend", str(tmp / "run"), sample_photo(), "--weights", f"resnet50-object={other}"])
    assert res.exit_code == 2 and "sha256" in res.output
    (tmp / "bad.jpg").write_bytes(b"nope")
    res = CliRunner().invoke(cli, ["recommend", str(tmp / "run"), str(tmp / "bad.jpg"), sample_photo()])
    assert res.exit_code == 2
    assert "bad.jpg: unreadable" in res.output and sample_photo() in res.output


def test_recommend_reports_fifo_directory_and_device_without_hanging(extracted_demo):
    import threading

    tmp, _, _ = extracted_demo
    fifo, folder = tmp / "x.jpg", tmp / "d.jpg"
    if not fifo.exists():
        os.mkfifo(fifo)
        folder.mkdir()
    box = {}
    args = ["recommend", str(tmp / "run"), str(fifo), str(folder), "/dev/null", sample_photo()]
    t = threading.Thread(target=lambda: box.update(res=CliRunner().invoke(cli, args)), daemon=True)
    t.start()
    t.join(120)
    assert not t.is_alive(), "recommend hung on a FIFO"
    res = box["res"]
    assert res.exit_code == 2
    assert f"{fifo}: not a regular file" in res.output and f"{folder}: not a file (a directory)" in res.output
    assert "/dev/null: not a regular file" in res.output and f"{sample_photo()}: #" in res.output


def test_recommend_on_planted_run_is_refused(tmp_path):
    store = tmp_path / "p.zarr"
    assert CliRunner().invoke(cli, ["prepare", "planted", "-o", str(store), "--n", "60", "--dim", "8"]).exit_code == 0
    assert CliRunner().invoke(cli, ["fit", str(store), "--head", "knn", "-o", str(tmp_path / "run")]).exit_code == 0
    res = CliRunner().invoke(cli, ["recommend", str(tmp_path / "run"), sample_photo()])
    assert res.exit_code == 2 and "planted" in res.output


# --- resume guards and the extraction record ------------------------------------------------------
def run_extract(store, *extra):
    return CliRunner().invoke(cli, ["extract", str(store), "--backbone", "resnet50-object=random", "--no-progress",
                                    "--workers", "0", "--chunk-rows", "2", *extra])


def stop_after(store, chunks: int) -> None:
    """Make the store look like a run killed after `chunks` chunks (the rest not done)."""
    done = zarr.open_group(store, mode="r+")["done"]
    flags = np.asarray(done[...])
    flags[chunks:] = False
    done[...] = flags


@pytest.mark.slow
def test_resume_with_other_precision_is_refused_and_mix_is_shown(tmp_path):
    store = make_image_store(tmp_path, n=4)
    assert run_extract(store, "--precision", "fp32").exit_code == 0
    stop_after(store, 1)
    res = run_extract(store, "--precision", "bf16")
    assert res.exit_code == 2 and "extracted in fp32" in res.output and "--allow-mixed-precision" in res.output
    assert open_store(store).completeness() == (1, 2)  # nothing written by the refused run
    assert "MIXED" not in CliRunner().invoke(cli, ["info", str(store)]).output
    res = run_extract(store, "--precision", "bf16", "--allow-mixed-precision")
    assert res.exit_code == 0, res.output
    runs = open_store(store).group.attrs["extraction"]["runs"]
    assert [(r["precision"], r["device"]) for r in runs] == [("fp32", "cpu"), ("bf16", "cpu")]
    info = CliRunner().invoke(cli, ["info", str(store)]).output
    assert "fp32 on cpu + bf16 on cpu" in info and "MIXED" in info
    data = json.loads(CliRunner().invoke(cli, ["info", str(store), "--json"]).output)["extraction"]
    assert data["mixed"] and data["runs"] == 2
    # --overwrite starts again: one setting
    assert run_extract(store, "--precision", "bf16", "--overwrite").exit_code == 0
    assert "MIXED" not in CliRunner().invoke(cli, ["info", str(store)]).output


def test_resume_with_other_images_is_refused(tmp_path):
    store = make_image_store(tmp_path, n=4)
    assert run_extract(store, "--precision", "fp32").exit_code == 0
    stop_after(store, 1)
    other = tmp_path / "other"
    shutil.copytree(tmp_path / "images", other)
    res = run_extract(store, "--precision", "fp32", "--images", str(other))
    assert res.exit_code == 2 and "were read from" in res.output and "--allow-other-images" in res.output
    # the same folder, but a photo of a done chunk replaced since
    Image.new("RGB", (200, 200), (1, 2, 3)).save(tmp_path / "images" / "0.jpg")
    res = run_extract(store, "--precision", "fp32")
    assert res.exit_code == 2 and "1 done chunk(s)" in res.output and "changed" in res.output
    res = run_extract(store, "--precision", "fp32", "--allow-other-images")
    assert res.exit_code == 0, res.output
    assert open_store(store).completeness() == (2, 2)


def test_resumed_summary_counts_the_stores_invalid_rows_and_info_says_how(tmp_path):
    store = make_image_store(tmp_path, n=2, extra={"bad.jpg": b"not a jpeg", "gone.jpg": None})
    res = run_extract(store, "--precision", "fp32")
    assert res.exit_code == 0 and "1 missing, 1 unreadable in this run" in res.output
    stop_after(store, 1)  # chunk 0 (rows 0, 1) done; chunk 1 (bad, gone) again
    res = run_extract(store, "--precision", "fp32")
    assert "1 missing, 1 unreadable in this run, 1 missing, 1 unreadable in the store" in res.output
    stop_after(store, 1)
    (tmp_path / "images" / "gone.jpg").write_bytes((tmp_path / "images" / "0.jpg").read_bytes())
    (tmp_path / "images" / "bad.jpg").write_bytes((tmp_path / "images" / "1.jpg").read_bytes())
    zarr.open_group(store, mode="r+")["reason"][0] = "unreadable"  # an invalid row in a done chunk
    res = run_extract(store, "--precision", "fp32")
    assert "invalid rows: none in this run, 1 unreadable in the store" in res.output  # said "none" before
    info = CliRunner().invoke(cli, ["info", str(store)]).output
    assert "weights random (seed 0), preprocessing imagenet" in info
    assert "settings   fp32 on cpu" in info and "invalid    1 unreadable" in info and "runs       3" in info


def test_resume_with_other_preprocessing_needs_overwrite(tmp_path):
    store = make_image_store(tmp_path, n=2)
    assert run_extract(store).exit_code == 0
    res = run_extract(store, "--preprocessing", "resnet50-object=places365-caffe")
    assert res.exit_code == 2 and "--overwrite" in res.output
    res = run_extract(store, "--preprocessing", "resnet50-object=places365-caffe", "--overwrite")
    assert res.exit_code == 0, res.output
    assert open_store(store).blocks[0]["preprocessing"]["colour_order"] == "BGR"


@pytest.mark.slow
def test_overwrite_keeps_the_old_features_until_the_new_ones_are_complete(tmp_path, monkeypatch):
    store = make_image_store(tmp_path, n=6)
    shutil.copytree(store, tmp_path / "ref.zarr")
    assert run_extract(store, "--precision", "fp32").exit_code == 0
    old = open_store(store).features()
    assert run_extract(tmp_path / "ref.zarr", "--precision", "fp32", "--seed", "7").exit_code == 0
    from hashtagkit.stores import aside as engine

    calls = []
    real = engine.AsideStore.write_chunk

    def crash_after_one(self, *a, **k):  # the overwriting run dies after its first chunk
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(engine.AsideStore, "write_chunk", crash_after_one)
    res = run_extract(store, "--precision", "fp32", "--seed", "7", "--overwrite")
    assert res.exit_code != 0 and "stay readable" in res.output
    s = open_store(store)
    assert s.completeness() == (3, 3) and np.array_equal(s.features(), old)  # the old features, whole
    assert s.blocks[0]["weights"]["seed"] == 0
    assert "overwrite  in progress: 1 of 3 new chunks" in CliRunner().invoke(cli, ["info", str(store)]).output
    monkeypatch.undo()
    res = run_extract(store, "--precision", "fp32", "--seed", "7", "--overwrite")  # the same command resumes
    assert res.exit_code == 0 and "1 chunk(s) already done" in res.output and "extracted 4 of 6" in res.output
    s, ref = open_store(store), open_store(tmp_path / "ref.zarr")
    assert engine.ASIDE not in s.group and s.blocks[0]["weights"]["seed"] == 7
    assert np.array_equal(s.features(), ref.features()) and not np.array_equal(s.features(), old)
    runs = s.group.attrs["extraction"]["runs"]
    assert len(runs) == 2 and all(r["precision"] == "fp32" for r in runs)


def test_recommend_rebuilds_the_recorded_preprocessing(extracted_demo):
    """A store records each block's preprocessing; recommend feeds exactly that, even if asked otherwise."""
    tmp, store, _ = extracted_demo
    block = open_store(store).blocks[0]
    assert block["preprocessing"] == json.loads(json.dumps(IMAGENET.describe()))
    from hashtagkit.extraction import rebuild_extractor
    from hashtagkit.runs import read_run

    record = read_run(tmp / "run")
    blocks = record.store["blocks"]
    blocks[0]["preprocessing"] = PLACES365_CAFFE.describe()
    assert rebuild_extractor(blocks, {}, "cpu", "fp32").transforms == [PLACES365_CAFFE]


@pytest.mark.slow
def test_a_dying_decoder_costs_its_image_not_the_extraction(tmp_path, monkeypatch):
    """A decode worker SIGKILLed on one photo (as the OS kills one out of memory): only that row
    is invalid ('decoder died'); the others equal an undisturbed run's; a resume has nothing to do."""
    boom = (tmp_path / "x.jpg")
    Image.new("RGB", (64, 64), (9, 9, 9)).save(boom)
    store = make_image_store(tmp_path, n=7, extra={"boom.jpg": boom.read_bytes()})
    shutil.copytree(store, tmp_path / "ref.zarr")
    args = ["--precision", "fp32", "--dtype", "float32", "--batch-size", "2", "--chunk-rows", "4"]
    assert run_extract(tmp_path / "ref.zarr", *args).exit_code == 0
    monkeypatch.setenv(faults.KILL_DECODE, "boom.jpg")
    faults.install(monkeypatch, spare_pid=os.getpid())  # its forked decode workers die on boom.jpg
    res = CliRunner().invoke(cli, ["extract", str(store), "--backbone", "resnet50-object=random", "--no-progress",
                                   "--workers", "2", *args])
    assert res.exit_code == 0, res.output + ("".join(traceback.format_exception(*res.exc_info)) if res.exc_info else "")
    assert "1 decoder died" in res.output
    s, ref = open_store(store), open_store(tmp_path / "ref.zarr")
    assert s.completeness() == (2, 2)
    assert s.valid().tolist() == [True] * 7 + [False]
    assert np.asarray(s.group["reason"][...]).tolist()[-1] == "decoder died"
    assert np.array_equal(s.features()[:7], ref.features()[:7])
    res = CliRunner().invoke(cli, ["extract", str(store), "--backbone", "resnet50-object=random", "--no-progress",
                                   "--workers", "2", *args])
    assert res.exit_code == 0 and "extracted 0 of 8 rows" in res.output


def tiny_scene_backbone():
    """A cheap 'scene' backbone (colour layout: 4x4 average pool) so a store has two blocks fast."""
    from torch import nn

    from hashtagkit.backbones import BACKBONES, BackboneSpec, register

    if "tiny-scene" not in BACKBONES:
        register(BackboneSpec(
            name="tiny-scene", block="scene", dim=48, layer="4x4 average pool", preprocessing=PLACES365_CAFFE,
            build=lambda state: nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten()),
            default_source=lambda: None,
        ))


@pytest.mark.slow
@pytest.mark.parametrize("view", ["object", "scene"])
def test_single_view_run_on_two_block_store_scores_as_its_masked_features(tmp_path, view):
    """recommend with a one-view run on a two-block store: the other block is masked as in training,
    so a store photo scores exactly as the head scores the store's own (masked) features."""
    tiny_scene_backbone()
    store = tmp_path / "demo.zarr"
    runner = CliRunner()
    assert runner.invoke(cli, ["prepare", "demo", "-o", str(store), "--n", "30"]).exit_code == 0
    res = runner.invoke(cli, ["extract", str(store), "--backbone", "resnet50-object=random", "--backbone",
                              "tiny-scene=random", "--no-progress", "--workers", "0", "--precision", "fp32"])
    assert res.exit_code == 0, res.output
    s = open_store(store)
    assert [b["name"] for b in s.blocks] == ["object", "scene"]
    res = runner.invoke(cli, ["fit", str(store), "--head", "knn", "--features", view, "-o", str(tmp_path / "run"),
                              "--set", "k=5"])
    assert res.exit_code == 0, res.output
    rows = s.split_rows("test")[:2]
    images = [str(tmp_path / "demo_images" / p) for p in s.paths(rows)]
    res = runner.invoke(cli, ["recommend", str(tmp_path / "run"), *images, "--json", "--top", "4"])
    assert res.exit_code == 0, res.output
    from hashtagkit.heads import Head

    expected = Head.load(tmp_path / "run" / "model").predict_proba(s.features(view, rows))
    for out, exp in zip(json.loads(res.output)["results"], expected, strict=True):
        scores = {h["tag"]: h["score"] for h in out["hashtags"]}
        assert scores == pytest.approx({t: float(exp[s.vocab.index(t)]) for t in scores}, abs=1e-3)
        assert sorted(exp, reverse=True)[:4] == pytest.approx(sorted(scores.values(), reverse=True), abs=1e-3)


def test_recommend_with_the_popularity_floor_needs_no_extractor(tmp_path):
    """The floor ignores the image: its recommendation is the training frequency order, with no
    backbone weights to find; a file that is not an image is still reported."""
    import numpy as np
    from PIL import Image

    from hashtagkit.recommend import recommend
    from hashtagkit.runs import fit

    from ..conftest import make_store

    store = make_store(tmp_path / "s.zarr")
    fit(store.path, "popularity", tmp_path / "run")
    Image.new("RGB", (40, 30), (90, 120, 200)).save(tmp_path / "p.png")
    (tmp_path / "bad.jpg").write_bytes(b"no photo")
    good, bad = recommend(tmp_path / "run", [tmp_path / "p.png", tmp_path / "bad.jpg"], top=3)
    freq = store.labels(store.split_rows("train")).mean(axis=0)
    expected = [store.vocab[c] for c in sorted(range(len(freq)), key=lambda c: (-freq[c], c))[:3]]
    assert [t for t, _ in good.hashtags] == expected and good.error is None
    assert np.allclose([s for _, s in good.hashtags], sorted(freq, reverse=True)[:3])
    assert bad.error and not bad.hashtags


@pytest.mark.slow
def test_a_kill_while_swapping_loses_nothing_and_the_next_extract_finishes_it(tmp_path, monkeypatch):
    """`--overwrite` killed half-way through moving its new arrays in: readers are refused (not
    served a half-swapped store), and the next extract completes the swap to the new features."""
    store = make_image_store(tmp_path, n=6)
    shutil.copytree(store, tmp_path / "ref.zarr")
    assert run_extract(store, "--precision", "fp32").exit_code == 0
    assert run_extract(tmp_path / "ref.zarr", "--precision", "fp32", "--seed", "7").exit_code == 0
    from hashtagkit.stores import aside as engine

    moved = []
    real = engine.move_array

    def die_after_two(new, old):
        if len(moved) == 2:
            raise KeyboardInterrupt
        moved.append(new)
        return real(new, old)

    monkeypatch.setattr(engine, "move_array", die_after_two)
    res = run_extract(store, "--precision", "fp32", "--seed", "7", "--overwrite")
    assert res.exit_code != 0 and len(moved) == 2
    monkeypatch.undo()
    with pytest.raises(InputError, match="interrupted while it swapped"):
        open_store(store).features()
    res = run_extract(store, "--precision", "fp32", "--seed", "7", "--overwrite")  # the same command
    assert res.exit_code == 0, res.output
    assert "finished the swap" in res.output and "extracted 0 of 6" in res.output
    s, ref = open_store(store), open_store(tmp_path / "ref.zarr")
    assert engine.ASIDE not in s.group and s.blocks[0]["weights"]["seed"] == 7
    assert np.array_equal(s.features(), ref.features())


@pytest.mark.slow
def test_overwrite_with_other_settings_restarts_its_interrupted_start(tmp_path, monkeypatch):
    """An interrupted `--overwrite` followed by `--overwrite` with other settings starts the new
    features again instead of refusing with 'pass --overwrite'."""
    store = make_image_store(tmp_path, n=6)
    assert run_extract(store, "--precision", "fp32").exit_code == 0
    from hashtagkit.stores import aside as engine

    real = engine.AsideStore.write_chunk
    calls = []

    def crash_after_one(self, *a, **k):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(engine.AsideStore, "write_chunk", crash_after_one)
    assert run_extract(store, "--precision", "fp32", "--seed", "7", "--overwrite").exit_code != 0
    monkeypatch.undo()
    res = run_extract(store, "--precision", "fp32", "--seed", "7", "--overwrite", "--allow-truncated")
    assert res.exit_code == 0, res.output
    assert "starting them again" in res.output and "extracted 6 of 6" in res.output
    assert open_store(store).group.attrs["extraction"]["allow_truncated"] is True
    # a plain resume with other truncated-photo handling than the done chunks' is refused
    res = run_extract(store, "--precision", "fp32", "--seed", "7")
    assert res.exit_code == 2 and "--allow-truncated" in res.output
