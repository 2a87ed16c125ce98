"""`extract --compile` (issue #16, item 4): the backbones compiled with torch.compile for one batch
shape give the features of the uncompiled model, a short last batch is padded instead of
compiling a second graph, and the option is refused where it cannot run."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from hashtagkit.backbones import IMAGENET, load_backbone
from hashtagkit.cli.main import cli
from hashtagkit.errors import InputError
from hashtagkit.extraction import ExtractConfig, Extractor, extract
from hashtagkit.stores import open_store

pytestmark = pytest.mark.slow  # torch.compile


def tiny_conv_backbone() -> None:
    """A small convolutional 'object' backbone: weights to freeze, a conv+ReLU to fuse, compiled in seconds."""
    from hashtagkit.backbones import BACKBONES, BackboneSpec, register

    if "tiny-conv" not in BACKBONES:
        register(BackboneSpec(
            name="tiny-conv", block="object", dim=32, layer="conv, 2x2 average pool", preprocessing=IMAGENET,
            build=lambda state: nn.Sequential(nn.Conv2d(3, 8, 5, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                                              nn.Flatten()),
            default_source=lambda: None,
        ))


def backbone():
    tiny_conv_backbone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights, said loudly elsewhere
        return load_backbone("tiny-conv", "random", seed=3)


def test_compiled_model_gives_the_uncompiled_features_and_compiles_one_graph():
    from torch._dynamo.utils import counters

    pixels = torch.randint(0, 256, (7, 3, 64, 64), dtype=torch.uint8)
    plain = Extractor([backbone()], torch.device("cpu"), "fp32")
    compiled = Extractor([backbone()], torch.device("cpu"), "fp32", compile_batch=4)
    assert "torch.compile (batch 4)" in compiled.describe() and "compile" not in plain.describe()
    graphs = counters["stats"]["unique_graphs"]
    expected = plain([pixels])
    got = compiled([pixels])  # a batch of 4, then 3 padded to 4
    got_short = compiled([pixels[:2]])  # shorter again: still the same graph
    assert got.shape == expected.shape == (7, 32)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_short, expected[:2], rtol=1e-4, atol=1e-5)
    assert counters["stats"]["unique_graphs"] - graphs == 1


def test_compile_is_refused_on_dask():
    ExtractConfig(compile=False, lanes=4, cluster="local").check_compile()  # without compile nothing is checked
    ExtractConfig(compile=True, lanes=2).check_compile()  # lanes run the compiled model as they run the eager one
    with pytest.raises(InputError, match="in-process") as e:
        ExtractConfig(compile=True, scheduler="10.0.0.5:8786").check_compile()
    assert e.value.param == "compile" and str(e.value).startswith("compile ")  # named as the caller spelled it


def test_cli_refuses_compile_where_it_cannot_run(tmp_path):
    store = tmp_path / "s.zarr"
    runner = CliRunner()
    assert runner.invoke(cli, ["prepare", "demo", "-o", str(store), "--n", "12"]).exit_code == 0
    res = runner.invoke(cli, ["extract", str(store), "--backbone", "tiny-conv=random", "--compile", "--cluster",
                              "local:1"])
    assert res.exit_code == 2, res.output
    assert "--compile is for an in-process extraction" in res.output and "Traceback" not in res.output


def test_extract_with_compile_writes_the_uncompiled_features_and_records_it(tmp_path):
    tiny_conv_backbone()
    runner = CliRunner()
    stores = {}
    for name in ("plain", "compiled"):
        stores[name] = tmp_path / f"{name}.zarr"
        assert runner.invoke(cli, ["prepare", "demo", "-o", str(stores[name]), "--n", "20"]).exit_code == 0
    common = dict(device="cpu", precision="fp32", batch_size=8, workers=0, progress=False, log=lambda s: None)
    extract(stores["plain"], [backbone()], **common)
    res = runner.invoke(cli, ["extract", str(stores["compiled"]), "--backbone", "tiny-conv=random", "--seed", "3",
                              "--compile", "--device", "cpu", "--precision", "fp32", "--batch-size", "8",
                              "--workers", "0", "--lanes", "2", "--no-progress"])  # 20 rows: batches of 8, 8, 4
    assert res.exit_code == 0, res.output
    assert "compile: compiling the model (asked for)" in res.output and "compile: compiled in" in res.output
    a, b = open_store(stores["plain"]), open_store(stores["compiled"])
    rows = np.arange(a.n_rows)
    np.testing.assert_allclose(np.asarray(b.features("both", rows), np.float32),
                               np.asarray(a.features("both", rows), np.float32), rtol=2e-3, atol=2e-3)  # float16 storage
    run = b.group.attrs["extraction"]["runs"][-1]
    # two lanes, each a thread, ran the compiled model (compiled for one thread: inductor's kernels)
    assert "torch.compile (batch 8)" in run["compute"] and run["budget"]["lanes"] == 2
    assert run["budget"]["threads_per_lane"] == 1
    assert run["compile"]["asked"] == "on" and run["compile"]["compile"] is True and run["compile"]["seconds"] > 0


def test_auto_compiles_a_run_that_repays_it_and_remembers_the_cache(tmp_path, monkeypatch):
    """auto on a (here: made cheap) run that repays the compile: compiled before the first photo,
    the same features, the compile's seconds remembered so the next run knows the cache is warm;
    a short run stays uncompiled and says why in its record."""
    from hashtagkit.extraction import compiling

    tiny_conv_backbone()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    # made cheap: 0.05 s to compile and 10 ms saved a photo, so from 11 photos (20 compile, 10 do not)
    monkeypatch.setattr(compiling, "COLD_SECONDS_PER_BACKBONE", 0.05)
    monkeypatch.setattr(compiling, "SAVED_SECONDS_PER_PHOTO_PER_BACKBONE", 0.01)
    runner = CliRunner()
    stores = {n: tmp_path / f"{n}.zarr" for n in ("plain", "auto", "short")}
    for name, path in stores.items():
        n = "10" if name == "short" else "20"
        assert runner.invoke(cli, ["prepare", "demo", "-o", str(path), "--n", n]).exit_code == 0
    common = dict(device="cpu", precision="bf16", batch_size=8, workers=0, progress=False, seed=3)
    extract(stores["plain"], ["tiny-conv=random"], compile="off", log=lambda s: None, **common)
    said: list[str] = []
    extract(stores["auto"], ["tiny-conv=random"], log=said.append, **common)
    run = open_store(stores["auto"]).group.attrs["extraction"]["runs"][-1]
    assert run["compile"]["asked"] == "auto" and run["compile"]["compile"] is True and run["compile"]["cache"] == "cold"
    assert "torch.compile (batch 8)" in run["compute"]
    assert any(s.startswith("compile: compiling the model (20 photos to extract") for s in said)
    a, b = open_store(stores["plain"]), open_store(stores["auto"])
    rows = np.arange(a.n_rows)
    np.testing.assert_allclose(np.asarray(b.features("both", rows), np.float32),
                               np.asarray(a.features("both", rows), np.float32), rtol=2e-2, atol=2e-2)  # bf16
    key = compiling.cache_key(Extractor([backbone()], torch.device("cpu"), "bf16").architecture(), 8, "bf16", "cpu")
    assert compiling.remembered_seconds(key) == pytest.approx(run["compile"]["seconds"], abs=0.01)
    monkeypatch.setattr(compiling, "COLD_SECONDS_PER_BACKBONE", 1e6)  # cold would never pay now: warm must
    monkeypatch.setattr(compiling, "remembered_seconds", lambda k: 0.05 if k == key else None)
    extract(stores["short"], ["tiny-conv=random"], log=lambda s: None, **common)
    short = open_store(stores["short"]).group.attrs["extraction"]["runs"][-1]
    assert short["compile"]["compile"] is False and "10 photos to extract" in short["compile"]["why"]
    assert short["compile"]["cache"] == "warm" and "torch.compile" not in short["compute"]


def test_auto_falls_back_to_the_uncompiled_model_when_the_compile_fails(tmp_path, monkeypatch):
    """auto: a compile that fails is a line and an uncompiled run (recorded); asked for, an error."""
    from hashtagkit.extraction import compiling

    tiny_conv_backbone()
    monkeypatch.setattr(compiling, "plan_compile", lambda asked, **kw: compiling.CompilePlan(
        compiling.normalise_mode(asked), True, "test", 1.0, "cold"))

    def fails(self, batch_size):
        raise InputError("{opt:compile}: torch.compile could not build the model on this machine (no g++)")

    monkeypatch.setattr(Extractor, "compile", fails)
    store = tmp_path / "s.zarr"
    assert CliRunner().invoke(cli, ["prepare", "demo", "-o", str(store), "--n", "10"]).exit_code == 0
    said: list[str] = []
    summary = extract(store, ["tiny-conv=random"], device="cpu", precision="bf16", workers=0, progress=False,
                      log=said.append)
    assert summary.extracted == 10
    assert any("could not build the model" in s and s.endswith("extracting uncompiled") for s in said)
    run = open_store(store).group.attrs["extraction"]["runs"][-1]
    assert run["compile"]["compile"] is False and "no g++" in run["compile"]["failed"]
    res = CliRunner().invoke(cli, ["extract", str(store), "--backbone", "tiny-conv=random", "--compile",
                                   "--overwrite", "--no-progress", "--device", "cpu"])
    assert res.exit_code == 2 and "--compile: torch.compile could not build" in res.output
    assert "Traceback" not in res.output


def test_a_compile_that_fails_is_one_line_for_the_user():
    """No C++ compiler for inductor (or no Triton GPU): InputError (exit 2 in the CLI), not a traceback."""
    class BackendCompilerFailed(Exception):
        pass

    BackendCompilerFailed.__module__ = "torch._dynamo.exc"

    def fails(inputs):
        raise BackendCompilerFailed("backend='inductor' raised:\nCppCompileError: C++ compile error")

    engine = Extractor([backbone()], torch.device("cpu"), "fp32", compile_batch=2)
    engine.forward = fails
    with pytest.raises(InputError, match=r"compile: torch.compile could not build .*inductor.*run without compile"):
        engine([torch.zeros(2, 3, 32, 32, dtype=torch.uint8)])

    def our_bug(inputs):
        raise ValueError("a bug of ours")

    engine.forward = our_bug  # anything else keeps its traceback
    with pytest.raises(ValueError, match="a bug of ours"):
        engine([torch.zeros(2, 3, 32, 32, dtype=torch.uint8)])
