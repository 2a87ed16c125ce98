"""GPU, ready to be measured (issue #27 item 4): every CUDA path of hashtagkit checked and timed in one run.

    .venv/bin/python benchmarks/gpu_check.py            # `make gpu-check`; writes benchmarks/results/gpu_check.md
    .venv/bin/python benchmarks/gpu_check.py --quick --out /tmp/g.md --json /tmp/g.json   # a smoke run (1-1.5 minutes)

One Markdown table, one row per check, each `ok`, `FAILED (why)` or `skipped (why)`:

1. environment: torch and its CUDA build, the GPUs (name, memory), NCCL, faiss and whether it has
   GPU support, the CPU and its bf16/AMX flags.
2. pytest of the tests whose path depends on CUDA (`CUDA_TESTS`), in a subprocess: passed/skipped.
3. extract with a seeded random VGG-16 (`vgg16-object=random`) on demo photos drawn here
   (`hashtagkit.data.demo.make_demo`): the CPU fp32 features are the reference (3a; its model alone
   on pre-decoded pixels must give them again: cosine 1.0), the CPU's bf16 (3b), CUDA fp16 with the
   default decode (3c) and with `decode="gpu"` (nvJPEG, 3d): images/s of `hashtagkit.extract` against
   the model alone on pre-decoded pixels (as benchmarks/roofline_extract.py measures "model-only"),
   and the min/mean cosine of each photo's features against the CPU fp32 ones (floor 0.999). On
   CUDA the engine's rate is its steady state: runs of N and R x N rows (the same photos again),
   the extra rows over the extra time, best of 2 each, so the workers' start-up is not counted.
4. MLP training step at the head's shapes (8192 -> 4096 -> 4096 -> 997, batch 512; the plain loop
   of benchmarks/roofline.py: fused AdamW, autocast, caffe loss) against the matmul peak measured
   in the same run at those shapes and precision: the CPU's training precision (4a), CUDA bf16 (4b)
   and fp16 (4c).
5. kNN exact search (IndexFlatIP) on random unit vectors: faiss-cpu against a numpy brute-force
   top-k (5a), faiss-gpu against faiss-cpu (5b): same neighbours (%; also "up to ties": a neighbour
   whose float64 similarity equals the k-th best within 1e-5 counts as right) and speed ratio;
   hashtagkit's KNNHead is checked on whichever it searches (its GPU copy when faiss has GPUs).
6. DDP: `torchrun --standalone` running `hashtagkit fit --head mlp` on a small planted store, gloo
   with 2 CPU processes (6a, runs everywhere) and NCCL with a process per GPU (6b, 2+ GPUs).

Without CUDA every CUDA row says `skipped (no CUDA)` and the rest still runs. Each section runs in a
child process of this script with a timeout (a hang or a crashed driver becomes that row's FAILED);
a section that would not fit in `--budget-seconds` is `skipped (budget)`. The table is always
written. `HASHTAGKIT_GPU_CHECK_FAIL=knn,3b` (section names or row ids) makes those raise: the test's
hook for a failing row (tests/project/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results" / "gpu_check.md"
LOGS = HERE / ".cache" / "gpu_check"  # each section's output of the last run (git-ignored)
FAIL_ENV = "HASHTAGKIT_GPU_CHECK_FAIL"
COSINE_FLOOR = 0.999
TIE_TOL = 1e-5
MODEL_TILE_CUDA = 8  # the model alone on CUDA runs the photos this many times over (64 take milliseconds)
CUDA = "cuda"  # the device of the CUDA rows (a dry run of their code on the CPU may set it to "cpu")

# Tests whose path depends on CUDA: where CUDA is absent they run their refusal / simulated branch.
CUDA_TESTS = [
    "tests/extraction/test_extract_budget.py::test_budget_overrides_and_cuda",  # the CUDA budget (lanes, decoders)
    "tests/extraction/test_extract.py::test_cli_errors",  # extract --device cuda: refused, or run with CUDA
    "tests/extraction/test_extract_decode.py::test_gpu_decode_is_refused_without_cuda_and_with_dask",
    "tests/data/test_images_decode.py::test_gpu_path_on_the_cpu_matches_the_default_pixels",  # nvJPEG path's code
    "tests/heads/test_knn_size.py::test_refit_does_not_search_a_previous_fits_gpu_copy",  # kNN's GPU copy
    "tests/heads/test_knn_size.py::test_an_index_faiss_cannot_copy_to_gpu_is_searched_on_cpu",
    "tests/heads/test_ddp.py::test_two_processes_train_the_same_model_as_one",  # device auto: NCCL where CUDA is
]
QUICK_TESTS = CUDA_TESTS[:1]

SECTIONS = ("environment", "pytest", "extract", "mlp", "knn", "ddp")
SECTION_NO = {name: str(i) for i, name in enumerate(SECTIONS, 1)}
# the measurements first, the tests last: when the budget runs short it is the tests that go
RUN_ORDER = ("environment", "extract", "mlp", "knn", "ddp", "pytest")
# seconds each section may take (full run, quick run); the budget can only shorten them
TIMEOUTS = {"environment": (60, 60), "pytest": (180, 90), "extract": (300, 150), "mlp": (150, 60),
            "knn": (120, 60), "ddp": (240, 120)}
MIN_SECONDS = 15  # a section is not started with less than this left of the budget


def config(quick: bool) -> dict:
    if quick:
        return {"photos": 4, "repeats_cuda": 4, "batch": 4, "cpu_model_rounds": 1, "mlp": (1024, 256, 97, 64), "mlp_steps_cpu": 3,
                "mlp_steps_cuda": 10, "gemm_seconds": 0.02, "knn": (2000, 64, 50, 10), "ddp_rows": 256,
                "tests": QUICK_TESTS}
    return {"photos": 64, "repeats_cuda": 64, "batch": 32, "cpu_model_rounds": 2, "mlp": (8192, 4096, 997, 512), "mlp_steps_cpu": 6,
            "mlp_steps_cuda": 30, "gemm_seconds": 0.3, "knn": (20_000, 512, 500, 50), "ddp_rows": 1024,
            "tests": CUDA_TESTS}


# --- rows ------------------------------------------------------------------------------------------
def make_row(rid: str, check: str, device: str, status: str = "ok", result: str = "", notes: str = "",
             values: dict | None = None) -> dict:
    return {"id": rid, "check": check, "device": device, "status": status, "result": result, "notes": notes,
            "values": values or {}}


def num(v: float) -> str:
    """3 significant digits below 100, whole numbers with thousands separators above."""
    return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"


def budget_text(b) -> str:
    return f"{b.lanes} lane(s) x {b.threads} thread(s), {b.workers} decode worker(s)"


def one_line(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [""])[0][:300]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def injected(name: str) -> None:
    """The test's hook: a section or row named in HASHTAGKIT_GPU_CHECK_FAIL raises here."""
    if name in {s.strip() for s in os.environ.get(FAIL_ENV, "").split(",")}:
        raise RuntimeError(f"injected failure ({FAIL_ENV}={os.environ[FAIL_ENV]})")


