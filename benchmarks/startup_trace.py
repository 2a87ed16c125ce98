"""Run one `hashtagkit` command with its start-up steps timed (a child of benchmarks/startup.py).

    python -X importtime benchmarks/startup_trace.py T0 ARGS...

T0 is the parent's `time.time()` just before it started this process. Each step below is timed
by wrapping the library function that does it, right after its module is imported (so the
command's own import order is kept); the wrappers write `TRACE name begin|end time` lines to
stderr, where `-X importtime` writes its lines too, in order, so the parent can tell which
imports happened inside which step. Steps missing from the code under test (an older revision)
are simply not timed. Kept tiny: what it imports itself is counted as interpreter start-up.
"""

import sys
import time

STARTED = time.time()
del sys.path[0]  # this script's folder (benchmarks/: serve.py, heads.py...) must not shadow any module

# module -> [(attribute path, step name)]; an attribute path "Class.method" wraps a method
STEPS = {
    "hashtagkit.runs": [("read_run", "read run record")],
    "hashtagkit.heads.base": [("Head.load", "head load")],
    "hashtagkit.provenance": [("sha256_file_cached", "sha256 (cache look-up or hash)")],
    "hashtagkit.backbones.registry": [("read_state_dict", "weights read (torch.load)"),
                                      ("load_backbone", "backbone load")],
    "hashtagkit.extraction.engine": [("Extractor.__init__", "model to device / precision")],
    "hashtagkit.extract": [("Extractor.__init__", "model to device / precision")],  # older revisions
    "hashtagkit.recommend": [("Recommender.from_run", "from_run"),
                             ("Recommender.prepare", "decode + preprocess"),
                             ("Recommender.score_prepared", "forward + head"),
                             ("Recommender.check_scores", "probe (check_scores)")],
    "hashtagkit.serve.app": [("create_app", "app build")],
    "uvicorn.server": [("Server.startup", "uvicorn start-up (lifespan, listen)")],
}


def mark(name: str, what: str) -> None:
    sys.stderr.write(f"TRACE {name}|{what}|{time.time():.6f}\n")
    sys.stderr.flush()


def timed(fn, name: str, is_async: bool = False):
    if is_async:
        async def wrapper(*a, **k):
            mark(name, "begin")
            try:
                return await fn(*a, **k)
            finally:
                mark(name, "end")
    else:
        def wrapper(*a, **k):
            mark(name, "begin")
            try:
                return fn(*a, **k)
            finally:
                mark(name, "end")
    wrapper.__wrapped__ = fn
    wrapper.__name__ = getattr(fn, "__name__", name)
    wrapper.__qualname__ = getattr(fn, "__qualname__", name)
    wrapper.__doc__ = getattr(fn, "__doc__", None)
    return wrapper


def patch(module) -> None:
    import inspect

    for path, name in STEPS.get(module.__name__, []):
        owner_name, _, attr = path.rpartition(".")
        owner = getattr(module, owner_name, None) if owner_name else module
        if owner is None or not hasattr(owner, attr):
            continue
        raw = inspect.getattr_static(owner, attr)
        if isinstance(raw, classmethod):
            setattr(owner, attr, classmethod(timed(raw.__func__, name)))
        elif isinstance(raw, staticmethod):
            setattr(owner, attr, staticmethod(timed(raw.__func__, name)))
        else:
            setattr(owner, attr, timed(raw, name, inspect.iscoroutinefunction(raw)))


class PatchAfterImport:
    """A meta-path finder that lets the real finders do the work, then patches the module once
    it has executed (before the importer binds any of its names)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in STEPS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                loader = spec.loader
                execute = loader.exec_module

                def exec_module(module, execute=execute):
                    execute(module)
                    patch(module)

                loader.exec_module = exec_module
                return spec
        return None


def main() -> None:
    t0 = float(sys.argv[1])
    sys.stderr.write(f"TRACE interpreter start|span|{t0:.6f}|{STARTED:.6f}\n")
    sys.meta_path.insert(0, PatchAfterImport())
    from hashtagkit.cli.main import cli

    cli.main(sys.argv[2:], prog_name="hashtagkit")


if __name__ == "__main__":
    main()
