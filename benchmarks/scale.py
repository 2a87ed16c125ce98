"""Time and peak memory of every step against the number of rows (issue #13, item 7).

    python benchmarks/scale.py [--sizes 57383,250000,1000000] [--dir /work/tmp-scale]
                               [--heads popularity,knn,ovr,mlp] [--iterations 200] [--keep]
    python benchmarks/scale.py --render      # table and plot from benchmarks/results/scale.json

For each size N: `hashtagkit prepare planted --n N` (8,192 float16 columns, Zipf labels of 997
classes, a 5,000-row test split), one pass reading the features alone (cold I/O, decoding,
float16 -> float32: where the time goes), then for each head `hashtagkit fit` and `hashtagkit
evaluate` (the test split). Every step is its own subprocess, timed by wall clock, its peak
resident memory taken from `os.wait4` (ru_maxrss: the largest single process, the step itself
or a child it waited for) and, sampled every 0.2 s with psutil, the peak of the sum over the
step's process tree (the MLP's prefetching workers are processes of their own). The MLP trains
a fixed number of steps (`--set iterations=...`), the same at every size, so its rows compare.

Results are merged into benchmarks/results/scale.json by (N, step), so sizes may be run at
different times; scale.md (table with machine, versions, load, commit, and the targets checked)
and scale.png (log-log time and peak RSS against N) are rendered from all of it. Each store is
deleted once its size is done, unless --keep.
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
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
DEFAULT_SIZES = (57_383, 250_000, 1_000_000)
HEADS = ("popularity", "knn", "ovr", "mlp")
TEST_ROWS = 5000  # prepare planted's default test split above 25,000 rows (20% below)
CLI = [sys.executable, "-m", "hashtagkit.cli.main"]


def tree_rss(proc) -> int:
    """Resident bytes of a process and all its descendants (0 once it is gone)."""
    try:
        procs = [proc, *proc.children(recursive=True)]
    except Exception:  # noqa: BLE001 - gone
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except Exception:  # noqa: BLE001 - a child that just exited
            pass
    return total


def measure(cmd: list[str], log: Path) -> dict:
    """Run `cmd` (stdout and stderr to `log`); wall seconds, ru_maxrss and the tree's peak RSS."""
    import psutil

    load = os.getloadavg()[0]
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(map(str, cmd))}\n".encode())
        out.flush()
        t0 = time.perf_counter()
        child = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=out, cwd=ROOT)
        peak, stop = [0], threading.Event()

        def sample() -> None:
            proc = psutil.Process(child.pid)
            while not stop.is_set():
                peak[0] = max(peak[0], tree_rss(proc))
                stop.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - t0
        stop.set()
        sampler.join()
        child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"failed ({child.returncode}): {' '.join(map(str, cmd))}; see {log}")
    return {"wall_s": round(wall, 2), "maxrss_mb": round(usage.ru_maxrss / 1024, 1),
            "tree_peak_mb": round(peak[0] / 2**20, 1), "load": round(max(load, os.getloadavg()[0]), 2)}


def read_pass(store_path: str) -> dict:
    """One pass over the features, split into where time goes: reading the chunk files cold
    (their pages dropped first with posix_fadvise, so the disk is read, not the page cache;
    only this store's pages, nothing else on the machine), decoding them through Zarr (zstd,
    from the page cache the first step filled, when it still holds them) and converting float16
    to float32 as a head's batch does."""
    import numpy as np

    from hashtagkit.stores import open_store

    store = open_store(store_path)
    files = sorted(p for p in (Path(store_path) / "features").rglob("*") if p.is_file())
    t0, nbytes = time.perf_counter(), 0
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)  # pages just written by prepare are dirty: written back first, else not dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            while chunk := os.read(fd, 8 << 20):
                nbytes += len(chunk)
        finally:
            os.close(fd)
    io_s = time.perf_counter() - t0
    decode_s = convert_s = 0.0
    t0 = time.perf_counter()
    for _, data in store.iter_rows(what=("features",)):
        t1 = time.perf_counter()
        data["features"].astype(np.float32)
        convert_s += time.perf_counter() - t1
    decode_s = time.perf_counter() - t0 - convert_s
    raw = store.n_rows * store.group["features"].shape[1] * 2
    return {"io_s": round(io_s, 2), "decode_s": round(decode_s, 2), "convert_s": round(convert_s, 2),
            "compressed_gb": round(nbytes / 1e9, 2), "raw_gb": round(raw / 1e9, 2),
            "io_mb_s": round(nbytes / 1e6 / max(io_s, 1e-9), 1)}


