"""`extract`'s compile decision (issue #27 item 2): auto compiles where the photos repay the
compile, on a bf16 CPU in process, and knows a warm inductor cache from a cold one."""

from __future__ import annotations

import json

import pytest

from hashtagkit.errors import InputError
from hashtagkit.extraction import ExtractConfig, compiling
from hashtagkit.extraction.compiling import plan_compile

ARCH = ["vgg16-object:0123", "vgg16-scene:4567"]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """An empty inductor cache of the test's own, and a compiler whatever the machine has."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setattr(compiling, "has_compiler", lambda: True)


def plan(photos: int, **kw):
    args = dict(device="cpu", precision="bf16", photos=photos, architecture=ARCH, batch_size=32,
                distributed=False) | kw
    return plan_compile(kw.pop("asked", "auto"), **{k: v for k, v in args.items() if k != "asked"})


def needed(expected_s: float, backbones: int = 2) -> int:
    """The photos from which a compile of `expected_s` pays MARGIN times over (the module's rule)."""
    return int(compiling.MARGIN * expected_s / (compiling.SAVED_SECONDS_PER_PHOTO_PER_BACKBONE * backbones)) + 1


def test_auto_compiles_a_long_run_and_not_a_short_one_on_a_cold_cache():
    cold = needed(compiling.COLD_SECONDS_PER_BACKBONE * 2)
    assert 1_000 < cold < 57_383  # a HARRISON-size run compiles, a folder of a thousand photos does not
    short, long = plan(cold - 1), plan(cold)
    assert not short.compile and short.cache == "cold" and f"pays from ~{cold:,}" in short.why
    assert long.compile and long.cache == "cold" and long.expected_seconds == compiling.COLD_SECONDS_PER_BACKBONE * 2
    # one backbone: half the compile and half the saving per photo, the same break-even
    assert plan(cold, architecture=ARCH[:1]).compile and not plan(cold - 1, architecture=ARCH[:1]).compile


def test_a_warm_cache_lowers_the_break_even_to_its_remembered_compile_time():
    key = compiling.cache_key(ARCH, 32, "bf16", "cpu")
    compiling.remember(key, 6.0)
    warm = needed(6.0)
    assert plan(warm).compile and plan(warm).cache == "warm" and plan(warm).expected_seconds == 6.0
    assert not plan(warm - 1).compile
    # another batch size, precision or architecture is another graph: still cold
    assert plan(warm, batch_size=64).cache == "cold" and not plan(warm, batch_size=64).compile
    assert plan(warm, architecture=["vgg16-object:ffff", ARCH[1]]).cache == "cold"
    memo = json.loads((compiling.cache_dir() / compiling.MEMO).read_text())
    assert memo == {key: {"seconds": 6.0}}
    compiling.remember(compiling.cache_key(ARCH, 64, "bf16", "cpu"), 7.25)  # kept beside, not replacing
    assert len(json.loads((compiling.cache_dir() / compiling.MEMO).read_text())) == 2


def test_a_memo_that_is_not_json_is_a_cold_cache_and_is_rewritten():
    compiling.cache_dir().mkdir(parents=True)
    (compiling.cache_dir() / compiling.MEMO).write_text("{not json")
    assert plan(10**9).cache == "cold"
    compiling.remember(compiling.cache_key(ARCH, 32, "bf16", "cpu"), 3.0)
    assert plan(10**9).cache == "warm"


@pytest.mark.parametrize("kw, why", [
    (dict(distributed=True), "Dask workers"),
    (dict(device="cuda"), "on a CPU only"),
    (dict(precision="fp32"), "bf16 only"),
    (dict(photos=0), "no photos"),
])
def test_auto_stays_off_where_compiling_was_not_measured_or_cannot_run(kw, why):
    p = plan(10**9 if "photos" not in kw else kw.pop("photos"), **kw)
    assert not p.compile and why in p.why


def test_auto_without_a_cpp_compiler_stays_off(monkeypatch):
    monkeypatch.setattr(compiling, "has_compiler", lambda: False)
    p = plan(10**9)
    assert not p.compile and "no C++ compiler" in p.why


def test_on_and_off_decide_whatever_the_run():
    assert plan(1, asked="on").compile and plan(1, asked=True).compile
    assert not plan(10**9, asked="off").compile and not plan(10**9, asked=False).compile
    assert plan(1, asked=None).asked == "auto"
    assert plan(1, asked="on").record() == {"asked": "on", "compile": True, "why": "asked for"}
    assert not plan(0, asked="on").compile  # a resume with nothing left compiles nothing


def test_config_checks_the_compile_setting_by_name():
    with pytest.raises(InputError, match="compile must be one of auto, on, off") as e:
        ExtractConfig(compile="sometimes").check()
    assert e.value.param == "compile"
    ExtractConfig(compile="on", lanes=2).check()  # a compiled model runs in lanes like the eager one
    ExtractConfig(cluster="local:1").check()  # auto on Dask: fine, auto leaves the model uncompiled
    with pytest.raises(InputError, match="in-process"):
        ExtractConfig(compile="on", cluster="local:1").check()
