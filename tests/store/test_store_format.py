"""Store format 2: every piece a writer produces is its own Zarr object, so processes writing
different chunks of one store at once lose nothing; format-1 stores still read and upgrade in place."""

from __future__ import annotations

import json
import multiprocessing
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from hashtagkit.stores import open_store

from ..conftest import make_store, stop_upgrade_after

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


def write_chunks(path: str, chunks: list[int], barrier) -> None:
    """A writer process: `write_chunk` of each of its chunks once both writers are ready (a
    barrier, not a start time: a loaded machine may start an interpreter late), so the two
    writers of the test overlap. Only the store API, as a distributed worker uses it."""
    store = open_store(path, mode="r+")
    rows = store.chunk_rows()
    barrier.wait(timeout=120)
    for c in chunks:
        feats, valid, reasons = expected_chunk(c, rows)
        store.write_chunk(c, feats, valid, reasons,
                          info={"run": 0, "host": "test", "worker": f"w{os.getpid()}", "pid": os.getpid(),
                                "device": "cpu", "precision": "fp32", "seconds": 0.01})


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
    """Two processes writing interleaved chunks (0, 2, 4... and 1, 3, 5...) at the same time;
    their pids."""
    ctx = multiprocessing.get_context("spawn")  # no fork of zarr's I/O thread
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=write_chunks, args=(str(path), list(range(k, n_chunks, 2)), barrier))
             for k in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    assert [p.exitcode for p in procs] == [0, 0]
    return [p.pid for p in procs]


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
    check above would catch a regression to a shared object. Bounded: at most 5 attempts."""
    n_chunks, rows = 48, 3
    lost = []
    for attempt in range(5):
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


def test_a_damaged_chunk_log_object_is_no_log_not_a_crash(tmp_path):
    """The log is advisory: garbage in one chunk's log object costs that chunk's log, not every
    later gather (which would stop each `extract` after its work, before the record is written)."""
    from hashtagkit.extraction.record import ExtractionRecord, gather_chunk_log

    path = shared_store(tmp_path, 3, 2)
    store = open_store(path, mode="r+")
    for c in range(3):
        store.write_chunk(c, *expected_chunk(c, 2), info={"run": 0, "host": "h", "worker": "w", "pid": c,
                                                          "device": "cpu", "precision": "fp32", "seconds": 1.0})
    (path / "chunk_log" / "c" / "1").write_bytes(b"not zstd at all")
    logs = open_store(path).chunk_log()
    assert logs[1] is None and logs[0]["pid"] == 0 and logs[2]["pid"] == 2
    gathered = gather_chunk_log(open_store(path), ExtractionRecord(runs=[{}], chunk_runs=[0, 0, 0]))
    assert gathered.runs[0]["chunks"] == 2


def test_a_damaged_done_object_reads_as_not_done(tmp_path):
    """A done flag whose object does not decode is a chunk to redo, not a crash of `info` and of
    every reader of the store."""
    path = shared_store(tmp_path, 3, 2)
    store = open_store(path, mode="r+")
    for c in range(3):
        store.write_chunk(c, *expected_chunk(c, 2))
    (path / "done" / "c" / "1").write_bytes(b"not zstd at all")
    from click.testing import CliRunner

    from hashtagkit.cli.main import cli

    store = open_store(path)
    assert store.completeness() == (2, 3)
    res = CliRunner().invoke(cli, ["info", str(path)])
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    open_store(path, mode="r+").write_chunk(1, *expected_chunk(1, 2))  # what the next extract does
    assert open_store(path).completeness() == (3, 3)


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
    from hashtagkit.extraction.record import ExtractionRecord, gather_chunk_log

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
    record = ExtractionRecord(runs=[{"started": "x", "seconds": 99.0}, {"started": "y"}], chunk_runs=[1] * 6)
    gathered = gather_chunk_log(store, record)
    assert gathered.chunk_runs == [0, 0, 1, 1, 1, 1]  # chunk 5 was never logged: its record stays
    r0, r1 = gathered.runs
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
    assert record.runs[0] == {"started": "x", "seconds": 99.0}  # the caller's record is not modified


def test_in_process_extract_writes_a_log_per_chunk_and_gathers_them(tmp_path, monkeypatch):
    """A partial extract (killed after 2 chunks) leaves exactly 2 flag and 2 log objects; the
    resume gathers both runs' logs into the record."""
    from click.testing import CliRunner

    from hashtagkit.cli.main import cli
    from hashtagkit.extraction import record as engine
    from hashtagkit.stores import Store, aside

    from ..extraction.test_extract import make_image_store, tiny_scene_backbone

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
    typed = engine.ExtractionRecord.from_json(record)
    assert typed.to_json() == record and list(typed.to_json()) == list(record)  # round trip, key order kept
    assert engine.gather_chunk_log(store, typed) == typed  # gathering again changes nothing
    res = CliRunner().invoke(cli, ["info", str(path)])
    assert f"written by 1 worker(s) (in-process) on {socket.gethostname()}" in res.output
    assert "format     2\n" in res.output
    # --overwrite writes aside (with its own chunk_log) and swaps it in: the logs are the new run's
    res = CliRunner().invoke(cli, [*args, "--overwrite", "--seed", "7"])
    assert res.exit_code == 0, res.output
    store = open_store(path)
    assert aside.ASIDE not in store.group and store.blocks[0]["weights"]["seed"] == 7
    assert [log["run"] for log in store.chunk_log()] == [0, 0, 0, 0]
    assert store.group.attrs["extraction"]["chunk_runs"] == [0, 0, 0, 0]
    assert len(store.group.attrs["extraction"]["runs"]) == 1


