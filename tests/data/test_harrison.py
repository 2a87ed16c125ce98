"""`prepare harrison` on the real label files, and every way a damaged copy must fail."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hashtagkit.cli.main import cli
from hashtagkit.data.harrison import read_harrison
from hashtagkit.stores import open_store


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_real_harrison_store(harrison_root, tmp_path):
    out = tmp_path / "h.zarr"
    res = run("prepare", "harrison", harrison_root, "-o", out)
    assert res.exit_code == 0, res.output
    store = open_store(out)
    assert (store.n_rows, store.n_classes) == (57383, 997)
    counts = store.info()["split"]
    assert (counts["train"], counts["test"], counts["val"]) == (52383, 5000, 0)
    labels = store.labels()
    assert labels.sum() == 260759  # every tag of tag_list.txt, none lost or doubled
    # vocabulary in class-id order, as vocab_index.txt gives it
    vocab_lines = (harrison_root / "vocab_index.txt").read_text().split()
    assert store.vocab[:3] == [vocab_lines[0], vocab_lines[2], vocab_lines[4]]
    # row 3 of the files: "beach sea trip island japan"
    row = (harrison_root / "tag_list.txt").read_text().splitlines()[3].split()
    assert sorted(store.vocab[j] for j in np.flatnonzero(labels[3])) == sorted(row)
    assert store.paths([3]) == [(harrison_root / "data_list.txt").read_text().splitlines()[3]]
    # HARRISON has no duplicate paths (duplicates are refused now), so every row is kept
    assert len(set(store.paths())) == 57383


def test_duplicate_and_escaping_paths_refused(tmp_path):
    """The same photo twice could be in train and test; '../' leaves the image folder."""
    root = small_copy(tmp_path, "a.jpg\nb.jpg\n./a.jpg\nc/../b.jpg\n", "love\nsea\nsky\nlove\n")
    res = run("prepare", "harrison", root, "-o", tmp_path / "s.zarr")
    assert res.exit_code == 2 and "2 duplicate image path(s), e.g. 'a.jpg' at data_list.txt line 3 and" in res.output
    (tmp_path / "x").mkdir()
    root2 = small_copy(tmp_path / "x", "a.jpg\n../b.jpg\nc.jpg\n", "love\nsea\nsky\n")
    res = run("prepare", "harrison", root2, "-o", tmp_path / "s.zarr")
    assert res.exit_code == 2 and "line 2: image path '../b.jpg' leaves the image folder" in res.output
    assert not (tmp_path / "s.zarr").exists()


def test_bom_accepted(tmp_path):
    root = small_copy(tmp_path, "\ufeffa.jpg\nb.jpg\nc.jpg\n", "love\nsea\nsky\n")
    assert run("prepare", "harrison", root, "-o", tmp_path / "s.zarr", "--test-size", "1").exit_code == 0
    assert open_store(tmp_path / "s.zarr").paths([0]) == ["a.jpg"]


@pytest.mark.parametrize("size, test_rows", [("1", 1), ("1.0", 1), ("2.0", 2), ("0.5", 2), ("0", 0), ("0.0", 0)])
def test_split_sizes_from_1_up_are_row_counts(tmp_path, size, test_rows):
    """`10.0` used to be read as a fraction (1000%): from 1 up a size is a whole row count."""
    root = small_copy(tmp_path, "a.jpg\nb.jpg\nc.jpg\n", "love\nsea\nsky\n")
    assert run("prepare", "harrison", root, "-o", tmp_path / "s.zarr", "--test-size", size).exit_code == 0
    assert open_store(tmp_path / "s.zarr").split_info["counts"]["test"] == test_rows


@pytest.mark.slow
def test_split_is_seeded_random_and_reproducible(harrison_root, tmp_path):
    a, b, c = (tmp_path / n for n in ("a.zarr", "b.zarr", "c.zarr"))
    assert run("prepare", "harrison", harrison_root, "-o", a).exit_code == 0
    assert run("prepare", "harrison", harrison_root, "-o", b).exit_code == 0
    assert run("prepare", "harrison", harrison_root, "-o", c, "--seed", "1").exit_code == 0
    sa, sb, sc = (open_store(p) for p in (a, b, c))
    assert sa.split().tobytes() == sb.split().tobytes()
    assert sa.split_info["sha256"] == sb.split_info["sha256"] != sc.split_info["sha256"]
    # not "the last 5,000 lines": test rows come from every one of the 50 seed-tag folders
    folders = {p.split("/")[1] for p in sa.paths(sa.split_rows("test"))}
    assert len(folders) == 50


def test_root_or_root_harrison_layout(harrison_root, tmp_path):
    nested = tmp_path / "repo" / "HARRISON"
    nested.mkdir(parents=True)
    for name in ("data_list.txt", "tag_list.txt", "vocab_index.txt"):
        shutil.copy(harrison_root / name, nested / name)
    data = read_harrison(tmp_path / "repo")
    assert len(data.paths) == 57383
    assert data.image_root == str(nested.resolve())


def small_copy(tmp_path: Path, data: str, tags: str, vocab: str = "love 0\nsea 1\nsky 2\n") -> Path:
    root = tmp_path / "copy"
    root.mkdir()
    (root / "data_list.txt").write_text(data)
    (root / "tag_list.txt").write_text(tags)
    (root / "vocab_index.txt").write_text(vocab)
    return root


@pytest.mark.parametrize(
    "data, tags, vocab, message",
    [
        ("a.jpg\nb.jpg\nc.jpg\n", "love\nsea\n", "love 0\nsea 1\n", "data_list.txt has 3 lines but tag_list.txt has 2"),
        ("a.jpg\nb.jpg\n", "love\nsea moon\n", "love 0\nsea 1\n", "tag_list.txt line 2: hashtag 'moon' is not in"),
        ("a.jpg\nb.jpg\n", "love\n\n", "love 0\n", "tag_list.txt line 2: image b.jpg has no hashtags"),
        ("", "love\n", "love 0\n", "data_list.txt is empty"),
        ("a.jpg\n", "love\n", "love zero\n", "vocab_index.txt line 1: expected 'tag class_id'"),
        ("a.jpg\n", "love\n", "love 0\nsea 2\n", "class ids must run 0..1, but 1 is missing"),
    ],
)
def test_damaged_files_fail_with_file_and_line(tmp_path, data, tags, vocab, message):
    root = small_copy(tmp_path, data, tags, vocab)
    out = tmp_path / "s.zarr"
    res = run("prepare", "harrison", root, "-o", out)
    assert res.exit_code == 2
    assert message in res.output
    assert "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".s.zarr*"))  # nothing half-written


def test_missing_file_named(tmp_path):
    root = small_copy(tmp_path, "a.jpg\n", "love\n")
    (root / "tag_list.txt").unlink()
    res = run("prepare", "harrison", root, "-o", tmp_path / "s.zarr")
    assert res.exit_code == 2 and "tag_list.txt not found" in res.output


def test_existing_output_refused_then_overwritten(tmp_path):
    root = small_copy(tmp_path, "a.jpg\nb.jpg\nc.jpg\n", "love\nsea\nsky love\n")
    out = tmp_path / "s.zarr"
    assert run("prepare", "harrison", root, "-o", out, "--test-size", "1").exit_code == 0
    before = open_store(out).split_info["sha256"]
    res = run("prepare", "harrison", root, "-o", out, "--test-size", "1", "--seed", "5")
    assert res.exit_code == 2 and "--overwrite" in res.output
    assert open_store(out).split_info["sha256"] == before  # untouched
    # a failing overwrite keeps the old store intact
    (root / "tag_list.txt").write_text("love\nsea\n")
    assert run("prepare", "harrison", root, "-o", out, "--overwrite").exit_code == 2
    assert open_store(out).n_rows == 3
    (root / "tag_list.txt").write_text("love\nsea\nsky\n")
    assert run("prepare", "harrison", root, "-o", out, "--test-size", "1", "--overwrite").exit_code == 0
    assert open_store(out).labels()[2].tolist() == [0, 0, 1]


@pytest.mark.parametrize("args, message", [
    (["--test-size", "3"], "leaves no training rows"),
    (["--test-size", "-1"], "must be a row count >= 0"),
    (["--test-size", "abc"], "neither a row count nor a fraction"),
    (["--seed", "x"], "is not a valid integer"),
])
def test_bad_flags_exit_2(tmp_path, args, message):
    root = small_copy(tmp_path, "a.jpg\nb.jpg\nc.jpg\n", "love\nsea\nsky\n")
    res = run("prepare", "harrison", root, "-o", tmp_path / "s.zarr", *args)
    assert res.exit_code == 2 and message in res.output
