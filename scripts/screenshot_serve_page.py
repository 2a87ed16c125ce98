"""The README's picture of the upload page (docs/serve-page.png), made the way a user would see it.

A demo store (`hashtagkit prepare demo`: synthetic photos drawn by hashtagkit, so nothing from a
real dataset ends up in the repository), extracted with a small backbone (by default the tests'
`tiny-scene` colour-layout backbone with random weights: fast, and it does see sunsets, night and
sea), fitted with kNN and served by a real uvicorn server on 127.0.0.1; headless Chromium opens
the page, uploads some test-split photos and a text file, waits for every card and takes the
screenshot. The page says what the run is (head, backbones, random weights), so does the picture.

    python scripts/screenshot_serve_page.py [-o docs/serve-page.png] [--n 300] [--photos 5]
        [--backbone tiny-scene=random ...] [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def make_run(tmp: Path, n: int, backbones: list[str]) -> tuple[Path, list[Path]]:
    """A fitted kNN run on a fresh demo store, and the store's test-split photos."""
    from click.testing import CliRunner

    from hashtagkit.cli.main import cli
    from hashtagkit.stores import open_store

    if any(b.startswith("tiny-scene") for b in backbones):
        sys.path.insert(0, str(REPO))
        from tests.test_extract import tiny_scene_backbone  # the tests' cheap backbone, registered here

        tiny_scene_backbone()
    store = str(tmp / "demo.zarr")
    runner = CliRunner()
    extract = ["extract", store, "--no-progress", "--workers", "0", "--precision", "fp32"]
    for b in backbones:
        extract += ["--backbone", b]
    for args in (["prepare", "demo", "-o", store, "--n", str(n), "--seed", "0"], extract,
                 ["fit", store, "--head", "knn", "-o", str(tmp / "run"), "--set", "k=10"]):
        res = runner.invoke(cli, args)
        if res.exit_code != 0:
            raise SystemExit(f"hashtagkit {args[0]} failed:\n{res.output}")
    s = open_store(store)
    return tmp / "run", [tmp / "demo_images" / p for p in s.paths(s.split_rows("test"))]


def serve(run_dir: Path):
    """(url, stop): the run served by uvicorn in a thread on a free 127.0.0.1 port."""
    import uvicorn

    from hashtagkit.recommend import Recommender
    from hashtagkit.serve import create_app

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(Recommender.from_run(run_dir, device="cpu")),
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise SystemExit("the server did not start")
        time.sleep(0.05)

    def stop() -> None:
        server.should_exit = True
        thread.join(20)
        sock.close()

    return f"http://127.0.0.1:{sock.getsockname()[1]}/", stop


def pick(photos: list[Path], k: int) -> list[Path]:
    """k photos spread over the test split (a deterministic choice, so the picture is stable)."""
    step = max(1, len(photos) // k)
    return photos[::step][:k]


def screenshot(url: str, photos: list[Path], out: Path, chromium: str, width: int) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": width, "height": 800}, color_scheme="light")
        page.set_default_timeout(60_000)
        page.goto(url)
        page.wait_for_function("document.querySelector('#run-info').textContent.startsWith('Model: ')")
        files = [{"name": f.name, "mimeType": "image/jpeg", "buffer": f.read_bytes()} for f in photos]
        files.append({"name": "notes.txt", "mimeType": "text/plain", "buffer": b"shopping list, not a photo\n"})
        page.set_input_files("#files", files)
        page.wait_for_function(
            "n => document.querySelectorAll('#results .card').length === n"
            " && !document.querySelector('#results .card[data-state=pending]')"
            " && [...document.querySelectorAll('#results img.thumb')].every(i => i.complete)", arg=len(files))
        page.click("#results .card .copy")  # show the copy button's answer on the first card
        page.evaluate("document.activeElement.blur()")
        page.mouse.move(0, 0)  # no hover highlight in the picture
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=True)
        browser.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--out", type=Path, default=REPO / "docs" / "serve-page.png")
    ap.add_argument("--n", type=int, default=300, help="demo photos drawn (the kNN's memory is the train split)")
    ap.add_argument("--photos", type=int, default=5, help="test-split photos uploaded (plus one text file)")
    ap.add_argument("--backbone", action="append", help="as extract's --backbone (default: tiny-scene=random)")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--width", type=int, default=1100)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hashtagkit-page-") as tmp:
        run_dir, photos = make_run(Path(tmp), args.n, args.backbone or ["tiny-scene=random"])
        url, stop = serve(run_dir)
        try:
            screenshot(url, pick(photos, args.photos), args.out, args.chromium, args.width)
        finally:
            stop()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