# --- format 1: still read, upgraded in place ------------------------------------------------------
def format1_module():
    """stores/store.py of the last format-1 release (9525730), kept verbatim in tests/."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("format1_store", Path(__file__).parent / "format1_store.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.FORMAT == 1
    return module


def test_the_format1_module_is_the_release_code():
    import subprocess

    repo = Path(__file__).resolve().parents[2]
    old = subprocess.run(["git", "show", "9525730:stores/store.py"], cwd=repo, capture_output=True, text=True)
    if old.returncode != 0:
        pytest.skip("commit 9525730 is not in this clone (shallow?)")
    assert old.stdout == (Path(__file__).parent / "format1_store.py").read_text()


BLOCKS = [{"name": "object", "columns": [0, 2], "backbone": "t-object", "weights": {"sha256": "a" * 64}},
          {"name": "scene", "columns": [2, DIM], "backbone": "t-scene", "weights": {"sha256": "b" * 64}}]


def format1_store(path: Path, n: int = 23, chunk_rows: int = 4, done: tuple[int, ...] | None = None,
                  aside: tuple[int, ...] | None = None) -> dict:
    """A store written by the format-1 code: prepared, then the chunks in `done` extracted
    (all by default) with its init_features/write_chunk; with `aside`, also an interrupted
    `extract --overwrite` whose new features (chunks `aside` done) grow in the subgroup
    'overwriting' as that release wrote them. Returns what was written, to compare."""
    old = format1_module()
    rng = np.random.default_rng(1)
    labels = (rng.random((n, 5)) < 0.4).astype(np.uint8)
    labels[:, 0] = 1
    split = np.zeros(n, np.uint8)
    split[: n // 4] = 1
    paths = [f"dir{i % 3}/photo_{i}.jpg" for i in range(n)]
    old.create_store(path, paths=paths, labels=labels, vocab=[f"t{j}" for j in range(5)], split=split,
                     split_info={"seed": 0}, kind="test", image_root=None)
    store = old.open_store(path, mode="r+")
    X = rng.random((n, DIM)).astype(np.float32)
    valid = rng.random(n) > 0.2
    X[~valid] = 0
    reasons = ["" if v else "unreadable image" for v in valid]
    rows = store.init_features(DIM, "float32", BLOCKS, chunk_rows)
    n_chunks = -(-n // rows)
    done = tuple(range(n_chunks)) if done is None else done
    for c in done:
        s = slice(c * rows, min((c + 1) * rows, n))
        store.write_chunk(c, X[s], valid[s], reasons[s])
    store.group.attrs["extraction"] = {"precision": "fp32", "device": "cpu", "runs": [{"precision": "fp32"}],
                                       "chunk_runs": [0 if c in done else -1 for c in range(n_chunks)]}
    written = {"paths": paths, "X": X, "valid": valid, "reasons": reasons, "done": done, "n_chunks": n_chunks}
    if aside is not None:
        class Aside(old.Store):
            n_rows = n

        new = Aside(path, store.group.require_group("overwriting"))
        new.init_features(DIM, "float32", BLOCKS, chunk_rows)
        for c in aside:
            s = slice(c * rows, min((c + 1) * rows, n))
            new.write_chunk(c, X[s] + 1, valid[s], reasons[s])
        written["aside"] = aside
    assert zarr_chunks(path, "done") == (n_chunks,) and zarr_chunks(path, "paths") == (n,)  # the old layout
    return written


def zarr_chunks(path: Path, name: str) -> tuple:
    return tuple(json.loads((path / name / "zarr.json").read_text())["chunk_grid"]["configuration"]["chunk_shape"])


def test_a_format1_store_reads_unchanged_and_fits(tmp_path):
    from click.testing import CliRunner

    from hashtagkit.cli.main import cli

    path = tmp_path / "old.zarr"
    w = format1_store(path)
    store = open_store(path)
    assert store.format == 1 and store.paths() == w["paths"] and store.paths([5, 1]) == [w["paths"][5], w["paths"][1]]
    assert np.array_equal(store.features(), w["X"]) and np.array_equal(store.valid(), w["valid"])
    assert store.completeness() == (w["n_chunks"], w["n_chunks"]) and store.damaged_chunks() == {}
    assert store.chunk_log() == [None] * w["n_chunks"]
    res = CliRunner().invoke(cli, ["info", str(path)])
    assert res.exit_code == 0 and "format     1   (readable; `hashtagkit upgrade STORE`" in res.output
    assert json.loads(CliRunner().invoke(cli, ["info", "--json", str(path)]).output)["format"] == 1
    res = CliRunner().invoke(cli, ["fit", str(path), "--head", "knn", "--set", "k=3", "-o", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert zarr_chunks(path, "done") == (w["n_chunks"],)  # reading never rewrites a store


def check_upgraded(path: Path, w: dict, path_chunks: int | None = None) -> None:
    """A format-2 store holding exactly what the format-1 code wrote."""
    from hashtagkit.stores.store import FILES_MARK

    store = open_store(path)
    assert store.format == 2 and store.info()["upgrading"] is False
    assert zarr_chunks(path, "done") == (1,) and zarr_chunks(path, "chunk_log") == (1,)
    assert zarr_chunks(path, "paths") == (path_chunks or len(w["paths"]),)  # below 4,096 rows: one chunk
    assert store.paths() == w["paths"]
    done = np.asarray(store.group["done"][...])
    assert np.flatnonzero(done).tolist() == sorted(w["done"])
    assert files_under(path / "done") == {str(c) for c in w["done"]}
    assert store.group["done"].attrs.get(FILES_MARK) is True
    assert store.chunk_log() == [None] * w["n_chunks"]
    rows = store.chunk_rows()
    for c in w["done"]:
        s = slice(c * rows, min((c + 1) * rows, len(w["paths"])))
        assert np.array_equal(np.asarray(store.group["features"][s]), w["X"][s])
        assert np.asarray(store.group["reason"][s]).tolist() == w["reasons"][s]
    if "aside" in w:
        aside = store.group["overwriting"]
        assert aside["done"].chunks == (1,) and "chunk_log" in aside
        assert np.flatnonzero(np.asarray(aside["done"][...])).tolist() == sorted(w["aside"])
    assert not [p.name for p in path.rglob("*.format2")]  # no temporary left


def test_upgrade_keeps_every_flag_path_and_feature(tmp_path):
    from click.testing import CliRunner

    from hashtagkit.cli.main import cli

    path = tmp_path / "old.zarr"
    w = format1_store(path, done=(0, 2, 3, 5), aside=(1,))
    res = CliRunner().invoke(cli, ["upgrade", str(path)])
    assert res.exit_code == 0 and "upgraded" in res.output and "store format 2" in res.output
    check_upgraded(path, w)
    res = CliRunner().invoke(cli, ["upgrade", str(path)])
    assert res.exit_code == 0 and "already store format 2: nothing to do" in res.output
    res = CliRunner().invoke(cli, ["info", str(path)])
    assert "format     2\n" in res.output and "overwrite  in progress: 1 of 6" in res.output


def upgrade_steps(path: Path) -> list[str]:
    """The steps an upgrade of this store takes (every `act`), counted on a copy."""
    import shutil

    from hashtagkit.stores import upgrade

    copy = path.with_name("count.zarr")
    shutil.copytree(path, copy)
    steps = []
    real = upgrade.act
    upgrade.act = lambda what, fn, *a: (steps.append(what), real(what, fn, *a))
    try:
        upgrade.upgrade_store(open_store(copy, mode="r+"))
    finally:
        upgrade.act = real
    shutil.rmtree(copy)
    return steps


@pytest.mark.slow
def test_an_upgrade_killed_after_any_step_is_finished_by_the_next(tmp_path, monkeypatch):
    """The upgrade fails after step k (for every k): readers are told to finish it or read the
    old store; the next `upgrade` completes it and nothing is lost, whatever k was."""
    import shutil

    from click.testing import CliRunner

    from hashtagkit.cli.main import cli
    from hashtagkit.errors import InputError
    from hashtagkit.stores import upgrade

    monkeypatch.setattr(upgrade, "PATH_CHUNK_ROWS", 8)  # so the 23 paths are rechunked too
    template = tmp_path / "template.zarr"
    w = format1_store(template, done=(0, 1, 4), aside=(0, 2))
    steps = upgrade_steps(template)
    assert [s for s in steps if s.startswith("copy")] == ["copy done", "copy done", "copy paths"]  # root, aside
    for k in range(len(steps)):
        path = tmp_path / f"k{k}.zarr"
        shutil.copytree(template, path)
        stop_upgrade_after(k, path, monkeypatch)
        half = open_store(path)
        if k > 0:  # the store says what to do rather than serve a half-moved array
            with pytest.raises(InputError, match="upgrade .* was interrupted; run `hashtagkit upgrade"):
                half.paths()
            if k in (1, len(steps) // 2):
                res = CliRunner().invoke(cli, ["info", str(path)])
                assert res.exit_code == 0 and "(upgrade interrupted: run `hashtagkit upgrade STORE`" in res.output
        else:
            assert half.format == 1 and half.paths() == w["paths"]
        assert upgrade.upgrade_store(open_store(path, mode="r+")) is True
        check_upgraded(path, w, path_chunks=8)
        shutil.rmtree(path)


def test_extract_upgrades_a_format1_store_and_resumes_it(tmp_path):
    """A format-1 store extracted half-way (by the release's writer) and resumed by this
    `extract`: upgraded with one line, only the chunks not done are computed, and the features
    equal an uninterrupted extraction's."""

    from click.testing import CliRunner

    from hashtagkit.cli.main import cli

    from ..conftest import TINY_EXTRACT as args
    from ..conftest import old_twin

    # the same store as the release wrote it: prepared, then chunks 0 and 1 extracted
    ref, path, writer = old_twin(tmp_path, format1_module())
    for c in (0, 1):
        writer.write_chunk(c, ref.features()[2 * c:2 * c + 2], ref.valid()[2 * c:2 * c + 2])
    record = dict(ref.group.attrs["extraction"])
    writer.group.attrs["extraction"] = {k: v for k, v in record.items() if k != "runs"} | {
        "runs": [{k: v for k, v in record["runs"][0].items() if k not in ("hosts", "worker_names")}]}
    assert zarr_chunks(path, "done") == (4,) and open_store(path).format == 1
    res = CliRunner().invoke(cli, ["extract", str(path), *args])
    assert res.exit_code == 0, res.output
    assert res.output.count("upgraded") == 1 and "to store format 2" in res.output
    assert "extracted 3 of 7 rows" in res.output and "2 chunk(s) already done" in res.output
    store = open_store(path)
    assert store.format == 2 and zarr_chunks(path, "done") == (1,)
    assert np.array_equal(store.features(), ref.features()) and store.paths() == ref.paths()
    logs = store.chunk_log()
    assert logs[:2] == [None, None] and [log["run"] for log in logs[2:]] == [1, 1]
    assert store.group.attrs["extraction"]["chunk_runs"] == [0, 0, 1, 1]
