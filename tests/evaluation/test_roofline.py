"""benchmarks/roofline.py's arithmetic (issue #16, item 1): the MLP step's FLOP count against
torch's own FlopCounterMode, and the rows' format (the one roofline_extract.py shares)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from hashtagkit.heads.mlp import caffe_loss

SPEC = importlib.util.spec_from_file_location("hashtagkit_roofline", Path(__file__).parents[2] / "benchmarks" / "roofline.py")
roofline = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(roofline)


def test_mlp_step_flops_match_torchs_count():
    b, d, h, c = 8, 48, 32, 12
    model = torch.nn.Sequential(torch.nn.Linear(d, h), torch.nn.ReLU(), torch.nn.Linear(h, h), torch.nn.ReLU(),
                                torch.nn.Linear(h, c))
    x, y = torch.randn(b, d), (torch.rand(b, c) < 0.3).float()
    with FlopCounterMode(display=False) as counter:
        caffe_loss(model(x), y).backward()
    assert counter.get_total_flops() == roofline.mlp_step_flops(b, d, h, c)


def test_rows_have_the_shared_format_and_percentages():
    r = roofline.row("mlp train", "a step", 250.0, "GFLOPS", 1000.0, "bf16 matmul peak")
    assert tuple(r) == roofline.ROW_KEYS
    assert r["pct"] == 25.0
    assert roofline.fmt(r["pct"]) == "25" and roofline.fmt(1234.5) == "1,234" and roofline.fmt(None) == ""


def test_gemm_bound_is_the_steps_flops_over_its_gemm_time():
    cfg = {"batch": 4, "dim": 16, "hidden": 8, "classes": 2}
    rates = {"fc1": 10.0, "fc2": 20.0, "fc3": 40.0}  # GFLOPS per layer
    table = {("bf16", f"mlp {name} shape"): v for name, v in rates.items()}
    seconds = (2 * 2 * 4 * 16 * 8 / 10e9) + (3 * 2 * 4 * 8 * 8 / 20e9) + (3 * 2 * 4 * 8 * 2 / 40e9)
    expected = roofline.mlp_step_flops(4, 16, 8, 2) / seconds / 1e9
    assert abs(roofline.mlp_gemm_bound(table, cfg, "bf16") - expected) < 1e-9 * expected
