"""Start-up of `hashtagkit recommend` and `hashtagkit serve`: where the seconds go, before and after.

The paper's two backbones, VGG-16 object and scene, from two weights FILES this script writes
(random initialisation saved with torch.save: the same 528 MB each as pretrained weights, so
reading, hashing and loading cost the same), a small demo store extracted with them and a kNN
run on it. Then, in one run, interleaved, each `--repeats` times:

  recommend   process start to the first photo's hashtags on stdout: BEFORE (the code of git
              revision BEFORE, exported with `git archive` and put first on PYTHONPATH, same
              interpreter), after with an empty sha256 cache, after with a warm one;
  serve       process start to the first `GET /healthz` answered 200 (polled every 10 ms),
              before and after, warm sha256 cache;
  traced      each command once more, before and after, under `python -X importtime` with its
              steps timed by benchmarks/startup_trace.py: interpreter, imports per package
              group, reading the run record, the head, sha256, reading the weights, building
              the model, casting it, decoding, the first forward, for serve the app and uvicorn.

Plus the imports `recommend` needs, timed alone. The weights files are in the page cache for every
variant (just written, then read by each run), so disk speed is not measured. Prints a Markdown
table and writes it with machine, versions, commit and load average.

    python benchmarks/startup.py [--repeats 3] [--before REV] [--out benchmarks/results/startup.md]
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# every subprocess runs in the benchmark's own temp dir: `python -c` puts its cwd first on sys.path,
# and a cwd holding a hashtagkit/ (this checkout) would shadow the revision under test
WORKDIR = tempfile.gettempdir()


def run(cmd: list[str], env: dict | None = None) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=WORKDIR)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res.stdout


def export_revision(rev: str, dest: Path) -> Path:
    """The revision's source laid out as installed: hashtagkit/, with cli/ and stores/ inside it."""
    src = dest / "src"
    tree = dest / "tree"
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", rev], capture_output=True)
    if archive.returncode != 0:
        raise SystemExit(f"cannot export git revision {rev} for 'before' ({archive.stderr.decode().strip()}): "
                         "run from a clone with its history (not shallow), or pass --before REV")
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    src.mkdir()
    (tree / "hashtagkit").rename(src / "hashtagkit")
    for sub in ("cli", "stores"):
        (tree / sub).rename(src / "hashtagkit" / sub)
    return src


def make_run(work: Path, env: dict) -> tuple[Path, Path]:
    """Two VGG-16 weights files, a demo store extracted with them, a kNN run; returns (run, photo)."""
    code = (
        "import sys, torch\n"
        "from torchvision.models import vgg16\n"
        "for seed, path in ((1, sys.argv[1]), (2, sys.argv[2])):\n"
        "    torch.manual_seed(seed)\n"
        "    torch.save(vgg16(weights=None).state_dict(), path)\n"
    )
    work.mkdir(parents=True, exist_ok=True)
    obj, scene = work / "vgg16_object.pth", work / "vgg16_scene.pth"
    run([sys.executable, "-c", code, str(obj), str(scene)], env)
    hk = [sys.executable, "-m", "hashtagkit.cli.main"]
    store = work / "demo.zarr"
    run([*hk, "prepare", "demo", "-o", str(store), "--n", "12"], env)
    run([*hk, "extract", str(store), "--backbone", f"vgg16-object={obj}", "--backbone", f"vgg16-scene={scene}",
         "--no-progress", "--precision", "fp32", "--workers", "0"], env)
    run([*hk, "fit", str(store), "--head", "knn", "--set", "k=3", "-o", str(work / "run")], env)
    photo = sorted((work / "demo_images").rglob("*.jpg"))[0]
    return work / "run", photo


def time_to_first_result(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """(seconds from starting the process to its first line of output, i.e. the first photo's
    hashtags; CPU seconds the whole process used, user + system; its stderr). The CPU time says
    what the process costs however busy the machine is; the wall time is what a user waits."""
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=WORKDIR)
        line = proc.stdout.readline()
        elapsed = time.perf_counter() - t0
        rest = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read()
        if proc.returncode != 0 or "#" not in line:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {line}{rest}\n{stderr[-3000:]}")
    return elapsed, usage.ru_utime + usage.ru_stime, stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthz_ok(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def time_to_healthz(cmd: list[str], port: int, env: dict) -> tuple[float, str]:
    """(seconds from starting `serve` to its first /healthz answered 200, polled every 10 ms; its
    stderr). The server is then stopped with SIGTERM."""
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=WORKDIR)
        try:
            while not healthz_ok(port):
                if proc.poll() is not None or time.perf_counter() - t0 > 300:
                    err.seek(0)
                    raise SystemExit(f"{' '.join(cmd)} did not answer /healthz ({proc.returncode}):\n{err.read()[-3000:]}")
                time.sleep(0.01)
            elapsed = time.perf_counter() - t0
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        err.seek(0)
        return elapsed, err.read()


