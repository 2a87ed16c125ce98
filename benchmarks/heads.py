"""Every head x feature view on the planted HARRISON-size store, plus two reference comparisons.

    python benchmarks/heads.py [--store PLANTED.zarr] [--labels ../shared/harrison]
                               [--heads popularity,knn,ovr,mlp] [--views both,object,scene]

Each (head, view) runs in its own process (fit on train, score the test split), so its peak
resident memory is its own. Then:

- the FAISS kNN head's neighbour search against scikit-learn's brute-force cosine
  `NearestNeighbors` (same k, same inputs): identical neighbours, and the time ratio;
- one epoch of the torch MLP (bf16 autocast where the CPU has it) against one epoch of
  scikit-learn's `MLPClassifier` with the same layers, on the same rows.

Writes a Markdown table with the machine and versions to benchmarks/results/heads.md. Without
--store it makes the planted store (HARRISON's labels when --labels is given) in a cache folder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from hashtagkit import metrics, provenance

HERE = Path(__file__).resolve().parent


def run_one(store: str, head: str, view: str, params: dict) -> dict:
    """Fit and score one combination in this process; peak RSS includes reading the features."""
    from hashtagkit.heads import make_head
    from hashtagkit.stores import open_store

    s = open_store(store)
    train, test = s.split_rows("train"), s.split_rows("test")
    h = make_head(head, **params)
    Xtr = s.features(view, train) if h.needs_features else np.zeros((len(train), 0), np.float32)
    Xte = s.features(view, test) if h.needs_features else np.zeros((len(test), 0), np.float32)
    t0 = time.perf_counter()
    h.fit(Xtr, s.labels(train))
    fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = h.predict_proba(Xte)
    predict = time.perf_counter() - t0
    y = s.labels(test)
    out = {"head": head, "view": view if h.needs_features else "-", "params": params, "fit_s": fit, "predict_s": predict,
           "P@1": metrics.precision_at_k(scores, y, 1), "R@5": metrics.recall_at_k(scores, y, 5),
           "A@5": metrics.accuracy_at_k(scores, y, 5),
           "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if head == "mlp":
        out["epochs"] = len(h.history_["epochs"])
        out["iterations"] = h.history_["iterations"]
    return out


def knn_vs_sklearn(store: str, k: int = 50, n_queries: int = 1000) -> dict:
    """Same neighbours as scikit-learn brute force, and how much faster (exact index, no PCA)."""
    from sklearn.neighbors import NearestNeighbors

    from hashtagkit.heads import KNNHead
    from hashtagkit.stores import open_store

    s = open_store(store)
    X = s.features("both", s.split_rows("train")).astype(np.float32)
    Q = s.features("both", s.split_rows("test")[:n_queries]).astype(np.float32)
    head = KNNHead(k=k, pca=None).fit(X, s.labels(s.split_rows("train")))
    t0 = time.perf_counter()
    _, ids = head.kneighbors(Q)
    ours = time.perf_counter() - t0
    ref = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(X)
    t0 = time.perf_counter()
    _, ref_ids = ref.kneighbors(Q)
    theirs = time.perf_counter() - t0
    same = float(np.mean([set(a) == set(b) for a, b in zip(ids, ref_ids, strict=True)]))
    return {"k": k, "queries": n_queries, "train": len(X), "faiss_s": ours, "sklearn_s": theirs, "same_sets": same,
            "same_order": float(np.mean(ids == ref_ids))}


def mlp_epoch_vs_sklearn(store: str, rows: int = 4000) -> dict:
    """One epoch, same layers (in -> 4096 -> 4096 -> C, ReLU), same batch, same rows."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    from hashtagkit.heads import MLPHead
    from hashtagkit.stores import open_store

    s = open_store(store)
    tr = s.split_rows("train")[:rows]
    X, Y = s.features("both", tr), s.labels(tr)
    keep = Y.any(axis=0)  # scikit-learn needs every output column to have both classes
    Y = Y[:, keep & ~Y.all(axis=0)]
    ours = MLPHead(epochs=1, val_fraction=0.0, batch_size=100, dropout=0.0)
    t0 = time.perf_counter()
    ours.fit(X, Y)
    torch_s = time.perf_counter() - t0
    ref = MLPClassifier(hidden_layer_sizes=(4096, 4096), batch_size=100, max_iter=1, solver="adam", random_state=0)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref.fit(X.astype(np.float32), Y)
    sk_s = time.perf_counter() - t0
    return {"rows": rows, "outputs": int(Y.shape[1]), "torch_s": torch_s, "sklearn_s": sk_s,
            "precision": ours.history_["precision"]}


def paper_preset_projection(store: str, iterations: int = 30) -> dict:
    """Seconds per iteration of the `paper` preset (SGD, batch 100), projected to its 100,000."""
    from hashtagkit.heads import MLPHead
    from hashtagkit.stores import open_store

    s = open_store(store)
    tr = s.split_rows("train")[:20000]
    head = MLPHead(preset="paper", iterations=iterations)
    t0 = time.perf_counter()
    head.fit(s.features("both", tr), s.labels(tr))
    per_iter = (time.perf_counter() - t0) / iterations
    return {"iterations": iterations, "s_per_iter": per_iter, "projected_h": per_iter * 100_000 / 3600,
            "precision": head.history_["precision"]}


def ensure_store(args) -> str:
    if args.store:
        return args.store
    cache = HERE / ".cache"
    store = cache / "planted-harrison.zarr"
    if not store.exists():
        cmd = [sys.executable, "-m", "hashtagkit.cli.main", "prepare", "planted", "-o", str(store)]
        if args.labels:
            cmd += ["--labels", args.labels]
        subprocess.run(cmd, check=True)
    return str(store)


