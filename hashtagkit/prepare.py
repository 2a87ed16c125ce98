"""Making a store: the Python calls behind `hashtagkit prepare harrison|posts|demo|planted`.

Each reads or makes a dataset (image paths, hashtags, vocabulary), draws the seeded split and
writes the store atomically (`hashtagkit.stores.create_store`), returning it opened read-only.
Split sizes are a fraction of the rows below 1 (`0.1`) or, from 1 up, a whole row count
(`5000`), as the CLI's `--test-size` / `--val-size` take them. `log` receives the lines the CLI
prints (the cleaning counts of `posts`); `progress(k)` is told of k more images/rows.

    import hashtagkit
    store = hashtagkit.prepare.demo("demo.zarr", n=600, seed=0)
    store.n_rows, store.vocab[:3], store.split_info["counts"]
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hashtagkit.errors import InputError
from hashtagkit.stores import Store, create_store

Size = int | float
Log = Callable[[str], None] | None
Progress = Callable[[int], None] | None


def write_dataset(data, out: str | Path, *, test_size: Size, val_size: Size, seed: int, kind: str,
                  overwrite: bool = False, synthetic: bool = False) -> Store:
    """A dataset (`hashtagkit.data.vocabulary.Dataset`: paths, tags, vocab, image_root, source)
    written as a store with a seeded split."""
    from hashtagkit.data.split import sized_split
    from hashtagkit.data.vocabulary import multi_hot

    n = len(data.paths)
    split, info = sized_split(n, test_size, val_size, seed)
    return create_store(out, paths=data.paths, labels=multi_hot(data.tags, data.vocab), vocab=data.vocab, split=split,
                        split_info=info, kind=kind, image_root=data.image_root, synthetic=synthetic,
                        source=data.source, overwrite=overwrite)


def harrison(root: str | Path, out: str | Path, *, test_size: Size = 5000, val_size: Size = 0, seed: int = 0,
             overwrite: bool = False) -> Store:
    """HARRISON's `data_list.txt`, `tag_list.txt` and `vocab_index.txt` (in `root` or
    root/HARRISON) as a store; its image paths stay relative to the folder of data_list.txt."""
    from hashtagkit.data.harrison import read_harrison
    from hashtagkit.outputs import refuse_existing

    refuse_existing(out, overwrite, kind="store", inputs=[root])
    return write_dataset(read_harrison(root), out, test_size=test_size, val_size=val_size, seed=seed, kind="harrison",
                         overwrite=overwrite)


def posts(posts: str | Path, images: str | Path, out: str | Path, *, vocab_size: int = 1000, min_tags: int = 1,
          max_tags: int = 10, lemmatize: bool = True, test_size: Size = 0.1, val_size: Size = 0, seed: int = 0,
          overwrite: bool = False, log: Log = None) -> Store:
    """Raw posts (JSON Lines of {"image", "hashtags"}) cleaned as the paper's section 2.2 does,
    then written as a store; `images` is the folder their paths are relative to (it must exist).
    `lemmatize` needs WordNet (see `hashtagkit.data.wordnet`)."""
    from hashtagkit.data.posts import build_dataset, posts_source, read_posts
    from hashtagkit.data.wordnet import noun_lemmatizer
    from hashtagkit.outputs import refuse_existing

    images = Path(images)
    if not images.is_dir():
        raise InputError(f"images folder {images} does not exist")
    refuse_existing(out, overwrite, kind="store", inputs=[posts, images])
    raw = read_posts(posts)  # a bad posts file is reported before a missing WordNet
    lemma = noun_lemmatizer() if lemmatize else None
    data = build_dataset(raw, vocab_size=vocab_size, min_tags=min_tags, max_tags=max_tags, lemmatize=lemma,
                         log=log or (lambda line: None), image_root=str(images.resolve()), source=posts_source(posts))
    return write_dataset(data, out, test_size=test_size, val_size=val_size, seed=seed, kind="posts", overwrite=overwrite)


def demo(out: str | Path, *, n: int = 2000, seed: int = 0, images: str | Path | None = None,
         test_size: Size = 0.2, val_size: Size = 0, overwrite: bool = False, progress: Progress = None) -> Store:
    """The embedded synthetic photos (`hashtagkit.data.demo`), drawn into `images` (default:
    `<out>_images` beside the store), as a store labelled synthetic. Deterministic by `seed`."""
    from hashtagkit.data.demo import make_demo
    from hashtagkit.outputs import atomic_dir, refuse_existing

    out = Path(out)
    images = Path(images) if images is not None else out.with_name(out.stem + "_images")
    refuse_existing(out, overwrite, kind="store", inputs=[images])
    refuse_existing(images, overwrite, kind="images", inputs=[out])
    with atomic_dir(images, overwrite=overwrite, kind="images") as tmp:
        data = make_demo(tmp, n=n, seed=seed, progress=progress or (lambda k: None))
    data.image_root = str(images.resolve())
    return write_dataset(data, out, test_size=test_size, val_size=val_size, seed=seed, kind="demo", overwrite=overwrite,
                         synthetic=True)


def planted(out: str | Path, *, labels: str | Path | None = None, n: int | None = None, classes: int = 997,
            dim: int = 4096, strength: float = 0.7, test_size: Size | None = None, val_size: Size = 0,
            seed: int = 0, overwrite: bool = False, progress: Progress = None) -> Store:
    """A feature store with a known answer (`hashtagkit.data.planted`): HARRISON's labels (from
    `labels`) or Zipf-shaped ones, features planted per class in one block or the other.
    `test_size` None: 5,000 rows, or a fifth below 25,000 rows."""
    from hashtagkit.data.planted import PlantedConfig, PlantedPaths, fill_planted, planted_labels
    from hashtagkit.data.split import sized_split
    from hashtagkit.outputs import refuse_existing

    refuse_existing(out, overwrite, kind="store", inputs=[labels])
    label_matrix, vocab, source = planted_labels(labels, n, seed, classes)
    rows = len(label_matrix)
    if test_size is None:
        test_size = 5000 if rows > 25000 else 0.2
    split, info = sized_split(rows, test_size, val_size, seed)
    config = PlantedConfig(dim=dim, strength=strength, seed=seed)
    return create_store(out, paths=PlantedPaths(rows), labels=label_matrix, vocab=vocab, split=split, split_info=info,
                        kind="planted", image_root=None, synthetic=True,
                        source={**source, "generator": "hashtagkit.data.planted"}, overwrite=overwrite,
                        fill=fill_planted(label_matrix, config, progress or (lambda k: None)))
