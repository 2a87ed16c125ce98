"""How time and memory grow with the number of rows (issue #13, item 7).

For each size N: a planted store of N rows x 8,192 float16 columns (Zipf labels, 997 classes,
5,000 test rows), one pass that only reads and decodes the features (where I/O + decode time
goes), then `fit` + `evaluate` of popularity, knn, ovr and mlp (the MLP for a fixed number of
steps, so its compute is the same at every N). Every step is its own `hashtagkit` process:
its wall time, its peak RSS (ru_maxrss from os.wait4: the largest single process of its tree)
and the peak of the whole tree's summed RSS (sampled every 0.2 s with psutil, as the MLP's
loader worker and ovr's joblib workers are separate processes) are recorded.

Results accumulate in WORKDIR/scale.json (a rerun skips what is there), then the table
(benchmarks/results/scale.md) and the plot (benchmarks/results/scale.png) are written. Stores are
deleted after their size unless --keep (1 M rows take ~10 GB).

    .venv/bin/python benchmarks/scale.py                          # 57,383 / 250,000 / 1,000,000
    .venv/bin/python benchmarks/scale.py --sizes 5000,20000 --workdir /tmp/scale-quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HEADS = ("popularity", "knn", "ovr", "mlp")
RESULTS = REPO / "benchmarks" / "results"


def run(cmd: list[str], log: Path) -> dict:
    """Run a command; its wall seconds, ru_maxrss (MiB), sampled peak tree RSS (MiB), stdout."""
    import psutil

    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    with open(log, "ab") as err:
        err.write(f"\n$ {' '.join(cmd)}\n".encode())
        err.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env={**os.environ, "TQDM_DISABLE": "1"})
        peak, done = [0], threading.Event()

        def sample() -> None:
            parent = psutil.Process(proc.pid)
            while not done.is_set():
                try:
                    tree = [parent, *parent.children(recursive=True)]
                    peak[0] = max(peak[0], sum(p.memory_info().rss for p in tree if p.is_running()))
                except psutil.Error:
                    pass
                done.wait(0.2)

        watcher = threading.Thread(target=sample, daemon=True)
        watcher.start()
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        done.set()
        watcher.join()
    seconds = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {code}: see {log}")
    return {"seconds": round(seconds, 2), "maxrss_mib": round(usage.ru_maxrss / 1024, 1),
            "tree_mib": round(peak[0] / 2**20, 1), "load": [round(load0, 1), round(os.getloadavg()[0], 1)],
            "stdout": out.decode()}


READ_PASS = """
import sys, time
from stores import open_store
s = open_store(sys.argv[1]); t0 = time.perf_counter(); n = 0
for rows, got in s.iter_rows(what=("features",)):
    n += len(rows)
