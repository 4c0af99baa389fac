"""Render OCR text lines of real words from a text corpus with the fonts installed on this system.

    python scripts/make_ocr_lines.py --corpus data/text/train.txt --out data/ocr_corpus [--n-train 20000]
                                     [--n-val 1000] [--height 32] [--max-chars 24] [--seed 0] [--fonts F.ttf ...]

Each line is a run of consecutive words of one corpus document (omni.data.text.read_documents, the Stage-A reader),
1..--max-chars characters, rendered with a random installed TrueType font (fc-list ':lang=en'; Debian's
fonts-dejavu-core and fonts-liberation, which `make setup` installs) at a random size, in a random ink colour on a
random paper colour (luminance contrast kept), sheared (italic-like skew) and slightly rotated, cropped to the ink
with a random margin, sometimes blurred, with pixel noise and JPEG compression; then resized to --height pixels.
Words with a character some chosen font cannot draw (its glyph would be the font's empty box) are not used.

Writes <out>/images/{split}_{i:06d}.jpg and <out>/train.jsonl, <out>/val.jsonl ({"image", "text"}), the manifest
train_ocr.py reads (data.train_manifest / data.val_manifest). Val lines come from their own random stream and
train lines never repeat a val text, so CER on val is measured on unseen lines.
"""

from __future__ import annotations

import argparse
import glob
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from omni.data.manifest import write_jsonl  # noqa: E402
from omni.data.text import read_documents  # noqa: E402
from omni.errors import InvalidInput, MissingInput  # noqa: E402

NOT_TEXT_FONTS = ("math", "symbol", "emoji", "dingbat", "opensymbol")  # fonts whose glyphs are not letters
_NO_GLYPH = "\U0010fffd"  # a private-use code point no text font draws: it renders as the font's .notdef box


def system_fonts() -> list[str]:
    """TrueType/OpenType files of the installed fonts that cover English (fc-list), symbol fonts left out; the
    usual font folders when fc-list is missing."""
    try:
        listed = subprocess.run(["fc-list", ":lang=en", "file"], capture_output=True, text=True, timeout=60).stdout
        files = [line.split(":")[0].strip() for line in listed.splitlines()]
    except (OSError, subprocess.TimeoutExpired):
        files = glob.glob("/usr/share/fonts/**/*.[ot]tf", recursive=True)
    return sorted({f for f in files if f.lower().endswith((".ttf", ".otf"))
                   and not any(k in Path(f).name.lower() for k in NOT_TEXT_FONTS)})


def _glyph(font: ImageFont.FreeTypeFont, ch: str) -> bytes:
    img = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(img).text((8, 8), ch, font=font, fill=255)
    return img.tobytes()


def drawable(fonts: list[str], chars: set[str]) -> set[str]:
    """The characters of `chars` every font draws with a real glyph (not blank, not the .notdef box)."""
    ok = set(chars)
    for path in fonts:
        font = ImageFont.truetype(path, 32)
        missing = _glyph(font, _NO_GLYPH)
        ok = {c for c in ok if (g := _glyph(font, c)) != missing and any(g)}
    return ok


class LineSampler:
    """Runs of consecutive drawable words of the corpus documents, 1..max_chars characters."""

    def __init__(self, docs: list[str], allowed: set[str], max_chars: int):
        self.docs = [d.split() for d in docs]
        self.allowed, self.max_chars = allowed, max_chars

    def usable(self, word: str) -> bool:
        return len(word) <= self.max_chars and all(c in self.allowed for c in word)

    def line(self, rng: random.Random) -> str | None:
        words = rng.choice(self.docs)
        start = rng.randrange(len(words))
        budget = rng.randint(1, self.max_chars)
        out: list[str] = []
        for word in words[start:]:
            if not self.usable(word) or (out and len(" ".join([*out, word])) > budget):  # first word: any length
                break
            out.append(word)
        return " ".join(out) or None


def _luma(rgb) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _colours(rng: random.Random) -> tuple[tuple, tuple]:
    """Paper and ink colours at least 100 luma levels apart (legible), either way round (dark or light paper)."""
    while True:
        paper, ink = (tuple(rng.randrange(256) for _ in range(3)) for _ in range(2))
        if abs(_luma(paper) - _luma(ink)) >= 100:
            return paper, ink