def guarded(rid: str, check: str, device: str, fn) -> dict:
    """One row: fn() -> (result, notes, values) or a finished row; an exception is FAILED (its one line)."""
    try:
        injected(rid)
        out = fn()
        return out if isinstance(out, dict) else make_row(rid, check, device, "ok", *out)
    except Exception as e:  # noqa: BLE001 - every failure is a row, never the end of the run
        traceback.print_exc()
        return make_row(rid, check, device, f"FAILED ({one_line(e)})")


def cuda_state() -> tuple[int, str | None]:
    """(GPUs torch sees, why CUDA rows skip or None)."""
    import torch

    if not torch.cuda.is_available():
        return 0, "no CUDA" + ("" if torch.version.cuda else ": this torch is a CPU build")
    return torch.cuda.device_count(), None


def sync() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def bounded(cmd: list[str], timeout: float, env: dict | None = None, cwd: Path = REPO) -> tuple[int | None, str, str]:
    """Run cmd in its own process group; at the timeout the whole group is killed (rc None)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=max(1.0, timeout))
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return None, out, err


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no output"


# --- 1. environment ------------------------------------------------------------------------------
def cpu_info() -> dict:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")),
                 platform.processor() or platform.machine())
    flags = [f for f in ("avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16", "amx_fp16") if f" {f}" in info]
    return {"model": model, "cores": os.cpu_count(), "flags": flags}


def section_environment(cfg: dict) -> list[dict]:
    def env():
        import faiss
        import numpy as np
        import torch
        import torchvision

        from hashtagkit.devices import cpu_has_bf16

        cpu = cpu_info()
        gpus = []
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                gpus.append({"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                             "capability": f"{p.major}.{p.minor}"})
        driver = None
        if shutil.which("nvidia-smi"):
            rc, out, _ = bounded(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], 20)
            driver = out.strip().splitlines()[0] if rc == 0 and out.strip() else None
        nccl = None
        if torch.cuda.is_available():
            try:
                v = torch.cuda.nccl.version()
                nccl = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
            except Exception:  # noqa: BLE001 - a build without NCCL
                nccl = None
        faiss_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else None
        values = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
                  "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
                  "torchvision": torchvision.__version__, "numpy": np.__version__, "faiss": faiss.__version__,
                  "faiss_gpu_build": hasattr(faiss, "StandardGpuResources"), "faiss_gpus": faiss_gpus,
                  "cuda_available": torch.cuda.is_available(), "gpus": gpus, "driver": driver, "nccl": nccl,
                  "nccl_available": torch.distributed.is_available() and torch.distributed.is_nccl_available(),
                  "cpu": cpu, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                  "cpu_bf16": cpu_has_bf16(), "torch_threads": torch.get_num_threads()}
        gpu_text = "; ".join(f"{g['name']} ({g['memory_gib']} GiB, sm {g['capability']})" for g in gpus) or "none"
        result = (f"torch {torch.__version__} (CUDA build {torch.version.cuda or 'none'}), CUDA available: "
                  f"{'yes' if gpus else 'no'}; GPUs: {gpu_text}; faiss {faiss.__version__}, GPU support: "
                  f"{'yes' if values['faiss_gpu_build'] else 'no'} (get_num_gpus() = {faiss_gpus})")
        notes = (f"CPU {cpu['model']}, {cpu['cores']} cores, flags {', '.join(cpu['flags']) or 'none of bf16/AMX'}, "
                 f"torch CPU capability {values['cpu_capability']}, native bf16 {values['cpu_bf16']}; "
                 f"driver {driver or 'none (no nvidia-smi)'}; NCCL {nccl or 'n/a'}"
                 f"{' (torch has NCCL: ' + str(values['nccl_available']) + ')' if not gpus else ''}; "
                 f"cuDNN {values['cudnn'] or 'n/a'}")
        return result, notes, values

    return [guarded("1", "environment", "-", env)]


# --- 2. pytest -----------------------------------------------------------------------------------
def section_pytest(cfg: dict) -> list[dict]:
    def run():
        _, why = cuda_state()
        ids = cfg["tests"]
        env = {k: v for k, v in os.environ.items() if k != FAIL_ENV and not k.startswith("PYTEST_")}
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # none of these tests uses a plugin; loading them takes seconds
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs", *ids]
        t0 = time.perf_counter()
        rc, out, err = bounded(cmd, cfg["deadline"] - time.time() - 5, env)
        seconds = time.perf_counter() - t0
        counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", out)}
        summary = ", ".join(f"{v} {k}" for k, v in counts.items()) or "no summary"
        values = {"rc": rc, "counts": counts, "ids": ids, "seconds": round(seconds, 1)}
        branch = ("their CUDA branches" if why is None else
                  f"{why}: their CPU branches (refusals, the GPU copy simulated, gloo); the CUDA branches stay unexercised")
        notes = (f"{len(ids)} test ids ({', '.join(i.split('::')[1] for i in ids)}) in {seconds:.0f} s, third-party "
                 f"pytest plugins not loaded; ran {branch}"
                 + ("; --quick: the first id only" if ids == QUICK_TESTS and len(ids) < len(CUDA_TESTS) else ""))
        if rc is None:
            return make_row("2", "pytest CUDA-dependent tests", "both", "FAILED (timed out)", summary, notes, values)
        if rc != 0:
            failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", out, re.M)
            why_failed = f"{', '.join(failed[:3]) or last_line(out + err)}"
            return make_row("2", "pytest CUDA-dependent tests", "both", f"FAILED (pytest exit {rc}: {why_failed})",
                            summary, notes, values)
        return summary, notes, values

    return [guarded("2", "pytest CUDA-dependent tests", "both", run)]


# --- 3. extract ----------------------------------------------------------------------------------
def cosines(a, b) -> tuple[float, float]:
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    c = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-300)
    return float(c.min()), float(c.mean())


def section_extract(cfg: dict) -> list[dict]:
    import warnings

    import numpy as np
    import torch

    sys.path.insert(0, str(HERE))
    from roofline_extract import model_rate, pixels_of  # the "model-only" measurement of the roofline

    from hashtagkit.backbones import load_backbone
    from hashtagkit.data.demo import make_demo
    from hashtagkit.data.split import random_split
    from hashtagkit.devices import cpu_has_bf16, extraction_budget
    from hashtagkit.extraction import Extractor, extract
    from hashtagkit.stores import create_store, open_store

    n, batch = cfg["photos"], cfg["batch"]
    work = Path(tempfile.mkdtemp(prefix="hashtagkit-gpu-check-"))
    photos = work / "photos"
    photos.mkdir()
    names = make_demo(photos, n=n, seed=0).paths

    def net():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return [load_backbone("vgg16-object", "random", seed=0)]

    def engine_run(nets, device: str, precision: str, rows: int, decode: str = "default") -> tuple[float, np.ndarray, list]:
        """Seconds of one `extract` over `rows` rows (the n photos over and over), its first n rows' features."""
        paths = [names[i % n] for i in range(rows)]
        split, info = random_split(rows, 1, 0, 0)
        store = work / f"s-{device}-{precision}-{decode}-{rows}.zarr"
        shutil.rmtree(store, ignore_errors=True)
        create_store(store, paths=paths, labels=np.ones((rows, 1), np.uint8), vocab=["x"], split=split,
                     split_info=info, kind="benchmark", image_root=str(photos))
        log: list[str] = []
        sync()
        t0 = time.perf_counter()
        extract(store, nets, device=device, precision=precision, batch_size=batch, decode=decode, dtype="float32",
                progress=False, log=log.append)
        sync()
        seconds = time.perf_counter() - t0
        feats = np.asarray(open_store(store).features("both", np.arange(n)), np.float32)
        shutil.rmtree(store, ignore_errors=True)
        return seconds, feats, log

    def model_only(nets, device: torch.device, precision: str, rounds: int, tile: int = 1) -> tuple[float, np.ndarray]:
        """Images/s of the model alone on pre-decoded pixels (the engine's lanes and threads; the n photos
        `tile` times over), best of `rounds`, and its features."""
        engine = Extractor(nets, device, precision)
        inputs = pixels_of(photos, names, engine.transforms)
        feats = np.concatenate([engine([x[i : i + batch] for x in inputs]) for i in range(0, n, batch)])
        budget = extraction_budget(device)
        tiled = [torch.cat([x] * tile) for x in inputs] if tile > 1 else inputs
        rate = max(model_rate(engine, tiled, batch, budget.lanes, budget.threads) for _ in range(rounds))
        return rate, feats

    rows: list[dict] = []
    ref: dict = {}

    def cpu_row(rid: str, precision: str):
        nets = ref["nets32"] if precision == "fp32" else net()
        seconds, feats, _ = engine_run(nets, "cpu", precision, n)
        rate, model_feats = model_only(nets, torch.device("cpu"), precision, cfg["cpu_model_rounds"])
        if precision == "fp32":
            ref["features"] = feats
            cmin, cmean = cosines(model_feats, feats)
            against = "the model alone's fp32 features on the same pixels against the engine's (the reference)"
        else:
            cmin, cmean = cosines(feats, ref["features"])
            against = "the engine's features against the CPU fp32 ones"
        engine_rate = n / seconds
        values = {"engine_images_s": engine_rate, "model_images_s": rate, "ratio": engine_rate / rate,
                  "cosine_min": cmin, "cosine_mean": cmean, "photos": n}
        result = (f"engine {num(engine_rate)} images/s, model alone {num(rate)} images/s ({engine_rate / rate:.2f}x); "
                  f"cosine min {cmin:.6f}, mean {cmean:.6f}")
        notes = (f"{n} demo photos, batch {batch}, {budget_text(extraction_budget(torch.device('cpu')))}; engine = one "
                 f"`extract` call of {n} rows with its start-up (workers, store); model alone: best of "
                 f"{cfg['cpu_model_rounds']}; cosine: {against}")
        status = "ok" if cmin >= COSINE_FLOOR else f"FAILED (cosine min {cmin:.4f} below {COSINE_FLOOR})"
        check = "extract cpu fp32 (reference)" if precision == "fp32" else f"extract cpu {precision}"
        return make_row(rid, check, "cpu", status, result, notes, values)

    ref["nets32"] = net()
    rows.append(guarded("3a", "extract cpu fp32 (reference)", "cpu", lambda: cpu_row("3a", "fp32")))
    ref.pop("nets32")
    if cpu_has_bf16():
        rows.append(guarded("3b", "extract cpu bf16", "cpu",
                            lambda: cpu_row("3b", "bf16") if "features" in ref else
                            make_row("3b", "extract cpu bf16", "cpu", "skipped (no fp32 reference: 3a failed)")))
    else:
        rows.append(make_row("3b", "extract cpu bf16", "cpu", "skipped (this CPU has no native bf16: fp32 is its "
                                                               "precision)"))

    gpus, why = cuda_state()
    cuda_rows = [("3c", "extract cuda fp16, decode default", "default"), ("3d", "extract cuda fp16, decode gpu (nvJPEG)",
                                                                          "gpu")]
    if why:
        rows += [make_row(rid, check, "cuda", f"skipped ({why})") for rid, check, _ in cuda_rows]
    else:
        cuda: dict = {}

        def cuda_row(rid: str, check: str, decode: str):
            if "features" not in ref:
                return make_row(rid, check, "cuda", "skipped (no fp32 reference: 3a failed)")
            if "nets" not in cuda:
                cuda["nets"] = net()
                engine_run(cuda["nets"], CUDA, "fp16", n)  # warm-up: CUDA context, cuDNN, workers' first start
                cuda["model"] = model_only(cuda["nets"], torch.device(CUDA), "fp16", 3, MODEL_TILE_CUDA)
            reps = cfg["repeats_cuda"]
            best: dict[int, float] = {}
            feats, log = None, []
            for _ in range(2):
                for size in (n, n * reps):
                    seconds, f, lg = engine_run(cuda["nets"], CUDA, "fp16", size, decode)
                    best[size] = min(best.get(size, float("inf")), seconds)
                    if size == n:
                        feats, log = f, lg
            extra_s = best[n * reps] - best[n]
            steady = (n * reps - n) / extra_s if extra_s > 0 else float("nan")  # nan: start-up noise swamped it
            rate, model_feats = cuda["model"]
            cmin, cmean = cosines(feats, ref["features"])
            mmin, _ = cosines(model_feats, ref["features"])
            check_line = next((ln for ln in log if "cosine against the exact decode" in ln), "")
            values = {"engine_images_s": steady, "engine_small_images_s": n / best[n], "model_images_s": rate,
                      "ratio": steady / rate, "cosine_min": cmin, "cosine_mean": cmean, "model_cosine_min": mmin}
            result = (f"engine {num(steady)} images/s steady ({num(n / best[n])} for a {n}-row run with start-up), "
                      f"model alone {num(rate)} images/s ({steady / rate:.2f}x); cosine vs CPU fp32 min {cmin:.5f}, "
                      f"mean {cmean:.5f}")
            notes = (f"{gpus} GPU(s), device cuda:0; batch {batch}, {budget_text(extraction_budget(torch.device('cuda')))}; "
                     f"steady state = the {n * (reps - 1)} rows between runs of {n} and {n * reps} (the same {n} photos "
                     f"repeated), best of 2 each; model alone: fp16 on pre-decoded pixels (Pillow), the {n} photos "
                     f"{MODEL_TILE_CUDA} times over, best of 3, its cosine min {mmin:.5f}"
                     + (f"; the run's own decode check: {check_line}" if check_line else ""))
            status = "ok" if cmin >= COSINE_FLOOR else f"FAILED (cosine min {cmin:.4f} below {COSINE_FLOOR})"
            return make_row(rid, check, "cuda", status, result, notes, values)

        for rid, check, decode in cuda_rows:
            rows.append(guarded(rid, check, "cuda", lambda rid=rid, check=check, decode=decode:
                                cuda_row(rid, check, decode)))
    shutil.rmtree(work, ignore_errors=True)
    return rows


