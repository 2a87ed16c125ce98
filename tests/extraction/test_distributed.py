"""`extract --cluster / --scheduler` on a real Dask LocalCluster (2 worker processes, 127.0.0.1).

Every distributed store is compared with the in-process extract of the same photos, bit for
bit in fp32: after a plain run, after a worker is SIGKILLed mid-run, after the coordinator is
SIGKILLed mid-run and the command is run again. Small photos and the tiny test backbone keep
it fast; one test runs the real VGG-16 path (random weights, fp32)."""

from __future__ import annotations

import io
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from click.testing import CliRunner
from PIL import Image

from hashtagkit.backbones import load_backbone
from hashtagkit.cli.main import cli
from hashtagkit.errors import InputError
from hashtagkit.extraction import config as options
from hashtagkit.extraction import distributed as dist
from hashtagkit.extraction import extract
from hashtagkit.stores import open_store
from tests import faults

from ..conftest import run_cli
from ..extraction.test_extract import make_image_store, tiny_scene_backbone

pytestmark = pytest.mark.slow  # Dask clusters

distributed = pytest.importorskip("distributed")

REPO = Path(__file__).resolve().parents[2]
TINY = "tiny-scene=random"
ARRAYS = ("features", "valid", "reason")
QUIET = lambda s: None  # noqa: E731