def du_gb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e9, 3)


def run_size(n: int, work: Path, heads: list[str], iterations: int, keep: bool) -> list[dict]:
    store, runs, log = work / f"planted-{n}.zarr", work / f"runs-{n}", work / f"scale-{n}.log"
    runs.mkdir(parents=True, exist_ok=True)
    train, rows = n - (TEST_ROWS if n > 25_000 else round(0.2 * n)), []  # prepare planted's default split

    def add(step: str, per: int, res: dict, **extra) -> None:
        rows.append({"n": n, "step": step, "rows": per, "us_per_row": round(1e6 * res["wall_s"] / per, 2), **res,
                     **extra})
        print(json.dumps(rows[-1]), flush=True)

    res = measure([*CLI, "prepare", "planted", "-o", store, "--n", n, "--seed", "0", "--overwrite"], log)
    add("prepare", n, res, store_gb=du_gb(store))
    out = work / f"read-{n}.json"
    res = measure([sys.executable, __file__, "--read-pass", store, "--read-out", out], log)
    add("read features", n, res, **json.loads(out.read_text()))
    for head in heads:
        run = runs / head
        # a fixed number of steps of a fixed batch: the same training work at every size
        sets = ["--set", f"iterations={iterations}", "--set", "batch_size=512"] if head == "mlp" else []
        res = measure([*CLI, "fit", store, "--head", head, *sets, "-o", run, "--overwrite"], log)
        made = json.loads((run / "run.json").read_text())
        report = made.get("fit_report") or {}
        add(f"fit {head}", train, res, fit_report={k: v for k, v in report.items() if not isinstance(v, (list, dict))})
        metrics_file = run / "metrics.json"
        res = measure([sys.executable, __file__, "--evaluate", run, "--eval-out", metrics_file], log)
        got = json.loads(metrics_file.read_text())
        add(f"evaluate {head}", n, res, p_at_1=round(100 * got["precision@1"], 2), n_images=got["n_images"])
    if not keep:
        shutil.rmtree(store)
        shutil.rmtree(runs)
    return rows


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                               text=True).stdout.strip()
        return out.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except OSError:
        return "unknown"


def merge(results: Path, new_rows: list[dict], meta: dict) -> dict:
    """Keep earlier rows of other (N, step) pairs: sizes may be measured in separate runs. A run
    is known by its date: merging again during the same run replaces its record."""
    old = json.loads(results.read_text()) if results.is_file() else {"rows": [], "runs": []}
    done = {(r["n"], r["step"]) for r in new_rows}
    rows = [r for r in old["rows"] if (r["n"], r["step"]) not in done] + new_rows
    rows.sort(key=lambda r: (r["n"], r["step"]))
    runs = [m for m in old.get("runs", []) if m["date"] != meta["date"]]
    kept = {r["n"] for r in rows}  # a run whose every size was measured again is no longer described
    runs = [m for m in runs if set(m.get("sizes_done", m["sizes"])) & (kept - done_sizes(new_rows))]
    return {"rows": rows, "runs": [*runs, meta]}


def done_sizes(rows: list[dict]) -> set[int]:
    return {r["n"] for r in rows}


