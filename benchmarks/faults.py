"""Fault injection: does a store survive the crashes it will meet? (issue #11)

Five faults, each on a scratch copy of one small demo store, through the installed CLI
(`python -m hashtagkit.cli.main`) in subprocesses, as a user would meet them:

  1. `extract` SIGKILLed at --trials random moments (a seeded RNG over the measured duration
     of one uninterrupted run, so kills land before, during and after chunk writes); each is
     resumed with the same command until it exits 0 (bounded tries) and the store is compared
     with the uninterrupted run: fp32 and float32 storage, so a correct resume is bitwise equal.
  2. one DataLoader decode worker of a running `extract` SIGKILLed: did the extraction survive
     (exit 0 without a resume), and does a resume then complete it exactly?
  3. a process rewriting the store group's attributes in a loop (zarr), SIGKILLed at random
     moments: the store must still open with its vocabulary and split intact.
  4. `serve` of a kNN run on the extracted store SIGTERMed while 24 uploads are in flight: every
     request answered 200 or a JSON 503 with Retry-After, never a 500 (issue #23).
  5. a labels, split or paths chunk file deleted: detected by `info --verify` and by `fit`.

Counts: "rows lost" are rows whose features differ from the reference or whose chunk is not
done after the resume (must be 0); "mismatches" are trials whose final store differs from the
reference anywhere in features / valid / reason / done (must be 0). Everything started is
killed by pid when a trial ends (orphaned decode workers included, checked by start time).
Prints a Markdown table and writes it, with the machine and versions, to --out.

    python benchmarks/faults.py [--trials 20] [--worker-trials 2] [--attr-trials 20] [--n 12]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from hashtagkit import provenance

CLI = [sys.executable, "-m", "hashtagkit.cli.main"]
CHUNK_ROWS = 4
EXTRACT_ARGS = ["--backbone", "resnet50-object=random", "--precision", "fp32", "--device", "cpu",
                "--chunk-rows", str(CHUNK_ROWS), "--batch-size", "4", "--dtype", "float32", "--workers", "1",
                "--no-progress"]
COMPARED = ("features", "valid", "reason", "done")
RESUME_TRIES = 3


# --- processes: start, find children, kill by pid ------------------------------------------------
def start_time(pid: int) -> str | None:
    """The kernel's start time of a pid (field 22 of /proc/PID/stat): with the pid it names one
    process, so a pid recycled by the system is never killed by mistake."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def children(pid: int) -> list[int]:
    """Direct children of a process, from /proc (no psutil needed)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        found += kids
        todo += kids
    return found


@dataclass
class Reaper:
    """Every process a trial started (pid + start time), killed by pid when the trial ends."""

    procs: list[tuple[int, str]] = field(default_factory=list)

    def track(self, pid: int) -> None:
        for p in [pid, *descendants(pid)]:
            st = start_time(p)
            if st is not None and (p, st) not in self.procs:
                self.procs.append((p, st))

    def kill_all(self) -> int:
        """SIGKILL every tracked process still alive; returns how many were still running."""
        alive = 0
        for pid, st in self.procs:
            if start_time(pid) == st:
                alive += 1
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.procs.clear()
        return alive


def popen(cmd: list[str], reaper: Reaper, **kw) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)
    reaper.track(proc.pid)
    return proc


def sleep_tracking(proc: subprocess.Popen, seconds: float, reaper: Reaper) -> None:
    """Sleep, noting the process's children as they appear (a kill orphans them)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end and proc.poll() is None:
        reaper.track(proc.pid)
        time.sleep(min(0.05, max(0.0, end - time.monotonic())))


# --- the store under test ----------------------------------------------------------------------
def extract_cmd(store: Path) -> list[str]:
    return [*CLI, "extract", str(store), *EXTRACT_ARGS]


def read_state(store: Path) -> dict[str, np.ndarray] | None:
    """The arrays a resume must reproduce; None if extraction never created them."""
    g = zarr.open_group(store, mode="r")
    if "features" not in g:
        return None
    return {name: np.asarray(g[name][...]) for name in COMPARED}


def chunks_done(store: Path) -> int:
    g = zarr.open_group(store, mode="r")
    return int(np.asarray(g["done"][...]).sum()) if "done" in g else 0