def bad_photos(tmp_path) -> dict:
    """A missing, an unreadable and a truncated photo (relative path -> bytes, None: absent)."""
    buf = io.BytesIO()
    Image.new("RGB", (300, 300), (200, 10, 10)).save(buf, format="JPEG")
    data = buf.getvalue()
    return {"missing.jpg": None, "text.jpg": b"this is not an image", "cut.jpg": data[: len(data) // 2]}


def local_cluster(n: int = 2, **kw):
    return distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                                    dashboard_address="127.0.0.1:0", worker_dashboard_address="127.0.0.1:0",
                                    silence_logs=logging.CRITICAL, **kw)


@pytest.fixture(scope="module")
def cluster():
    with local_cluster() as c:
        yield c


@pytest.fixture(scope="module")
def tiny():
    tiny_scene_backbone()
    with pytest.warns(UserWarning):
        return [load_backbone("tiny-scene", "random")]


def twin(store: Path, name: str) -> Path:
    """A copy of a store before extraction, to extract another way."""
    out = store.parent / name
    shutil.copytree(store, out)
    return out


def arrays(path: Path) -> dict:
    g = open_store(path).group
    assert np.asarray(g["done"][...]).all()
    return {name: np.asarray(g[name][...]) for name in ARRAYS}


def assert_same(a: Path, b: Path) -> None:
    x, y = arrays(a), arrays(b)
    assert x["features"].dtype == y["features"].dtype
    for name in ARRAYS:
        assert np.array_equal(x[name], y[name]), name


def done_flags(path: Path) -> np.ndarray:
    """The done flags, read while workers write (a flag being written may not parse yet)."""
    import zarr

    for _ in range(20):
        try:
            return np.asarray(zarr.open_group(path, mode="r")["done"][...])
        except Exception:  # noqa: BLE001
            time.sleep(0.02)
    return np.zeros(0, bool)


def done_count(path: Path) -> int:
    return int(done_flags(path).sum())


def test_distributed_equals_in_process_bit_for_bit_with_bad_photos(tmp_path, cluster, tiny):
    store = make_image_store(tmp_path, n=9, extra=bad_photos(tmp_path))
    ref = twin(store, "ref.zarr")
    kw = dict(precision="fp32", dtype="float32", chunk_rows=3, batch_size=2, progress=False, log=QUIET)
    expected = extract(ref, tiny, workers=0, **kw)
    got = extract(store, tiny, scheduler=cluster.scheduler_address, **kw)
    assert_same(store, ref)
    s = open_store(store)
    reasons = dict(zip(s.paths(), np.asarray(s.group["reason"][...]).tolist(), strict=True))
    assert {p: reasons[p] for p in ("missing.jpg", "text.jpg", "cut.jpg")} == \
        {"missing.jpg": "missing", "text.jpg": "unreadable", "cut.jpg": "truncated"}
    assert got.invalid == expected.invalid == {"missing": 1, "unreadable": 1, "truncated": 1}
    assert (got.extracted, got.skipped_chunks) == (12, 0)
    run = s.group.attrs["extraction"]["runs"][-1]
    assert run["precision"] == "fp32" and run["distributed"]["scheduler"] == cluster.scheduler_address
    # every chunk was written by one of the cluster's worker processes, none by this one
    with distributed.Client(cluster) as client:
        pids = set(client.run(os.getpid).values())
    by_worker = run["distributed"]["chunks_by_worker"]
    assert sum(w["chunks"] for w in by_worker) == 4 and {w["pid"] for w in by_worker} <= pids
    assert os.getpid() not in pids
    # each chunk's own log says who computed it and how, gathered into the record by the coordinator
    logs = s.chunk_log()
    assert len(logs) == 4 and all(log["pid"] in pids and log["precision"] == "fp32" and log["device"] == "cpu"
                                  and log["worker"].startswith("tcp://127.0.0.1:") for log in logs)
    assert [log["rows"] for log in logs] == [3, 3, 3, 3]
    assert sum(log["invalid"].get("missing", 0) for log in logs) == 1
    assert run["chunks"] == 4 and set(run["worker_names"]) == {log["worker"] for log in logs}


def test_overwrite_writes_aside_on_the_workers_and_swaps_in(tmp_path, cluster, tiny):
    """`--overwrite` on Dask: the workers write into the aside group, the coordinator swaps it in."""
    store = make_image_store(tmp_path, n=5)
    kw = dict(precision="fp32", chunk_rows=2, batch_size=2, progress=False, log=QUIET)
    extract(store, tiny, workers=0, dtype="float16", **kw)
    ref = twin(store, "ref.zarr")
    extract(ref, tiny, workers=0, dtype="float32", overwrite=True, **kw)
    extract(store, tiny, scheduler=cluster.scheduler_address, dtype="float32", overwrite=True, **kw)
    assert_same(store, ref)
    assert arrays(store)["features"].dtype == np.float32 and "overwriting" not in open_store(store).group
    assert all(log["worker"].startswith("tcp://") for log in open_store(store).chunk_log())


def test_real_vgg16_path_equals_in_process(tmp_path, cluster):
    with pytest.warns(UserWarning):
        vgg = [load_backbone("vgg16-object", "random", seed=3)]
    store = make_image_store(tmp_path, n=4)
    ref = twin(store, "ref.zarr")
    kw = dict(precision="fp32", dtype="float32", chunk_rows=2, batch_size=2, progress=False, log=QUIET)
    extract(ref, vgg, workers=0, **kw)
    extract(store, vgg, scheduler=cluster.scheduler_address, **kw)
    assert_same(store, ref)
    assert np.abs(arrays(store)["features"]).sum() > 0  # real activations, not zeros on both sides
    assert open_store(store).blocks[0]["weights"] == {"source": "random", "seed": 3, "sha256": None, "path": None}


@pytest.fixture(scope="module")
def fragile():
    """A cluster for the worker-killing tests: slow tasks (0.4 s each), a decoder that dies on
    'poison.jpg', and a task given up after it killed 2 workers (Dask's default: 4)."""
    import dask

    env = {faults.CHUNK_SECONDS: "0.4", faults.KILL_DECODE: "poison.jpg"}  # every (re)started worker's
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):  # read by the scheduler it starts
        c = local_cluster(env=env, preload=["tests.faults"])
    with c:
        yield c


def extract_in_thread(store: Path, backbones, scheduler: str, kw: dict) -> tuple[threading.Thread, dict]:
    """A distributed extract running in a thread (started): its outcome lands in the dict as
    'summary' or 'error' (a test kills workers meanwhile, then joins)."""
    outcome: dict = {}

    def run():
        try:
            outcome["summary"] = extract(store, backbones, scheduler=scheduler, **kw)
        except BaseException as e:  # noqa: BLE001  (reported by the test's assertions)
            outcome["error"] = e

    t = threading.Thread(target=run)
    t.start()
    return t, outcome