def steps_of(rows: list[dict]) -> list[str]:
    order = ["prepare", "read features"] + [f"{v} {h}" for h in HEADS for v in ("fit", "evaluate")]
    present = {r["step"] for r in rows}
    return [s for s in order if s in present]


def checks(rows: list[dict]) -> list[str]:
    """The targets: peak RSS at the largest N at most 1.5x at the smallest, time per row within 2x."""
    sizes = sorted({r["n"] for r in rows})
    if len(sizes) < 2:
        return ["(one size only: nothing to compare)"]
    lo, hi = sizes[0], sizes[-1]
    lines = [f"| step | peak RSS at {hi:,} / at {lo:,} (target <= 1.5) | time per row, max / min over sizes (target <= 2) |",
             "|---|---:|---:|"]
    by = {(r["n"], r["step"]): r for r in rows}
    for step in steps_of(rows):
        if (lo, step) not in by or (hi, step) not in by:
            continue
        peak = lambda r: max(r["maxrss_mb"], r["tree_peak_mb"])  # noqa: E731
        ratio = peak(by[hi, step]) / max(peak(by[lo, step]), 1e-9)
        per_row = [by[n, step]["us_per_row"] for n in sizes if (n, step) in by]
        spread = max(per_row) / max(min(per_row), 1e-9)
        lines.append(f"| {step} | {ratio:.2f} {'ok' if ratio <= 1.5 else 'MISSED'} | "
                     f"{spread:.2f} {'ok' if spread <= 2 else 'MISSED'} |")
    return lines


def render(data: dict, md: Path, png: Path) -> None:
    rows = data["rows"]
    runs = data.get("runs", [])
    lines = [
        "# Scale: time and peak memory against N (planted stores, 8,192 float16 columns, 997 classes)", "",
        "`make bench-scale` (benchmarks/scale.py). Every step is its own process: wall seconds, peak RSS of the "
        "largest process (`ru_maxrss` from `os.wait4`) and of the whole process tree (psutil, sampled every 0.2 s). "
        "Per row: prepare, read and evaluate per store row (the 5,000-row test split is spread over every chunk, "
        "so evaluating it decodes the whole store), fit per training row.", "",
    ]
    for m in runs:
        lines.append(f"- Run {m['date']}: sizes {', '.join(f'{n:,}' for n in m.get('sizes_done', m['sizes']))}; commit {m['commit']}; "
                     f"machine {m['machine']}; {m['versions']}; load average {m['load_before']} before, "
                     f"{m['load_after']} after (a machine shared with other jobs: seconds are noisy); "
                     f"MLP {m['iterations']} iterations of 512 rows.")
    lines += ["", "| N | step | wall s | µs / row | peak RSS MB (process) | peak RSS MB (tree) | load | notes |",
              "|---:|---|---:|---:|---:|---:|---:|---|"]
    for r in sorted(rows, key=lambda r: (r["n"], steps_of(rows).index(r["step"]))):
        notes = []
        if "store_gb" in r:
            notes.append(f"store {r['store_gb']} GB on disk")
        if "io_s" in r:
            notes.append(f"cold read {r['io_s']} s ({r['io_mb_s']} MB/s of {r['compressed_gb']} GB), decode "
                         f"{r['decode_s']} s, float16->32 {r['convert_s']} s ({r['raw_gb']} GB raw)")
        if "p_at_1" in r:
            notes.append(f"P@1 {r['p_at_1']}% on {r['n_images']:,}")
        rep = r.get("fit_report") or {}
        notes += [f"{k} {v}" for k, v in rep.items() if k not in ("device",)]
        lines.append(f"| {r['n']:,} | {r['step']} | {r['wall_s']} | {r['us_per_row']} | {r['maxrss_mb']} | "
                     f"{r['tree_peak_mb']} | {r['load']} | {'; '.join(notes)} |")
    lines += ["", "## Targets", "", *checks(rows), ""]
    md.write_text("\n".join(lines) + "\n")
    plot(rows, png)