# --- 4. MLP step ---------------------------------------------------------------------------------
def gemm_rate(device, dtype, m: int, k: int, n: int, seconds: float) -> float:
    """GFLOPS of x (m, k) times a Linear's weight (n, k) transposed, as roofline.py's gemm_gflops, but
    timed over chunks of back-to-back calls (each chunk about seconds / 5, median of 5) rather than
    one synchronised call at a time: a GPU does one of these GEMMs in tens of microseconds, about
    what a synchronisation costs."""
    import torch

    x = torch.randn(m, k, device=device).to(dtype)
    w = torch.randn(n, k, device=device).to(dtype)

    def chunk(reps: int) -> float:
        sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.nn.functional.linear(x, w)
        sync()
        return time.perf_counter() - t0

    chunk(1)  # warm-up: kernel choice, allocations
    reps = 1
    while (t := chunk(reps)) < seconds / 5 and reps < 1 << 14:
        reps = min(1 << 14, max(2 * reps, int(reps * seconds / 5 / max(t, 1e-6))))
    times = [chunk(reps) for _ in range(5)]
    return 2.0 * m * k * n * reps / sorted(times)[2] / 1e9


def section_mlp(cfg: dict) -> list[dict]:
    import numpy as np
    import torch

    sys.path.insert(0, str(HERE))
    from roofline import Timer, mlp_gemm_bound, mlp_step_flops, plain_loop

    from hashtagkit.devices import compute_dtype, pick_precision

    d, h, c, b = cfg["mlp"]

    def step_row(rid: str, device: torch.device, precision: str, steps: int):
        timer = Timer(device)
        dtype = compute_dtype(precision) or torch.float32
        shapes = {f"mlp fc1 {b}x{d}->{h}": (b, d, h), f"mlp fc2 {b}x{h}->{h}": (b, h, h),
                  f"mlp fc3 {b}x{h}->{c}": (b, h, c)}
        table = {(precision, s): gemm_rate(device, dtype, m, k, nn, cfg["gemm_seconds"]) for s, (m, k, nn) in shapes.items()}
        peak = max(table.values())
        mcfg = {"batch": b, "dim": d, "hidden": h, "classes": c}
        bound = mlp_gemm_bound(table, mcfg, precision)
        gen = torch.Generator().manual_seed(0)
        X = torch.randn(4 * b, d, generator=gen).to(device=device, dtype=dtype)  # rows already on the device
        Y = (torch.rand(4 * b, c, generator=gen) < 0.01).float().to(device)
        times = plain_loop(X, Y, mcfg, device, precision, timer, steps)
        step_s = float(np.median(times[1:]))
        gflops = mlp_step_flops(b, d, h, c) / step_s / 1e9
        values = {"step_gflops": gflops, "step_ms": step_s * 1e3, "peak_gflops": peak, "pct_peak": 100 * gflops / peak,
                  "gemm_bound_gflops": bound, "pct_bound": 100 * gflops / bound, "precision": precision}
        result = (f"{num(gflops)} GFLOPS a step ({num(step_s * 1e3)} ms) = {100 * gflops / peak:.0f}% of the "
                  f"{precision} matmul peak {num(peak)} GFLOPS, {100 * gflops / bound:.0f}% of the step's GEMMs alone "
                  f"({num(bound)} GFLOPS)")
        notes = (f"{d}->{h}->{h}->{c}, batch {b}, {precision}: benchmarks/roofline.py's plain loop (autocast, fused AdamW, "
                 f"caffe loss), rows already on the device, median of {steps - 1} steps after the first; peak: best of "
                 f"the 3 layer GEMMs at this batch, measured in this run (back-to-back calls, median of 5 chunks)"
                 + (f"; {torch.get_num_threads()} torch threads" if device.type == "cpu" else f"; {device}"))
        return result, notes, values

    rows = []
    cpu_prec = pick_precision("auto", torch.device("cpu"), training=True)
    rows.append(guarded("4a", f"MLP step cpu {cpu_prec}", "cpu",
                        lambda: step_row("4a", torch.device("cpu"), cpu_prec, cfg["mlp_steps_cpu"])))
    _, why = cuda_state()
    for rid, prec in (("4b", "bf16"), ("4c", "fp16")):
        check = f"MLP step cuda {prec}"
        if why:
            rows.append(make_row(rid, check, "cuda", f"skipped ({why})"))
        elif prec == "bf16" and not torch.cuda.is_bf16_supported():
            rows.append(make_row(rid, check, "cuda", "skipped (this GPU has no bf16)"))
        else:
            rows.append(guarded(rid, check, "cuda",
                                lambda rid=rid, prec=prec: step_row(rid, torch.device(CUDA), prec, cfg["mlp_steps_cuda"])))
    return rows


