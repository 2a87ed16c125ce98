"""The embedded demo data: synthetic, photo-like scenes whose hashtags follow what is drawn.

No photo can ship with the package, so `prepare demo` draws its own: a sky (day, sunset or
night), a ground (sea, beach, grass, snow or city), a sun or moon, clouds or stars, a few
objects in named colours, sensor noise, JPEG compression. The hashtags are what a user would
write: most visible things (a user forgets some), plus tags with no visual signal at all
(#love, #instagood, ...) drawn from a long-tailed distribution, as on Instagram. A good head
learns the first kind and can only guess the prior on the second, like on HARRISON.

Image i depends only on (seed, i), so the first 100 images of a 2,000-image demo are the
100 images of a 100-image demo. Everything written is labelled synthetic in the store.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from hashtagkit.data.dataset import LabelledImages
from hashtagkit.data.vocabulary import count_tags, rank_vocabulary
from hashtagkit.outputs import DEMO_IMAGES_MARKER

GENERATOR_VERSION = 1
SIZES = ((320, 240), (256, 256), (240, 320), (288, 216), (360, 240))
SKIES = {  # top colour, horizon colour
    "day": ((50, 110, 210), (175, 210, 245)),
    "sunset": ((70, 40, 120), (250, 150, 60)),
    "night": ((5, 5, 25), (30, 35, 80)),
}
COLOURS = {
    "red": (210, 35, 35), "blue": (40, 70, 210), "yellow": (240, 210, 30),
    "pink": (240, 120, 180), "purple": (130, 50, 170), "orange": (245, 130, 20),
}
# tags with no visual signal, most popular first; P(tag) = 0.45 / rank (a Zipf tail)
NON_VISUAL = ("love", "instagood", "happy", "photooftheday", "friend", "family", "follow",
              "weekend", "tbt", "fun", "life", "smile", "mood", "vibes", "goodtimes", "memories")
P_USER_TAGS_VISIBLE = 0.75  # a user writes down a visible thing with this probability ...
P_USER_TAGS_OBVIOUS = {"sky": 0.25}  # ... but rarely the sky that is in every picture
MAX_TAGS = 10  # as in HARRISON


@dataclass
class Scene:
    size: tuple[int, int]
    time: str
    ground: str
    horizon: float
    sun: bool = False
    moon: bool = False
    clouds: int = 0
    stars: bool = False
    rainbow: bool = False
    objects: list[tuple[str, str, float, float, float]] = field(default_factory=list)  # kind, colour, x, y, r

    def visible_tags(self) -> list[str]:
        tags = ["sky"]
        if self.time in ("sunset", "night"):
            tags.append(self.time)
        tags += {"sea": ["sea"], "beach": ["sea", "beach"], "grass": ["nature", "grass"],
                 "snow": ["snow", "winter"], "city": ["city", "building"]}[self.ground]
        tags += [t for t, on in (("sun", self.sun), ("moon", self.moon), ("cloud", self.clouds > 0),
                                 ("star", self.stars), ("rainbow", self.rainbow)) if on]
        for kind, colour, *_ in self.objects:
            tags += [kind, colour]
        return list(dict.fromkeys(tags))


def draw_scene(rng: np.random.Generator) -> Scene:
    time = rng.choice(["day", "sunset", "night"], p=[0.6, 0.25, 0.15]).item()
    ground = rng.choice(["sea", "beach", "grass", "snow", "city"], p=[0.25, 0.15, 0.3, 0.1, 0.2]).item()
    scene = Scene(size=SIZES[rng.integers(len(SIZES))], time=time, ground=ground, horizon=rng.uniform(0.45, 0.7))
    scene.sun = time != "night" and rng.random() < 0.5
    scene.moon = time == "night" and rng.random() < 0.6
    scene.stars = time == "night" and rng.random() < 0.7
    scene.clouds = int(rng.integers(1, 4)) if time == "day" and rng.random() < 0.4 else 0
    scene.rainbow = time == "day" and rng.random() < 0.04
    if ground in ("grass", "beach", "snow"):
        for _ in range(int(rng.choice([0, 1, 2], p=[0.4, 0.4, 0.2]))):
            kind = rng.choice(["ball", "tree", "flower", "house"], p=[0.3, 0.3, 0.25, 0.15]).item()
            colour = "green" if kind == "tree" else rng.choice(list(COLOURS)).item()
            scene.objects.append((kind, colour, rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.3), rng.uniform(0.06, 0.14)))
    return scene


def _gradient(h: int, w: int, top, bottom) -> np.ndarray:
    t = np.linspace(0, 1, h)[:, None, None]
    return (np.array(top) * (1 - t) + np.array(bottom) * t) * np.ones((1, w, 1))


def render(scene: Scene, rng: np.random.Generator) -> Image.Image:
    w, h = scene.size
    hz = int(h * scene.horizon)
    img = np.zeros((h, w, 3))
    img[:hz] = _gradient(hz, w, *SKIES[scene.time])
    ground = {"sea": ((30, 90, 160), (10, 40, 90)), "beach": ((30, 90, 160), (10, 40, 90)),
              "grass": ((70, 150, 60), (25, 90, 30)), "snow": ((240, 240, 250), (200, 205, 220)),
              "city": ((90, 90, 95), (50, 50, 55))}[scene.ground]
    img[hz:] = _gradient(h - hz, w, *ground)
    if scene.time == "night" and scene.ground != "snow":
        img[hz:] *= 0.45
    pic = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(pic)
    if scene.stars:
        for _ in range(int(rng.integers(20, 60))):
            x, y = rng.uniform(0, w), rng.uniform(0, hz * 0.9)
            d.point([(x, y), (x + 1, y)], fill=(255, 255, 230))
    if scene.rainbow:
        cx, cy, r = w * rng.uniform(0.3, 0.7), hz, h * 0.45
        for i, col in enumerate([(230, 40, 40), (240, 150, 30), (240, 230, 40), (40, 180, 60), (40, 80, 220), (120, 50, 170)]):
            rr = r - i * 4
            d.arc([cx - rr, cy - rr, cx + rr, cy + rr], 180, 360, fill=col, width=4)
    if scene.sun or scene.moon:
        r = h * rng.uniform(0.05, 0.09)
        x, y = w * rng.uniform(0.15, 0.85), hz * rng.uniform(0.2, 0.75)
        fill = (250, 240, 200) if scene.moon else ((255, 230, 80) if scene.time == "day" else (255, 120, 40))
        d.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    for _ in range(scene.clouds):
        x, y, cw = w * rng.uniform(0.1, 0.9), hz * rng.uniform(0.1, 0.6), w * rng.uniform(0.1, 0.22)
        for dx in (-0.4, 0.0, 0.4):
            d.ellipse([x + dx * cw - cw / 2, y - cw / 4, x + dx * cw + cw / 2, y + cw / 4], fill=(245, 245, 250))
    if scene.ground == "city":
        x = 0.0
        while x < w:
            bw, bh = w * rng.uniform(0.08, 0.18), hz * rng.uniform(0.2, 0.8)
            shade = int(rng.integers(60, 140))
            d.rectangle([x, hz - bh, x + bw, hz], fill=(shade, shade, shade + 10))
            for wy in np.arange(hz - bh + 5, hz - 5, 10):
                for wx in np.arange(x + 4, x + bw - 4, 8):
                    lit = (250, 220, 120) if scene.time == "night" else (180, 200, 220)
                    d.rectangle([wx, wy, wx + 3, wy + 4], fill=lit)
            x += bw + rng.uniform(0, 6)
    if scene.ground == "sea":
        for _ in range(12):
            y = rng.uniform(hz + 3, h)
            x = rng.uniform(0, w)
            d.line([x, y, x + rng.uniform(10, 40), y], fill=(200, 220, 240), width=1)
    if scene.ground == "beach":
        d.polygon([(0, h), (0, h * 0.8), (w, h * 0.9), (w, h)], fill=(225, 205, 150))
    for kind, colour, fx, fy, fr in scene.objects:
        x, y, r = w * fx, hz + (h - hz) * (0.3 + fy * 2), h * fr
        col = (30, 120, 40) if colour == "green" else COLOURS[colour]
        if kind == "ball":
            d.ellipse([x - r, y - r, x + r, y + r], fill=col)
        elif kind == "tree":
            d.rectangle([x - r * 0.15, y, x + r * 0.15, y + r], fill=(100, 60, 30))
            d.polygon([(x - r, y), (x + r, y), (x, y - 2.2 * r)], fill=col)
        elif kind == "flower":
            for a in np.linspace(0, 2 * np.pi, 6, endpoint=False):
                px, py = x + np.cos(a) * r * 0.5, y + np.sin(a) * r * 0.5
                d.ellipse([px - r * 0.4, py - r * 0.4, px + r * 0.4, py + r * 0.4], fill=col)
            d.ellipse([x - r * 0.3, y - r * 0.3, x + r * 0.3, y + r * 0.3], fill=(250, 220, 60))
        else:  # house
            d.rectangle([x - r, y - r, x + r, y + r], fill=col)
            d.polygon([(x - 1.2 * r, y - r), (x + 1.2 * r, y - r), (x, y - 2 * r)], fill=(120, 40, 30))
    arr = np.asarray(pic, dtype=np.float64) + rng.normal(0, 5, (h, w, 3))  # sensor noise
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def user_tags(scene: Scene, rng: np.random.Generator) -> list[str]:
    """What a user would tag: most visible things, plus long-tailed tags unrelated to pixels."""
    tags = [t for t in scene.visible_tags() if rng.random() < P_USER_TAGS_OBVIOUS.get(t, P_USER_TAGS_VISIBLE)]
    tags += [t for rank, t in enumerate(NON_VISUAL, 1) if rng.random() < 0.45 / rank]
    return tags[:MAX_TAGS] or [NON_VISUAL[0]]


def make_demo(
    image_dir: Path, n: int = 2000, seed: int = 0, progress: Callable[[int], None] = lambda k: None
) -> LabelledImages:
    """Draw n scenes into `image_dir` (which must exist) and return their paths (relative to
    it) and tags; the caller records where the folder finally lives as `image_root`. A marker
    file says the folder is ours, so `--overwrite` may replace it and nothing else."""
    paths, tags = [], []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        scene = draw_scene(rng)
        name = f"demo_{i:06d}.jpg"
        render(scene, rng).save(image_dir / name, quality=88)
        paths.append(name)
        tags.append(user_tags(scene, rng))
        progress(1)
    (image_dir / DEMO_IMAGES_MARKER).write_text(json.dumps({"kind": "images", "generator": "hashtagkit.data.demo"}) + "\n")
    vocab = rank_vocabulary(count_tags(tags))
    return LabelledImages(
        paths=paths, tags=tags, vocab=vocab, image_root=None,
        source={"dataset": "demo", "synthetic": True, "generator": "hashtagkit.data.demo",
                "generator_version": GENERATOR_VERSION, "n": n, "seed": seed},
    )
