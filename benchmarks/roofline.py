"""Roofline: this machine's peaks and every hot path against them, in one run (issue #16, item 1).

Peaks: matmul (bf16, fp16, fp32) at the shapes the models use (the MLP's 8192->4096->4096->997 at
its batch, VGG-16's fc6/fc7 at an extraction batch, a conv layer as its im2col GEMM, the issue's
2048x8192x4096) and memory bandwidth (a large copy and a triad). Hot paths: MLP training (a plain
torch loop of the same layers, then the head on its cached and its streamed data path, per step
and per epoch of the store's training rows), kNN build and query (flat, and PCA-256 + IVF with its
recall against exact search, next to scikit-learn's brute-force NearestNeighbors), ovr fit and
evaluation (the metrics over a score matrix). Each row says what it achieved, the peak that bounds
it (named) and the percentage. Extraction rows come from benchmarks/roofline_extract.py when it
exists. The MLP rows are interleaved (plain, cached, streamed, plain, ...) over `--rounds` and
reported as medians, since the machine is shared.

    nice -n 10 .venv/bin/python benchmarks/roofline.py --device cpu   # writes benchmarks/results/roofline.md
    .venv/bin/python benchmarks/roofline.py --quick --out /tmp/r.md   # tiny shapes: a smoke run

The store is `hashtagkit prepare planted` (57,383 rows, HARRISON's size) in --workdir, made when
missing. On --device cuda the torch timings synchronise the device around every measurement.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "roofline.md"
ROW_KEYS = ("path", "what", "achieved", "unit", "peak", "peak_name", "pct", "notes")


def row(path: str, what: str, achieved: float, unit: str, peak: float | None, peak_name: str, notes: str = "") -> dict:
    """One result in the format benchmarks/roofline_extract.py's rows use too."""
    pct = 100.0 * achieved / peak if peak else float("nan")
    return {"path": path, "what": what, "achieved": float(achieved), "unit": unit, "peak": peak,
            "peak_name": peak_name, "pct": pct, "notes": notes}


class Timer:
    """Wall seconds of a callable, the device synchronised before and after (CUDA kernels are
    asynchronous: without it a timing measures the launch)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def once(self, fn) -> float:
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t0

    def median(self, fn, min_seconds: float, warmup: int = 2, min_reps: int = 3, max_reps: int = 50) -> float:
        """Median of repeated calls after `warmup` untimed ones, repeated until `min_seconds`."""
        for _ in range(warmup):
            fn()
        times: list[float] = []
        while len(times) < min_reps or (sum(times) < min_seconds and len(times) < max_reps):
            times.append(self.once(fn))
        return float(np.median(times))


# --- peaks ---------------------------------------------------------------------------------------
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def gemm_shapes(cfg: dict) -> dict[str, tuple[int, int, int]]:
    """name -> (m, k, n) of an (m, k) @ (k, n) product, as the models run them."""
    b, d, h, c, vb = cfg["batch"], cfg["dim"], cfg["hidden"], cfg["classes"], cfg["vgg_batch"]
    shapes = {f"mlp fc1 {b}x{d}->{h}": (b, d, h), f"mlp fc2 {b}x{h}->{h}": (b, h, h), f"mlp fc3 {b}x{h}->{c}": (b, h, c)}
    shapes.update(cfg["extra_gemms"])
    shapes[f"vgg fc6 {vb}x{cfg['vgg_fc6_in']}->{cfg['vgg_fc']}"] = (vb, cfg["vgg_fc6_in"], cfg["vgg_fc"])
    shapes[f"vgg fc7 {vb}x{cfg['vgg_fc']}->{cfg['vgg_fc']}"] = (vb, cfg["vgg_fc"], cfg["vgg_fc"])
    return shapes


def gemm_gflops(timer: Timer, device: torch.device, dtype: torch.dtype, m: int, k: int, n: int, seconds: float) -> float:
    """x (m, k) times a Linear's weight (n, k) transposed: the layout nn.Linear runs."""
    x = torch.randn(m, k, device=device).to(dtype)
    w = torch.randn(n, k, device=device).to(dtype)
    t = timer.median(lambda: torch.nn.functional.linear(x, w), seconds, warmup=1)
    return 2.0 * m * k * n / t / 1e9


