"""The bench's figures, drawn from `results.json` alone (no store, no runs needed).

    curves.png            Precision@K and Recall@K for K = 1..10, one line per head x view
    per_class_recall.png  per-class Recall@5 against the class's training frequency (log x):
                          where the long tail is lost (each head at its best view; bin
                          means, and every class of the best head as a dot)

Both average over seeds. The numbers behind every line come from `curve_data` and
`per_class_bins`, plain functions the tests check against a direct computation; the drawing
uses matplotlib's object API (`Figure`, no pyplot), so it needs no display and touches no
global state.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

CURVES, PER_CLASS = "curves.png", "per_class_recall.png"
HEAD_COLORS = {"popularity": "#7f7f7f", "knn": "#1f77b4", "ovr": "#2ca02c", "mlp": "#d62728"}
VIEW_STYLES = {"both": "-", "object": "--", "scene": ":", "-": "-."}


def group_records(records: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """(head, view) -> its records (one per seed), in first-seen order: a table row, a line."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["head"], r["view"]), []).append(r)
    return groups


def _label(head: str, view: str) -> str:
    return head if view == "-" else f"{head} ({view})"


def curve_data(records: list[dict], max_k: int = 10) -> dict[tuple[str, str], dict[str, tuple[list[int], list[float]]]]:
    """(head, view) -> {"precision": (Ks, means), "recall": (Ks, means)}, in percent, mean over
    seeds, for every K in 1..max_k that all of the group's records have."""
    out = {}
    for key, rs in group_records(records).items():
        ks = [k for k in range(1, max_k + 1) if all(f"precision@{k}" in r for r in rs)]
        out[key] = {m: (ks, [100 * float(np.mean([r[f"{m}@{k}"] for r in rs])) for k in ks])
                    for m in ("precision", "recall")}
    return out


def per_class_bins(records: list[dict], class_counts: list[int], k: int = 5, n_bins: int = 8) -> dict:
    """Per-class Recall@k averaged within log-spaced bins of training frequency.

    Returns {"edges": bin edges (counts), "n_classes": classes per bin, "groups": {(head,
    view): mean recall per bin in percent (NaN for an empty bin)}}. A class counts in a bin
    when it has training examples and positives in the evaluated split (recall is undefined
    otherwise); each group's per-class values are first averaged over seeds.
    """
    counts = np.asarray(class_counts, dtype=float)
    key = f"per_class_recall@{k}"
    groups = {g: rs for g, rs in group_records(records).items() if all(r.get(key) is not None for r in rs)}
    if not groups or counts.size == 0 or counts.max() <= 0:
        return {"edges": [], "n_classes": [], "groups": {}}
    lo, hi = counts[counts > 0].min(), counts.max()
    edges = np.geomspace(lo, hi * (1 + 1e-9), n_bins + 1) if hi > lo else np.array([lo, lo + 1.0])
    which = np.clip(np.searchsorted(edges, counts, side="right") - 1, 0, len(edges) - 2)
    which[counts <= 0] = -1
    out_groups, n_classes = {}, None
    for g, rs in groups.items():
        per_seed = np.array([[np.nan if v is None else v for v in r[key]] for r in rs], dtype=float)
        with warnings.catch_warnings():  # a class without test positives is NaN in every seed
            warnings.simplefilter("ignore", RuntimeWarning)
            recall = np.nanmean(per_seed, axis=0)
        defined = ~np.isnan(recall) & (which >= 0)
        means, sizes = [], []
        for b in range(len(edges) - 1):
            sel = defined & (which == b)
            sizes.append(int(sel.sum()))
            means.append(100 * float(recall[sel].mean()) if sel.any() else float("nan"))
        out_groups[g] = means
        n_classes = sizes
    return {"edges": edges.tolist(), "n_classes": n_classes, "groups": out_groups}


def _style(head: str, view: str) -> dict:
    return {"color": HEAD_COLORS.get(head, "#9467bd"), "linestyle": VIEW_STYLES.get(view, "-"),
            "linewidth": 1.4 if head == "popularity" else 1.8}


def plot_curves(records: list[dict], path: str | Path, title: str = "",
                reference: dict[str, dict[int, float]] | None = None, reference_label: str = "") -> Path:
    """`reference` adds reported points, e.g. the paper's {"precision": {1: 30.16}, "recall": {5: 21.38}}."""
    from matplotlib.figure import Figure

    data = curve_data(records)
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("precision", "recall"), strict=True):
        for (head, view), d in data.items():
            ks, ys = d[metric]
            ax.plot(ks, ys, marker="o", markersize=3.5, label=_label(head, view), **_style(head, view))
        points = (reference or {}).get(metric, {})
        if points:
            ax.plot(list(points), list(points.values()), linestyle="none", marker="*", markersize=12, color="black",
                    label=reference_label or "reported")
        ax.set_xlabel("K (hashtags recommended)")
        ax.set_ylabel(f"{metric.capitalize()}@K (%)")
        ax.set_xticks(range(1, 11))
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    axes[1].legend(fontsize=8, loc="best")
    fig.suptitle(title or "Precision@K and Recall@K, test split", fontsize=11)
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


def plot_per_class(records: list[dict], class_counts: list[int], path: str | Path, title: str = "", k: int = 5) -> Path:
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, NullFormatter

    groups = group_records(records)
    key = f"recall@{k}"
    best_view = {}  # one line per head, its best view, so the figure stays readable
    for (head, view), rs in groups.items():
        score = float(np.mean([r.get(key, 0.0) for r in rs]))
        if head not in best_view or score > best_view[head][1]:
            best_view[head] = (view, score)
    chosen = [r for r in records if best_view[r["head"]][0] == r["view"]]
    bins = per_class_bins(chosen, class_counts, k=k)
    fig = Figure(figsize=(8, 4.8), layout="constrained")
    ax = fig.subplots()
    if bins["groups"]:
        edges = np.asarray(bins["edges"])
        centers = np.sqrt(edges[:-1] * edges[1:])
        top = max(bins["groups"], key=lambda g: best_view[g[0]][1])
        values = np.array([[np.nan if v is None else v for v in r[f"per_class_recall@{k}"]]
                           for r in chosen if (r["head"], r["view"]) == top], dtype=float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            per_class = 100 * np.nanmean(values, axis=0)
        counts = np.asarray(class_counts, dtype=float)
        ok = (counts > 0) & ~np.isnan(per_class)
        ax.scatter(counts[ok], per_class[ok], s=6, alpha=0.25, color=_style(*top)["color"], linewidths=0,
                   label=f"{_label(*top)}: each class")
        for (head, view), means in bins["groups"].items():
            ax.plot(centers, means, marker="o", markersize=4, label=f"{_label(head, view)}: bin mean",
                    **_style(head, view))
        for x, n in zip(centers, bins["n_classes"], strict=True):
            ax.annotate(f"{n}", (x, 0), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=7,
                        color="#555555")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend(fontsize=8, loc="upper left")
    else:
        ax.text(0.5, 0.5, "no per-class results", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("training images of the class (log scale; bins, classes per bin at the bottom)")
    ax.set_ylabel(f"per-class Recall@{k} (%)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3, which="both")
    ax.set_title(title or f"Per-class Recall@{k} against class frequency", fontsize=11)
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path
