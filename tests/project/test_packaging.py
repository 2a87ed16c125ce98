"""The package as users install it: `python -m build` on a copy of the checkout (the sdist, then the wheel
built from that sdist), the wheel's contents against the source tree, and the wheel installed into a new
venv and run from outside the repository.

Nothing is downloaded: the build runs with --no-isolation (this venv's setuptools), and the new venv gets
hashtagkit's dependencies from this venv's site-packages through a folder of links named by a .pth file
(hashtagkit's own editable install is left out of it), so `pip install --no-deps --no-index` installs the
wheel alone and `pip check` then checks the wheel's requirements against real installed distributions.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
NAME, VERSION = "hashtagkit", "0.1.0"
# Import name -> folder in the repository: stores/ and cli/ are installed inside hashtagkit (setup.py).
PACKAGE_DIRS = {"hashtagkit": "hashtagkit", "hashtagkit.stores": "stores", "hashtagkit.cli": "cli"}
SKIP_DIRS = {"__pycache__"}


def source_files(suffix: str = ".py") -> dict[str, Path]:
    """Wheel path -> source file for every module under the package folders (folders with or without an
    __init__.py: a module in a folder that is not a package would be missing from the wheel)."""
    found = {}
    for name, folder in PACKAGE_DIRS.items():
        for path in sorted((REPO / folder).rglob(f"*{suffix}")):
            rel = path.relative_to(REPO / folder)
            if SKIP_DIRS.isdisjoint(rel.parts):
                found["/".join([*name.split("."), *rel.parts])] = path
    return found


def source_packages() -> set[str]:
    packages = set()
    for name, folder in PACKAGE_DIRS.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            if SKIP_DIRS.isdisjoint(rel.parts):
                packages.add(".".join([name, *rel.parts]))
    return packages


def static_files() -> dict[str, Path]:
    """Wheel path -> file for the upload page's files, subfolders included (package_data must ship them)."""
    folder = REPO / "hashtagkit" / "static"
    return {f"hashtagkit/static/{p.relative_to(folder).as_posix()}": p for p in sorted(folder.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
            and SKIP_DIRS.isdisjoint(p.relative_to(folder).parts)}


def checkout_files() -> list[str]:
    """What a clone would have plus new files not yet committed (git's own ignore rules), so a stale
    build/ or an egg-info in the working tree cannot leak into what is checked."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the files to build from are the ones git lists")
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         check=True, capture_output=True).stdout.decode()
    return [f for f in out.split("\0") if f and (REPO / f).is_file()]  # not files deleted but not committed


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"}}
    env.update(PYTHONNOUSERSITE="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", **extra)
    return env


def run(cmd: list[str | Path], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=clean_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, Path]:
    """`python -m build --no-isolation` on a copy of the checkout: the sdist, and the wheel built from it."""
    if importlib.util.find_spec("build") is None:
        pytest.fail("the 'build' package is missing: pip install -c constraints.txt -e '.[test]'")
    root = tmp_path_factory.mktemp("packaging")
    src = root / "src"
    for rel in checkout_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, src / rel)
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", root / "dist", src], cwd=root)
    wheels, sdists = sorted((root / "dist").glob("*.whl")), sorted((root / "dist").glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, list((root / "dist").iterdir())
    return {"root": root, "wheel": wheels[0], "sdist": sdists[0]}


def test_wheel_holds_the_packages_and_the_page(dist):
    wheel = dist["wheel"]
    assert wheel.name == f"{NAME}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = f"{NAME}-{VERSION}.dist-info"
        entry_points = zf.read(f"{info}/entry_points.txt").decode()
        metadata = zf.read(f"{info}/METADATA").decode()
        static = static_files()
        missing = sorted(set(static) - names)
        assert not missing, f"the page's files in the source tree but not in the wheel (package_data): {missing}"
        for path, source in static.items():
            assert zf.read(path) == source.read_bytes(), path

    # Every module and package of the source tree, under hashtagkit/ and nowhere else.
    expected = source_files()
    missing = sorted(set(expected) - names)
    assert not missing, f"modules in the source tree but not in the wheel: {missing}"
    wheel_packages = {n.rsplit("/", 1)[0].replace("/", ".") for n in names if n.endswith("/__init__.py")}
    assert wheel_packages == source_packages()
    assert {"hashtagkit", "hashtagkit.stores", "hashtagkit.cli", "hashtagkit.data", "hashtagkit.heads",
            "hashtagkit.backbones", "hashtagkit.serve"} <= wheel_packages
    assert "hashtagkit/static/index.html" in names
    top_level = {n.split("/", 1)[0] for n in names}
    assert top_level == {"hashtagkit", info}, top_level  # no top-level cli, stores, tests, benchmarks
    stray = sorted(n for n in names if not n.startswith(info) and n not in expected and n not in static)
    assert not stray, f"files in the wheel that are not the package's: {stray}"

    assert "[console_scripts]\nhashtagkit = hashtagkit.cli.main:main" in entry_points
    requires = [line.split(": ", 1)[1] for line in metadata.splitlines() if line.startswith("Requires-Dist: ")]
    pins = {r.split(">=")[0]: r for r in requires if r.startswith(("torch>", "torchvision>"))}
    assert set(pins) == {"torch", "torchvision"}, requires
    assert all("<" not in r and "==" not in r for r in pins.values()), pins  # newer torch is the user's to take


def test_sdist_builds_the_wheel_from_what_it_holds(dist):
    """`build` made the wheel from the unpacked sdist, so the sdist held everything setup.py reads; here,
    that it holds the sources and README.md and no venv, build output or constraints."""
    import tarfile

    with tarfile.open(dist["sdist"]) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    assert {"setup.py", "README.md", "PKG-INFO"} <= names
    sources = {"/".join(p.relative_to(REPO).parts) for p in source_files().values()}
    assert sources <= names, sorted(sources - names)
    assert not any(n.split("/", 1)[0] in {".venv", "build", "dist", "demo", "benchmarks", ".git"} for n in names)
    assert "constraints.txt" not in names


@pytest.fixture(scope="module")
def venv(dist) -> Path:
    """A new venv holding the wheel alone; its dependencies are this venv's, through links."""
    root = dist["root"]
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=120)
    # The links: every entry of this venv's site-packages but hashtagkit's editable install and .pth files
    # (which would not run from a folder a .pth names anyway). pip comes from here too.
    deps = root / "deps"
    deps.mkdir()
    here = Path(sysconfig.get_paths()["purelib"])
    for entry in here.iterdir():
        if entry.name.startswith((NAME, f"__editable__.{NAME}", f"__editable___{NAME}")) or entry.suffix == ".pth":
            continue
        (deps / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    python = venv / "bin" / "python"
    purelib = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root)
                   .stdout.strip())
    (purelib / "_hashtagkit_test_deps.pth").write_text(f"{deps}\n")
    run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--no-cache-dir", dist["wheel"]], cwd=root)
    return venv


