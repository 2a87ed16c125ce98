"""The standing hostile-user test: bad files, bad options, bad outputs, for every command.

Each case must end as a user's mistake does: exit status 2, exactly one line on stderr
(`Error: ...`), no traceback, and every input and existing artefact byte-for-byte unchanged
(the whole fixture tree is hashed before and after). The fixtures are built once per module.
Cases in areas other helpers fix are in OTHERS_PENDING, expected to fail here until merged.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import zarr
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashtagkit.cli.main import cli

from ..conftest import make_store

BIG_SEED = str(2**32)


def tree_digest(root: Path) -> dict[str, str]:
    """Every file and folder under root, with a hash of each file's bytes."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def harrison_copy(root: Path, paths: list[str], tags: list[str]) -> Path:
    root.mkdir()
    write_lines(root / "data_list.txt", paths)
    write_lines(root / "tag_list.txt", tags)
    write_lines(root / "vocab_index.txt", ["love 0", "sea 1", "sky 2"])
    return root


def posts_file(path: Path, posts: list) -> Path:
    return write_lines(path, [json.dumps(p) if not isinstance(p, str) else p for p in posts])


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> Path:
    """A tiny world: a store, a popularity run, posts, label files, a sheet, weights, and
    things hashtagkit did not make."""
    from matplotlib.figure import Figure

    from hashtagkit.show import write_sheet

    root = tmp_path_factory.mktemp("bad_input")
    make_store(root / "s.zarr", n=40, c=5, test=10)
    make_store(root / "s2.zarr", n=40, c=5, test=10, seed=3)  # another split
    make_store(root / "nan.zarr", n=40, c=5, test=10)  # the same split, NaN features
    zarr.open_array(root / "nan.zarr" / "features", mode="r+")[3, 2] = float("nan")
    assert CliRunner().invoke(cli, ["fit", str(root / "s.zarr"), "--head", "popularity", "-o",
                                    str(root / "run")]).exit_code == 0
    (root / "imgs").mkdir()
    (root / "imgs" / "a.jpg").write_bytes(b"not really a jpeg")
    good = [{"image": f"{c}.jpg", "hashtags": ["#sea", "sky"]} for c in "abcdef"]
    posts_file(root / "posts.jsonl", good)
    posts_file(root / "escape.jsonl", good + [{"image": "../../etc/passwd", "hashtags": ["sea"]}])
    posts_file(root / "absolute.jsonl", good + [{"image": "/etc/passwd", "hashtags": ["sea"]}])
    posts_file(root / "dup.jsonl", good + [{"image": "./a.jpg", "hashtags": ["love"]}])
    posts_file(root / "notjson.jsonl", good + ['{"image": "x.jpg", "hashtags": [}'])
    posts_file(root / "list.jsonl", good + ['["x.jpg", ["sea"]]'])
    posts_file(root / "digits.jsonl", [{"image": f"{i}.jpg", "hashtags": ["#123"]} for i in range(6)])
    posts_file(root / "noimage.jsonl", good + [{"image": 3, "hashtags": ["sea"]}])
    posts_file(root / "tagstr.jsonl", good + [{"image": "x.jpg", "hashtags": "#sea #sky"}])
    posts_file(root / "deep.jsonl", good + ["[" * 100000 + "]" * 100000])
    (root / "latin1.jsonl").write_bytes(b'{"image": "caf\xe9.jpg", "hashtags": ["sea"]}\n')
    (root / "empty.jsonl").write_bytes(b"")
    (root / "badgzip.jsonl.gz").write_bytes(gzip.compress((root / "posts.jsonl").read_bytes())[:30])
    harrison_copy(root / "h", ["a.jpg", "b.jpg", "c.jpg"], ["love", "sea", "sky"])
    harrison_copy(root / "hdup", ["a.jpg", "b.jpg", "a.jpg", "c.jpg"], ["love", "sea", "sky", "love"])
    harrison_copy(root / "hesc", ["a.jpg", "../b.jpg", "c.jpg"], ["love", "sea", "sky"])
    harrison_copy(root / "hbad", ["a.jpg", "b.jpg", "c.jpg"], ["love", "foo", "sky"])
    write_sheet(Figure(figsize=(1, 1)), root / "sheet.png")
    (root / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n a user's own picture")
    torch.save({"w": torch.zeros(2)}, root / "plain.pth")
    (root / "model.caffemodel").write_bytes(b"\x00\x01 not a caffe model")
    (root / "folder").mkdir()
    (root / "folder" / "keep.txt").write_text("a user's file")
    (root / "notes.txt").write_text("a user's notes")
    return root


def case(args: str, message: str = "", marks=()):
    return pytest.param(args, message, marks=marks, id=args[:90])


# {x} is the fixture folder
CASES = [
    # prepare harrison
    case("prepare harrison {x}/nothing -o {x}/new.zarr", "is not a directory"),
    case("prepare harrison {x}/posts.jsonl -o {x}/new.zarr", "is not a directory"),
    case("prepare harrison {x}/folder -o {x}/new.zarr", "not found"),
    case("prepare harrison {x}/h -o {x}/h --overwrite", "is the input"),
    case("prepare harrison {x}/h -o {x} --overwrite", "contains the input"),
    case("prepare harrison {x}/h -o {x}/s.zarr", "already exists"),
    case("prepare harrison {x}/h -o {x}/posts.jsonl --overwrite", "not a hashtagkit store"),
    case("prepare harrison {x}/h -o {x}/folder --overwrite", "not a hashtagkit store"),
    case("prepare harrison {x}/h -o {x}/run --overwrite", "it is a hashtagkit run directory"),
    case("prepare harrison {x}/h -o {x}/new.zarr --test-size nan", "--test-size"),
    case("prepare harrison {x}/h -o {x}/new.zarr --test-size inf", "--test-size"),
    case("prepare harrison {x}/h -o {x}/new.zarr --test-size -1", "--test-size"),
    case("prepare harrison {x}/h -o {x}/new.zarr --test-size 10.5", "whole row count"),
    case("prepare harrison {x}/h -o {x}/new.zarr --test-size 3", "leaves no training rows"),
    case("prepare harrison {x}/h -o {x}/new.zarr --val-size abc", "--val-size"),
    case("prepare harrison {x}/h -o {x}/new.zarr --seed -1", "--seed"),
    case("prepare harrison {x}/h -o {x}/new.zarr --seed " + BIG_SEED, "--seed"),
    case("prepare harrison {x}/h -o {x}/new.zarr --seed 1.5", "--seed"),
    case("prepare harrison {x}/hbad -o {x}/new.zarr", "hashtag 'foo' is not in"),
    case("prepare harrison {x}/hdup -o {x}/new.zarr", "1 duplicate image path"),
    case("prepare harrison {x}/hesc -o {x}/new.zarr", "leaves the image folder"),
    # prepare posts
    case("prepare posts {x}/nothing.jsonl --images {x}/imgs -o {x}/new.zarr --no-lemmatize", "does not exist"),
    case("prepare posts {x}/latin1.jsonl --images {x}/imgs -o {x}/new.zarr --no-lemmatize", "not UTF-8"),
    case("prepare posts {x}/notjson.jsonl --images {x}/imgs -o {x}/new.zarr --no-lemmatize", "line 7: not valid JSON"),
    case("prepare posts {x}/deep.jsonl --images {x}/imgs -o {x}/new.zarr --no-lemmatize", "line 7"),
    case("prepare posts {x}/list.jsonl --images {x}/imgs -o {x}/new.zarr --no-lemmatize", "expected an object"),
    case("prepare posts {x}/noimage.jsonl --images {x}/imgs -o {x}/new.zarr --no-lemmatize", "'image' must be"),
    case("prepare posts {x}/tagstr.jsonl --images {x}/imgs -o {x}/new.zarr --no-lemmatize", "'hashtags' must be"),
    case("prepare posts {x}/escape.jsonl --images {x}/imgs -o {x}/new.zarr --no-lemmatize", "leaves the image folder"),
    case("prepare posts {x}/absolute.jsonl --images {x}/imgs -o {x}/new.zarr --no-lemmatize", "is absolute"),
    case("prepare posts {x}/dup.jsonl --images {x}/imgs -o {x}/new.zarr --no-lemmatize", "1 duplicate image path"),
    case("prepare posts {x}/empty.jsonl --images {x}/imgs -o {x}/new.zarr --no-lemmatize", "has no posts"),
    case("prepare posts {x}/badgzip.jsonl.gz --images {x}/imgs -o {x}/new.zarr --no-lemmatize", "damaged gzip"),
    case("prepare posts {x}/posts.jsonl --images {x}/imgs -o {x}/posts.jsonl --overwrite", "is the input"),
    case("prepare posts {x}/posts.jsonl --images {x}/imgs -o {x}/imgs --overwrite", "is the input"),
    case("prepare posts {x}/posts.jsonl --images {x}/imgs -o {x}/folder --overwrite", "not a hashtagkit store"),
    case("prepare posts {x}/posts.jsonl --images {x}/imgs -o {x}/run --overwrite", "not a hashtagkit store"),
    case("prepare posts {x}/posts.jsonl --images {x}/imgs -o {x}/new.zarr --vocab-size 0", "--vocab-size"),
    case("prepare posts {x}/posts.jsonl --images {x}/imgs -o {x}/new.zarr --min-tags -1", "--min-tags"),
    case("prepare posts {x}/posts.jsonl --images {x}/imgs -o {x}/new.zarr --min-tags 5 --max-tags 2 --no-lemmatize",
         "--min-tags"),
    case("prepare posts {x}/posts.jsonl --images {x}/imgs -o {x}/new.zarr --test-size nan", "--test-size"),
    case("prepare posts {x}/posts.jsonl --images {x}/imgs -o {x}/new.zarr --seed -5", "--seed"),
    case("prepare posts {x}/posts.jsonl --images {x}/posts.jsonl -o {x}/new.zarr", "--images"),
    # prepare demo
    case("prepare demo -o {x}/new.zarr --n 5", "--n"),
    case("prepare demo -o {x}/new.zarr --n 10 --images {x}/folder --overwrite", "not a hashtagkit demo image folder"),
    case("prepare demo -o {x}/new.zarr --n 10 --images {x}/imgs --overwrite", "not a hashtagkit demo image folder"),
    case("prepare demo -o {x}/s.zarr --n 10", "already exists"),
    case("prepare demo -o {x}/folder --n 10 --overwrite", "not a hashtagkit store"),
    case("prepare demo -o {x}/new.zarr --n 10 --seed " + BIG_SEED, "--seed"),
    case("prepare demo -o {x}/new.zarr --n 10 --test-size inf", "--test-size"),
    # prepare planted
    case("prepare planted -o {x}/new.zarr --n 20 --dim 8 --strength nan", "not a finite number"),
    case("prepare planted -o {x}/new.zarr --n 20 --dim 8 --strength inf", "not a finite number"),
    case("prepare planted -o {x}/new.zarr --n 20 --dim 8 --strength -1", "--strength"),
    case("prepare planted -o {x}/new.zarr --n 20 --dim 0", "--dim"),
    case("prepare planted -o {x}/new.zarr --n 20 --classes 2", "--classes"),
    case("prepare planted -o {x}/new.zarr --n 5", "--n"),
    case("prepare planted -o {x}/new.zarr --n 999999999", "--n"),
    case("prepare planted -o {x}/notes.txt/new.zarr --n 20 --dim 8", "is not a folder"),
    case("bench {x}/s.zarr --heads popularity -o {x}/notes.txt/b", "is not a folder"),
    case("fit {x}/s.zarr --head popularity -o {x}/notes.txt/run", "is not a folder"),
    case("prepare planted -o {x}/new.zarr --n 20 --dim 1000000000", "--dim"),
    case("prepare planted -o {x}/new.zarr --n 20 --classes 1000000000", "--classes"),
    case("prepare demo -o {x}/new.zarr --n 100000000000", "--n"),
    case("prepare planted -o {x}/new.zarr --n 20 --dim 8 --labels {x}/nothing", "is not a directory"),
    case("prepare planted -o {x}/run --n 20 --dim 8 --overwrite", "not a hashtagkit store"),
    case("prepare planted -o {x}/new.zarr --n 20 --dim 8 --seed -1", "--seed"),
    case("prepare planted -o {x}/new.zarr --n 20 --dim 8 --test-size 1e999", "--test-size"),
    case("prepare planted -o {x}/h --labels {x}/h --n 20 --dim 8 --overwrite", "is the input"),
    # fit
    case("fit {x}/nothing.zarr --head popularity -o {x}/new", "does not exist"),
    case("fit {x}/posts.jsonl --head popularity -o {x}/new", "not a Zarr v3 store"),
    case("fit {x}/folder --head popularity -o {x}/new", "not a"),
    case("fit {x}/s.zarr --head popularity -o {x}/s.zarr --overwrite", "is the input"),
    case("fit {x}/s.zarr --head popularity -o {x} --overwrite", "contains the input"),
    case("fit {x}/s.zarr --head popularity -o {x}/posts.jsonl --overwrite", "not a hashtagkit run directory"),
    case("fit {x}/s.zarr --head popularity -o {x}/folder --overwrite", "not a hashtagkit run directory"),
    case("fit {x}/s.zarr --head popularity -o {x}/s2.zarr --overwrite", "it is a hashtagkit store"),
    case("fit {x}/s.zarr --head popularity -o {x}/run", "already exists"),
    case("fit {x}/s.zarr --head popularity -o {x}/new --seed -1", "--seed"),
    case("fit {x}/s.zarr --head popularity -o {x}/new --seed " + BIG_SEED, "--seed"),
    case("fit {x}/s.zarr --head nope -o {x}/new", "--head"),
    case("fit {x}/s.zarr --head popularity --features people -o {x}/new", "--features"),
    case("fit {x}/s.zarr --head popularity --set alpha -o {x}/new", "--set takes key=value"),
    case("fit {x}/s.zarr --head popularity --set alpha=1 -o {x}/new", "alpha"),
    case("fit {x}/s.zarr --head knn --set k=NaN -o {x}/new", "not a finite number"),
    case("fit {x}/s.zarr --head knn --set temperature=1e999 -o {x}/new", "not a finite number"),
    case("fit {x}/s.zarr --head popularity -o {x}/..", "'-o' / '--out'"),  # names no folder to create
    case("fit {x}/s.zarr --head popularity -o {x}/s.zarr/sub", "lies inside the input"),
    case("prepare posts {x}/posts.jsonl --images {x}/nothing -o {x}/new.zarr --no-lemmatize", "does not exist"),
    case("show {x}/run --best --worst -o {x}/new.png", "--worst and --best cannot be used together"),
    case("bench {x}/s.zarr --heads popularity,knn --set knn.k=0 -o {x}/newbench", "k must be"),  # and no empty folder
    case("prepare demo -o {x}/. --n 10", "names no file or folder"),
    # a value whose cost is known before the work: refused with the size and the limit (issue #23)
    case("fit {x}/s.zarr --head mlp --set hidden=1000000000 -o {x}/new", "hidden=1000000000 needs"),
    case("fit {x}/s.zarr --head fusion --set grid_step=1e-9 -o {x}/new", "1,000,000,001 weight vectors"),
    case("fit {x}/s.zarr --head fusion --set grid_step=5e-324 --set components=knn,ovr,mlp -o {x}/new",
         "about 10^615 weight vectors"),
    case("bench {x}/s.zarr --heads knn --set knn.k=-Infinity -o {x}/new", "not a finite number"),
    # evaluate
    case("evaluate {x}/nothing", "not a run directory"),
    case("evaluate {x}/s.zarr", "not a run directory"),
    case("evaluate {x}/run --k 0", "--k takes"),
    case("evaluate {x}/run --k a,b", "--k takes"),
    case("evaluate {x}/run --split nope", "--split"),
    case("evaluate {x}/run --store {x}/s2.zarr", "split differs"),
    case("evaluate {x}/run --store {x}/posts.jsonl", "posts.jsonl"),
    case("evaluate {x}/run --store {x}/s.zarr --split val", "val"),
    # show
    case("show {x}/run -o {x}/sheet.gif", ".png, .pdf, .svg or .jpg"),
    case("show {x}/run -o {x}/notes.txt --overwrite", ".png, .pdf, .svg or .jpg"),
    case("show {x}/run -o {x}/sheet.png", "already exists"),
    case("show {x}/run -o {x}/photo.png --overwrite", "not a hashtagkit contact sheet"),
    case("show {x}/run -o {x}/new.png --n 0", "--n"),
    case("show {x}/run -o {x}/new.png --seed -1", "--seed"),
    case("show {x}/nothing -o {x}/new.png", "not a run directory"),
    case("show {x}/run -o {x}/new.png --images {x}/nothing", "does not exist"),
    # bench
    case("bench {x}/s.zarr --heads popularity -o {x}/s2.zarr", "not a hashtagkit bench folder"),
    case("bench {x}/s.zarr --heads popularity -o {x}/s.zarr", "is the input"),
    case("bench {x}/s.zarr --heads popularity -o {x}/folder", "not a hashtagkit bench folder"),
    case("bench {x}/s.zarr --heads popularity -o {x}/run", "not a hashtagkit bench folder"),
    case("bench {x}/s.zarr --heads popularity -o {x}/notes.txt", "notes.txt"),
    case("bench {x}/s.zarr --heads popularity --seeds -1 -o {x}/new", "--seeds"),
    case("bench {x}/s.zarr --heads popularity --seeds a -o {x}/new", "--seeds"),
    case("bench {x}/s.zarr --heads popularity --set popularity -o {x}/new", "--set takes"),
    case("bench {x}/nothing.zarr --heads popularity -o {x}/new", "does not exist"),
    # info
    case("info {x}/nothing", "does not exist"),
    case("info {x}/posts.jsonl", "not a Zarr v3 store"),
    case("info {x}/folder", "not a"),
    # convert-caffe (the overwrite rule is outputs.refuse_existing's)
    case("convert-caffe {x}/model.caffemodel -o {x}/plain.pth --overwrite", "not a weights file"),
    case("convert-caffe {x}/model.caffemodel -o {x}/model.caffemodel --overwrite", "is the input"),
    case("convert-caffe {x}/nothing.caffemodel -o {x}/new.pth", "nothing.caffemodel"),
    # extract / recommend: validation that needs no weights
    case("extract {x}/nothing.zarr --backbone vgg16-object=random", "does not exist"),
    case("extract {x}/s.zarr --batch-size 0", "--batch-size"),
    case("recommend {x}/nothing {x}/imgs/a.jpg", "not a run directory"),
    case("recommend {x}/run {x}/imgs/a.jpg --top 0", "--top"),
    case("recommend {x}/run {x}/imgs/a.jpg --weights nonsense", "--weights takes"),
    case("recommend {x}/run {x}/imgs/a.jpg --weights vgg16-object={x}/notes.txt", "ignores the image"),
    # the command line itself
    case("nope", "No such command"),
    case("prepare", ""),
    case("fit {x}/s.zarr -o {x}/new", "--head"),
]

# Cases in other helpers' areas: kept in the table, expected to pass once their branches merge.
OTHERS_PENDING = [
    case("extract {x}/s.zarr --backbone vgg16-object=random --seed -1", "--seed"),
    case("fit {x}/s.zarr --head knn --set k=nan -o {x}/new", "k"),
    case("fit {x}/s.zarr --head knn --set k=1" + "0" * 400 + " -o {x}/new", "k"),  # no float holds it
    case("fit {x}/s.zarr --head knn --set temperature=-1 -o {x}/new", "temperature"),
    case("fit {x}/s.zarr --head ovr --set C=inf -o {x}/new", "C"),
    case("fit {x}/s.zarr --head mlp --set preset=nope -o {x}/new", "preset"),
    case("fit {x}/nan.zarr --head knn --set k=5 --set pca=null -o {x}/new", "NaN"),
    case("recommend {x}/run {x}/imgs/a.jpg", "a.jpg"),
]


def check_user_error(res, message: str, progress_allowed: bool = False) -> None:
    """Exit 2, no traceback, one `Error: ` line on stderr (after the progress lines of
    `prepare posts`' cleaning steps, when they are allowed), holding `message`."""
    err = res.stderr
    assert res.exit_code == 2, (res.exit_code, res.output[-800:])
    assert "Traceback" not in res.output
    lines = [line for line in err.splitlines() if line.strip()]
    if progress_allowed:
        lines = lines[-1:] if lines and all(not line.startswith("Error") for line in lines[:-1]) else lines
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    assert message in lines[0], lines[0]


@pytest.mark.parametrize("args, message", CASES + OTHERS_PENDING)
def test_bad_input_is_one_line_exit_2_and_touches_nothing(fx, args, message):
    before = tree_digest(fx)
    res = CliRunner().invoke(cli, args.format(x=fx).split())
    after = tree_digest(fx)
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    check_user_error(res, message)
    assert after == before, sorted(set(after.items()) ^ set(before.items()))[:6]


def test_the_table_is_large_enough():
    assert len(CASES) >= 60
    commands = {c.values[0].split()[0] for c in CASES}
    assert {"prepare", "fit", "evaluate", "show", "bench", "info", "convert-caffe", "extract", "recommend"} <= commands


def console(*args: str | bytes, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hashtagkit.cli.main", *args], capture_output=True,
                          env={**os.environ, **(env or {})})


def test_console_script_cases(fx):
    """Through a real process: a path that is not UTF-8, nan, an input as -o."""
    before = tree_digest(fx)
    cases = [
        ([os.fsencode(fx) + b"/posts\xff.jsonl", "--images", str(fx / "imgs"), "-o", str(fx / "new.zarr")],
         b"does not exist"),
        (["--strength", "nan", "-o", str(fx / "new.zarr")], b"not a finite number"),
    ]
    for args, message in cases:
        proc = console("prepare", "posts" if isinstance(args[0], bytes) else "planted", *args)
        assert proc.returncode == 2 and b"Traceback" not in proc.stderr, proc.stderr[-500:]
        assert proc.stderr.strip().count(b"\n") == 0 and message in proc.stderr
    proc = console("fit", str(fx / "s.zarr"), "--head", "popularity", "-o", str(fx / "s.zarr"), "--overwrite")
    assert proc.returncode == 2 and b"is the input" in proc.stderr and proc.stderr.strip().count(b"\n") == 0
    assert tree_digest(fx) == before


def test_debug_shows_the_traceback_of_a_user_error(fx):
    proc = console("info", str(fx / "nothing"), env={"HASHTAGKIT_DEBUG": "1"})
    assert proc.returncode == 1 and b"Traceback" in proc.stderr and b"InputError" in proc.stderr


def test_a_non_utf8_path_works(tmp_path):
    """A path that is not valid UTF-8 is a path like any other, not a crash."""
    posts = os.fsencode(tmp_path) + b"/p\xff.jsonl"
    with open(posts, "wb") as f:
        f.write(b"".join(json.dumps({"image": f"{c}.jpg", "hashtags": ["sea"]}).encode() + b"\n" for c in "abcd"))
    out = os.fsencode(tmp_path) + b"/s\xff.zarr"
    proc = console("prepare", "posts", posts, "--images", str(tmp_path), "-o", out, "--no-lemmatize",
                   "--test-size", "1")
    assert proc.returncode == 0, proc.stderr[-500:]
    proc = console("info", out, "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["rows"] == 4


# --- property: whatever a posts file holds, `prepare posts` makes a store or says one line ---------
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
POST = st.fixed_dictionaries(
    {"image": st.one_of(st.text(max_size=12), st.sampled_from(["a.jpg", "../x.jpg", "/abs.jpg", "./a.jpg", "b/c.jpg"]),
                        JSON),
     "hashtags": st.one_of(st.lists(st.one_of(st.text(max_size=10), st.sampled_from(["#sea", "sky", "#Love"])),
                                    max_size=5), JSON)})
LINE = st.one_of(POST.map(json.dumps), JSON.map(json.dumps), st.text(max_size=30))
FILE = st.one_of(st.lists(LINE, max_size=6).map(lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")),
                 st.binary(max_size=200))


@settings(max_examples=60, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=FILE)
def test_any_posts_file_makes_a_store_or_one_line(tmp_path_factory, content):
    tmp = tmp_path_factory.mktemp("prop")
    (tmp / "p.jsonl").write_bytes(content)
    res = CliRunner().invoke(cli, ["prepare", "posts", str(tmp / "p.jsonl"), "--images", str(tmp), "-o",
                                   str(tmp / "s.zarr"), "--no-lemmatize", "--test-size", "0"])
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    if res.exit_code == 0:
        from hashtagkit.stores import open_store

        assert open_store(tmp / "s.zarr").n_rows >= 1
    else:
        check_user_error(res, "", progress_allowed=True)
        assert sorted(p.name for p in tmp.iterdir()) == ["p.jsonl"]


def test_posts_whose_every_hashtag_is_cleaned_away_are_refused(fx):
    """`--min-tags 0` kept posts with no hashtag left: the store had 0 classes and evaluate later
    said only that the test split had no rows (issue #23). Now prepare refuses it, after the
    cleaning's counts."""
    before = tree_digest(fx)
    res = CliRunner().invoke(cli, ["prepare", "posts", str(fx / "digits.jsonl"), "--images", str(fx / "imgs"), "-o",
                                   str(fx / "new.zarr"), "--no-lemmatize", "--min-tags", "0"])
    check_user_error(res, "no hashtag is left after cleaning", progress_allowed=True)
    assert tree_digest(fx) == before
