"""A store damaged behind our back is found, on read and by `info --verify` (issue #23): a deleted
labels, split or paths chunk (Zarr would read it as zeros), a bit flipped in any chunk (CRC32C
checksums), an array's dtype edited in its zarr.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from hashtagkit.cli.main import cli
from hashtagkit.errors import InputError
from hashtagkit.stores import open_store

from ..conftest import make_store


def verify(path) -> tuple[int, str]:
    res = CliRunner().invoke(cli, ["info", "--verify", str(path)])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    return res.exit_code, res.output


@pytest.mark.parametrize("name", ["labels", "split", "paths"])
def test_a_deleted_base_chunk_is_an_error_naming_it(tmp_path, name):
    store = make_store(tmp_path / "s.zarr", n=200, test=50)
    key = f"{name}/c/0/0" if name == "labels" else f"{name}/c/0"
    assert (store.path / key).is_file()
    assert verify(store.path)[0] == 0
    (store.path / key).unlink()
    with pytest.raises(InputError, match=f"is damaged: {name} chunk {key} is missing"):
        open_store(store.path)
    code, out = verify(store.path)
    assert code == 1 and f"{name} chunk {key} is missing" in out
    res = CliRunner().invoke(cli, ["fit", str(store.path), "--head", "popularity", "-o", str(tmp_path / "run")])
    assert res.exit_code == 2 and "is missing" in res.output and not (tmp_path / "run").exists()


def test_a_chunk_of_zeros_still_has_its_file(tmp_path):
    """All-zero labels (untagged rows) and an all-train split are written as files too, so a
    missing file always means damage."""
    from hashtagkit.data.split import random_split
    from hashtagkit.stores import create_store

    split, info = random_split(10, 0, 0, 0)  # every row in train: the split chunk is all zeros
    store = create_store(tmp_path / "z.zarr", paths=[f"{i}.jpg" for i in range(10)], labels=np.zeros((10, 3), np.uint8),
                         vocab=["a", "b", "c"], split=split, split_info=info, kind="test", image_root=None)
    assert (store.path / "labels/c/0/0").is_file() and (store.path / "split/c/0").is_file()
    assert verify(store.path)[0] == 0


@pytest.mark.parametrize("name", ["features", "labels"])
def test_a_flipped_bit_is_found(tmp_path, name):
    store = make_store(tmp_path / "s.zarr", n=200, test=50)
    chunk = store.path / name / "c" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x10
    chunk.write_bytes(bytes(data))
    code, out = verify(store.path)
    if name == "features":  # a done chunk: marked not done, so the next extract redoes it
        assert code == 1 and "chunk 0" in out and "does not decode" in out
        assert open_store(store.path).completeness()[0] == open_store(store.path).completeness()[1] - 1
    else:  # not repairable by extract: reported, and every read is one line, not a traceback
        assert code == 1 and "labels chunk labels/c/0/0 does not decode" in out
        with pytest.raises(Exception, match="(?i)checksum|crc"):
            open_store(store.path).labels()
        res = CliRunner().invoke(cli, ["fit", str(store.path), "--head", "popularity", "-o", str(tmp_path / "r")])
        assert res.exit_code == 1 and "its checksum does not match" in res.output
        assert not isinstance(res.exception, ValueError) and not (tmp_path / "r").exists()


def test_a_missing_base_array_is_named(tmp_path):
    import shutil

    store = make_store(tmp_path / "s.zarr")
    shutil.rmtree(store.path / "paths")
    with pytest.raises(InputError, match="is damaged: paths is missing"):
        open_store(store.path)
    code, out = verify(store.path)
    assert code == 1 and "paths is missing" in out


def test_an_edited_dtype_is_noticed(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    meta_file = store.path / "labels" / "zarr.json"
    meta = json.loads(meta_file.read_text())
    meta["data_type"] = "int16"
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(InputError, match="labels holds int16, not uint8"):
        open_store(store.path)
    assert verify(store.path)[0] == 1
