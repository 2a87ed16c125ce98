"""Recommend hashtags for new photos with a fitted run: the library's one way from a run to hashtags.

`Recommender.from_run` loads everything once (the head, and the store's backbones rebuilt from
the run's provenance, weights checked against the recorded sha256); then photos become hashtags
in two steps that a server can put on different threads:

- `prepare`: decode (the store's own checks: empty, not an image, truncated, decompression bomb)
  and every backbone's preprocessing; CPU only, no model, thread-safe;
- `predict`: one forward pass for a batch of prepared photos, features cast to the store's dtype
  and masked to the run's view as in training, then the head ranks the vocabulary; not
  thread-safe (the caller serialises it, e.g. a micro-batcher's single model thread).

`recommend` does both, in batches; `hashtagkit recommend` and `hashtagkit serve` are thin shells.

A run fitted with `--rerank cooc` answers with re-ranked scores, and one fitted with
`--threshold` can return a variable number of hashtags (`threshold=True`: those whose score
reaches their class's threshold, best first, at most `top` if given); see hashtagkit/postprocess.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np

from hashtagkit import metrics
from hashtagkit.errors import InputError
from hashtagkit.heads import Head
from hashtagkit.images import DecodeError, decode_image, draft_side_of
from hashtagkit.postprocess import Postprocess
from hashtagkit.runs import MODEL_DIR, RunRecord, load_postprocess, read_run
from hashtagkit.views import mask_view

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from hashtagkit.extraction.engine import Extractor

ImageInput = Union["Image.Image", str, os.PathLike, bytes]
METRICS_FILE = "metrics.json"  # `hashtagkit evaluate RUN --json > RUN/metrics.json`: shown by info()


@dataclass
class Recommendation:
    """One photo's answer: its hashtags best first, or why it has none."""

    image: str
    hashtags: list[tuple[str, float]]
    error: str | None = None

    def as_json(self) -> dict:
        """Always the same three keys, so a client never branches on their presence."""
        return {"image": self.image,
                "hashtags": [] if self.error else [{"tag": t, "score": round(s, 6)} for t, s in self.hashtags],
                "error": self.error}


@dataclass(frozen=True, eq=False)
class Prepared:
    """A decoded photo as the model takes it: one (3, crop, crop) float32 tensor per distinct
    preprocessing of the run's backbones (none for a head that ignores the image). Compared by
    identity: tensors have no single truth value to compare fields with."""

    name: str
    inputs: tuple[torch.Tensor, ...] = field(repr=False)


def check_moved_weights(weights: dict[str, str], record: RunRecord, head) -> None:
    """Every moved weights file must be for a backbone this run loads from a file: a name the run
    does not have, or one with random weights, is an error, not silently ignored."""
    blocks = record.store.get("blocks") or []
    from_files = [b["backbone"] for b in blocks if (b.get("weights") or {}).get("source") != "random"]
    for name in weights:
        if not head.needs_features:
            raise InputError(f"weights {name}=...: this run's {head.name} head ignores the image and loads no backbone")
        if name not in from_files:
            known = ", ".join(from_files) or "none"
            raise InputError(f"weights {name}=...: this run loads no backbone {name!r} from a file "
                             f"(backbones with weights files: {known})")


