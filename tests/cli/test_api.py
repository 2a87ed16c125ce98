"""The public Python API (issue #24): `import hashtagkit` names every step the CLI runs, imports
nothing heavy until a name is used, and each call makes what its command makes."""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys
from pathlib import Path

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
    # a submodule imported under a name of the API would shadow it: no module has a function's name
    for module in ("benchmark", "evaluation", "extraction", "extraction.run", "prepare", "recommend", "runs"):
        importlib.import_module(f"hashtagkit.{module}")
    modules = [n for n in hashtagkit.__all__ if n != "__version__" and inspect.ismodule(getattr(hashtagkit, n))]
    assert modules == ["prepare"]  # the one namespace: prepare.harrison / posts / demo / planted
    assert all(callable(getattr(hashtagkit.prepare, n)) for n in ("harrison", "posts", "demo", "planted"))


def test_prepare_demo_in_python_makes_the_store_the_cli_makes(tmp_path):
    store = hashtagkit.prepare.demo(tmp_path / "py.zarr", n=30, seed=3, test_size=0.2)
    res = CliRunner().invoke(cli, ["prepare", "demo", "-o", str(tmp_path / "cli.zarr"), "--n", "30", "--seed", "3"])
    assert res.exit_code == 0, res.output
    other = hashtagkit.open_store(tmp_path / "cli.zarr")
    assert store.split_info["sha256"] == other.split_info["sha256"]
    assert np.array_equal(store.labels(), other.labels()) and store.paths() == other.paths()
    assert store.vocab == other.vocab and (tmp_path / "py_images").is_dir()


def test_prepare_planted_and_harrison_sizes_are_checked_by_name(tmp_path):
    store = hashtagkit.prepare.planted(tmp_path / "p.zarr", n=200, dim=8, classes=12, test_size=50)
    assert store.split_info["counts"]["test"] == 50 and store.n_classes == 12
    with pytest.raises(InputError, match="test_size 10.5: from 1 up a size is a whole row count"):
        hashtagkit.prepare.planted(tmp_path / "q.zarr", n=200, dim=8, classes=12, test_size=10.5)
    with pytest.raises(InputError, match="val_size must be a row count >= 0"):
        hashtagkit.prepare.planted(tmp_path / "q.zarr", n=200, dim=8, classes=12, val_size=-1)
    assert not (tmp_path / "q.zarr").exists()


def test_prepare_posts_refuses_a_missing_image_folder(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"image": "a.jpg", "hashtags": ["sea"]}\n')
    with pytest.raises(InputError, match="image folder .* does not exist"):
        hashtagkit.prepare.posts(tmp_path / "p.jsonl", tmp_path / "nothing", tmp_path / "s.zarr", lemmatize=False)
    lines = []
    (tmp_path / "imgs").mkdir()
    store = hashtagkit.prepare.posts(tmp_path / "p.jsonl", tmp_path / "imgs", tmp_path / "s.zarr", lemmatize=False,
                                     test_size=0, log=lines.append)
    assert store.vocab == ["sea"] and any(line.startswith("read") for line in lines)


def test_the_whole_pipeline_from_python(tmp_path):
    """The module docstring's steps, with the tiny test backbone in place of VGG-16."""
    from ..extraction.test_extract import tiny_scene_backbone

    tiny_scene_backbone()
    store = hashtagkit.prepare.demo(tmp_path / "demo.zarr", n=24)
    with pytest.warns(UserWarning, match="RANDOM"):
        summary = hashtagkit.extract(store, ["tiny-scene=random"], precision="fp32", progress=False,
                                     log=lambda *a: None, workers=0)
    assert summary.extracted == 24
    run = hashtagkit.fit(store, "knn", tmp_path / "run", params={"k": 3})
    assert isinstance(run, hashtagkit.Run) and run.record.head == "knn" and run.record.params["k"] == 3
    assert run.record.to_json() == json.loads((tmp_path / "run" / "run.json").read_text())
    metrics = hashtagkit.evaluate(run)
    assert 0 <= metrics["recall@5"] <= 1 and metrics["n_images"] == store.split_info["counts"]["test"]
    assert "Precision@K" in metrics.table() and json.loads(json.dumps(metrics.as_dict()))["head"] == "knn"
    photo = sorted((tmp_path / "demo_images").rglob("*.jpg"))[0]
    got = hashtagkit.Recommender.from_run(run, device="cpu").recommend([photo], top=3)[0]
    assert len(got.hashtags) == 3 and all(tag in store.vocab for tag, _ in got.hashtags)
    X, Y = hashtagkit.open_store(store.path).arrays(view="both", split="train")
    assert X.dtype == np.float32 and X.shape == (run.record.n_train, store.feature_width) and Y.shape == (len(X), store.n_classes)
    assert set(np.unique(Y)) <= {0, 1}