# --- 5. kNN --------------------------------------------------------------------------------------
def agreement(found, reference_ids, scores64, k: int) -> tuple[float, float]:
    """(share of the reference's neighbours found, share of found neighbours that are right up to
    ties: float64 similarity at least the k-th best's minus TIE_TOL)."""
    import numpy as np

    same = np.mean([len(set(a) & set(b)) / k for a, b in zip(found, reference_ids, strict=True)])
    kth = -np.sort(-scores64, axis=1)[:, k - 1]
    got = np.take_along_axis(scores64, np.asarray(found, np.int64), axis=1)
    return float(same), float(np.mean(got >= kth[:, None] - TIE_TOL))


def section_knn(cfg: dict) -> list[dict]:
    import faiss
    import numpy as np

    from hashtagkit.heads.knn import KNNHead

    n, d, nq, k = cfg["knn"]
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, d), dtype=np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    Q = rng.standard_normal((nq, d), dtype=np.float32)
    Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    scores64 = Q.astype(np.float64) @ X.astype(np.float64).T
    faiss_gpu = hasattr(faiss, "StandardGpuResources") and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0
    cpu: dict = {}

    def best(fn, reps: int = 3) -> tuple[float, object]:
        out, times = None, []
        for _ in range(reps):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        return min(times), out

    def head_check(reference_ids) -> str:
        Y = (rng.random((n, 5)) < 0.3).astype(np.uint8)
        head = KNNHead(k=k, pca=None, index="flat").fit(X, Y)
        ids = head.kneighbors(Q)[1]
        same, ties = agreement(ids, reference_ids, scores64, k)
        return (f"hashtagkit KNNHead(index=flat) searching {'its GPU copy' if faiss_gpu else 'on the CPU'}: "
                f"{100 * same:.2f}% the same, {100 * ties:.2f}% right up to ties")

    def cpu_row():
        index = faiss.IndexFlatIP(d)
        index.add(X)
        t_faiss, (_, ids) = best(lambda: index.search(Q, k))
        cpu["ids"], cpu["t"] = ids, t_faiss

        def brute():
            s = Q @ X.T
            part = np.argpartition(-s, k - 1, axis=1)[:, :k]
            order = np.argsort(-np.take_along_axis(s, part, axis=1), axis=1, kind="stable")
            return np.take_along_axis(part, order, axis=1)

        t_np, np_ids = best(brute)
        same, ties = agreement(ids, np_ids, scores64, k)
        values = {"same_pct": 100 * same, "up_to_ties_pct": 100 * ties, "faiss_s": t_faiss, "numpy_s": t_np,
                  "speed_ratio": t_np / t_faiss}
        result = (f"same neighbours as numpy brute force {100 * same:.2f}%, right up to ties {100 * ties:.2f}%; "
                  f"faiss-cpu {t_faiss * 1e3:.1f} ms vs numpy {t_np * 1e3:.1f} ms ({t_np / t_faiss:.1f}x)")
        notes = (f"IndexFlatIP, {n:,} x {d} random unit vectors, {nq} queries, k={k}; numpy: float32 Q @ X.T + "
                 f"argpartition; ties: float64 similarity within {TIE_TOL:g} of the k-th best; best of 3 searches"
                 + ("" if faiss_gpu else f"; {head_check(np_ids)}"))
        status = "ok" if ties == 1.0 else f"FAILED ({100 * (1 - ties):.2f}% of faiss's neighbours are wrong)"
        return make_row("5a", "kNN faiss-cpu vs numpy", "cpu", status, result, notes, values)

    def gpu_row():
        if "ids" not in cpu:
            return make_row("5b", "kNN faiss-gpu vs faiss-cpu", "cuda", "skipped (no faiss-cpu result: 5a failed)")
        index = faiss.IndexFlatIP(d)
        index.add(X)
        t0 = time.perf_counter()
        gpu_index = faiss.index_cpu_to_all_gpus(index)  # as KNNHead copies its index
        t_copy = time.perf_counter() - t0
        gpu_index.search(Q[:8], k)  # warm-up
        t_gpu, (_, ids) = best(lambda: gpu_index.search(Q, k), 5)
        same, ties = agreement(ids, cpu["ids"], scores64, k)
        values = {"same_pct": 100 * same, "up_to_ties_pct": 100 * ties, "gpu_s": t_gpu, "cpu_s": cpu["t"],
                  "speed_ratio": cpu["t"] / t_gpu, "copy_s": t_copy}
        result = (f"same neighbours as faiss-cpu {100 * same:.2f}%, right up to ties {100 * ties:.2f}%; faiss-gpu "
                  f"{t_gpu * 1e3:.2f} ms vs faiss-cpu {cpu['t'] * 1e3:.1f} ms ({cpu['t'] / t_gpu:.1f}x)")
        notes = (f"index_cpu_to_all_gpus ({faiss.get_num_gpus()} GPU(s), copy {t_copy * 1e3:.0f} ms) of the same "
                 f"IndexFlatIP; search from host arrays (transfers included), best of 5 after a warm-up; "
                 f"{head_check(cpu['ids'])}")
        status = "ok" if ties == 1.0 else f"FAILED ({100 * (1 - ties):.2f}% of faiss-gpu's neighbours are wrong)"
        return make_row("5b", "kNN faiss-gpu vs faiss-cpu", "cuda", status, result, notes, values)

    rows = [guarded("5a", "kNN faiss-cpu vs numpy", "cpu", cpu_row)]
    _, why = cuda_state()
    if why:
        extra = "" if hasattr(faiss, "StandardGpuResources") else f"; faiss {faiss.__version__} has no GPU support either"
        rows.append(make_row("5b", "kNN faiss-gpu vs faiss-cpu", "cuda", f"skipped ({why}{extra})"))
    elif not faiss_gpu:
        rows.append(make_row("5b", "kNN faiss-gpu vs faiss-cpu", "cuda",
                             f"skipped (no faiss-gpu: faiss {faiss.__version__} is a CPU build or sees no GPU; "
                             "install faiss-gpu, e.g. conda's faiss-gpu or pip's faiss-gpu-cu12)"))
    else:
        rows.append(guarded("5b", "kNN faiss-gpu vs faiss-cpu", "cuda", gpu_row))
    return rows


