"""Synthetic ASR/TTS data: real speech rendered offline by espeak-ng, with exact transcripts (Stage B, D, E).

Sentences (2-8 words) come from a dozen small templates over a closed vocabulary of colours, shapes, numbers,
nouns, verbs, adjectives and prepositions (about 120 words, a few contractions so the apostrophe occurs), e.g.
"the small dog is under the red box", "three blue stars", "don't push the old chair". Each utterance gets a
random espeak-ng voice (accent + voice variant), speaking rate (words per minute) and pitch, so a model has to
generalise across speakers rather than memorise one waveform per word.

Phrases: besides the sentences, the training split speaks every entry of PHRASES (each word of the vocabulary
alone, and the position and count words of the shape images) `phrase_repeats` times with random styles. Sentences
alone never teach a model a word without its neighbours, and one-word answers ("black", "top left") are what the
Talker says most in Stage E. Their records say "phrase": true. Validation holds sentences only, so its metrics
stay on unseen sentences.

Splits: validation sentences are drawn first from their own random stream seeded by (seed, "val"), training
sentences from (seed, "train") while skipping every validation sentence, so the two splits share no sentence
(asserted) and the validation set does not change when n_train does. Sentences are unique within a split too.

Output layout (paths in the manifests are relative to them):
    out_dir/train.jsonl, out_dir/val.jsonl   {"audio": "wavs/train_00000.wav", "text": ..., "duration": s, ...}
    out_dir/wavs/*.wav                       16 kHz mono 16-bit PCM
The manifests are written last, so an interrupted run leaves no manifest that points at missing audio.
Rendering runs espeak-ng as a subprocess per utterance (`--stdout`, 22.05 kHz), resampled with `omni.audio`;
`workers` threads overlap the subprocesses (the resampler releases the GIL too).
"""

from __future__ import annotations

import io
import random
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from omni.audio import SAMPLE_RATE, resample
from omni.data.manifest import write_jsonl
from omni.text_frontend import normalize_transcript

# Accent + variant pairs that ship with espeak-ng itself (the mbrola voices need extra packages). espeak-ng falls
# back to the plain voice for an unknown variant without an error; the tests check these all sound different.
DEFAULT_VOICES = (
    "en-us",
    "en-gb",
    "en-us+f2",
    "en-us+m3",
    "en+f4",  # "en-gb+f4" silently ignores the variant; "en" is the same British voice
    "en-gb-scotland",
    "en-us+m7",
    "en-gb-x-rp+f3",
    "en-029+m2",
    "en-us+klatt",
)
DEFAULT_RATES = (130, 150, 170, 190)  # words per minute (espeak-ng default 175)
DEFAULT_PITCHES = (30, 45, 60, 75)  # 0-99 (espeak-ng default 50)

COLOURS = "red green blue yellow black white orange purple pink brown grey gold".split()
SHAPES = "circle square triangle star heart box ring cross line dot".split()
NUMBERS = "two three four five six seven eight nine ten eleven twelve twenty".split()
NOUNS = (
    "dog cat bird fish horse cow duck car bus train boat plane house tree flower book ball cup hat shoe chair "
    "table door window apple cake bag key lamp clock phone bed"
).split()
VERBS = "see take find push pull move paint draw open hold like want carry drop throw catch".split()
ADJECTIVES = "big small tall short old new happy little round bright dark soft hot cold fast slow".split()
PREPOSITIONS = "on under near behind above beside inside below".split()
NAMES = "anna ben clara david emma frank grace henry".split()
# Where the shapes of `omni.synthetic.images` sit, and the count words "one" and "zero": SFT answers that the
# sentences never say, spoken alone as phrases (below) so the ASR and the Talker know them.
POSITIONS = ("top left", "top right", "centre", "bottom left", "bottom right")
PHRASES = (*COLOURS, *SHAPES, "zero", "one", *NUMBERS, *NOUNS, *VERBS, *ADJECTIVES, *PREPOSITIONS, *NAMES, *POSITIONS)


def _plural(word: str) -> str:
    return word + ("es" if word.endswith(("s", "x", "sh", "ch")) else "s")


def _third_person(verb: str) -> str:
    return _plural(verb)


def _sentence(rng: random.Random) -> str:
    """One random sentence of 2-8 words."""
    c, s, n, a = rng.choice(COLOURS), rng.choice(SHAPES), rng.choice(NOUNS), rng.choice(ADJECTIVES)
    v, p, num, who = rng.choice(VERBS), rng.choice(PREPOSITIONS), rng.choice(NUMBERS), rng.choice(NAMES)
    thing = rng.choice([f"{c} {s}", f"{a} {n}", f"{c} {n}", n, s])
    templates = [
        f"{c} {s}",  # 2
        f"{num} {_plural(rng.choice([s, n]))}",  # 2
        f"the {a} {n}",  # 3
        f"{num} {c} {_plural(s)}",  # 3
        f"{v} the {thing}",  # 3-4
        f"it's a {a} {c} {s}",  # 5
        f"where is the {thing}",  # 4-5
        f"{who} {_third_person(v)} the {thing}",  # 4-5
        f"don't {v} the {thing}",  # 4-5
        f"i see {num} {a} {_plural(rng.choice([n, s]))}",  # 5
        f"the {n} is {p} the {thing}",  # 6-7
        f"put the {c} {s} {p} the {a} {n}",  # 8
        f"the {a} {n} {_third_person(v)} {num} {c} {_plural(s)}",  # 7
        f"{who} can't {v} the {s} {p} the {n}",  # 8
    ]
    return normalize_transcript(rng.choice(templates))