def table(results: list[dict], extra: dict, store_info: dict) -> str:
    v = provenance.versions()
    lines = [
        "# Heads on the planted HARRISON-size store",
        "",
        f"`python benchmarks/heads.py` (`make bench-heads`), {provenance.now()}.",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}. Versions: torch {v.get('torch')}, "
        f"faiss-cpu {v.get('faiss-cpu')}, scikit-learn {v.get('scikit-learn')}, numpy {v.get('numpy')}, "
        f"Python {v.get('python')}.",
        f"Store: {store_info['rows']:,} rows ({store_info['split']['train']:,} train / {store_info['split']['test']:,} test), "
        f"{store_info['classes']} classes, labels from {store_info['source'].get('labels', '?')}, 4,096 + 4,096 planted "
        "features (classes with id % 3 == 1 visible in the object block, == 2 in the scene block, == 0 nowhere).",
        "Each row is one process: fit on train, score the test split. Peak memory is that process's maximum RSS "
        "(it includes the float16 features read from the store).",
        "",
        "| head | view | P@1 | R@5 | A@5 | fit s | predict s | peak MB | notes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        notes = json.dumps(r["params"]) if r["params"] else ""
        if "epochs" in r:
            notes += f" {r['epochs']} epochs / {r['iterations']:,} iterations"
        lines.append(f"| {r['head']} | {r['view']} | {100 * r['P@1']:.2f} | {100 * r['R@5']:.2f} | {100 * r['A@5']:.2f} | "
                     f"{r['fit_s']:.1f} | {r['predict_s']:.2f} | {r['peak_mb']:,.0f} | {notes} |")
    if "knn" in extra:
        k = extra["knn"]
        lines += ["", "## FAISS kNN against scikit-learn brute force", "",
                  f"Exact cosine search, k = {k['k']}, {k['queries']:,} test queries against {k['train']:,} training rows, "
                  "8,192-d (no PCA), float32.", "",
                  "| | seconds | same neighbour sets | same order |", "|---|---:|---:|---:|",
                  f"| faiss IndexFlatIP | {k['faiss_s']:.2f} | {100 * k['same_sets']:.1f}% | {100 * k['same_order']:.1f}% |",
                  f"| scikit-learn NearestNeighbors(metric='cosine', algorithm='brute') | {k['sklearn_s']:.2f} | | |",
                  "", f"Time ratio in this run: scikit-learn / faiss = **{k['sklearn_s'] / k['faiss_s']:.1f}x**."]
    if "mlp" in extra:
        m = extra["mlp"]
        lines += ["", "## One MLP epoch against scikit-learn's MLPClassifier", "",
                  f"Same layers (8,192 -> 4,096 -> 4,096 -> {m['outputs']}, ReLU), batch 100, one epoch over the same "
                  f"{m['rows']:,} rows (Adam in both).", "",
                  "| | seconds |", "|---|---:|",
                  f"| hashtagkit mlp (torch, {m['precision']}) | {m['torch_s']:.1f} |",
                  f"| scikit-learn MLPClassifier (float32) | {m['sklearn_s']:.1f} |",
                  "", f"Time ratio in this run: scikit-learn / torch = **{m['sklearn_s'] / m['torch_s']:.1f}x**."]
    if "paper" in extra:
        p = extra["paper"]
        lines += ["", "## The `paper` preset's cost here", "",
                  f"{p['iterations']} iterations of the paper's schedule (SGD, batch 100, {p['precision']}) took "
                  f"{p['s_per_iter']:.2f} s each (including setup), so its 100,000 iterations would take about "
                  f"**{p['projected_h']:.1f} hours** on this machine: that is why `fast` is the default and why the `mlp` "
                  "rows above use it (capped as noted)."]
    return "\n".join(lines) + "\n"


DEFAULT_PARAMS = {"mlp": {}, "knn": {}, "ovr": {}, "popularity": {}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store")
    ap.add_argument("--labels", help="HARRISON label files, to make the planted store from HARRISON's labels")
    ap.add_argument("--heads", default="popularity,knn,ovr,mlp")
    ap.add_argument("--views", default="both,object,scene")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="HEAD.KEY=VALUE",
                    help="e.g. mlp.preset=paper (JSON values)")
    ap.add_argument("--skip-references", action="store_true", help="skip the scikit-learn comparisons")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "heads.md")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one combination as JSON
    args = ap.parse_args()
    if args.one:
        head, view, params = json.loads(args.one)
        print(json.dumps(run_one(args.store, head, view, params)))
        return
    store = ensure_store(args)
    params = {h: dict(p) for h, p in DEFAULT_PARAMS.items()}
    for item in args.sets:
        key, _, value = item.partition("=")
        head, _, name = key.partition(".")
        try:
            params.setdefault(head, {})[name] = json.loads(value)
        except json.JSONDecodeError:
            params.setdefault(head, {})[name] = value
    results = []
    for head in args.heads.split(","):
        for view in (args.views.split(",") if head != "popularity" else ["both"]):
            cmd = [sys.executable, __file__, "--store", store, "--one", json.dumps([head, view, params.get(head, {})])]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{head}/{view} failed:\n{proc.stderr[-2000:]}")
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            r = results[-1]
            print(f"{head:10} {r['view']:7} P@1 {100 * r['P@1']:.2f} R@5 {100 * r['R@5']:.2f} A@5 {100 * r['A@5']:.2f} "
                  f"fit {r['fit_s']:.1f}s", flush=True)
    extra = {}
    if not args.skip_references:
        extra["knn"] = knn_vs_sklearn(store)
        extra["mlp"] = mlp_epoch_vs_sklearn(store)
        extra["paper"] = paper_preset_projection(store)
    from hashtagkit.stores import open_store

    text = table(results, extra, open_store(store).info())
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
