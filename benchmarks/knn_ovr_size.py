"""kNN and ovr at size (issue #13, items 3 and 4): what the bounded-memory fitting costs in
quality, time and memory.

Two planted stores (8,192 float16 columns, 997 classes, 5,000 test rows):

- HARRISON size (57,383 rows; HARRISON's labels with --labels, else Zipf-shaped): ovr and knn
  with their defaults, fitted by this code and by the code before the change (--previous, a
  commit: its `hashtagkit` package is exported and run with PYTHONPATH, same store, same
  machine, same harness), so quality, time and memory are compared like for like;
- a larger store (--n, default 300,000 rows, Zipf labels): knn with the index chosen by size
  (auto: IVF-PQ above exact_limit rows when the flat vectors exceed index_mb), with IVF on
  whole vectors and with exact Flat (its recorded recall@50 against exact search, and P@1
  against Flat), and ovr with the default max_rows (100,000: a seeded sample) against all rows.

Every step is its own `hashtagkit fit` / `hashtagkit evaluate` process, measured as in
benchmarks/scale.py (wall time; ru_maxrss of the largest process; sampled peak RSS of the whole
process tree, ovr's joblib workers included). Results accumulate in WORKDIR/knn_ovr_size.json (a
rerun skips what is there); the table goes to benchmarks/results/knn_ovr_size.md.

    nice .venv/bin/python benchmarks/knn_ovr_size.py --workdir ../tmp-knn --labels ../shared/harrison
    .venv/bin/python benchmarks/knn_ovr_size.py --small 2000 --n 3000 --workdir /tmp/kos-quick --out /tmp/kos.md  # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import BIN, REPO, RESULTS, commit, du, machine, results, run, versions  # noqa: E402  (the same measuring harness)

HARRISON_N = 57_383
PREVIOUS = "b215489"  # main before kNN / ovr fitted from blocks (both read every row into RAM)


def steps(n: int, have_previous: bool) -> list[dict]:
    """(store, head, --set values, code) of every measured step, in running order."""
    out = []
    for head in ("ovr", "knn"):
        if have_previous:
            out.append({"store": "harrison", "head": head, "sets": [], "code": "previous"})
        out.append({"store": "harrison", "head": head, "sets": [], "code": "this"})
    out += [{"store": "large", "head": "knn", "sets": [], "code": "this"},
            {"store": "large", "head": "knn", "sets": ["index=ivf"], "code": "this"},
            {"store": "large", "head": "knn", "sets": ["index=flat"], "code": "this"},
            {"store": "large", "head": "ovr", "sets": [], "code": "this"},
            {"store": "large", "head": "ovr", "sets": [f"max_rows={n}"], "code": "this"}]
    return out


def key(step: dict) -> str:
    return f"{step['store']}/{step['head']}/{','.join(step['sets']) or 'default'}/{step['code']}"


def measure(step: dict, store: Path, workdir: Path, previous: Path | None) -> dict:
    """Fit and evaluate one step; the run directory is deleted afterwards."""
    cli = [str(BIN / "python"), "-P", "-m", "hashtagkit.cli.main"]  # -P: not the package in the cwd
    if step["code"] == "previous":  # env execs python: the measured process is still the fitting one
        cli = ["env", f"PYTHONPATH={previous}", *cli]
    run_dir = workdir / f"run-{key(step).replace('/', '-').replace('=', '')}"
    sets = [a for s in step["sets"] for a in ("--set", s)]
    log = workdir / "knn_ovr_size.log"
    fit = run([*cli, "fit", str(store), "--head", step["head"], *sets, "-o", str(run_dir), "--overwrite"], log)
    ev = run([*cli, "evaluate", str(run_dir), "--json"], log)
    record = json.loads((run_dir / "run.json").read_text())
    shutil.rmtree(run_dir)
    for part in (fit, ev):
        metrics = part.pop("stdout")
    return {**step, "fit": fit, "evaluate": ev, "metrics": json.loads(metrics), "n_train": record["n_train"],
            "fit_report": record.get("fit_report") or {}}


def note(r: dict) -> str:
    rep = r["fit_report"]
    if r["head"] == "knn" and rep:
        recall = next((f", recall@{k.split('@')[1]} {v:.3f} on {rep['recall_queries']:,} queries"
                       for k, v in rep.items() if k.startswith("recall@")), "")
        return rep["index"].replace(" (approximate cosine)", "").replace(" (exact cosine)", "") + recall
    if r["head"] == "ovr" and rep:
        return f"{rep['rows_fitted']:,} of {rep['rows']:,} rows fitted"
    return "every row read into RAM" if r["code"] == "previous" else ""


def table(done: dict, meta: dict) -> str:
    lines = [
        "# kNN and ovr at size",
        "",
        f"Machine: {meta['machine']}; {meta['versions']}. Commit {meta['commit']}; `previous` = {PREVIOUS} "
        "(before the heads were fitted block by block). "
        f"Load while measuring: {meta['load']}.",
        f"Command: `{meta['command']}` (`make bench-knn-ovr`). Stores: {meta['stores']}.",
        "Each step is its own process: fit on the train split (from the store), then evaluate the test split. "
        "Peak RSS: ru_maxrss of the step's largest process; tree: the sampled peak of all its processes together "
        "(ovr's joblib workers). Quote ratios within this table only: the machine is shared.",
        "",
        "| store | head | code | settings | train rows | fit s | s per 1k rows | peak RSS MiB | tree MiB | evaluate s "
        "| P@1 | R@5 | A@5 | notes |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in done.values():
        m = r["metrics"]
        lines.append(
            f"| {r['store_rows']:,} | {r['head']} | {r['code']} | {', '.join(r['sets']) or 'defaults'} | {r['n_train']:,} | "
            f"{r['fit']['seconds']:.0f} | {1000 * r['fit']['seconds'] / r['n_train']:.2f} | {r['fit']['maxrss_mib']:,.0f} | "
            f"{r['fit']['tree_mib']:,.0f} | {r['evaluate']['seconds']:.0f} | {100 * m['precision@1']:.2f} | "
            f"{100 * m['recall@5']:.2f} | {100 * m['accuracy@5']:.2f} | {note(r)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300_000, help="rows of the larger store")
    parser.add_argument("--small", type=int, default=HARRISON_N, help="rows of the HARRISON-size store")
    parser.add_argument("--labels", help="HARRISON label files for the HARRISON-size store")
    parser.add_argument("--previous", default=PREVIOUS, help="commit to compare with at HARRISON size ('' to skip)")
    parser.add_argument("--workdir", type=Path, default=REPO.parent / "tmp-knn")
    parser.add_argument("--keep", action="store_true", help="keep the stores")
    parser.add_argument("--out", type=Path, default=RESULTS / "knn_ovr_size.md")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    done, save = results(args.workdir / "knn_ovr_size.json")
    stores = {"harrison": (args.workdir / f"planted-{args.small}.zarr", args.small, args.labels),
              "large": (args.workdir / f"planted-{args.n}.zarr", args.n, None)}
    previous = None
    if args.previous:
        previous = args.workdir / f"previous-{args.previous}"
        if not previous.is_dir():
            previous.mkdir()
            archive = subprocess.run(["git", "archive", args.previous, "hashtagkit"], cwd=REPO, check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(previous)], input=archive, check=True)
    loads, log = [], args.workdir / "knn_ovr_size.log"
    for name, (path, n, labels) in stores.items():
        todo = [s for s in steps(args.n, previous is not None) if s["store"] == name and key(s) not in done]
        if not todo:
            continue
        if not path.exists():
            cmd = [str(BIN / "hashtagkit"), "prepare", "planted", "-o", str(path), "--n", str(n)]
            run(cmd + (["--labels", labels] if labels else []), log)
        for step in todo:
            loads.append(os.getloadavg()[0])
            done[key(step)] = {**measure(step, path, args.workdir, previous), "store_rows": n,
                               "store_gib": round(du(path) / 2**30, 2)}
            save()
            r = done[key(step)]
            print(f"{key(step):<40} fit {r['fit']['seconds']:7.1f}s {r['fit']['maxrss_mib']:7.0f} MiB "
                  f"(tree {r['fit']['tree_mib']:.0f}) P@1 {r['metrics']['precision@1']:.4f}  {note(r)}", file=sys.stderr)
        if not args.keep:
            shutil.rmtree(path)
    meta = {"machine": machine(), "versions": versions(), "commit": commit(),
            "load": "1-min load average " + (", ".join(f"{x:.1f}" for x in loads) or "?") + " at the start of each step",
            "command": "python benchmarks/knn_ovr_size.py " + " ".join(sys.argv[1:]),
            "stores": "; ".join(sorted({f"{r['store_rows']:,} rows, {r['store_gib']} GiB" for r in done.values()}))
            + f"; labels of the {args.small:,}-row store: {'HARRISON' if args.labels else 'Zipf-shaped'}"}
    args.out.write_text(table(done, meta))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