def test_fit_from_python_and_from_the_cli_make_the_same_run(tmp_path):
    store = hashtagkit.prepare.planted(tmp_path / "p.zarr", n=120, dim=8, classes=9, test_size=30)
    run = hashtagkit.fit(store, "ovr", tmp_path / "py", params={"C": 0.5}, view="object", seed=2)
    res = CliRunner().invoke(cli, ["fit", str(store.path), "--head", "ovr", "--set", "C=0.5", "--features", "object",
                                   "--seed", "2", "-o", str(tmp_path / "cli")])
    assert res.exit_code == 0, res.output
    other = hashtagkit.Run.load(tmp_path / "cli")
    a, b = run.record.to_json(), other.record.to_json()
    for volatile in ("fit_seconds", "provenance", "fit_report"):
        a.pop(volatile), b.pop(volatile)
    assert a == b
    X = hashtagkit.open_store(store.path).features("object")[:20]
    np.testing.assert_array_equal(run.load_head().predict_proba(X), other.load_head().predict_proba(X))


def test_a_run_record_round_trips_keys_it_lacks_and_keys_it_does_not_know():
    old = {"head": "popularity", "params": {}, "features": None, "seed": 0, "store": {"path": "/x.zarr"},
           "from_a_later_release": [1, 2]}  # no n_train, fit_report, distributed... (an older run)
    record = hashtagkit.RunRecord.from_json(old)
    assert record.to_json() == old and list(record.to_json()) == list(old)
    assert record.extra == {"from_a_later_release": [1, 2]} and record.store_path.name == "x.zarr"
    with pytest.raises(InputError, match="head"):
        hashtagkit.RunRecord.from_json({"params": {}})


def test_library_errors_name_parameters_and_the_cli_names_flags(tmp_path):
    with pytest.raises(InputError, match=r"^dtype must be one of float16, float32, got 'int8'") as e:
        hashtagkit.ExtractConfig(dtype="int8").check()
    assert e.value.param == "dtype" and e.value.naming(lambda name: f"--{name}").startswith("--dtype must be")
    err = InputError("x exists: pass {opt:overwrite=True} to replace it, or another {opt:out_dir}")
    assert str(err) == "x exists: pass overwrite=True to replace it, or another out_dir"
    assert err.naming(lambda n: "--" + n.replace("_", "-")) == "x exists: pass --overwrite to replace it, or another --out-dir"
    with pytest.raises(InputError, match="no setting 'batchsize'"):
        hashtagkit.extract(tmp_path / "none.zarr", batchsize=3)
    store = hashtagkit.prepare.demo(tmp_path / "d.zarr", n=12)
    res = CliRunner().invoke(cli, ["extract", str(store.path), "--scheduler", "not an address"])
    assert res.exit_code == 2 and "Error: --scheduler takes a Dask scheduler address" in res.output, res.output
    with pytest.raises(InputError, match="^scheduler takes a Dask scheduler address"):
        hashtagkit.extract(store, scheduler="not an address")


@pytest.mark.slow
def test_the_example_script_runs_the_pipeline(tmp_path):
    """examples/pipeline.py, the API alone end to end (random VGG-16 weights, 40 demo photos)."""
    script = Path(__file__).resolve().parents[2] / "examples" / "pipeline.py"
    res = subprocess.run([sys.executable, str(script), "--out", str(tmp_path), "--n", "40", "--heads", "knn,popularity"],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    assert "store: 40 photos" in out and "extracted 40 of 40 rows" in out
    for head in ("knn", "popularity"):
        line = next(line for line in out.splitlines() if line.strip().startswith(f"{head}:"))
        p1 = float(line.split("P@1")[1].split()[0])
        assert 0 <= p1 <= 1
    assert out.count(".jpg: #") == 6 and "sklearn: subset accuracy" in out
    assert (tmp_path / "runs" / "knn" / "run.json").is_file()