print(n, time.perf_counter() - t0)
"""


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measure(n: int, workdir: Path, steps: int, keep: bool, done: dict, save) -> None:
    key = str(n)
    res = done.setdefault(key, {})
    store = workdir / f"planted-{n}.zarr"
    log = workdir / f"scale-{n}.log"
    hk = str(BIN / "hashtagkit")
    if "prepare" not in res:
        if store.exists():
            shutil.rmtree(store)
        res["prepare"] = run([hk, "prepare", "planted", "-o", str(store), "--n", str(n)], log)
        res["store_bytes"] = du(store)
        save()
    if "read" not in res:
        res["read"] = run([str(BIN / "python"), "-c", READ_PASS, str(store)], log)
        save()
    for head in HEADS:
        if head in res:
            continue
        run_dir = workdir / f"run-{head}-{n}"
        sets = ["--set", f"iterations={steps}"] if head == "mlp" else []
        fit = run([hk, "fit", str(store), "--head", head, *sets, "-o", str(run_dir), "--overwrite"], log)
        ev = run([hk, "evaluate", str(run_dir), "--json"], log)
        record = json.loads((run_dir / "run.json").read_text())
        res[head] = {"fit": fit, "evaluate": ev, "metrics": json.loads(ev["stdout"]),
                     "fit_report": record.get("fit_report"), "n_train": record["n_train"]}
        for part in (fit, ev):
            part.pop("stdout", None)
        shutil.rmtree(run_dir)
        save()
        print(f"{n:>9,} {head:<10} fit {fit['seconds']:8.1f}s {fit['maxrss_mib']:7.0f} MiB "
              f"(tree {fit['tree_mib']:.0f})  P@1 {res[head]['metrics']['precision@1']:.4f}", file=sys.stderr)
    if not keep and store.exists():
        shutil.rmtree(store)


def results(path: Path) -> tuple[dict, Callable[[], None]]:
    """The results gathered so far in a JSON file (a rerun skips what is there) and a saver."""
    done = json.loads(path.read_text()) if path.is_file() else {}
    return done, lambda: path.write_text(json.dumps(done, indent=1))


def machine() -> str:
    return (f"{platform.platform()}, {os.cpu_count()} CPUs, "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB")


def commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()


def versions() -> str:
    import faiss
    import sklearn
    import torch
    import zarr

    return (f"Python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, "
            f"faiss {faiss.__version__}, scikit-learn {sklearn.__version__}, zarr {zarr.__version__}")


def load_range(done: dict) -> str:
    """The 1-min load averages recorded before and after every step, as a range."""
    loads = [x for r in done.values() for part in _parts(r) for x in part.get("load", [])]
    return f"1-min load average {min(loads):.1f}-{max(loads):.1f} over the steps" if loads else "not recorded"


def _parts(r: dict) -> list[dict]:
    return [r[k] for k in ("prepare", "read") if k in r] + [r[h][p] for h in HEADS if h in r for p in ("fit", "evaluate")]


def table(done: dict, steps: int, meta: dict) -> str:
    sizes = sorted(int(k) for k in done if "read" in done[k])  # a size still running shows what it has
    lines = [
        "# Scale: time and memory against the number of rows",
        "",
        f"Machine: {meta['machine']}; {meta['versions']}. Commit {meta['commit']}. "
        f"Load while measuring: {meta['load']}.",
        f"Command: `{meta['command']}` (`make bench-scale`). Planted stores, 8,192 float16 columns, "
        f"997 Zipf-shaped classes, 5,000 test rows (20% below 25,000 rows); MLP: `--set iterations={steps}` (preset fast, batch 512).",
        "Peak RSS: ru_maxrss of the step's largest process; tree: the sampled peak of all its processes together.",
        "",
        "| N | step | seconds | s per 1k rows | peak RSS MiB | tree MiB | P@1 | notes |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for n in sizes:
        r = done[str(n)]
        lines.append(f"| {n:,} | prepare | {r['prepare']['seconds']:.0f} | {1000 * r['prepare']['seconds'] / n:.2f} | "
                     f"{r['prepare']['maxrss_mib']:.0f} | {r['prepare']['tree_mib']:.0f} | | store {r['store_bytes'] / 2**30:.2f} GiB |")
        lines.append(f"| {n:,} | read + decode features | {r['read']['seconds']:.0f} | {1000 * r['read']['seconds'] / n:.2f} | "
                     f"{r['read']['maxrss_mib']:.0f} | {r['read']['tree_mib']:.0f} | | one pass, nothing else |")
        for head in (h for h in HEADS if h in r):
            h = r[head]
            rep = h.get("fit_report") or {}
            note = {"knn": rep.get("index", "").split(" (")[0] + (f", recall@{50} {rep['recall@50']}" if "recall@50" in rep else ""),
                    "ovr": f"{rep.get('rows_fitted', 0):,} rows fitted" if rep else "",
                    "mlp": f"{rep.get('data', '')} path, {rep.get('iterations', '')} steps" if rep else ""}.get(head, "")
            if rep.get("seconds"):  # the head's own phases (knn, ovr): where its time went
                note += "; s: " + ", ".join(f"{k.replace('_', ' ')} {v:.0f}" for k, v in rep["seconds"].items())
            lines.append(f"| {n:,} | {head} fit | {h['fit']['seconds']:.0f} | {1000 * h['fit']['seconds'] / n:.2f} | "
                         f"{h['fit']['maxrss_mib']:.0f} | {h['fit']['tree_mib']:.0f} | {100 * h['metrics']['precision@1']:.2f} | {note} |")
            lines.append(f"| {n:,} | {head} evaluate | {h['evaluate']['seconds']:.0f} | | {h['evaluate']['maxrss_mib']:.0f} | "
                         f"{h['evaluate']['tree_mib']:.0f} | | {h['metrics']['n_images']:,} test rows |")
    if len(sizes) >= 2:
        lo, hi = str(sizes[0]), str(sizes[-1])
        lines += ["", f"Targets, {sizes[-1]:,} rows against {sizes[0]:,}: peak RSS at most 1.5x; time per row within 2x.", "",
                  "| step | peak RSS ratio | tree ratio | time-per-row ratio |", "|---|---:|---:|---:|"]
        steps_of = [("prepare", lambda r: r["prepare"]), ("read + decode", lambda r: r["read"])] + \
            [(f"{h} fit", lambda r, h=h: r[h]["fit"]) for h in HEADS]
        for name, get in steps_of:
            try:
                a, b = get(done[lo]), get(done[hi])
            except KeyError:
                lines.append(f"| {name} | not measured at {sizes[-1]:,} | | |")
                continue
            per_row = (b["seconds"] / sizes[-1]) / (a["seconds"] / sizes[0])
            lines.append(f"| {name} | {b['maxrss_mib'] / a['maxrss_mib']:.2f} | {b['tree_mib'] / a['tree_mib']:.2f} | {per_row:.2f} |")
    return "\n".join(lines) + "\n"


def plot(done: dict, out: Path) -> None:
    from matplotlib.figure import Figure

    sizes = sorted(int(k) for k in done if "read" in done[k])
    fig = Figure(figsize=(10, 4.2))
    ax_t, ax_m = fig.subplots(1, 2)
    colors = {"popularity": "#7f7f7f", "knn": "#1f77b4", "ovr": "#2ca02c", "mlp": "#d62728",
              "prepare": "#9467bd", "read": "#8c564b"}
    for name in ("prepare", "read", *HEADS):
        get = (lambda r, name=name: r[name]) if name in ("prepare", "read") else (lambda r, name=name: r[name]["fit"])
        have = [n for n in sizes if name in done[str(n)]]
        t = [get(done[str(n)])["seconds"] for n in have]
        m = [get(done[str(n)])["tree_mib"] for n in have]
        label = {"read": "read + decode"}.get(name, name if name in ("prepare",) else f"{name} fit")
        ax_t.plot(have, t, "o-", color=colors[name], label=label)
        ax_m.plot(have, m, "o-", color=colors[name], label=label)
    ax_t.plot(sizes, [done[str(sizes[0])]["read"]["seconds"] * n / sizes[0] for n in sizes], "k:", label="linear")
    for ax, title, unit in ((ax_t, "wall time", "seconds"), (ax_m, "peak memory (process tree)", "MiB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("rows (N)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="57383,250000,1000000")
    parser.add_argument("--workdir", type=Path, default=REPO.parent / "tmp-scale")
    parser.add_argument("--mlp-steps", type=int, default=100)
    parser.add_argument("--keep", action="store_true", help="keep the stores")
    parser.add_argument("--out", type=Path, default=RESULTS / "scale.md")
    parser.add_argument("--render", nargs="*", type=Path, metavar="JSON",
                        help="only write the table and plot from these results files (merged), measuring nothing")
    parser.add_argument("--load-note", help="with --render: what the load was, for results that did not record it")
    args = parser.parse_args()
    if args.render is not None:
        done = {}
        for path in args.render:
            done.update(json.loads(path.read_text()))
        meta = {"machine": machine(), "versions": versions(), "commit": commit(),
                "load": args.load_note or load_range(done),
                "command": "python benchmarks/scale.py " + " ".join(sys.argv[1:])}
        args.out.write_text(table(done, args.mlp_steps, meta))
        plot(done, args.out.with_suffix(".png"))
        print(args.out.read_text())
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    done, save = results(args.workdir / "scale.json")
    for n in (int(s) for s in args.sizes.split(",")):
        measure(n, args.workdir, args.mlp_steps, args.keep, done, save)
    meta = {"machine": machine(), "versions": versions(), "commit": commit(), "load": load_range(done),
            "command": "python benchmarks/scale.py " + " ".join(sys.argv[1:])}
    args.out.write_text(table(done, args.mlp_steps, meta))
    plot(done, args.out.with_suffix(".png"))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
