"""Making a store: the Python calls behind `hashtagkit prepare harrison|posts|webdataset|demo|planted`.

Each reads or makes a dataset (image paths, hashtags, vocabulary), draws the seeded split and
writes the store atomically (`hashtagkit.stores.create_store`), returning it opened read-only.
Split sizes are a fraction of the rows below 1 (`0.1`) or, from 1 up, a whole row count
(`5000`), as the CLI's `--test-size` / `--val-size` take them. `log` receives the lines the CLI
prints (the cleaning counts of `posts` and `webdataset`); `progress(k)` is told of k more images/rows.

    import hashtagkit
    store = hashtagkit.prepare.demo("demo.zarr", n=600, seed=0)
    store.n_rows, store.vocab[:3], store.split_info["counts"]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from hashtagkit.errors import InputError
from hashtagkit.stores import Store, create_store

Size = int | float
Log = Callable[[str], None] | None
Progress = Callable[[int], None] | None


def refuse_existing_store(out: str | Path, overwrite: bool, inputs=(), storage_options: dict | None = None) -> None:
    """Before any work: refuse an output store that may not be written (`outputs.refuse_existing`,
    or, at a URL, `stores.objects.refuse_existing_url`)."""
    from hashtagkit import remote

    if remote.is_remote(out):
        from hashtagkit.stores.objects import refuse_existing_url

        refuse_existing_url(str(out), overwrite, storage_options)
        return
    from hashtagkit.outputs import refuse_existing

    refuse_existing(remote.local_path(out), overwrite, kind="store",
                    inputs=[i for i in inputs if i is not None and not remote.is_remote(i)])


def write_dataset(data, out: str | Path, *, test_size: Size, val_size: Size, seed: int, kind: str,
                  overwrite: bool = False, synthetic: bool = False, storage_options: dict | None = None) -> Store:
    """A dataset (`hashtagkit.data.vocabulary.Dataset`: paths, tags, vocab, image_root, source)
    written as a store with a seeded split."""
    from hashtagkit.data.split import sized_split
    from hashtagkit.data.vocabulary import multi_hot

    n = len(data.paths)
    split, info = sized_split(n, test_size, val_size, seed)
    return create_store(out, paths=data.paths, labels=multi_hot(data.tags, data.vocab), vocab=data.vocab, split=split,
                        split_info=info, kind=kind, image_root=data.image_root, synthetic=synthetic,
                        source=data.source, overwrite=overwrite, members=data.members, storage_options=storage_options)


def harrison(root: str | Path, out: str | Path, *, test_size: Size = 5000, val_size: Size = 0, seed: int = 0,
             overwrite: bool = False, storage_options: dict | None = None) -> Store:
    """HARRISON's `data_list.txt`, `tag_list.txt` and `vocab_index.txt` (in `root` or
    root/HARRISON) as a store; its image paths stay relative to the folder of data_list.txt.
    `out` may be a URL (s3://...), written with `storage_options`."""
    from hashtagkit.data.harrison import read_harrison

    refuse_existing_store(out, overwrite, [root], storage_options)
    return write_dataset(read_harrison(root), out, test_size=test_size, val_size=val_size, seed=seed, kind="harrison",
                         overwrite=overwrite, storage_options=storage_options)


def posts(posts: str | Path, images: str | Path, out: str | Path, *, vocab_size: int = 1000, min_tags: int = 1,
          max_tags: int = 10, lemmatize: bool = True, test_size: Size = 0.1, val_size: Size = 0, seed: int = 0,
          overwrite: bool = False, log: Log = None, storage_options: dict | None = None) -> Store:
    """Raw posts (JSON Lines of {"image", "hashtags"}) cleaned as the paper's section 2.2 does,
    then written as a store; `images` is the folder (or URL prefix, s3://bucket/photos) their
    paths are relative to (it must exist). `lemmatize` needs WordNet (see
    `hashtagkit.data.wordnet`). `out` may be a URL, written with `storage_options`."""
    from hashtagkit.data.posts import build_dataset, posts_source, read_posts
    from hashtagkit.data.sources import image_root, root_problem
    from hashtagkit.data.wordnet import noun_lemmatizer

    images = image_root(images)
    problem = root_problem(images, storage_options)
    if problem:
        raise InputError(f"{{param}}: {problem}", param="images")
    refuse_existing_store(out, overwrite, [posts, images], storage_options)
    raw = read_posts(posts)  # a bad posts file is reported before a missing WordNet
    lemma = noun_lemmatizer() if lemmatize else None
    data = build_dataset(raw, vocab_size=vocab_size, min_tags=min_tags, max_tags=max_tags, lemmatize=lemma,
                         log=log or (lambda line: None), image_root=str(images), source=posts_source(posts))
    return write_dataset(data, out, test_size=test_size, val_size=val_size, seed=seed, kind="posts", overwrite=overwrite,
                         storage_options=storage_options)


def demo(out: str | Path, *, n: int = 2000, seed: int = 0, images: str | Path | None = None,
         test_size: Size = 0.2, val_size: Size = 0, overwrite: bool = False, progress: Progress = None,
         storage_options: dict | None = None) -> Store:
    """The embedded synthetic photos (`hashtagkit.data.demo`), drawn into the local folder
    `images` (default: `<out>_images` beside the store), as a store labelled synthetic.
    Deterministic by `seed`. `out` may be a URL (then `images` must be given)."""
    from hashtagkit import remote
    from hashtagkit.data.demo import make_demo
    from hashtagkit.outputs import atomic_dir, refuse_existing

    if remote.is_remote(out):
        if images is None or remote.is_remote(images):
            raise InputError("a demo store at a URL draws its photos into a local folder: pass {param}",
                             param="images")
    else:
        out = remote.local_path(out)
    images = remote.local_path(images) if images is not None else out.with_name(out.stem + "_images")
    refuse_existing_store(out, overwrite, [images], storage_options)
    refuse_existing(images, overwrite, kind="images", inputs=[] if remote.is_remote(out) else [out])
    with atomic_dir(images, overwrite=overwrite, kind="images") as tmp:
        data = make_demo(tmp, n=n, seed=seed, progress=progress or (lambda k: None))
    data.image_root = str(images.resolve())
    return write_dataset(data, out, test_size=test_size, val_size=val_size, seed=seed, kind="demo", overwrite=overwrite,
                         synthetic=True, storage_options=storage_options)


def planted(out: str | Path, *, labels: str | Path | None = None, n: int | None = None, classes: int = 997,
            dim: int = 4096, strength: float = 0.7, test_size: Size | None = None, val_size: Size = 0,
            seed: int = 0, overwrite: bool = False, progress: Progress = None,
            storage_options: dict | None = None) -> Store:
    """A feature store with a known answer (`hashtagkit.data.planted`): HARRISON's labels (from
    `labels`) or Zipf-shaped ones, features planted per class in one block or the other.
    `test_size` None: 5,000 rows, or a fifth below 25,000 rows."""
    from hashtagkit.data.planted import PlantedConfig, PlantedPaths, fill_planted, planted_labels
    from hashtagkit.data.split import sized_split

    refuse_existing_store(out, overwrite, [labels], storage_options)
    label_matrix, vocab, source = planted_labels(labels, n, seed, classes)
    rows = len(label_matrix)
    if test_size is None:
        test_size = 5000 if rows > 25000 else 0.2
    split, info = sized_split(rows, test_size, val_size, seed)
    config = PlantedConfig(dim=dim, strength=strength, seed=seed)
    return create_store(out, paths=PlantedPaths(rows), labels=label_matrix, vocab=vocab, split=split, split_info=info,
                        kind="planted", image_root=None, synthetic=True,
                        source={**source, "generator": "hashtagkit.data.planted"}, overwrite=overwrite,
                        fill=fill_planted(label_matrix, config, progress or (lambda k: None)),
                        storage_options=storage_options)


def webdataset(shards: str | Sequence[str], out: str | Path, *, tags_from: str = "auto", vocab_size: int = 1000,
               min_tags: int = 1, max_tags: int = 10, lemmatize: bool = True, test_size: Size = 0.1,
               val_size: Size = 0, seed: int = 0, overwrite: bool = False,
               storage_options: dict | None = None, log: Log = None) -> Store:
    """Photos in webdataset tar shards (local files or URLs, brace-expanded:
    `shards/{00000..00099}.tar`), their hashtags from each sample's json `hashtags` or txt
    caption (`tags_from`: auto, json, txt), cleaned as `posts` cleans them (section 2.2) and
    written as a store whose rows name `shard.tar#member` and keep each photo's byte range in
    its shard: extraction reads those bytes in place (`hashtagkit.data.webdataset`). Each shard
    is streamed once; the shards' sizes and ETags or sha256 are recorded for resumes to check.
    `out` may be a URL; `storage_options` open it and the shards."""
    from hashtagkit.data.posts import build_dataset
    from hashtagkit.data.webdataset import expand_shards, read_webdataset
    from hashtagkit.data.wordnet import noun_lemmatizer

    refuse_existing_store(out, overwrite, expand_shards(shards), storage_options)
    # what build_dataset would refuse, refused before a scan that may take hours
    if vocab_size < 1:
        raise InputError("{param} must be at least 1", param="vocab_size")
    if min_tags < 0 or max_tags < min_tags:
        raise InputError(f"need 0 <= {{opt:min_tags}} <= {{opt:max_tags}}, got {min_tags} and {max_tags}")
    lemma = noun_lemmatizer() if lemmatize else None  # a missing WordNet is said before the scan, too
    log = log or (lambda line: None)
    raw, members, root, source = read_webdataset(shards, tags_from=tags_from, storage_options=storage_options,
                                                 log=log)
    data = build_dataset(raw, vocab_size=vocab_size, min_tags=min_tags, max_tags=max_tags, lemmatize=lemma,
                         log=log, image_root=root, source=source)
    row_of = {path: i for i, (path, _) in enumerate(raw)}
    data.members = members[[row_of[path] for path in data.paths]]  # the kept posts' byte ranges
    return write_dataset(data, out, test_size=test_size, val_size=val_size, seed=seed, kind="webdataset",
                         overwrite=overwrite, storage_options=storage_options)