def plot(rows: list[dict], png: Path) -> None:
    from matplotlib.figure import Figure

    from hashtagkit.plots import HEAD_COLORS

    fig = Figure(figsize=(11, 4.5))
    axes = fig.subplots(1, 2)
    for step in steps_of(rows):
        pts = sorted((r["n"], r["wall_s"], max(r["maxrss_mb"], r["tree_peak_mb"])) for r in rows if r["step"] == step)
        if not pts:
            continue
        head = step.split()[-1]
        style = {"color": HEAD_COLORS.get(head, "black"), "linestyle": "--" if step.startswith("evaluate") else "-",
                 "marker": "o", "markersize": 4}
        if step in ("prepare", "read features"):
            style.update(color="#8c564b" if step == "prepare" else "#bcbd22")
        ns = [p[0] for p in pts]
        axes[0].plot(ns, [p[1] for p in pts], label=step, **style)
        axes[1].plot(ns, [p[2] for p in pts], label=step, **style)
    for ax, what in zip(axes, ("wall time (s)", "peak RSS (MB)"), strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("rows N")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_title("time: linear in N is a slope of 1")
    axes[1].set_title("memory: flat in N is a slope of 0")
    axes[1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)))
    ap.add_argument("--dir", default="/work/tmp-scale", help="Where stores and runs are written (GBs at 1M rows).")
    ap.add_argument("--heads", default=",".join(HEADS))
    ap.add_argument("--iterations", type=int, default=200, help="MLP training steps, the same at every size.")
    ap.add_argument("--keep", action="store_true", help="Keep each size's store and runs.")
    ap.add_argument("--results", default=str(RESULTS / "scale.json"))
    ap.add_argument("--render", action="store_true", help="Only render scale.md and scale.png from the results.")
    ap.add_argument("--read-pass", help=argparse.SUPPRESS)
    ap.add_argument("--read-out", help=argparse.SUPPRESS)
    ap.add_argument("--evaluate", help=argparse.SUPPRESS)
    ap.add_argument("--eval-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.read_pass:  # the child of the "read features" step
        Path(args.read_out).write_text(json.dumps(read_pass(args.read_pass)))
        return
    if args.evaluate:  # the child of an "evaluate" step: `hashtagkit evaluate --json`, kept
        from hashtagkit.evaluate import evaluate_run

        Path(args.eval_out).write_text(json.dumps(evaluate_run(args.evaluate, ks=(1, 5))))
        return
    results = Path(args.results)
    md, png = results.with_suffix(".md"), results.with_suffix(".png")
    if args.render:
        render(json.loads(results.read_text()), md, png)
        return
    sizes = [int(s) for s in args.sizes.split(",") if s]
    heads = [h for h in args.heads.split(",") if h]
    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    from hashtagkit import provenance

    v = provenance.versions()
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "sizes": sizes, "commit": git_commit(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                       f"{round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB RAM, "
                       f"{platform.platform()}",
            "versions": ", ".join(f"{k} {v[k]}" for k in ("python", "numpy", "zarr", "torch", "faiss-cpu", "scikit-learn")
                                  if k in v),
            "load_before": ", ".join(f"{x:.2f}" for x in os.getloadavg()), "iterations": args.iterations}
    rows = []
    for n in sizes:
        print(f"--- {n:,} rows; disk free {shutil.disk_usage(work).free / 1e9:.0f} GB", flush=True)
        rows += run_size(n, work, heads, args.iterations, args.keep)
        meta["load_after"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        meta["sizes_done"] = sorted({r["n"] for r in rows})
        data = merge(results, rows, meta)  # after each size: an interrupted run keeps what it measured
        results.write_text(json.dumps(data, indent=1) + "\n")
        render(data, md, png)
    print(f"wrote {md} and {png}")


if __name__ == "__main__":
    main()
