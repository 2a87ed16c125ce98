"""Memory and time of the metrics: the in-memory `metrics.summary` on an N x C score matrix
against the streaming `metrics.MetricAccumulator` fed batches of rows (issue #13, item 5).

Synthetic scores (float32, as heads return them) and about 5 ground-truth tags per image, made
batch by batch from a seed so the streaming side never holds them all. Peak memory is
tracemalloc's peak of numpy and Python allocations during the metric computation (the score
matrix included on the in-memory side, since that is what streaming removes).

    .venv/bin/python benchmarks/eval_stream.py            # writes benchmarks/results/eval_stream.md
"""

from __future__ import annotations

import os
import platform
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

from hashtagkit import metrics

C = 1000
KS = (1, 5, 10)
SIZES = (20_000, 50_000, 100_000)
IN_MEMORY_UP_TO = 50_000  # beyond, the N x C float64 copies alone take GBs and minutes
BATCHES = (1024, 4096)  # multiples of BLOCK


BLOCK = 1024  # data is made in blocks seeded by their index: the same rows at every batch size


def block(i: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(i)
    m = min(BLOCK, n - i * BLOCK)
    scores = rng.random((m, C), dtype=np.float32)
    labels = rng.random((m, C)) < 4 / C
    labels[np.arange(m), rng.integers(0, C, m)] = True
    return scores, labels


def batch(start: int, stop: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows start..stop (start, stop multiples of BLOCK or stop == n)."""
    parts = [block(i, n) for i in range(start // BLOCK, -(-stop // BLOCK))]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def streamed(n: int, b: int) -> tuple[dict, float, float]:
    tracemalloc.start()
    t0 = time.perf_counter()
    acc = metrics.MetricAccumulator(C, KS)
    for i in range(0, n, b):
        acc.update(*batch(i, min(i + b, n), n))
    for i in range(0, n, b):
        acc.rank_update(*batch(i, min(i + b, n), n))
    result = acc.result()
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, seconds, peak / 2**20


def in_memory(n: int) -> tuple[dict, float, float]:
    tracemalloc.start()
    t0 = time.perf_counter()
    parts = [block(i, n) for i in range(-(-n // BLOCK))]
    scores, labels = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    del parts
    result = metrics.summary(scores, labels, KS)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, seconds, peak / 2**20


def main() -> None:
    lines = ["| N | C | method | batch | seconds | peak MiB | max abs diff vs in-memory |",
             "|---:|---:|---|---:|---:|---:|---:|"]
    for n in SIZES:
        ref = None
        if n <= IN_MEMORY_UP_TO:
            ref, s, peak = in_memory(n)
            lines.append(f"| {n:,} | {C} | in-memory summary | - | {s:.1f} | {peak:.0f} | - |")
        for b in BATCHES:
            got, s, peak = streamed(n, b)
            diff = f"{max(abs(got[k] - ref[k]) for k in ref):.1e}" if ref else "-"
            lines.append(f"| {n:,} | {C} | streamed (2 passes) | {b} | {s:.1f} | {peak:.0f} | {diff} |")
        print(lines[-1], file=sys.stderr)
    table = "\n".join([
        "# Streaming evaluation: memory and time of the metrics",
        "",
        f"Machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs; "
        f"Python {platform.python_version()}, numpy {np.__version__}. Shared machine: seconds are noisy.",
        f"Command: `.venv/bin/python benchmarks/eval_stream.py` (`make bench-eval-stream`); C = {C} classes, ~5 tags per image, K = {KS}.",
        "",
        *lines,
        "",
    ])
    out = Path(__file__).parent / "results" / "eval_stream.md"
    out.write_text(table)
    print(table)


if __name__ == "__main__":
    main()
