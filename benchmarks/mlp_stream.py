"""Cached vs streamed MLP training on the planted HARRISON-size store (issue #13, item 2).

The two data paths of `MLPHead.fit_data` (`cache=memory`: the training rows held as float16,
a fresh permutation per epoch; `cache=stream`: `BlockStream`, block order shuffled per epoch and
rows shuffled within a buffer of `buffer_blocks` blocks, read by `workers` processes) are
trained at the same number of epochs with the same seeds (the two paths alternate, seed by seed,
so a change in the machine's load falls on both), then scored by `hashtagkit evaluate`. The
issue's target: P@1 within 1 point. Each fit runs as its own process: its own peak RSS
(ru_maxrss, os.wait4) and the sampled peak of its whole tree (the stream path's spawned loader
workers included) are recorded.

    nice .venv/bin/python benchmarks/mlp_stream.py --store benchmarks/.cache/planted-harrison.zarr \
        --epochs 5 --hidden 4096 --seeds 0,1,2     # writes benchmarks/results/mlp_stream.md

The store is made with `hashtagkit prepare planted -o STORE` (57,383 rows x 8,192 float16) if
it does not exist.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch
from scale import run  # benchmarks/scale.py: wall time, own and whole-tree peak RSS of a command

BIN = Path(sys.executable).parent
RESULTS = Path(__file__).parent / "results" / "mlp_stream.md"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, default=Path(__file__).parent / ".cache" / "planted-harrison.zarr")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--buffer-blocks", type=int, default=8)
    ap.add_argument("--seeds", default="0", help="comma-separated seeds; each trains both paths")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    hk = str(BIN / "hashtagkit")
    log = args.store.parent / "mlp_stream.log"
    if not args.store.exists():
        args.store.parent.mkdir(parents=True, exist_ok=True)
        prep = run([hk, "prepare", "planted", "-o", str(args.store)], log)
        print(f"prepare: {prep['seconds']:.0f} s", flush=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    load0 = os.getloadavg()
    rows = []
    for seed in seeds:
        for cache in ("memory", "stream"):
            out = args.store.parent / f"mlp-{cache}-s{seed}"
            cmd = [hk, "fit", str(args.store), "--head", "mlp", "-o", str(out), "--overwrite", "--seed", str(seed),
                   "--set", f"epochs={args.epochs}", "--set", f"hidden={args.hidden}", "--set", f"cache={cache}",
                   "--set", f"workers={args.workers}", "--set", f"buffer_blocks={args.buffer_blocks}"]
            fit = run(cmd, log)
            ev = run([hk, "evaluate", str(out), "--json"], log)
            m = json.loads(ev["stdout"])
            hist = json.loads((out / "model" / "history.json").read_text())
            rows.append({"seed": seed, "cache": cache, "data": hist["data"], "fit_s": fit["seconds"],
                         "fit_rss": fit["maxrss_mib"], "fit_tree": fit["tree_mib"], "eval_s": ev["seconds"],
                         "iterations": hist["iterations"], "metrics": m,
                         "val": [e.get("val_recall@5") for e in hist["epochs"]]})
            print(seed, cache, f"fit {fit['seconds']:.0f} s {fit['maxrss_mib']:.0f} MiB (tree {fit['tree_mib']:.0f})",
                  {k: m[k] for k in ("precision@1", "recall@5", "accuracy@5")}, flush=True)
    load1 = os.getloadavg()

    def metric(m: dict, key: str) -> float:
        return 100 * float(m[key])

    lines = ["# MLP: cached vs streamed training data (issue #13, item 2)", "",
             f"`{' '.join(['benchmarks/mlp_stream.py'] + sys.argv[1:])}` on the planted HARRISON-size store "
             "(57,383 rows x 8,192 float16, 0.9 GB of features; 5,000 test rows), seeds "
             f"{', '.join(map(str, seeds))} for both paths (alternating), `fast` preset with epochs={args.epochs}, "
             f"hidden={args.hidden}; the stream path with workers={args.workers}, buffer_blocks={args.buffer_blocks}.", "",
             "| seed | path | P@1 | R@5 | A@5 | fit wall s | fit peak RSS MiB (own / tree) | steps | val R@5 per epoch | evaluate s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["metrics"]
        val = ", ".join(f"{100 * v:.2f}" for v in r["val"] if v is not None)
        lines.append(f"| {r['seed']} | {r['data']} | {metric(m, 'precision@1'):.2f} | {metric(m, 'recall@5'):.2f} | "
                     f"{metric(m, 'accuracy@5'):.2f} | {r['fit_s']:.0f} | {r['fit_rss']:.0f} / {r['fit_tree']:.0f} | "
                     f"{r['iterations']} | {val} | {r['eval_s']:.0f} |")
    lines += ["", "| measure | memory (mean ± std) | stream (mean ± std) | stream - memory (mean ± std of the per-seed differences) |",
              "|---|---|---|---|"]
    for key, label in (("precision@1", "P@1"), ("recall@5", "R@5"), ("accuracy@5", "A@5")):
        mem = np.array([metric(r["metrics"], key) for r in rows if r["cache"] == "memory"])
        st = np.array([metric(r["metrics"], key) for r in rows if r["cache"] == "stream"])
        d = st - mem
        lines.append(f"| {label} | {mem.mean():.2f} ± {mem.std(ddof=1) if len(mem) > 1 else 0:.2f} | "
                     f"{st.mean():.2f} ± {st.std(ddof=1) if len(st) > 1 else 0:.2f} | "
                     f"{d.mean():+.2f} ± {d.std(ddof=1) if len(d) > 1 else 0:.2f} |")
    p1 = np.mean([metric(b["metrics"], "precision@1") - metric(a["metrics"], "precision@1")
                  for a, b in zip(rows[::2], rows[1::2], strict=True)])
    lines += ["", f"P@1 streamed - cached, mean over seeds: {p1:+.2f} points (target: within 1).", "",
              "Peak RSS: own = the fit process's ru_maxrss (os.wait4); tree = the sampled peak of the fit process "
              "and its spawned loader workers together (each worker holds its buffer of blocks, about "
              "buffer_blocks x 4 MB, plus torch's import).", "",
              f"Machine: {platform.platform()}, {os.cpu_count()} cores; "
              f"load average before {load0[0]:.1f}, after {load1[0]:.1f}. Python {platform.python_version()}, "
              f"torch {torch.__version__}, numpy {np.__version__}."]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