def _unique_sentences(rng: random.Random, count: int, exclude: set[str]) -> list[str]:
    out: list[str] = []
    seen = set(exclude)
    attempts = 0
    while len(out) < count:
        attempts += 1
        if attempts > 100 * count + 1000:
            raise ValueError(f"could not draw {count} distinct sentences (got {len(out)}); ask for fewer utterances")
        sentence = _sentence(rng)
        if sentence not in seen:
            seen.add(sentence)
            out.append(sentence)
    return out


def split_sentences(*, seed: int, n_train: int, n_val: int) -> tuple[list[str], list[str]]:
    """(train, val) sentences: unique, disjoint, and val independent of n_train (see module docstring)."""
    val = _unique_sentences(random.Random(f"{seed}-val"), n_val, exclude=set())
    train = _unique_sentences(random.Random(f"{seed}-train"), n_train, exclude=set(val))
    assert not set(val) & set(train), "train and val must share no sentence"
    return train, val


def espeak_binary() -> str:
    """Path of espeak-ng, or a RuntimeError saying how to install it."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError(
            "espeak-ng not found on PATH; the synthetic speech data needs it. Install it with "
            "`sudo apt-get install espeak-ng` (Debian/Ubuntu) or `brew install espeak-ng` (macOS)."
        )
    return exe


def render_speech(text: str, *, voice: str = "en-us", rate: int = 170, pitch: int = 50) -> torch.Tensor:
    """Speak `text` with espeak-ng: FloatTensor (N,) mono at 16 kHz."""
    cmd = [espeak_binary(), "-v", voice, "-s", str(rate), "-p", str(pitch), "--stdout", text]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0 or not proc.stdout:
        raise RuntimeError(f"espeak-ng failed for voice {voice!r} on {text!r}: {proc.stderr.decode(errors='replace')}")
    data, rate_in = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    return resample(torch.from_numpy(data), rate_in, SAMPLE_RATE)


def write_speech_dataset(
    out_dir: str | Path,
    *,
    seed: int,
    n_train: int,
    n_val: int,
    voices: tuple[str, ...] = DEFAULT_VOICES,
    rates: tuple[int, ...] = DEFAULT_RATES,
    pitches: tuple[int, ...] = DEFAULT_PITCHES,
    phrase_repeats: int = 0,
    workers: int = 2,
) -> dict:
    """Render n_train + n_val sentences and phrase_repeats x len(PHRASES) training phrases into out_dir (layout
    in the module docstring); returns stats: counts, total audio hours, files and bytes on disk, rendering seconds."""
    if n_train < 0 or n_val < 0 or phrase_repeats < 0 or n_train + n_val == 0:
        raise ValueError(f"need n_train >= 0, n_val >= 0, phrase_repeats >= 0 and at least one sentence, got "
                         f"{n_train=}, {n_val=}, {phrase_repeats=}")
    if not voices or not rates or not pitches:
        raise ValueError(f"voices, rates and pitches must be non-empty, got {voices=}, {rates=}, {pitches=}")
    espeak_binary()  # fail before doing any work
    out_dir = Path(out_dir)
    (out_dir / "wavs").mkdir(parents=True, exist_ok=True)

    train_sentences, val_sentences = split_sentences(seed=seed, n_train=n_train, n_val=n_val)
    # Phrases come after the sentences, so the sentences and their styles do not depend on phrase_repeats.
    n_sentences = len(train_sentences)
    train_sentences += list(PHRASES) * phrase_repeats
    manifests: dict[str, list[dict]] = {"train": [], "val": []}
    renders: dict[tuple, dict] = {}  # (text, voice, rate, pitch) -> the record whose file holds that rendering
    for split, sentences in (("train", train_sentences), ("val", val_sentences)):
        rng = random.Random(f"{seed}-{split}-voices")
        for i, text in enumerate(sentences):
            style = {"voice": rng.choice(voices), "rate": rng.choice(rates), "pitch": rng.choice(pitches)}
            # espeak-ng is deterministic, so a repeat in the same style (every phrase repeat of a one-voice set)
            # shares the first one's file instead of rendering it again.
            key = (text, style["voice"], style["rate"], style["pitch"])
            phrase = {"phrase": True} if split == "train" and i >= n_sentences else {}
            manifests[split].append(renders.setdefault(key, {"audio": f"wavs/{split}_{i:05d}.wav", "text": text,
                                                             **style, **phrase}))

    def render(rec):
        wav = render_speech(rec["text"], voice=rec["voice"], rate=rec["rate"], pitch=rec["pitch"])
        sf.write(out_dir / rec["audio"], wav.numpy().astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
        rec["duration"] = round(wav.shape[0] / SAMPLE_RATE, 3)  # shared by every repeat of the record

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(render, renders.values()))
    seconds = time.perf_counter() - start

    for split, records in manifests.items():
        write_jsonl(out_dir / f"{split}.jsonl", records)
    audio_seconds = sum(r["duration"] for records in manifests.values() for r in records)
    n_bytes = sum((out_dir / r["audio"]).stat().st_size for r in renders.values())
    return {
        "n_train": len(manifests["train"]),
        "n_val": len(manifests["val"]),
        "audio_hours": audio_seconds / 3600,
        "mean_duration_s": audio_seconds / (len(manifests["train"]) + len(manifests["val"])),
        "files": len(renders),
        "bytes": n_bytes,
        "render_seconds": seconds,
    }
