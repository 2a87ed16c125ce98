"""Shared fixtures. Real data lives in ../shared (beside the repository in CI); tests that need
it skip with a reason on a fresh clone without it, and fail instead when HASHTAGKIT_REQUIRE_SHARED=1
(CI sets it, so CI cannot go green by skipping)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HASHTAGKIT_SHARED", REPO.parent / "shared"))
HARRISON = SHARED / "harrison"
REQUIRE_SHARED = "HASHTAGKIT_REQUIRE_SHARED"


@pytest.fixture(scope="session", autouse=True)
def _own_sha256_cache(tmp_path_factory):
    """The suite never writes the user's sha256 cache of weights files (subprocesses inherit this)."""
    os.environ.setdefault("HASHTAGKIT_SHA256_CACHE", str(tmp_path_factory.mktemp("sha256-cache") / "sha256.json"))


def need_data(available: bool, reason: str) -> None:
    """Skip a test whose real data (../shared, WordNet) is absent, or fail it when the environment
    says that data must be there: a skipped test proves nothing, and CI must not pass by skipping.
    Only for data; hardware gaps (no bf16 CPU, no CUDA) stay plain skips."""
    if available:
        return
    if os.environ.get(REQUIRE_SHARED) == "1":
        pytest.fail(f"{reason} ({REQUIRE_SHARED}=1: required data is missing)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def harrison_root() -> Path:
    need_data((HARRISON / "data_list.txt").is_file(),
              f"the real HARRISON label files are not at {HARRISON} (../shared absent)")
    return HARRISON


@pytest.fixture(scope="session")
def harrison_store(harrison_root, tmp_path_factory):
    """The real HARRISON labels prepared once with the paper's split (seed 0)."""
    from hashtagkit.data.harrison import read_harrison
    from hashtagkit.data.split import random_split
    from hashtagkit.data.vocabulary import multi_hot
    from hashtagkit.stores import create_store

    data = read_harrison(harrison_root)
    split, info = random_split(len(data.paths), 5000, 0, 0)
    path = tmp_path_factory.mktemp("harrison") / "h.zarr"
    return create_store(path, paths=data.paths, labels=multi_hot(data.tags, data.vocab), vocab=data.vocab,
                        split=split, split_info=info, kind="harrison", image_root=data.image_root, source=data.source)


def run_cli(*commands: list[str]) -> None:
    """Run hashtagkit commands in turn (in this process, so backbones a test registered are
    known), each of which must succeed: the steps that make a test's store and runs."""
    from click.testing import CliRunner

    from hashtagkit.cli.main import cli

    for args in commands:
        res = CliRunner().invoke(cli, [str(a) for a in args])
        assert res.exit_code == 0, f"hashtagkit {' '.join(map(str, args))}: {res.output}"


def make_store(path: Path, n: int = 60, c: int = 7, seed: int = 0, features: bool = True, test: int = 15,
               kind: str = "test", invalid: tuple[int, ...] = (), chunk_rows: int = 16,
               block_scales: tuple[float, float] = (1.0, 1.0)):
    """A small store with random labels and (optionally) two feature blocks of 4 columns each,
    written as `extract` writes them (init_features + write_chunk: features, valid, reason,
    done); rows in `invalid` are recorded as images that failed to decode (zero features).
    `block_scales` multiplies each block (backbones whose features differ in scale)."""
    from hashtagkit.data.split import random_split
    from hashtagkit.stores import create_store, open_store

    rng = np.random.default_rng(seed)
    labels = (rng.random((n, c)) < 0.3).astype(np.uint8)
    labels[np.arange(n), rng.integers(0, c, n)] = 1
    split, info = random_split(n, test, 0, seed)
    create_store(path, paths=[f"img_{i}.jpg" for i in range(n)], labels=labels,
                 vocab=[f"tag{j}" for j in range(c)], split=split, split_info=info,
                 kind=kind, image_root=None, synthetic=True)
    if features:
        store = open_store(path, mode="r+")
        X = rng.random((n, 8)).astype(np.float32) + labels[:, :1] * 2  # class 0 is visible
        X[:, :4] *= np.float32(block_scales[0])
        X[:, 4:] *= np.float32(block_scales[1])
        valid = np.ones(n, bool)
        valid[list(invalid)] = False
        X[~valid] = 0
        reasons = np.where(valid, "", "unreadable image").tolist()
        blocks = [{"name": "object", "columns": [0, 4], "backbone": "test-object", "weights": {"sha256": "a" * 64}},
                  {"name": "scene", "columns": [4, 8], "backbone": "test-scene", "weights": {"sha256": "b" * 64}}]
        rows = store.init_features(8, "float32", blocks, chunk_rows)
        for chunk, start in enumerate(range(0, n, rows)):
            stop = min(start + rows, n)
            store.write_chunk(chunk, X[start:stop], valid[start:stop], reasons[start:stop])
    return open_store(path)


def stop_upgrade_after(k: int, path: Path, monkeypatch) -> None:
    """Run `upgrade_store` on the store at `path`, interrupted (KeyboardInterrupt) just before
    its step k+1: the state a kill at that moment leaves (every step goes through `upgrade.act`)."""
    from hashtagkit.stores import open_store, upgrade

    real_act, count = upgrade.act, []

    def fail_after_k(what, fn, *a):
        if len(count) == k:
            raise KeyboardInterrupt(f"killed before {what}")
        count.append(what)
        fn(*a)

    monkeypatch.setattr(upgrade, "act", fail_after_k)
    try:
        with pytest.raises(KeyboardInterrupt):
            upgrade.upgrade_store(open_store(path, mode="r+"))
    finally:
        monkeypatch.setattr(upgrade, "act", real_act)


TINY_EXTRACT = ["--backbone", "tiny-scene=random", "--no-progress", "--workers", "0", "--precision", "fp32",
                "--dtype", "float32", "--chunk-rows", "2"]


def old_twin(tmp_path: Path, module):
    """A store of 7 photos extracted by this release with the tiny test backbone (`ref.zarr`,
    `TINY_EXTRACT`), and the same store made by an earlier release's writer `module` (a verbatim
    copy kept in tests/store/) with its feature arrays created and nothing written yet
    (`old.zarr`): (ref, path of the old one, the old writer's handle)."""
    from click.testing import CliRunner

    from hashtagkit.cli.main import cli
    from hashtagkit.stores import open_store

    from .extraction.test_extract import make_image_store, tiny_scene_backbone

    tiny_scene_backbone()
    ref_path = make_image_store(tmp_path, n=7, name="ref.zarr")
    assert CliRunner().invoke(cli, ["extract", str(ref_path), *TINY_EXTRACT]).exit_code == 0
    ref = open_store(ref_path)
    path = tmp_path / "old.zarr"
    module.create_store(path, paths=ref.paths(), labels=ref.labels(), vocab=ref.vocab, split=ref.split(),
                        split_info={"seed": 0}, kind="test", image_root=ref.image_root)
    writer = module.open_store(path, mode="r+")
    writer.init_features(ref.feature_width, "float32", ref.blocks, 2)
    return ref, path, writer


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1 for the whole session (tests/s3.py); skipped with the reason
    where moto is not installed (`pip install -e '.[test]'` installs it)."""
    pytest.importorskip("moto", reason="moto[server] is not installed (the test extra installs it)")
    pytest.importorskip("s3fs", reason="s3fs is not installed (the test extra installs it)")
    from tests.s3 import S3Server

    server = S3Server()
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch):
    """A fresh bucket's s3:// URL, with this process (and its subprocesses, through
    HASHTAGKIT_STORAGE_OPTIONS) pointed at the server."""
    import json

    from hashtagkit import remote

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv(remote.ENV, json.dumps(s3_server.options()))
    remote.use_storage_options(None)
    yield s3_server.bucket()
    remote.use_storage_options(None)
