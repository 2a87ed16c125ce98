"""`extract --decode fast|gpu`: other pixels are an explicit choice, measured, recorded, and a resume
must agree with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from hashtagkit.backbones import load_backbone
from hashtagkit.cli.main import cli
from hashtagkit.errors import InputError
from hashtagkit.extraction import extract
from hashtagkit.stores import open_store

from ..data.test_images_decode import photo, save_jpeg
from ..extraction.test_extract import make_image_store


@pytest.mark.slow
def test_fast_decode_is_measured_recorded_and_part_of_the_preprocessing(tmp_path):
    store = make_image_store(tmp_path, n=2, extra={"big.jpg": None})
    save_jpeg(tmp_path / "images" / "big.jpg", photo(1200, 1600))  # reduced by --decode fast only
    backbone = load_backbone("vgg16-object", "random")
    lines: list[str] = []
    extract(store, [backbone], precision="fp32", dtype="float32", workers=0, decode="fast", progress=False,
            log=lines.append)
    s = open_store(store)
    assert s.blocks[0]["preprocessing"]["decode"] == {"mode": "fast", "jpeg_draft_min_side": 256}
    check = s.group.attrs["extraction"]["runs"][-1]["decode"]["check"]
    assert check["photos"] == 3 and 0.99 < check["cosine_min"] <= check["cosine_mean"] <= 1.0
    assert check["cosine_min"] < 1.0  # the big photo's pixels really differ
    assert any("--decode fast: fc7 cosine" in line for line in lines)
    fast = s.features()
    with pytest.raises(InputError, match="overwrite=True"):  # other pixels: not a resume of these features
        extract(store, [backbone], precision="fp32", dtype="float32", workers=0, progress=False, log=lambda s: None)
    extract(store, [backbone], precision="fp32", dtype="float32", workers=0, progress=False, log=lambda s: None,
            overwrite=True)
    s = open_store(store)
    assert "decode" not in s.blocks[0]["preprocessing"]  # the default decode records what it always did
    exact = s.features()
    np.testing.assert_allclose(exact[:2], fast[:2], rtol=1e-5, atol=1e-6)  # small photos: the same pixels
    cos = float(exact[2] @ fast[2] / np.linalg.norm(exact[2]) / np.linalg.norm(fast[2]))
    assert cos == pytest.approx(check["cosine_min"], abs=1e-4)  # the check measured what the run computed


def test_gpu_decode_is_refused_without_cuda_and_with_dask(tmp_path):
    store = make_image_store(tmp_path, n=2)
    if not torch.cuda.is_available():
        res = CliRunner().invoke(cli, ["extract", str(store), "--backbone", "vgg16-object=random", "--decode", "gpu"])
        assert res.exit_code == 2 and "none is available" in res.output and "Traceback" not in res.output
        assert "--decode gpu" in res.output.strip().splitlines()[-1]  # one line says why
    with pytest.raises(InputError, match="in-process"):
        extract(store, [], decode="fast", cluster="local:1", progress=False, log=lambda s: None)
