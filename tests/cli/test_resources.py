"""Running out of a resource (disk, memory) is one line and nothing half-written (issue #23)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid

import pytest
from click.testing import CliRunner

from hashtagkit.cli.main import cli

from ..conftest import make_store


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MB file system (tmpfs), mounted for the test: root only, else a skip."""
    where = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_is_one_line_and_leaves_nothing(small_disk):
    proc = subprocess.run([sys.executable, "-m", "hashtagkit.cli.main", "prepare", "planted", "-o",
                           str(small_disk / "p.zarr"), "--n", "3000", "--dim", "256", "--classes", "20"],
                          capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr[-800:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1].split("\r")[-1].strip()
    assert last.startswith("Error: no space left on the device") and "nothing half-written" in last
    assert proc.stderr.count("Error") == 1
    assert list(small_disk.iterdir()) == []


@pytest.mark.parametrize("error, said", [
    (MemoryError(), "Error: out of memory; "),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                  "you tried to allocate 128000000000 bytes. Error code 12 (Cannot allocate memory)"),
     "Error: out of memory (an allocation of 119.2 GiB); "),
])
def test_out_of_memory_is_one_line(tmp_path, monkeypatch, error, said):
    """Wherever memory runs out (numpy's MemoryError, torch's allocator), one line, exit 1,
    and the run directory being written is removed."""
    store = make_store(tmp_path / "s.zarr")
    from hashtagkit.heads.popularity import PopularityHead

    def fail(self, data):
        raise error

    monkeypatch.setattr(PopularityHead, "fit_data", fail)
    res = CliRunner().invoke(cli, ["fit", str(store.path), "--head", "popularity", "-o", str(tmp_path / "run")])
    assert res.exit_code == 1 and not isinstance(res.exception, (MemoryError, RuntimeError)), res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(said), lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def test_other_runtime_errors_keep_their_traceback(tmp_path, monkeypatch):
    """Only the allocator's message is turned into a line: a bug stays a bug report."""
    store = make_store(tmp_path / "s.zarr")
    from hashtagkit.heads.popularity import PopularityHead

    def fail(self, data):
        raise RuntimeError("something else went wrong")

    monkeypatch.setattr(PopularityHead, "fit_data", fail)
    res = CliRunner().invoke(cli, ["fit", str(store.path), "--head", "popularity", "-o", str(tmp_path / "run")])
    assert isinstance(res.exception, RuntimeError)


@pytest.fixture
def read_only(tmp_path):
    """Make a folder read-only for the test (a read-only bind mount: root only, else a skip)."""
    mounted = []

    def make(folder):
        if os.geteuid() != 0:
            pytest.skip("a read-only bind mount needs root (chmod does not stop root)")
        for cmd in (["mount", "--bind", str(folder), str(folder)], ["mount", "-o", "remount,bind,ro", str(folder)]):
            done = subprocess.run(cmd, capture_output=True)
            if done.returncode != 0:
                pytest.skip(f"cannot bind-mount here: {done.stderr.decode().strip()}")
        mounted.append(folder)

    yield make
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_verify_on_a_read_only_store_reports_the_damage(tmp_path, read_only):
    """`info --verify` that cannot mark a damaged chunk not done (its `done` folder read-only) said
    so in a 90-line traceback (issue #23): now it lists the damage and says why it could not mark it."""
    store = make_store(tmp_path / "s.zarr", n=64, chunk_rows=16)
    chunk = store.path / "features" / "c" / "1" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01
    chunk.write_bytes(bytes(data))
    read_only(store.path / "done")
    res = CliRunner().invoke(cli, ["info", "--verify", str(store.path)])
    assert res.exit_code == 1 and not isinstance(res.exception, OSError), res.output
    assert "chunk 1 (rows 16..): features does not decode" in res.output
    assert "could not be marked not done (Read-only file system" in res.output


def test_verify_on_a_wholly_read_only_store_still_lists_the_damage(tmp_path, read_only):
    """The store's lock file cannot be opened for writing either: the damage is listed all the same."""
    store = make_store(tmp_path / "s.zarr", n=64, chunk_rows=16)
    chunk = store.path / "features" / "c" / "2" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01
    chunk.write_bytes(bytes(data))
    read_only(store.path)
    res = CliRunner().invoke(cli, ["info", "--verify", str(store.path)])
    assert res.exit_code == 1, res.output
    assert "chunk 2 (rows 32..): features does not decode" in res.output and "could not be marked" in res.output