def compare(state: dict | None, ref: dict) -> tuple[int, bool]:
    """(rows lost, whether anything differs): a row is lost if its chunk is not done or its
    features are not bitwise the reference's."""
    n = len(ref["valid"])
    if state is None:
        return n, True
    row_done = np.repeat(state["done"], CHUNK_ROWS)[:n]
    same = np.all(state["features"].view(np.uint32) == ref["features"].view(np.uint32), axis=1)
    lost = int(np.sum(~row_done | ~same))
    differs = any(not np.array_equal(state[k], ref[k]) for k in COMPARED)
    return lost, differs


def resume(store: Path, timeout: float, reaper: Reaper) -> tuple[bool, int]:
    """Run the same command until it exits 0 (at most RESUME_TRIES); (succeeded, tries)."""
    for attempt in range(1, RESUME_TRIES + 1):
        proc = popen(extract_cmd(store), reaper)
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            reaper.kill_all()
            proc.wait()
            continue
        if proc.returncode == 0:
            return True, attempt
        print(f"    resume attempt {attempt} exited {proc.returncode}: {err.decode()[-300:].strip()}", file=sys.stderr)
    return False, RESUME_TRIES


def fresh_copy(pristine: Path, work: Path, name: str) -> Path:
    dest = work / name
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(pristine, dest)
    return dest


# --- fault 1: SIGKILL extract at random moments -----------------------------------------------------
@dataclass
class Tally:
    fault: str
    trials: int = 0
    survived: int = 0
    rows_lost: int = 0
    mismatches: int = 0
    notes: list[str] = field(default_factory=list)

    def add(self, survived: bool, lost: int, differs: int) -> None:
        """One trial's outcome."""
        self.trials += 1
        self.survived += survived
        self.rows_lost += lost
        self.mismatches += differs

    def within_budget(self, trials: int, deadline: float):
        """Trial numbers 0..trials-1 while time is left; a stop is noted in the table."""
        for i in range(trials):
            if time.monotonic() > deadline:
                self.notes.append(f"stopped after {i} of {trials} trials (time budget)")
                return
            yield i


def kill_extract_trials(pristine: Path, work: Path, ref: dict, duration: float, trials: int, seed: int,
                        deadline: float) -> Tally:
    tally = Tally("`extract` SIGKILLed at a random moment, then resumed")
    rng = np.random.default_rng(seed)
    moments = rng.uniform(0.0, duration, trials)
    at_kill = []
    for i in tally.within_budget(trials, deadline):
        moment = moments[i]
        store, reaper = fresh_copy(pristine, work, "kill.zarr"), Reaper()
        try:
            proc = popen(extract_cmd(store), reaper)
            sleep_tracking(proc, float(moment), reaper)
            finished_first = proc.poll() is not None
            if not finished_first:
                proc.send_signal(signal.SIGKILL)
            proc.wait()
            done_at_kill = chunks_done(store) if (store / "done").exists() else 0
            at_kill.append("end" if finished_first else done_at_kill)
            ok, tries = resume(store, 4 * duration + 30, reaper)
            lost, differs = compare(read_state(store), ref)
        finally:
            reaper.kill_all()
        tally.add(ok, lost, differs)
        print(f"  kill {i + 1}/{trials} at {moment:.1f}s: chunks done at kill {at_kill[-1]}, resumed in {tries} "
              f"run(s): {'ok' if ok else 'FAILED'}, rows lost {lost}, {'MISMATCH' if differs else 'equal'}", flush=True)
    n_chunks = len(ref["done"])
    hist = [sum(1 for a in at_kill if a == k) for k in range(n_chunks + 1)]
    tally.notes.append(f"chunks done when killed (0..{n_chunks}): {hist}"
                       + (f"; {at_kill.count('end')} run(s) finished before the kill" if "end" in at_kill else ""))
    return tally


