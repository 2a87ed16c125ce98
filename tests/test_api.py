"""The public Python API (issue #24): `import hashtagkit` names every step the CLI runs, imports
nothing heavy until a name is used, and each call makes what its command makes."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import hashtagkit
from hashtagkit.cli.main import cli
from hashtagkit.errors import InputError


def test_import_is_light_and_every_name_resolves():
    code = ("import sys, hashtagkit; heavy = [m for m in ('torch', 'sklearn', 'zarr', 'faiss') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
    for name in hashtagkit.__all__:
        assert getattr(hashtagkit, name) is not None, name
    with pytest.raises(AttributeError):
        hashtagkit.no_such_thing  # noqa: B018
    # a submodule imported under a name of the API would shadow it (hashtagkit.extract is one)
    for module in ("bench", "evaluate", "extract", "prepare", "recommend", "runs"):
        importlib.import_module(f"hashtagkit.{module}")
    assert not [n for n in hashtagkit.__all__ if n != "__version__" and inspect.ismodule(getattr(hashtagkit, n))]


def test_prepare_demo_in_python_makes_the_store_the_cli_makes(tmp_path):
    store = hashtagkit.prepare_demo(tmp_path / "py.zarr", n=30, seed=3, test_size=0.2)
    res = CliRunner().invoke(cli, ["prepare", "demo", "-o", str(tmp_path / "cli.zarr"), "--n", "30", "--seed", "3"])
    assert res.exit_code == 0, res.output
    other = hashtagkit.open_store(tmp_path / "cli.zarr")
    assert store.split_info["sha256"] == other.split_info["sha256"]
    assert np.array_equal(store.labels(), other.labels()) and store.paths() == other.paths()
    assert store.vocab == other.vocab and (tmp_path / "py_images").is_dir()


def test_prepare_planted_and_harrison_sizes_are_checked_by_name(tmp_path):
    store = hashtagkit.prepare_planted(tmp_path / "p.zarr", n=200, dim=8, classes=12, test_size=50)
    assert store.split_info["counts"]["test"] == 50 and store.n_classes == 12
    with pytest.raises(InputError, match="test_size 10.5: from 1 up a size is a whole row count"):
        hashtagkit.prepare_planted(tmp_path / "q.zarr", n=200, dim=8, classes=12, test_size=10.5)
    with pytest.raises(InputError, match="val_size must be a row count >= 0"):
        hashtagkit.prepare_planted(tmp_path / "q.zarr", n=200, dim=8, classes=12, val_size=-1)
    assert not (tmp_path / "q.zarr").exists()


def test_prepare_posts_refuses_a_missing_image_folder(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"image": "a.jpg", "hashtags": ["sea"]}\n')
    with pytest.raises(InputError, match="images folder .* does not exist"):
        hashtagkit.prepare_posts(tmp_path / "p.jsonl", tmp_path / "nothing", tmp_path / "s.zarr", lemmatize=False)
    lines = []
    (tmp_path / "imgs").mkdir()
    store = hashtagkit.prepare_posts(tmp_path / "p.jsonl", tmp_path / "imgs", tmp_path / "s.zarr", lemmatize=False,
                                     test_size=0, log=lines.append)
    assert store.vocab == ["sea"] and any(line.startswith("read") for line in lines)


def test_the_whole_pipeline_from_python(tmp_path):
    """The module docstring's five steps, with the tiny test backbone in place of VGG-16."""
    from .test_extract import tiny_scene_backbone

    tiny_scene_backbone()
    store = hashtagkit.prepare_demo(tmp_path / "demo.zarr", n=24)
    with pytest.warns(UserWarning, match="RANDOM"):
        backbones = [hashtagkit.load_backbone("tiny-scene", "random")]
    hashtagkit.extract_features(store.path, backbones, precision="fp32", progress=False, log=lambda *a: None, workers=0)
    run = hashtagkit.fit_run(store.path, "knn", tmp_path / "run", params={"k": 3})
    metrics = hashtagkit.evaluate_run(run)
    assert 0 <= metrics["recall@5"] <= 1 and metrics["n_images"] == store.split_info["counts"]["test"]
    photo = sorted((tmp_path / "demo_images").rglob("*.jpg"))[0]
    got = hashtagkit.Recommender.from_run(run, device="cpu").recommend([photo], top=3)[0]
    assert len(got.hashtags) == 3 and all(tag in store.vocab for tag, _ in got.hashtags)
