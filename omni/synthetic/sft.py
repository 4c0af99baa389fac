"""Synthetic SFT conversations (Stage E) that can only be answered by looking at the image or listening to the audio.

Four task types, chats in the DESIGN §5 manifest layout plus "task" (metric group) and "kind" (of the first
question). A training conversation about an image or a clip asks 1..max_turns questions of distinct kinds, so one
encoded medium carries several supervised answers; a validation conversation asks one question:
- image_qa, from the shape images of `omni.synthetic.images` and their attributes: "What colour is the circle?"
  (asked only of a shape that occurs once), "How many shapes are there?", "Where is the square?", "What shape is
  in the top left?". Answers are the attribute words ("red", "two", "top left", "star").
- audio_qa, from the espeak-ng utterances of `omni.synthetic.speech`: "What did the speaker say?" (the whole
  transcript), "Which word was spoken: dog or cat?" (one word of the utterance against a word of the same kind
  that it lacks, in random order) and "Which colour was mentioned?" (utterances with exactly one colour).
- ocr_qa: a short word printed large (dark ink, light paper) on a square image ("What does the text say?"). The
  OCR-line set of `omni.synthetic.ocr_lines` is not reused: the ViT sees a fixed small square, into which a
  20-character line would be squeezed beyond legibility, so the words are drawn here at the shape set's size.
- text: instruction pairs over phrases of the speech vocabulary (repeat, first word, last word, word count), so
  SFT keeps the Thinker following plain-text instructions.

Splits: val conversations use only val media (val images, val utterances, their own rendered words) and draw
from their own random stream seeded by (seed, "val"), so the two splits share no medium and the val set does not
depend on n_train; text prompts of val never occur in train. Media paths are written relative to out_dir.
"""

from __future__ import annotations

import math
import os
import random
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from omni.data.manifest import read_jsonl, write_jsonl
from omni.synthetic import speech
from omni.synthetic.images import COUNT_WORDS
from omni.synthetic.ocr_lines import find_fonts

TASK_MIX = {"image_qa": 0.45, "audio_qa": 0.25, "ocr_qa": 0.15, "text": 0.15}  # fractions of each split
OCR_WORDS = ("cat", "dog", "sun", "car", "red", "box", "hat", "cup", "map", "pen", "bus", "egg", "key", "owl",
             "fox", "jam", "ink", "net", "toy", "zip")
# Word kinds of the speech vocabulary, for "Which word was spoken: a or b?" distractors.
_WORD_KINDS = (speech.COLOURS, speech.SHAPES, speech.NOUNS, speech.NUMBERS, speech.NAMES, speech.ADJECTIVES)
_PHRASE_WORDS = speech.COLOURS + speech.SHAPES + speech.NOUNS + speech.ADJECTIVES
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven")


def image_question(attributes: dict, rng: random.Random, kind: str | None = None) -> tuple[str, str, str]:
    """(question, answer, kind) about one shape image, from its attributes; kind None = a random applicable one."""
    shapes = attributes["shapes"]
    names = [s["shape"] for s in shapes]
    unique = [s for s in shapes if names.count(s["shape"]) == 1]
    kind = kind or rng.choice(image_kinds(attributes))
    if kind == "count":
        return rng.choice(("How many shapes are there?", "How many shapes can you see?")), \
            COUNT_WORDS[attributes["count"]], kind
    if kind == "shape":
        s = rng.choice(shapes)
        return rng.choice((f"What shape is in the {s['position']}?", f"Which shape is in the {s['position']}?")), \
            s["shape"], kind
    s = rng.choice(unique)
    if kind == "colour":
        if len(shapes) == 1 and rng.random() < 0.3:
            return "What colour is the shape?", s["colour"], kind
        return rng.choice((f"What colour is the {s['shape']}?", f"Which colour is the {s['shape']}?")), \
            s["colour"], kind
    return rng.choice((f"Where is the {s['shape']}?", f"In which part of the image is the {s['shape']}?")), \
        s["position"], kind