# import time, by the package that was imported (self time: each module once, nested ones apart)
GROUPS = {
    "torch": ("torch", "torchgen", "functorch", "sympy", "mpmath", "cuda", "nvidia", "triton", "torchvision"),
    "scikit-learn (+ scipy, pandas, joblib, threadpoolctl, narwhals)":
        ("sklearn", "scipy", "pandas", "joblib", "threadpoolctl", "narwhals", "dateutil", "pytz", "tzdata"),
    "faiss": ("faiss",),
    "zarr (+ numcodecs, fsspec, donfig)": ("zarr", "numcodecs", "fsspec", "donfig", "crc32c", "google_crc32c"),
    "fastapi, starlette, pydantic, uvicorn (+ anyio, multipart)":
        ("fastapi", "starlette", "pydantic", "pydantic_core", "uvicorn", "anyio", "python_multipart", "multipart",
         "h11", "httptools", "uvloop", "websockets", "annotated_types", "typing_inspection", "opentelemetry",
         "annotated_doc", "sniffio", "idna"),
    "numpy": ("numpy",),
    "Pillow": ("PIL",),
    "click": ("click",),
    "hashtagkit's own modules": ("hashtagkit",),
}
OTHER = "standard library and the rest"
# step -> row label; the exclusive time of each (its imports and the steps inside it taken out)
STEPS = {
    "read run record": "read the run record (run.json)",
    "head load": "load the head (its files; imports apart)",
    "sha256 (cache look-up or hash)": "sha256 of the weights (cache look-up when warm)",
    "weights read (torch.load)": "read the weights (torch.load, 2 x 528 MB)",
    "backbone load": "build the backbones (meta device + assign)",
    "model to device / precision": "model to device / precision (channels_last, cast)",
    "from_run": "the rest of Recommender.from_run",
    "decode + preprocess": "decode + preprocess the photo",
    "forward + head": "first forward pass + head",
    "probe (check_scores)": "the rest of the probe (check_scores)",
    "app build": "build the FastAPI app (imports apart)",
    "uvicorn start-up (lifespan, listen)": "uvicorn start-up (lifespan: batcher, listen)",
}
GLUE = "the CLI, glue, output (the rest)"
UNTIL = "from uvicorn started to the first /healthz 200"


def group_of(module: str) -> str:
    top = module.split(".", 1)[0]
    return next((g for g, tops in GROUPS.items() if top in tops), OTHER)


def parse_trace(stderr: str, t0: float, t_end: float) -> dict[str, float]:
    """Seconds per row (interpreter, import groups, steps, the rest) from a traced run's stderr:
    `-X importtime` lines and startup_trace.py's TRACE markers, in the order they happened."""
    out: dict[str, float] = {}
    stack: list[dict] = []
    started = None
    last_end = None
    for line in stderr.splitlines():
        if line.startswith("TRACE "):
            name, what, *times = line[6:].split("|")
            if what == "span":
                started = float(times[1])
                out["interpreter start (python, site)"] = started - t0
            elif what == "begin":
                stack.append({"name": name, "t": float(times[0]), "imports": 0.0, "children": 0.0})
            elif what == "end" and stack:
                step = stack.pop()
                wall = float(times[0]) - step["t"]
                own = wall - step["imports"] - step["children"]
                out[STEPS.get(name, name)] = out.get(STEPS.get(name, name), 0.0) + own
                if stack:
                    stack[-1]["children"] += wall
                if name.startswith("uvicorn"):
                    last_end = float(times[0])
        elif line.startswith("import time:") and started is not None and "self [us]" not in line:
            self_us, cumulative, raw = line[len("import time:"):].split("|")
            group = "imports: " + group_of(raw.strip())
            out[group] = out.get(group, 0.0) + int(self_us) / 1e6
            if stack and len(raw) - len(raw.lstrip()) <= 1:  # a top-level import inside a step
                stack[-1]["imports"] += int(cumulative) / 1e6
    total = t_end - t0
    if last_end is not None:
        out[UNTIL] = t_end - last_end
    out[GLUE] = total - sum(out.values())
    out["total"] = total
    return out


