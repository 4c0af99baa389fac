"""Synthetic OCR text lines rendered with Pillow (data for `train_ocr.py`).

A line is 3-20 characters: one to four words from a small built-in word list (random capitalisation), numbers
(integers, decimals, times, prices) and punctuation, so every letter, digit and common punctuation mark occurs.
Each line is rendered in dark ink on a light background with a random font (the DejaVu TTFs when installed,
otherwise Pillow's built-in scalable font), font size, slight rotation, optional blur and pixel noise, then cropped
to the ink with a small margin and resized to a fixed height (grayscale PNG, width keeping the aspect ratio).

Val lines are drawn first from their own random stream and train lines never repeat a val text, so CER on val is
measured on unseen lines (words are shared: the split tests reading, not vocabulary).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from omni.data.manifest import write_jsonl

FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu", "/usr/share/fonts/TTF")
MIN_CHARS, MAX_CHARS = 3, 20
_WORDS = (
    "the a of and to in is it you that he was for on are with as his they be at one have this from or had by "
    "word but what some we can out other were all there when up use your how said an each she which do their time "
    "if will way about many then them write would like so these her long make thing see him two has look more day "
    "could go come did number sound no most people my over know water than call first who may down side been now "
    "find any new work part take get place made live where after back little only round man year came show every "
    "good me give our under name very through just form sentence great think say help low line differ turn cause "
    "quick brown fox jumps lazy dog zebra quiz jazz box wax fix vex jog kiwi pixel query yolk zip oxygen jury"
).split()
_PUNCT_END = ".,!?:;"
_PUNCT_MID = "-'/&()#%+"


def find_fonts() -> list[str]:
    """Paths of the installed DejaVu TTFs (math font excluded: its glyph metrics differ); empty when none."""
    for d in FONT_DIRS:
        fonts = sorted(str(p) for p in Path(d).glob("DejaVu*.ttf") if "Math" not in p.name)
        if fonts:
            return fonts
    return []


def _number(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return str(rng.randrange(0, 10 ** rng.randint(1, 4)))
    if kind == 1:
        return f"{rng.randrange(100)}.{rng.randrange(100):02d}"
    if kind == 2:
        return f"{rng.randrange(24):02d}:{rng.randrange(60):02d}"
    return f"${rng.randrange(1, 1000)}"


def _word(rng: random.Random) -> str:
    w = rng.choice(_WORDS)
    style = rng.random()
    if style < 0.25:
        return w.capitalize()
    if style < 0.3:
        return w.upper()
    return w


def random_line(rng: random.Random) -> str:
    """One line of 3..20 characters: words, numbers and punctuation."""
    while True:
        parts = []
        for _ in range(rng.randint(1, 4)):
            token = _number(rng) if rng.random() < 0.2 else _word(rng)
            if rng.random() < 0.1:
                token = f"({token})" if rng.random() < 0.3 else token + rng.choice(_PUNCT_MID) + _word(rng)
            parts.append(token)
        line = " ".join(parts)
        if rng.random() < 0.4:
            line += rng.choice(_PUNCT_END)
        if MIN_CHARS <= len(line) <= MAX_CHARS:
            return line


def _font(rng: random.Random, fonts: list[str], size: int) -> ImageFont.FreeTypeFont:
    if fonts:
        return ImageFont.truetype(rng.choice(fonts), size)
    return ImageFont.load_default(size=size)


def render_line(text: str, rng: random.Random, nprng: np.random.Generator, fonts: list[str],
                height: int) -> Image.Image:
    """Grayscale image of `text`, `height` pixels high, width following the aspect ratio."""
    font = _font(rng, fonts, rng.randint(20, 32))
    paper, ink = rng.randint(190, 255), rng.randint(0, 90)
    left, top, right, bottom = font.getbbox(text)
    pad = 8
    img = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), paper)
    ImageDraw.Draw(img).text((pad - left, pad - top), text, font=font, fill=ink)
    img = img.rotate(rng.uniform(-3.0, 3.0), resample=Image.BILINEAR, expand=True, fillcolor=paper)
    # Crop to the ink plus a random margin: real line crops are never perfectly tight.
    arr = np.asarray(img)
    rows = np.flatnonzero((arr < (paper + ink) / 2).any(axis=1))
    cols = np.flatnonzero((arr < (paper + ink) / 2).any(axis=0))
    m = [rng.randint(1, 5) for _ in range(4)]
    img = img.crop((max(cols[0] - m[0], 0), max(rows[0] - m[1], 0),
                    min(cols[-1] + 1 + m[2], img.width), min(rows[-1] + 1 + m[3], img.height)))
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9)))
    width = max(1, round(img.width * height / img.height))
    img = img.resize((width, height), Image.BILINEAR)
    noise = nprng.normal(0.0, rng.uniform(0.0, 12.0), size=(height, width))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).round().astype(np.uint8), "L")


def write_ocr_dataset(out_dir: str | Path, *, seed: int, n_train: int, n_val: int, height: int = 32) -> dict:
    """Write `imgs/{split}_{i:06d}.png`, `train.jsonl` and `val.jsonl` ({"image", "text"}) under `out_dir`;
    return summary stats."""
    if n_train < 0 or n_val < 0:
        raise ValueError(f"n_train and n_val must be >= 0, got n_train={n_train}, n_val={n_val}")
    if height < 8:
        raise ValueError(f"height must be >= 8 pixels for legible text, got {height}")
    start = time.perf_counter()
    out = Path(out_dir)
    (out / "imgs").mkdir(parents=True, exist_ok=True)
    fonts = find_fonts()
    val_texts: set[str] = set()
    stats: dict = {"height": height, "fonts": len(fonts) or "pillow default", "bytes": 0}
    for split, n in (("val", n_val), ("train", n_train)):
        rng = random.Random(f"{seed}-{split}")
        nprng = np.random.default_rng([seed, 0 if split == "val" else 1])
        records, widths = [], []
        while len(records) < n:
            text = random_line(rng)
            if split == "val":
                if text in val_texts:  # unique val lines, so val CER is not dominated by a few repeats
                    continue
                val_texts.add(text)
            elif text in val_texts:
                continue
            img = render_line(text, rng, nprng, fonts, height)
            name = f"imgs/{split}_{len(records):06d}.png"
            img.save(out / name)
            stats["bytes"] += (out / name).stat().st_size
            widths.append(img.width)
            records.append({"image": name, "text": text})
        write_jsonl(out / f"{split}.jsonl", records)
        stats[split] = n
        if widths:
            stats[f"{split}_max_width"] = max(widths)
    stats["seconds"] = round(time.perf_counter() - start, 3)
    return stats
