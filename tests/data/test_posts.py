"""`prepare posts`: the paper's section 2.2 cleaning, checked by hand and on HARRISON itself."""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hashtagkit.cli.main import cli
from hashtagkit.data import wordnet
from hashtagkit.data.posts import build_dataset, read_posts
from hashtagkit.errors import InputError
from hashtagkit.stores import open_store

from ..conftest import need_data


def write_posts(path: Path, posts) -> Path:
    path.write_text("".join(json.dumps({"image": i, "hashtags": t}) + "\n" for i, t in posts))
    return path


def test_cleaning_steps_by_hand():
    posts = [
        ("a.jpg", ["#LOVE", "#love", "#사랑", "#like4like", "#Sea", "beach"]),
        ("b.jpg", ["#sea", "#Love", "sunset", "#"]),
        ("c.jpg", ["#sky", "#blue"]),
        ("d.jpg", ["#sea", "#love", "#beach", "#sky", "#sunset"]),
        ("e.jpg", ["#中文"]),
    ]
    log = []
    data = build_dataset(posts, vocab_size=4, min_tags=1, max_tags=4, log=log.append)
    # counts: love 3, sea 3, beach 2, sunset 2, sky 2, blue 1 -> top 4 with ties by name
    assert data.vocab == ["love", "sea", "beach", "sky"]
    # d has 5 tags -> 4 in the vocabulary -> kept (max 4); e has none left -> dropped
    assert data.paths == ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    assert data.tags == [["love", "sea", "beach"], ["sea", "love"], ["sky"], ["sea", "love", "beach", "sky"]]
    assert len(log) == 6 and "5 posts" in log[0] and "4 posts" in log[-1]
    # the count of hashtags after the non-alphabetic step drops the Korean, Chinese, digit and empty tags
    assert re.search(r"\s14 hashtags", log[1]), log[1]


def test_max_tags_counted_after_the_vocabulary():
    posts = [("a.jpg", ["x", "y", "z"]), ("b.jpg", ["x", "y"]), ("c.jpg", ["x"])]
    data = build_dataset(posts, vocab_size=10, min_tags=1, max_tags=2)
    assert data.paths == ["b.jpg", "c.jpg"]


@pytest.mark.slow
def test_harrison_tag_lists_reproduce_harrison(harrison_root, tmp_path):
    lines = (harrison_root / "data_list.txt").read_text().splitlines()
    tags = (harrison_root / "tag_list.txt").read_text().splitlines()
    posts = write_posts(tmp_path / "posts.jsonl", [(p, ["#" + t for t in tl.split()]) for p, tl in zip(lines, tags, strict=True)])
    out = tmp_path / "p.zarr"
    res = CliRunner().invoke(cli, ["prepare", "posts", str(posts), "--images", str(tmp_path), "-o", str(out),
                                   "--no-lemmatize", "--test-size", "5000"])
    assert res.exit_code == 0, res.output
    store = open_store(out)
    harrison_vocab = [line.split()[0] for line in (harrison_root / "vocab_index.txt").read_text().splitlines()]
    assert sorted(store.vocab) == sorted(harrison_vocab)
    freq = Counter(t for tl in tags for t in tl.split())
    # ids may differ only inside frequency ties: the count at every rank is the same
    assert [freq[t] for t in store.vocab] == [freq[t] for t in harrison_vocab]
    labels = store.labels()
    assert store.paths() == lines
    for i in (0, 1, 777, 57382):
        assert {store.vocab[j] for j in np.flatnonzero(labels[i])} == set(tags[i].split())
    assert labels.sum() == 260759


@pytest.fixture(scope="module")
def lemma():
    try:
        return wordnet.noun_lemmatizer()
    except InputError as e:
        need_data(False, f"no WordNet on this machine ({e}); install it: make system-deps")


@pytest.mark.slow
def test_lemmatisation_matches_harrison_vocabulary(lemma):
    assert lemma("friends") == "friend"
    assert lemma("sunglasses") == "sunglass"  # HARRISON has 'sunglass'
    assert lemma("running") == "running"  # and keeps 'running', so nouns only
    posts = [("a.jpg", ["#Friends", "#friend", "#DOGS"]), ("b.jpg", ["#dog"])]
    data = build_dataset(posts, lemmatize=lemma)
    assert data.tags == [["friend", "dog"], ["dog"]]
    assert data.vocab == ["dog", "friend"]


