"""Store format 2: every piece a writer produces is its own Zarr object, so processes writing
different chunks of one store at once lose nothing; format-1 stores still read and upgrade in place."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from hashtagkit.stores import open_store

from .conftest import make_store

DIM = 4


def files_under(path: Path) -> set[str]:
    """Chunk files of an array folder (its `c/` tree), as relative keys."""
    base = path / "c"
    return {str(p.relative_to(base)) for p in base.rglob("*") if p.is_file()} if base.exists() else set()


def expected_chunk(chunk: int, rows: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """What the writers of the concurrency test write for a chunk: values that name their row."""
    start = chunk * rows
    feats = (np.arange(start, start + rows, dtype=np.float32)[:, None] * 10 + np.arange(DIM)).astype(np.float32)
    valid = np.array([(start + i) % 5 != 0 for i in range(rows)])
    reasons = ["" if v else f"bad {start + i}" for i, v in enumerate(valid)]
    return feats, valid, reasons


def write_chunks(path: str, chunks: list[int], start_at: float) -> int:
    """A writer process: `write_chunk` of each of its chunks, from a shared start time, so the
    two writers of the test overlap. Only the store API, as a distributed worker uses it."""
    store = open_store(path, mode="r+")
    rows = store.chunk_rows()
    time.sleep(max(0.0, start_at - time.time()))
    for c in chunks:
        feats, valid, reasons = expected_chunk(c, rows)
        store.write_chunk(c, feats, valid, reasons,
                          info={"run": 0, "host": "test", "worker": f"w{os.getpid()}", "pid": os.getpid(),
                                "device": "cpu", "precision": "fp32", "seconds": 0.01})
    return os.getpid()


def shared_store(tmp_path: Path, n_chunks: int, rows: int, single_chunk_done: bool = False) -> Path:
    """A store with empty feature arrays of n_chunks chunks (format 2, or with `done` in one
    chunk as format 1 had it, to prove the concurrency test detects lost updates)."""
    path = tmp_path / "shared.zarr"
    make_store(path, n=n_chunks * rows, features=False, test=max(1, n_chunks * rows // 4))
    store = open_store(path, mode="r+")
    store.init_features(DIM, "float32", [{"name": "object", "columns": [0, DIM], "backbone": "t"}], rows)
    if single_chunk_done:
        del store.group["done"]
        store.group.create_array("done", shape=(n_chunks,), dtype="bool", chunks=(n_chunks,), fill_value=False)
    return path


def run_two_writers(path: Path, n_chunks: int) -> list[int]:
    """Two processes writing interleaved chunks (0, 2, 4... and 1, 3, 5...) at the same time."""
    ctx = multiprocessing.get_context("spawn")  # no fork of zarr's I/O thread
    start_at = time.time() + 4.0  # both interpreters are up by then
    with ctx.Pool(2) as pool:
        jobs = [pool.apply_async(write_chunks, (str(path), list(range(k, n_chunks, 2)), start_at)) for k in (0, 1)]
        return [j.get(timeout=120) for j in jobs]


def test_two_processes_writing_different_chunks_lose_nothing(tmp_path):
    n_chunks, rows = 48, 3
    path = shared_store(tmp_path, n_chunks, rows)
    pids = run_two_writers(path, n_chunks)
    store = open_store(path)
    assert store.completeness() == (n_chunks, n_chunks)
    # every flag and every log is its own file: nothing was shared between the writers
    assert files_under(path / "done") == {str(c) for c in range(n_chunks)}
    assert files_under(path / "chunk_log") == {str(c) for c in range(n_chunks)}
    want = [expected_chunk(c, rows) for c in range(n_chunks)]
    assert np.array_equal(store.features(), np.concatenate([w[0] for w in want]))
    assert np.array_equal(store.valid(), np.concatenate([w[1] for w in want]))
    assert np.asarray(store.group["reason"][...]).tolist() == sum((w[2] for w in want), [])
    logs = store.chunk_log()
    assert [log["pid"] for log in logs] == [pids[c % 2] for c in range(n_chunks)]
    assert all(log["rows"] == rows and log["invalid"] == dict(Counter(r for r in want[c][2] if r))
               for c, log in enumerate(logs))


def test_the_concurrency_test_detects_a_shared_done_chunk(tmp_path):
    """The same two writers on a store whose `done` is one chunk (format 1) lose flags: the
    check above would catch a regression to a shared object. Bounded: at most 3 attempts."""
    n_chunks, rows = 48, 3
    lost = []
    for attempt in range(3):
        (tmp_path / str(attempt)).mkdir()
        path = shared_store(tmp_path / str(attempt), n_chunks, rows, single_chunk_done=True)
        run_two_writers(path, n_chunks)
        lost.append(n_chunks - open_store(path).completeness()[0])
        if lost[-1]:
            break
    assert lost[-1] > 0, f"no done flag was lost in {len(lost)} attempts with a shared done chunk"


def test_write_chunk_writes_one_object_per_piece_and_checks_its_rows(tmp_path):
    path = shared_store(tmp_path, 5, 3)
    store = open_store(path, mode="r+")
    feats, valid, reasons = expected_chunk(3, 3)
    store.write_chunk(3, feats, valid, reasons, info={"run": 0, "host": "h", "worker": "w", "pid": 1,
                                                      "device": "cpu", "precision": "fp32", "seconds": 0.5})
    store.write_chunk(1, *expected_chunk(1, 3)[:2])  # no info: no log, still done
    for name in ("features", "valid", "reason"):
        assert {k.split("/")[0] for k in files_under(path / name)} == {"1", "3"}, name
    assert files_under(path / "done") == {"1", "3"}
    assert files_under(path / "chunk_log") == {"3"}
    logs = store.chunk_log()
    assert logs[:3] == [None, None, None] and logs[4] is None
    assert logs[3]["host"] == "h" and logs[3]["rows"] == 3 and logs[3]["invalid"] == {"bad 10": 1}
    assert logs[3]["finished"]
    with pytest.raises(ValueError, match="chunk 4 has 3 rows"):
        store.write_chunk(4, feats[:2], valid[:2])
    assert store.completeness() == (2, 5)
    store.mark_not_done([3])
    assert files_under(path / "done") == {"1"} and store.completeness() == (1, 5)


def test_paths_are_chunked_and_read_by_range(tmp_path):
    from hashtagkit.stores.store import PATH_CHUNK_ROWS

    n = PATH_CHUNK_ROWS + 10
    store = make_store(tmp_path / "s.zarr", n=n, features=False)
    assert store.group["paths"].chunks == (PATH_CHUNK_ROWS,)
    assert files_under(store.path / "paths") == {"0", "1"}
    names = [f"img_{i}.jpg" for i in range(n)]
    assert store.paths() == names
    assert store.paths_range(PATH_CHUNK_ROWS - 2, PATH_CHUNK_ROWS + 3) == names[PATH_CHUNK_ROWS - 2:PATH_CHUNK_ROWS + 3]
    rows = np.array([n - 1, 3, 3, -1, 0])
    assert store.paths(rows) == [names[r] for r in rows]
    assert store.paths(np.arange(n) % 1000 == 0) == names[::1000]
    assert store.paths([]) == []


def test_chunk_log_gathered_into_the_record_equals_what_was_written(tmp_path):
    from hashtagkit.extract import gather_chunk_log

    path = shared_store(tmp_path, 6, 2)
    store = open_store(path, mode="r+")
    written = {}
    for c, (run, host, worker, seconds) in enumerate([(0, "a", "w1", 1.0), (0, "a", "w2", 2.0), (1, "b", "w1", 4.0),
                                                      (1, "c", "w3", 8.0), (1, "b", "w1", 16.0)]):
        feats, valid, reasons = expected_chunk(c, 2)
        info = {"run": run, "host": host, "worker": worker, "pid": 10 + c, "device": "cpu", "precision": "fp32",
                "seconds": seconds}
        store.write_chunk(c, feats, valid, reasons, info=info)
        written[c] = info
    store.mark_not_done([4])  # a log whose chunk is not done does not count
    record = {"runs": [{"started": "x", "seconds": 99.0}, {"started": "y"}], "chunk_runs": [1] * 6}
    gathered = gather_chunk_log(store, record)
    assert gathered["chunk_runs"] == [0, 0, 1, 1, 1, 1]  # chunk 5 was never logged: its record stays
    r0, r1 = gathered["runs"]
    assert r0["hosts"] == ["a"] and r0["worker_names"] == ["w1", "w2"] and r0["chunk_seconds"] == 3.0
    assert r0["seconds"] == 99.0 and r0["chunks"] == 2 and r0["rows_done"] == 4
    assert r1["hosts"] == ["b", "c"] and r1["worker_names"] == ["w1", "w3"] and r1["chunk_seconds"] == 12.0
    # each logged reason counted once per chunk that carries it
    logs = store.chunk_log()
    for c in (0, 1):
        assert {k: logs[c][k] for k in written[c]} == written[c]
    expected_invalid = {}
    for c in (2, 3):
        for r in expected_chunk(c, 2)[2]:
            if r:
                expected_invalid[r] = expected_invalid.get(r, 0) + 1
    assert r1["invalid"] == expected_invalid
    assert record["runs"][0] == {"started": "x", "seconds": 99.0}  # the caller's record is not modified


def test_in_process_extract_writes_a_log_per_chunk_and_gathers_them(tmp_path, monkeypatch):
    """A partial extract (killed after 2 chunks) leaves exactly 2 flag and 2 log objects; the
    resume gathers both runs' logs into the record."""
    from click.testing import CliRunner

    from hashtagkit import extract as engine
    from hashtagkit.cli.main import cli
    from hashtagkit.stores import Store

    from .test_extract import make_image_store, tiny_scene_backbone

    tiny_scene_backbone()
    path = make_image_store(tmp_path, n=7)
    args = ["extract", str(path), "--backbone", "tiny-scene=random", "--no-progress", "--workers", "0",
            "--precision", "fp32", "--dtype", "float32", "--chunk-rows", "2"]
    real, calls = Store.write_chunk, []

    def die_after_two(self, *a, **k):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(k.get("info"))
        return real(self, *a, **k)

    monkeypatch.setattr(Store, "write_chunk", die_after_two)
    assert CliRunner().invoke(cli, args).exit_code != 0
    monkeypatch.undo()
    assert files_under(path / "done") == {"0", "1"} and files_under(path / "chunk_log") == {"0", "1"}
    for name in ("features", "valid", "reason"):
        assert {k.split("/")[0] for k in files_under(path / name)} == {"0", "1"}
    store = open_store(path)
    assert store.completeness() == (2, 4)
    logs = store.chunk_log()
    assert [log["run"] for log in logs[:2]] == [0, 0] and logs[2:] == [None, None]
    assert {log["worker"] for log in logs[:2]} == {"in-process"} and {log["pid"] for log in logs[:2]} == {os.getpid()}
    assert logs[0]["device"] == "cpu" and logs[0]["precision"] == "fp32" and logs[0]["seconds"] >= 0
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    store = open_store(path)
    assert files_under(path / "done") == {"0", "1", "2", "3"}
    logs = store.chunk_log()
    assert [log["run"] for log in logs] == [0, 0, 1, 1]
    record = store.group.attrs["extraction"]
    assert record["chunk_runs"] == [0, 0, 1, 1]
    import socket

    for r, run in enumerate(record["runs"]):
        assert run["hosts"] == [socket.gethostname()] and run["worker_names"] == ["in-process"]
        assert run["chunk_seconds"] == pytest.approx(sum(log["seconds"] for log in logs if log["run"] == r), abs=1e-3)
    assert record["runs"][1]["rows_done"] == 3 and record["runs"][0]["rows_done"] == 4
    assert json.loads(json.dumps(record)) == record
    assert engine.gather_chunk_log(store, record) == record  # gathering again changes nothing
