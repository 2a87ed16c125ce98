"""The `Recommender` API: prepare/predict against recommend and the store's own features, every
way an image arrives (path, bytes, PIL) decoding alike, bad images as their own errors, info()."""

from __future__ import annotations

import io
import json
import threading

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from hashtagkit.cli.main import cli
from hashtagkit.errors import InputError
from hashtagkit.heads import Head
from hashtagkit.images import DecodeError, decode, decode_bytes
from hashtagkit.recommend import Recommendation, Recommender
from hashtagkit.stores import open_store

from ..conftest import run_cli
from ..extraction.test_extract import sample_photo, tiny_scene_backbone


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A two-block demo store (random ResNet-50 object block, tiny scene block) and a kNN run on both."""
    tiny_scene_backbone()
    tmp = tmp_path_factory.mktemp("recommender")
    store = tmp / "demo.zarr"
    run_cli(["prepare", "demo", "-o", store, "--n", "24"],
            ["extract", store, "--backbone", "resnet50-object=random", "--backbone", "tiny-scene=random",
             "--no-progress", "--workers", "0", "--precision", "fp32"],
            ["fit", store, "--head", "knn", "-o", tmp / "run", "--set", "k=5"])
    return tmp, open_store(store)


@pytest.fixture(scope="module")
def rec(run):
    return Recommender.from_run(run[0] / "run", device="cpu")


def store_photos(run, n=3) -> list[str]:
    tmp, s = run
    return [str(tmp / "demo_images" / p) for p in s.paths(s.split_rows("test")[:n])]


@pytest.mark.slow
def test_predict_equals_recommend_and_the_heads_scores_of_stored_features(run, rec):
    tmp, s = run
    paths = [*store_photos(run), sample_photo()]
    prepared = [rec.prepare(p) for p in paths]
    predicted = rec.predict(prepared, top=4)
    recommended = rec.recommend(paths, top=4, batch_size=len(paths))
    assert [r.hashtags for r in recommended] == predicted  # the same batch: bit for bit
    assert [r.image for r in recommended] == paths and all(r.error is None for r in recommended)
    # one image at a time (other batch shapes): the same ranking, scores to float tolerance
    single = rec.recommend(paths, top=4, batch_size=1)
    for one, many in zip(single, recommended, strict=True):
        assert [t for t, _ in one.hashtags] == [t for t, _ in many.hashtags]
        assert [v for _, v in one.hashtags] == pytest.approx([v for _, v in many.hashtags], abs=1e-5)
    # a store photo scores as the head scores its stored features (an independent path to the answer)
    rows = s.split_rows("test")[:3]
    stored = Head.load(tmp / "run" / "model").predict_proba(s.features("both", rows))
    for got, scores in zip(predicted[:3], stored, strict=True):
        order = np.argsort(-scores, kind="stable")[:4]
        assert [t for t, _ in got] == [s.vocab[c] for c in order]
        assert [v for _, v in got] == pytest.approx(scores[order].tolist(), abs=1e-3)


def test_path_bytes_and_pil_give_the_same_inputs(rec, tmp_path):
    path = sample_photo()
    data = open(path, "rb").read()
    a, b = rec.prepare(path), rec.prepare(data, name="upload.jpg")
    with Image.open(path) as lazy:  # opened, not loaded, by the caller
        c = rec.prepare(lazy)
    d = rec.prepare(decode(path))  # loaded, already RGB
    assert (a.name, b.name, c.name, d.name) == (path, "upload.jpg", path, "image-0")
    assert len(a.inputs) == 2  # ImageNet for the object block, Places365-Caffe for the scene block
    for other in (b, c, d):
        assert all(torch.equal(x, y) for x, y in zip(a.inputs, other.inputs, strict=True))
    # and against the preprocessing applied by hand to the shared decoder's output
    assert torch.equal(a.inputs[0], rec.transforms[0](decode(path)))
    # a mode the store would convert (RGBA on white) is converted the same way from a PIL image
    rgba = Image.new("RGBA", (64, 48), (200, 0, 0, 128))
    rgba.save(tmp_path / "a.png")
    assert torch.equal(rec.prepare(rgba).inputs[1], rec.prepare(tmp_path / "a.png").inputs[1])


def truncated_jpeg() -> bytes:
    buf = io.BytesIO()
    arr = (np.random.default_rng(1).random((200, 300, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()[: len(buf.getvalue()) // 2]


def bomb_png() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(buf, format="PNG")  # 400 megapixels in ~50 KB
    return buf.getvalue()


@pytest.mark.parametrize("data, reason", [(b"", "empty"), (b"\x89PNG not really", "unreadable"),
                                          (truncated_jpeg(), "truncated"), (bomb_png(), "decompression bomb")])
def test_bad_bytes_are_one_line_decode_errors(rec, data, reason):
    with pytest.raises(DecodeError) as e:
        rec.prepare(data)
    assert str(e.value) == reason


def test_truncated_is_decoded_when_the_run_allows_it(run):
    lenient = Recommender.from_run(run[0] / "run", device="cpu", allow_truncated=True)
    assert lenient.prepare(truncated_jpeg()).inputs[0].shape == (3, 224, 224)
    assert lenient.info()["allow_truncated"] is True


def test_decoding_in_threads_keeps_each_callers_truncation_setting():
    """Pillow's truncation switch is process-wide: strict and lenient decodes in parallel threads
    must each get their own answer (strict refuses, lenient decodes), every time."""
    data, errors = truncated_jpeg(), []

    def work(lenient: bool) -> None:
        for _ in range(15):
            try:
                decode_bytes(data, allow_truncated=lenient)
                if not lenient:
                    errors.append("strict decode accepted a truncated file")
            except DecodeError as e:
                if lenient:
                    errors.append(f"lenient decode refused: {e}")

    threads = [threading.Thread(target=work, args=(i % 2 == 0,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads) and errors == []
    from PIL import ImageFile

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # Pillow's default restored for everyone else


def test_prepare_in_threads_equals_prepare_in_turn(rec, run):
    paths = [*store_photos(run, 4), sample_photo()]
    expected = [rec.prepare(p).inputs for p in paths]
    got: dict[int, tuple] = {}
    threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, rec.prepare(paths[i % 5]).inputs))
               for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(got) == 10
    for i, inputs in got.items():
        assert all(torch.equal(x, y) for x, y in zip(inputs, expected[i % 5], strict=True))


def test_a_bad_image_gets_its_own_error_and_json_has_three_keys(rec, run):
    good = store_photos(run, 1)[0]
    out = rec.recommend([b"nope", good, b""], top=3, names=["x.jpg", "good.jpg", "empty.jpg"])
    assert [r.error for r in out] == ["unreadable", None, "empty"]
    assert out[1].hashtags == rec.recommend([good], top=3)[0].hashtags
    js = [r.as_json() for r in out]
    assert all(set(j) == {"image", "hashtags", "error"} for j in js)
    assert js[0] == {"image": "x.jpg", "hashtags": [], "error": "unreadable"}
    assert js[1]["error"] is None and [h["tag"] for h in js[1]["hashtags"]] == [t for t, _ in out[1].hashtags]
    json.dumps(js)  # plain JSON types
    assert Recommendation("a", [("t", 0.5)]).as_json() == {"image": "a", "hashtags": [{"tag": "t", "score": 0.5}],
                                                          "error": None}
    with pytest.raises(InputError):
        rec.recommend([good], names=["a", "b"])
    with pytest.raises(InputError):
        rec.predict([rec.prepare(good)], top=0)
    assert rec.predict([]) == [] and rec.recommend([]) == []


def test_cli_json_is_the_services_shape(run):
    tmp, _ = run
    (tmp / "bad.jpg").write_bytes(b"nope")
    res = CliRunner().invoke(cli, ["recommend", str(tmp / "run"), sample_photo(), str(tmp / "bad.jpg"),
                                   "--json", "--top", "2", "--device", "cpu"])
    assert res.exit_code == 2  # an image failed
    body = json.loads(res.stdout)
    assert list(body) == ["results"]
    ok, bad = body["results"]
    expected = Recommender.from_run(tmp / "run", device="cpu").recommend([sample_photo()], top=2)[0]
    assert ok == json.loads(json.dumps(expected.as_json()))
    assert bad == {"image": str(tmp / "bad.jpg"), "hashtags": [], "error": "unreadable"}


def test_info_describes_the_run_and_its_scores(run, rec):
    tmp, s = run
    info = rec.info()
    assert info["head"] == "knn" and info["view"] == "both" and info["vocabulary_size"] == len(s.vocab)
    assert [(b["name"], b["backbone"], b["source"]) for b in info["backbones"]] == \
        [("object", "resnet50-object", "random"), ("scene", "tiny-scene", "random")]
    assert info["device"] == "cpu" and info["precision"] == "fp32" and info["test_scores"] is None
    assert rec.vocab == s.vocab
    res = CliRunner().invoke(cli, ["evaluate", str(tmp / "run"), "--json"])
    assert res.exit_code == 0, res.output
    (tmp / "run" / "metrics.json").write_text(res.output)
    try:
        scores = rec.info()["test_scores"]
    finally:
        (tmp / "run" / "metrics.json").unlink()
    measured = json.loads(res.output)
    assert scores["precision@1"] == measured["precision@1"] and scores["split"] == "test"
    assert "per_class_recall@5" not in scores
    json.dumps(info)


def test_popularity_run_needs_no_extractor(tmp_path):
    from hashtagkit.runs import fit

    from ..conftest import make_store

    store = make_store(tmp_path / "s.zarr")
    fit(store.path, "popularity", tmp_path / "run")
    rec = Recommender.from_run(tmp_path / "run")
    assert rec.extractor is None and rec.info()["backbones"] == [] and rec.info()["device"] is None
    freq = store.labels(store.split_rows("train")).mean(axis=0)
    expected = [store.vocab[c] for c in sorted(range(len(freq)), key=lambda c: (-freq[c], c))[:3]]
    out = rec.recommend([Image.new("RGB", (40, 30)), b"junk"], top=3)
    assert [t for t, _ in out[0].hashtags] == expected and out[1].error == "unreadable"


# --- fast start: weights put in place without random initialisation; sha256 cached ------------------
def _states_equal(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].device.type == "cpu" and sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["fp32, fc8 of 365 classes", "fp16 file, no fc8"])
def test_vgg_weights_load_equals_the_copying_load_bit_for_bit(tmp_path, variant):
    """The meta-device load gives exactly the module the old path (random init, then a copying
    load_state_dict) gave, and draws nothing from the random generator (no initialisation ran)."""
    from torchvision.models import vgg16

    from hashtagkit.backbones import load_backbone

    torch.manual_seed(5)
    state = vgg16(weights=None, num_classes=365 if "365" in variant else 1000).state_dict()
    if "no fc8" in variant:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.6.")}
    saved = {k: v.half() for k, v in state.items()} if "fp16" in variant else state
    torch.save(saved, tmp_path / "w.pth")
    rng = torch.get_rng_state()
    fast = load_backbone("vgg16-object", str(tmp_path / "w.pth")).module
    assert torch.equal(torch.get_rng_state(), rng), "weights were randomly initialised before being loaded"
    slow = vgg16(weights=None, num_classes=365 if "365" in variant else 1000)  # the old path
    slow.load_state_dict({k: v for k, v in saved.items()}, strict=False)
    slow.classifier = slow.classifier[:5]
    slow.eval()
    _states_equal(fast, slow)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(fast(x), slow(x))


@pytest.mark.slow
def test_resnet_weights_load_equals_the_copying_load_and_random_weights_are_unchanged(tmp_path):
    from torchvision.models import resnet50, vgg16

    from hashtagkit.backbones import load_backbone

    torch.manual_seed(6)
    state = resnet50(weights=None).state_dict()
    state = {k: (v + 1 if k.endswith("running_var") else v) for k, v in state.items()}  # buffers count too
    torch.save(state, tmp_path / "r.pth")
    fast = load_backbone("resnet50-object", str(tmp_path / "r.pth")).module
    slow = resnet50(weights=None)
    slow.load_state_dict(state)
    slow.fc = torch.nn.Identity()
    _states_equal(fast, slow.eval())
    # `random` is still torchvision's initialisation from the seed, so a store stays reproducible
    rand = load_backbone("vgg16-object", "random", seed=3).module
    torch.manual_seed(3)
    reference = vgg16(weights=None)
    reference.classifier = reference.classifier[:5]
    _states_equal(rand, reference)


@pytest.mark.slow
def test_a_weights_file_that_does_not_fit_is_still_refused(tmp_path):
    from torchvision.models import vgg16

    from hashtagkit.backbones import load_backbone

    with torch.device("meta"):
        shapes = vgg16(weights=None).state_dict()
    state = {k: torch.zeros(v.shape) for k, v in shapes.items()}
    torch.save({k: v for k, v in state.items() if k != "features.0.weight"}, tmp_path / "missing.pth")
    with pytest.raises(InputError, match="does not fit vgg16-object.*features.0.weight"):
        load_backbone("vgg16-object", str(tmp_path / "missing.pth"))
    state["features.0.weight"] = torch.zeros(64, 3, 5, 5)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(InputError, match="does not fit vgg16-object"):
        load_backbone("vgg16-object", str(tmp_path / "shape.pth"))


@pytest.fixture
def sha_cache(tmp_path, monkeypatch):
    """A cache file under tmp_path and a count of the files actually read to hash them."""
    from hashtagkit import provenance

    monkeypatch.setenv(provenance.SHA256_CACHE_ENV, str(tmp_path / "cache" / "sha256.json"))
    hashed = []
    real = provenance.sha256_file
    monkeypatch.setattr(provenance, "sha256_file", lambda p, *a: hashed.append(str(p)) or real(p, *a))
    return tmp_path / "cache" / "sha256.json", hashed


def test_sha256_cache_hashes_an_unchanged_file_once_and_a_changed_one_again(tmp_path, sha_cache):
    import hashlib
    import os

    from hashtagkit.provenance import sha256_file_cached

    cache, hashed = sha_cache
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 1000)
    truth = hashlib.sha256(b"a" * 1000).hexdigest()
    assert sha256_file_cached(f) == truth and len(hashed) == 1
    assert sha256_file_cached(f) == truth and len(hashed) == 1  # from the cache
    assert str(f.resolve()) in json.loads(cache.read_text())["entries"]
    st = os.stat(f)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # mtime changed, same content
    assert sha256_file_cached(f) == truth and len(hashed) == 2
    assert sha256_file_cached(f) == truth and len(hashed) == 2
    with open(f, "ab") as out:  # size changed
        out.write(b"b")
    assert sha256_file_cached(f) == hashlib.sha256(b"a" * 1000 + b"b").hexdigest() and len(hashed) == 3
    # same size, mtime set back by hand: the ctime still tells
    st = os.stat(f)
    f.write_bytes(b"c" * 1001)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert sha256_file_cached(f) == hashlib.sha256(b"c" * 1001).hexdigest() and len(hashed) == 4
    # a damaged cache is ignored and rewritten, never an error
    cache.write_text("{not json")
    assert sha256_file_cached(f) == hashlib.sha256(b"c" * 1001).hexdigest() and len(hashed) == 5
    assert sha256_file_cached(f) and len(hashed) == 5
    assert [p.name for p in cache.parent.iterdir()] == ["sha256.json"]  # no temporaries left


@pytest.mark.slow
def test_loading_weights_twice_hashes_once_and_still_refuses_other_weights(tmp_path, sha_cache):
    from torchvision.models import vgg16

    from hashtagkit.backbones import load_backbone

    _, hashed = sha_cache
    torch.manual_seed(0)
    torch.save(vgg16(weights=None).state_dict(), tmp_path / "a.pth")
    first = load_backbone("vgg16-object", str(tmp_path / "a.pth")).weights["sha256"]
    assert load_backbone("vgg16-object", str(tmp_path / "a.pth"), expect_sha256=first).weights["sha256"] == first
    assert len(hashed) == 1
    torch.save(vgg16(weights=None).state_dict(), tmp_path / "a.pth")  # other weights, same path and size
    with pytest.raises(InputError, match="sha256"):
        load_backbone("vgg16-object", str(tmp_path / "a.pth"), expect_sha256=first)
    assert len(hashed) == 2


def test_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    from hashtagkit import provenance

    monkeypatch.delenv(provenance.SHA256_CACHE_ENV, raising=False)
    monkeypatch.delenv("HASHTAGKIT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert provenance.sha256_cache_file() == tmp_path / "xdg" / "hashtagkit" / "sha256.json"
    monkeypatch.setenv("HASHTAGKIT_CACHE", str(tmp_path / "hk"))
    assert provenance.sha256_cache_file() == tmp_path / "hk" / "sha256.json"
    monkeypatch.delenv("HASHTAGKIT_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert provenance.sha256_cache_file() == tmp_path / "home" / ".cache" / "hashtagkit" / "sha256.json"


def _torchvision_resize_and_crop(p, image):
    """The preprocessing's geometry as it was written with torchvision's functional API (the reference)."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    w, h = image.size
    out_h, out_w = p.resize if isinstance(p.resize, tuple) else (round(h * p.resize / min(w, h)),
                                                                  round(w * p.resize / min(w, h)))
    if max(out_h, out_w) <= 4 * max(p.resize if isinstance(p.resize, tuple) else (p.resize,)):
        size = list(p.resize) if isinstance(p.resize, tuple) else p.resize
        image = F.resize(image, size, interpolation=InterpolationMode.BILINEAR, antialias=True)
        return F.center_crop(image, [p.crop, p.crop])
    box_h, box_w = max(1.0, p.crop * h / out_h), max(1.0, p.crop * w / out_w)
    top, left = round((h - box_h) / 2), round((w - box_w) / 2)
    return F.resized_crop(image, top, left, round(box_h), round(box_w), [p.crop, p.crop],
                          interpolation=InterpolationMode.BILINEAR, antialias=True)