def test_lexnames_match_the_manual_page():
    man = Path("/usr/share/man/man5/lexnames.5WN.gz")
    need_data(man.is_file(), "the lexnames(5WN) manual page is not installed (Debian wordnet-base); install it: make system-deps")
    rows = re.findall(r"^(\d\d)\s+(\S+)\s", gzip.open(man, "rt").read(), re.M)
    assert [(int(i), name) for i, name in rows] == list(enumerate(wordnet.LEXNAMES))
    assert len(wordnet.lexnames_text().splitlines()) == 45


def test_missing_wordnet_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(wordnet, "_nltk_has_wordnet", lambda: False)
    monkeypatch.setattr(wordnet, "system_dirs", lambda: [])
    with pytest.raises(InputError, match="lemmatize=False"):
        wordnet.noun_lemmatizer()


@pytest.mark.slow
def test_corpus_built_from_system_files_is_a_copy(tmp_path, monkeypatch):
    dirs = wordnet.system_dirs()
    need_data(bool(dirs), "no system WordNet (Debian wordnet-base); install it: make system-deps")
    root = wordnet.build_nltk_corpus(dirs[0], tmp_path / "nltk_data")
    corpus = root / "corpora" / "wordnet"
    assert (corpus / "lexnames").read_text() == wordnet.lexnames_text() or (dirs[0] / "lexnames").is_file()
    assert not any(p.is_symlink() for p in corpus.iterdir())
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    monkeypatch.setattr(nltk.data, "path", [str(root), *nltk.data.path])  # NLTK reads only from its path

    with pytest.warns(UserWarning, match="multilingual"):  # no Open Multilingual Wordnet: expected
        reader = WordNetCorpusReader(str(corpus), None)
    assert reader.morphy("friends", "n") == "friend"


@pytest.mark.parametrize("content, message", [
    ('{"image": "a.jpg", "hashtags": ["x"]}\nnot json\n', "line 2: not valid JSON"),
    ('{"image": "", "hashtags": ["x"]}\n', "line 1: 'image' must be a non-empty string"),
    ('{"image": "a.jpg", "hashtags": "x"}\n', "line 1: 'hashtags' must be a list of strings"),
    ("\n\n", "has no posts"),
])
def test_bad_posts_files(tmp_path, content, message):
    posts = tmp_path / "p.jsonl"
    posts.write_text(content)
    with pytest.raises(InputError, match=re.escape(message)):
        read_posts(posts)
    res = CliRunner().invoke(cli, ["prepare", "posts", str(posts), "--images", str(tmp_path), "-o", str(tmp_path / "s.zarr"), "--no-lemmatize"])
    assert res.exit_code == 2 and message in res.output and not (tmp_path / "s.zarr").exists()


def test_bom_gzip_and_path_spellings(tmp_path):
    """A UTF-8 BOM (Windows editors) and a gzip-compressed file are read like plain JSON Lines;
    `./a.jpg` and `a.jpg` are one image."""
    lines = [json.dumps({"image": "./x/a.jpg", "hashtags": ["sea"]}), json.dumps({"image": "b.jpg", "hashtags": ["sky"]})]
    text = "\n".join(lines) + "\n"
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + text.encode())
    (tmp_path / "p.jsonl.gz").write_bytes(gzip.compress(text.encode()))
    for name in ("bom.jsonl", "p.jsonl.gz"):
        assert read_posts(tmp_path / name) == [("x/a.jpg", ["sea"]), ("b.jpg", ["sky"])]


@pytest.mark.parametrize("images, message", [
    (["a.jpg", "b.jpg", "./a.jpg", "b.jpg"], "2 duplicate image path(s), e.g. 'a.jpg' at line 3 and line 1"),
    (["a.jpg", "../b.jpg"], "line 2: image path '../b.jpg' leaves the image folder"),
    (["a.jpg", "x/../../b.jpg"], "leaves the image folder"),
    (["/etc/passwd"], "is absolute"),
    (["C:\\photos\\a.jpg"], "is absolute"),
    (["a\x00.jpg"], "control character"),
    (["\ud800.jpg"], "not valid Unicode"),
])
def test_bad_image_paths(tmp_path, images, message):
    posts = tmp_path / "p.jsonl"
    posts.write_text("".join(json.dumps({"image": i, "hashtags": ["sea"]}) + "\n" for i in images))
    with pytest.raises(InputError, match=re.escape(message)):
        read_posts(posts)


def test_not_utf8_names_the_line(tmp_path):
    posts = tmp_path / "p.jsonl"
    posts.write_bytes(b'{"image": "a.jpg", "hashtags": ["x"]}\n{"image": "caf\xe9.jpg", "hashtags": ["x"]}\n')
    with pytest.raises(InputError, match="line 2: not UTF-8 text"):
        read_posts(posts)
