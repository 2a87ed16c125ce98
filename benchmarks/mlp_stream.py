"""Cached vs streamed MLP training on the planted HARRISON-size store (issue #13, item 2).

The two data paths of `MLPHead.fit_data` (`cache=memory`: the training rows held as float16,
a fresh permutation per epoch; `cache=stream`: `BlockStream`, block order shuffled per epoch and
rows shuffled within a buffer of `buffer_blocks` blocks, read by `workers` processes) are
trained at the same number of epochs with the same seed, then scored by `hashtagkit evaluate`.
The issue's target: P@1 within 1 point. Each fit runs as its own process; its peak RSS is that
process's own ru_maxrss (os.wait4); the stream path's spawned worker processes are not in it.

    nice .venv/bin/python benchmarks/mlp_stream.py --store benchmarks/.cache/planted-harrison.zarr \
        --epochs 2 --hidden 1024            # writes benchmarks/results/mlp_stream.md

The store is made with `hashtagkit prepare planted -o STORE` (57,383 rows x 8,192 float16) if
it does not exist.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

BIN = Path(sys.executable).parent
RESULTS = Path(__file__).parent / "results" / "mlp_stream.md"


def run(cmd: list[str]) -> tuple[float, float, str]:
    """(wall seconds, the process's own peak RSS in MB, stdout) of one command."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, default=Path(__file__).parent / ".cache" / "planted-harrison.zarr")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--buffer-blocks", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    hk = str(BIN / "hashtagkit")
    if not args.store.exists():
        t, rss, _ = run([hk, "prepare", "planted", "-o", str(args.store)])
        print(f"prepare: {t:.0f} s, {rss:.0f} MB", flush=True)
    load0 = os.getloadavg()
    rows = []
    for cache in ("memory", "stream"):
        out = args.store.parent / f"mlp-{cache}"
        cmd = [hk, "fit", str(args.store), "--head", "mlp", "-o", str(out), "--overwrite", "--seed", str(args.seed),
               "--set", f"epochs={args.epochs}", "--set", f"hidden={args.hidden}", "--set", f"cache={cache}",
               "--set", f"workers={args.workers}", "--set", f"buffer_blocks={args.buffer_blocks}"]
        t_fit, rss_fit, _ = run(cmd)
        t_eval, rss_eval, text = run([hk, "evaluate", str(out), "--json"])
        m = json.loads(text)
        hist = json.loads((out / "model" / "history.json").read_text())
        rows.append({"cache": cache, "data": hist["data"], "fit_s": t_fit, "fit_rss": rss_fit, "eval_s": t_eval,
                     "eval_rss": rss_eval, "iterations": hist["iterations"], "metrics": m,
                     "val": [e.get("val_recall@5") for e in hist["epochs"]]})
        print(cache, f"fit {t_fit:.0f} s {rss_fit:.0f} MB", {k: m[k] for k in ("precision@1", "recall@5", "accuracy@5")}, flush=True)
    load1 = os.getloadavg()

    def metric(m: dict, key: str) -> float:
        return 100 * float(m[key])

    lines = ["# MLP: cached vs streamed training data (issue #13, item 2)", "",
             f"`{' '.join(['benchmarks/mlp_stream.py'] + sys.argv[1:])}` on the planted HARRISON-size store "
             "(57,383 rows x 8,192 float16, 0.9 GB of features; 5,000 test rows), same seed, "
             f"`fast` preset with epochs={args.epochs}, hidden={args.hidden}; the stream path with "
             f"workers={args.workers}, buffer_blocks={args.buffer_blocks}.", "",
             "| path | P@1 | R@5 | A@5 | fit wall s | fit peak RSS MB (main process) | steps | val R@5 per epoch | evaluate s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["metrics"]
        val = ", ".join(f"{100 * v:.2f}" for v in r["val"] if v is not None)
        lines.append(f"| {r['data']} | {metric(m, 'precision@1'):.2f} | {metric(m, 'recall@5'):.2f} | {metric(m, 'accuracy@5'):.2f} | "
                     f"{r['fit_s']:.0f} | {r['fit_rss']:.0f} | {r['iterations']} | {val} | {r['eval_s']:.0f} |")
    d = metric(rows[1]["metrics"], "precision@1") - metric(rows[0]["metrics"], "precision@1")
    lines += ["", f"P@1 streamed - cached: {d:+.2f} points (target: within 1).", "",
              "Peak RSS is the fit process's own ru_maxrss (os.wait4); the stream path's worker processes "
              "(spawned) are not included in it: each holds its buffer of blocks (about buffer_blocks x 4 MB) plus "
              "torch's import (~300 MB).", "",
              f"Machine: {platform.platform()}, {os.cpu_count()} cores, shared with other helpers' benchmarks; "
              f"load average before {load0[0]:.1f}, after {load1[0]:.1f}. Python {platform.python_version()}, "
              f"torch {torch.__version__}, numpy {np.__version__}."]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
