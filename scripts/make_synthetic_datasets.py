"""Make the offline synthetic datasets every stage can train on (no downloads).

    python scripts/make_synthetic_datasets.py [--out data] [--only text,speech,tts,images,ocr,sft] [--seed 0]

Each part is written once: a part whose folder already has its manifests is skipped, so rerunning is cheap.
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from omni.synthetic.images import write_image_dataset  # noqa: E402
from omni.synthetic.ocr_lines import write_ocr_dataset  # noqa: E402
from omni.synthetic.sft import write_sft_dataset  # noqa: E402
from omni.synthetic.speech import write_speech_dataset  # noqa: E402
from omni.synthetic.text import write_text_corpus  # noqa: E402

TTS_VOICE = "en-us"  # the Talker's one voice (espeak-ng name)


def make_text(out: Path, seed: int) -> dict:
    return write_text_corpus(out, seed=seed, n_train_docs=20000, n_val_docs=500)


def make_images(out: Path, seed: int) -> dict:
    # 64 px is enough for the shapes; the demo ViT resizes to 32 px, the tiny config to 224 px.
    return write_image_dataset(out, seed=seed, n_train=4000, n_val=500, image_size=64)


def make_ocr(out: Path, seed: int) -> dict:
    return write_ocr_dataset(out, seed=seed, n_train=4000, n_val=300, height=32)


def make_speech(out: Path, seed: int) -> dict:
    # 3000 espeak-ng utterances (1.6 h of audio, ~2 min to render): enough for the demo ASR to reach CER < 30%
    # on the 300 held-out sentences, which never occur in training.
    # Plus each of the 121 PHRASES spoken 4 times in random styles, so one-word answers are recognised too.
    return write_speech_dataset(out, seed=seed, n_train=2700, n_val=300, phrase_repeats=4)


def make_tts(out: Path, seed: int) -> dict:
    # The Talker's voice: the same sentences (and held-out sentences) as "speech", spoken by one voice at one rate
    # and pitch. A Talker trained on ten voices at random has to guess a voice per utterance: its codes are far
    # less predictable (held-out code CE 3.6 vs 2.1) and greedy decoding blurs them. Each phrase is listed 6 times
    # (rendered once): with one copy among 2700 sentences the Talker did not stop after a single word ("green" ->
    # "green square"; phrase CER 0.90), with six it did (0.25).
    return write_speech_dataset(out, seed=seed, n_train=2700, n_val=300, voices=(TTS_VOICE,), rates=(150,),
                                pitches=(50,), phrase_repeats=6)


def make_sft(out: Path, seed: int) -> dict:
    # Conversations over the images and speech parts' media (so it comes after them in PARTS).
    return write_sft_dataset(out, images_dir=out.parent / "images", speech_dir=out.parent / "speech", seed=seed,
                             n_train=12000, n_val=400, image_size=64)


# part name -> (folder, files that mark it complete, maker)
PARTS = {
    "text": ("text", ("train.txt", "val.txt"), make_text),
    "images": ("images", ("train.jsonl", "val.jsonl"), make_images),
    "ocr": ("ocr", ("train.jsonl", "val.jsonl"), make_ocr),
    "speech": ("speech", ("train.jsonl", "val.jsonl"), make_speech),
    "tts": ("tts", ("train.jsonl", "val.jsonl"), make_tts),
    "sft": ("sft", ("train.jsonl", "val.jsonl"), make_sft),
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data", help="root folder of the datasets")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of {list(PARTS)}")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    wanted = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {unknown}; choose from {list(PARTS)}")
    for part in wanted:
        folder, markers, maker = PARTS[part]
        out = Path(args.out) / folder
        if all((out / m).exists() for m in markers):
            print(f"{part}: {out} exists, skipped")
            continue
        start = time.perf_counter()
        stats = maker(out, args.seed)
        print(f"{part}: wrote {out} in {time.perf_counter() - start:.1f}s {json.dumps(stats, default=str)}")


if __name__ == "__main__":
    main()
