"""Raw posts -> a HARRISON-style dataset, the paper's section 2.2 pipeline.

Input: JSON Lines, one post a line: `{"image": "rel/path.jpg", "hashtags": ["#LOVE", "walks"]}`.
Steps, each reported with the counts it leaves: reject non-alphabetic hashtags, lower-case,
lemmatise (WordNet nouns), drop repeats within a post, keep the `vocab_size` most frequent
hashtags as classes (id = frequency rank, ties by name), drop the rest, then drop posts left
with fewer than `min_tags` or more than `max_tags`.
"""

from __future__ import annotations

import functools
import gzip
import json
from collections.abc import Callable
from pathlib import Path

from hashtagkit import provenance
from hashtagkit.data.dataset import LabelledImages, check_image_path, refuse_duplicates
from hashtagkit.data.hashtags import is_alphabetic, strip_hash
from hashtagkit.data.vocabulary import count_tags, rank_vocabulary
from hashtagkit.errors import InputError


def _text_lines(path: Path) -> list[str]:
    """The file's lines: UTF-8 (a leading BOM is accepted), gzip-compressed or not."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read it ({e.strerror})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise InputError(f"{path}: a damaged gzip file ({e})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        lineno = raw[: e.start].count(b"\n") + 1
        raise InputError(f"{path} line {lineno}: not UTF-8 text (byte {raw[e.start]:#04x}); save the file as UTF-8") from None
    return text.split("\n")


def read_posts(path: str | Path) -> list[tuple[str, list[str]]]:
    """(image, raw hashtags) per post, with the file and line named on any malformed line.
    Image paths must stay inside the image folder and appear once."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist")
    posts, linenos = [], []
    for lineno, line in enumerate(_text_lines(path), 1):
        if not line.strip():
            continue
        try:
            post = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            msg = e.msg if isinstance(e, json.JSONDecodeError) else "nested too deeply"
            raise InputError(f"{path} line {lineno}: not valid JSON ({msg})") from None
        if not isinstance(post, dict):
            raise InputError(f"{path} line {lineno}: expected an object with 'image' and 'hashtags'")
        image, tags = post.get("image"), post.get("hashtags")
        if not isinstance(image, str) or not image.strip():
            raise InputError(f"{path} line {lineno}: 'image' must be a non-empty string")
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise InputError(f"{path} line {lineno}: 'hashtags' must be a list of strings")
        posts.append((check_image_path(image.strip(), f"{path} line {lineno}"), tags))
        linenos.append(lineno)
    if not posts:
        raise InputError(f"{path} has no posts")
    refuse_duplicates([image for image, _ in posts], lambda i: f"line {linenos[i]}")
    return posts


def _report(log: Callable[[str], None], step: str, tag_lists: list[list[str]]) -> None:
    n_tags = sum(len(t) for t in tag_lists)
    distinct = len({t for tags in tag_lists for t in tags})
    log(f"{step:<34} {len(tag_lists):>9,} posts {n_tags:>11,} hashtags {distinct:>9,} distinct")


def build_dataset(
    posts: list[tuple[str, list[str]]],
    *,
    vocab_size: int = 1000,
    min_tags: int = 1,
    max_tags: int = 10,
    lemmatize: Callable[[str], str] | None = None,
    log: Callable[[str], None] = lambda s: None,
    image_root: str | None = None,
    source: dict | None = None,
) -> LabelledImages:
    if vocab_size < 1:
        raise InputError("{param} must be at least 1", param="vocab_size")
    if min_tags < 0 or max_tags < min_tags:
        raise InputError(f"need 0 <= {{opt:min_tags}} <= {{opt:max_tags}}, got {min_tags} and {max_tags}")
    images = [image for image, _ in posts]
    tag_lists = [[strip_hash(t) for t in tags] for _, tags in posts]
    _report(log, "read", tag_lists)
    tag_lists = [[t for t in tags if is_alphabetic(t)] for tags in tag_lists]
    _report(log, "non-alphabetic rejected", tag_lists)
    tag_lists = [[t.lower() for t in tags] for tags in tag_lists]
    _report(log, "lower-cased", tag_lists)
    if lemmatize is not None:
        lemma = functools.lru_cache(maxsize=None)(lemmatize)  # a few thousand distinct tags
        tag_lists = [[lemma(t) for t in tags] for tags in tag_lists]
        _report(log, "lemmatised (WordNet nouns)", tag_lists)
    tag_lists = [list(dict.fromkeys(tags)) for tags in tag_lists]
    _report(log, "repeats within a post dropped", tag_lists)
    vocab = rank_vocabulary(count_tags(tag_lists), vocab_size)
    known = set(vocab)
    tag_lists = [[t for t in tags if t in known] for tags in tag_lists]
    _report(log, f"outside the top {vocab_size:,} dropped", tag_lists)
    keep = [i for i, tags in enumerate(tag_lists) if min_tags <= len(tags) <= max_tags]
    images = [images[i] for i in keep]
    tag_lists = [tag_lists[i] for i in keep]
    _report(log, f"posts outside {min_tags}..{max_tags} tags dropped", tag_lists)
    if not tag_lists:
        raise InputError("no post is left after filtering: check {opt:min_tags}/{opt:max_tags}/{opt:vocab_size}")
    if not any(tag_lists):  # --min-tags 0 kept posts, but no hashtag survived the cleaning
        raise InputError("no hashtag is left after cleaning (every one was rejected or dropped): there is nothing "
                         "to learn; check the posts' hashtags")
    # a class whose every post was dropped by the tag-count filter stays in the vocabulary, as
    # in the paper (vocabulary first, then image filter); report it so nobody is surprised
    present = {t for tags in tag_lists for t in tags}
    empty = [t for t in vocab if t not in present]
    if empty:
        log(f"note: {len(empty)} class(es) have no post left after the tag-count filter, e.g. {empty[0]!r}")
    return LabelledImages(
        paths=images,
        tags=tag_lists,
        vocab=vocab,
        image_root=image_root,
        source={**(source or {}), "lemmatize": "wordnet-noun" if lemmatize else None,
                "vocab_size": vocab_size, "min_tags": min_tags, "max_tags": max_tags},
    )


def posts_source(path: str | Path) -> dict:
    return {"dataset": "posts", "files": {"posts": {"path": str(Path(path).resolve()), "sha256": provenance.sha256_file(path)}}}
