"""Every fenced code block of README.md and docs/*.md works as written.

- ```python blocks run in order, one namespace per file, in a temporary folder;
- ```bash / ```sh / ```console blocks run their commands in order (per file, in the same folder),
  every command a `hashtagkit` one (`$ ` starts a command in a console block; other lines there
  are output);
- a block that needs what a test machine lacks (a GPU, the internet, the real HARRISON data, a
  cluster, a long run) is marked on the line before its fence with
  `<!-- docs-test: skip (the reason) -->` and is then only syntax-checked (`compile()`, `bash -n`);
- other languages (text, json) are shown, not run; a fence without a language is an error;
- a page whose runnable blocks name `s3://BUCKET/...` runs against moto's S3 server (tests/s3.py),
  started for it: each bucket named is created, and `s3://photos/shards/0000{0,1}.tar` are two
  webdataset shards of 40 demo photos, as img2dataset would have left them.

A marked block without a reason fails, and so does an unmarked block that fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PYTHON = {"python", "py"}
SHELL = {"bash", "sh", "console", "shell"}
SHOWN = {"text", "json"}
MARK = re.compile(r"^<!--\s*docs-test:\s*skip\b(.*?)-->\s*$")
REASON = re.compile(r"^\s*\((.*\S.*)\)\s*$")
FENCE = re.compile(r"^(`{3,})(\S*)\s*$")
COMMAND_TIMEOUT = 600


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    skip: bool
    reason: str | None

    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        ticks, lang = m.groups()
        start = i
        i += 1
        body = []
        while i < len(lines) and lines[i].strip() != ticks:
            body.append(lines[i])
            i += 1
        prev = lines[start - 1].strip() if start > 0 else ""
        mark = MARK.match(prev)
        reason = None
        if mark:
            r = REASON.match(mark.group(1))
            reason = r.group(1).strip() if r else None
        out.append(Block(page, start + 1, lang.lower(), "\n".join(body) + "\n", bool(mark), reason))
        i += 1
    return out


ALL = [b for p in PAGES for b in blocks(p)]


def commands(block: Block) -> list[str]:
    """The block's commands: continuation lines joined, comments and blank lines left out; in a
    console block only the `$ ` lines (and their continuations)."""
    out: list[str] = []
    pending = ""
    for raw in block.code.splitlines():
        line = raw.rstrip()
        if not pending:
            if block.lang == "console":
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            if not line.strip() or line.lstrip().startswith("#"):
                continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append((pending + line).strip())
        pending = ""
    if pending:
        out.append(pending.strip())
    return out


def shell_text(block: Block) -> str:
    return "\n".join(commands(block)) + "\n" if block.lang == "console" else block.code


def test_the_pages_have_code_blocks():
    assert (REPO / "README.md").is_file() and len(PAGES) > 5
    assert sum(1 for b in ALL if b.lang in PYTHON and not b.skip) >= 3
    assert sum(1 for b in ALL if b.lang in SHELL and not b.skip) >= 2


@pytest.mark.parametrize("block", ALL, ids=[b.where() for b in ALL])
def test_every_block_is_known_marked_with_a_reason_and_parses(block: Block):
    assert block.lang in PYTHON | SHELL | SHOWN, (
        f"{block.where()}: a fence needs a language (python, bash, sh, console; text or json to show only), "
        f"got {block.lang!r}")
    if block.skip:
        assert block.reason, f"{block.where()}: `docs-test: skip` needs a reason: <!-- docs-test: skip (why) -->"
        assert block.lang in PYTHON | SHELL, f"{block.where()}: only python and shell blocks run; do not mark a {block.lang} block"
    if block.lang in PYTHON:
        compile(block.code, block.where(), "exec")
    elif block.lang in SHELL:
        res = subprocess.run(["bash", "-n"], input=shell_text(block), capture_output=True, text=True)
        assert res.returncode == 0, f"{block.where()}: {res.stderr}"
        if not block.skip:
            for cmd in commands(block):
                assert shlex.split(cmd)[0] == "hashtagkit", (
                    f"{block.where()}: `{cmd}` is not a hashtagkit command: make it one, or mark the block "
                    f"<!-- docs-test: skip (why) -->")


def runnable(page: Path) -> list[Block]:
    return [b for b in ALL if b.page == page and not b.skip and b.lang in PYTHON | SHELL]


RUN_PAGES = [p for p in PAGES if runnable(p)]


def env() -> dict:
    bin_dir = str(Path(sys.executable).parent)
    out = os.environ | {"PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "PYTHONWARNINGS": "ignore"}
    out.pop("HASHTAGKIT_DEBUG", None)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("page", RUN_PAGES, ids=[str(p.relative_to(REPO)) for p in RUN_PAGES])
def test_the_pages_blocks_run(page: Path, tmp_path, monkeypatch, request):
    """In order, in a temporary folder: Python blocks share one namespace, shell commands run with
    this venv's `hashtagkit`."""
    buckets = sorted({m for b in runnable(page) for m in re.findall(r"s3://([a-z0-9][a-z0-9.-]+)", b.code)})
    if buckets:  # the page's buckets, on moto's S3 server
        import json

        from hashtagkit import remote
        from tests.s3 import CREDENTIALS, demo_shards

        server = request.getfixturevalue("s3_server")
        for k, v in CREDENTIALS.items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv(remote.ENV, json.dumps(server.options()))
        remote.use_storage_options(None)
        for bucket in buckets:
            with contextlib.suppress(Exception):  # made for an earlier page already
                server.bucket(bucket)
        if "photos" in buckets:
            demo_shards(tmp_path / "shards-made", "s3://photos")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for block in runnable(page):
        if block.lang in PYTHON:
            try:
                exec(compile(block.code, block.where(), "exec"), namespace)  # noqa: S102 - the docs' own code
            except Exception as error:  # the block's location first, then the error
                raise AssertionError(f"{block.where()}: {type(error).__name__}: {error}") from error
        else:
            for cmd in commands(block):
                res = subprocess.run(cmd, shell=True, cwd=tmp_path, env=env(), capture_output=True, text=True,
                                     timeout=COMMAND_TIMEOUT)
                assert res.returncode == 0, (f"{block.where()}: `{cmd}` exited {res.returncode}:\n"
                                             f"{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