def test_a_worker_sigkilled_mid_run_its_chunks_are_redone(tmp_path, tiny, fragile, monkeypatch):
    monkeypatch.setattr(dist, "IN_FLIGHT", 1)  # 4 of the 8 tasks in flight: the rest submitted as they complete
    store = make_image_store(tmp_path, n=16)
    ref = twin(store, "ref.zarr")
    kw = dict(precision="fp32", chunk_rows=2, batch_size=2, progress=False, log=QUIET)
    extract(ref, tiny, workers=0, **kw)
    c = fragile
    with distributed.Client(c) as client:
        pids = client.run(os.getpid)
        t, outcome = extract_in_thread(store, tiny, c.scheduler_address, kw)
        deadline = time.monotonic() + 60
        while done_count(store) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        victim = sorted(pids.values())[0]
        at_kill = done_count(store)
        os.kill(victim, signal.SIGKILL)
        t.join(timeout=90)
    assert not t.is_alive() and "error" not in outcome, outcome
    assert 2 <= at_kill < 8  # killed mid-run
    assert not psutil.pid_exists(victim) or psutil.Process(victim).status() == psutil.STATUS_ZOMBIE
    assert outcome["summary"].extracted == 16
    assert_same(store, ref)
    by_worker = open_store(store).group.attrs["extraction"]["runs"][-1]["distributed"]["chunks_by_worker"]
    assert sum(w["chunks"] for w in by_worker) == 8


def test_a_task_whose_coordinator_is_gone_writes_nothing(tmp_path, tiny, fragile):
    """On a shared cluster (--scheduler) a killed coordinator's running task still finishes on its
    worker; Dask has cancelled it, and it must not write: a newer run may own the store by now.
    The same task with its client still there writes the chunk (the control)."""
    store = make_image_store(tmp_path, n=4)
    extract(store, tiny, workers=0, precision="fp32", chunk_rows=2, batch_size=2, progress=False, log=QUIET)
    s = open_store(store, mode="r+")
    s.mark_not_done([1])
    before = s.chunk_log()[1]
    job = dist.Job(store=str(store), aside=False, image_root=str(tmp_path / "images"), blocks=s.blocks,
                   device="cpu", precision="fp32", batch_size=2, allow_truncated=False, chunk_rows=2, n_rows=4,
                   run=0, token="gone", torch_threads=1, specs={"tiny-scene": tiny[0].spec})

    def executing(dask_worker) -> int:
        return sum(ts.state in ("executing", "long-running") for ts in dask_worker.state.tasks.values())

    def slow(dask_worker, seconds: str) -> None:  # long enough to be seen executing under load
        os.environ[faults.CHUNK_SECONDS] = seconds

    with distributed.Client(fragile.scheduler_address) as watcher:
        watcher.wait_for_workers(2, timeout=60)  # a worker killed by an earlier test is back
        watcher.run(slow, seconds="3")
        with distributed.Client(fragile.scheduler_address) as coordinator:
            fut = coordinator.submit(dist.extract_chunk, job, 1, pure=False, key="abandoned-chunk-1")
            deadline = time.monotonic() + 60
            while not sum(watcher.run(executing).values()) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert sum(watcher.run(executing).values()) == 1, fut.status
        deadline = time.monotonic() + 60  # the coordinator is gone; the task runs on to its end
        while sum(watcher.run(executing).values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not sum(watcher.run(executing).values())
        assert not done_flags(store)[1] and open_store(store).chunk_log()[1] == before
        log = watcher.submit(dist.extract_chunk, job, 1, pure=False, key="kept-chunk-1").result(timeout=60)
        watcher.run(slow, seconds="0.4")
    assert "skipped" not in log and done_flags(store)[1] and open_store(store).chunk_log()[1]["worker"] == log["worker"]


def test_a_photo_that_kills_every_worker_ends_the_run_naming_its_chunk(tmp_path, tiny, fragile, monkeypatch):
    """Dask gives a chunk up after it killed its workers; the other chunks stay done, and the
    in-process extract the error suggests isolates the photo as an invalid row."""
    good = (tmp_path / "good.jpg")
    Image.new("RGB", (200, 200), (10, 200, 10)).save(good)
    store = make_image_store(tmp_path, n=5, extra={"poison.jpg": good.read_bytes()})  # row 5: chunk 2
    kw = dict(precision="fp32", chunk_rows=2, batch_size=2, progress=False, log=QUIET)
    with pytest.raises(InputError, match="chunk 2 killed every worker that ran it"):
        extract(store, tiny, scheduler=fragile.scheduler_address, **kw)
    assert not done_flags(store)[2]
    monkeypatch.setenv(faults.KILL_DECODE, "poison.jpg")
    faults.install(monkeypatch, spare_pid=os.getpid())
    summary = extract(store, tiny, workers=1, **kw)
    assert summary.invalid == {"decoder died": 1}
    assert open_store(store).paths()[5] == "poison.jpg" and not open_store(store).valid()[5]


def test_a_run_whose_workers_all_die_ends_with_one_line(tmp_path, tiny, monkeypatch):
    """A scheduler whose only worker (`dask worker --no-nanny`, a real process) is SIGKILLed
    mid-run (issue #23: the command waited forever, silently): once it has had no worker for
    NO_WORKER_S the run ends with one line, the done chunks kept, and the same command in
    process finishes the store."""
    monkeypatch.setattr(dist, "NO_WORKER_S", 3.0)
    monkeypatch.setattr(dist, "IN_FLIGHT", 1)
    store = make_image_store(tmp_path, n=16)
    kw = dict(precision="fp32", chunk_rows=2, batch_size=2, progress=False, log=QUIET)
    with local_cluster(n=0) as c:
        worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", c.scheduler_address,
                                   "--no-nanny", "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"],
                                  cwd=REPO, env={**os.environ, faults.CHUNK_SECONDS: "0.4", "PYTHONPATH": str(REPO),
                                                 **faults.PRELOAD_ENV},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            t, outcome = extract_in_thread(store, tiny, c.scheduler_address, kw)
            deadline = time.monotonic() + 90
            while done_count(store) < 1 and time.monotonic() < deadline and t.is_alive():
                time.sleep(0.05)
            worker.kill()
            killed = time.monotonic()
            t.join(timeout=60)
            assert not t.is_alive(), "the run still waits for a worker"
        finally:
            if worker.poll() is None:
                worker.kill()
            worker.wait(timeout=30)
    assert time.monotonic() - killed < 30
    assert isinstance(outcome.get("error"), InputError), outcome
    assert "no worker for 3 s" in str(outcome["error"]) and "done chunks are kept" in str(outcome["error"])
    kept = done_count(store)
    assert 1 <= kept < 8
    assert extract(store, tiny, workers=0, **kw).extracted == 16 - 2 * kept