@pytest.mark.slow
def test_installed_wheel_runs_outside_the_repository(venv, dist):
    from hashtagkit.cli.main import cli

    outside = dist["root"] / "elsewhere"
    outside.mkdir()
    python, script = venv / "bin" / "python", venv / "bin" / "hashtagkit"
    purelib = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=outside)
                   .stdout.strip())

    # The console script lists every command this checkout's CLI has.
    assert script.is_file()
    helped = run([script, "--help"], cwd=outside).stdout
    assert "Commands:" in helped
    import click

    ctx = click.Context(cli)
    commands = [n for n in cli.list_commands(ctx) if not cli.get_command(ctx, n).hidden]
    assert commands and all(f"  {n} " in helped for n in commands), (commands, helped)
    assert VERSION in run([script, "--version"], cwd=outside).stdout
    assert "Usage:" in run([python, "-m", "hashtagkit.cli", "--help"], cwd=outside).stdout

    # The modules are the installed ones, not the repository's; no top-level cli or stores.
    code = ("import importlib.util, hashtagkit, hashtagkit.stores, hashtagkit.cli.main, hashtagkit.serve.app\n"
            "for m in (hashtagkit, hashtagkit.stores, hashtagkit.cli.main, hashtagkit.serve.app): print(m.__file__)\n"
            "print(importlib.util.find_spec('cli'), importlib.util.find_spec('stores'))")
    lines = run([python, "-c", code], cwd=outside).stdout.splitlines()
    for file in lines[:4]:
        assert Path(file).is_relative_to(purelib / "hashtagkit"), (file, purelib)
        assert not Path(file).resolve().is_relative_to(REPO), file
    assert lines[4] == "None None"

    # The upload page's files through importlib.resources, as `serve` reads them (page_files).
    code = ("import importlib.resources, hashtagkit.serve.app as app\n"
            "root = importlib.resources.files('hashtagkit') / 'static'\n"
            "print(sorted(app.page_files())); print(len((root / 'index.html').read_bytes()))")
    names, size = run([python, "-c", code], cwd=outside).stdout.splitlines()
    assert names == str(sorted(p.name for p in (REPO / "hashtagkit" / "static").iterdir()
                               if p.is_file() and not p.name.startswith(".")))
    assert int(size) == (REPO / "hashtagkit" / "static" / "index.html").stat().st_size

    # pip sees the wheel (not the editable install) and every requirement satisfied.
    shown = run([python, "-m", "pip", "show", NAME], cwd=outside).stdout
    assert f"Version: {VERSION}" in shown and f"Location: {purelib}" in shown, shown
    checked = run([python, "-m", "pip", "check"], cwd=outside)
    assert "No broken requirements found." in checked.stdout, checked.stdout + checked.stderr
