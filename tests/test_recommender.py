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

from .test_extract import sample_photo, tiny_scene_backbone


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A two-block demo store (random ResNet-50 object block, tiny scene block) and a kNN run on both."""
    tiny_scene_backbone()
    tmp = tmp_path_factory.mktemp("recommender")
    store = tmp / "demo.zarr"
    runner = CliRunner()
    assert runner.invoke(cli, ["prepare", "demo", "-o", str(store), "--n", "24"]).exit_code == 0
    res = runner.invoke(cli, ["extract", str(store), "--backbone", "resnet50-object=random", "--backbone",
                              "tiny-scene=random", "--no-progress", "--workers", "0", "--precision", "fp32"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["fit", str(store), "--head", "knn", "-o", str(tmp / "run"), "--set", "k=5"])
    assert res.exit_code == 0, res.output
    return tmp, open_store(store)


@pytest.fixture(scope="module")
def rec(run):
    return Recommender.from_run(run[0] / "run", device="cpu")


def store_photos(run, n=3) -> list[str]:
    tmp, s = run
    return [str(tmp / "demo_images" / p) for p in s.paths(s.split_rows("test")[:n])]


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
    c = rec.prepare(Image.open(path))  # lazy: opened, not loaded, by the caller
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
    from hashtagkit.runs import fit_run

    from .conftest import make_store

    store = make_store(tmp_path / "s.zarr")
    fit_run(store.path, "popularity", tmp_path / "run")
    rec = Recommender.from_run(tmp_path / "run")
    assert rec.extractor is None and rec.info()["backbones"] == [] and rec.info()["device"] is None
    freq = store.labels(store.split_rows("train")).mean(axis=0)
    expected = [store.vocab[c] for c in sorted(range(len(freq)), key=lambda c: (-freq[c], c))[:3]]
    out = rec.recommend([Image.new("RGB", (40, 30)), b"junk"], top=3)
    assert [t for t, _ in out[0].hashtags] == expected and out[1].error == "unreadable"
