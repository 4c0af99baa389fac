"""Images: reading, preprocessing, and the sources for Stage C (contrastive / classification) and OCR.

All image preprocessing lives here, so training, evaluation, Stage E and inference see identical pixels:
- `load_image` decodes any Pillow-readable file (grayscale, RGBA, palette, 16-bit, CMYK, EXIF-rotated) into RGB.
  Transparent pixels are composited over white, because a zero alpha usually hides black (0, 0, 0) pixels and
  documents / icons are drawn for a white page. Missing or corrupt files raise errors naming the file.
- `image_to_tensor` resizes the shorter side to `size` (bicubic, antialiased), centre-crops to a square and
  normalises with the CLIP channel mean/std (`IMAGE_MEAN`, `IMAGE_STD`). No augmentation: the synthetic captions
  name positions ("top left"), which a flip or crop would falsify.
- OCR lines (`line_to_tensor`) are grayscale, resized to a fixed height keeping the aspect ratio, and inverted
  (ink = 1, paper = 0) so that zero padding on the right looks like blank paper.

The records the sources take come from `omni.data.image_layouts` (`load_image_records` / `load_ocr_records`: our
JSONL manifests and the public caption / OCR layouts). Sources follow `omni.data.resumable`: `__getitem__` returns one
sample of CPU tensors and raises `BadSample` naming the file for an unusable item (an unreadable image, or a malformed
row the reader kept as a record with an "error" naming file:line, so it is counted, named and skipped alike);
`collate` builds the batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from omni.ctc import CharVocab, min_ctc_frames
from omni.data.resumable import BadSample

IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP (Radford et al. 2021) RGB mean of [0, 1] pixels
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)  # CLIP RGB std
_HIGH_DEPTH = {"I;16": 257.0, "I;16L": 257.0, "I;16B": 257.0, "I;16N": 257.0}  # 16-bit gray -> 8-bit divisor


def load_image(path: str | Path) -> Image.Image:
    """Decode `path` into an RGB PIL image. FileNotFoundError / ValueError name the file when it is missing or
    unreadable."""
    try:
        with Image.open(path) as img:
            img.load()  # decode now, so a truncated file fails here and not later
            img = ImageOps.exif_transpose(img)
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image {path}: {type(e).__name__}: {e}") from None
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; transparency composited over white; 16-bit gray scaled to 8 bits (32-bit integer
    and float gray are taken as 0..255 and clipped)."""
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if img.mode in _HIGH_DEPTH or img.mode in ("I", "F"):
        a = np.asarray(img, dtype=np.float32) / _HIGH_DEPTH.get(img.mode, 1.0)
        img = Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def image_to_tensor(img: Image.Image, size: int) -> torch.Tensor:
    """PIL image -> (3, size, size) float32: shorter side resized to `size`, centre crop, CLIP normalisation."""
    img = to_rgb(img)
    w, h = img.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        left, top = (nw - size) // 2, (nh - size) // 2
        if nw * nh <= 4 * size * size:
            img = img.resize((nw, nh), Image.BICUBIC).crop((left, top, left + size, top + size))
        else:  # a very long image (a 1 x 10000 sliver would resize to gigabytes): resize only the crop's source
            # box, which gives the same pixels up to rounding
            box = (left * w / nw, top * h / nh, (left + size) * w / nw, (top + size) * h / nh)
            img = img.resize((size, size), Image.BICUBIC, box=box)
    x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGE_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(3, 1, 1)
    return (x - mean) / std


def line_to_tensor(img: Image.Image, height: int, max_width: int | None = None) -> torch.Tensor:
    """Text-line image -> (1, height, W) float32 with ink = 1 and paper = 0; W keeps the aspect ratio, and a line
    wider than `max_width` is squeezed horizontally to fit (rather than cut, which would drop characters)."""
    gray = to_rgb(img).convert("L")
    width = max(1, round(gray.width * height / gray.height))
    if max_width is not None:
        width = min(width, max_width)
    gray = gray.resize((width, height), Image.BILINEAR)
    x = torch.from_numpy(np.array(gray, dtype=np.uint8)).float()
    return (1.0 - x / 255.0).unsqueeze(0)


# ---------------------------------------------------------------------------------------------------- sources