def image_kinds(attributes: dict) -> list[str]:
    """The question kinds an image supports: colour and position need a shape that occurs once."""
    names = [s["shape"] for s in attributes["shapes"]]
    return ["count", "shape"] + (["colour", "position"] if any(names.count(n) == 1 for n in names) else [])


def audio_question(text: str, rng: random.Random, kind: str | None = None) -> tuple[str, str, str]:
    """(question, answer, kind) about one utterance with transcript `text`; kind None = a random applicable one."""
    words = text.split()
    kind = kind or rng.choice(audio_kinds(text))
    if kind == "transcribe":
        return rng.choice(("What did the speaker say?", "Transcribe the audio.")), text, kind
    if kind == "colour":
        return "Which colour was mentioned?", next(w for w in words if w in speech.COLOURS), kind
    word, vocab = rng.choice([(w, kind) for w in words for kind in _WORD_KINDS if w in kind])
    other = rng.choice([w for w in vocab if w not in words])
    a, b = (word, other) if rng.random() < 0.5 else (other, word)
    return f"Which word was spoken: {a} or {b}?", word, kind


def audio_kinds(text: str) -> list[str]:
    """The question kinds an utterance supports: "word" needs a word of a known kind, "colour" exactly one colour."""
    words = text.split()
    colours = {w for w in words if w in speech.COLOURS}
    return ["transcribe"] + (["word"] if any(w in k for w in words for k in _WORD_KINDS) else []) + \
        (["colour"] if len(colours) == 1 else [])


def text_instruction(rng: random.Random) -> tuple[str, str, str]:
    """(instruction, answer, kind) over a random 2-5 word phrase."""
    phrase = rng.sample(_PHRASE_WORDS, rng.randint(2, 5))
    joined = " ".join(phrase)
    kind = rng.choice(("repeat", "first", "last", "count"))
    if kind == "repeat":
        return f"Repeat after me: {joined}", joined, kind
    if kind == "first":
        return f'What is the first word of "{joined}"?', phrase[0], kind
    if kind == "last":
        return f'What is the last word of "{joined}"?', phrase[-1], kind
    return f'How many words are in "{joined}"?', _NUMBER_WORDS[len(phrase)], kind


def render_word(word: str, rng: random.Random, nprng: np.random.Generator, fonts: list[str],
                size: int) -> Image.Image:
    """`word` in large dark letters on a light square RGB image (as printed text, like the OCR-line set), with a
    random font, ink and paper shade, offset and slight tilt."""
    paper = tuple(rng.randint(200, 255) for _ in range(3))
    ink = tuple(rng.randint(0, 90) for _ in range(3))
    font_size = round(size * rng.uniform(0.40, 0.48))
    font = ImageFont.truetype(rng.choice(fonts), font_size) if fonts else ImageFont.load_default(size=font_size)
    left, top, right, bottom = font.getbbox(word)
    w, h = right - left, bottom - top
    canvas = Image.new("RGB", (size, size), paper)
    x = (size - w) / 2 + rng.uniform(-0.05, 0.05) * size - left
    y = (size - h) / 2 + rng.uniform(-0.12, 0.12) * size - top
    ImageDraw.Draw(canvas).text((x, y), word, font=font, fill=ink)
    canvas = canvas.rotate(rng.uniform(-4, 4), resample=Image.BILINEAR, fillcolor=paper)
    noise = nprng.normal(0.0, 4.0, size=(size, size, 3))
    return Image.fromarray(np.clip(np.asarray(canvas, dtype=np.float32) + noise, 0, 255).round().astype(np.uint8))


def _chat(turns: list[tuple[str, str]], placeholder: str | None) -> list[dict]:
    """A conversation of (question, answer) turns; the medium's placeholder opens the first question."""
    messages = []
    for i, (question, answer) in enumerate(turns):
        content = f"{placeholder} {question}" if placeholder and i == 0 else question
        messages += [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]
    return messages


def _kinds(kinds: list[str], rng: random.Random, max_turns: int) -> list[str]:
    """1..max_turns distinct question kinds, in random order."""
    return rng.sample(kinds, rng.randint(1, min(max_turns, len(kinds))))