def measure_gemm_peaks(timer: Timer, device: torch.device, cfg: dict) -> tuple[list[dict], dict, dict]:
    """Rows for every (precision, shape), the peak per precision (the best shape) and the GFLOPS
    per (precision, shape) for the hot paths' own bounds."""
    rows, table, peak = [], {}, {}
    for name, dtype in DTYPES.items():
        for shape, (m, k, n) in gemm_shapes(cfg).items():
            gf = gemm_gflops(timer, device, dtype, m, k, n, cfg["seconds"])
            table[(name, shape)] = gf
            rows.append(row("peak", f"{name} matmul {shape} ({m}x{k} @ {k}x{n})", gf, "GFLOPS", None, ""))
        peak[name] = max(v for (p, _), v in table.items() if p == name)
    for r in rows:  # each shape against its precision's best shape
        p = r["what"].split()[0]
        r.update(peak=peak[p], peak_name=f"{p} matmul peak (best shape here)", pct=100 * r["achieved"] / peak[p])
    return rows, table, peak


def measure_bandwidth(timer: Timer, device: torch.device, cfg: dict) -> tuple[list[dict], float]:
    """Copy (2 x bytes moved) and triad a = b + s*c (3 x bytes) over float32 arrays far larger
    than the caches; the peak is the better of the two."""
    n = cfg["stream_mb"] * 2**20 // 4
    a, b, c = (torch.empty(n, device=device).uniform_() for _ in range(3))
    t_copy = timer.median(lambda: a.copy_(b), cfg["seconds"])
    t_triad = timer.median(lambda: torch.add(b, c, alpha=1.5, out=a), cfg["seconds"])
    copy, triad = 2 * 4 * n / t_copy / 1e9, 3 * 4 * n / t_triad / 1e9
    peak = max(copy, triad)
    name = "memory bandwidth (best of copy, triad)"
    threads = f"{torch.get_num_threads()} torch threads" if device.type == "cpu" else str(device)
    return [row("peak", f"copy {cfg['stream_mb']} MB float32", copy, "GB/s", peak, name, f"read + write; {threads}"),
            row("peak", f"triad a = b + 1.5 c, {cfg['stream_mb']} MB arrays", triad, "GB/s", peak, name,
                f"2 reads + 1 write; {threads}")], peak


# --- MLP -----------------------------------------------------------------------------------------
def mlp_step_flops(batch: int, d: int, h: int, c: int) -> float:
    """Matmul FLOPs of one training step: forward 2·B·(weights), backward the same for the
    weights' gradients and for the inputs' gradients of every layer but the first (its input,
    the data, needs none). tests/evaluation/test_roofline.py checks it against torch's FlopCounterMode."""
    return 2.0 * batch * (3 * (d * h + h * h + h * c) - d * h)


def mlp_gemm_bound(table: dict, cfg: dict, precision: str) -> float:
    """GFLOPS of one training step's GEMMs alone, each at its measured rate for this precision:
    what the step would reach if nothing but its matmuls took time (the roofline of the step)."""
    b, d, h, c = cfg["batch"], cfg["dim"], cfg["hidden"], cfg["classes"]
    rates = {s.split()[1]: table[(precision, s)] for (p, s) in table if p == precision and s.startswith("mlp")}
    layers = {"fc1": (d * h, 2), "fc2": (h * h, 3), "fc3": (h * c, 3)}  # (weights, GEMMs a step)
    # the backward GEMMs are timed at their forward's rate (same FLOPs, other operand shapes)
    seconds = sum(gemms * 2.0 * b * w / (rates[name] * 1e9) for name, (w, gemms) in layers.items())
    return mlp_step_flops(b, d, h, c) / seconds / 1e9