def traced(cmd: list[str], env: dict, port: int | None = None) -> dict[str, float]:
    """One run of `cmd` (hashtagkit's arguments) under -X importtime with its steps marked."""
    trace = [sys.executable, "-X", "importtime", str(REPO / "benchmarks" / "startup_trace.py")]
    t0 = time.time()
    if port is None:
        wall, _, stderr = time_to_first_result([*trace, repr(t0), *cmd], env)
    else:
        wall, stderr = time_to_healthz([*trace, repr(t0), *cmd], port, env)
    return parse_trace(stderr, t0, t0 + wall)


# what `recommend` imports, in both revisions (the CLI module itself imports lazily)
IMPORTS = "hashtagkit.recommend, hashtagkit.backbones, hashtagkit.extraction.engine, hashtagkit.heads"


def time_import(env: dict) -> float:
    code = f"import time; t = time.perf_counter(); import {IMPORTS}; print(time.perf_counter() - t)"
    return float(run([sys.executable, "-c", code], env).strip())


def versions() -> str:
    import torch
    import torchvision

    from hashtagkit import provenance

    v = provenance.versions()
    from importlib.metadata import version

    return (f"Python {v['python']}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
            f"scikit-learn {version('scikit-learn')}, zarr {version('zarr')}, fastapi {version('fastapi')}, "
            f"uvicorn {version('uvicorn')}, hashtagkit {v.get('hashtagkit', '?')}")


def git_head() -> str:
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "hashtagkit", "cli", "stores"],
                               capture_output=True, text=True).stdout.split("\n")
        files = [line[3:] for line in dirty if line.strip()]
        return head + (f" + uncommitted changes to {', '.join(files)}" if files else "")
    except (OSError, subprocess.CalledProcessError):
        return "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--before", default="6c89dd8", help="git revision measured as 'before'")
    ap.add_argument("--after", default=None, help="git revision measured as 'after' [default: this checkout, "
                                                   "uncommitted changes included]")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "startup.md")
    args = ap.parse_args()
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    global WORKDIR
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="hashtagkit-startup-") as tmp:
        tmp = WORKDIR = Path(tmp)
        base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HASHTAGKIT_SHA256_CACHE")}
        base["HASHTAGKIT_SHA256_CACHE"] = str(tmp / "sha256-cache.json")  # never the user's own cache
        before_env = {**base, "PYTHONPATH": str(export_revision(args.before, tmp / "before"))}
        check = "import hashtagkit; print(hashtagkit.__file__)"
        assert run([sys.executable, "-c", check], before_env).startswith(str(tmp)), "before: wrong hashtagkit"
        if args.after:  # 'after' from a revision too: nobody's uncommitted work is measured
            base["PYTHONPATH"] = str(export_revision(args.after, tmp / "after"))
        where = str(tmp / "after") if args.after else str(REPO)
        assert run([sys.executable, "-c", check], base).startswith(where), "after: wrong hashtagkit"
        print("writing two VGG-16 weights files, extracting a 12-photo demo store, fitting kNN ...", flush=True)
        run_dir, photo = make_run(tmp / "work", base)
        script = Path(sys.executable).parent / "hashtagkit"  # the console script, as a user runs it
        hk = [str(script)] if script.is_file() else [sys.executable, "-m", "hashtagkit.cli.main"]
        rec_args = ["recommend", str(run_dir), str(photo), "--device", "cpu"]
        names = ("before, warm sha256 cache", "after, cold sha256 cache", "after, warm sha256 cache")
        times: dict[str, list[float]] = {n: [] for n in names}
        cpu: dict[str, list[float]] = {n: [] for n in names}
        serve_times: dict[str, list[float]] = {"before": [], "after": []}
        steps: dict[str, list[dict]] = {k: [] for k in ("recommend before", "recommend after", "serve before",
                                                         "serve after")}
        imports: dict[str, list[float]] = {"before": [], "after": []}
        for r in range(args.repeats):
            imports["before"].append(time_import(before_env))
            imports["after"].append(time_import(base))
            for name in names:
                if name == "after, cold sha256 cache":
                    Path(base["HASHTAGKIT_SHA256_CACHE"]).unlink(missing_ok=True)
                wall, used, _ = time_to_first_result([*hk, *rec_args], before_env if name.startswith("before") else base)
                times[name].append(wall)
                cpu[name].append(used)
            for name, env in (("before", before_env), ("after", base)):
                port = free_port()
                serve_times[name].append(time_to_healthz([*hk, "serve", str(run_dir), "--port", str(port),
                                                          "--device", "cpu"], port, env)[0])
            for name, env in (("before", before_env), ("after", base)):
                steps[f"recommend {name}"].append(traced(rec_args, env))
                port = free_port()
                steps[f"serve {name}"].append(traced(["serve", str(run_dir), "--port", str(port), "--device", "cpu"],
                                                     env, port))
            print(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"recommend {k} {v[-1]:.2f} s" for k, v in times.items())
                  + ", " + ", ".join(f"serve {k} {v[-1]:.2f} s" for k, v in serve_times.items()), flush=True)
    table = make_table(times, cpu, serve_times, steps, imports, args, load_start)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    print(f"wrote {args.out}")