def _counts(n: int, mix: dict[str, float]) -> dict[str, int]:
    """Exact per-task counts summing to n (largest remainders)."""
    raw = {k: n * v / sum(mix.values()) for k, v in mix.items()}
    counts = {k: math.floor(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: counts[k] - raw[k])[:n - sum(counts.values())]:
        counts[k] += 1
    return counts


def write_sft_dataset(out_dir: str | Path, *, images_dir: str | Path, speech_dir: str | Path | None, seed: int,
                      n_train: int, n_val: int, image_size: int = 64, mix: dict[str, float] | None = None,
                      max_turns: int = 3) -> dict:
    """Write train.jsonl / val.jsonl (+ ocr_imgs/*.png) under out_dir from the image and speech sets in images_dir
    and speech_dir (their train.jsonl / val.jsonl). speech_dir None leaves audio_qa out. Training conversations
    about an image or a clip ask 1..max_turns questions of distinct kinds (val: one). Returns stats."""
    start = time.perf_counter()
    out, images_dir = Path(out_dir), Path(images_dir)
    mix = dict(mix or TASK_MIX)
    if speech_dir is None:
        mix.pop("audio_qa", None)
    (out / "ocr_imgs").mkdir(parents=True, exist_ok=True)
    fonts = find_fonts()
    stats: dict = {}
    val_prompts: set[str] = set()
    for split, n in (("val", n_val), ("train", n_train)):
        rng = random.Random(f"{seed}-{split}")
        nprng = np.random.default_rng([seed, 2 if split == "val" else 3])
        images = read_jsonl(images_dir / f"{split}.jsonl")
        # Sentences only: the one-word phrase clips are there for the ASR and the Talker, and leaving them out keeps
        # these conversations the same whatever the speech set's phrase_repeats.
        utterances = [u for u in read_jsonl(Path(speech_dir) / f"{split}.jsonl") if not u.get("phrase")] \
            if speech_dir is not None else []
        counts = _counts(n, mix)
        records = []
        turns = 1 if split == "val" else max_turns  # val asks one question, so each exact match is one answer
        for _ in range(counts.get("image_qa", 0)):
            rec = rng.choice(images)
            kinds = _kinds(image_kinds(rec["attributes"]), rng, turns)
            qa = [image_question(rec["attributes"], rng, k)[:2] for k in kinds]
            records.append({"messages": _chat(qa, "<image>"), "task": "image_qa", "kind": kinds[0],
                            "image": os.path.relpath(images_dir / rec["image"], out)})
        for _ in range(counts.get("audio_qa", 0)):
            rec = rng.choice(utterances)
            kinds = _kinds(audio_kinds(rec["text"]), rng, turns)
            qa = [audio_question(rec["text"], rng, k)[:2] for k in kinds]
            records.append({"messages": _chat(qa, "<audio>"), "task": "audio_qa", "kind": kinds[0],
                            "audio": os.path.relpath(Path(speech_dir) / rec["audio"], out)})
        for i in range(counts.get("ocr_qa", 0)):
            word = rng.choice(OCR_WORDS)
            name = f"ocr_imgs/{split}_{i:06d}.png"
            render_word(word, rng, nprng, fonts, image_size).save(out / name)
            q = rng.choice(("What does the text say?", "What word is written in the image?"))
            records.append({"messages": _chat([(q, word)], "<image>"), "task": "ocr_qa", "kind": "read",
                            "image": name})
        while sum(r["task"] == "text" for r in records) < counts.get("text", 0):
            q, a, kind = text_instruction(rng)
            if q in val_prompts:
                continue  # train never repeats a val instruction
            if split == "val":
                val_prompts.add(q)
            records.append({"messages": _chat([(q, a)], None), "task": "text", "kind": kind})
        rng.shuffle(records)
        write_jsonl(out / f"{split}.jsonl", records)
        stats[split] = {task: sum(r["task"] == task for r in records) for task in mix}
    stats["seconds"] = round(time.perf_counter() - start, 3)
    return stats
