"""benchmarks/gpu_check.py (`make gpu-check`, issue #27 item 4) run as a user runs it, `--quick`.

On a machine without CUDA every CUDA row must say `skipped (no CUDA...)` while the CPU rows run and
give plausible numbers: the CPU fp32 reference's model alone reproduces the engine's features
(cosine 1.0), faiss-cpu finds numpy's brute-force neighbours (100% up to ties), the MLP step is a
share of the measured matmul peak, DDP ran on gloo with 2 processes. A row that raises (injected
through the script's own HASHTAGKIT_GPU_CHECK_FAIL hook) is reported FAILED and the rest still
runs; a section that fails whole, or finds no budget left, still leaves the table written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hashtagkit.devices import cpu_has_bf16

pytestmark = pytest.mark.slow  # a quick run of every section: 50-85 s on 2 cores shared with other jobs

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
CUDA = torch.cuda.is_available()


def run(tmp_path: Path, *args: str, fail: str = "", timeout: float = 300) -> tuple[subprocess.CompletedProcess, dict, str]:
    out, js = tmp_path / "gpu_check.md", tmp_path / "gpu_check.json"
    env = {**os.environ, "HASHTAGKIT_GPU_CHECK_FAIL": fail}
    res = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--json", str(js), *args],
                         capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    assert out.is_file()
    rows = {r["id"]: r for r in json.loads(js.read_text())["rows"]}
    return res, rows, out.read_text()


def table_line(text: str, rid: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"| {rid} |"))


def test_quick_run_skips_cuda_rows_runs_the_rest_and_reports_an_injected_failure(tmp_path):
    # row 1 (environment) and row 3b (the CPU's bf16 extract) raise; everything else must still run
    _, rows, text = run(tmp_path, fail="1,3b")
    assert text.startswith("# GPU check")
    assert "| # | check | device | status | result | notes |" in text
    assert set(rows) == {"1", "2", "3a", "3b", "3c", "3d", "4a", "4b", "4c", "5a", "5b", "6a", "6b"}

    assert rows["1"]["status"].startswith("FAILED (RuntimeError: injected failure")
    assert "injected failure" in table_line(text, "1")
    if cpu_has_bf16():
        assert rows["3b"]["status"].startswith("FAILED (RuntimeError: injected failure")
    else:
        assert rows["3b"]["status"].startswith("skipped (this CPU has no native bf16")

    cuda_rows = [r for r in rows.values() if r["device"] == "cuda"]
    assert {r["id"] for r in cuda_rows} == {"3c", "3d", "4b", "4c", "5b", "6b"}
    for r in cuda_rows:
        if CUDA:  # run where there is a GPU: its rows ran (or say another reason: 1 GPU, no faiss-gpu)
            assert not r["status"].startswith("skipped (no CUDA"), r
            assert r["status"] == "ok" or r["status"].startswith("skipped ("), r
        else:
            assert r["status"].startswith("skipped (no CUDA"), r
            assert "skipped (no CUDA" in table_line(text, r["id"])
    if not CUDA:
        assert "**CUDA rows skipped: 3c" in text

    # the CPU rows: ok, with plausible numbers
    pytest_row = rows["2"]
    assert pytest_row["status"] == "ok", pytest_row
    assert pytest_row["values"]["counts"].get("passed", 0) >= 1 and "failed" not in pytest_row["values"]["counts"]

    ref = rows["3a"]
    assert ref["status"] == "ok", ref
    v = ref["values"]
    assert v["cosine_min"] == pytest.approx(1.0, abs=1e-6) and v["cosine_mean"] == pytest.approx(1.0, abs=1e-6)
    assert v["engine_images_s"] > 0 and v["model_images_s"] > 0

    mlp = rows["4a"]
    assert mlp["status"] == "ok", mlp
    v = mlp["values"]
    assert v["step_gflops"] > 0 and v["peak_gflops"] > 0 and 0 < v["pct_peak"] < 200
    assert v["precision"] == ("bf16" if cpu_has_bf16() else "fp32")

    knn = rows["5a"]
    assert knn["status"] == "ok", knn
    assert knn["values"]["up_to_ties_pct"] == 100.0  # faiss-cpu vs numpy brute force: the same up to ties
    assert knn["values"]["same_pct"] > 99.0

    ddp = rows["6a"]
    assert ddp["status"] == "ok", ddp
    assert ddp["values"]["distributed"]["backend"] == "gloo" and ddp["values"]["distributed"]["world_size"] == 2


def test_a_section_that_fails_whole_or_finds_no_budget_still_writes_the_table(tmp_path):
    _, rows, text = run(tmp_path, "--only", "knn", fail="knn")
    assert list(rows) == ["5"]
    assert rows["5"]["status"].startswith("FAILED (RuntimeError: injected failure")
    assert "**FAILED: 5.**" in text

    _, rows, text = run(tmp_path, "--only", "knn,ddp", "--budget-seconds", "5")
    assert [r["status"].split(":")[0] for r in rows.values()] == ["skipped (budget", "skipped (budget"]
    assert "| 6 | ddp | - | skipped (budget" in text