# --- 6. DDP --------------------------------------------------------------------------------------
def section_ddp(cfg: dict) -> list[dict]:
    import hashtagkit as hk
    from hashtagkit.runs import read_run

    work = Path(tempfile.mkdtemp(prefix="hashtagkit-gpu-check-ddp-"))
    store = work / "planted.zarr"
    hk.prepare.planted(store, n=cfg["ddp_rows"], classes=16, dim=16, seed=0)
    params = {"hidden": 64, "epochs": 2, "batch_size": 64}

    def launch(rid: str, check: str, device: str, nproc: int, backend: str):
        out = work / f"run-{rid}"
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                                 "MASTER_PORT", FAIL_ENV)}
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TQDM_DISABLE="1")
        if backend == "gloo":
            env["GLOO_SOCKET_IFNAME"] = "lo"
        sets = [a for key, v in {**params, "device": device}.items() for a in ("--set", f"{key}={v}")]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "hashtagkit.cli", "fit", str(store), "--head", "mlp", *sets, "-o", str(out)]
        timeout = min(150.0, cfg["deadline"] - time.time() - 5)
        if timeout < 10:
            return make_row(rid, check, device, f"skipped (budget: {max(timeout, 0):.0f} s left of the section's limit)")
        t0 = time.perf_counter()
        rc, _, err = bounded(cmd, timeout, env)
        seconds = time.perf_counter() - t0
        if rc is None:
            return make_row(rid, check, device, f"FAILED (torchrun timed out after {timeout:.0f} s)")
        if rc != 0:
            errors = [ln for ln in err.splitlines() if "Error" in ln or "error" in ln]
            return make_row(rid, check, device, f"FAILED (torchrun exit {rc}: {(errors or [last_line(err)])[-1][:240]})")
        record = read_run(out)
        dist = record.distributed or {}
        scores = hk.evaluate(out, ks=(1,))
        p1 = scores["precision@1"]
        values = {"seconds": seconds, "distributed": dist, "precision@1": p1}
        result = (f"{dist.get('world_size')} processes, backend {dist.get('backend')}, {seconds:.1f} s for the launch; "
                  f"P@1 {100 * p1:.1f}% on the test rows")
        notes = (f"`torchrun --standalone --nproc_per_node={nproc} -m hashtagkit.cli fit --head mlp` "
                 f"(python -m torch.distributed.run) on a planted store of {cfg['ddp_rows']} rows x 32 features, "
                 f"16 classes; {', '.join(f'{k}={v}' for k, v in params.items())}, device={device}; global batch "
                 f"{dist.get('global_batch')}, {dist.get('batch_per_process')} a process, {dist.get('steps_per_epoch')} "
                 f"steps an epoch")
        if dist.get("backend") != backend or dist.get("world_size") != nproc:
            return make_row(rid, check, device, f"FAILED (expected {backend} x {nproc}, the run records {dist})",
                            result, notes, values)
        return result, notes, values

    rows = [guarded("6a", "DDP gloo, 2 CPU processes", "cpu", lambda: launch("6a", "DDP gloo", "cpu", 2, "gloo"))]
    gpus, why = cuda_state()
    check = "DDP NCCL, a process per GPU"
    if why:
        rows.append(make_row("6b", check, "cuda", f"skipped ({why})"))
    elif gpus < 2:
        rows.append(make_row("6b", check, "cuda", "skipped (1 GPU so no multi-GPU DDP: NCCL needs a GPU per process)"))
    else:
        rows.append(guarded("6b", check, "cuda", lambda: launch("6b", check, CUDA, gpus, "nccl")))
    shutil.rmtree(work, ignore_errors=True)
    return rows