def median_range(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def make_table(times: dict, cpu: dict, serve_times: dict, steps: dict, imports: dict, args, load_start) -> str:
    first = next(iter(times))
    before, before_cpu = statistics.median(times[first]), statistics.median(cpu[first])
    lines = [
        "# `hashtagkit recommend` and `hashtagkit serve` start-up",
        "",
        "One photo, a kNN run over VGG-16 object + VGG-16 scene from two 528 MB weights files (random",
        "initialisation saved to disk: reading, hashing and loading cost what pretrained weights cost),",
        "CPU, fp32 (the store's precision), the weights in the page cache. Median (min-max) of "
        f"{args.repeats} interleaved runs; 'before' is git revision {args.before}, 'after' is "
        f"{'git revision ' + args.after if args.after else git_head()}.",
        "Wall time is what a user waits (it grows when other jobs share the CPU); CPU time is what the",
        "process costs (user + system, all threads, including the forward pass and exit).",
        "",
        "## `hashtagkit recommend RUN PHOTO`: process start to the first result",
        "",
        "| variant | wall seconds to first result | vs before | CPU seconds | vs before |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, values in times.items():
        med, c = statistics.median(values), statistics.median(cpu[name])
        lines.append(f"| {name} | {median_range(values)} | {before / med:.2f}x "
                     f"| {median_range(cpu[name])} | {before_cpu / c:.2f}x |")
    serve_before = statistics.median(serve_times["before"])
    lines += ["", "## `hashtagkit serve RUN`: process start to the first `GET /healthz` answered 200", "",
              "| variant | wall seconds | vs before |", "|---|---:|---:|"]
    for name, values in serve_times.items():
        lines.append(f"| {name}, warm sha256 cache | {median_range(values)} | "
                     f"{serve_before / statistics.median(values):.2f}x |")
    lines += [
        "",
        "## Where the seconds go",
        "",
        "Each command once more per repeat under `python -X importtime` with its steps timed",
        "(benchmarks/startup_trace.py wraps the library functions that do them), warm sha256 cache; median",
        "seconds per row. Imports are the self time of every module imported after the interpreter",
        "started, by package group (importtime's own cost included: the traced totals run a little",
        "longer than the untimed ones above); a step's row is its own time, the imports made inside it",
        "and the steps inside it taken out. A step missing from the older code shows 0.",
        "",
        "| step | recommend before | recommend after | serve before | serve after |",
        "|---|---:|---:|---:|---:|",
    ]
    rows = ["interpreter start (python, site)", *(f"imports: {g}" for g in [*GROUPS, OTHER]), *STEPS.values(),
            UNTIL, GLUE, "total"]
    for row in rows:
        cells = [statistics.median([run.get(row, 0.0) for run in runs]) for runs in steps.values()]
        if row.startswith("imports:") and all(abs(c) < 0.005 for c in cells):
            continue
        label = f"**{row}**" if row == "total" else row
        lines.append(f"| {label} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    imports_of = {k: statistics.median([sum(v for r, v in run.items() if r.startswith("imports:")) for run in runs])
                  for k, runs in steps.items()}
    lines += ["| all imports | " + " | ".join(f"{v:.2f}" for v in imports_of.values()) + " |",
              "", f"| `import {IMPORTS}` alone | seconds |", "|---|---:|"]
    for name, values in imports.items():
        lines.append(f"| {name} | {median_range(values)} |")
    lines += [
        "",
        f"Machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs; {versions()}.",
        f"Load average (1, 5, 15 min) at the start: {', '.join(f'{x:.2f}' for x in load_start)}; at the end: "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())} (other jobs share this machine).",
        "Made by `make bench-startup` (`python benchmarks/startup.py`).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