def test_the_readmes_worked_example_runs_against_dask_itself(tmp_path):
    """docs/dask.md's two-machine example with Dask's own command-line tools, on 127.0.0.1 and the
    CPU (`dask scheduler`, `dask worker ... --nworkers 1 --nthreads 1`, then `hashtagkit extract
    ... --scheduler`): it completes, and its features equal an in-process extract of the same
    photos to within 4 float16 ULP, or 1e-6 where values are so close to zero that float16's
    subnormal steps make ULPs meaningless (the worker's torch may run on another number of threads
    than the in-process lanes; bit for bit where they match). Random VGG-16 weights: real compute."""
    run_cli(["prepare", "demo", "-o", str(tmp_path / "s.zarr"), "--n", "10"])
    shutil.copytree(tmp_path / "s.zarr", tmp_path / "ref.zarr")
    images = tmp_path / "s_images"
    backbone = ["--backbone", "vgg16-object=random", "--precision", "fp32", "--no-progress"]
    dask = str(Path(sys.executable).with_name("dask"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-address", "127.0.0.1:0"], **quiet)]
    try:
        procs.append(subprocess.Popen([dask, "worker", address, "--nworkers", "1", "--nthreads", "1",
                                       "--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0"], **quiet))
        done = subprocess.run([str(Path(sys.executable).with_name("hashtagkit")), "extract", str(tmp_path / "s.zarr"),
                               "--images", str(images), "--device", "cpu", "--scheduler", address, *backbone],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "dask: 1 worker(s) on" in done.stderr
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    run_cli(["extract", str(tmp_path / "ref.zarr"), "--images", str(images), "--device", "cpu", *backbone])
    a, b = open_store(tmp_path / "s.zarr").features(), open_store(tmp_path / "ref.zarr").features()
    ulps = np.abs(a.view(np.int16).astype(np.int32) - b.view(np.int16).astype(np.int32))
    # ULPs count only away from zero: near it float16's subnormal steps (6e-8) make the fp32 GEMM's own
    # rounding (~1e-7 absolute at fc7's scale) several ULPs (5 were seen on an AMD EPYC)
    tiny = np.abs(a.astype(np.float32) - b.astype(np.float32)) <= 1e-6
    assert a.dtype == np.float16 and ulps[~tiny].max(initial=0) <= 4, ulps[~tiny].max(initial=0)
    assert np.abs(a.astype(np.float32)).sum() > 0


def alive(procs: list) -> list:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def test_coordinator_sigkilled_workers_exit_and_rerun_does_the_rest(tmp_path, tiny, cluster):
    """The coordinator (a `hashtagkit extract --cluster local:2` subprocess) is SIGKILLed mid-run:
    its workers exit within a bounded time, a second extract was refused while it ran, and the
    same command run again does only the chunks not done, ending equal to the in-process store."""
    store = make_image_store(tmp_path, n=20, extra=bad_photos(tmp_path))
    ref = twin(store, "ref.zarr")
    args = ["extract", str(store), "--backbone", TINY, "--precision", "fp32", "--chunk-rows", "2", "--batch-size",
            "2", "--no-progress", "--cluster", "local:2"]
    res = CliRunner().invoke(cli, ["extract", str(ref), *args[2:-2], "--workers", "0"])
    assert res.exit_code == 0, res.output
    code = ("import sys; from tests.extraction.test_extract import tiny_scene_backbone; tiny_scene_backbone(); "
            "from hashtagkit.cli.main import main; sys.argv = ['hashtagkit'] + sys.argv[1:]; main()")
    env = os.environ | {faults.CHUNK_SECONDS: "0.5", "PYTHONPATH": str(REPO), **faults.PRELOAD_ENV}
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    workers = []
    try:
        deadline = time.monotonic() + 90
        while done_count(store) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()
        # a second extract, in-process or distributed, is refused while the first runs
        for extra in ([], ["--scheduler", cluster.scheduler_address]):
            res = CliRunner().invoke(cli, [*args[:-2], *extra])
            assert res.exit_code == 2 and "is being extracted by another process" in res.output, res.output
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert len(workers) >= 2
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 20  # the bound on how long a worker may outlive its coordinator
        while alive(workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(workers), f"workers outlived the coordinator: {alive(workers)}"
    finally:
        for p in alive(workers) + ([psutil.Process(proc.pid)] if proc.poll() is None else []):
            p.kill()
        proc.stderr.close()
    flags = done_flags(store)
    assert 2 <= flags.sum() < 12
    res = CliRunner().invoke(cli, args)  # the same command again
    assert res.exit_code == 0, res.output
    left = sum(min(2, 23 - 2 * c) for c in np.flatnonzero(~flags).tolist())  # 23 photos, 2 a chunk
    assert f"extracted {left} of 23 rows" in res.output and f"{flags.sum()} chunk(s) already done" in res.output
    assert "chunks by worker:" in res.output
    assert_same(store, ref)


@pytest.mark.parametrize("options, message", [
    (["--cluster", "local:0"], "--cluster takes local or local:N"),
    (["--cluster", "remote"], "--cluster takes local or local:N"),
    (["--scheduler", "not an address"], "--scheduler takes a Dask scheduler address"),
    (["--cluster", "local:2", "--scheduler", "tcp://127.0.0.1:8786"], "exclusive"),
])
def test_bad_cluster_options_are_one_line_errors(tmp_path, options, message):
    store = make_image_store(tmp_path, n=2)
    res = CliRunner().invoke(cli, ["extract", str(store), "--backbone", TINY, *options])
    assert res.exit_code == 2 and message in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1
    assert "features" not in open_store(store).group  # refused before anything was written


def test_an_unreachable_scheduler_is_a_one_line_error(tmp_path, tiny, monkeypatch):
    monkeypatch.setattr(dist, "CONNECT_TIMEOUT", "1s")
    store = make_image_store(tmp_path, n=2)
    with pytest.raises(InputError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        extract(store, tiny, scheduler="tcp://127.0.0.1:9", progress=False, log=QUIET)


def test_option_parsing():
    assert options.parse_cluster("local") is None and options.parse_cluster("local:3") == 3
    assert options.parse_scheduler("10.0.0.5:8786") == "tcp://10.0.0.5:8786"
    assert options.parse_scheduler("tls://head.example.org:8786") == "tls://head.example.org:8786"
    for bad in ("local:", "local:x", "LOCAL", "local:-1"):
        with pytest.raises(InputError):
            options.parse_cluster(bad)
    for bad in ("tcp://host", "http://host:80", "host:99999", ""):
        with pytest.raises(InputError):
            options.parse_scheduler(bad)
