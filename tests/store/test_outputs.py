"""hashtagkit.outputs: what --overwrite may replace, atomic writes, stale temporaries."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from hashtagkit.errors import InputError
from hashtagkit.outputs import (
    DEMO_IMAGES_MARKER,
    artefact_kind,
    atomic_dir,
    refuse_existing,
    remove_stale_temporaries,
)

from ..conftest import make_store


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def artefacts(tmp_path):
    """One artefact of every kind, plus things hashtagkit did not make."""
    from matplotlib.figure import Figure

    from hashtagkit.show import write_sheet

    paths = {"store": make_store(tmp_path / "s.zarr", features=False).path}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text(json.dumps({"head": "popularity"}))
    paths["run"] = tmp_path / "run"
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "results.json").write_text(json.dumps({"records": []}))
    paths["bench"] = tmp_path / "bench"
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / DEMO_IMAGES_MARKER).write_text("{}")
    paths["images"] = tmp_path / "imgs"
    for suffix in ("png", "pdf", "svg", "jpg"):
        paths[f"sheet.{suffix}"] = write_sheet(Figure(figsize=(1, 1)), tmp_path / f"sheet.{suffix}")
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hashtagkit": {"kind": "weights"}}, tmp_path / "w.pth")
    paths["weights"] = tmp_path / "w.pth"
    torch.save({"w": torch.zeros(2)}, tmp_path / "plain.pth")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.txt").write_text("mine")
    (tmp_path / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n not a sheet")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    return tmp_path, paths


def test_artefact_kinds_are_recognised_by_their_metadata(artefacts):
    tmp, paths = artefacts
    got = {name: artefact_kind(p) for name, p in paths.items()}
    assert got == {"store": "store", "run": "run", "bench": "bench", "images": "images", "sheet.png": "sheet",
                   "sheet.pdf": "sheet", "sheet.svg": "sheet", "sheet.jpg": "sheet", "weights": "weights"}
    for other in ("plain.pth", "folder", "photo.png", "notes.txt", "empty", "missing"):
        assert artefact_kind(tmp / other) is None, other


def test_overwrite_only_replaces_the_same_kind(artefacts):
    tmp, paths = artefacts
    for kind in ("store", "run", "bench", "images", "weights"):
        assert refuse_existing(paths[kind], True, kind=kind) == paths[kind]
        with pytest.raises(InputError, match="already exists: pass overwrite=True"):
            refuse_existing(paths[kind], False, kind=kind)
        wrong = "run" if kind != "run" else "store"
        with pytest.raises(InputError, match="refusing to replace"):
            refuse_existing(paths[kind], True, kind=wrong)
    assert refuse_existing(paths["sheet.svg"], True, kind="sheet")
    for other in ("plain.pth", "folder", "photo.png", "notes.txt"):
        for kind in ("store", "run", "sheet", "weights", "images"):
            with pytest.raises(InputError, match="no hashtagkit mark"):
                refuse_existing(tmp / other, True, kind=kind)
    # an empty folder may become a folder artefact, never a file one
    assert refuse_existing(tmp / "empty", True, kind="run")
    with pytest.raises(InputError):
        refuse_existing(tmp / "empty", True, kind="sheet")


def test_bench_resumes_only_into_a_bench_folder(artefacts):
    tmp, paths = artefacts
    assert refuse_existing(paths["bench"], False, kind="bench", resume=True)
    assert refuse_existing(tmp / "empty", False, kind="bench", resume=True)
    assert refuse_existing(tmp / "new", False, kind="bench", resume=True)
    for other in ("store", "run"):
        with pytest.raises(InputError, match="refusing to write into"):
            refuse_existing(paths[other], False, kind="bench", resume=True)
    with pytest.raises(InputError, match="refusing to write into"):
        refuse_existing(tmp / "folder", False, kind="bench", resume=True)


def test_an_input_is_never_an_output(artefacts):
    tmp, paths = artefacts
    store = paths["store"]
    for target in (store, tmp, tmp / "." / "s.zarr"):
        with pytest.raises(InputError, match="the input"):
            refuse_existing(target, True, kind="store", inputs=[store])
    os.symlink(store, tmp / "link.zarr")
    with pytest.raises(InputError, match="the input"):
        refuse_existing(tmp / "link.zarr", True, kind="store", inputs=[store])
    # beside or inside an input folder is fine (a store next to the photos)
    assert refuse_existing(tmp / "folder" / "new.zarr", False, kind="store", inputs=[tmp / "folder"])


def test_atomic_dir_with_a_kind_never_replaces_a_foreign_folder(artefacts):
    tmp, paths = artefacts
    with pytest.raises(InputError, match="no hashtagkit mark"):
        with atomic_dir(tmp / "folder", overwrite=True, kind="run"):
            pass
    assert (tmp / "folder" / "a.txt").read_text() == "mine"
    with atomic_dir(paths["run"], overwrite=True, kind="run") as t:
        (t / "new").write_text("1")
    assert sorted(p.name for p in paths["run"].iterdir()) == ["new"]


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    pid = dead_pid()
    stale = tmp_path / f".out.zarr.tmp-{pid}"
    stale.mkdir()
    stale_file = tmp_path / f".sheet.tmp-{pid}.png"
    stale_file.write_bytes(b"half")
    live = tmp_path / f".out.zarr.tmp-{os.getppid()}"  # a live process's work: kept
    live.mkdir()
    other = tmp_path / f".other.zarr.tmp-{pid}"  # another output's: not ours to judge here
    other.mkdir()
    assert remove_stale_temporaries(tmp_path / "out.zarr") == [stale]
    assert remove_stale_temporaries(tmp_path / "sheet.png") == [stale_file]
    assert live.exists() and other.exists() and not stale.exists() and not stale_file.exists()
    # an old output moved aside by a process that died before the new one took its place comes back
    old = tmp_path / f".run.old-{pid}"
    old.mkdir()
    (old / "run.json").write_text("{}")
    remove_stale_temporaries(tmp_path / "run")
    assert (tmp_path / "run" / "run.json").read_text() == "{}"


def test_a_new_store_clears_stale_temporaries(tmp_path):
    stale = tmp_path / f".s.zarr.tmp-{dead_pid()}"
    stale.mkdir()
    make_store(tmp_path / "s.zarr", features=False)
    assert not stale.exists()


def stopped_mid_write(tmp_path, n: int) -> subprocess.Popen | None:
    """`prepare planted` frozen (SIGSTOP) while its temporary output exists and the output does not:
    a moment the test chose, not a timer's, however loaded the machine. None if it finished first."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "hashtagkit.cli.main", "prepare", "planted", "-o", str(tmp_path / "p.zarr"),
         "--n", str(n), "--dim", "256"], stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        # Ctrl-C as a terminal sends it: a suite started in the background (`make test &`, nohup)
        # passes SIGINT on ignored, and the command rightly keeps ignoring it then
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if any(p.name.startswith(".p.zarr.tmp-") for p in tmp_path.iterdir()):
            proc.send_signal(signal.SIGSTOP)
            break
        time.sleep(0.005)
    mid = (proc.poll() is None and not (tmp_path / "p.zarr").exists()
           and any(p.name.startswith(".p.zarr.tmp-") for p in tmp_path.iterdir()))
    if mid:
        return proc
    proc.send_signal(signal.SIGCONT) if proc.poll() is None else None
    proc.communicate(timeout=120)
    for p in tmp_path.iterdir():  # it finished (or failed) before it could be stopped
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return None


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_prepare_leaves_nothing(tmp_path, sig, code):
    """Ctrl-C or SIGTERM in the middle of writing: one line, exit 130/143, no temporaries."""
    for n in (60_000, 240_000, 960_000):
        proc = stopped_mid_write(tmp_path, n)
        if proc is not None:
            break
    assert proc is not None, "prepare planted finished each time before the test could stop it"
    proc.send_signal(sig)  # delivered when the process continues, in the middle of its writing
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-500:]
    assert "Traceback" not in err and "Task was destroyed" not in err
    assert err.count("Error") == 1
    last = err.strip().splitlines()[-1].split("\r")[-1].strip()
    assert last.startswith("Error: ") and ("interrupted" in last or "terminated" in last)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_restored_old_output_is_checked_like_any_other(tmp_path):
    """The previous output moved aside by a writer that died is moved back before the
    existence check: without --overwrite it is refused, not silently replaced."""
    from hashtagkit.stores import open_store

    make_store(tmp_path / "p.zarr", features=False, seed=1)
    before = open_store(tmp_path / "p.zarr").labels().copy()
    (tmp_path / "p.zarr").rename(tmp_path / f".p.zarr.old-{dead_pid()}")
    with pytest.raises(InputError, match="already exists"):
        make_store(tmp_path / "p.zarr", features=False, seed=2)
    assert (open_store(tmp_path / "p.zarr").labels() == before).all()


def test_odd_temporary_names_are_left_alone(tmp_path):
    """A pid no process can have, or a temporary we may not remove, is not ours: no crash."""
    from hashtagkit.outputs import remove_stale_temporaries

    odd = tmp_path / ".r.tmp-99999999999999999999"
    odd.mkdir()
    assert remove_stale_temporaries(tmp_path / "r") == [] and odd.exists()
