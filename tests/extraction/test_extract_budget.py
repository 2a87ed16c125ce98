"""The engine's budget of cores (lanes of model threads, decoding processes) and its lanes:
several batches in the model at once must give the features, rows and done flags of one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hashtagkit.backbones import load_backbone
from hashtagkit.devices import extraction_budget
from hashtagkit.errors import InputError
from hashtagkit.extraction import extract
from hashtagkit.stores import open_store

from ..extraction.test_extract import make_image_store

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("cores, lanes, threads, workers", [
    (1, 1, 1, 1), (2, 2, 1, 1), (8, 4, 2, 1), (64, 4, 16, 8),
])
def test_cpu_budget_from_the_core_count(cores, lanes, threads, workers):
    b = extraction_budget(CPU, cores=cores)
    assert (b.lanes, b.threads, b.workers) == (lanes, threads, workers)
    assert b.lanes * b.threads <= cores  # the model's threads never oversubscribe the cores


def test_budget_overrides_and_cuda():
    assert extraction_budget(CPU, cores=8, lanes=1, workers=0).describe() == \
        {"lanes": 1, "threads_per_lane": 8, "decode_workers": 0}
    gpu = extraction_budget(CUDA, cores=16)
    assert (gpu.lanes, gpu.workers) == (1, 8)  # a GPU is fed by many decoders
    with pytest.raises(InputError, match="lanes must be at least 1"):
        extraction_budget(CPU, cores=2, lanes=0)


@pytest.mark.slow
def test_lanes_give_the_features_of_one_lane(tmp_path):
    """Two lanes over 3 chunks of 3 rows, batches of 2 (a partial batch per chunk, a bad photo):
    the same features row by row as one lane, every chunk done, the budget recorded."""
    store = make_image_store(tmp_path, n=8, extra={"missing.jpg": None})
    backbone = load_backbone("vgg16-object", "random")
    feats = {}
    for lanes in (1, 2):
        extract(store, [backbone], precision="fp32", dtype="float32", workers=0, lanes=lanes, batch_size=2,
                chunk_rows=3, progress=False, log=lambda s: None, overwrite=lanes == 2)
        s = open_store(store)
        feats[lanes] = s.features()
        assert s.completeness() == (3, 3) and s.valid().tolist() == [True] * 8 + [False]  # 9 rows, 3 chunks
        assert s.group.attrs["extraction"]["runs"][-1]["budget"]["lanes"] == lanes
    assert np.abs(feats[1]).sum() > 0
    np.testing.assert_allclose(feats[2], feats[1], rtol=1e-4, atol=1e-5)