# --- fault 2: SIGKILL a decode worker ---------------------------------------------------------------
def kill_worker_trials(pristine: Path, work: Path, ref: dict, duration: float, trials: int, seed: int,
                       deadline: float) -> Tally:
    tally = Tally("one decode worker SIGKILLed mid-run")
    rng = np.random.default_rng(seed + 1)
    exits = []
    for i in tally.within_budget(trials, deadline):
        store, reaper = fresh_copy(pristine, work, "worker.zarr"), Reaper()
        try:
            proc = popen(extract_cmd(store), reaper)
            victim = wait_for_worker(proc, reaper, time.monotonic() + 2 * duration + 30)
            if victim is not None:
                sleep_tracking(proc, float(rng.uniform(0.1, 0.4) * duration), reaper)
                victim_alive = start_time(victim) is not None
                if victim_alive:
                    os.kill(victim, signal.SIGKILL)
            try:
                _, err = proc.communicate(timeout=4 * duration + 30)
            except subprocess.TimeoutExpired:
                reaper.kill_all()
                _, err = proc.communicate()
                tally.notes.append(f"trial {i + 1}: extract hung after its worker died; killed")
            survived = proc.returncode == 0 and victim is not None
            exits.append(proc.returncode)
            last = (err.decode().strip().splitlines() or [""])[-1][:160]
            if proc.returncode != 0:
                tally.notes.append(f"trial {i + 1}: exit {proc.returncode}: {last}")
            ok, tries = resume(store, 4 * duration + 30, reaper)
            lost, differs = compare(read_state(store), ref)
        finally:
            reaper.kill_all()
        tally.add(survived, lost, differs)
        print(f"  worker kill {i + 1}/{trials}: extract exit {proc.returncode} "
              f"({'survived' if survived else 'did not survive'}); then resumed in {tries} run(s) "
              f"{'ok' if ok else 'FAILED'}, rows lost {lost}, {'MISMATCH' if differs else 'equal'}", flush=True)
    tally.notes.append("survived = the extract itself exited 0; rows lost / mismatches are after a resume")
    return tally


def wait_for_worker(proc: subprocess.Popen, reaper: Reaper, until: float) -> int | None:
    """The pid of a decode worker (a child of the extract process), once one exists."""
    while time.monotonic() < until and proc.poll() is None:
        reaper.track(proc.pid)
        kids = children(proc.pid)
        if kids:
            return kids[0]
        time.sleep(0.05)
    return None


# --- fault 3: SIGKILL a writer of the group's attributes ---------------------------------------------
ATTR_WRITER = """
import sys, zarr
g = zarr.open_group(sys.argv[1], mode="r+", zarr_format=3)
attrs = dict(g.attrs)
print("ready", flush=True)
i = 0
while True:
    i += 1
    g.attrs.update({**attrs, "faults_writer": i})
"""