RUNNERS = {"environment": section_environment, "pytest": section_pytest, "extract": section_extract,
           "mlp": section_mlp, "knn": section_knn, "ddp": section_ddp}


def child(section: str, cfg: dict, out: Path) -> None:
    """One section in this process (the parent's child): its rows as JSON in `out`."""
    try:
        injected(section)
        rows = RUNNERS[section](cfg)
    except Exception as e:  # noqa: BLE001 - the whole section failed before its rows
        traceback.print_exc()
        rows = [make_row(SECTION_NO[section], section, "-", f"FAILED ({one_line(e)})")]
    out.write_text(json.dumps(rows, default=str))


# --- the run -------------------------------------------------------------------------------------
def run_section(section: str, cfg: dict, timeout: float, work: Path) -> list[dict]:
    """The section in a child process of this script, bounded by `timeout`; its output goes to LOGS."""
    out = work / f"{section}.json"
    cfg = {**cfg, "deadline": time.time() + timeout}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", section, "--child-config", json.dumps(cfg),
           "--child-out", str(out)]
    rc, stdout, err = bounded(cmd, timeout)
    LOGS.mkdir(parents=True, exist_ok=True)
    (LOGS / f"{section}.log").write_text(stdout + err)
    if out.exists():
        return json.loads(out.read_text())
    why = f"timed out after {timeout:.0f} s" if rc is None else f"exit {rc}: {last_line(err)}"
    return [make_row(SECTION_NO[section], section, "-", f"FAILED ({why})")]