def plain_loop(X: torch.Tensor, Y: torch.Tensor, cfg: dict, device: torch.device, precision: str, timer: Timer,
               steps: int) -> list[float]:
    """The reference: the head's layers (Linear-ReLU-Dropout x2, Linear) on rows already
    standardised in memory in the first layer's dtype, autocast, fused AdamW, caffe loss;
    seconds per step."""
    from hashtagkit.devices import autocast
    from hashtagkit.heads.mlp import caffe_loss

    d, h, c = X.shape[1], cfg["hidden"], Y.shape[1]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(d, h), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(h, h),
                                torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(h, c)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4, fused=True)
    gen = torch.Generator().manual_seed(0)
    times = []
    for _ in range(steps):
        idx = torch.randint(0, len(X), (cfg["batch"],), generator=gen)

        def step(idx=idx):
            xb, yb = X[idx].to(device, non_blocking=True), Y[idx].to(device, non_blocking=True)
            with autocast(device, precision):
                loss = caffe_loss(model(xb).float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        times.append(timer.once(step))
    return times  # all of them, the first (kernel set-up) included, as the head's epoch timing includes them


def head_fit(data, cfg: dict, device: str, cache: str, steps: int | None, workers: int | None = None) -> dict:
    """The MLP head on one data path; per-step seconds from its own per-epoch timings."""
    from hashtagkit.heads.mlp import MLPHead

    params = {"hidden": cfg["hidden"], "batch_size": cfg["batch"], "cache": cache, "device": device, "patience": 0,
              "workers": workers}
    params.update({"iterations": steps} if steps else {"epochs": 1})
    t0 = time.perf_counter()
    head = MLPHead(**params).fit_data(data)
    total = time.perf_counter() - t0
    h = head.history_
    epoch = h["epochs"][0]
    n_steps = epoch["step"]
    # the first batch's wait (a streamed path's worker start) is a cost of the fit, not of a step
    train_s = epoch["train_s"] - epoch["first_batch_s"]
    return {"step_s": train_s / n_steps, "steps": n_steps, "train_s": train_s, "wait_s": epoch["data_wait_s"] - epoch["first_batch_s"],
            "val_s": epoch.get("val_s", 0.0), "setup_s": total - train_s - epoch.get("val_s", 0.0),
            "batch": h["batch_size"], "precision": h["precision"], "n_val": h["n_val"]}


def mlp_rows(data, cfg: dict, device: torch.device, table: dict, peak: dict, timer: Timer) -> list[dict]:
    """Plain loop, head cached, head streamed, interleaved over cfg['rounds']: medians."""
    from hashtagkit.devices import pick_precision
    from hashtagkit.heads.data import ArrayData
    from hashtagkit.heads.mlp import VAL_ROWS, TrainInput, default_workers, training_stats

    precision = pick_precision("auto", device, training=True)
    n = data.n_rows
    n_val = min(int(n * 0.1), VAL_ROWS)
    n_train = n - n_val
    per_epoch = math.ceil(n_train / cfg["batch"])
    mask = np.ones(n, bool)
    Xs, Ys = data.to_arrays()
    mean, std, _, _ = training_stats(ArrayData(Xs, Ys), mask)
    prepare = TrainInput(mean, std, precision)  # what the head's first Linear reads: 2 bytes a value in bf16
    X = torch.cat([prepare(Xs[i : i + 4096]) for i in range(0, len(Xs), 4096)])
    Y = torch.from_numpy(np.asarray(Ys, np.float32))
    del Xs
    # the streamed path as the head runs it by default, and with the other reader for comparison
    default = default_workers()
    paths = {"memory": ("memory", None), "stream": ("stream", default), "stream_other": ("stream", 1 - min(default, 1))}
    results: dict[str, list] = {"plain": [], "plain_big": [], **{k: [] for k in paths}}
    big = {**cfg, "batch": cfg["batch"] * 4}
    for _ in range(cfg["rounds"]):
        results["plain"].append(float(np.mean(plain_loop(X, Y, cfg, device, precision, timer, cfg["plain_steps"]))))
        results["plain_big"].append(float(np.mean(plain_loop(X, Y, big, device, precision, timer,
                                                              max(2, cfg["plain_steps"] // 4)))))
        for key, (cache, workers) in paths.items():
            results[key].append(head_fit(data, cfg, device.type, cache, cfg["head_steps"], workers))
        print("mlp round:", {k: round(v[-1] if isinstance(v[-1], float) else v[-1]["step_s"], 4) for k, v in results.items()},
              flush=True)
    del X, Y
    flops = mlp_step_flops(cfg["batch"], data.n_features, cfg["hidden"], data.n_classes)
    bound = mlp_gemm_bound(table, cfg, precision)
    bound_name = f"{precision} matmul at the MLP's shapes (the step's GEMMs alone)"
    plain_s = float(np.median(results["plain"]))
    shape = f"{data.n_features}->{cfg['hidden']}->{cfg['hidden']}->{data.n_classes}, batch {cfg['batch']}, {precision}"
    rows = [row("mlp train", f"plain torch loop, step ({shape})", flops / plain_s / 1e9, "GFLOPS", bound, bound_name,
                f"{plain_s * 1e3:.0f} ms/step (median over {cfg['rounds']} rounds of the mean of {cfg['plain_steps']} steps); "
                f"{100 * flops / plain_s / 1e9 / peak[precision]:.0f}% of the best "
                f"{precision} shape; epoch of {n_train:,} rows = {per_epoch} steps = {per_epoch * plain_s:.1f} s")]
    big_s = float(np.median(results["plain_big"]))
    flops_big = mlp_step_flops(big["batch"], data.n_features, cfg["hidden"], data.n_classes)
    rows.append(row("mlp train", f"plain torch loop, step at batch {big['batch']} (4x)", flops_big / big_s / 1e9, "GFLOPS",
                    mlp_gemm_bound(table, cfg, precision), bound_name + f" at batch {cfg['batch']}",
                    f"{big_s * 1e3:.0f} ms/step (mean of {max(2, cfg['plain_steps'] // 4)} steps, median over rounds): "
                    f"{4 * plain_s / big_s:.2f}x the rows/s of batch {cfg['batch']}; the per-step costs that do not grow "
                    "with the batch (autocast's weight casts, the optimizer over 55M parameters) are spread thinner"))
    for key, (cache, workers) in paths.items():
        runs = results[key]
        step_s = float(np.median([r["step_s"] for r in runs]))
        val_s = float(np.median([r["val_s"] for r in runs]))
        setup_s = float(np.median([r["setup_s"] for r in runs]))
        label = "cached" if cache == "memory" else "streamed, read by a thread" if workers == 0 else \
            f"streamed, read by {workers} loader process"
        if key == "stream":
            label += " (the default here)"
        rows.append(row("mlp train", f"MLPHead {label}, step ({shape})", flops / step_s / 1e9, "GFLOPS", bound, bound_name,
                        f"{step_s * 1e3:.0f} ms/step = {plain_s / step_s:.2f}x the plain loop "
                        f"(medians over {cfg['rounds']} interleaved rounds of {runs[0]['steps']} steps); waiting for data "
                        f"{1e3 * float(np.median([r['wait_s'] for r in runs])) / runs[0]['steps']:.1f} ms/step"))
        epoch_s = per_epoch * step_s + val_s
        rows.append(row("mlp train", f"MLPHead {label}, epoch of {n_train:,} rows + validation on {n_val:,}",
                        flops * per_epoch / epoch_s / 1e9, "GFLOPS", bound, bound_name,
                        f"{epoch_s:.1f} s = {per_epoch} steps x {step_s * 1e3:.0f} ms (projected from the measured step) "
                        f"+ validation {val_s:.1f} s (measured) "
                        f"(plain loop: {per_epoch * plain_s:.1f} s, ratio {per_epoch * plain_s / epoch_s:.2f}x); "
                        f"once per fit: statistics pass, data load or loader start {setup_s:.1f} s"))
    return rows


# --- kNN, ovr, evaluation ------------------------------------------------------------------------
def knn_rows(data, Xq: np.ndarray, cfg: dict, peak: dict, bw: float, timer: Timer) -> list[dict]:
    """Flat (exact, all columns) and PCA-256 + IVF: build and query, recall of IVF against the
    exact search in the same space (the head's own check) and against the full-dimension exact
    neighbours; scikit-learn's brute-force NearestNeighbors on the same rows as the reference."""
    from sklearn.neighbors import NearestNeighbors

    from hashtagkit.heads.knn import KNNHead

    if cfg["knn_rows"] and data.n_rows > cfg["knn_rows"]:  # the first blocks holding knn_rows rows
        data = data.subset(range(int(np.searchsorted(data.bounds, cfg["knn_rows"]))))
    n, d, k = data.n_rows, data.n_features, cfg["knn_k"]
    nq = len(Xq)
    out = []
    flat = KNNHead(k=k, pca=None, index="flat")
    t_build = timer.once(lambda: flat.fit_data(data))
    out.append(row("knn", f"flat build: normalise + add {n:,} x {d:,}", n * d * 4 / t_build / 1e9, "GB/s", bw,
                   "memory bandwidth", f"{t_build:.1f} s; bytes = the float32 vectors added (a lower bound on traffic)"))
    exact_ids = {}
    t_q = timer.once(lambda: exact_ids.setdefault("ids", flat.kneighbors(Xq)[1]))
    fl = 2.0 * nq * n * d
    out.append(row("knn", f"flat query {nq:,} rows, k={k}", fl / t_q / 1e9, "GFLOPS", peak["fp32"], "fp32 matmul peak",
                   f"{t_q:.2f} s; FLOPs = 2 nq n d (faiss IndexFlatIP: a BLAS GEMM + top-k)"))
    Xn = np.asarray(data.to_arrays()[0], np.float32)
    Xn /= np.maximum(np.linalg.norm(Xn, axis=1, keepdims=True), 1e-12)
    Qn = np.asarray(Xq, np.float32) / np.maximum(np.linalg.norm(Xq.astype(np.float32), axis=1, keepdims=True), 1e-12)
    nn_ = NearestNeighbors(n_neighbors=k, algorithm="brute", metric="euclidean", n_jobs=-1)
    t_fit = timer.once(lambda: nn_.fit(Xn))
    sk = {}
    t_sk = timer.once(lambda: sk.setdefault("ids", nn_.kneighbors(Qn, return_distance=False)))
    agree = np.mean([len(set(a) & set(b)) / k for a, b in zip(sk["ids"], exact_ids["ids"], strict=True)])
    out.append(row("knn", f"scikit-learn brute NearestNeighbors query {nq:,} rows (reference)", fl / t_sk / 1e9, "GFLOPS",
                   peak["fp32"], "fp32 matmul peak", f"{t_sk:.2f} s (faiss flat: {t_sk / t_q:.1f}x faster); fit "
                   f"{t_fit:.2f} s; same neighbours as faiss flat: {100 * agree:.1f}% (ties and float32 rounding)"))
    ivf = KNNHead(k=k, pca=cfg["knn_pca"], index="ivf")
    t_build = timer.once(lambda: ivf.fit_data(data))
    rep = ivf.fit_report()
    out.append(row("knn", f"PCA-{cfg['knn_pca']} + IVF build: {n:,} rows", n * d * 4 / t_build / 1e9, "GB/s", bw,
                   "memory bandwidth", f"{t_build:.1f} s (PCA fit on {rep.get('pca_fit_rows', 0):,} rows, IVF train, "
                   f"add); {rep['index']}"))
    got = {}
    t_q = timer.once(lambda: got.setdefault("ids", ivf.kneighbors(Xq)[1]))
    nlist = ivf.index_.nlist
    nprobe = ivf.index_.nprobe
    p = cfg["knn_pca"]
    fl = nq * (2.0 * d * p + 2.0 * nlist * p + 2.0 * n * p * nprobe / nlist)
    recall_full = np.mean([len(set(a) & set(b)) / k for a, b in zip(got["ids"], exact_ids["ids"], strict=True)])
    out.append(row("knn", f"PCA-{p} + IVF query {nq:,} rows, k={k}", fl / t_q / 1e9, "GFLOPS", peak["fp32"],
                   "fp32 matmul peak", f"{t_q:.2f} s ({t_sk / t_q:.0f}x scikit-learn brute); recall@{k} vs exact in "
                   f"PCA space {rep.get(f'recall@{k}', float('nan')):.3f} (fit report), vs exact full-dimension "
                   f"neighbours {recall_full:.3f}; FLOPs: projection + coarse + nprobe/nlist of the rows"))
    return out


def ovr_rows(data, cfg: dict, bw: float, timer: Timer) -> list[dict]:
    """ovr on the first `ovr_classes` classes (997 per-class fits would take minutes): the
    head's fit time, and the per-class logistic regressions' traffic estimated from the number
    of L-BFGS iterations a reference fit of the same classes needs (each reads the projected
    rows about twice: margin and gradient)."""
    from sklearn.linear_model import LogisticRegression

    from hashtagkit.heads.data import ArrayData
    from hashtagkit.heads.ovr import OVRHead
    from hashtagkit.heads.projection import project

    X, Y = data.to_arrays()
    c = cfg["ovr_classes"]
    sub = ArrayData(X, np.ascontiguousarray(Y[:, :c]))
    head = OVRHead(pca=256)
    t = timer.once(lambda: head.fit_data(sub))
    Z = project(X, head._projection)
    iters = []
    t_lr = timer.once(lambda: iters.extend(int(LogisticRegression(max_iter=100).fit(Z, Y[:, j] != 0).n_iter_[0])
                                           for j in range(min(c, 8)) if 0 < (Y[:, j] != 0).sum() < len(Y)))
    n_iter = float(np.mean(iters)) if iters else float("nan")
    gbs = len(iters) * n_iter * 2 * Z.nbytes / t_lr / 1e9 if iters else float("nan")
    return [row("ovr", f"fit, {c} classes x {data.n_rows:,} rows (PCA-256 whitened + logistic)", data.n_rows * c / t,
                "rows·classes/s", None, "", f"{t:.1f} s = {t / c * 1e3:.0f} ms per class with n_jobs=-1 (997 classes: "
                f"~{t / c * 997:.0f} s); PCA included"),
            row("ovr", "per-class logistic regression (L-BFGS), single process", gbs, "GB/s", bw, "memory bandwidth",
                f"{len(iters)} classes in {t_lr:.1f} s, {n_iter:.0f} iterations each; bytes = 2 reads of the "
                f"{Z.nbytes / 2**20:.0f} MB projected rows per iteration (an estimate)")]


def eval_rows(n: int, c: int, bw: float, timer: Timer) -> list[dict]:
    """metrics.summary (P/R/A@1,5,10, mAP per image and per class) over an n x c float32 score
    matrix: the bytes of the matrix against memory bandwidth (it is sort-bound: the % says how far)."""
    from hashtagkit import metrics

    rng = np.random.default_rng(0)
    scores = rng.random((n, c), dtype=np.float32)
    labels = (rng.random((n, c)) < 0.005).astype(np.uint8)
    labels[np.arange(n), rng.integers(0, c, n)] = 1
    t = timer.once(lambda: metrics.summary(scores, labels))
    t_top = timer.once(lambda: metrics.top_k(scores, 10))
    return [row("evaluate", f"metrics.summary over {n:,} x {c} scores", scores.nbytes / t / 1e9, "GB/s", bw,
                "memory bandwidth", f"{t:.2f} s; per-class mAP sorts every column"),
            row("evaluate", f"metrics.top_k(k=10) over {n:,} x {c} scores", scores.nbytes / t_top / 1e9, "GB/s", bw,
                "memory bandwidth", f"{t_top:.3f} s")]


def extraction(device: str, quick: bool) -> list[dict]:
    try:
        sys.path.insert(0, str(HERE))
        from roofline_extract import extraction_rows  # another helper's file, when it exists
    except ImportError:
        return [row("extract", "extraction is measured separately (benchmarks/roofline_extract.py not present)",
                    float("nan"), "", None, "", "")]
    # compiled too (what `extract` does by default on a run that repays the compile), except in a smoke run
    return extraction_rows(device, quick, compile_too=not quick, fast=False)


# --- the run -------------------------------------------------------------------------------------
def config(quick: bool) -> dict:
    if quick:
        return {"n": 600, "dim": 64, "classes": 40, "hidden": 128, "batch": 32, "vgg_batch": 4, "vgg_fc6_in": 256,
                "vgg_fc": 128, "extra_gemms": {"conv3_1 as GEMM 196x72->32": (196, 72, 32)}, "seconds": 0.01,
                "stream_mb": 16, "rounds": 1, "plain_steps": 4, "head_steps": 4, "knn_k": 5,
                "knn_pca": 16, "knn_queries": 50, "knn_rows": None, "ovr_classes": 4}
    return {"n": None, "dim": 8192, "classes": 997, "hidden": 4096, "batch": 512, "vgg_batch": 64, "vgg_fc6_in": 25088,
            "vgg_fc": 4096, "extra_gemms": {"conv3_1 as GEMM 3136x1152->256 (one 56x56 image)": (3136, 1152, 256),
                                            "issue's 2048x8192->4096": (2048, 8192, 4096)},
            "seconds": 0.5, "stream_mb": 512, "rounds": 2, "plain_steps": 16, "head_steps": 40,
            "knn_k": 50, "knn_pca": 256, "knn_queries": 1000, "knn_rows": 20_000, "ovr_classes": 32}


def make_store(path: Path, cfg: dict, quick: bool) -> None:
    cmd = [str(Path(sys.executable).parent / "hashtagkit"), "prepare", "planted", "-o", str(path), "--seed", "0"]
    if quick:
        cmd += ["--n", str(cfg["n"]), "--dim", str(cfg["dim"] // 2), "--classes", str(cfg["classes"])]
    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)


def provenance_lines(args, load0, load1, started: float) -> list[str]:
    import faiss
    import sklearn
    import zarr

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    isa = [f for f in ("avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16", "amx_fp16") if f" {f}" in flags]
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE, capture_output=True,
                           text=True).stdout.strip()
    return [f"Command: `{' '.join(['benchmarks/roofline.py'] + sys.argv[1:])}` (run with `nice -n 10`), "
            f"{time.time() - started:.0f} s in all.", "",
            f"Machine: {cpu}, {os.cpu_count()} cores ({', '.join(isa) or 'no bf16/AMX flags'}), "
            f"{platform.platform()}; load average before {load0[0]:.1f}, "
            f"after {load1[0]:.1f} (1-minute).",
            f"Versions: Python {platform.python_version()}, torch {torch.__version__} "
            f"({torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads), numpy {np.__version__}, "
            f"faiss {faiss.__version__}, scikit-learn {sklearn.__version__}, zarr {zarr.__version__}; "
            f"commit {rev}{' + uncommitted changes' if dirty else ''}; device {args.device}."]


def fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--quick", action="store_true", help="tiny shapes: a smoke run of every row")
    ap.add_argument("--workdir", type=Path, default=HERE / ".cache" / "roofline", help="where the planted store lives")
    ap.add_argument("--rounds", type=int, help="interleaved MLP rounds (plain, cached, streamed) [2; quick: 1]")
    ap.add_argument("--skip", default="", help="comma-separated sections to leave out: extract,knn,ovr,eval,mlp")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    from hashtagkit.devices import pick_device
    from hashtagkit.heads.data import StoreData
    from hashtagkit.runs import training_rows
    from hashtagkit.stores import open_store

    started = time.time()
    device = pick_device(args.device)
    cfg = config(args.quick)
    if args.rounds:
        cfg["rounds"] = args.rounds
    skip = set(filter(None, args.skip.split(",")))
    timer = Timer(device)
    store_path = args.workdir / ("planted-quick.zarr" if args.quick else "planted.zarr")
    if not store_path.exists():
        args.workdir.mkdir(parents=True, exist_ok=True)
        make_store(store_path, cfg, args.quick)
    store = open_store(store_path)
    data = StoreData(store, "both", training_rows(store)[0])
    cfg.update(dim=data.n_features, classes=data.n_classes)
    load0 = os.getloadavg()
    rows, table, peak = measure_gemm_peaks(timer, device, cfg)
    bw_rows, bw = measure_bandwidth(timer, device, cfg)
    rows += bw_rows
    print(f"peaks: {', '.join(f'{k} {v:.0f} GFLOPS' for k, v in peak.items())}, {bw:.1f} GB/s", flush=True)
    if "extract" not in skip:
        rows += extraction(args.device, args.quick)
    if "mlp" not in skip:
        rows += mlp_rows(data, cfg, device, table, peak, timer)
    if "knn" not in skip:
        test = store.split_rows("test")[: cfg["knn_queries"]]
        rows += knn_rows(data, np.asarray(store.features("both", test)), cfg, peak, bw, timer)
    if "ovr" not in skip:
        rows += ovr_rows(data, cfg, bw, timer)
    if "eval" not in skip:
        rows += eval_rows(5000 if not args.quick else 200, data.n_classes, bw, timer)
    load1 = os.getloadavg()
    lines = ["# Roofline: the machine's peaks and every hot path against them (issue #16, item 1)", "",
             *provenance_lines(args, load0, load1, started), "",
             f"Store: {store_path.name}, {data.n_rows:,} training rows x {data.n_features:,} float16 features, "
             f"{data.n_classes} classes. Peak rows: each shape against its precision's best shape here; other rows "
             "against the peak named in the row.", "",
             "| path | what | achieved | unit | peak | which peak | % of peak | notes |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['path']} | {r['what']} | {fmt(r['achieved'])} | {r['unit']} | {fmt(r['peak'])} | "
                     f"{r['peak_name']} | {fmt(r['pct'])} | {r['notes']} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