class Recommender:
    """A fitted run loaded once; see the module docstring for the prepare / predict split."""

    def __init__(self, run_dir: Path, record: RunRecord, head: Head, extractor: Extractor | None, allow_truncated: bool,
                 post: Postprocess | None = None):
        self.run_dir, self.record, self.head, self.extractor = run_dir, record, head, extractor
        self.post = post
        self._threshold_of = ({t: float(v) for t, v in zip(record.store["vocab"], post.thresholds, strict=True)}
                              if post is not None and post.thresholds is not None else None)
        self.allow_truncated = allow_truncated
        self.vocab: list[str] = list(record.store["vocab"])
        self.blocks: list[dict] = record.store.get("blocks") or []
        self.view: str = record.features or "both"
        # features as the store held them (float16 by default): the head was trained on those values
        self.dtype = self.blocks[0].get("dtype", "float16") if self.blocks else "float32"
        self.draft_side = draft_side_of(self.blocks)  # decoded as the store's photos were
        self.transforms = extractor.transforms if extractor else []

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str = "auto", precision: str = "auto",
                 weights: dict[str, str] | None = None, allow_truncated: bool | None = None) -> Recommender:
        """Load RUN's head and rebuild its store's extractor (none for a head that ignores the
        image). `weights`: backbone -> path of a moved weights file (checked by sha256);
        `allow_truncated`: None follows the store's extraction."""
        run_dir = Path(run_dir)
        record = read_run(run_dir)
        if not record.store.get("vocab"):
            raise InputError(f"{run_dir}: run.json has no vocabulary (made by an older hashtagkit); fit it again")
        head = Head.load(run_dir / MODEL_DIR)
        check_moved_weights(weights or {}, record, head)
        # a head that ignores the image (the popularity floor) needs no extractor, only real photos
        from hashtagkit.extraction.engine import rebuild_extractor

        extraction = record.store.get("extraction") or {}
        extractor = (rebuild_extractor(record.store.get("blocks") or [], weights or {}, device, precision,
                                       stored_precision=extraction.get("precision"))
                     if head.needs_features else None)
        if allow_truncated is None:
            allow_truncated = bool(extraction.get("allow_truncated", False))
        return cls(run_dir, record, head, extractor, allow_truncated, load_postprocess(run_dir, record))

    def info(self) -> dict:
        """What answers come from: the run, its head and view, backbones and weights, where the
        model runs, and the run's test scores if `RUN/metrics.json` (evaluate's --json) is there."""
        backbones = [{"name": b.get("name"), "backbone": b.get("backbone"),
                      "weights_sha256": (b.get("weights") or {}).get("sha256"),
                      "source": (b.get("weights") or {}).get("source")} for b in self.blocks]
        ex = self.extractor
        return {
            "run": str(self.run_dir.resolve()),
            "head": self.record.head,
            "view": self.record.features,
            "vocabulary_size": len(self.vocab),
            "backbones": backbones if ex else [],
            "device": str(ex.device) if ex else None,
            "precision": ex.precision if ex else None,
            "allow_truncated": self.allow_truncated,
            "jpeg_draft_min_side": self.draft_side if ex else None,
            "test_scores": self._scores(),
            "postprocess": self.postprocess_info(),
        }

    @property
    def has_thresholds(self) -> bool:
        return self._threshold_of is not None

    def postprocess_info(self) -> dict | None:
        """The run's re-ranking strength and threshold kind (None: the head's scores, top-K only)."""
        return None if self.post is None else self.post.describe()

    def _scores(self) -> dict | None:
        path = self.run_dir / METRICS_FILE
        try:
            m = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(m, dict):
            return None
        return {k: v for k, v in m.items() if isinstance(v, int | float | str) and not isinstance(v, bool)}

    def decode(self, image: ImageInput) -> Image.Image:
        """One photo (path, file bytes or PIL image) as RGB, decoded as the store's photos were;
        raises DecodeError. Each of `transforms` then makes one of its inputs (thread-safe)."""
        return decode_image(image, self.allow_truncated, draft_side=self.draft_side)

    def prepare(self, image: ImageInput, name: str | None = None) -> Prepared:
        """Decode and preprocess one photo (path, file bytes or PIL image); raises DecodeError."""
        if name is None:
            name = default_name(image, 0)
        rgb = self.decode(image)
        return Prepared(name, tuple(t(rgb) for t in self.transforms))

    def features(self, prepared: Sequence[Prepared]) -> np.ndarray:
        """The (n, D) float32 features of prepared photos: one forward pass of the extractor
        ((n, 0) for a head that ignores the image). Not thread-safe."""
        if self.extractor is None:
            return np.zeros((len(prepared), 0), dtype=np.float32)
        import torch

        return self.extractor([torch.stack([p.inputs[i] for p in prepared]) for i in range(len(self.transforms))])

    def score_features(self, features: np.ndarray) -> np.ndarray:
        """The (n, C) scores of `features`: cast to the store's dtype and masked to the run's view
        as in training, the head, the run's re-ranking."""
        if self.extractor is not None:
            features = mask_view(features.astype(self.dtype), self.blocks, self.view)
        scores = self.head.predict_proba(features)
        return self.post.apply(scores) if self.post is not None else scores

    def score_prepared(self, prepared: Sequence[Prepared]) -> np.ndarray:
        """The (n, C) scores of prepared photos (features, the head, the run's re-ranking), in one
        forward pass; `predict` ranks them. Not thread-safe."""
        return self.score_features(self.features(prepared))

    def predict(self, prepared: Sequence[Prepared], top: int = 5) -> list[list[tuple[str, float]]]:
        """Ranked (hashtag, score) lists for prepared photos, in one forward pass. Not thread-safe."""
        if top < 1:
            raise InputError(f"top must be at least 1, got {top}")
        if not prepared:
            return []
        scores = self.score_prepared(prepared)
        ranked = metrics.top_k(scores, min(top, len(self.vocab)))
        return [[(self.vocab[c], float(scores[j, c])) for c in ranked[j]] for j in range(len(prepared))]

    def check_scores(self) -> None:
        """Score one plain grey photo and refuse a model that cannot (NaN or infinite scores, or an
        error): what `serve` runs before it opens its port, so a broken run is one line at start,
        not a 500 for every photo while /healthz says ok."""
        from PIL import Image

        probe = self.prepare(Image.new("RGB", (256, 256), (128, 128, 128)), "probe")
        try:
            scores = self.score_prepared([probe])
        except (ValueError, RuntimeError) as e:
            raise InputError(f"{self.run_dir}: the run cannot score a photo ({str(e).splitlines()[0]}); fit it again") \
                from None
        if not np.isfinite(scores).all():
            raise InputError(f"{self.run_dir}: the run scores NaN or infinity on a plain photo; fit it again")

    def above_threshold(self, ranked: list[tuple[str, float]], top: int | None = None) -> list[tuple[str, float]]:
        """The hashtags of a full ranking whose score reaches their threshold, best first, at most
        `top` (None: all of them; possibly none)."""
        if self._threshold_of is None:
            raise InputError(f"{self.run_dir} has no thresholds: fit it with {{opt:threshold}} global|per-tag")
        kept = [(t, s) for t, s in ranked if s >= self._threshold_of[t]]
        return kept if top is None else kept[:top]

    def recommend(self, images: Sequence[ImageInput], top: int | None = 5, names: Sequence[str] | None = None,
                  batch_size: int = 16, threshold: bool = False) -> list[Recommendation]:
        """Hashtags for each image, in order; a bad image gets its error, the others their hashtags.
        `threshold`: the hashtags above the run's thresholds (at most `top`, None for no cap)
        instead of the top `top`."""
        if threshold and not self.has_thresholds:
            self.above_threshold([])  # the one error message
        if top is None and not threshold:
            raise InputError("top is needed unless threshold is set")
        if top is not None and top < 1:
            raise InputError(f"top must be at least 1, got {top}")
        if names is not None and len(names) != len(images):
            raise InputError(f"{len(names)} names for {len(images)} images")
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        out: list[Recommendation] = []
        good: list[tuple[int, Prepared]] = []
        for i, image in enumerate(images):
            name = names[i] if names is not None else default_name(image, i)
            try:
                good.append((len(out), self.prepare(image, name)))
                out.append(Recommendation(name, []))
            except DecodeError as e:
                out.append(Recommendation(name, [], error=str(e)))
        for start in range(0, len(good), batch_size):
            chunk = good[start : start + batch_size]
            ranked = self.predict([p for _, p in chunk], len(self.vocab) if threshold else top)
            for (row, _), tags in zip(chunk, ranked, strict=True):
                out[row].hashtags = self.above_threshold(tags, top) if threshold else tags
        return out


def default_name(image: ImageInput, index: int) -> str:
    """A path's own text, a PIL image's file name, else `image-<index>`."""
    if isinstance(image, str | os.PathLike):
        return str(image)
    filename = getattr(image, "filename", None)
    return str(filename) if isinstance(filename, str) and filename else f"image-{index}"


def recommend(run_dir: str | Path, images: list[str | Path], top: int | None = 5, device: str = "auto",
              precision: str = "auto", weights: dict[str, str] | None = None,
              allow_truncated: bool | None = None, threshold: bool = False) -> list[Recommendation]:
    """One-shot convenience: load RUN, answer for these images (see `Recommender`)."""
    rec = Recommender.from_run(run_dir, device=device, precision=precision, weights=weights,
                               allow_truncated=allow_truncated)
    return rec.recommend(images, top=top, threshold=threshold)
