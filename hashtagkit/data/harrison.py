"""Reader for the HARRISON label files.

The public dataset (minstone/HARRISON-Dataset, folder `HARRISON/`) has three text files:
`data_list.txt` (an image path a line), `tag_list.txt` (that image's hashtags, space
separated, same line order) and `vocab_index.txt` (`tag  class_id`, ids by frequency).
Everything is checked while reading, so a damaged download fails here with the file and
line named, not later as a shape error.
"""

from __future__ import annotations

from pathlib import Path

from hashtagkit import provenance
from hashtagkit.data.dataset import LabelledImages, check_image_path, refuse_duplicates
from hashtagkit.errors import InputError

FILES = ("data_list.txt", "tag_list.txt", "vocab_index.txt")


def find_files(root: str | Path) -> dict[str, Path]:
    """The three files in ROOT or ROOT/HARRISON (the layout of the dataset's repository)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root} is not a directory")
    for base in (root, root / "HARRISON"):
        if all((base / name).is_file() for name in FILES):
            return {name: base / name for name in FILES}
    missing = [name for name in FILES if not (root / name).is_file() and not (root / "HARRISON" / name).is_file()]
    if missing:
        raise InputError(f"{', '.join(missing)} not found in {root} or {root / 'HARRISON'}")
    raise InputError(f"{root}: the three files {', '.join(FILES)} must be in the same folder")


def _lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read it ({e.strerror})") from None
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise InputError(f"{path} is empty")
    return lines


def read_vocab(path: Path) -> list[str]:
    """`tag  class_id` lines -> tags in class-id order; ids must be exactly 0..C-1."""
    by_id: dict[int, str] = {}
    for lineno, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise InputError(f"{path} line {lineno}: expected 'tag class_id', got {line.strip()!r}")
        tag, cid = parts[0], int(parts[1])
        if cid in by_id:
            raise InputError(f"{path} line {lineno}: class id {cid} given twice ({by_id[cid]!r} and {tag!r})")
        by_id[cid] = tag
    if sorted(by_id) != list(range(len(by_id))):
        gap = min(set(range(len(by_id))) - set(by_id))
        raise InputError(f"{path}: class ids must run 0..{len(by_id) - 1}, but {gap} is missing")
    vocab = [by_id[i] for i in range(len(by_id))]
    if len(set(vocab)) != len(vocab):
        dup = next(t for t in vocab if vocab.count(t) > 1)
        raise InputError(f"{path}: hashtag {dup!r} has two class ids")
    return vocab


def read_harrison(root: str | Path) -> LabelledImages:
    files = find_files(root)
    data_path, tag_path = files["data_list.txt"], files["tag_list.txt"]
    vocab = read_vocab(files["vocab_index.txt"])
    known = set(vocab)
    paths = _lines(data_path)
    tag_lines = _lines(tag_path)
    # a trailing blank line is a file-ending convention, not a row
    while paths and not paths[-1].strip():
        paths.pop()
    while tag_lines and not tag_lines[-1].strip() and len(tag_lines) > len(paths):
        tag_lines.pop()
    if len(paths) != len(tag_lines):
        shorter = data_path if len(paths) < len(tag_lines) else tag_path
        longer = tag_path if shorter is data_path else data_path
        raise InputError(
            f"{data_path.name} has {len(paths)} lines but {tag_path.name} has {len(tag_lines)}: "
            f"{longer.name} line {min(len(paths), len(tag_lines)) + 1} has no counterpart in {shorter.name}"
        )

    tags: list[list[str]] = []
    for lineno, (path, line) in enumerate(zip(paths, tag_lines, strict=True), 1):
        if not path.strip():
            raise InputError(f"{data_path} line {lineno}: empty image path")
        row = line.split()
        if not row:
            raise InputError(f"{tag_path} line {lineno}: image {path.strip()} has no hashtags")
        unknown = [t for t in row if t not in known]
        if unknown:
            raise InputError(f"{tag_path} line {lineno}: hashtag {unknown[0]!r} is not in {files['vocab_index.txt'].name}")
        tags.append(list(dict.fromkeys(row)))  # drop repeats, keep order
    clean = [check_image_path(p.strip(), f"{data_path} line {i}") for i, p in enumerate(paths, 1)]
    refuse_duplicates(clean, lambda i: f"{data_path.name} line {i + 1}")
    source = {
        "dataset": "HARRISON",
        "files": {name: {"path": str(p.resolve()), "sha256": provenance.sha256_file(p)} for name, p in files.items()},
    }
    return LabelledImages(
        paths=clean,
        tags=tags,
        vocab=vocab,
        image_root=str(data_path.parent.resolve()),
        source=source,
    )
