"""Per seed, fusion against its components and tagprop against knn, from a `hashtagkit bench` folder.

`make bench-beyond` appends this to each fusion_tagprop_*.md, so the question issue #15 asks
("is fusion at least as good as its better component on P@1, R@5 and A@5?") is answered by the
runs themselves, seed by seed, with what fusion chose on its validation rows (weights, the
validation metric of each component alone and fused) from each fusion run's fit report.

    python benchmarks/beyond_seeds.py BENCH_DIR >> table.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

METRICS = (("precision@1", "P@1"), ("recall@5", "R@5"), ("accuracy@5", "A@5"))


def records(bench: Path) -> dict[tuple[str, int], dict]:
    """(head, seed) -> its record in results.json, with the run's fit report added."""
    out = {}
    for r in json.loads((bench / "results.json").read_text())["records"]:
        if r.get("view") not in ("both", None) and r["head"] != "popularity":
            continue
        run = json.loads((Path(r["run"]) / "run.json").read_text())
        out[(r["head"], int(r["seed"]))] = {**r, "fit_report": run.get("fit_report") or {}}
    return out


def triple(r: dict) -> str:
    return " / ".join(f"{100 * r[k]:.2f}" for k, _ in METRICS)


def fusion_choice(report: dict) -> tuple[str, str]:
    """The chosen weights and the validation metric alone -> fused, as the fit report has them."""
    weights = report.get("weights") or {}
    names = list(weights)
    w = ", ".join(f"{weights[n]:g}" for n in names) if names else "?"
    metric = next((k.removeprefix("val_").removesuffix("_fused") for k in report if k.endswith("_fused")), None)
    if metric is None:
        return w, "?"
    alone = report.get(f"val_{metric}_alone") or {}
    fused = report.get(f"val_{metric}_fused")
    parts = ", ".join(f"{100 * float(alone[n]):.2f}" for n in names if n in alone)
    return w, f"{metric}: {parts} -> {100 * float(fused):.2f}"


def reading(bench: Path) -> str:
    recs = records(bench)
    seeds = sorted({s for (h, s) in recs if h == "fusion"})
    if not seeds:
        return "No fusion runs in this folder.\n"
    lines = ["## Per seed (written by benchmarks/beyond_seeds.py from the runs)", "",
             "P@1 / R@5 / A@5 in %, test split. Fusion's weights and validation scores come from its fit report "
             "(chosen on held-out training rows; the test split is never read).", "",
             "| seed | mlp | knn | tagprop | fusion | fusion's weights | validation alone -> fused |",
             "|---|---|---|---|---|---|---|"]
    gaps: dict[str, list[float]] = {k: [] for k, _ in METRICS}
    tag_gaps: dict[str, list[float]] = {k: [] for k, _ in METRICS}
    for s in seeds:
        row = {h: recs.get((h, s)) for h in ("mlp", "knn", "tagprop", "fusion")}
        w, val = fusion_choice(row["fusion"]["fit_report"])
        lines.append(f"| {s} | " + " | ".join(triple(row[h]) if row[h] else "" for h in row) + f" | {w} | {val} |")
        if row["mlp"] and row["knn"]:
            for k, _ in METRICS:
                gaps[k].append(row["fusion"][k] - max(row["mlp"][k], row["knn"][k]))
        if row["tagprop"] and row["knn"]:
            for k, _ in METRICS:
                tag_gaps[k].append(row["tagprop"][k] - row["knn"][k])

    def spread(v: list[float]) -> str:
        a = 100 * np.asarray(v)
        return f"{a.mean():+.2f} (per seed {', '.join(f'{x:+.2f}' for x in a)})" if len(a) else "n/a"

    lines += ["", "Fusion minus its better component (mlp or knn, whichever is higher on that metric and seed), "
              "points: " + "; ".join(f"{name} {spread(gaps[k])}" for k, name in METRICS) + ".",
              "", "tagprop minus knn, points: " + "; ".join(f"{name} {spread(tag_gaps[k])}" for k, name in METRICS)
              + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench", type=Path, help="a `hashtagkit bench -o` folder")
    print(reading(ap.parse_args().bench), end="")


if __name__ == "__main__":
    main()