def render_line(text: str, font_path: str, rng: random.Random, nprng: np.random.Generator,
                height: int) -> Image.Image:
    """RGB image of `text`, `height` pixels high, width following the aspect ratio."""
    size = rng.randint(18, 48)
    font = ImageFont.truetype(font_path, size)
    left, top, right, bottom = font.getbbox(text)
    pad = size
    mask = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)  # the ink coverage
    ImageDraw.Draw(mask).text((pad - left, pad - top), text, font=font, fill=255)
    shear = rng.uniform(-0.3, 0.3)  # x_in = x + shear * y - offset: lines lean like italics, either way
    width = mask.width + int(abs(shear) * mask.height) + 1
    mask = mask.transform((width, mask.height), Image.AFFINE, (1, shear, -max(shear, 0) * mask.height, 0, 1, 0),
                          resample=Image.BILINEAR)
    mask = mask.rotate(rng.uniform(-2.0, 2.0), resample=Image.BILINEAR, expand=True)
    x0, y0, x1, y1 = mask.point(lambda v: 255 if v > 64 else 0).getbbox()
    m = [rng.randint(1, max(2, size // 4)) for _ in range(4)]  # real line crops are never tight
    mask = mask.crop((max(x0 - m[0], 0), max(y0 - m[1], 0), min(x1 + m[2], mask.width), min(y1 + m[3], mask.height)))
    paper, ink = _colours(rng)
    img = Image.new("RGB", mask.size, paper)
    img.paste(Image.new("RGB", mask.size, ink), mask=mask)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    img = img.resize((max(1, round(img.width * height / img.height)), height), Image.BILINEAR)
    noise = nprng.normal(0.0, rng.uniform(0.0, 12.0), size=(img.height, img.width, 3))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).round().astype(np.uint8))


def write_ocr_lines(corpus: str | Path, out_dir: str | Path, *, n_train: int, n_val: int, height: int = 32,
                    max_chars: int = 24, seed: int = 0, fonts: list[str] | None = None) -> dict:
    """Render the lines and write the manifests (see the module docstring); return summary stats."""
    if n_train < 0 or n_val < 0 or height < 8 or max_chars < 1:
        raise InvalidInput(f"need n_train, n_val >= 0, height >= 8 and max_chars >= 1, got n_train={n_train}, "
                           f"n_val={n_val}, height={height}, max_chars={max_chars}")
    fonts = fonts if fonts is not None else system_fonts()
    for f in fonts:
        if not Path(f).is_file():
            raise MissingInput(f"font not found: {f}")
    if not fonts:
        raise MissingInput("no TrueType fonts found (fc-list ':lang=en'); install some, e.g. sudo apt-get install "
                           "fonts-dejavu-core fonts-liberation, or pass --fonts")
    docs = read_documents(corpus)
    allowed = drawable(fonts, set("".join(docs)) - set(" "))
    sampler = LineSampler(docs, allowed, max_chars)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    val_texts: set[str] = set()
    stats: dict = {"fonts": len(fonts), "characters": len(allowed)}
    for split, n in (("val", n_val), ("train", n_train)):
        rng = random.Random(f"{seed}-{split}")
        nprng = np.random.default_rng([seed, 0 if split == "val" else 1])
        records, misses = [], 0
        while len(records) < n:
            text = sampler.line(rng)
            if text is None or text in val_texts:  # undrawable word, or a val text in train / a repeat in val
                misses += 1
                if misses > 1000 + 100 * n:  # bounded: a tiny or undrawable corpus must not spin forever
                    raise InvalidInput(f"{corpus}: found only {len(records)} of {n} usable {split} lines (distinct "
                                       f"from the val lines, drawable with the fonts); use a larger corpus")
                continue
            if split == "val":
                val_texts.add(text)
            name = f"images/{split}_{len(records):06d}.jpg"
            img = render_line(text, rng.choice(fonts), rng, nprng, height)
            img.save(out / name, quality=rng.randint(70, 95))
            records.append({"image": name, "text": text})
        write_jsonl(out / f"{split}.jsonl", records)
        stats[split] = n
    return stats


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True, help="text corpus (as train_text.py reads it)")
    parser.add_argument("--out", required=True, help="folder for images/, train.jsonl and val.jsonl")
    parser.add_argument("--n-train", type=int, default=20000)
    parser.add_argument("--n-val", type=int, default=1000)
    parser.add_argument("--height", type=int, default=32, help="line height in pixels (the OCR model.height)")
    parser.add_argument("--max-chars", type=int, default=24, help="longest line in characters")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fonts", nargs="+", help="font files to use (default: every installed text font)")
    args = parser.parse_args(argv)
    stats = write_ocr_lines(args.corpus, args.out, n_train=args.n_train, n_val=args.n_val, height=args.height,
                            max_chars=args.max_chars, seed=args.seed, fonts=args.fonts)
    print(f"wrote {stats['train']} train and {stats['val']} val lines to {args.out} ({stats['fonts']} fonts, "
          f"{stats['characters']} characters)\nTrain OCR on them with e.g.\n  python train_ocr.py --config "
          f"configs/ocr_tiny.json --set data.train_manifest={Path(args.out) / 'train.jsonl'} "
          f"data.val_manifest={Path(args.out) / 'val.jsonl'}")


if __name__ == "__main__":
    main()
