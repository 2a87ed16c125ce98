"""The synthetic demo: deterministic, and its hashtags follow what is drawn."""

from __future__ import annotations

import hashlib

import numpy as np
from click.testing import CliRunner
from PIL import Image

from hashtagkit.cli.main import cli
from hashtagkit.data.demo import NON_VISUAL, draw_scene, make_demo, render
from hashtagkit.stores import open_store


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_deterministic_and_prefix_stable(tmp_path):
    for name, n in (("a", 30), ("b", 30), ("c", 12)):
        (tmp_path / name).mkdir()
        make_demo(tmp_path / name, n=n, seed=4)
    a, b, c = digest(tmp_path / "a"), digest(tmp_path / "b"), digest(tmp_path / "c")
    assert a == b
    assert all(a[k] == v for k, v in c.items())  # image i depends only on (seed, i)
    (tmp_path / "d").mkdir()
    make_demo(tmp_path / "d", n=12, seed=5)
    assert digest(tmp_path / "d") != c


def test_pixels_follow_the_scene():
    """Night skies are dark, snow is bright, a sea is blue: what the tags claim is drawn."""
    stats = {"night": [], "day": [], "snow": [], "sea": []}
    for i in range(150):
        rng = np.random.default_rng([0, i])
        scene = draw_scene(rng)
        px = np.asarray(render(scene, rng), dtype=float)
        hz = int(px.shape[0] * scene.horizon)
        stats["night" if scene.time == "night" else "day"].append(px[: hz // 2].mean())
        if scene.ground == "snow":
            stats["snow"].append(px[-5:].mean())
        if scene.ground == "sea":
            bottom = px[-3:].reshape(-1, 3).mean(0)
            stats["sea"].append(bottom[2] > bottom[0])
    assert max(stats["night"]) < min(stats["day"])
    assert min(stats["snow"]) > 180
    assert all(stats["sea"])


def test_store_is_labelled_synthetic_with_long_tail(tmp_path):
    out = tmp_path / "demo.zarr"
    res = CliRunner().invoke(cli, ["prepare", "demo", "-o", str(out), "--n", "200"])
    assert res.exit_code == 0, res.output
    store = open_store(out)
    info = store.info()
    assert info["synthetic"] is True and info["kind"] == "demo"
    images = tmp_path / "demo_images"
    assert store.image_root == str(images.resolve())
    assert len(list(images.glob("*.jpg"))) == 200
    img = Image.open(images / store.paths([0])[0])
    assert img.mode == "RGB" and min(img.size) >= 200
    freq = store.labels().sum(0)
    assert list(freq) == sorted(freq, reverse=True)  # class id = frequency rank
    assert freq[0] > 10 * max(freq[-1], 1)  # a long tail
    assert "love" in store.vocab and set(NON_VISUAL[:3]) <= set(store.vocab)
    assert 1 <= info["tags_per_image"]["min"] and info["tags_per_image"]["max"] <= 10
    # the images folder is refused like the store when it exists
    res = CliRunner().invoke(cli, ["prepare", "demo", "-o", str(tmp_path / "other.zarr"), "--images", str(images)])
    assert res.exit_code == 2 and "--overwrite" in res.output
