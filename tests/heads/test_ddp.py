"""Training one MLP on two CPU processes with torch DDP, launched by torchrun (gloo, 127.0.0.1).

Each DDP test starts the issue's command as a real subprocess,
`torchrun --standalone --nproc_per_node=2 -m hashtagkit.cli fit STORE --head mlp ...`, run as
`python -m torch.distributed.run` (what the `torchrun` script runs) with this interpreter, so
the workers import this checkout's hashtagkit. One thread per process (OMP_NUM_THREADS=1) and
a small store keep each launch to a few seconds on 2 cores; a hang (a rank waiting on a
collective the other never joins) fails at the timeout instead of blocking the suite.
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

from hashtagkit import ddp
from hashtagkit.cli.main import cli
from hashtagkit.heads import Head
from hashtagkit.runs import MODEL_DIR, RUN_FILE, read_run
from hashtagkit.stores import SPLIT_CODES, create_store, open_store

pytestmark = pytest.mark.slow  # torchrun

TIMEOUT = 120  # seconds for one torchrun launch (about 5 s here when nothing hangs)
CHUNK = 32


def aligned_store(path: Path, train_blocks: int = 16, test_blocks: int = 4, c: int = 6, seed: int = 0):
    """A store whose training rows fill whole chunks (the test rows are the last chunks), so
    two ranks get equal shares (train_blocks / 2 full blocks each), and whose classes are
    visible in the features (each class adds its own random direction to unit noise), so the
    MLP learns a clear signal. Written as `extract` writes features (init_features +
    write_chunk), like conftest.make_store."""
    rng = np.random.default_rng(seed)
    n_train, n = train_blocks * CHUNK, (train_blocks + test_blocks) * CHUNK
    labels = (rng.random((n, c)) < 0.25).astype(np.uint8)
    labels[np.arange(n), rng.integers(0, c, n)] = 1
    split = np.full(n, SPLIT_CODES["train"], np.uint8)
    split[n_train:] = SPLIT_CODES["test"]
    info = {"seed": seed, "method": "the last rows are the test rows", "test_size": n - n_train, "val_size": 0}
    create_store(path, paths=[f"img_{i}.jpg" for i in range(n)], labels=labels, vocab=[f"tag{j}" for j in range(c)],
                 split=split, split_info=info, kind="test", image_root=None, synthetic=True)
    store = open_store(path, mode="r+")
    X = (labels @ rng.normal(0, 1.5, (c, 16)) + rng.normal(0, 1, (n, 16))).astype(np.float32)
    blocks = [{"name": "object", "columns": [0, 8], "backbone": "test-object", "weights": {"sha256": "a" * 64}},
              {"name": "scene", "columns": [8, 16], "backbone": "test-scene", "weights": {"sha256": "b" * 64}}]
    rows = store.init_features(16, "float32", blocks, CHUNK)
    assert rows == CHUNK
    for chunk, start in enumerate(range(0, n, rows)):
        store.write_chunk(chunk, X[start : start + rows], np.ones(rows, bool), [""] * rows)
    return open_store(path)


def env() -> dict:
    e = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    e.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", TQDM_DISABLE="1")
    return e


def torchrun(args: list, nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "hashtagkit.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env())


def one_process(args: list) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hashtagkit.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=TIMEOUT, env=env())


def sets(**params) -> list[str]:
    return [a for k, v in params.items() for a in ("--set", f"{k}={v}")]


def scores_on_test(run: Path, store) -> np.ndarray:
    head = Head.load(run / MODEL_DIR)
    rows = store.split_rows("test")
    return head.predict_proba(store.features("both", rows))


def evaluate(run: Path) -> dict:
    res = CliRunner().invoke(cli, ["evaluate", str(run), "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def fit_in_process(store: Path, out: Path, args: list[str]) -> None:
    res = CliRunner().invoke(cli, ["fit", str(store), "--head", "mlp", *args, "-o", str(out)])
    assert res.exit_code == 0, res.output


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return aligned_store(tmp_path_factory.mktemp("ddp") / "s.zarr", c=12, train_blocks=16, test_blocks=16)


# Full-batch gradient descent without dropout or validation: data order cannot matter, so 2
# processes (256 rows each, batch 512 // 2) and 1 process (batch 512) make the same updates
# and differ only by float32 summation order (the gradient all-reduce, the statistics' sums).
FULL_BATCH = dict(hidden=32, dropout=0.0, val_fraction=0.0, batch_size=512, epochs=30, lr=0.01, precision="fp32",
                  cache="memory", device="cpu")  # gloo on the CPU, on a GPU machine too
# Mini-batches from the streamed path with a prefetching worker per rank, validation and early
# stopping: the 2-process run sees the rows in another order and runs 14 steps an epoch to the
# 1-process run's 15 (each rank drops its share's last partial batch). The 1-process reference
# reads in-process (workers=0): a BlockStream with one worker yields the same batches.
MINI_BATCH = dict(hidden=32, dropout=0.0, batch_size=32, epochs=6, lr=0.01, precision="fp32", cache="stream",
                  workers=1, buffer_blocks=2, device="cpu")


def test_two_processes_train_the_same_model_as_one(store, tmp_path):
    """The global batch is split over the ranks and the gradients averaged: with full batches
    the 2-process model's scores equal the 1-process model's to float32 rounding (measured max
    abs difference 1.8e-7 after 30 Adam steps; tolerance 1e-5), and so do the metrics."""
    two, one = tmp_path / "two", tmp_path / "one"
    res = torchrun(["fit", store.path, "--head", "mlp", *sets(**FULL_BATCH), "-o", two])
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr.count("fitted mlp") == 1  # only rank 0 reports
    fit_in_process(Path(store.path), one, sets(**FULL_BATCH))

    record = read_run(two)
    assert record.distributed == {"world_size": 2, "backend": "gloo", "global_batch": 512,
                                     "batch_per_process": 256, "steps_per_epoch": 1}
    assert record.fit_report["world_size"] == 2 and record.fit_report["iterations"] == 30
    assert read_run(one).distributed is None
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir()) == [MODEL_DIR, RUN_FILE]
    assert sorted(p.name for p in (two / MODEL_DIR).iterdir()) == sorted(p.name for p in (one / MODEL_DIR).iterdir())

    a, b = scores_on_test(one, store), scores_on_test(two, store)
    assert np.abs(a - b).max() < 1e-5
    m1, m2 = evaluate(one), evaluate(two)
    assert m1["precision@1"] > 0.8  # the signal is learnt, so agreeing is not agreeing on noise
    for key in ("precision@1", "recall@5", "accuracy@5", "map"):
        assert m2[key] == pytest.approx(m1[key], abs=1e-6), key


def test_streamed_minibatch_run_with_early_stopping(store, tmp_path):
    """The streamed path with a worker per rank, validation all-reduced and every rank cut to
    the same steps an epoch: no rank waits forever (the launch ends inside TIMEOUT), the run
    loads and evaluates like any other, and scores like a 1-process run: P@1 and mAP within 2.5
    points on the 512 test rows (P@1 about 0.97). Over seeds 0-4 the measured 2-process minus
    1-process gaps were -0.4, +0.4, -0.6, +0.8, 0.0 points in P@1 and -1.1, -0.4, -0.4, 0.0,
    +0.2 in mAP, while the 1-process run's own P@1 spread over those seeds was 1.6 points:
    the 2-process run differs by data order, about as much as another seed does."""
    two, one = tmp_path / "two", tmp_path / "one"
    res = torchrun(["fit", store.path, "--head", "mlp", *sets(**MINI_BATCH), "-o", two])
    assert res.returncode == 0, res.stderr[-3000:]
    fit_in_process(Path(store.path), one, sets(**{**MINI_BATCH, "workers": 0}))
    record = read_run(two)
    assert record.distributed["world_size"] == 2 and record.distributed["global_batch"] == 32
    assert record.fit_report["data"] == "stream" and record.distributed["batch_per_process"] == 16
    history = json.loads((two / MODEL_DIR / "history.json").read_text())
    steps = [e["step"] for e in history["epochs"]]
    assert steps == [record.distributed["steps_per_epoch"] * (i + 1) for i in range(len(steps))]
    assert all("val_recall@5" in e for e in history["epochs"])

    m1, m2 = evaluate(one), evaluate(two)
    assert m1["precision@1"] > 0.8
    assert abs(m2["precision@1"] - m1["precision@1"]) <= 0.025
    assert abs(m2["map"] - m1["map"]) <= 0.025


def test_only_rank_zero_writes(store, tmp_path, monkeypatch):
    """A rank other than 0 trains but writes nothing: not the run, not a temporary directory
    beside it. (The torchrun tests check the same from outside: the run directory holds
    exactly what a 1-process run writes.)"""
    from hashtagkit import runs

    monkeypatch.setattr(ddp, "from_env", lambda: ddp.World(rank=1, size=2, local_rank=1))
    monkeypatch.setattr(ddp, "start", lambda world, device="auto": world)  # no process group: trains alone
    monkeypatch.setattr(ddp, "stop", lambda world: None)
    out = tmp_path / "runs" / "r"
    out.parent.mkdir()
    assert runs.fit(store.path, "mlp", out, params={"hidden": 8, "epochs": 1}).path == out
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize("head", ["knn", "popularity"])
def test_other_heads_refuse_several_processes(store, tmp_path, monkeypatch, head):
    """Under torchrun with 2 processes only the MLP trains: another head is a one-line error,
    exit 2, before any process group is joined or anything is written."""
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    res = CliRunner().invoke(cli, ["fit", str(store.path), "--head", head, "-o", str(tmp_path / "r")])
    assert res.exit_code == 2
    assert f"only the mlp head trains on several processes; {head!r}" in res.output
    assert not (tmp_path / "r").exists()


def test_other_head_under_torchrun(store, tmp_path):
    """The same through torchrun: a process exits 2 with the message (torchrun then stops the other, reports
    the failed processes and exits 1, as it does for any failure), no run is written."""
    res = torchrun(["fit", store.path, "--head", "knn", "-o", tmp_path / "r"])
    assert res.returncode != 0
    assert "Error: only the mlp head trains on several processes; 'knn'" in res.stderr  # the other may be killed first
    assert "exitcode  : 2" in res.stderr
    assert not (tmp_path / "r").exists()


def test_the_readmes_command_on_a_store_of_one_chunk_sees_every_row(tmp_path):
    """docs/training.md's torchrun command, verbatim but for K=2 and the batch, on `prepare planted --n 3000
    --dim 64 --classes 50` (its training rows in one feature chunk: it once failed with a
    traceback, and at 3 chunks trained each epoch on 1,024 of ~2,160 rows): every epoch sees
    every training row but less than one global batch, counted from the run's record."""
    store = tmp_path / "p.zarr"
    res = CliRunner().invoke(cli, ["prepare", "planted", "-o", str(store), "--n", "3000", "--dim", "64",
                                   "--classes", "50"])
    assert res.exit_code == 0, res.output
    assert open_store(store).completeness() == (1, 1)  # one chunk holds every row
    res = torchrun(["fit", store, "--head", "mlp", "--set", "batch_size=512", "--set", "hidden=32", "--set",
                    "epochs=2", "--set", "precision=fp32", "-o", tmp_path / "run"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    report = read_run(tmp_path / "run").fit_report
    n_train = report["training_rows"]
    assert 0 <= n_train - report["rows_per_epoch"] < 512, report  # all but less than one global batch
    assert report["rows_per_epoch"] == report["steps_per_epoch"] * 512


@pytest.mark.parametrize("n, size", [(10, 2), (7, 3), (2160, 2), (5, 5)])
def test_row_shares_are_equal_and_cover_every_training_row(n, size):
    rng = np.random.default_rng(n)
    mask = rng.random(n) < 0.8
    mask[:size] = True  # at least one training row a rank
    shares = [ddp.row_share(mask, ddp.World(rank, size, rank, "gloo")) for rank in range(size)]
    assert shares[0][0] == 0 and shares[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(shares, shares[1:], strict=False))  # contiguous, disjoint
    counts = [int(mask[a:b].sum()) for a, b in shares]
    assert sum(counts) == mask.sum() and max(counts) - min(counts) <= 1
