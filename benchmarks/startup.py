"""Start-up of `hashtagkit recommend`: time from process start to the first result, before and after.

The paper's two backbones, VGG-16 object and scene, from two weights FILES this script writes
(random initialisation saved with torch.save: the same 528 MB each as pretrained weights, so
reading, hashing and loading cost the same), a small demo store extracted with them and a kNN
run on it. Then, in one run, interleaved, each `--repeats` times:

  before      the code of git revision BEFORE (default 9525730, main before the fast start),
              exported with `git archive` and put first on PYTHONPATH, same interpreter;
  after cold  this checkout with an empty sha256 cache (every weights file hashed);
  after warm  this checkout with the cache filled by the previous call (nothing hashed).

Plus the imports `recommend` needs, timed alone, before and after. The weights files are in the page
cache for every variant (just written, then read by each run), so disk speed is not measured.
Prints a Markdown table and writes it with machine and versions.

    python benchmarks/startup.py [--repeats 3] [--before 9525730] [--out benchmarks/results/startup.md]
"""

from __future__ import annotations

import argparse
import os
import platform
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


def time_to_first_result(cmd: list[str], env: dict) -> tuple[float, float]:
    """(seconds from starting the process to its first line of output, i.e. the first photo's
    hashtags; CPU seconds the whole process used, user + system). The CPU time says what the
    process costs however busy the machine is; the wall time is what a user waits."""
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=WORKDIR)
        line = proc.stdout.readline()
        elapsed = time.perf_counter() - t0
        rest = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0 or "#" not in line:
            err.seek(0)
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {line}{rest}\n{err.read()}")
    return elapsed, usage.ru_utime + usage.ru_stime


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
    return (f"Python {v['python']}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
            f"hashtagkit {v.get('hashtagkit', '?')}")


def git_head() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--before", default="9525730", help="git revision measured as 'before'")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "startup.md")
    args = ap.parse_args()
    global WORKDIR
    with tempfile.TemporaryDirectory(prefix="hashtagkit-startup-") as tmp:
        tmp = WORKDIR = Path(tmp)
        base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HASHTAGKIT_SHA256_CACHE")}
        base["HASHTAGKIT_SHA256_CACHE"] = str(tmp / "sha256-cache.json")  # never the user's own cache
        before_env = {**base, "PYTHONPATH": str(export_revision(args.before, tmp / "before"))}
        check = "import hashtagkit; print(hashtagkit.__file__)"
        assert run([sys.executable, "-c", check], before_env).startswith(str(tmp)), "before: wrong hashtagkit"
        assert run([sys.executable, "-c", check], base).startswith(str(REPO)), "after: wrong hashtagkit"
        print("writing two VGG-16 weights files, extracting a 12-photo demo store, fitting kNN ...", flush=True)
        run_dir, photo = make_run(tmp / "work", base)
        script = Path(sys.executable).parent / "hashtagkit"  # the console script, as a user runs it
        hk = [str(script)] if script.is_file() else [sys.executable, "-m", "hashtagkit.cli.main"]
        cmd = [*hk, "recommend", str(run_dir), str(photo), "--device", "cpu"]
        names = ("before", "after, cold sha256 cache", "after, warm sha256 cache")
        times: dict[str, list[float]] = {n: [] for n in names}
        cpu: dict[str, list[float]] = {n: [] for n in names}
        imports: dict[str, list[float]] = {"before": [], "after": []}
        for r in range(args.repeats):
            imports["before"].append(time_import(before_env))
            imports["after"].append(time_import(base))
            for name in names:
                if name == "after, cold sha256 cache":
                    Path(base["HASHTAGKIT_SHA256_CACHE"]).unlink(missing_ok=True)
                wall, used = time_to_first_result(cmd, before_env if name == "before" else base)
                times[name].append(wall)
                cpu[name].append(used)
            print(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()),
                  flush=True)
    table = make_table(times, cpu, imports, args)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    print(f"wrote {args.out}")


def make_table(times: dict, cpu: dict, imports: dict, args) -> str:
    before, before_cpu = statistics.median(times["before"]), statistics.median(cpu["before"])
    lines = [
        "# `hashtagkit recommend` start-up: process start to first result",
        "",
        "One photo, a kNN run over VGG-16 object + VGG-16 scene from two 528 MB weights files (random",
        "initialisation saved to disk: reading, hashing and loading cost what pretrained weights cost),",
        "CPU, fp32, the weights in the page cache. Median (min-max) of "
        f"{args.repeats} interleaved runs; 'before' is git revision {args.before}, 'after' is {git_head()}.",
        "Wall time is what a user waits (it grows when other jobs share the CPU); CPU time is what the",
        "process costs (user + system, all threads, including the forward pass and exit).",
        "",
        "| variant | wall seconds to first result | vs before | CPU seconds | vs before |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, values in times.items():
        med, c = statistics.median(values), statistics.median(cpu[name])
        lines.append(f"| {name} | {med:.2f} ({min(values):.2f}-{max(values):.2f}) | {before / med:.2f}x "
                     f"| {c:.2f} ({min(cpu[name]):.2f}-{max(cpu[name]):.2f}) | {before_cpu / c:.2f}x |")
    lines += ["", f"| `import {IMPORTS}` | seconds |", "|---|---:|"]
    for name, values in imports.items():
        lines.append(f"| {name} | {statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f}) |")
    lines += [
        "",
        f"Machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs; {versions()}.",
        f"Load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())} (other jobs share this machine).",
        "Made by `make bench-startup` (`python benchmarks/startup.py`).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