def test_preprocessing_without_torchvision_equals_torchvision_pixel_for_pixel():
    from hashtagkit.backbones.preprocessing import IMAGENET, PLACES365_CAFFE, Preprocessing

    small = Preprocessing(resize=200, crop=224, colour_order="RGB", value_range=1.0, mean=(0, 0, 0))  # pads
    rng = np.random.default_rng(0)
    sizes = [(427, 320), (320, 427), (256, 256), (225, 224), (224, 225), (999, 257), (1, 1), (3, 1000),
             (5000, 7), (33, 2000), (255, 255), (511, 384)] + [tuple(rng.integers(1, 1200, 2)) for _ in range(20)]
    for w, h in sizes:
        image = Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8))
        for p in (IMAGENET, PLACES365_CAFFE, small):
            ours, ref = p.resize_and_crop(image), _torchvision_resize_and_crop(p, image)
            assert ours.size == ref.size == (p.crop, p.crop), (w, h, p)
            assert np.array_equal(np.asarray(ours), np.asarray(ref)), (w, h, p)


@pytest.mark.slow
def test_recommend_imports_neither_torchvision_nor_sklearn():
    """What the fast start relies on: loading VGG-16 weights from files, a kNN head and decoding
    need neither torchvision (torch._dynamo with it) nor scikit-learn (checked in a fresh process)."""
    import subprocess
    import sys

    code = ("import sys; from hashtagkit.recommend import Recommender; import hashtagkit.cli.main; "
            "from hashtagkit.backbones.vgg import vgg16_fc7, VGG16; "
            "vgg16_fc7({k: v for k, v in VGG16().state_dict().items()}); "
            "print(sorted(m for m in ('torchvision', 'sklearn', 'torch._dynamo') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_reading_a_run_imports_no_zarr(run):
    """`recommend` and `serve` read a run, never a store: zarr (~0.2 s of their start-up) stays
    unimported through loading the run, its head and scoring a photo (a fresh process)."""
    import subprocess
    import sys

    code = ("import sys; from torch import nn; from hashtagkit.recommend import Recommender; import hashtagkit.cli.main; "
            "from hashtagkit.backbones import BackboneSpec, register; "
            "from hashtagkit.backbones.preprocessing import PLACES365_CAFFE; "  # tiny_scene_backbone(), in this process
            "register(BackboneSpec(name='tiny-scene', block='scene', dim=48, layer='4x4 average pool', "
            "preprocessing=PLACES365_CAFFE, build=lambda state: nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten()), "
            "default_source=lambda: None)); "
            f"rec = Recommender.from_run({str(run[0] / 'run')!r}, device='cpu'); rec.check_scores(); "
            "print(sorted(m for m in ('zarr', 'hashtagkit.stores', 'dask', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_photos_are_decoded_as_the_stores_photos_were(run, rec, tmp_path):
    """A store extracted with `--decode fast` (JPEGs reduced down to the resize) records it in its
    blocks; a run on it decodes new photos the same way, since its head learned those pixels."""
    import copy

    from hashtagkit.images import DRAFT_SIDE, FAST_DRAFT_SIDE, draft_side_of

    rng = np.random.default_rng(0)
    big = tmp_path / "big.jpg"  # shorter side 900: the default decodes it whole, fast reduces it by 2
    Image.fromarray(rng.integers(0, 256, (900, 1200, 3), dtype=np.uint8)).save(big, quality=90)
    record = copy.deepcopy(rec.record)
    for b in record.store["blocks"]:
        b["preprocessing"] = {**b.get("preprocessing", {}), "decode": {"mode": "fast", "jpeg_draft_min_side": 256}}
    fast = Recommender(rec.run_dir, record, rec.head, rec.extractor, rec.allow_truncated)
    assert (rec.draft_side, fast.draft_side) == (DRAFT_SIDE, FAST_DRAFT_SIDE)
    assert fast.info()["jpeg_draft_min_side"] == FAST_DRAFT_SIDE
    reduced = decode(big, draft_side=FAST_DRAFT_SIDE)
    assert reduced.size == (600, 450)
    for i, t in enumerate(fast.transforms):
        assert torch.equal(fast.prepare(big).inputs[i], t(reduced))
        assert torch.equal(fast.prepare(big.read_bytes()).inputs[i], t(reduced))  # an upload alike
    assert not torch.equal(fast.prepare(big).inputs[0], rec.prepare(big).inputs[0])
    # only a store extracted wholly with fast decoding gets it
    blocks = record.store["blocks"]
    assert draft_side_of(blocks) == FAST_DRAFT_SIDE
    assert draft_side_of(blocks[:1] + rec.record.store["blocks"][1:]) == DRAFT_SIDE
    assert draft_side_of([]) == DRAFT_SIDE


@pytest.mark.parametrize("name", ["tiny-scene", "vgg16-object"])
def test_weights_for_a_backbone_the_run_does_not_load_are_refused(run, tmp_path, name):
    """--weights naming a random-weights backbone, or one the run does not have, was silently
    ignored (issue #23): now it is an error naming what the run does load."""
    (tmp_path / "w.pth").write_bytes(b"not used")
    with pytest.raises(InputError, match=f"loads no backbone '{name}' from a file \\(backbones with weights files: none\\)"):
        Recommender.from_run(run[0] / "run", device="cpu", weights={name: str(tmp_path / "w.pth")})
