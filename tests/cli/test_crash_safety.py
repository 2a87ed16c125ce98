"""The fault-injection benchmark's own pieces (so its counts can be trusted) and CI's guard
against passing by skipping."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time

import numpy as np
import pytest

from ..conftest import REPO, REQUIRE_SHARED, make_store, need_data


def load_faults():
    """benchmarks/ is not a package: load the script as a module (registered, for its dataclasses)."""
    spec = importlib.util.spec_from_file_location("hashtagkit_bench_faults", REPO / "benchmarks" / "faults.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


faults = load_faults()


# --- CI must not go green by skipping -----------------------------------------------------------
def test_missing_data_skips_without_the_flag(monkeypatch):
    monkeypatch.delenv(REQUIRE_SHARED, raising=False)
    with pytest.raises(pytest.skip.Exception, match="absent"):
        need_data(False, "x absent")
    need_data(True, "never raised")


def test_missing_data_fails_with_the_flag(monkeypatch):
    monkeypatch.setenv(REQUIRE_SHARED, "1")
    with pytest.raises(pytest.fail.Exception, match="x absent"):
        need_data(False, "x absent")
    need_data(True, "present data passes under the flag too")


# --- the benchmark's comparison ------------------------------------------------------------------
def state(n=10, chunk_rows=4, seed=0):
    rng = np.random.default_rng(seed)
    n_chunks = -(-n // chunk_rows)
    return {"features": rng.random((n, 3)).astype(np.float32), "valid": np.ones(n, bool),
            "reason": np.array([""] * n), "done": np.ones(n_chunks, bool)}


def test_compare_counts_lost_rows():
    ref = state()
    assert faults.compare({k: v.copy() for k, v in ref.items()}, ref) == (0, False)
    undone = {k: v.copy() for k, v in ref.items()}
    undone["done"][2] = False  # last chunk: rows 8, 9
    assert faults.compare(undone, ref) == (2, True)
    changed = {k: v.copy() for k, v in ref.items()}
    changed["features"][5, 1] = np.nextafter(changed["features"][5, 1], 2)  # one ulp: bitwise, not close
    assert faults.compare(changed, ref) == (1, True)
    invalid = {k: v.copy() for k, v in ref.items()}
    invalid["valid"][0] = False  # no row lost, but the store differs
    assert faults.compare(invalid, ref) == (0, True)
    assert faults.compare(None, ref) == (10, True)


# --- processes found through /proc and killed by pid ---------------------------------------------
def test_reaper_kills_children_it_tracked():
    parent = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60 & wait"])
    try:
        deadline = time.monotonic() + 10
        while len(faults.children(parent.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        kids = faults.children(parent.pid)
        assert len(kids) == 2 and faults.descendants(parent.pid) == kids
        reaper = faults.Reaper()
        reaper.track(parent.pid)
        assert reaper.kill_all() == 3
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(faults.start_time(k) is not None for k in kids) and time.monotonic() < deadline:
            time.sleep(0.02)  # zombies are reaped by init; a dead zombie's stat state is 'Z' until then
        assert all(faults.start_time(k) is None or zombie(k) for k in kids)
    finally:
        parent.kill()
        parent.wait()


def zombie(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_reaper_spares_a_recycled_pid():
    reaper = faults.Reaper()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        reaper.track(proc.pid)
        pid, _ = reaper.procs[0]
        reaper.procs[0] = (pid, "0")  # same pid, another start time: another process
        assert reaper.kill_all() == 0 and proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


# --- the attribute fault's verdict ----------------------------------------------------------------
def test_attrs_problem_detects_a_torn_or_changed_store(tmp_path):
    s = make_store(tmp_path / "s.zarr", features=False)
    vocab, info, split = s.vocab, s.split_info, s.split()
    assert faults.attrs_problem(s.path, vocab, info, split) is None
    assert faults.attrs_problem(s.path, vocab[::-1], info, split) == "vocabulary changed"
    meta = s.path / "zarr.json"
    meta.write_bytes(meta.read_bytes()[:40])  # what a non-atomic write killed midway would leave
    assert faults.attrs_problem(s.path, vocab, info, split) is not None