def commit() -> str:
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    rev = git("rev-parse", "--short", "HEAD") or "unknown"
    return rev + (" + uncommitted changes in the tree" if git("status", "--porcelain", "--untracked-files=no") else "")


def cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(rows: list[dict], args, seconds: float, started: str, times: dict[str, float]) -> str:
    env = next((r["values"] for r in rows if r["id"] == "1" and r["values"]), {})
    cpu = env.get("cpu") or cpu_info()
    gpus = env.get("gpus") or []
    gpu_text = ", ".join(f"{g['name']} ({g['memory_gib']} GiB)" for g in gpus) or "no GPU"
    command = " ".join(["benchmarks/gpu_check.py", *sys.argv[1:]])
    skipped_cuda = [r for r in rows if r["device"] == "cuda" and r["status"].startswith("skipped")]
    failed = [r for r in rows if r["status"].startswith("FAILED")]
    lines = ["# GPU check (issue #27 item 4)", "",
             f"Command: `{command}`, {started}, {seconds:.0f} s in all (budget "
             f"{args.budget_seconds:.0f} s){'; --quick: small shapes' if args.quick else ''}.",
             f"Machine: {cpu['model']}, {cpu['cores']} cores ({', '.join(cpu['flags']) or 'no bf16/AMX flags'}); "
             f"GPUs: {gpu_text}; {platform.platform()}; 1-minute load average {args.load_before:.1f} before, "
             f"{os.getloadavg()[0]:.1f} after (other jobs share the CPU timings).",
             f"Versions: Python {platform.python_version()}, torch {env.get('torch', '?')} (CUDA build "
             f"{env.get('torch_cuda') or 'none'}), torchvision {env.get('torchvision', '?')}, numpy "
             f"{env.get('numpy', '?')}, faiss {env.get('faiss', '?')} (GPU support: "
             f"{'yes' if env.get('faiss_gpu_build') else 'no'}); commit {commit()}.", ""]
    if skipped_cuda:
        lines += [f"**CUDA rows skipped: {', '.join(r['id'] + ' (' + r['check'] + ')' for r in skipped_cuda)}**, "
                  f"each saying why in its status; every other row ran here.", ""]
    if failed:
        lines += [f"**FAILED: {', '.join(r['id'] for r in failed)}.**", ""]
    lines += ["| # | check | device | status | result | notes |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['id']} | {cell(r['check'])} | {r['device']} | {cell(r['status'])} | {cell(r['result'])} | "
                     f"{cell(r['notes'])} |")
    if times:
        lines += ["", "Seconds per section (run in this order, each in its own process): "
                  + ", ".join(f"{name} {t:.0f}" for name, t in times.items()) + "."]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=RESULTS, help="the Markdown table [benchmarks/results/gpu_check.md]")
    ap.add_argument("--json", type=Path, help="also the rows as JSON (values included)")
    ap.add_argument("--budget-seconds", type=float, default=540.0, help="the whole run's limit [540]")
    ap.add_argument("--quick", action="store_true", help="few photos, small shapes: a smoke run (1-1.5 minutes on 2 cores)")
    ap.add_argument("--only", default="", help=f"comma-separated sections to run ({','.join(SECTIONS)}) [all]")
    ap.add_argument("--child", choices=SECTIONS, help=argparse.SUPPRESS)
    ap.add_argument("--child-config", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, json.loads(args.child_config), args.child_out)
        return 0

    t_start = time.time()
    args.load_before = os.getloadavg()[0]
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    cfg = config(args.quick)
    only = [s for s in args.only.split(",") if s] or list(SECTIONS)
    unknown = set(only) - set(SECTIONS)
    if unknown:
        ap.error(f"--only: unknown section(s) {', '.join(sorted(unknown))}")
    rows: list[dict] = []
    times: dict[str, float] = {}
    work = Path(tempfile.mkdtemp(prefix="hashtagkit-gpu-check-run-"))
    try:
        for section in RUN_ORDER:
            if section not in only:
                continue
            left = args.budget_seconds - (time.time() - t_start) - 5
            if left < MIN_SECONDS:
                rows.append(make_row(SECTION_NO[section], section, "-", f"skipped (budget: {max(left, 0):.0f} s left "
                                                                        f"of {args.budget_seconds:.0f})"))
                continue
            t0 = time.time()
            rows += run_section(section, cfg, min(TIMEOUTS[section][args.quick], left), work)
            times[section] = time.time() - t0
            print(f"{section}: {times[section]:.0f} s; " + "; ".join(f"{r['id']} {r['status']}" for r in rows
                                                                       if r["id"].startswith(SECTION_NO[section])),
                  flush=True)
    finally:
        rows.sort(key=lambda r: (int(r["id"][0]), r["id"]))  # the table in the sections' order
        text = render(rows, args, time.time() - t_start, started, times)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"rows": rows, "seconds": time.time() - t_start}, indent=1, default=str))
        shutil.rmtree(work, ignore_errors=True)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