class ImageSource:
    """Images with optional caption token ids (contrastive) and / or label ids (classification).

    caption_tokenizer: anything with `encode(text, bos=, eos=)` and `pad_id` (the Stage-A tokenizer); captions are
        encoded with BOS (the Thinker saw BOS at every document start) and cut at `max_caption_tokens`.
    labels: class names; a record's label becomes its index. A missing / unknown label or an empty caption is a
        BadSample, as is an unreadable image.
    pad_captions: pad caption ids to `max_caption_tokens` instead of the batch maximum (static shapes).
    """

    def __init__(self, records: Sequence[dict], *, image_size: int, caption_tokenizer=None,
                 labels: Sequence[str] | None = None, max_caption_tokens: int = 64, pad_captions: bool = False):
        if max_caption_tokens < 1:
            raise ValueError(f"max_caption_tokens must be >= 1, got {max_caption_tokens}")
        self.records = list(records)
        self.image_size = image_size
        self.tokenizer = caption_tokenizer
        self.labels = list(labels) if labels is not None else None
        self._label_ids = {name: i for i, name in enumerate(self.labels or [])}
        self.max_caption_tokens = max_caption_tokens
        self.pad_captions = pad_captions

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        rec = self.records[i]
        if rec.get("error"):
            raise BadSample(rec["error"])
        path = rec["image"]
        try:
            image = image_to_tensor(load_image(path), self.image_size)
        except (OSError, ValueError) as e:
            raise BadSample(str(e)) from None
        sample = {"image": image, "path": path, "caption": rec.get("caption") or ""}
        if self.tokenizer is not None:
            if not sample["caption"].strip():
                raise BadSample(f"{path}: empty caption")
            ids = self.tokenizer.encode(sample["caption"], bos=True)[: self.max_caption_tokens]
            sample["caption_ids"] = torch.tensor(ids, dtype=torch.long)
        if self.labels is not None:
            if rec.get("label") not in self._label_ids:
                raise BadSample(f"{path}: label {rec.get('label')!r} is not one of the {len(self.labels)} classes")
            sample["label"] = self._label_ids[rec["label"]]
        return sample

    def collate(self, samples: list[dict]) -> dict:
        """-> images (B, 3, S, S); with a tokenizer caption_ids (B, L) and caption_mask (B, L) bool (True = real);
        with labels labels (B,); always captions and paths (lists of str)."""
        batch = {"images": torch.stack([s["image"] for s in samples]),
                 "captions": [s["caption"] for s in samples], "paths": [s["path"] for s in samples]}
        if self.tokenizer is not None:
            longest = self.max_caption_tokens if self.pad_captions else max(len(s["caption_ids"]) for s in samples)
            ids = torch.full((len(samples), longest), self.tokenizer.pad_id, dtype=torch.long)
            mask = torch.zeros(len(samples), longest, dtype=torch.bool)
            for row, s in enumerate(samples):
                n = len(s["caption_ids"])
                ids[row, :n], mask[row, :n] = s["caption_ids"], True
            batch["caption_ids"], batch["caption_mask"] = ids, mask
        if self.labels is not None:
            batch["labels"] = torch.tensor([s["label"] for s in samples], dtype=torch.long)
        return batch


class OcrSource:
    """Text-line images -> (1, H, W) ink tensors and character ids for CTC.

    width_stride: the OCR model's time downsampling (`OcrModel.width_stride`); a line needs
        ceil(W / width_stride) >= `min_ctc_frames(label)` frames, else it cannot be aligned and is a BadSample.
    max_width: lines wider than this are squeezed to it, and collate pads every batch to exactly this width (and
        the labels to the frames it yields), so shapes are static for torch.compile. None = pad to the batch max.
    max_frames: the OCR model's `max_frames` (its rotary table). Without max_width, a line wider than
        max_frames * width_stride pixels is a BadSample: squeezing it unasked would change the glyphs the model
        learns, and cutting it would drop characters of its text. None = no limit.
    """

    def __init__(self, records: Sequence[dict], *, vocab: CharVocab, height: int, max_width: int | None = None,
                 width_stride: int = 4, max_frames: int | None = None):
        if height < 1 or width_stride < 1 or (max_width is not None and max_width < 1):
            raise ValueError(f"need height, width_stride, max_width >= 1, got height={height}, "
                             f"width_stride={width_stride}, max_width={max_width}")
        self.records = list(records)
        self.vocab = vocab
        self.height = height
        self.max_width = max_width
        self.width_stride = width_stride
        self.max_frames = max_frames

    def __len__(self) -> int:
        return len(self.records)

    @property
    def lengths(self) -> list[int]:
        """Characters per line: a cheap stand-in for the image width, for length bucketing."""
        return [len(r["text"]) for r in self.records]

    def __getitem__(self, i: int) -> dict:
        rec = self.records[i]
        if rec.get("error"):
            raise BadSample(rec["error"])
        path, text = rec["image"], rec["text"]
        if not text.strip():
            raise BadSample(f"{path}: empty text")
        try:
            ids = self.vocab.encode(text)
        except ValueError as e:
            raise BadSample(f"{path}: {e}") from None
        try:
            image = line_to_tensor(load_image(path), self.height, self.max_width)
        except (OSError, ValueError) as e:
            raise BadSample(str(e)) from None
        frames = math.ceil(image.shape[-1] / self.width_stride)
        if self.max_frames is not None and frames > self.max_frames:
            raise BadSample(f"{path}: the {image.shape[-1]}-pixel-wide line gives {frames} frames > the OCR model's "
                            f"max_frames={self.max_frames} (set data.max_width to squeeze wide lines instead)")
        if frames < min_ctc_frames(ids):
            raise BadSample(f"{path}: text of {len(ids)} characters needs {min_ctc_frames(ids)} CTC frames but the "
                            f"{image.shape[-1]}-pixel-wide line gives {frames}")
        return {"image": image, "label": torch.tensor(ids, dtype=torch.long), "text": text, "path": path}

    def collate(self, samples: list[dict]) -> dict:
        """-> images (B, 1, H, W) zero-padded on the right, widths (B,), labels (B, L) zero-padded,
        label_lengths (B,), texts and paths (lists of str)."""
        widths = torch.tensor([s["image"].shape[-1] for s in samples], dtype=torch.long)
        label_lengths = torch.tensor([len(s["label"]) for s in samples], dtype=torch.long)
        if self.max_width is not None:
            width, label_len = self.max_width, math.ceil(self.max_width / self.width_stride)
        else:
            width, label_len = int(widths.max()), int(label_lengths.max())
        images = torch.zeros(len(samples), 1, self.height, width)
        labels = torch.zeros(len(samples), label_len, dtype=torch.long)
        for row, s in enumerate(samples):
            images[row, :, :, : s["image"].shape[-1]] = s["image"]
            labels[row, : len(s["label"])] = s["label"]
        return {"images": images, "widths": widths, "labels": labels, "label_lengths": label_lengths,
                "texts": [s["text"] for s in samples], "paths": [s["path"] for s in samples]}
