"""Synthetic shape images with captions, labels and complete attributes (Stage C data, and the images of Stage E).

Each image holds one to three shapes (circle, square, triangle, star) in one of eight colours, two sizes and five
positions (a 2x2 grid of corners plus the centre), on a plain, lightly noisy or gradient background. Everything
that is drawn is also written down in `attributes`, so question/answer pairs for SFT ("What colour is the
circle?", "How many shapes?", "Where is the square?") can be generated from the manifest alone.

Captions:
- one shape: "a small red circle in the top left";
- several shapes: "two shapes: a red circle and a blue square" (shapes listed in reading order of their positions:
  top left, top right, centre, bottom left, bottom right), so the caption is a deterministic function of the image.
Captions repeat across images on purpose (320 distinct single-shape captions); retrieval evaluation therefore
compares caption texts, not caption indices (see `omni.contrastive.caption_retrieval`).

Labels (for the classification objective): the shape name when the image has one shape, else "multiple".

Layout rule: shapes sit in distinct cells and their circumscribed circles (radius 0.08 S small, 0.15 S large, at most
0.015 S of position jitter) never overlap or leave the image. Shape colours are only drawn on backgrounds at least
`_MIN_CONTRAST` away in RGB, so a shape is never invisible. Every image is unique (pixel hash) across both splits.
Determinism: the val split uses its own random stream seeded by (seed, "val"), train by (seed, "train"), so the
val set does not change when n_train does.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from omni.data.manifest import write_jsonl

SHAPES = ("circle", "square", "triangle", "star")
COLOURS = {
    "red": (215, 35, 35),
    "green": (35, 160, 60),
    "blue": (35, 75, 215),
    "yellow": (240, 215, 30),
    "purple": (135, 50, 175),
    "orange": (245, 135, 20),
    "black": (15, 15, 15),
    "white": (250, 250, 250),
}
# Background base colours: named separately from shape colours so a caption never describes the background.
BACKGROUNDS = {
    "light grey": (200, 200, 200),
    "dark grey": (80, 80, 80),
    "beige": (225, 215, 185),
    "pale blue": (185, 210, 230),
    "pale green": (195, 225, 195),
}
SIZES = {"small": 0.08, "large": 0.15}  # circumscribed radius as a fraction of the image side
POSITIONS = {  # centre of each cell as a fraction of the image side; dict order = caption reading order
    "top left": (0.25, 0.25),
    "top right": (0.75, 0.25),
    "centre": (0.5, 0.5),
    "bottom left": (0.25, 0.75),
    "bottom right": (0.75, 0.75),
}
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
_COUNT_WEIGHTS = {1: 0.6, 2: 0.25, 3: 0.15}  # single shapes dominate: they carry the full caption detail
_JITTER = 0.015
_MIN_CONTRAST = 120.0  # Euclidean RGB distance between a shape colour and the background base colour
_NOISE_STD = 8.0  # light pixel noise, in 0..255 units


def _background(rng: random.Random, nprng: np.random.Generator, size: int) -> tuple[np.ndarray, dict]:
    """(H, W, 3) float array and its description: plain, noise or a gradient towards a second background."""
    name = rng.choice(list(BACKGROUNDS))
    base = np.array(BACKGROUNDS[name], dtype=np.float32)
    kind = rng.choice(("plain", "noise", "gradient"))
    img = np.broadcast_to(base, (size, size, 3)).astype(np.float32)
    if kind == "noise":
        img = img + nprng.normal(0.0, _NOISE_STD, size=img.shape).astype(np.float32)
    elif kind == "gradient":
        # Blend towards the base colour moved by up to 40 levels: a visible but gentle ramp that keeps the contrast.
        other = np.clip(base + rng.uniform(-40, 40), 0, 255)
        t = np.linspace(0.0, 1.0, size, dtype=np.float32)
        ramp = np.broadcast_to(t[:, None] if rng.random() < 0.5 else t[None, :], (size, size))
        img = base + (other - base) * ramp[..., None]
    return img, {"kind": kind, "colour": name}


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        n, radii = 4, [r]
    elif shape == "triangle":
        n, radii = 3, [r]
    else:  # star: 5 outer points with inner points at 0.45 r between them
        n, radii = 10, [r, 0.45 * r]
    start = angle - math.pi / 2 + (math.pi / 4 if shape == "square" else 0.0)  # point up; square axis-aligned
    return [
        (cx + radii[i % len(radii)] * math.cos(start + 2 * math.pi * i / n),
         cy + radii[i % len(radii)] * math.sin(start + 2 * math.pi * i / n))
        for i in range(n)
    ]


def _draw_shape(draw: ImageDraw.ImageDraw, spec: dict, angle: float) -> None:
    (cx, cy), r, fill = spec["center"], spec["radius"], COLOURS[spec["colour"]]
    if spec["shape"] == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon(_polygon(spec["shape"], cx, cy, r, angle), fill=fill)


def _shape_phrase(spec: dict, with_details: bool) -> str:
    if with_details:
        return f"a {spec['size']} {spec['colour']} {spec['shape']} in the {spec['position']}"
    article = "an" if spec["colour"][0] in "aeiou" else "a"
    return f"{article} {spec['colour']} {spec['shape']}"


def caption_for(shapes: list[dict]) -> str:
    """The caption of an image from its shape list (already in reading order)."""
    if len(shapes) == 1:
        return _shape_phrase(shapes[0], with_details=True)
    phrases = [_shape_phrase(s, with_details=False) for s in shapes]
    listed = ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"{COUNT_WORDS[len(shapes)]} shapes: {listed}"


def label_for(shapes: list[dict]) -> str:
    """Classification label: the shape name of a single-shape image, else "multiple"."""
    return shapes[0]["shape"] if len(shapes) == 1 else "multiple"


def _make_image(rng: random.Random, nprng: np.random.Generator, size: int) -> tuple[Image.Image, dict]:
    pixels, background = _background(rng, nprng, size)
    count = rng.choices(list(_COUNT_WEIGHTS), weights=list(_COUNT_WEIGHTS.values()))[0]
    positions = sorted(rng.sample(list(POSITIONS), count), key=list(POSITIONS).index)
    base = BACKGROUNDS[background["colour"]]
    visible = [c for c, rgb in COLOURS.items() if math.dist(rgb, base) >= _MIN_CONTRAST]
    shapes = []
    for position in positions:
        size_name = rng.choice(list(SIZES))
        fx, fy = POSITIONS[position]
        cx = (fx + rng.uniform(-_JITTER, _JITTER)) * size
        cy = (fy + rng.uniform(-_JITTER, _JITTER)) * size
        shapes.append({
            "shape": rng.choice(SHAPES),
            "colour": rng.choice(visible),
            "size": size_name,
            "position": position,
            "center": [round(cx, 2), round(cy, 2)],
            "radius": round(SIZES[size_name] * size, 2),
        })
    img = Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for spec in shapes:
        _draw_shape(draw, spec, angle=rng.uniform(-0.25, 0.25))  # slight rotation, up to ~14 degrees
    attributes = {"count": count, "shapes": shapes, "background": background}
    return img, attributes


def write_image_dataset(out_dir: str | Path, *, seed: int, n_train: int, n_val: int, image_size: int = 64) -> dict:
    """Write `imgs/{split}_{i:06d}.png`, `train.jsonl` and `val.jsonl` under `out_dir`; return summary stats.

    Manifest records: {"image": "imgs/x.png", "caption": str, "label": str, "attributes": {...}}.
    """
    if n_train < 0 or n_val < 0:
        raise ValueError(f"n_train and n_val must be >= 0, got n_train={n_train}, n_val={n_val}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16 for the shapes to be recognisable, got {image_size}")
    start = time.perf_counter()
    out = Path(out_dir)
    (out / "imgs").mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()  # pixel hashes, so no image appears twice (in particular not in both splits)
    stats: dict = {"image_size": image_size, "bytes": 0}
    for split, n in (("val", n_val), ("train", n_train)):
        rng = random.Random(f"{seed}-{split}")
        nprng = np.random.default_rng([seed, 0 if split == "val" else 1])
        records = []
        while len(records) < n:
            img, attributes = _make_image(rng, nprng, image_size)
            digest = hashlib.sha1(img.tobytes()).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            name = f"imgs/{split}_{len(records):06d}.png"
            img.save(out / name)
            stats["bytes"] += (out / name).stat().st_size
            records.append({"image": name, "caption": caption_for(attributes["shapes"]),
                            "label": label_for(attributes["shapes"]), "attributes": attributes})
        write_jsonl(out / f"{split}.jsonl", records)
        stats[split] = n
        stats[f"{split}_unique_captions"] = len({r["caption"] for r in records})
    stats["seconds"] = round(time.perf_counter() - start, 3)
    return stats
