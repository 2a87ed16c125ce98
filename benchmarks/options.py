"""The options of issue #15 (items 3-5) against the plain heads, over seeds, on one store.

Per seed, every run is fitted once through `fit` with `--rerank cooc --threshold per-tag`
(chosen on validation rows as `hashtagkit fit` chooses them) and scored on the test split three
ways: `evaluate --raw` (the head alone: the "without" rows), `evaluate` (re-ranked, F1 at the
per-tag thresholds) and F1 at the run's global threshold (the same re-ranked test scores). So
"with" and "without" re-ranking are the same fitted head, and mlp vs mlp+asl differ only in
the loss. Variants: mlp (the paper's loss), mlp loss=asl (paper defaults 0/4/0.05), the same with
gamma- = 1 and clip 0, knn. Besides the per-image metrics (P@1, R@5, A@5, mAP per image: each image
ranks the tags) the table has mAP per class (each tag ranks the images: the asymmetric loss
paper's metric), which a per-tag shift of the scores leaves unchanged.

    nice -n 10 .venv/bin/python benchmarks/options.py --store STORE --out benchmarks/results/beyond/options_demo.md \
        --workdir ../tmp-options/demo --seeds 0,1,2 --mlp-hidden 1024 --mlp-epochs 6

Metrics are numbers of the test split, not times: the fit seconds shown are of a shared,
loaded machine and only say what the options cost roughly.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = {  # name: (head, params)
    "mlp": ("mlp", {}),
    "mlp loss=asl": ("mlp", {"loss": "asl"}),
    # milder: a weak focus on hard negatives and no shift, to see whether the collapse follows the strength
    "mlp loss=asl g-=1 clip=0": ("mlp", {"loss": "asl", "asl_gamma_neg": 1.0, "asl_clip": 0.0}),
    "knn": ("knn", {}),
}


def one_run(store: Path, workdir: Path, variant: str, seed: int, mlp: dict) -> dict:
    """Fit (or reuse) one run and score its test split once: the head's own scores (what
    `evaluate --raw` scores) and the same scores post-processed as the run answers (what
    `evaluate` scores), with the metrics of hashtagkit.metrics (evaluate's streamed numbers equal
    them to 1e-12, tests/evaluation/test_evaluate_stream.py). One read of the test rows' features: a random
    5,000-row test split touches every chunk of the store."""
    from hashtagkit import metrics
    from hashtagkit.evaluation import evaluation_rows
    from hashtagkit.postprocess import Options
    from hashtagkit.runs import design_matrix, fit, load_postprocess, load_run

    head_name, params = VARIANTS[variant]
    params = {**(mlp if head_name == "mlp" else {}), **params}
    run = workdir / f"{variant.replace(' ', '_').replace('=', '-')}-s{seed}"
    if not (run / "run.json").is_file():
        fit(store, head_name, run, params=params, seed=seed, overwrite=True,
                postprocess=Options(rerank="cooc", threshold="per-tag"))
    record, head, opened = load_run(run)
    rows, _ = evaluation_rows(opened, "test")
    raw = head.predict_proba(design_matrix(opened, head, record.features or "both", rows))
    post = load_postprocess(run, record)
    reranked = post.apply(raw)
    Y = opened.labels(rows).astype(bool)
    pp = record.postprocess
    keys = ("precision@1", "recall@5", "accuracy@5", "map", "map_class")
    raw_m, rer_m = metrics.summary(raw, Y, ks=(1, 5)), metrics.summary(reranked, Y, ks=(1, 5))
    return {
        "variant": variant, "seed": seed, "run": str(run), "fit_seconds": record.fit_seconds,
        "calibrate_seconds": pp["seconds"], "validation": pp["validation"], "alpha": pp["rerank"]["alpha"],
        "raw": {k: raw_m[k] for k in keys}, "reranked": {k: rer_m[k] for k in keys},
        "per_tag": metrics.f1_at_threshold(reranked, Y, post.thresholds),
        "global": metrics.f1_at_threshold(reranked, Y, pp["threshold"]["global"]),
        "val_per_tag": {k: pp["threshold"][f"val_{k}"] for k in ("f1_micro", "f1_macro")},
        "n_test": int(len(rows)), "params": record.params,
    }


def cell(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    v = np.asarray(values, dtype=float) * scale
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1) if len(v) > 1 else 0:.{digits}f}"


def alphas(rs: list[dict]) -> str:
    return ", ".join(f"{r['alpha']:g}" for r in rs)


def table(rows: list[dict], store: Path, args, started: str) -> str:
    from hashtagkit import provenance
    from hashtagkit.stores import open_store

    s = open_store(store)
    seeds = sorted({r["seed"] for r in rows})
    by = {v: [r for r in rows if r["variant"] == v] for v in VARIANTS}
    out = [f"# Options of issue #15 on `{store.name}` ({s.meta.get('kind')}"
           f"{', synthetic' if s.meta.get('synthetic') else ''}; {s.n_rows:,} rows, {s.n_classes} classes)", "",
           f"Test split, {rows[0]['n_test']:,} images; mean ± std (ddof 1) over seeds {seeds}, in percent. "
           "Each run is fitted once; \"raw\" is `evaluate --raw` (the head alone), \"+cooc\" the same head "
           "re-ranked with the strength chosen on validation rows.", "",
           "## Top-K, with and without co-occurrence re-ranking", "",
           "| variant | scores | P@1 | R@5 | A@5 | mAP (image) | mAP (class) | strength a per seed |",
           "|---|---|---:|---:|---:|---:|---:|---|"]
    for v, rs in by.items():
        if not rs:
            continue
        for kind, name in (("raw", "raw"), ("reranked", "+cooc")):
            out.append(f"| {v} | {name} | " + " | ".join(cell([r[kind].get(k, np.nan) for r in rs]) for k in
                                                          ("precision@1", "recall@5", "accuracy@5", "map", "map_class"))
                       + (f" | {alphas(rs)} |" if kind == "reranked" else " | |"))
    out += ["", "## How many hashtags: F1 at thresholds chosen on validation rows (after re-ranking)", "",
            "| variant | threshold | F1 micro | F1 macro | hashtags / image | validation F1 micro |",
            "|---|---|---:|---:|---:|---:|"]
    for v, rs in by.items():
        if not rs:
            continue
        out.append(f"| {v} | global | {cell([r['global']['f1_micro'] for r in rs])} | "
                   f"{cell([r['global']['f1_macro'] for r in rs])} | "
                   f"{cell([r['global']['tags_per_image'] for r in rs], 1.0)} | |")
        out.append(f"| {v} | per-tag | {cell([r['per_tag']['f1_micro'] for r in rs])} | "
                   f"{cell([r['per_tag']['f1_macro'] for r in rs])} | "
                   f"{cell([r['per_tag']['tags_per_image'] for r in rs], 1.0)} | "
                   f"{cell([r['val_per_tag']['f1_micro'] for r in rs])} |")
    out += ["", "## Cost and validation rows", "", "| variant | fit s | calibration s | validation rows (source) |",
            "|---|---:|---:|---|"]
    for v, rs in by.items():
        if rs:
            val = rs[0]["validation"]
            out.append(f"| {v} | {cell([r['fit_seconds'] for r in rs], 1.0, 0)} | "
                       f"{cell([r['calibrate_seconds'] for r in rs], 1.0, 0)} | {val['rows']:,} ({val['source']}) |")
    made = provenance.record()
    ver = made["versions"]
    commit = args.commit
    mlp = ", ".join(f"{k}={json.dumps(x)}" for k, x in args.mlp_params.items())
    out += ["", f"MLP settings (both losses): preset fast, {mlp} (smaller than the default 4,096 x 30 epochs, to fit "
            "the session); asl at the paper's gamma- = 4, gamma+ = 0, clip 0.05, and at gamma- = 1, clip 0. kNN at "
            "its defaults. "
            "Re-ranking: top-m 5, smoothing 10, strength from {0, 0.05, 0.1, 0.2, ..., 0.9} by validation mAP per image "
            "(0 when nothing helps). Thresholds: per-tag where a class has >= 5 validation positives, else the "
            "global one.", "",
            f"Made {started}..{made['created']} by `{' '.join(sys.argv)}` at commit {commit} on "
            f"{made['machine']['processor']}, {os.cpu_count()} shared cores ({made['machine']['platform']}); "
            f"Python {ver['python']}, torch {ver.get('torch')}, numpy {ver.get('numpy')}, "
            f"scikit-learn {ver.get('scikit-learn')}, faiss-cpu {ver.get('faiss-cpu')}."]
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="The Markdown table to write.")
    ap.add_argument("--workdir", type=Path, required=True, help="Where the runs go (reused when present).")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--mlp-hidden", type=int, default=1024)
    ap.add_argument("--mlp-epochs", type=int, default=6)
    ap.add_argument("--table-only", action="store_true",
                    help="Write the table from WORKDIR/rows.json as it is (the seeds done so far).")
    args = ap.parse_args()
    args.mlp_params = {"hidden": args.mlp_hidden, "epochs": args.mlp_epochs}
    started = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    args.commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                 cwd=Path(__file__).parent).stdout.strip()  # the code the runs are made with
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.table_only:
        done = json.loads((args.workdir / "rows.json").read_text())
        args.commit = done.get("commit", "?")
        args.out.write_text(table(done["rows"], args.store, args, done["started"]))
        print(f"wrote {args.out} from {len(done['rows'])} runs")
        return
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for v in args.variants.split(","):
            t0 = time.perf_counter()
            rows.append(one_run(args.store, args.workdir, v, seed, args.mlp_params))
            r = rows[-1]
            print(f"{v} seed {seed}: P@1 {100 * r['raw']['precision@1']:.2f} -> {100 * r['reranked']['precision@1']:.2f}"
                  f" (a={r['alpha']:g}), F1 per-tag {100 * r['per_tag']['f1_micro']:.2f}, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
            (args.workdir / "rows.json").write_text(json.dumps({"started": started, "commit": args.commit, "argv": sys.argv,
                                                                "rows": rows},
                                                               indent=1, default=float))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table(rows, args.store, args, started))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
