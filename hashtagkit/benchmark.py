"""Comparison tables in the manner of the paper's Table 1: heads x feature views x seeds.

Every combination is fitted and evaluated through the same `fit` / `evaluate` as the
CLI, into `DIR/runs/<head>-<view>-s<seed>`; `DIR/results.json` gains a record after each one
(written atomically), so an interrupted bench resumes with the combinations not yet done.
`results.csv` and `table.md` (mean ± std over seeds) are rewritten at the end. The popularity
floor is always a row; on a store prepared from HARRISON the paper's reported rows are added,
marked as reported rather than measured.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hashtagkit import plots, provenance
from hashtagkit.choices import VIEWS
from hashtagkit.errors import InputError
from hashtagkit.evaluation import evaluate
from hashtagkit.heads import HEADS, make_head
from hashtagkit.outputs import atomic_file
from hashtagkit.runs import fit
from hashtagkit.stores import Store, open_store

RESULTS, CSV, TABLE = "results.json", "results.csv", "table.md"
CURVE_KS = tuple(range(1, 11))  # Precision@K / Recall@K curves
PER_CLASS_K = 5
METRICS = ("precision@1", "recall@5", "accuracy@5")
# Park, Li, Kim 2016, Table 1 (P@1, R@5, A@5 in %)
PAPER_ROWS = (("VGG-Object", "object", 28.30, 20.83, 50.70), ("VGG-Scene", "scene", 25.34, 18.66, 46.30),
              ("VGG-Object + VGG-Scene", "both", 30.16, 21.38, 52.52))


def plan(store, heads: list[str], views: list[str], seeds: list[int], log: Callable[[str], None]) -> list[tuple]:
    unknown = [h for h in heads if h not in HEADS]
    if unknown:
        raise InputError(f"unknown head {unknown[0]!r}: choose from {', '.join(HEADS)}")
    bad = [v for v in views if v not in VIEWS]
    if bad:
        raise InputError(f"unknown feature view {bad[0]!r}: choose from {', '.join(VIEWS)}")
    blocks = {b["name"] for b in store.blocks}
    usable = [v for v in views if store.has_features() and (v == "both" or v in blocks)]
    for v in views:
        if v not in usable:
            log(f"skipping view {v!r}: {store.path} has {'no features' if not store.has_features() else 'no such block'}")
    combos = []
    for head in dict.fromkeys(["popularity", *heads]):  # the floor is always a row
        if not HEADS[head].needs_features:
            combos += [(head, "-", seed) for seed in seeds[:1]]  # deterministic: one seed is enough
        else:
            combos += [(head, v, seed) for v in usable for seed in seeds]
    return combos


def _write_json(path: Path, data) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def labels_sha256(store) -> str:
    """sha256 of the labels array's bytes (row-major), fed one label chunk at a time: the same
    digest as hashing the whole N x C array, without holding it."""
    digest = hashlib.sha256()
    for _, data in store.iter_rows(what=("labels",)):
        digest.update(np.ascontiguousarray(data["labels"]).tobytes())
    return digest.hexdigest()


def tag_counts(store, rows: np.ndarray) -> list[int]:
    """Images per hashtag among `rows`, summed one label chunk at a time."""
    counts = np.zeros(store.n_classes, dtype=np.int64)
    for _, data in store.iter_rows(rows, what=("labels",)):
        counts += data["labels"].sum(axis=0, dtype=np.int64)
    return counts.tolist()


def store_fingerprint(store) -> dict:
    """What of the store makes a record, computed once per bench: the split, the labels and
    vocabulary (a re-prepared store with the same size and seed has the same split but not the
    same labels), when it was made, the backbones and weights of its features, how they were
    extracted and which rows are valid (a re-extraction with --allow-truncated changes them)."""
    extraction = store.extraction_record
    return {
        "split_sha256": store.split_info.get("sha256"),
        "labels_sha256": labels_sha256(store),
        "vocab_sha256": provenance.sha256_bytes("\n".join(store.vocab).encode()),
        "created": (store.meta.get("provenance") or {}).get("created"),
        "features": store.block_signatures(),
        "extraction": {k: extraction.get(k) for k in ("precision", "dtype", "allow_truncated")},
        "valid_rows": valid_sha256(store) if store.has_features() else None,
    }


def valid_sha256(store) -> str:
    """sha256 of the packed valid flags (np.packbits of all N rows), fed one `valid` chunk at a
    time: the digest of packing the whole array, without holding it. A chunk's flags beyond
    the last whole byte are carried into the next chunk, so any chunk size packs the same."""
    digest = hashlib.sha256()
    carry = np.zeros(0, bool)
    for _, data in store.iter_rows(what=("valid",)):
        flags = np.concatenate([carry, data["valid"]])
        whole = len(flags) - len(flags) % 8
        digest.update(np.packbits(flags[:whole]).tobytes())
        carry = flags[whole:]
    digest.update(np.packbits(carry).tobytes())
    return digest.hexdigest()


def record_key(fingerprint: dict, head: str, view: str, seed: int, sets: dict[str, dict] | None) -> str:
    """Everything that makes a record: the combination, the head's resolved hyper-parameters
    (a preset's values included, so a changed default is a changed key) and the store's
    fingerprint. Resume reuses a record only under the same key."""
    made = make_head(head, **(sets or {}).get(head, {}))
    # the preset's values resolved (a changed default is a changed key) over every parameter: a
    # preset's config alone leaves out the others (mlp's hidden), and a resume reused a record
    # fitted at another hidden size
    params = {**made.get_params(), **(made.config() if hasattr(made, "config") else {})}
    return json.dumps({"head": head, "view": view, "seed": seed, "params": params, "store": fingerprint},
                      sort_keys=True, default=str)


def with_component_sets(sets: dict[str, dict] | None, heads: list[str]) -> dict[str, dict]:
    """`sets` with fusion's components given the settings of the heads they are (`--set
    mlp.epochs=2` also sets fusion's mlp component), so a fusion row blends the very models of the
    rows beside it; a fusion setting of its own (`--set fusion.mlp.epochs=3`) wins. Written out as
    fusion's `HEAD.KEY` parameters, so the table's footer and each run.json show them."""
    from hashtagkit.heads.fusion import FusionHead, parse_components

    sets = {head: dict(kv) for head, kv in (sets or {}).items()}
    if FusionHead.name not in heads:
        return sets
    own = sets.get(FusionHead.name, {})
    names = parse_components(own.get("components", FusionHead().components)) or []
    given = own.get("component_params") if isinstance(own.get("component_params"), dict) else {}
    inherited = {f"{c}.{k}": v for c in names for k, v in sets.get(c, {}).items()
                 if f"{c}.{k}" not in own and k not in given.get(c, {})}
    if inherited:
        sets[FusionHead.name] = {**inherited, **own}
    return sets


def bench(store_path: str | Path | Store, out: str | Path, heads: list[str], views: list[str], seeds: list[int],
          sets: dict[str, dict] | None = None, log: Callable[[str], None] = print, postprocess=None) -> list[dict]:
    """Fit and evaluate every head x view x seed on the store into `out`: a run each
    (`out/runs/`), `results.json` (resumable: a combination already done with the same
    settings and store is kept), `results.csv`, the paper-style `table.md` and plots. `sets`
    maps a head to its parameters; returns the records of the table."""
    sets = with_component_sets(sets, heads)
    store = store_path.refresh() if isinstance(store_path, Store) else open_store(store_path)
    for head in heads:  # every head's settings checked before anything is written
        make_head(head, **(sets or {}).get(head, {}))
    out = Path(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _run_bench(store, out, heads, views, seeds, sets, log, postprocess)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):  # a failed first step leaves no empty folder
            out.rmdir()
        raise


def _run_bench(store, out: Path, heads: list[str], views: list[str], seeds: list[int], sets: dict[str, dict] | None,
               log: Callable[[str], None], postprocess) -> list[dict]:
    results_path = out / RESULTS
    records = json.loads(results_path.read_text())["records"] if results_path.is_file() else []
    combos = plan(store, heads, views, seeds, log)
    fingerprint = store_fingerprint(store)
    keys = {c: record_key(fingerprint, *c, sets) for c in combos}
    if postprocess is not None and postprocess.active:  # fit --rerank/--threshold: other records
        keys = {c: f"{k}|{json.dumps(postprocess.as_dict(), sort_keys=True)}" for c, k in keys.items()}
    kept, stale = [], []
    for r in records:  # a stale record is recomputed below, never mixed in
        combo = (r["head"], r["view"], r["seed"])
        (stale if combo in keys and r.get("key") != keys[combo] else kept).append(r)
    records = kept
    done = {(r["head"], r["view"], r["seed"]) for r in records}
    todo = [c for c in combos if c not in done]
    counts = tag_counts(store, store.split_rows("train"))
    log(f"{len(combos)} combinations, {len(combos) - len(todo)} already done"
        + (f"; {len(stale)} earlier record(s) made with other settings or another store recomputed" if stale else ""))
    for i, (head, view, seed) in enumerate(todo, 1):
        run_dir = out / "runs" / f"{head}-{view if view != '-' else 'none'}-s{seed}"
        log(f"[{i}/{len(todo)}] {head} {view} seed {seed}")
        run = fit(store.path, head, run_dir, params=(sets or {}).get(head, {}), view=view if view != "-" else "both",
                  seed=seed, overwrite=True, postprocess=postprocess)
        result = evaluate(run, ks=CURVE_KS, per_class_k=PER_CLASS_K)
        records.append({"head": head, "view": view, "seed": seed, "key": keys[(head, view, seed)], "run": str(run_dir),
                        "params": run.record.params, "fit_seconds": run.record.fit_seconds,
                        **{k: v for k, v in result.items() if k not in ("head", "features", "store")}})
        _write_json(results_path, {"store": str(store.path), "store_kind": store.meta.get("kind"),
                                   "class_train_counts": counts, "vocab": store.vocab,
                                   "provenance": provenance.record(), "records": records})
    current = [r for r in records if keys.get((r["head"], r["view"], r["seed"])) == r.get("key")]
    write_csv(out / CSV, current)
    (out / TABLE).write_text(make_table(current, store, sets))
    title = f"{Path(store.path).name}: {store.meta.get('kind')}{', synthetic' if store.meta.get('synthetic') else ''}"
    paper = PAPER_ROWS[-1]  # the best model: its P@1 and R@5 as points on the curves
    plots.plot_curves(current, out / plots.CURVES, title=f"{title} - Precision@K and Recall@K, test split",
                      reference={"precision": {1: paper[2]}, "recall": {5: paper[3]}} if harrison_labels(store) else None,
                      reference_label="paper, object + scene (reported)")
    plots.plot_per_class(current, counts, out / plots.PER_CLASS, k=PER_CLASS_K,
                         title=f"{title} - per-class Recall@{PER_CLASS_K} against training frequency")
    return current


def write_csv(path: Path, records: list[dict]) -> None:
    """One row per record; per-class lists stay in results.json."""
    records = [{k: v for k, v in r.items() if not isinstance(v, list | dict) and k != "key"} for r in records]
    keys = sorted({k for r in records for k in r}, key=lambda k: (k not in ("head", "view", "seed"), k))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(records)


def _cell(values: list[float]) -> str:
    values = [100 * v for v in values]
    return f"{np.mean(values):.2f}" if len(values) == 1 else f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


def make_table(records: list[dict], store, sets: dict[str, dict] | None = None) -> str:
    groups = plots.group_records(records)
    seeds = sorted({r["seed"] for r in records})
    lines = [
        f"Store `{store.path}` ({store.meta.get('kind')}{', synthetic' if store.meta.get('synthetic') else ''}), "
        f"test split, {_images(records)} images, the same rows for every head; "
        f"mean ± std over seeds {seeds} where more than one.",
        "",
        "| head | features | P@1 % | R@5 % | A@5 % | fit s | seeds |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    order = {h: i for i, h in enumerate(dict.fromkeys(["popularity", *HEADS]))}
    for (head, view), rs in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0][1])):
        lines.append(f"| {head} | {view} | " + " | ".join(_cell([metric(r, m) for r in rs]) for m in METRICS)
                     + f" | {np.mean([r['fit_seconds'] for r in rs]):.1f} | {len(rs)} |")
    footer = ["", *_left_out_lines(records), _params_line(sets), _made_line()]
    if store.n_classes < max(int(m.partition("@")[2]) for m in METRICS):
        footer.insert(1, f"The vocabulary has {store.n_classes} classes: a K above it is computed at "
                         f"K = {store.n_classes}.")
    random = [b.get("backbone") or b["name"] for b in store.blocks if (b.get("weights") or {}).get("source") == "random"]
    if random:
        footer.insert(1, f"**Features from RANDOM weights** ({', '.join(random)}): a smoke test of the pipeline, "
                         "not a measurement of the backbones.")
    labels_from = harrison_labels(store)
    if labels_from:
        for name, view, p, r, a in PAPER_ROWS:
            lines.append(f"| paper: {name} (reported, not measured) | {view} | {p:.2f} | {r:.2f} | {a:.2f} | | |")
        if labels_from == "planted":
            lines += ["", "The features are planted (synthetic) on HARRISON's labels: the paper's rows show the scale "
                          "of the real task, they are not comparable with the measured rows."]
    return "\n".join(lines + footer) + "\n"


def metric(record: dict, name: str) -> float:
    """A record's `precision@K`-style value, where a K above the vocabulary was computed (and
    keyed) at the vocabulary size: a 3-class store has no Recall@5, its Recall@3 stands in."""
    kind, _, k = name.partition("@")
    cap = (record.get("k_capped") or {}).get("computed_at")
    return record[f"{kind}@{min(int(k), cap) if cap else int(k)}"]


def _images(records: list[dict]) -> str:
    """The one row count of a table; every head is scored on the same rows (evaluation_rows),
    so two counts would be a bug, not a footnote."""
    counts = {r["n_images"] for r in records}
    if len(counts) > 1:
        raise RuntimeError(f"records scored on different row counts {sorted(counts)}: not one table")
    return f"{counts.pop() if counts else 0:,}"


def _left_out_lines(records: list[dict]) -> list[str]:
    skipped = records[0].get("skipped") if records else None
    if not skipped:
        return []
    why = ", ".join(f"{n:,} {reason.replace('_', ' ')}" for reason, n in skipped.items())
    return [f"Test rows left out (for every head): {why}."]


def _params_line(sets: dict[str, dict] | None) -> str:
    if not sets:
        return "Every head at its defaults (each run's run.json records its hyper-parameters)."
    pairs = ", ".join(f"{head}.{key}={json.dumps(value)}" for head, kv in sets.items() for key, value in kv.items())
    return f"Hyper-parameters set: {pairs}; the rest are the heads' defaults (each run's run.json has them all)."


def _made_line() -> str:
    made = provenance.record()
    v = made["versions"]
    libs = ", ".join(f"{k} {v[k]}" for k in ("torch", "faiss-cpu", "scikit-learn", "numpy") if k in v)
    return (f"Made {made['created']} by `{made['command']}` on {made['machine']['processor']}, {os.cpu_count()} cores "
            f"({made['machine']['platform']}); Python {v['python']}, {libs}.")


def harrison_labels(store) -> str | None:
    """'harrison' for a store prepared from HARRISON, 'planted' for planted features on
    HARRISON's labels, else None: when the paper's Table 1 rows belong in the table."""
    kind = store.meta.get("kind")
    if kind == "harrison":
        return "harrison"
    if kind == "planted" and store.meta.get("source", {}).get("labels") == "HARRISON":
        return "planted"
    return None
