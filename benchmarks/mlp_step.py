"""The MLP's training step against the bf16 matmul rate at its own GEMM shapes (issue #27, item 1).

Side by side in one run, interleaved step by step (the fastest and the median of the
repetitions reported, as the machine is shared):

- the yardstick: the step's GEMMs alone at their exact shapes and layouts, each timed by itself
  into a preallocated output (3 forward addmm with the bias, 5 backward mm: every layer's weight
  gradient and the input gradients of fc3 and fc2; fc1's input is the data and needs none, so
  autograd never runs that GEMM); the same GEMMs into a fresh output, as autograd runs them;
- the step, variant by variant, each from the same initial weights on the same batches and
  dropout seed (their losses are compared):
  `autocast`: the plain torch loop, benchmarks/roofline.py's and MLPHead's until issue #27
  (float32 model under bf16 autocast, fused AdamW, zero_grad(set_to_none));
  `bf16 params`: bf16 working copies of the weights as the module's parameters (autograd's
  backward), float32 masters in the optimizer, the bf16 gradients cast into kept float32 .grad
  and the copies refreshed in place after each optimizer step;
  `master`: `MasterWeightStep`, what MLPHead runs now on a bf16 CPU: also the backward written
  out, into buffers allocated once;
  `master, foreach AdamW`: the same with the foreach optimizer instead of the fused one;
- the largest costs besides the GEMMs, each alone (AdamW, the two casts, a dropout mask);
- MLPHead itself, with the autocast loop (`_master_weights=False`) and with MasterWeightStep,
  fitting the same rows (cached path), alternating: the time between the batches its own loop
  takes (the first step left out);
- a per-op profile of the `autocast` and `master` steps, grouped by what the ops do.

    nice -n 10 .venv/bin/python benchmarks/mlp_step.py          # writes benchmarks/results/mlp_step.md
    .venv/bin/python benchmarks/mlp_step.py --quick --out /tmp/mlp_step.md   # small shapes: a smoke run

`--quality STORE` adds the quality table: MLPHead fitted on STORE (`hashtagkit prepare planted`)
with the autocast loop and with MasterWeightStep for each of `--seeds`, `--epochs` epochs each
(the two alternate seed by seed), scored by `hashtagkit evaluate`, the fitted weights compared.
The analysis in benchmarks/results/mlp_step.md (Summary, Notes) is written by hand around the
tables this prints.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hashtagkit.devices import autocast  # noqa: E402
from hashtagkit.heads.mlp import MasterWeightStep, build_mlp, training_loss  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "mlp_step.md"
BF16 = torch.bfloat16
CPU = torch.device("cpu")


# --- the yardstick: the step's GEMMs alone -------------------------------------------------------
def gemms(b: int, d: int, h: int, c: int) -> list[tuple[str, str, callable, callable, float]]:
    """(name, shape, into a preallocated output, into a fresh one, FLOPs) for each GEMM a step
    runs, with the operands in the layouts the step (and autograd) gives them."""
    torch.manual_seed(0)
    rows = []
    dims = [("fc1", d, h), ("fc2", h, h), ("fc3", h, c)]
    for name, n_in, n_out in dims:
        x = torch.randn(b, n_in).to(BF16)
        w = torch.randn(n_out, n_in).to(BF16)
        bias = torch.randn(n_out).to(BF16)
        g = torch.randn(b, n_out).to(BF16)
        out_f, out_w, out_x = torch.empty(b, n_out, dtype=BF16), torch.empty(n_out, n_in, dtype=BF16), \
            torch.empty(b, n_in, dtype=BF16)
        fl = 2.0 * b * n_in * n_out
        rows.append((f"{name} forward", f"addmm: {b}x{n_in} @ ({n_out}x{n_in})^T + bias",
                     lambda bias=bias, x=x, w=w, o=out_f: torch.addmm(bias, x, w.t(), out=o),
                     lambda bias=bias, x=x, w=w: torch.addmm(bias, x, w.t()), fl))
        rows.append((f"{name} weight grad", f"mm: ({b}x{n_out})^T @ {b}x{n_in}",
                     lambda g=g, x=x, o=out_w: torch.mm(g.t(), x, out=o), lambda g=g, x=x: torch.mm(g.t(), x), fl))
        if name != "fc1":
            rows.append((f"{name} input grad", f"mm: {b}x{n_out} @ {n_out}x{n_in}",
                         lambda g=g, w=w, o=out_x: torch.mm(g, w, out=o), lambda g=g, w=w: torch.mm(g, w), fl))
    return rows


# --- step variants -------------------------------------------------------------------------------
class Variant:
    """A model built from the seed and a `step(xb, yb) -> loss`."""

    def __init__(self, kind: str, d: int, h: int, c: int, seed: int) -> None:
        torch.manual_seed(seed)
        self.kind = kind
        self.model = build_mlp(d, h, c, 0.5)[1:].train()
        fused = kind != "master_foreach"
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=1e-4, fused=fused,
                                     foreach=None if fused else True)
        self.cfg: dict = {}
        if kind in ("master", "master_foreach"):
            self.master = MasterWeightStep(self.model, self.cfg, CPU)
        elif kind == "bf16_params":
            self.work = build_mlp(d, h, c, 0.5)[1:].train().to(BF16)
            self.masters = list(self.model.parameters())
            self.copies = list(self.work.parameters())
            with torch.no_grad():
                for w, m in zip(self.copies, self.masters, strict=True):
                    w.copy_(m)
                    m.grad = torch.zeros_like(m)

    def step(self, xb: torch.Tensor, yb: torch.Tensor) -> float:
        if self.kind == "autocast":
            with autocast(CPU, "bf16"):
                loss = training_loss(self.model(xb).float(), yb, self.cfg)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        elif self.kind == "bf16_params":
            with autocast(CPU, "bf16"):  # the loss as autocast computes it; the layers are bf16 already
                loss = training_loss(self.work(xb).float(), yb, self.cfg)
            self.work.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():
                for m, w in zip(self.masters, self.copies, strict=True):
                    m.grad.copy_(w.grad)
            self.opt.step()
            with torch.no_grad():
                for w, m in zip(self.copies, self.masters, strict=True):
                    w.copy_(m)
        else:
            loss = self.master(xb, yb)
            self.opt.step()
            self.master.refresh()
        return float(loss.detach())


VARIANTS = {"autocast": "autocast loop (today's plain torch loop and MLPHead step)",
            "bf16_params": "bf16 working copies as parameters, fp32 masters, autograd backward",
            "master": "MasterWeightStep (MLPHead now): + backward written out into kept buffers",
            "master_foreach": "MasterWeightStep with foreach AdamW instead of fused"}


def batches(X: torch.Tensor, Y: torch.Tensor, b: int, n: int, seed: int) -> list:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        idx = torch.randint(0, len(X), (b,), generator=gen)
        out.append((X[idx], Y[idx]))
    return out


def interleaved(X, Y, gm: list, extra: list, cfg: dict) -> tuple[dict, dict, dict, dict]:
    """Every variant built once from the same seed, then step k of each in turn (the order
    rotating), with the same batch and the same dropout seed, and the GEMMs alone once between
    steps: a burst of load on the shared machine falls on all of them alike. Returns the seconds
    of every timed step per variant (step 0, the warm-up, left out), the losses of every step,
    the final weights, and the seconds of every GEMM (into a kept output; `fresh ` + its name: into
    a new one) and of every call of `extra`."""
    variants = {kind: Variant(kind, X.shape[1], cfg["hidden"], Y.shape[1], seed=0) for kind in VARIANTS}
    data = batches(X, Y, cfg["batch"], cfg["steps"] + 1, seed=2)
    times: dict[str, list] = {k: [] for k in variants}
    losses: dict[str, list] = {k: [] for k in variants}
    calls = [(name, pre) for name, _, pre, _, _ in gm] + [("fresh " + name, fresh) for name, _, _, fresh, _ in gm] \
        + [(what, fn) for what, _, fn in extra]
    g_times: dict[str, list] = {name: [] for name, _ in calls}
    order = list(variants)
    for k, (xb, yb) in enumerate(data):
        for kind in order[k % len(order):] + order[: k % len(order)]:
            torch.manual_seed(1000 + k)  # step k's dropout masks, the same for every variant
            t0 = time.perf_counter()
            losses[kind].append(variants[kind].step(xb, yb))
            if k:
                times[kind].append(time.perf_counter() - t0)
        for name, fn in calls:
            t0 = time.perf_counter()
            fn()
            if k:
                g_times[name].append(time.perf_counter() - t0)
        if k % 4 == 0:
            print(f"step {k}:", {kk: round(1e3 * v[-1]) for kk, v in times.items() if v},
                  f"GEMMs {1e3 * sum(g_times[name][-1] for name, *_ in gm if k):.0f} ms", flush=True)
    weights = {k: [p.detach().clone() for p in v.model.parameters()] for k, v in variants.items()}
    del variants
    gc.collect()
    return times, losses, weights, g_times


CATEGORIES = [
    ("GEMM forward (addmm)", ("aten::addmm",)),
    ("GEMM backward (mm)", ("aten::mm",)),
    ("casts and copies (weights, gradients, logits)", ("aten::copy_", "aten::_to_copy", "aten::to")),
    ("optimizer (AdamW)", ("aten::_fused_adamw_", "aten::_foreach_*")),
    ("zero_grad (frees the gradients)", ("Optimizer.zero_grad*",)),
    ("ReLU and dropout (forward and backward)", ("aten::bernoulli_", "aten::div_", "aten::mul", "aten::mul_",
                                                 "aten::clamp_min", "aten::clamp_min_", "aten::relu",
                                                 "aten::relu_", "aten::threshold_backward")),
]
OTHER, UNTRACED = "loss, bias sums, other ops", "untraced: Python, autograd engine, freeing memory"


def matches(key: str, pattern: str) -> bool:
    return key.startswith(pattern[:-1]) if pattern.endswith("*") else key == pattern


def profiles(X, Y, cfg: dict) -> dict[str, tuple[dict, float]]:
    """The autocast and master steps profiled one step at a time, in turn, `profile_steps` times
    each: per variant the step with the least wall time, as ms by category (self CPU time of the
    ops; what no op accounts for is `UNTRACED`) and its wall ms."""
    variants = {kind: Variant(kind, X.shape[1], cfg["hidden"], Y.shape[1], seed=0) for kind in ("autocast", "master")}
    data = batches(X, Y, cfg["batch"], cfg["profile_steps"] + 1, seed=3)
    best: dict[str, tuple[dict, float]] = {}
    for k, (xb, yb) in enumerate(data):
        for kind, v in variants.items():
            if not k:
                v.step(xb, yb)
                continue
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                t0 = time.perf_counter()
                v.step(xb, yb)
                wall = 1e3 * (time.perf_counter() - t0)
            out = {name: 0.0 for name, _ in CATEGORIES}
            out[OTHER] = 0.0
            for ev in prof.key_averages():
                self_ms = ev.self_cpu_time_total / 1e3
                name = next((n for n, keys in CATEGORIES if any(matches(ev.key, kk) for kk in keys)), None)
                if name:
                    out[name] += self_ms
                elif ev.key.startswith(("aten::", "autograd::")):
                    out[OTHER] += self_ms
            out[UNTRACED] = max(0.0, wall - sum(out.values()))
            if kind not in best or wall < best[kind][1]:
                best[kind] = (out, wall)
    del variants
    gc.collect()
    return best


def head_step(data, cfg: dict, master: bool, steps: int) -> dict:
    """MLPHead fitting rows in memory for `steps` steps: the seconds of each step but the first
    (the time between the batches its loop takes: the step and the next batch's gather), and
    the epoch's loss."""
    from hashtagkit.heads import mlp

    stamps: list[float] = []
    timed = mlp.timed

    def stamped(items, waits):  # the head's own loop, each batch's hand-over time noted
        for item in timed(items, waits):
            stamps.append(time.perf_counter())
            yield item

    head = mlp.MLPHead(hidden=cfg["hidden"], batch_size=cfg["batch"], iterations=steps, cache="memory", device="cpu",
                       patience=0, random_state=0)
    head._master_weights = master
    mlp.timed = stamped
    try:
        head.fit_data(data)
    finally:
        mlp.timed = timed
    out = {"steps_s": list(np.diff(stamps)[1:]), "loss": head.history_["epochs"][0]["loss"],
           "precision": head.history_["precision"]}
    del head
    gc.collect()
    return out


def alone(cfg: dict, d: int, h: int, c: int) -> list[tuple[str, int, callable]]:
    """The step's largest costs besides its GEMMs, each by itself on tensors of the step's
    sizes: (what, times a step, call)."""
    b = cfg["batch"]
    sizes = [(h, d), (h,), (h, h), (h,), (c, h), (c,)]
    p = [torch.randn(s) for s in sizes]
    g16 = [torch.randn(s).to(BF16) for s in sizes]
    g32, m, v = ([torch.zeros(s) for s in sizes] for _ in range(3))
    w16 = [x.to(BF16) for x in p]
    steps = [torch.tensor(1.0) for _ in sizes]
    mask = torch.empty(b, h, dtype=BF16)
    n = sum(x.numel() for x in p)

    def adamw():
        torch._fused_adamw_(p, g32, m, v, [], steps, lr=1e-3, beta1=0.9, beta2=0.999, weight_decay=1e-4, eps=1e-8,
                            amsgrad=False, maximize=False)

    def grads():
        for x, y in zip(g32, g16, strict=True):
            x.copy_(y)

    def refresh():
        for x, y in zip(w16, p, strict=True):
            x.copy_(y)

    def bits():  # a Bernoulli(0.5) mask from random bytes, 8 elements a draw: other masks than bernoulli_'s
        r = torch.randint(0, 256, (b * h // 8, 1), dtype=torch.uint8)
        mask.view(-1, 8).copy_(r.bitwise_right_shift(torch.arange(8, dtype=torch.uint8)).bitwise_and_(1)).mul_(2)

    return [(f"fused AdamW over the {n / 1e6:.1f} M float32 masters", 1, adamw),
            ("the bf16 weight gradients cast into the masters' float32 .grad (in place)", 1, grads),
            ("the masters cast into the bf16 working copies (in place, `refresh`)", 1, refresh),
            (f"a dropout mask, bernoulli_(0.5) of {b}x{h} bf16 (nn.Dropout's; torch's CPU generator, serial)", 2,
             lambda: mask.bernoulli_(0.5)),
            ("for comparison, not used: a Bernoulli(0.5) mask unpacked from random bytes (other masks: not "
             "nn.Dropout's for a seed)", 2, bits)]


# --- quality -------------------------------------------------------------------------------------
# `hashtagkit fit ...` with MLPHead's training step chosen: argv[1] the repository, argv[2] 1 (MasterWeightStep)
# or 0 (the autocast loop), then the command's arguments
FIT = """import sys
sys.path.insert(0, sys.argv[1])
from hashtagkit.heads.mlp import MLPHead
MLPHead._master_weights = sys.argv[2] == "1"
from hashtagkit.cli.main import main
sys.argv = ["hashtagkit"] + sys.argv[3:]
main()
"""


def quality(store: Path, seeds: list[int], epochs: int, hidden: int, workdir: Path) -> list[dict]:
    """MLPHead fitted with each training step, seed by seed (alternating), scored on the store's test rows."""
    rows = []
    for seed in seeds:
        for master in (False, True):
            out = workdir / f"mlp-{'master' if master else 'autocast'}-s{seed}"
            t0 = time.perf_counter()
            fit = subprocess.run([sys.executable, "-c", FIT, str(HERE.parent), "1" if master else "0", "fit", str(store),
                                  "--head", "mlp", "-o", str(out), "--overwrite", "--seed", str(seed),
                                  "--set", f"epochs={epochs}", "--set", f"hidden={hidden}"], capture_output=True, text=True)
            fit_s = time.perf_counter() - t0
            if fit.returncode:
                raise RuntimeError(f"fit failed: {fit.stderr[-2000:]}")
            ev = subprocess.run([str(Path(sys.executable).parent / "hashtagkit"), "evaluate", str(out), "--json"],
                                capture_output=True, text=True, check=True)
            m = json.loads(ev.stdout)
            hist = json.loads((out / "model" / "history.json").read_text())
            train_s = sum(e["train_s"] for e in hist["epochs"])
            rows.append({"seed": seed, "step": "master" if master else "autocast", "metrics": m, "fit_s": fit_s,
                         "train_s": train_s, "steps": hist["iterations"], "loss": hist["epochs"][-1]["loss"],
                         "losses": [e["loss"] for e in hist["epochs"]],
                         "val": [e.get("val_recall@5") for e in hist["epochs"]], "precision": hist["precision"],
                         "hidden": hidden})
            print("quality", seed, rows[-1]["step"], f"fit {fit_s:.0f} s (train {train_s:.0f} s)",
                  {k: round(100 * m[k], 2) for k in ("precision@1", "recall@5", "accuracy@5")},
                  f"loss {rows[-1]['loss']:.5f}", flush=True)
    for r in rows:  # the fitted weights of the two steps, seed by seed
        other = next(o for o in rows if o["seed"] == r["seed"] and o["step"] != r["step"])
        a, bb = (torch.load(workdir / f"mlp-{x['step']}-s{x['seed']}" / "model" / "model.pt", weights_only=True)
                 for x in (r, other))
        r["same_weights"] = a.keys() == bb.keys() and all(torch.equal(a[k], bb[k]) for k in a)
    return rows


# --- report --------------------------------------------------------------------------------------
def fmt(x: float, nd: int = 1) -> str:
    return f"{x:,.{nd}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small shapes, few steps: a smoke run")
    ap.add_argument("--steps", type=int, default=16, help="timed steps per variant (after a warm-up step)")
    ap.add_argument("--head-rounds", type=int, default=4, help="MLPHead fits with each step (alternating)")
    ap.add_argument("--quality", type=Path, default=None, metavar="STORE")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=HERE / ".cache" / "mlp-step")
    ap.add_argument("--skip-speed", action="store_true", help="only the quality table (with --quality)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.quick:
        cfg = {"batch": 64, "dim": 512, "hidden": 256, "classes": 97, "steps": 4,
               "profile_steps": 2, "head_steps": 4, "head_rounds": 2, "rows": 1024}
    else:
        cfg = {"batch": 512, "dim": 8192, "hidden": 4096, "classes": 997, "steps": args.steps,
               "profile_steps": 3, "head_steps": 8, "head_rounds": args.head_rounds, "rows": 8192}
    b, d, h, c = cfg["batch"], cfg["dim"], cfg["hidden"], cfg["classes"]
    load0 = os.getloadavg()
    t_start = time.perf_counter()
    lines: list[str] = []
    if not args.skip_speed:
        lines += speed(cfg, b, d, h, c)
    if args.quality:
        args.workdir.mkdir(parents=True, exist_ok=True)
        seeds = [int(s) for s in args.seeds.split(",")]
        qrows = quality(args.quality, seeds, args.epochs, cfg["hidden"], args.workdir)
        lines += quality_lines(qrows, args)
    load1 = os.getloadavg()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=HERE).stdout.strip()
    except OSError:
        commit = "?"
    flags = open("/proc/cpuinfo").read() if Path("/proc/cpuinfo").exists() else ""
    isa = [f for f in ("avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16") if f" {f}" in flags]
    model = next((ln.split(":", 1)[1].strip() for ln in flags.splitlines() if ln.startswith("model name")), platform.processor())
    head = ["# MLP training step vs the bf16 matmul rate at its shapes (issue #27, item 1)", "",
            f"Command: `benchmarks/mlp_step.py {' '.join(sys.argv[1:])}`; {time.perf_counter() - t_start:.0f} s in all; "
            f"commit {commit}.", "",
            f"Machine: {model}, {os.cpu_count()} cores ({', '.join(isa) or 'no bf16 instructions'}), "
            f"{platform.platform()}; load average (1-minute) before {load0[0]:.1f}, after {load1[0]:.1f}.",
            f"Versions: Python {platform.python_version()}, torch {torch.__version__} "
            f"({torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads), numpy {np.__version__}.", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(head + lines) + "\n"
    args.out.write_text(text)
    print(text)


def speed(cfg: dict, b: int, d: int, h: int, c: int) -> list[str]:
    torch.manual_seed(0)
    X = torch.randn(cfg["rows"], d).to(BF16)  # standardised rows, as the first Linear reads them
    Y = (torch.rand(cfg["rows"], c) < 5 / 997).float()
    from hashtagkit.heads.data import ArrayData

    gen = np.random.default_rng(0)
    head_data = ArrayData(np.maximum(gen.normal(1, 1, (cfg["rows"], d)), 0).astype(np.float16),
                          (gen.random((cfg["rows"], c)) < 5 / 997).astype(np.uint8))
    gm = gemms(b, d, h, c)
    extra = alone(cfg, d, h, c)
    times, losses, weights, g_times = interleaved(X, Y, gm, extra, cfg)
    counts = [(what, n) for what, n, _ in extra]
    del extra  # its tensors: the size of a model and its optimizer
    heads: dict[str, list] = {"autocast": [], "master": []}
    for r in range(cfg["head_rounds"]):
        for kind in (heads if r % 2 == 0 else list(heads)[::-1]):
            heads[kind].append(head_step(head_data, cfg, kind == "master", cfg["head_steps"]))
        print(f"head round {r + 1}:", {k: round(1e3 * float(np.median(v[-1]["steps_s"]))) for k, v in heads.items()},
              flush=True)
    prof = profiles(X, Y, cfg)
    flops = sum(f for *_, f in gm)
    g_min = {name: min(v) for name, v in g_times.items()}
    g_med = {name: float(np.median(v)) for name, v in g_times.items()}
    gemm_s, gemm_med = sum(g_min[name] for name, *_ in gm), sum(g_med[name] for name, *_ in gm)
    gemm_fresh_s = sum(g_min["fresh " + name] for name, *_ in gm)
    rate = flops / gemm_s
    best = {k: min(v) for k, v in times.items()}
    med = {k: float(np.median(v)) for k, v in times.items()}
    n_steps = len(times["autocast"])
    L = [f"Step: {d}->{h}->{h}->{c}, batch {b}, bf16, dropout 0.5, AdamW, the paper's sigmoid cross-entropy; "
         f"{flops / 1e9:.1f} GFLOP of GEMMs a step. The machine is shared with other jobs, so everything is timed "
         f"interleaved: all step variants built once from one seed, then {n_steps} steps of each in turn (after a "
         "warm-up step; the order rotating), every variant's step k on the same batch with the same dropout seed, "
         "and the GEMMs alone once between steps. **best** = the fastest of the repetitions (what the "
         "code costs when the other jobs leave it the cores), median = the middle one.", "",
         "## The yardstick: the step's GEMMs alone, at their own shapes", "",
         "| GEMM | shape | ms (best) | GFLOPS (best) | ms (median) | into a fresh output, as autograd runs it: ms (best) |",
         "|---|---|---|---|---|---|"]
    for name, shape, _, _, f in gm:
        L.append(f"| {name} | {shape} | {fmt(1e3 * g_min[name])} | {fmt(f / g_min[name] / 1e9, 0)} | "
                 f"{fmt(1e3 * g_med[name])} | {fmt(1e3 * g_min['fresh ' + name])} |")
    L += [f"| **all {len(gm)}** | | **{fmt(1e3 * gemm_s)}** | **{fmt(rate / 1e9, 0)}** | {fmt(1e3 * gemm_med)} | "
          f"{fmt(1e3 * gemm_fresh_s)} |", "",
          f"The bf16 matmul rate at the step's shapes: **{rate / 1e9:,.0f} GFLOPS** ({flops / 1e9:.1f} GFLOP in "
          f"{1e3 * gemm_s:,.0f} ms; from the medians {flops / gemm_med / 1e9:,.0f} GFLOPS). A step can reach at most "
          "that. fc1's input gradient is never computed (its input is the data), so a step runs 8 GEMMs, not 9.", "",
          "## The step, variant by variant", "",
          "| step | ms/step (best) | GFLOPS | **% of the bf16 matmul rate at its shapes** | ms/step (median) | % (medians) | "
          "speed-up vs autocast (best; medians) | losses vs autocast, every step |",
          "|---|---|---|---|---|---|---|---|"]
    ref_l, ref_w = losses["autocast"], weights["autocast"]
    for kind, label in VARIANTS.items():
        dl = max(abs(x - y) for x, y in zip(losses[kind], ref_l, strict=True))
        same_w = all(torch.equal(x, y) for x, y in zip(weights[kind], ref_w, strict=True))
        dw = max(float((x - y).abs().max()) for x, y in zip(weights[kind], ref_w, strict=True))
        agree = "the reference" if kind == "autocast" else \
            ("identical, and the final weights bit for bit" if dl == 0 and same_w else
             f"max difference {dl:.1e} (weights: {dw:.1e})")
        L.append(f"| {label} | {fmt(1e3 * best[kind])} | {fmt(flops / best[kind] / 1e9, 0)} | "
                 f"**{100 * gemm_s / best[kind]:.1f}** | {fmt(1e3 * med[kind])} | {100 * gemm_med / med[kind]:.1f} | "
                 f"{best['autocast'] / best[kind]:.2f}x; {med['autocast'] / med[kind]:.2f}x | {agree} |")
    hb = {k: min(t for x in v for t in x["steps_s"]) for k, v in heads.items()}
    hm = {k: float(np.median([t for x in v for t in x["steps_s"]])) for k, v in heads.items()}
    for kind in heads:
        same = heads[kind][0]["loss"] == heads["autocast"][0]["loss"]
        L.append(f"| MLPHead, {'autocast loop (before)' if kind == 'autocast' else 'MasterWeightStep (after)'}, "
                 f"cached rows | {fmt(1e3 * hb[kind])} | {fmt(flops / hb[kind] / 1e9, 0)} | "
                 f"**{100 * gemm_s / hb[kind]:.1f}** | {fmt(1e3 * hm[kind])} | {100 * gemm_med / hm[kind]:.1f} | "
                 f"{hb['autocast'] / hb[kind]:.2f}x; {hm['autocast'] / hm[kind]:.2f}x | "
                 f"epoch loss {heads[kind][0]['loss']:.6f}{' (the same)' if same and kind != 'autocast' else ''} |")
    L += ["", f"MLPHead rows: the head fitting {cfg['rows']:,} random rows (cached) for {cfg['head_steps']} steps, "
          f"{cfg['head_rounds']} fits with each step alternating; a step = the time between two batches taken by its "
          "own loop (the step and the next batch's gather from the cached rows), the first step left out.", "",
          "## Each change's share", "",
          "| change | ms/step saved (best; medians) | share of the saving (best; medians) |", "|---|---|---|"]
    total_b, total_m = best["autocast"] - best["master"], med["autocast"] - med["master"]
    for label, x, y in (("bf16 working copies updated in place after the optimizer step, float32 gradients kept "
                         "(no fresh weight casts in the forward, no fresh float32 gradients in the backward)",
                         "autocast", "bf16_params"),
                        ("backward written out into buffers allocated once (no fresh bf16 weight gradients, "
                         "no autograd)", "bf16_params", "master")):
        sb, sm = best[x] - best[y], med[x] - med[y]
        L.append(f"| {label} | {fmt(1e3 * sb)}; {fmt(1e3 * sm)} | {100 * sb / total_b:.0f}%; {100 * sm / total_m:.0f}% |")
    L.append(f"| fused AdamW instead of foreach (the head used fused already: not part of the saving) | "
             f"{fmt(1e3 * (best['master_foreach'] - best['master']))}; "
             f"{fmt(1e3 * (med['master_foreach'] - med['master']))} | |")
    L += ["", "## The largest costs besides the GEMMs, each alone (interleaved with the steps)", "",
          "| what | ms (best) | ms (median) | times a step | ms a step (best) |", "|---|---|---|---|---|"]
    for what, n in counts:
        L.append(f"| {what} | {fmt(1e3 * g_min[what])} | {fmt(1e3 * g_med[what])} | {n} | {fmt(1e3 * n * g_min[what])} |")
    L += ["", "## Where a step's time goes (profiled: the fastest of "
          f"{cfg['profile_steps']} profiled steps each, ms)", "",
          "| part | autocast loop | MasterWeightStep |", "|---|---|---|"]
    for key in prof["autocast"][0]:
        L.append(f"| {key} | {fmt(prof['autocast'][0][key])} | {fmt(prof['master'][0][key])} |")
    L.append(f"| **wall of the profiled step** | **{fmt(prof['autocast'][1])}** | **{fmt(prof['master'][1])}** |")
    return L + [""]


def quality_lines(rows: list[dict], args) -> list[str]:
    def m(r, k):
        return 100 * float(r["metrics"][k])

    L = ["## Quality: the same training, before and after", "",
         f"MLPHead (`fast` preset, hidden {rows[0]['hidden']}, epochs={args.epochs}, precision {rows[0]['precision']}) on "
         f"`{args.quality.name}`, fitted with the autocast loop (before) and MasterWeightStep (after) for seeds "
         f"{args.seeds}, alternating; `hashtagkit evaluate` on the store's test rows.", "",
         "| seed | step | P@1 | R@5 | A@5 | final train loss | train loss per epoch | val R@5 per epoch | steps | training s | "
         "fit s | fitted weights equal to the other step's |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        L.append(f"| {r['seed']} | {r['step']} | {m(r, 'precision@1'):.2f} | {m(r, 'recall@5'):.2f} | "
                 f"{m(r, 'accuracy@5'):.2f} | {r['loss']:.5f} | {', '.join(f'{x:.5f}' for x in r['losses'])} | "
                 f"{', '.join(f'{100 * v:.2f}' for v in r['val'] if v is not None)} | {r['steps']} | "
                 f"{r['train_s']:.0f} | {r['fit_s']:.0f} | {'bit for bit' if r['same_weights'] else 'no'} |")
    L += ["", "| measure | before (mean ± std over seeds) | after (mean ± std) | after - before per seed (mean, max abs) |",
          "|---|---|---|---|"]
    for key, label in (("precision@1", "P@1"), ("recall@5", "R@5"), ("accuracy@5", "A@5"), ("loss", "final train loss")):
        get = (lambda r: r["loss"]) if key == "loss" else (lambda r, key=key: m(r, key))
        a = np.array([get(r) for r in rows if r["step"] == "autocast"])
        bb = np.array([get(r) for r in rows if r["step"] == "master"])
        dd = bb - a
        nd = 5 if key == "loss" else 2
        sd = lambda v: v.std(ddof=1) if len(v) > 1 else 0.0  # noqa: E731
        L.append(f"| {label} | {a.mean():.{nd}f} ± {sd(a):.{nd}f} | {bb.mean():.{nd}f} ± {sd(bb):.{nd}f} | "
                 f"{dd.mean():+.{nd}f}, {np.abs(dd).max():.{nd}f} |")
    return L + [""]


if __name__ == "__main__":
    main()
