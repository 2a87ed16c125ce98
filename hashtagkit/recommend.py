"""Recommend hashtags for new photos with a fitted run.

The run remembers the store's backbones and the sha256 of their weights, so the extractor is
rebuilt exactly (a different weights file is refused), the features are cast to the store's
dtype and masked to the run's view as in training, and the head ranks the vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hashtagkit import metrics
from hashtagkit.backbones import load_backbone
from hashtagkit.devices import pick_device, pick_precision
from hashtagkit.errors import InputError
from hashtagkit.extract import Extractor
from hashtagkit.heads import Head
from hashtagkit.images import DecodeError, decode
from hashtagkit.runs import MODEL_DIR, read_run


@dataclass
class Recommendation:
    image: str
    hashtags: list[tuple[str, float]]
    error: str | None = None

    def as_json(self) -> dict:
        if self.error:
            return {"image": self.image, "error": self.error}
        return {"image": self.image, "hashtags": [{"tag": t, "score": round(s, 6)} for t, s in self.hashtags]}


def rebuild_extractor(record: dict, weights: dict[str, str], device: str, precision: str) -> Extractor:
    blocks = record["store"].get("blocks") or []
    if not blocks:
        raise InputError("this run's store has no image features: fit on a store made by `hashtagkit extract`")
    if any(b.get("backbone") == "planted" for b in blocks):
        raise InputError("this run was fitted on planted (synthetic) features: there is no image extractor to rebuild")
    loaded = []
    for b in blocks:
        w = b["weights"]
        # the pixels the store's features were computed from, whatever the weights file says now
        recorded = b.get("preprocessing")
        if w.get("source") == "random":
            loaded.append(load_backbone(b["backbone"], "random", seed=int(w.get("seed") or 0), preprocessing=recorded))
            continue
        path = weights.get(b["backbone"]) or w.get("path")
        if not path or not Path(path).is_file():
            raise InputError(f"{b['backbone']}: weights file {path} not found; pass --weights {b['backbone']}=PATH "
                             f"(sha256 {str(w.get('sha256'))[:12]}...)")
        loaded.append(load_backbone(b["backbone"], path, expect_sha256=w.get("sha256"), preprocessing=recorded))
    dev = pick_device(device)
    if precision == "auto":  # the store's own precision where this device can run it
        stored = record["store"].get("extraction", {}).get("precision")
        precision = stored if stored in ("fp32", "bf16") or (stored == "fp16" and dev.type == "cuda") else "auto"
    return Extractor(loaded, dev, pick_precision(precision, dev))


def recommend(run_dir: str | Path, images: list[str | Path], top: int = 5, device: str = "auto",
              precision: str = "auto", weights: dict[str, str] | None = None,
              allow_truncated: bool | None = None) -> list[Recommendation]:
    record = read_run(run_dir)
    head = Head.load(Path(run_dir) / MODEL_DIR)
    vocab = record["store"].get("vocab")
    if not vocab:
        raise InputError(f"{run_dir}: run.json has no vocabulary (made by an older hashtagkit); fit it again")
    # a head that ignores the image (the popularity floor) needs no extractor, only real photos
    extractor = rebuild_extractor(record, weights or {}, device, precision) if head.needs_features else None
    blocks = record["store"]["blocks"]
    dtype = blocks[0].get("dtype", "float16") if blocks else "float32"
    truncated_ok = record["store"].get("extraction", {}).get("allow_truncated", False) if allow_truncated is None else allow_truncated
    transforms = extractor.transforms if extractor else []
    out, good, inputs = [], [], [[] for _ in transforms]
    for path in images:
        try:
            image = decode(Path(path), truncated_ok)
        except DecodeError as e:
            out.append(Recommendation(str(path), [], error=str(e)))
            continue
        for i, t in enumerate(transforms):
            inputs[i].append(t(image))
        good.append(len(out))
        out.append(Recommendation(str(path), []))
    if not good:
        return out
    if extractor is None:
        feats = np.zeros((len(good), 0), dtype=np.float32)
    else:
        feats = np.concatenate([extractor([torch.stack(x[i : i + 16]) for x in inputs])
                                for i in range(0, len(good), 16)]).astype(dtype)
    view = record.get("features") or "both"
    if view != "both":
        for b in blocks:
            if b["name"] != view:
                feats[:, b["columns"][0] : b["columns"][1]] = 0
    scores = head.predict_proba(feats)
    ranked = metrics.top_k(scores, top)
    for j, row in enumerate(good):
        out[row].hashtags = [(vocab[c], float(scores[j, c])) for c in ranked[j]]
    return out