def attr_writer_trials(pristine: Path, work: Path, trials: int, seed: int, deadline: float) -> Tally:
    from hashtagkit.stores import open_store

    tally = Tally("writer of the group attributes SIGKILLed mid-loop")
    rng = np.random.default_rng(seed + 2)
    base = open_store(pristine)
    vocab, split_info, split = base.vocab, base.split_info, base.split()
    writes = []
    for i in tally.within_budget(trials, deadline):
        store, reaper = fresh_copy(pristine, work, "attrs.zarr"), Reaper()
        try:
            proc = subprocess.Popen([sys.executable, "-c", ATTR_WRITER, str(store)], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
            reaper.track(proc.pid)
            proc.stdout.readline()  # "ready": zarr imported, the loop starts now
            time.sleep(float(rng.uniform(0.0, 0.5)))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        finally:
            reaper.kill_all()
        problem = attrs_problem(store, vocab, split_info, split)
        if problem is None:
            writes.append(int(zarr.open_group(store, mode="r").attrs.get("faults_writer", 0)))
        tally.add(problem is None, 0, problem is not None)
        if problem:
            tally.notes.append(f"trial {i + 1}: {problem}")
    stray = sorted({p.name for p in (work / "attrs.zarr").iterdir()} - {p.name for p in pristine.iterdir()})
    if writes:
        tally.notes.append(f"attribute rewrites completed before the kill: {min(writes)} to {max(writes)}")
    tally.notes.append(f"files left beside zarr.json after the last kill: {stray or 'none'}")
    tally.notes.append("rows are not touched by this fault; mismatches = trials where the store failed to open "
                       "or its vocabulary / split changed")
    return tally


def attrs_problem(store: Path, vocab: list, split_info: dict, split: np.ndarray) -> str | None:
    """Why the store is not intact after the writer's death, or None."""
    from hashtagkit.stores import open_store

    try:
        s = open_store(store)
        s.verify_split()
    except Exception as e:  # any failure to open is the finding, whatever its type
        return f"{type(e).__name__}: {e}"
    if s.vocab != vocab:
        return "vocabulary changed"
    if s.split_info != split_info or not np.array_equal(s.split(), split):
        return "split changed"
    return None


# --- fault 4: restart `serve` under load --------------------------------------------------------------
CLIENTS = 24


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_restart_trials(reference_store: Path, work: Path, trials: int, deadline: float) -> Tally:
    """`hashtagkit serve` of a kNN run on the reference store, CLIENTS concurrent uploads of one
    photo each, one photo a batch, SIGTERM once the first batches ran: every request must get its
    answer (200) or a JSON 503 with Retry-After, never a 500 or a dropped connection, and the
    server must exit 0."""
    import httpx

    tally = Tally(f"`serve` SIGTERMed under load ({CLIENTS} concurrent uploads)")
    run_dir = work / "serve-run"
    if not run_dir.exists():
        subprocess.run([*CLI, "fit", str(reference_store), "--head", "knn", "--set", "k=5", "-o", str(run_dir)],
                       check=True, capture_output=True)
    photos = sorted((reference_store.parent / "pristine_images").rglob("*.jpg"))
    answered = refused = 0
    for i in tally.within_budget(trials, deadline):
        port, reaper = free_port(), Reaper()
        url = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen([*CLI, "serve", str(run_dir), "--port", str(port), "--max-batch", "1", "--max-wait-ms",
                                 "0", "--grace", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        reaper.track(proc.pid)
        failed, code = 0, None
        try:
            until = time.monotonic() + 120
            while time.monotonic() < until:
                try:
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)

            def upload(k: int, url: str = url):
                photo = photos[k % len(photos)]
                try:
                    return httpx.post(f"{url}/v1/recommend", timeout=60,
                                      files=[("files", (photo.name, photo.read_bytes(), "image/jpeg"))])
                except httpx.TransportError as e:
                    return e

            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(CLIENTS) as pool:
                futures = [pool.submit(upload, k) for k in range(CLIENTS)]
                while httpx.get(f"{url}/v1/info", timeout=30).json()["server"]["batching"]["batches"] < 2:
                    time.sleep(0.02)
                proc.send_signal(signal.SIGTERM)
                results = [f.result() for f in futures]
            code = proc.wait(timeout=60)
            for r in results:
                if isinstance(r, httpx.Response) and r.status_code == 200:
                    answered += 1
                elif isinstance(r, httpx.Response) and r.status_code == 503 and r.headers.get("Retry-After") \
                        and "detail" in r.json():
                    refused += 1
                else:
                    failed += 1
        finally:
            reaper.kill_all()
        tally.add(code == 0 and failed == 0, 0, failed)
        print(f"  serve restart {i + 1}/{trials}: exit {code}, failed requests {failed}", flush=True)
    tally.notes.append(f"mismatches = requests answered other than 200 or a JSON 503 with Retry-After (must be 0); "
                       f"in all, {answered} answered 200 and {refused} got 503 (queued past the drain window)")
    return tally


# --- fault 5: a chunk of labels, split or paths deleted ------------------------------------------------
def deleted_chunk_trials(reference_store: Path, work: Path, trials: int, seed: int, deadline: float) -> Tally:
    """One chunk file of labels, split or paths deleted from a copy of the extracted store: `info
    --verify` must exit 1 naming it, and `fit` must refuse the store (exit 2) naming it, never
    training on the zeros Zarr would read in its place."""
    tally = Tally("a labels, split or paths chunk file deleted")
    rng = np.random.default_rng(seed + 5)
    for _ in tally.within_budget(trials, deadline):
        store = work / "deleted.zarr"
        shutil.rmtree(store, ignore_errors=True)
        shutil.copytree(reference_store, store)
        files = sorted(p for name in ("labels", "split", "paths") for p in (store / name / "c").rglob("*") if p.is_file())
        victim = files[int(rng.integers(len(files)))]
        victim.unlink()
        key = str(victim.relative_to(store))
        verify = subprocess.run([*CLI, "info", "--verify", str(store)], capture_output=True, text=True)
        fit = subprocess.run([*CLI, "fit", str(store), "--head", "popularity", "-o", str(work / "deleted-run")],
                             capture_output=True, text=True)
        found = verify.returncode == 1 and key in verify.stdout and fit.returncode == 2 and key in fit.stderr \
            and not (work / "deleted-run").exists()
        tally.add(found, 0, 0 if found else 1)
        print(f"  deleted {key}: verify exit {verify.returncode}, fit exit {fit.returncode}: "
              f"{'detected' if found else 'NOT DETECTED'}", flush=True)
    tally.notes.append("survived = `info --verify` exited 1 and `fit` 2, both naming the file; mismatches = "
                       "deletions not detected (must be 0)")
    return tally


# --- report ------------------------------------------------------------------------------------
def table(tallies: list[Tally], header: list[str]) -> str:
    lines = [*header, "", "| fault | trials | survived | rows lost | mismatches |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {t.fault} | {t.trials} | {t.survived} | {t.rows_lost} | {t.mismatches} |" for t in tallies]
    lines.append("")
    for t in tallies:
        lines += [f"- {t.fault}: " + "; ".join(t.notes)] if t.notes else []
    return "\n".join(lines) + "\n"


def header(args: argparse.Namespace, duration: float, n_chunks: int) -> list[str]:
    v = provenance.versions()
    return [
        "# Fault injection",
        "",
        f"`python benchmarks/faults.py --trials {args.trials} --worker-trials {args.worker_trials} "
        f"--attr-trials {args.attr_trials} --serve-trials {args.serve_trials} --delete-trials {args.delete_trials} "
        f"--n {args.n} --seed {args.seed}` (`make bench-faults`), {provenance.now()}.",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}. Versions: "
        f"torch {v.get('torch')}, torchvision {v.get('torchvision')}, zarr {v.get('zarr')}, numpy {v.get('numpy')}, "
        f"Python {v.get('python')}.",
        f"Store: `hashtagkit prepare demo --n {args.n}`, {n_chunks} chunks of {CHUNK_ROWS} rows; "
        f"`hashtagkit extract {' '.join(EXTRACT_ARGS)}`; one uninterrupted run took {duration:.1f}s (kill moments "
        f"are drawn over it, seed {args.seed}). Rows lost and mismatches must be 0.",
    ]


def reference(pristine: Path, work: Path) -> tuple[dict, float]:
    """The uninterrupted run every resumed store must equal, and its wall time."""
    store = fresh_copy(pristine, work, "reference.zarr")
    started = time.monotonic()
    res = subprocess.run(extract_cmd(store), capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"the uninterrupted extract failed:\n{res.stderr}")
    return read_state(store), time.monotonic() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=20, help="random SIGKILLs of extract")
    ap.add_argument("--worker-trials", type=int, default=2, help="SIGKILLs of a decode worker")
    ap.add_argument("--attr-trials", type=int, default=20, help="SIGKILLs of an attribute writer")
    ap.add_argument("--serve-trials", type=int, default=2, help="SIGTERMs of `serve` under load")
    ap.add_argument("--delete-trials", type=int, default=3, help="deleted labels/split/paths chunk files")
    ap.add_argument("--n", type=int, default=12, help="demo photos in the store")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget", type=float, default=500,
                    help="seconds; no new trial starts after it (the whole run stays under 10 minutes)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "faults.md")
    args = ap.parse_args()
    # SIGTERM (make interrupted, a CI timeout) unwinds like Ctrl-C, so every trial's reaper runs
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("faults.py: terminated"))
    deadline = time.monotonic() + args.budget
    with tempfile.TemporaryDirectory(prefix="hashtagkit-faults-") as tmp:
        work = Path(tmp)
        pristine = work / "pristine.zarr"
        subprocess.run([*CLI, "prepare", "demo", "-o", str(pristine), "--n", str(args.n), "--seed", "0"],
                       check=True, capture_output=True)
        ref, duration = reference(pristine, work)
        print(f"uninterrupted extract: {duration:.1f}s, {len(ref['done'])} chunks", flush=True)
        reserve = (args.worker_trials * (2 * duration + 10) + args.attr_trials * 1.5  # the later faults' share
                   + args.serve_trials * 30 + args.delete_trials * 10)
        tallies = [
            kill_extract_trials(pristine, work, ref, duration, args.trials, args.seed, deadline - reserve),
            kill_worker_trials(pristine, work, ref, duration, args.worker_trials, args.seed, deadline),
            attr_writer_trials(pristine, work, args.attr_trials, args.seed, deadline),
            serve_restart_trials(work / "reference.zarr", work, args.serve_trials, deadline),
            deleted_chunk_trials(work / "reference.zarr", work, args.delete_trials, args.seed, deadline),
        ]
    text = table(tallies, header(args, duration, len(ref["done"])))
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
