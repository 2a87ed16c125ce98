"""Contact sheets in the manner of the paper's Figures 6-8: photos with their top-K predicted
hashtags and their ground truth, matches highlighted.

Numbers say how good a head is; a sheet says *why*: which hashtags it gets (colours, objects)
and which it cannot (#love, fine-grained or inferential tags). `select_rows` picks the images
(a seeded random sample, or the worst / best by Recall@K with seeded tie-breaks, so a
different seed shows different failures among the many that tie), `sheet_entries` works out
what each cell says, and `draw_sheet` lays it out with matplotlib's object API.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hashtagkit import metrics
from hashtagkit.errors import InputError
from hashtagkit.evaluation import ScoredSplit
from hashtagkit.outputs import SHEET_MARKER, atomic_file
from hashtagkit.stores import Store

MATCH_COLOR = "#d62728"  # the paper marks matched hashtags in red
OTHER_COLOR = "#333333"
MODES = ("random", "worst", "best")
THUMB = 320  # longest side of a cell's photo, in pixels


@dataclass
class Entry:
    row: int
    path: str
    predicted: list[tuple[str, float, bool]]  # (tag, score, in ground truth), best first
    truth: list[tuple[str, bool]]  # (tag, among the predicted)
    recall: float  # Recall@K of this image


def select_rows(recall: np.ndarray, n: int, mode: str = "random", seed: int = 0) -> np.ndarray:
    """Positions (into the scored rows) of the images to show, in display order.

    random: a seeded sample. worst / best: lowest / highest Recall@K first; ties, which are
    common (every image with no hit scores 0), are broken by a seeded permutation."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    rng = np.random.default_rng(seed)
    n = min(n, len(recall))
    if mode == "random":
        return np.sort(rng.choice(len(recall), size=n, replace=False))
    tiebreak = rng.permutation(len(recall))
    key = recall if mode == "worst" else -recall
    return np.lexsort((tiebreak, key))[:n]


def sheet_entries(scored: ScoredSplit, positions: np.ndarray, top: int) -> list[Entry]:
    vocab = scored.store.vocab
    ids = metrics.top_k(scored.scores[positions], top)
    recall = metrics.recall_per_image(scored.scores[positions], scored.labels[positions], top)
    paths = scored.store.paths(scored.rows[positions])
    entries = []
    for i, pos in enumerate(positions):
        truth_ids = np.flatnonzero(scored.labels[pos])
        predicted = [(vocab[c], float(scored.scores[pos, c]), bool(scored.labels[pos, c])) for c in ids[i]]
        shown = set(ids[i].tolist())
        truth = [(vocab[c], c in shown) for c in truth_ids]
        entries.append(Entry(int(scored.rows[pos]), paths[i], predicted, truth, float(recall[i])))
    return entries


def load_thumbnail(photos, row: int) -> tuple[np.ndarray | None, str]:
    """Row's photo (`hashtagkit.data.photos`: a file, an object at a URL, a shard's member) as
    an RGB array no larger than THUMB, or (None, reason) when it cannot be read."""
    from hashtagkit.images import DecodeError, decode_image

    try:
        im = decode_image(photos.get(row), allow_truncated=True)  # a truncated photo is still worth seeing
    except DecodeError as e:
        return None, str(e)
    im.thumbnail((THUMB, THUMB))
    return np.asarray(im), ""


def draw_sheet(entries: list[Entry], photos, title: str, cols: int = 4):
    """A matplotlib Figure: one cell per entry, the photo over two columns of hashtags
    (predicted with scores | ground truth), matches in red and bold."""
    from matplotlib.figure import Figure

    cols = max(1, min(cols, len(entries)))
    rows = math.ceil(len(entries) / cols)
    n_lines = max([len(e.predicted) for e in entries] + [len(e.truth) for e in entries] + [1])
    text_h = 0.16 * (n_lines + 1.5)  # inches under each photo
    cell_w, photo_h = 3.3, 2.6
    fig = Figure(figsize=(cols * cell_w, rows * (photo_h + text_h) + 0.6))
    top_margin = 0.6 / fig.get_figheight()
    cell_h = (1 - top_margin) / rows
    for i, e in enumerate(entries):
        r, c = divmod(i, cols)
        x0, y_top = c / cols, 1 - top_margin - r * cell_h
        photo_frac = photo_h / (photo_h + text_h)
        ax = fig.add_axes((x0 + 0.01, y_top - cell_h * photo_frac + 0.004, 1 / cols - 0.02, cell_h * photo_frac - 0.02))
        ax.set_axis_off()
        pixels, reason = load_thumbnail(photos, e.row) if photos is not None else (None, "no image folder")
        if pixels is None:
            ax.text(0.5, 0.5, f"image {reason}\n{e.path}", ha="center", va="center", fontsize=7, wrap=True,
                    transform=ax.transAxes)
            ax.add_patch(_frame(ax))
        else:
            ax.imshow(pixels)
        ax.set_title(f"{Path(e.path).name}  (row {e.row}, R@{len(e.predicted)} {100 * e.recall:.0f}%)",
                     fontsize=7, color="#555555", pad=2)
        text_top = y_top - cell_h * photo_frac
        line = (cell_h * (1 - photo_frac)) / (n_lines + 1.5)
        fig.text(x0 + 0.015, text_top - 0.2 * line, "predicted", fontsize=7, color="#777777", va="top")
        fig.text(x0 + 0.5 / cols + 0.005, text_top - 0.2 * line, "ground truth", fontsize=7, color="#777777", va="top")
        for j, (tag, score, hit) in enumerate(e.predicted):
            fig.text(x0 + 0.015, text_top - (j + 1.2) * line, f"#{tag}  {score:.2f}", fontsize=8, va="top",
                     color=MATCH_COLOR if hit else OTHER_COLOR, fontweight="bold" if hit else "normal")
        for j, (tag, hit) in enumerate(e.truth):
            fig.text(x0 + 0.5 / cols + 0.005, text_top - (j + 1.2) * line, f"#{tag}", fontsize=8, va="top",
                     color=MATCH_COLOR if hit else OTHER_COLOR, fontweight="bold" if hit else "normal")
    fig.suptitle(title, fontsize=10, y=1 - 0.15 * top_margin, va="top")
    return fig


def _frame(ax):
    from matplotlib.patches import Rectangle

    return Rectangle((0, 0), 1, 1, transform=ax.transAxes, facecolor="#e6e6e6", edgecolor="#aaaaaa", zorder=-1)


def image_folder(store: Store, images: str | Path | None) -> str | Path:
    """Where the photos are: --images, else the folder (or URL prefix) extraction read, else the
    store's."""
    from hashtagkit.data.sources import image_root, root_problem

    if images:
        root = image_root(images)
    else:
        extraction = store.extraction_record
        root_text = extraction.get("image_root") or store.image_root
        if not root_text:
            raise InputError(f"{store.path} has no images (a features-only store such as `prepare planted`): "
                             "a sheet needs the photos")
        root = image_root(root_text)
    problem = root_problem(root, store.storage_options)
    if problem:
        raise InputError(f"{problem}: pass {{param}} DIR", param="images")
    return root


def sheet_photos(store: Store, root: str | Path, entries: list[Entry]):
    """The drawn rows' photos, wherever they live (`hashtagkit.data.sources.photos_for`)."""
    from hashtagkit.data.sources import photos_for

    rows = [e.row for e in entries]
    ranges = store.members(rows)
    members = None if ranges is None else dict(zip(rows, map(tuple, ranges), strict=True))
    return photos_for(root, {e.row: e.path for e in entries}, members, store.storage_options)


def _marker_kwargs(suffix: str) -> dict:
    """savefig arguments that write SHEET_MARKER into the file's own metadata, so that
    `--overwrite` can recognise a sheet it made (and refuse to replace any other image)."""
    suffix = suffix.lower()
    if suffix in (".jpg", ".jpeg"):
        return {"pil_kwargs": {"comment": SHEET_MARKER.encode()}}
    return {"metadata": {"Software" if suffix == ".png" else "Creator": SHEET_MARKER}}


def write_sheet(fig, out: Path) -> Path:
    """Save atomically, so an interrupted save never leaves half an image under the real name."""
    with atomic_file(out) as tmp:
        fig.savefig(tmp, dpi=110, **_marker_kwargs(Path(out).suffix))
    return out


SHEET_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def contact_sheet(run: str | Path, out: str | Path, *, split: str = "test", n: int = 12, seed: int = 0,
                  mode: str = "random", top: int = 5, cols: int = 4, images: str | Path | None = None,
                  store: str | Path | None = None, overwrite: bool = False) -> list[Entry]:
    """Draw a contact sheet of the run's predictions on `split` into `out` (.png, .pdf, .svg,
    .jpg), like the paper's Figures 6-8: `n` photos picked at random (`seed`), or those with
    the lowest (`mode="worst"`) or highest (`"best"`) Recall@`top`, each with its top hashtags
    and its ground truth. Returns the photos drawn, in order.

    The split is streamed once for each photo's recall (no N x C matrix), then only the drawn
    photos are scored whole."""
    from hashtagkit.evaluation import open_split
    from hashtagkit.outputs import refuse_existing

    out = Path(out)
    if mode not in MODES:
        raise InputError(f"{{param}} must be one of {', '.join(MODES)}, got {mode!r}", param="mode")
    if out.suffix.lower() not in SHEET_SUFFIXES:
        raise InputError(f"{out}: write the sheet as .png, .pdf, .svg or .jpg")
    refuse_existing(out, overwrite, kind="sheet", inputs=[run, store, images])
    scorer = open_split(run, split, store)
    root = image_folder(scorer.store, images)
    recall = np.concatenate([metrics.recall_per_image(s, y, top) for s, y, _ in scorer.batches()])
    positions = select_rows(recall, n, mode, seed)
    scored = scorer.score(positions)
    entries = sheet_entries(scored, np.arange(len(positions)), top)
    view = scored.record.features or "no features"
    picked = {"random": f"random sample (seed {seed})", "worst": f"lowest Recall@{top}",
              "best": f"highest Recall@{top}"}[mode]
    title = (f"{scored.record.head} ({view}) on {split}: {len(entries)} of {len(scorer.rows):,} images, "
             f"{picked}; mean Recall@{top} of the split {100 * recall.mean():.1f}%. Matches in red.")
    write_sheet(draw_sheet(entries, sheet_photos(scorer.store, root, entries), title, cols=cols), out)
    return entries
